//! Real servers from Debian's packages (issue 10). Each is started as a
//! tree of its own (its own session, port and directory under the test's
//! work directory), given state through its own client, dumped, killed and
//! restored; the state is read back through the client, a new request must
//! be served, and a negative control must fail. Then a client connection
//! of the test's own is opened and given state, the dump without
//! `--tcp-established` is refused naming it, and with the option the
//! tree is dumped and restored: the same connection reads the state back
//! and is served a new request.
//!
//! A test skips, saying so, only when its package is not installed
//! (`.ci/run` installs them).

mod common;

use common::*;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------
// Helpers: finding, starting, asking and tracking servers.

/// `name` in PATH or an sbin directory.
fn find_exe(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// Every one of `exes`, or `None` after saying the test is skipped.
fn need(exes: &[&str], package: &str) -> Option<Vec<PathBuf>> {
    let found: Option<Vec<PathBuf>> = exes.iter().map(|e| find_exe(e)).collect();
    if found.is_none() {
        eprintln!(
            "skipped: {} not installed (Debian: apt-get install {package})",
            exes.join(", ")
        );
    }
    found
}

/// A user's uid and gid from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.split(':').next() == Some(user))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// Makes `paths` readable (and directories searchable) by everyone, so
/// that a server running as another user reaches its files whatever the
/// umask the tests run with.
fn open_to_all(paths: &[&Path]) {
    use std::os::unix::fs::PermissionsExt;
    for p in paths {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

/// A TCP port free right now on 127.0.0.1.
fn free_port() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port().to_string())
        .expect("free port")
}

/// Starts `exe args` in `work` as a tree of its own
/// ([`spawn_in_session`]); as `user` (uid, gid; no supplementary groups)
/// if given.
fn spawn(work: &Work, exe: &Path, args: &[&str], user: Option<(u32, u32)>) -> Proc {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    if let Some((uid, gid)) = user {
        // std drops the supplementary groups too when root sets a uid.
        cmd.uid(uid).gid(gid);
    }
    spawn_in_session(work, cmd)
}

/// Runs a client to its end (killed after 30 s): its stdout without the
/// trailing newline, or why it failed.
fn client(work: &Work, exe: &Path, args: &[&str]) -> Result<String, String> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let (out_p, err_p) = (
        work.path(&format!("client-{n}.out")),
        work.path(&format!("client-{n}.err")),
    );
    let what = format!("{} {}", exe.display(), args.join(" "));
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_p).expect("client stdout"))
        .stderr(File::create(&err_p).expect("client stderr"))
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: no answer within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = fs::read_to_string(&out_p).unwrap_or_default();
    if !status.success() {
        let err = fs::read_to_string(&err_p).unwrap_or_default();
        return Err(format!("{what}: {status}: {}", err.trim()));
    }
    Ok(out.trim_end().to_string())
}

/// Waits (30 s at most) until `ok` holds.
fn wait_for(work: &Work, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        if Instant::now() > deadline {
            fail(work, format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails unless `got` is `want`.
fn check_eq<T: PartialEq + std::fmt::Debug>(work: &Work, what: &str, want: T, got: T) {
    if want != got {
        fail(work, format!("{what}: expected {want:?}, got {got:?}"));
    }
}

/// A process's parent and start time (`/proc/PID/stat` fields 4 and 22).
fn stat_of(pid: i32) -> Option<(i32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit_once(") ")?.1.split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// `root` and its descendants now, each with its start time.
fn tree_of(root: i32) -> Vec<(i32, u64)> {
    let all: Vec<(i32, i32, u64)> = fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(|pid| stat_of(pid).map(|(pp, st)| (pid, pp, st)))
                .collect()
        })
        .unwrap_or_default();
    let mut out: Vec<(i32, u64)> = all
        .iter()
        .filter(|p| p.0 == root)
        .map(|p| (p.0, p.2))
        .collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].0;
        out.extend(all.iter().filter(|p| p.1 == parent).map(|p| (p.0, p.2)));
        i += 1;
    }
    out
}

/// The PIDs of `root`'s tree, sorted.
fn tree_pids(root: i32) -> Vec<i32> {
    let mut v: Vec<i32> = tree_of(root).into_iter().map(|p| p.0).collect();
    v.sort_unstable();
    v
}

/// Every process of the server trees this test started (PID and start
/// time), SIGKILLed on drop if still that very process: a PID since
/// reused by someone else is never touched.
#[derive(Default)]
struct Trees(Vec<(i32, u64)>);

impl Trees {
    /// Tracks `root`'s tree as it is now.
    fn track(&mut self, root: i32) {
        self.0.extend(tree_of(root));
    }
}

impl Drop for Trees {
    fn drop(&mut self) {
        for &(pid, start) in &self.0 {
            if stat_of(pid).is_some_and(|s| s.1 == start) {
                // SAFETY: plain kill of a process of a tree this test started
                // (same PID and start time).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Waits until no TCP socket of `pids` is connected, only listeners left:
/// a client that has gone may leave the server's end open a moment, and a
/// connected socket is not what these tests dump.
fn wait_quiet(work: &Work, pids: &[i32]) {
    let busy = || {
        let mut inodes = HashSet::new();
        for pid in pids {
            for e in fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
            {
                let link = e.ok().and_then(|e| fs::read_link(e.path()).ok());
                let link = link.map(|l| l.to_string_lossy().into_owned());
                if let Some(ino) = link.as_deref().and_then(|l| l.strip_prefix("socket:[")) {
                    inodes.insert(ino.trim_end_matches(']').to_string());
                }
            }
        }
        ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|t| {
            fs::read_to_string(t)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 9 && f[3] != "0A" && inodes.contains(f[9])
                })
        })
    };
    wait_for(work, "the server's client connections to close", || !busy());
}

/// Whether `pid` (any process, not only a child) runs, neither stopped
/// nor traced.
fn running_untraced(pid: i32) -> Result<(), String> {
    let stat =
        fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("PID {pid}: {e}"))?;
    let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
    if !matches!(state, Some('R' | 'S' | 'D')) {
        return Err(format!("PID {pid} is in state {state:?}"));
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    match stasis_tests::status_field(&status, "TracerPid").as_deref() {
        Some("0") => Ok(()),
        t => Err(format!("PID {pid} is traced by {t:?}")),
    }
}

/// A process's identity to compare across the dump: its owner, limits
/// and command line.
fn identity(pid: i32) -> (String, String, String) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = stasis_tests::status_field(&status, "Uid").unwrap_or_default();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    (uid.to_string(), limits, cmdline)
}

