//! Migration (issue 13): compressed page files, images as one stream on a
//! pipe, `stasis migrate` (pre-copy rounds, final dump, restore) locally
//! and to a page server in another network namespace. Every case ends with
//! the program checking its own state after the move; the negative
//! controls must fail.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(180);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `cmd` with stdin from `stdin` (or /dev/null) and stdout/stderr
/// into files of the work directory; kills it after `T`.
fn run(dir: &Path, name: &str, cmd: &mut Command, stdin: Option<&Path>) -> CmdOut {
    let (out_p, err_p) = (
        dir.join(format!("{name}.stdout")),
        dir.join(format!("{name}.stderr")),
    );
    let input = match stdin {
        Some(p) => Stdio::from(fs::File::open(p).expect("stdin file")),
        None => Stdio::null(),
    };
    let out = run_captured(cmd, &out_p, &err_p, input, T);
    eprintln!("{name} -> {:?}\n{}", out.code, out.stderr);
    out
}

/// The restored program (reparented to us, the subreaper), running.
fn adopt_restored(work: &Work, pid: i32) -> Proc {
    let pidfile = fs::read_to_string(work.path("pidfile")).unwrap_or_default();
    if pidfile.trim() != pid.to_string() {
        fail(work, format!("pidfile says {pidfile:?}, expected {pid}"));
    }
    let mut r = Proc::adopt(pid);
    step(work, "restored process state", r.check_running_untraced());
    r
}

/// `stasis migrate -t PID -D WORK/img` of `program`; returns its outcome
/// after the move and migrate's figures.
fn migrate_local(
    work: &Work,
    program: Program,
    args: &[&str],
    extra: &[&str],
) -> (Outcome, serde_json::Value) {
    let opts = Opts {
        ready_timeout: Duration::from_secs(60),
        ..Opts::default()
    };
    let p = start_ready(work, program, args, &opts);
    let pid = p.pid;
    let reaper = reap_when_killed(p, T);
    let pid_s = pid.to_string();
    let (img, pidfile) = (work.img(), work.path("pidfile"));
    let mut a = vec![
        "migrate",
        "-t",
        &pid_s,
        "-D",
        s(&img),
        "-o",
        "migrate.log",
        "-v4",
        "--pidfile",
        s(&pidfile),
    ];
    a.extend_from_slice(extra);
    let out = stasis(work, &a, T);
    killed_by(work, pid, reaper, &out, "stasis migrate");
    let figures: serde_json::Value = out
        .stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| fail(work, format!("no figures: {:?}", out.stdout)));
    assert_eq!(figures["restored_pid"].as_i64(), Some(i64::from(pid)));
    let rounds = figures["rounds"].as_array().map_or(0, Vec::len);
    assert!(rounds >= 1, "no pre-copy round: {figures}");
    // The final image builds on the last round.
    assert!(
        work.img()
            .join(format!("round-{rounds}/inventory.img"))
            .exists(),
        "{}",
        work.diagnostics()
    );
    let mut r = adopt_restored(work, pid);
    (finish(work, &mut r, T), figures)
}

#[test]
fn migrate_local_python() {
    let work = Work::new("migrate_python");
    let (out, _) = migrate_local(&work, Program::Python, &[], &[]);
    out.assert_pass(&work);
}

