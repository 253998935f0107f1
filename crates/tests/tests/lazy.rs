//! End-to-end tests for lazy restore (issue 13): `stasis lazy-pages` +
//! `restore --lazy-pages`, from the local image or from the page server
//! of `dump --lazy-pages` over 127.0.0.1; the programs check their whole
//! memory themselves. Negative controls: a program that corrupts its
//! memory FAILs; a damaged page file, or a daemon killed mid-way, kill the
//! lazy tree with a clear error and leave no process hanging.

#[path = "common/certs.rs"]
mod certs;
mod common;

use common::*;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

/// A background `stasis` command (the daemon, or a dump that serves),
/// killed if still running when dropped.
struct Bg {
    child: Child,
    name: String,
}

impl Bg {
    fn start(work: &Work, name: &str, args: &[&str], env: &[(&str, &str)]) -> Bg {
        let mut cmd = Command::new(stasis_bin());
        cmd.args(args)
            .current_dir(work.dir())
            .stdin(Stdio::null())
            .stdout(fs::File::create(work.path(&format!("{name}.out"))).expect("out"))
            .stderr(fs::File::create(work.path(&format!("{name}.err"))).expect("err"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: close_range and setsid are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn stasis");
        Bg {
            child,
            name: name.into(),
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// Waits for the exit code (None: killed by a signal).
    fn wait(&mut self, work: &Work, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                fail(
                    work,
                    format!("{} did not end within {timeout:?}", self.name),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&self, work: &Work) -> String {
        fs::read_to_string(work.path(&format!("{}.err", self.name))).unwrap_or_default()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_for(work: &Work, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        if Instant::now() > deadline {
            fail(work, format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `stasis lazy-pages -D DIR -o lazy.log -v4 EXTRA`, once its socket exists.
fn daemon(work: &Work, dir: &Path, extra: &[&str], throttle_ms: u32) -> Bg {
    let d = dir.to_str().expect("utf-8");
    let mut args = vec!["lazy-pages", "-D", d, "-o", "lazy.log", "-v4"];
    args.extend_from_slice(extra);
    let t = throttle_ms.to_string();
    let env: Vec<(&str, &str)> = if throttle_ms > 0 {
        vec![("STASIS_LAZY_THROTTLE_MS", t.as_str())]
    } else {
        vec![]
    };
    let mut bg = Bg::start(work, "lazy", &args, &env);
    let sock = dir.join("lazy-pages.socket");
    let deadline = Instant::now() + T;
    while !sock.exists() {
        if let Ok(Some(st)) = bg.child.try_wait() {
            fail(
                work,
                format!("lazy-pages ended early ({st:?}): {}", bg.stderr(work)),
            );
        }
        if Instant::now() > deadline {
            fail(work, "lazy-pages never listened");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bg
}

/// Starts `program`, dumps it (gone), starts the daemon, restores lazily;
/// returns the restored process and the daemon.
fn lazy_case(work: &Work, program: Program, args: &[&str], throttle_ms: u32) -> (Proc, Bg) {
    let opts = Opts::default();
    let mut p = start_ready(work, program, args, &opts);
    dump_and_check_gone(work, &mut p, &opts);
    let d = daemon(work, &work.img(), &[], throttle_ms);
    let r = restore_and_adopt(work, p.pid, &opts_lazy());
    (r, d)
}

fn opts_lazy() -> Opts {
    Opts {
        restore_extra: vec!["--lazy-pages"],
        ..Opts::default()
    }
}

/// The daemon ends with success once every page is in place.
fn daemon_done(work: &Work, d: &mut Bg) {
    let code = d.wait(work, T);
    if code != Some(0) {
        fail(
            work,
            format!("lazy-pages failed ({code:?}): {}", d.stderr(work)),
        );
    }
}

#[test]
fn lazy_local_memory() {
    let work = Work::new("lazy_local_memory");
    let (mut r, mut d) = lazy_case(&work, Program::Bin("tp_memory"), &["--size-mib", "64"], 0);
    // Checked once every page is in place: the VmFlags show the
    // userfaultfd registration (um) while pages are pending.
    daemon_done(&work, &mut d);
    finish(&work, &mut r, T).assert_pass(&work);
    let log = fs::read_to_string(work.img().join("lazy.log")).unwrap_or_default();
    assert!(log.contains("every page in place"), "lazy.log: {log}");
}

#[test]
fn lazy_fork_mremap_munmap_madvise() {
    let work = Work::new("lazy_events");
    let (mut r, mut d) = lazy_case(&work, Program::Bin("tp_lazy"), &[], 20);
    work.release_go();
    daemon_done(&work, &mut d);
    fs::write(work.path("resident"), "1").expect("resident");
    finish(&work, &mut r, T).assert_pass(&work);
    let log = fs::read_to_string(work.img().join("lazy.log")).unwrap_or_default();
    assert!(log.contains("1 forks"), "the fork was not seen: {log}");
}

#[test]
fn negative_lazy_corrupt() {
    let work = Work::new("negative_lazy_corrupt");
    let (mut r, mut d) = lazy_case(&work, Program::Bin("tp_lazy"), &["--corrupt"], 20);
    work.release_go();
    daemon_done(&work, &mut d);
    fs::write(work.path("resident"), "1").expect("resident");
    let out = finish(&work, &mut r, T);
    assert!(
        out.result.starts_with("FAIL") && out.result.contains("A: page 3"),
        "the corruption went unnoticed: {out:?}"
    );
}

/// A tree (copy-on-write memory shared with children: eager, the rest
/// lazy in each process) and a multi-threaded process (several threads
/// faulting on the same pages).
#[test]
fn lazy_tree_and_threads() {
    for prog in ["tp_cow", "tp_threads"] {
        let work = Work::new(&format!("lazy_{prog}"));
        let (mut r, mut d) = lazy_case(&work, Program::Bin(prog), &[], 0);
        finish(&work, &mut r, T).assert_pass(&work);
        daemon_done(&work, &mut d);
    }
}

#[test]
fn lazy_python() {
    let work = Work::new("lazy_python");
    let (mut r, mut d) = lazy_case(&work, Program::Python, &[], 0);
    finish(&work, &mut r, T).assert_pass(&work);
    daemon_done(&work, &mut d);
}

/// A Go program (its runtime's own threads, heap and madvise calls)
/// restored lazily: it keeps running while its pages come in and checks
/// its state itself.
#[test]
fn lazy_go() {
    if !have_go("lazy_go") {
        return;
    }
    let work = Work::new("lazy_go");
    let (mut r, mut d) = lazy_case(&work, Program::Go, &[], 0);
    finish(&work, &mut r, T).assert_pass(&work);
    daemon_done(&work, &mut d);
}

/// The negative control: the Go program damages its own state after the
/// lazy restore and must say so.
#[test]
fn negative_lazy_go() {
    if !have_go("negative_lazy_go") {
        return;
    }
    let work = Work::new("negative_lazy_go");
    let (mut r, mut d) = lazy_case(&work, Program::Go, &["--corrupt"], 0);
    let out = finish(&work, &mut r, T);
    daemon_done(&work, &mut d);
    assert!(
        out.result.starts_with("FAIL"),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

/// A page of a lazy area damaged in the page file: the daemon's checksum
/// check fails, and it kills the lazy tree with one clear line.
#[test]
fn lazy_damaged_page_file_kills_tree() {
    let work = Work::new("lazy_damaged_pages");
    let opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_lazy"), &[], &opts);
    dump_and_check_gone(&work, &mut p, &opts);
    let pages = fs::read_dir(work.img())
        .expect("img")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
        })
        .expect("page file");
    let mut b = fs::read(&pages).expect("read pages");
    let at = b.len() - 4096 * 3;
    b[at] ^= 0x55;
    fs::write(&pages, b).expect("write pages");
    expect_checksum_kill(&work, p.pid);
}

/// With a damaged page file in the image (or its chain): starts the
/// daemon and restores lazily; the daemon's checksum check fails and the
/// lazy tree is killed (or, if the check fails first, the restore fails
/// and leaves nothing).
fn expect_checksum_kill(work: &Work, pid: i32) {
    let mut d = daemon(work, &work.img(), &[], 20);
    let out = restore_detached(work, &["--lazy-pages"], T);
    let code = d.wait(work, T);
    let err = d.stderr(work);
    assert!(
        code != Some(0) && err.contains("checksum"),
        "daemon: {code:?} {err}"
    );
    if out.success() {
        let mut r = Proc::adopt(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(r.poll(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(r.poll(), Ok(None)) {
            let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let stack = fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            fail(
                work,
                format!("still running after the kill:\n{st}\n{stack}"),
            );
        }
        let exit = step(work, "restored process", r.wait(Duration::from_secs(10)));
        assert_eq!(exit, Exit::Signal(libc::SIGKILL), "{}", work.diagnostics());
        assert!(err.contains("killed"), "{err}");
    } else {
        assert!(out.stderr.contains("lazy-pages"), "{out:?}");
    }
    wait_for(work, "the restored process to be gone", || !pid_exists(pid));
}

/// The daemon killed mid-way: its watchdog kills the lazy tree (no process
/// left waiting in a fault, none reading zeros), with one clear line.
#[test]
fn lazy_daemon_killed_kills_tree() {
    let work = Work::new("lazy_daemon_killed");
    let (mut r, mut d) = lazy_case(&work, Program::Bin("tp_lazy"), &[], 300);
    work.release_go();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kills the daemon we started.
    unsafe { libc::kill(d.pid(), libc::SIGKILL) };
    assert_eq!(d.wait(&work, T), None);
    let exit = step(&work, "restored process", r.wait(Duration::from_secs(20)));
    assert_eq!(exit, Exit::Signal(libc::SIGKILL), "{}", work.diagnostics());
    wait_for(&work, "the watchdog's message", || {
        d.stderr(&work)
            .contains("died before every page was in place")
    });
    assert!(
        work.result().is_none(),
        "the program finished: {:?}",
        work.result()
    );
}

/// criu's remote lazy migration: `dump --lazy-pages --address --port`
/// keeps serving the pages; the image without its page files goes to
/// another directory; `lazy-pages --page-server` there fetches them.
#[test]
fn lazy_remote_page_server() {
    lazy_remote(&Work::new("lazy_remote"), &[], &[]);
}

/// [`lazy_remote_page_server`] over TLS (criu's `--tls`): the page
/// server of the dump and the lazy-pages daemon authenticate each other
/// with certificates of one CA made here.
#[test]
fn lazy_remote_page_server_tls() {
    let work = Work::new("lazy_remote_tls");
    let ca = certs::Ca::new(&work.path("certs"), "ca");
    let server = ca.leaf("server", "127.0.0.1", "IP:127.0.0.1");
    let client = ca.leaf("client", "stasis-client", "DNS:stasis-client");
    lazy_remote(
        &work,
        &certs::tls_args(&ca, &server),
        &certs::tls_args(&ca, &client),
    );
    let log = fs::read_to_string(work.img().join("lazy.log")).unwrap_or_default();
    assert!(log.contains("TLS"), "the daemon did not log TLS: {log}");
}

/// `dump --lazy-pages` of tp_lazy serving its pages (with `dump_extra`),
/// the lazy-pages daemon (with `daemon_extra`) fetching them, the program
/// checking its memory.
fn lazy_remote(work: &Work, dump_extra: &[String], daemon_extra: &[String]) {
    let opts = Opts::default();
    let mut p = start_ready(work, Program::Bin("tp_lazy"), &[], &opts);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let port_s = port.to_string();
    let src = work.path("src");
    fs::create_dir_all(&src).expect("src");
    let pid_s = p.pid.to_string();
    let mut dump_args = vec![
        "dump",
        "-t",
        &pid_s,
        "-D",
        src.to_str().expect("utf-8"),
        "-o",
        "dump.log",
        "-v4",
        "--lazy-pages",
        "--address",
        "127.0.0.1",
        "--port",
        &port_s,
    ];
    dump_args.extend(dump_extra.iter().map(String::as_str));
    let mut dumper = Bg::start(work, "dump", &dump_args, &[]);
    wait_for(work, "the lazy page server", || {
        fs::read_to_string(src.join("dump.log")).is_ok_and(|l| l.contains("listening"))
    });
    let exit = step(work, "dumped process", p.wait(Duration::from_secs(10)));
    assert_eq!(exit, Exit::Signal(libc::SIGKILL));
    // Everything but the page files.
    let dst = work.img();
    fs::create_dir_all(&dst).expect("dst");
    for e in fs::read_dir(&src).expect("src").flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".img") && !n.starts_with("pages-") {
            fs::copy(e.path(), dst.join(&n)).expect("copy");
        }
    }
    let mut daemon_args = vec!["--page-server", "--address", "127.0.0.1", "--port", &port_s];
    daemon_args.extend(daemon_extra.iter().map(String::as_str));
    let mut d = daemon(work, &dst, &daemon_args, 20);
    let mut r = restore_and_adopt(work, p.pid, &opts_lazy());
    work.release_go();
    daemon_done(work, &mut d);
    fs::write(work.path("resident"), "1").expect("resident");
    let out = finish(work, &mut r, T);
    out.assert_pass(work);
    assert_eq!(dumper.wait(work, T), Some(0), "{}", dumper.stderr(work));
    let left: Vec<String> = fs::read_dir(&dst)
        .expect("dst")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pages-") || n.contains("socket"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn lazy_without_daemon_refused() {
    let work = Work::new("lazy_without_daemon");
    let opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_lazy"), &[], &opts);
    dump_and_check_gone(&work, &mut p, &opts);
    let out = restore_detached(&work, &["--lazy-pages"], T);
    assert!(
        !out.success() && out.stderr.contains("no lazy-pages daemon"),
        "{out:?}"
    );
    assert!(!pid_exists(p.pid), "a half-restored process was left");
}

/// A pre-copy chain (two pre-dumps and the final dump of tp_precopy, its
/// hot area written all the time) restored lazily: the restore reads no
/// page of the lazy areas, the daemon serves each page from the image of
/// the chain that holds it, the program writes during the lazy phase
/// (throttled streaming) and checks every page. Returns the restored
/// program and the daemon.
fn lazy_chain(work: &Work, args: &[&str]) -> (Proc, Bg) {
    let opts = Opts::default();
    let mut p = start_ready(work, Program::Bin("tp_precopy"), args, &opts);
    let pid_s = p.pid.to_string();
    for (dir, prev) in [("pre1", None), ("pre2", Some("../pre1"))] {
        let d = work.path(dir);
        let mut a = vec!["pre-dump", "-t", &pid_s, "-D", d.to_str().expect("utf-8")];
        a.extend(["-o", "pre.log"]);
        if let Some(prev) = prev {
            a.extend(["--prev-images-dir", prev]);
        }
        let out = stasis(work, &a, T);
        assert!(out.success(), "pre-dump {dir}: {out:?}");
    }
    let dump = Opts {
        dump_extra: vec!["--prev-images-dir", "../pre2", "--track-mem"],
        ..Opts::default()
    };
    dump_and_check_gone(work, &mut p, &dump);
    let d = daemon(work, &work.img(), &[], 5);
    let r = restore_and_adopt(work, p.pid, &opts_lazy());
    (r, d)
}

/// A number in `text` right before `what` (`... 123 bytes streamed`).
fn number_before(text: &str, what: &str) -> u64 {
    text.find(what)
        .and_then(|i| text[..i].split_whitespace().last())
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or(0)
}

#[test]
fn lazy_precopy_chain() {
    let work = Work::new("lazy_chain");
    let (mut r, mut d) = lazy_chain(&work, &["--churn", "1024"]);
    daemon_done(&work, &mut d);
    finish(&work, &mut r, T).assert_pass(&work);
    // The pages came from the whole chain (64 MiB area, saved by pre1),
    // not from the final image alone (only what was written since pre2).
    let log = fs::read_to_string(work.img().join("lazy.log")).unwrap_or_default();
    let served = number_before(&log, "bytes), ") + number_before(&log, "bytes streamed");
    let last = fs::metadata(work.img().join(format!("pages-{}.img", r.pid)))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        served >= 60 << 20 && last < served / 4,
        "served {served} bytes, final page file {last} bytes: {log}"
    );
    // A chain is not served from a remote lazy page server: refused by
    // name before connecting.
    let img = work.img();
    let out = stasis(
        &work,
        &[
            "lazy-pages",
            "-D",
            img.to_str().expect("utf-8"),
            "--page-server",
            "--address",
            "127.0.0.1",
            "--port",
            "1",
        ],
        T,
    );
    assert!(
        !out.success() && out.stderr.contains("pre-copy chain"),
        "{out:?}"
    );
}

/// Negative control: the program corrupts a page after the restore
/// (tp_precopy `--corrupt`): its own check must FAIL.
#[test]
fn negative_lazy_precopy_chain_corrupt() {
    let work = Work::new("lazy_chain_corrupt");
    let (mut r, mut d) = lazy_chain(&work, &["--corrupt"]);
    daemon_done(&work, &mut d);
    let out = finish(&work, &mut r, T);
    assert!(
        out.result.starts_with("FAIL") && out.result.contains("area page"),
        "corrupted memory did not fail: {:?}",
        out.result
    );
}

/// Negative control: a damaged page file of the chain's first image (a
/// byte of the lazy area flipped) is found by the daemon's background
/// check: the lazy tree is killed and the daemon fails, naming the file.
#[test]
fn negative_lazy_precopy_chain_parent_damaged() {
    let work = Work::new("lazy_chain_damaged");
    let opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_precopy"), &[], &opts);
    let pid_s = p.pid.to_string();
    let pre = work.path("pre1");
    let out = stasis(
        &work,
        &["pre-dump", "-t", &pid_s, "-D", pre.to_str().expect("utf-8")],
        T,
    );
    assert!(out.success(), "pre-dump: {out:?}");
    let dump = Opts {
        dump_extra: vec!["--prev-images-dir", "../pre1", "--track-mem"],
        ..Opts::default()
    };
    dump_and_check_gone(&work, &mut p, &dump);
    let f = pre.join(format!("pages-{}.img", p.pid));
    let mut b = fs::read(&f).expect("read the parent's page file");
    let at = b.len() / 2;
    b[at] ^= 0x40;
    fs::write(&f, b).expect("damage it");
    expect_checksum_kill(&work, p.pid);
}

/// A tree with its own IPC namespace and POSIX queues (the IPC data at
/// the end of the root's page file, `ipc.mq_end` included), restored
/// lazily: the program checks every queue and descriptor.
#[test]
fn lazy_mqueue_namespace() {
    let work = Work::new("lazy_mqueue_namespace");
    let (mut r, mut d) = lazy_case(&work, Program::Bin("tp_mqueue"), &["--mode", "ns"], 0);
    daemon_done(&work, &mut d);
    finish(&work, &mut r, T).assert_pass(&work);
}