/// Dumps the server's tree (waiting for its clients to be gone first),
/// checks it is gone, restores it and checks it ([`restored`]).
fn dump_restore(work: &Work, p: &mut Proc, trees: &mut Trees, opts: &Opts) -> Proc {
    let pids = tree_pids(p.pid);
    wait_quiet(work, &pids);
    let before: Vec<_> = pids.iter().map(|&pid| identity(pid)).collect();
    dump_and_check_gone(work, p, opts);
    restored(work, p.pid, (&pids, before), trees, opts)
}

/// Waits until `root`'s tree is `pids` again (the backends, workers, ...
/// that served a client have exited); on timeout names what is there.
/// The tree of `root` once it has not changed for a second: a server
/// just started may still have a backend ending (PostgreSQL's, that
/// answered the readiness probe), which would never come back.
fn settled_tree(work: &Work, root: i32) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (tree_pids(root), Instant::now());
    while since.elapsed() < Duration::from_secs(1) {
        if Instant::now() > deadline {
            fail(work, format!("tree of {root} never settled: {last:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
        let now = tree_pids(root);
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

fn wait_tree(work: &Work, root: i32, pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tree_pids(root) != pids {
        if Instant::now() > deadline {
            let now: Vec<String> = tree_pids(root)
                .iter()
                .map(|p| format!("{p} {:?}", identity(*p).2))
                .collect();
            fail(
                work,
                format!("tree of {root} is not {pids:?} again: {now:?}"),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restores the dumped tree of `root`, which held `pids` with identities
/// `before`: the same PIDs come back, each with its owner, limits and
/// command line. Returns the restored root.
fn restored(
    work: &Work,
    root: i32,
    (pids, before): (&[i32], Vec<(String, String, String)>),
    trees: &mut Trees,
    opts: &Opts,
) -> Proc {
    let r = restore_and_adopt(work, root, opts);
    trees.track(r.pid);
    check_eq(
        work,
        "PIDs of the restored tree",
        pids.to_vec(),
        tree_pids(r.pid),
    );
    let after: Vec<_> = pids.iter().map(|&pid| identity(pid)).collect();
    check_eq(
        work,
        "owner, limits, command line of each process",
        before,
        after,
    );
    r
}

/// SIGKILLs the tree of `root` (our child; the others are its
/// descendants now, ours once orphaned: this test is a subreaper) and
/// waits until every one of its PIDs is gone, reaping ours.
fn kill_tree(work: &Work, root: &mut Proc) {
    let pids = tree_pids(root.pid);
    for &pid in &pids {
        // SAFETY: plain kill of a process of the tree this test restored.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    root.kill();
    for pid in pids {
        wait_for(work, &format!("PID {pid} to be gone"), || {
            let mut st = 0;
            // SAFETY: WNOHANG wait for one PID of the tree, ours once orphaned.
            unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
            !pid_exists(pid)
        });
    }
}

/// Kills the restored tree (its root is our child) and restores the same
/// image again: the negative control of the servers whose state written
/// after the restore must then be absent.
fn restore_again(work: &Work, r: &mut Proc, trees: &mut Trees, opts: &Opts) -> Proc {
    kill_tree(work, r);
    let again = restore_and_adopt(work, r.pid, opts);
    trees.track(again.pid);
    again
}

// ---------------------------------------------------------------------
// A client connection of the test's own (outside the dumped tree) kept
// open across the dump and restore (`--tcp-established`).

/// Connects to the server on 127.0.0.1:`port` (20 s timeouts).
fn connect(work: &Work, port: &str) -> TcpStream {
    let port: u16 = port.parse().expect("port");
    let s = step(
        work,
        "connect",
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string()),
    );
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    s
}

/// Writes `request` on `conn` and reads exactly the answer `want`.
fn exchange(conn: &mut TcpStream, request: &str, want: &str) -> Result<(), String> {
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("write {request:?}: {e}"))?;
    let mut got = vec![0u8; want.len()];
    conn.read_exact(&mut got)
        .map_err(|e| format!("answer to {request:?}: {e}"))?;
    match String::from_utf8_lossy(&got) {
        g if g == want => Ok(()),
        g => Err(format!("answer to {request:?}: {g:?}, expected {want:?}")),
    }
}

/// `GET path` on a kept-alive HTTP/1.1 connection: status and body
/// (the answer must carry a Content-Length).
fn http_get(conn: &mut TcpStream, path: &str) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
    conn.write_all(req.as_bytes())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut b)
            .map_err(|e| format!("GET {path}: head: {e}"))?;
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let status = head.get(9..12).and_then(|c| c.parse().ok());
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok());
    let (Some(status), Some(len)) = (status, len) else {
        return Err(format!("GET {path}: answer {head:?}"));
    };
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)
        .map_err(|e| format!("GET {path}: body: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// With `conn` open (server end in the tree, client end ours): a dump
/// without `--tcp-established` is refused in one line naming the
/// connection, leaving no image and the tree running; then a dump with
/// it (and the default network lock), the tree gone, and a restore.
/// Returns the restored root; the caller then uses `conn` again.
fn dump_restore_conn(work: &Work, p: &mut Proc, trees: &mut Trees, conn: &TcpStream) -> Proc {
    let pids = tree_pids(p.pid);
    let before: Vec<_> = pids.iter().map(|&pid| identity(pid)).collect();
    let _ = fs::remove_dir_all(work.img());
    let out = dump(work, p.pid, &[], Opts::default().stasis_timeout);
    let (server, client) = (conn.peer_addr(), conn.local_addr());
    let named = format!(
        "a TCP connection {} -> {} in state ESTABLISHED",
        server.expect("peer"),
        client.expect("local")
    );
    let err = out.stderr.trim_end();
    if out.success() || err.lines().count() != 1 || !err.contains(&named) {
        fail(work, format!("dump without --tcp-established: {out:?}"));
    }
    check_eq(
        work,
        "an image after the refused dump",
        false,
        work.img().join("inventory.img").exists(),
    );
    for pid in &pids {
        step(
            work,
            "a process after the refused dump",
            running_untraced(*pid),
        );
    }
    let _ = fs::remove_dir_all(work.img());
    let opts = Opts {
        dump_extra: vec!["--tcp-established"],
        ..Opts::default()
    };
    dump_and_check_gone(work, p, &opts);
    restored(work, p.pid, (&pids, before), trees, &opts)
}

// ---------------------------------------------------------------------
// redis-server, through redis-cli.

#[test]
fn redis() {
    let Some(bins) = need(&["redis-server", "redis-cli"], "redis-server") else {
        return;
    };
    let (work, opts, mut trees) = (Work::new("srv_redis"), Opts::default(), Trees::default());
    let port = free_port();
    let dir = work.path("redis");
    fs::create_dir_all(&dir).expect("redis dir");
    let args = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--dir",
        dir.to_str().expect("utf-8"),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ];
    let mut p = spawn(&work, &bins[0], &args, None);
    trees.track(p.pid);
    let cli = |args: &[&str]| {
        let mut a = vec!["-p", &port, "--no-raw"];
        a.extend_from_slice(args);
        client(&work, &bins[1], &a)
    };
    wait_for(&work, "redis PING", || {
        cli(&["PING"]).as_deref() == Ok("PONG")
    });
    check_eq(
        &work,
        "SET",
        Ok("OK".into()),
        cli(&["SET", "k1", "before the dump"]),
    );
    check_eq(
        &work,
        "RPUSH",
        Ok("(integer) 3".into()),
        cli(&["RPUSH", "l", "a", "b", "c"]),
    );
    check_eq(
        &work,
        "INCRBY",
        Ok("(integer) 42".into()),
        cli(&["INCRBY", "n", "42"]),
    );
    let mut r = dump_restore(&work, &mut p, &mut trees, &opts);
    let state = |r: &str| {
        check_eq(
            &work,
            r,
            Ok("\"before the dump\"".into()),
            cli(&["GET", "k1"]),
        );
        let list = "1) \"a\"\n2) \"b\"\n3) \"c\"";
        check_eq(&work, r, Ok(list.into()), cli(&["LRANGE", "l", "0", "-1"]));
        check_eq(&work, r, Ok("(integer) 43".into()), cli(&["INCR", "n"]));
    };
    state("state after restore");
    check_eq(
        &work,
        "new SET",
        Ok("OK".into()),
        cli(&["SET", "k2", "after"]),
    );
    check_eq(
        &work,
        "new GET",
        Ok("\"after\"".into()),
        cli(&["GET", "k2"]),
    );
    // Negative control: what was written after the dump is not in the image.
    let mut again = restore_again(&work, &mut r, &mut trees, &opts);
    state("state after the second restore");
    check_eq(
        &work,
        "k2 after the second restore",
        Ok("(nil)".into()),
        cli(&["GET", "k2"]),
    );
    check_eq(&work, "DBSIZE", Ok("(integer) 3".into()), cli(&["DBSIZE"]));
    // A RESP connection of ours kept across a dump with --tcp-established.
    let resp = |args: &[&str]| {
        let mut r = format!("*{}\r\n", args.len());
        for a in args {
            r.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        r
    };
    let mut conn = connect(&work, &port);
    let set = resp(&["SET", "kc", "held"]);
    step(
        &work,
        "SET on the connection",
        exchange(&mut conn, &set, "+OK\r\n"),
    );
    let mut again = dump_restore_conn(&work, &mut again, &mut trees, &conn);
    let get = resp(&["GET", "kc"]);
    step(
        &work,
        "GET on the kept connection",
        exchange(&mut conn, &get, "$4\r\nheld\r\n"),
    );
    let incr = resp(&["INCR", "n"]);
    step(
        &work,
        "INCR on the kept connection",
        exchange(&mut conn, &incr, ":44\r\n"),
    );
    check_eq(&work, "GET kc", Ok("\"held\"".into()), cli(&["GET", "kc"]));
    let _ = cli(&["SHUTDOWN", "NOSAVE"]);
    let exit = step(&work, "redis SHUTDOWN", again.wait(Duration::from_secs(20)));
    check_eq(&work, "redis exit after SHUTDOWN", Exit::Code(0), exit);
}

// ---------------------------------------------------------------------
// memcached, through its text protocol on a socket.

/// Sends `request` then `quit` to memcached and returns all it answered.
fn memcache(port: &str, request: &str) -> Result<String, String> {
    let io = |e: std::io::Error| format!("memcached on port {port}: {e}");
    let mut s =
        TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port"))).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(io)?;
    s.write_all(format!("{request}quit\r\n").as_bytes())
        .map_err(io)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(io)?;
    Ok(out)
}

/// `get KEY` as memcached answers it: the value, or nothing when absent.
fn mc_get(port: &str, key: &str) -> Result<Option<String>, String> {
    let out = memcache(port, &format!("get {key}\r\n"))?;
    if out == "END\r\n" {
        return Ok(None);
    }
    let mut lines = out.split("\r\n");
    match (lines.next(), lines.next(), lines.next()) {
        (Some(h), Some(v), Some("END")) if h.starts_with(&format!("VALUE {key} ")) => {
            Ok(Some(v.to_string()))
        }
        _ => Err(format!("memcached get {key}: {out:?}")),
    }
}

fn mc_set(port: &str, key: &str, value: &str) -> Result<String, String> {
    memcache(
        port,
        &format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()),
    )
}

#[test]
fn memcached() {
    let Some(bins) = need(&["memcached"], "memcached") else {
        return;
    };
    let (work, opts, mut trees) = (
        Work::new("srv_memcached"),
        Opts::default(),
        Trees::default(),
    );
    let port = free_port();
    let args = [
        "-u",
        "root",
        "-l",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "0",
        "-m",
        "16",
    ];
    let mut p = spawn(&work, &bins[0], &args, None);
    trees.track(p.pid);
    wait_for(&work, "memcached version", || {
        memcache(&port, "version\r\n").is_ok_and(|v| v.starts_with("VERSION"))
    });
    let value = |i: usize| format!("value {i} {}", "x".repeat(i * 37));
    for i in 0..50 {
        check_eq(
            &work,
            "set",
            Ok("STORED\r\n".into()),
            mc_set(&port, &format!("k{i}"), &value(i)),
        );
    }
    // Negative control: dump leaving it running (criu's -R), then write;
    // the restored server must not have what was written after the dump.
    wait_quiet(&work, &[p.pid]);
    let out = dump(&work, p.pid, &["-R"], opts.stasis_timeout);
    if !out.success() {
        fail(
            &work,
            format!("dump -R failed ({:?}): {}", out.code, out.stderr),
        );
    }
    step(&work, "memcached after dump -R", p.check_running_untraced());
    check_eq(
        &work,
        "set after the dump",
        Ok("STORED\r\n".into()),
        mc_set(&port, "late", "v"),
    );
    check_eq(
        &work,
        "get after the dump",
        Ok(Some("v".into())),
        mc_get(&port, "late"),
    );
    p.kill();
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    trees.track(r.pid);
    for i in 0..50 {
        check_eq(
            &work,
            "get after restore",
            Ok(Some(value(i))),
            mc_get(&port, &format!("k{i}")),
        );
    }
    check_eq(
        &work,
        "key set after the dump",
        Ok(None),
        mc_get(&port, "late"),
    );
    check_eq(
        &work,
        "new set",
        Ok("STORED\r\n".into()),
        mc_set(&port, "new", "served"),
    );
    check_eq(
        &work,
        "new get",
        Ok(Some("served".into())),
        mc_get(&port, "new"),
    );
    // A connection of ours kept across a dump with --tcp-established.
    let mut conn = connect(&work, &port);
    let set = "set kc 0 0 4\r\nheld\r\n";
    step(
        &work,
        "set on the connection",
        exchange(&mut conn, set, "STORED\r\n"),
    );
    let _r = dump_restore_conn(&work, &mut r, &mut trees, &conn);
    let held = "VALUE kc 0 4\r\nheld\r\nEND\r\n";
    step(
        &work,
        "get on the kept connection",
        exchange(&mut conn, "get kc\r\n", held),
    );
    let v3 = format!("VALUE k3 0 {}\r\n{}\r\nEND\r\n", value(3).len(), value(3));
    step(
        &work,
        "get k3 on the kept connection",
        exchange(&mut conn, "get k3\r\n", &v3),
    );
    let set = "set kd 0 0 5\r\nafter\r\n";
    step(
        &work,
        "new set on the kept connection",
        exchange(&mut conn, set, "STORED\r\n"),
    );
    check_eq(
        &work,
        "get kd",
        Ok(Some("after".into())),
        mc_get(&port, "kd"),
    );
}

// ---------------------------------------------------------------------
// nginx: a master and two workers, through curl.

fn curl(work: &Work, exe: &Path, port: &str, file: &str) -> Result<String, String> {
    let url = format!("http://127.0.0.1:{port}/{file}");
    client(work, exe, &["-sS", "--fail", "--max-time", "20", &url])
}

/// nginx's configuration: `user`'s workers, everything under `dir`.
fn nginx_conf(dir: &Path, user: &str, port: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nuser {user};\nworker_processes 2;\n\
         worker_rlimit_nofile 4096;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n\
         client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
         scgi_temp_path {d}/tmp/scgi;\n\
         server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n}}\n"
    )
}

/// Starts nginx (workers as `user`), serves a file, then checks a restore
/// is refused while the access log it holds is changed, and works once
/// the log is put back; the restored master still serves, reloads (new
/// workers) on SIGHUP and quits cleanly on SIGQUIT.
fn nginx(name: &str, user: &str) {
    let Some(bins) = need(&["nginx", "curl"], "nginx curl") else {
        return;
    };
    let (work, opts, mut trees) = (Work::new(name), Opts::default(), Trees::default());
    let (port, dir) = (free_port(), work.path("nginx"));
    for sub in ["www", "tmp"] {
        fs::create_dir_all(dir.join(sub)).expect("nginx dirs");
    }
    fs::write(dir.join("www/hello.txt"), "hello\n").expect("hello.txt");
    fs::write(dir.join("nginx.conf"), nginx_conf(&dir, user, &port)).expect("conf");
    open_to_all(&[
        work.dir(),
        &dir,
        &dir.join("www"),
        &dir.join("www/hello.txt"),
    ]);
    let d = dir.to_str().expect("utf-8");
    let (conf, errlog) = (format!("{d}/nginx.conf"), format!("{d}/error.log"));
    let mut p = spawn(
        &work,
        &bins[0],
        &["-c", &conf, "-p", d, "-e", &errlog],
        None,
    );
    wait_for(&work, "nginx and its 2 workers", || {
        tree_pids(p.pid).len() == 3
    });
    trees.track(p.pid);
    let get = |file: &str| curl(&work, &bins[1], &port, file);
    wait_for(&work, "nginx to serve", || get("hello.txt").is_ok());
    check_eq(
        &work,
        "GET before the dump",
        Ok("hello".into()),
        get("hello.txt"),
    );
    let pids = tree_pids(p.pid);
    wait_quiet(&work, &pids);
    let before: Vec<_> = pids.iter().map(|&pid| identity(pid)).collect();
    let uids: Vec<&str> = pids
        .iter()
        .zip(&before)
        .filter(|(pid, _)| **pid != p.pid)
        .map(|(_, i)| i.0.as_str())
        .collect();
    let uid = user_ids(user).map(|u| u.0.to_string()).unwrap_or_default();
    check_eq(
        &work,
        "workers' real uid",
        vec![uid; 2],
        uids.iter()
            .map(|u| u.split('\t').next().unwrap_or_default().to_string())
            .collect(),
    );
    dump_and_check_gone(&work, &mut p, &opts);
    refused_changed_log(&work, &dir.join("access.log"), &pids, &opts);
    let r = restored(&work, p.pid, (&pids, before), &mut trees, &opts);
    nginx_after_restore(&work, r, (&dir, &port), &get, &mut trees);
}

/// Negative control: with the access log the processes hold changed, the
/// restore is refused naming it and leaves no process; then the log is
/// put back as it was (length and mtime).
fn refused_changed_log(work: &Work, log: &Path, pids: &[i32], opts: &Opts) {
    let (len, mtime) = fs::metadata(log)
        .map(|m| (m.len(), m.modified()))
        .expect("log");
    OpenOptions::new()
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(b"x\n"))
        .expect("append");
    let out = restore_detached(work, &[], opts.stasis_timeout);
    let named = format!("file {} changed since the dump", log.display());
    if out.success() || !out.stderr.contains(&named) {
        fail(
            work,
            format!("restore with a changed {}: {out:?}", log.display()),
        );
    }
    for pid in pids {
        check_eq(
            work,
            "a process left by the refused restore",
            false,
            pid_exists(*pid),
        );
    }
    let f = OpenOptions::new().write(true).open(log).expect("log");
    f.set_len(len).expect("truncate log");
    f.set_modified(mtime.expect("mtime")).expect("set mtime");
    drop(f);
}

/// The restored nginx serves old and new files, carries on with a
/// keep-alive connection of ours across a dump with --tcp-established,
/// reloads on SIGHUP (new workers, the old ones reaped) and quits with
/// status 0 on SIGQUIT.
fn nginx_after_restore(
    work: &Work,
    mut r: Proc,
    (dir, port): (&Path, &str),
    get: &dyn Fn(&str) -> Result<String, String>,
    trees: &mut Trees,
) {
    check_eq(
        work,
        "GET after restore",
        Ok("hello".into()),
        get("hello.txt"),
    );
    fs::write(dir.join("www/new.txt"), "new\n").expect("new.txt");
    open_to_all(&[&dir.join("www/new.txt")]);
    check_eq(work, "GET of a new file", Ok("new".into()), get("new.txt"));
    let mut conn = connect(work, port);
    let (hello, new) = (Ok((200, "hello\n".into())), Ok((200, "new\n".into())));
    check_eq(
        work,
        "GET on the connection",
        hello.clone(),
        http_get(&mut conn, "/hello.txt"),
    );
    r = dump_restore_conn(work, &mut r, trees, &conn);
    check_eq(
        work,
        "GET on the kept connection",
        new,
        http_get(&mut conn, "/new.txt"),
    );
    check_eq(
        work,
        "GET on the kept connection",
        hello,
        http_get(&mut conn, "/hello.txt"),
    );
    drop(conn);
    let old = tree_pids(r.pid);
    // SAFETY: plain kill of the restored master, our child.
    unsafe { libc::kill(r.pid, libc::SIGHUP) };
    wait_for(work, "new workers after SIGHUP", || {
        let now = tree_pids(r.pid);
        // Not the first of the sorted PIDs: with pid_max 32768 the new
        // workers' PIDs may have wrapped below the master's.
        now.len() == 3
            && now
                .iter()
                .filter(|&&w| w != r.pid)
                .all(|w| !old.contains(w))
    });
    trees.track(r.pid);
    check_eq(
        work,
        "GET after reload",
        Ok("hello".into()),
        get("hello.txt"),
    );
    let last = tree_pids(r.pid);
    wait_quiet(work, &last);
    // SAFETY: as above.
    unsafe { libc::kill(r.pid, libc::SIGQUIT) };
    let exit = step(work, "nginx SIGQUIT", r.wait(Duration::from_secs(20)));
    check_eq(work, "nginx exit after SIGQUIT", Exit::Code(0), exit);
    for pid in last {
        wait_for(work, &format!("worker {pid} to be gone"), || {
            !pid_exists(pid)
        });
    }
}

#[test]
fn nginx_root() {
    nginx("srv_nginx_root", "root");
}

/// Workers as www-data: their limits (`worker_rlimit_nofile`) are read
/// from /proc/PID/limits (root here lacks CAP_SYS_RESOURCE, so prlimit on
/// another user's process fails) and set again before the credentials.
#[test]
fn nginx_www_data() {
    nginx("srv_nginx_www", "www-data");
}

// ---------------------------------------------------------------------
// node.js: an http server keeping a map in memory, through curl.

const NODE_SERVER: &str = r#"
const http = require('http');
const store = new Map();
const srv = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://x');
  const k = u.searchParams.get('k');
  if (u.pathname === '/set') { store.set(k, u.searchParams.get('v')); res.end('OK\n'); return; }
  const v = store.get(k);
  res.statusCode = v === undefined ? 404 : 200;
  res.end(v === undefined ? 'MISSING\n' : v + '\n');
});
srv.keepAliveTimeout = 0;
srv.listen(Number(process.argv[2]), '127.0.0.1');
"#;