/// The negative control: the program corrupts its state after the move
/// and must say so.
#[test]
fn negative_migrate_python_corrupt() {
    let work = Work::new("migrate_python_corrupt");
    let (out, _) = migrate_local(&work, Program::Python, &["--corrupt"], &[]);
    assert!(
        out.result.starts_with("FAIL"),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

/// `migrate --lazy-pages`: the tree resumes at the destination before its
/// memory is in place; the lazy-pages daemon serves the chain's pages
/// (tp_precopy writes all the time, through every round and the lazy
/// phase, and checks every page once resident).
#[test]
fn migrate_local_lazy() {
    let work = Work::new("migrate_lazy");
    let (out, figures) = migrate_local(
        &work,
        Program::Bin("tp_precopy"),
        &["--churn", "1024"],
        &["--lazy-pages"],
    );
    out.assert_pass(&work);
    assert!(
        figures["resident_ms"].as_f64().is_some(),
        "not restored lazily: {figures}"
    );
    let log = fs::read_to_string(work.img().join("lazy-pages.log")).unwrap_or_default();
    assert!(log.contains("every page in place"), "lazy-pages.log: {log}");
}

/// The negative control: the program corrupts a page after the lazy move
/// and must say so.
#[test]
fn negative_migrate_lazy_corrupt() {
    let work = Work::new("migrate_lazy_corrupt");
    let (out, _) = migrate_local(
        &work,
        Program::Bin("tp_precopy"),
        &["--corrupt"],
        &["--lazy-pages"],
    );
    assert!(
        out.result.starts_with("FAIL") && out.result.contains("area page"),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

#[test]
fn migrate_local_go() {
    if !have_go("migrate_local_go") {
        return;
    }
    let work = Work::new("migrate_go");
    let (out, _) = migrate_local(&work, Program::Go, &[], &[]);
    out.assert_pass(&work);
}

/// `migrate --lazy-pages` of a Go program: pre-copy rounds, the final
/// dump, and a lazy restore of the chain while its runtime runs.
#[test]
fn migrate_local_lazy_go() {
    if !have_go("migrate_local_lazy_go") {
        return;
    }
    let work = Work::new("migrate_lazy_go");
    let (out, figures) = migrate_local(&work, Program::Go, &[], &["--lazy-pages"]);
    out.assert_pass(&work);
    assert!(
        figures["resident_ms"].as_f64().is_some(),
        "not restored lazily: {figures}"
    );
}

/// `migrate --lazy-pages` of tp_memory holding `mib` MiB (every page
/// checked after the move); returns the memory keeper migrate named.
fn migrate_lazy_memory(work: &Work, mib: &str) -> Option<i32> {
    let (out, _) = migrate_local(
        work,
        Program::Bin("tp_memory"),
        &["--size-mib", mib],
        &["--lazy-pages", "--max-rounds", "2"],
    );
    out.assert_pass(work);
    keeper_in_log(work)
}

/// The memory keeper `stasis migrate` named in its log (`-v4`), if any.
fn keeper_in_log(work: &Work) -> Option<i32> {
    let log = fs::read_to_string(work.img().join("migrate.log")).unwrap_or_default();
    log.lines().find_map(|l| {
        let rest = l.split("memory keeper ").nth(1)?;
        let (pid, tail) = rest.split_once(' ')?;
        tail.starts_with("holds its memory")
            .then(|| pid.parse().ok())
            .flatten()
    })
}

/// `migrate --lazy-pages` of a process holding 96 MiB: the final dump
/// frees the old PIDs at once and the old memory later, through a memory
/// keeper (a process sharing that memory, stopped before it runs, killed
/// once the restored tree runs). The program checks every page after the
/// move, and the keeper is gone afterwards (reaped here: the test is the
/// subreaper it was reparented to).
#[test]
fn migrate_local_lazy_memory_keeper() {
    let work = Work::new("migrate_keeper");
    let Some(k) = migrate_lazy_memory(&work, "96") else {
        fail(&work, "no memory keeper in migrate.log".to_string());
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut st = 0;
        // SAFETY: plain waitpid on a PID; reaps it only if it is our child.
        unsafe { libc::waitpid(k, &mut st, libc::WNOHANG | libc::__WALL) };
        let cmdline = fs::read(format!("/proc/{k}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("tp_memory") {
            break;
        }
        if Instant::now() > deadline {
            fail(
                &work,
                format!("memory keeper {k} still there 10 s after the move"),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The control: a process below the keeper threshold (64 MiB) is killed
/// the plain way, and migrate's log names no keeper.
#[test]
fn negative_migrate_small_no_memory_keeper() {
    let work = Work::new("migrate_no_keeper");
    if let Some(k) = migrate_lazy_memory(&work, "8") {
        fail(&work, format!("memory keeper {k} for an 8 MiB process"));
    }
}

/// 32 MiB checked page by page, every round and the final image
/// compressed: restore inflates the whole chain.
#[test]
fn migrate_local_compressed_memory() {
    let work = Work::new("migrate_compressed");
    let (out, figures) = migrate_local(
        &work,
        Program::Bin("tp_memory"),
        &["--size-mib", "32"],
        &["--compress=zstd:1", "--max-rounds", "3"],
    );
    out.assert_pass(&work);
    let f = format!("pages-{}.img", figures["pid"]);
    for dir in [work.img(), work.img().join("round-1")] {
        let v = show(&work, &dir.join(&f));
        assert_eq!(v["kind"], "pages-zstd", "{}: {v}", dir.display());
    }
}

/// Dumps tp_memory with `extra`; returns the program (killed, reaped).
fn dump_memory(work: &Work, args: &[&str], extra: &[&str]) -> Proc {
    let mut p = start_ready(work, Program::Bin("tp_memory"), args, &Opts::default());
    let out = dump(work, p.pid, extra, T);
    if !out.success() {
        fail(work, format!("dump failed: {}", out.stderr));
    }
    check_gone(work, &mut p);
    p
}

#[test]
fn compress_dump_restore() {
    let work = Work::new("compress_dump");
    let p = dump_memory(&work, &["--size-mib", "16"], &["--compress"]);
    let v = show(&work, &work.img().join(format!("pages-{}.img", p.pid)));
    assert_eq!(v["kind"], "pages-zstd", "{v}");
    assert!(v["compression"]["raw_len"].as_u64() > v["payload_len"].as_u64());
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// One flipped byte in a compressed page file: the restore is refused by
/// the checksum before anything is created.
#[test]
fn compress_corrupt_refused() {
    let work = Work::new("compress_corrupt");
    let p = dump_memory(&work, &["--size-mib", "16"], &["--compress=zstd:1"]);
    let f = work.img().join(format!("pages-{}.img", p.pid));
    let mut bytes = fs::read(&f).expect("read pages");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&f, &bytes).expect("write pages");
    let out = restore_detached(&work, &[], T);
    assert!(
        !out.success() && out.stderr.contains("checksum") && out.stderr.lines().count() == 1,
        "{out:?}"
    );
    assert!(!pid_exists(p.pid), "a process was created");
}

/// A compressed pre-dump as the parent of a compressed dump.
#[test]
fn compress_chain() {
    let work = Work::new("compress_chain");
    let mut p = start_ready(
        &work,
        Program::Bin("tp_memory"),
        &["--size-mib", "16"],
        &Opts::default(),
    );
    let pid_s = p.pid.to_string();
    let pre = work.path("pre1");
    let out = stasis(
        &work,
        &[
            "pre-dump",
            "-t",
            &pid_s,
            "-D",
            s(&pre),
            "-o",
            "pre.log",
            "-v4",
            "--compress",
        ],
        T,
    );
    assert!(out.success(), "{}", out.stderr);
    let out = dump(
        &work,
        p.pid,
        &["--prev-images-dir", "../pre1", "--track-mem", "--compress"],
        T,
    );
    assert!(out.success(), "{}", out.stderr);
    check_gone(&work, &mut p);
    let v = show(&work, &pre.join(format!("pages-{}.img", p.pid)));
    assert_eq!(v["kind"], "pages-zstd", "{v}");
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// `stasis dump --to-stdout | stasis restore --from-stdin`, through a real
/// pipe (and a copy of the stream kept for the truncation case).
#[test]
fn stream_dump_pipe_restore() {
    let work = Work::new("stream_pipe");
    let p = start_ready(
        &work,
        Program::Bin("tp_memory"),
        &["--size-mib", "16"],
        &Opts::default(),
    );
    let pid = p.pid;
    let reaper = reap_when_killed(p, T);
    let bin = stasis_bin();
    let line = format!(
        "'{b}' dump -t {pid} --to-stdout --compress=zstd:1 -o '{d}' -v4 | tee '{st}' | \
         '{b}' restore --from-stdin -d --pidfile '{pf}' -o '{r}' -v4",
        b = bin.display(),
        d = s(&work.path("dump.log")),
        st = s(&work.path("stream.bin")),
        pf = s(&work.path("pidfile")),
        r = s(&work.path("restore.log")),
    );
    let out = run(
        work.dir(),
        "pipe",
        Command::new("sh").args(["-c", &line]),
        None,
    );
    killed_by(&work, pid, reaper, &out, "dump | restore");
    let mut r = adopt_restored(&work, pid);
    finish(&work, &mut r, T).assert_pass(&work);

    // The same stream cut short: refused, nothing created, no image left.
    let bytes = fs::read(work.path("stream.bin")).expect("stream copy");
    assert!(bytes.starts_with(b"STASISPS"));
    fs::write(work.path("cut.bin"), &bytes[..bytes.len() * 2 / 3]).expect("write");
    let dir = work.path("cut");
    let out = run(
        work.dir(),
        "cut",
        Command::new(&bin).args(["restore", "--from-stdin", "-D", s(&dir), "-d"]),
        Some(&work.path("cut.bin")),
    );
    assert!(
        !out.success() && out.stderr.contains("stream ended"),
        "{out:?}"
    );
    assert!(!dir.join("inventory.img").exists());
    assert!(!pid_exists(pid), "a process was created");
    // criu's --stream is refused by name, pointing at ours.
    let out = stasis(&work, &["restore", "--stream", "-D", s(&dir)], T);
    assert!(
        !out.success() && out.stderr.contains("--stream") && out.stderr.contains("--from-stdin"),
        "{out:?}"
    );
}

/// Two network namespaces joined by a veth pair (the "two machines"),
/// removed on drop.
struct NetPair {
    a: String,
    b: String,
}

impl NetPair {
    fn new(tag: &str) -> Option<NetPair> {
        let id = std::process::id() % 100_000;
        let n = NetPair {
            a: format!("stm-{tag}-a{id}"),
            b: format!("stm-{tag}-b{id}"),
        };
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let ok = ip(&["netns", "add", &n.a])
            && ip(&["netns", "add", &n.b])
            && ip(&[
                "link", "add", "stm0", "netns", &n.a, "type", "veth", "peer", "name", "stm1",
                "netns", &n.b,
            ])
            && ip(&["-n", &n.a, "addr", "add", "10.213.7.1/24", "dev", "stm0"])
            && ip(&["-n", &n.b, "addr", "add", "10.213.7.2/24", "dev", "stm1"])
            && ip(&["-n", &n.a, "link", "set", "stm0", "up"])
            && ip(&["-n", &n.b, "link", "set", "stm1", "up"])
            && ip(&["-n", &n.a, "link", "set", "lo", "up"])
            && ip(&["-n", &n.b, "link", "set", "lo", "up"]);
        ok.then_some(n)
    }

    /// `nsenter --net` into one side: only the network namespace changes
    /// (`ip netns exec` would also make a mount namespace).
    fn cmd(&self, side: &str, exe: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{side}")).arg("--").arg(exe);
        c
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// The page server in namespace B (10.213.7.2), `stasis migrate
/// --page-server` of a program in namespace A: every pre-copy round and
/// the final image cross the veth; the destination restores from its own
/// directory, in B, and the program checks its memory there.
#[test]
fn migrate_to_page_server_across_netns() {
    migrate_across_netns("migrate_netns", "ps", false);
}

/// The same, restored lazily at the destination (issue 13's third step):
/// the chain arrives uncompressed, `stasis lazy-pages -D DEST` and
/// `restore --lazy-pages -D DEST` run in B; the tree resumes before its
/// memory is in place, the daemon serves every page from the image of the
/// chain that holds it and ends once all are in; the program checks each.
#[test]
fn migrate_to_page_server_across_netns_lazy() {
    migrate_across_netns("migrate_netns_lazy", "pl", true);
}

fn migrate_across_netns(name: &str, tag: &str, lazy: bool) {
    let work = Work::new(name);
    let Some(net) = NetPair::new(tag) else {
        panic!("cannot set up the network namespaces (ip netns, veth)");
    };
    let bin = stasis_bin();
    let dest = work.path("dest");
    let port = (20_000 + std::process::id() % 20_000).to_string();
    // The destination: a page server in B.
    let mut server = net.cmd(&net.b, &bin);
    server.args([
        "page-server",
        "--address",
        "10.213.7.2",
        "--port",
        &port,
        "-D",
        s(&dest),
        "-o",
        s(&work.path("ps.log")),
        "-v4",
    ]);
    let wdir = work.dir().to_path_buf();
    let server = std::thread::spawn(move || run(&wdir, "page-server", &mut server, None));
    // The source: the program in A.
    let mut prog = net.cmd(&net.a, &bin_path("tp_memory"));
    prog.arg(work.dir()).args(["--size-mib", "32"]);
    let mut p = spawn_in_session(&work, prog);
    step(
        &work,
        "ready",
        wait_ready(&work, &mut p, Duration::from_secs(60)),
    );
    let pid = p.pid;
    let reaper = reap_when_killed(p, T);
    // Wait until the server listens, then migrate from A.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(work.path("ps.log"))
        .unwrap_or_default()
        .contains("listening")
    {
        assert!(Instant::now() < deadline, "page server not listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut mig = net.cmd(&net.a, &bin);
    mig.args([
        "migrate",
        "-t",
        &pid.to_string(),
        "-D",
        s(&work.path("src")),
        "--page-server",
        "--address",
        "10.213.7.2",
        "--port",
        &port,
        "-o",
        s(&work.path("migrate.log")),
        "-v4",
    ]);
    if !lazy {
        // Lazy restore does not read compressed page files.
        mig.arg("--compress=zstd:1");
    }
    let out = run(work.dir(), "migrate", &mut mig, None);
    let srv = server.join().expect("server thread");
    killed_by(&work, pid, reaper, &out, "migrate to the page server");
    assert!(srv.success(), "page server: {srv:?}");
    assert!(dest.join("round-1/inventory.img").exists());
    // At the destination, in B.
    let mut daemon = lazy.then(|| {
        let mut d = net.cmd(&net.b, &bin);
        d.args([
            "lazy-pages",
            "-D",
            s(&dest),
            "-o",
            s(&work.path("lazy.log")),
            "-v4",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = d.spawn().expect("lazy-pages");
        let deadline = Instant::now() + T;
        while !dest.join("lazy-pages.socket").exists() {
            assert!(Instant::now() < deadline, "lazy-pages never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    });
    let mut rest = net.cmd(&net.b, &bin);
    rest.args([
        "restore",
        "-D",
        s(&dest),
        "-d",
        "--pidfile",
        s(&work.path("pidfile")),
        "-o",
        s(&work.path("restore.log")),
        "-v4",
    ]);
    if lazy {
        rest.arg("--lazy-pages");
    }
    let out = run(work.dir(), "restore", &mut rest, None);
    if !out.success() {
        if let Some(d) = &mut daemon {
            let _ = d.kill();
            let _ = d.wait();
        }
        panic!("restore at the destination: {out:?}");
    }
    let mut r = adopt_restored(&work, pid);
    let netns = fs::read_link(format!("/proc/{pid}/ns/net")).expect("netns");
    let b_ino = fs::metadata(format!("/run/netns/{}", net.b)).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    assert_eq!(
        netns.to_string_lossy(),
        format!("net:[{}]", b_ino.expect("netns b")),
        "restored outside the destination namespace"
    );
    // Checked once every page is in place: the VmFlags show the
    // userfaultfd registration (um) while pages are pending.
    if let Some(mut d) = daemon {
        let st = d.wait().expect("lazy-pages");
        let log = fs::read_to_string(work.path("lazy.log")).unwrap_or_default();
        if !st.success() || !log.contains("every page in place") {
            r.kill();
            fail(&work, format!("lazy-pages: {st:?}: {log}"));
        }
    }
    finish(&work, &mut r, T).assert_pass(&work);
}

/// What migrate cannot do is refused by name before anything is done:
/// `--lazy-pages` with `--page-server` (the destination restores), options
/// that contradict a move; the program runs on untouched.
#[test]
fn migrate_refusals() {
    let work = Work::new("migrate_refusals");
    let mut p = start_ready(&work, Program::Bin("tp_sleep"), &[], &Opts::default());
    let pid_s = p.pid.to_string();
    let img = work.img();
    for (extra, word) in [
        (
            &["--lazy-pages", "--page-server", "--port", "1"][..],
            "--lazy-pages with --page-server",
        ),
        (&["--leave-running"], "--leave-running"),
        (&["--to-stdout"], "--to-stdout"),
        (&["--stream"], "--from-stdin"),
    ] {
        let mut a = vec!["migrate", "-t", &pid_s, "-D", s(&img)];
        a.extend_from_slice(extra);
        let out = stasis(&work, &a, T);
        assert!(
            !out.success() && out.stderr.contains(word) && out.stderr.lines().count() == 1,
            "{extra:?}: {out:?}"
        );
        assert!(
            !img.join("round-1").exists(),
            "{extra:?}: a round was dumped"
        );
    }
    step(&work, "still running", p.check_running_untraced());
    p.kill();
}