#[test]
fn node() {
    let Some(bins) = need(&["node", "curl"], "nodejs curl") else {
        return;
    };
    let (work, opts, mut trees) = (Work::new("srv_node"), Opts::default(), Trees::default());
    let port = free_port();
    let script = work.path("server.js");
    fs::write(&script, NODE_SERVER).expect("server.js");
    let mut p = spawn(
        &work,
        &bins[0],
        &[script.to_str().expect("utf-8"), &port],
        None,
    );
    trees.track(p.pid);
    let url = |q: &str| format!("http://127.0.0.1:{port}/{q}");
    let get = |q: &str| client(&work, &bins[1], &["-sS", "--max-time", "20", &url(q)]);
    wait_for(&work, "node to serve", || get("get?k=x").is_ok());
    for i in 0..10 {
        check_eq(
            &work,
            "set",
            Ok("OK".into()),
            get(&format!("set?k=k{i}&v=v{i}")),
        );
    }
    let mut r = dump_restore(&work, &mut p, &mut trees, &opts);
    let state = |what: &str| {
        for i in 0..10 {
            check_eq(
                &work,
                what,
                Ok(format!("v{i}")),
                get(&format!("get?k=k{i}")),
            );
        }
    };
    state("get after restore");
    check_eq(&work, "new set", Ok("OK".into()), get("set?k=new&v=served"));
    check_eq(&work, "new get", Ok("served".into()), get("get?k=new"));
    // Negative control: what was set after the dump is not in the image.
    let mut again = restore_again(&work, &mut r, &mut trees, &opts);
    state("get after the second restore");
    check_eq(
        &work,
        "key set after the dump",
        Ok("MISSING".into()),
        get("get?k=new"),
    );
    // A keep-alive connection of ours kept across a dump with
    // --tcp-established (the server's keep-alive timeout is off).
    let mut conn = connect(&work, &port);
    let ok = Ok((200, "OK\n".into()));
    check_eq(
        &work,
        "set on the connection",
        ok,
        http_get(&mut conn, "/set?k=held&v=kept"),
    );
    let _r = dump_restore_conn(&work, &mut again, &mut trees, &conn);
    let kept = Ok((200, "kept\n".into()));
    check_eq(
        &work,
        "get on the kept connection",
        kept,
        http_get(&mut conn, "/get?k=held"),
    );
    let v3 = Ok((200, "v3\n".into()));
    check_eq(
        &work,
        "get k3 on the kept connection",
        v3,
        http_get(&mut conn, "/get?k=k3"),
    );
}

// ---------------------------------------------------------------------
// PostgreSQL, through psql.

/// The newest Debian PostgreSQL's `bin` directory (with `initdb` and
/// `postgres`, which are not in PATH).
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("postgres").is_file() && b.join("initdb").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        let v = d
            .parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str()?.parse::<u32>().ok());
        v.unwrap_or(0)
    });
    dirs.pop()
}

/// PostgreSQL's `bin` directory, psql and the ids of user postgres; None
/// (saying so) when not installed.
fn pg_tools() -> Option<(PathBuf, PathBuf, (u32, u32))> {
    let (Some(bin), Some(psql)) = (postgres_bin(), find_exe("psql")) else {
        eprintln!("skipped: PostgreSQL not installed (Debian: apt-get install postgresql)");
        return None;
    };
    let Some(ids) = user_ids("postgres") else {
        eprintln!("skipped: no user postgres (Debian: apt-get install postgresql)");
        return None;
    };
    Some((bin, psql, ids))
}

/// SysV shared memory segments created by `pids` (`/proc/sysvipc/shm`),
/// removed on drop: a postmaster killed outright leaves its segment. Drop
/// it after the server is ended (only a segment nobody attaches goes).
struct ShmOf(Vec<i32>, Vec<PathBuf>);

impl ShmOf {
    /// Tracks the server `pid`: its SysV segments, and the POSIX shared
    /// memory files of PostgreSQL's dynamic shared memory that it and its
    /// children map (/dev/shm/PostgreSQL.N, which a server that is killed
    /// never removes).
    fn track(&mut self, pid: i32) {
        self.0.push(pid);
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let pids =
            std::iter::once(pid.to_string()).chain(children.split_whitespace().map(String::from));
        for p in pids {
            let maps = fs::read_to_string(format!("/proc/{p}/maps")).unwrap_or_default();
            for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
                let path = PathBuf::from(path);
                if path.starts_with("/dev/shm")
                    && path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("PostgreSQL."))
                    && !self.1.contains(&path)
                {
                    self.1.push(path);
                }
            }
        }
    }
}

impl Drop for ShmOf {
    fn drop(&mut self) {
        for f in &self.1 {
            let _ = fs::remove_file(f);
        }
        // The server was just killed: its processes may take a moment to
        // detach. A segment still attached after two seconds is left.
        for _ in 0..40 {
            let table = fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
            let mut attached = false;
            for l in table.lines().skip(1) {
                let f: Vec<&str> = l.split_whitespace().collect();
                // key shmid perms size cpid lpid nattch ...
                let (Some(id), Some(cpid)) = (f.get(1), f.get(4).and_then(|c| c.parse().ok()))
                else {
                    continue;
                };
                if !self.0.contains(&cpid) {
                    continue;
                }
                if f.get(6) == Some(&"0") {
                    let _ = Command::new("ipcrm").args(["-m", id]).status();
                } else {
                    attached = true;
                }
            }
            if !attached {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The PostgreSQL server a test runs: its tree, and psql's way in.
struct Pg {
    psql: PathBuf,
    port: String,
    p: Proc,
}

impl Pg {
    /// psql's answer to `q` (unaligned, tuples only).
    fn sql(&self, work: &Work, q: &str) -> Result<String, String> {
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &self.port,
            "-U",
            "postgres",
            "-d",
            "postgres",
        ];
        let mut a = args.to_vec();
        a.extend(["-Atqc", q]);
        client(work, &self.psql, &a)
    }
}

/// initdb, then the postmaster (as `ids`, our child, a tree of its own)
/// with its socket and data under `WORK/pg`; waits until it answers.
fn start_postgres(work: &Work, bin: &Path, psql: PathBuf, ids: (u32, u32)) -> Pg {
    let (port, dir) = (free_port(), work.path("pg"));
    fs::create_dir_all(&dir).expect("pg dir");
    open_to_all(&[work.dir()]);
    std::os::unix::fs::chown(&dir, Some(ids.0), Some(ids.1)).expect("chown pg dir");
    let (d, data) = (
        dir.to_str().expect("utf-8"),
        format!("{}/data", dir.display()),
    );
    let init = [
        "-D",
        &data,
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
        "-E",
        "UTF8",
    ];
    let mut init = spawn(work, &bin.join("initdb"), &init, Some(ids));
    let exit = step(work, "initdb", init.wait(Duration::from_secs(60)));
    check_eq(work, "initdb exit", Exit::Code(0), exit);
    let args = [
        "-D",
        &data,
        "-p",
        &port,
        "-k",
        d,
        "-c",
        "listen_addresses=127.0.0.1",
    ];
    let p = spawn(work, &bin.join("postgres"), &args, Some(ids));
    let pg = Pg { psql, port, p };
    wait_for(work, "postgres to answer", || {
        pg.sql(work, "select 1").as_deref() == Ok("1")
    });
    pg
}

/// PostgreSQL: the postmaster and its background processes, as user
/// postgres. Rows are written with psql; once no backend is left, the
/// tree is dumped. PostgreSQL keeps an interlock in a SysV shared memory
/// segment: while stasis refuses SysV shared memory, the dump must fail
/// with exactly that refusal (one line naming the root and the mapping)
/// and leave the server running and serving old and new rows. Once the
/// dump succeeds, the full cycle runs instead: rows back through psql, a
/// new row served, a checkpoint, and a restore of the image again
/// refused, since the server has written its log since.
#[test]
fn postgres() {
    let Some((bin, psql, ids)) = pg_tools() else {
        return;
    };
    // Declared first, so dropped last: after `trees` has ended the server.
    let mut shm = ShmOf(Vec::new(), Vec::new());
    let (work, opts, mut trees) = (Work::new("srv_postgres"), Opts::default(), Trees::default());
    let mut pg = start_postgres(&work, &bin, psql, ids);
    trees.track(pg.p.pid);
    shm.track(pg.p.pid);
    let baseline = settled_tree(&work, pg.p.pid);
    let create = "create table t(k text, v text); insert into t values ('a', 'before the dump')";
    check_eq(&work, "create", Ok(String::new()), pg.sql(&work, create));
    // The backend that served psql has gone.
    wait_tree(&work, pg.p.pid, &baseline);
    wait_quiet(&work, &baseline);
    let before: Vec<_> = baseline.iter().map(|&pid| identity(pid)).collect();
    let out = dump(&work, pg.p.pid, &[], opts.stasis_timeout);
    if !out.success() {
        refused_sysv_shm(&work, &mut pg, &baseline, &out);
        return;
    }
    check_gone(&work, &mut pg.p);
    pg.p = restored(&work, pg.p.pid, (&baseline, before), &mut trees, &opts);
    let select = "select v from t order by k";
    check_eq(
        &work,
        "rows after restore",
        Ok("before the dump".into()),
        pg.sql(&work, select),
    );
    let insert = "insert into t values ('b', 'new')";
    check_eq(
        &work,
        "insert after restore",
        Ok(String::new()),
        pg.sql(&work, insert),
    );
    check_eq(
        &work,
        "rows",
        Ok("before the dump\nnew".into()),
        pg.sql(&work, select),
    );
    // Negative control: a checkpoint writes the new row to the data files
    // and, logged (log_checkpoints), to the server's stderr: the image is
    // stale now, and its restore refused, naming the log.
    check_eq(
        &work,
        "checkpoint",
        Ok(String::new()),
        pg.sql(&work, "checkpoint"),
    );
    wait_tree(&work, pg.p.pid, &baseline);
    kill_tree(&work, &mut pg.p);
    let out = restore_detached(&work, &[], opts.stasis_timeout);
    let log = format!(
        "file {} changed since the dump",
        work.path("out.log").display()
    );
    if out.success() || !out.stderr.contains(&log) {
        fail(&work, format!("restore of a stale postgres image: {out:?}"));
    }
    for pid in &baseline {
        check_eq(
            &work,
            "a process left by the refused restore",
            false,
            pid_exists(*pid),
        );
    }
}

/// The dump of postgres failed: it must be the SysV shared memory refusal,
/// with no image left, and the server must run on, serving old and new
/// rows, then shut down cleanly.
fn refused_sysv_shm(work: &Work, pg: &mut Pg, pids: &[i32], out: &CmdOut) {
    let line = format!(
        "stasis: error: dump pid {}: check: cannot dump mapping ",
        pg.p.pid
    );
    let err = out.stderr.trim_end();
    let refused = err.lines().count() == 1
        && err.starts_with(&line)
        && err.contains(" (/SYSV")
        && err.ends_with(" (deleted)): SysV shared memory is not supported yet");
    if !refused {
        fail(
            work,
            format!("dump of postgres: expected the SysV shared memory refusal, got {out:?}"),
        );
    }
    eprintln!("postgres refused, as expected while SysV shared memory is: {err}");
    check_eq(
        work,
        "an image after the refused dump",
        false,
        work.img().join("inventory.img").exists(),
    );
    for pid in pids {
        step(
            work,
            "a postgres process after the refused dump",
            running_untraced(*pid),
        );
    }
    let select = "select v from t order by k";
    check_eq(
        work,
        "rows after the refused dump",
        Ok("before the dump".into()),
        pg.sql(work, select),
    );
    let insert = "insert into t values ('b', 'new')";
    check_eq(
        work,
        "insert after the refused dump",
        Ok(String::new()),
        pg.sql(work, insert),
    );
    check_eq(
        work,
        "rows",
        Ok("before the dump\nnew".into()),
        pg.sql(work, select),
    );
    // Fast shutdown.
    // SAFETY: plain kill of the postmaster, our child.
    unsafe { libc::kill(pg.p.pid, libc::SIGINT) };
    let exit = step(
        work,
        "postgres shutdown",
        pg.p.wait(Duration::from_secs(30)),
    );
    check_eq(work, "postgres exit after SIGINT", Exit::Code(0), exit);
}

/// One message of PostgreSQL's protocol (v3): its type and body.
fn pg_msg(conn: &mut TcpStream) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 5];
    conn.read_exact(&mut head)
        .map_err(|e| format!("message head: {e}"))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    conn.read_exact(&mut body)
        .map_err(|e| format!("message body: {e}"))?;
    Ok((head[0], body))
}

/// Reads messages up to ReadyForQuery: the rows (DataRow, each column's
/// text joined by `|`), or the error's message.
fn pg_until_ready(conn: &mut TcpStream) -> Result<Vec<String>, String> {
    let (mut rows, mut err) = (Vec::new(), None);
    loop {
        let (t, body) = pg_msg(conn)?;
        match t {
            b'Z' => break,
            b'D' => {
                let mut cols = Vec::new();
                let mut at = 2;
                while at + 4 <= body.len() {
                    let n =
                        i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
                    at += 4;
                    let n = usize::try_from(n).unwrap_or(0);
                    cols.push(String::from_utf8_lossy(&body[at..at + n]).into_owned());
                    at += n;
                }
                rows.push(cols.join("|"));
            }
            b'E' => {
                // Fields: a type byte and a string each; 'M' the message.
                let msg = body
                    .split(|&b| b == 0)
                    .find_map(|f| f.strip_prefix(b"M"))
                    .unwrap_or(b"?");
                err = Some(String::from_utf8_lossy(msg).into_owned());
            }
            b'R' if body.get(..4) != Some(&[0, 0, 0, 0][..]) => {
                return Err(format!("authentication asked for: {body:?}"));
            }
            _ => {}
        }
    }
    err.map_or(Ok(rows), Err)
}

/// A PostgreSQL connection of the test's own on `port` (trust
/// authentication, user and database postgres), ready for queries.
fn pg_connect(work: &Work, port: &str) -> TcpStream {
    let mut conn = connect(work, port);
    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut m = ((8 + params.len()) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&196_608u32.to_be_bytes());
    m.extend_from_slice(params);
    step(
        work,
        "startup",
        conn.write_all(&m).map_err(|e| e.to_string()),
    );
    step(work, "startup answer", pg_until_ready(&mut conn));
    conn
}

/// A simple query on `conn`: its rows.
fn pg_query(conn: &mut TcpStream, sql: &str) -> Result<Vec<String>, String> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((4 + sql.len() + 1) as u32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    conn.write_all(&m).map_err(|e| format!("{sql}: {e}"))?;
    pg_until_ready(conn).map_err(|e| format!("{sql}: {e}"))
}

/// PostgreSQL with a client connection of the test's own (its backend in
/// the tree) open across the dump: rows written on it; the dump without
/// `--tcp-established` refused naming it, the server running on; with
/// the option dumped and restored, and the same connection (the same
/// backend, its session state: a temporary table) reads the rows back and
/// writes a new one, which psql sees.
#[test]
fn postgres_connection() {
    let Some((bin, psql, ids)) = pg_tools() else {
        return;
    };
    // Declared first, so dropped last: after `trees` has ended the server.
    let mut shm = ShmOf(Vec::new(), Vec::new());
    let (work, mut trees) = (Work::new("srv_postgres_conn"), Trees::default());
    let mut pg = start_postgres(&work, &bin, psql, ids);
    trees.track(pg.p.pid);
    shm.track(pg.p.pid);
    let baseline = settled_tree(&work, pg.p.pid);
    let create = "create table t(k text, v text); insert into t values ('a', 'by psql')";
    check_eq(&work, "create", Ok(String::new()), pg.sql(&work, create));
    wait_tree(&work, pg.p.pid, &baseline);
    wait_quiet(&work, &baseline);
    let mut conn = pg_connect(&work, &pg.port);
    let setup = "insert into t values ('b', 'on the connection'); \
                 create temporary table s(x int); insert into s values (41)";
    step(
        &work,
        "writes on the connection",
        pg_query(&mut conn, setup),
    );
    pg.p = dump_restore_conn(&work, &mut pg.p, &mut trees, &conn);
    check_eq(
        &work,
        "rows on the kept connection",
        Ok(vec!["by psql".to_string(), "on the connection".to_string()]),
        pg_query(&mut conn, "select v from t order by k"),
    );
    check_eq(
        &work,
        "its temporary table",
        Ok(vec!["42".to_string()]),
        pg_query(&mut conn, "update s set x = x + 1 returning x"),
    );
    check_eq(
        &work,
        "insert on the kept connection",
        Ok(vec![]),
        pg_query(&mut conn, "insert into t values ('c', 'after')"),
    );
    check_eq(
        &work,
        "rows through psql",
        Ok("by psql\non the connection\nafter".into()),
        pg.sql(&work, "select v from t order by k"),
    );
    // Negative control: the temporary table is this session's alone.
    check_eq(
        &work,
        "the temporary table from psql",
        true,
        pg.sql(&work, "select x from s").is_err(),
    );
    drop(conn);
    // Fast shutdown.
    // SAFETY: plain kill of the postmaster, our child.
    unsafe { libc::kill(pg.p.pid, libc::SIGINT) };
    let exit = step(
        &work,
        "postgres shutdown",
        pg.p.wait(Duration::from_secs(30)),
    );
    check_eq(&work, "postgres exit after SIGINT", Exit::Code(0), exit);
}
