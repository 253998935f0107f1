//! tp_nspid: PID namespaces nested below the tree's survive
//! checkpoint/restore. Run as PID 1 of a PID namespace (`stasis run`).
//!
//! Usage: `tp_nspid WORKDIR [--corrupt]`
//!
//! ```text
//! root (PID 1 of the run namespace)
//!  └─ b: unshare(CLONE_NEWPID), then forks
//!      ├─ c: init of nested namespace N1 (PID 1 there)
//!      │   ├─ g1: clone(CLONE_NEWPID) →
//!      │   │   └─ h: init of N2, nested in N1
//!      │   │       └─ i: a member of N2
//!      │   └─ g2: a member of N1
//!      └─ d: a member of N1 whose parent (b) is outside it
//! ```
//!
//! h and g2 also run a second thread, which checks its own NSpid and
//! TID. Every process records its NSpid (every level, from /proc/self/status),
//! getpid() and getppid() before ready, and compares them after go;
//! b also checks its pid_for_children is c's namespace. Mismatches
//! are appended to WORK/nspid.log; each process exits 1 on a mismatch or
//! a failed child, and the root reports.

use stasis_tests::{Proto, Report};
use std::io::Write;

/// What a process is: NSpid line, getpid(), getppid().
#[derive(Debug, PartialEq, Eq, Clone)]
struct Seen {
    nspid: String,
    pid: i32,
    ppid: i32,
}

fn seen() -> Seen {
    seen_at("/proc/self/status")
}

fn seen_at(path: &str) -> Seen {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ");
    // SAFETY: getpid and getppid cannot fail.
    let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
    Seen { nspid, pid, ppid }
}

fn ns_ino(which: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/ns/{which}")).map_or(0, |m| m.ino())
}

fn log(proto: &Proto, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(proto.path("nspid.log"))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Forks a child running `f` (clone3, CLONE_NEWPID if `new_ns`); returns
/// its PID as we see it.
fn spawn(new_ns: bool, f: impl FnOnce() -> i32) -> i32 {
    let mut args = [0u64; 11];
    if new_ns {
        args[0] = libc::CLONE_NEWPID as u64;
    }
    args[4] = libc::SIGCHLD as u64;
    // SAFETY: clone3 without CLONE_VM behaves like fork; the program is
    // single-threaded and the child leaves through _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args.as_ptr(),
            std::mem::size_of_val(&args),
        )
    } as i32;
    if pid < 0 {
        stasis_tests::fatal("clone3");
    }
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child without the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    pid
}

fn reap(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: our child; valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    if r == pid && libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        100
    }
}

/// Tells the root this process has recorded itself.
fn recorded(w: i32) {
    // SAFETY: one byte from a local to our copy of the pipe, then closed.
    unsafe {
        libc::write(w, b"r".as_ptr().cast(), 1);
        libc::close(w);
    }
}

/// Runs `body` (a process's own record-and-check) beside a second thread
/// that records its NSpid and TID and checks them after go: the
/// process's code, or 1 if the thread's check failed.
fn with_thread(proto: &Proto, name: &str, body: impl FnOnce() -> i32) -> i32 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let t = s.spawn(move || {
            let me = seen_at("/proc/thread-self/status");
            // SAFETY: gettid cannot fail.
            let tid = unsafe { libc::gettid() };
            let _ = tx.send(());
            proto.wait_go();
            let now = seen_at("/proc/thread-self/status");
            // SAFETY: as above.
            let tid_now = unsafe { libc::gettid() };
            if now.nspid != me.nspid || tid_now != tid {
                log(
                    proto,
                    &format!(
                        "{name} thread: was {} (tid {tid}), now {} (tid {tid_now})",
                        me.nspid, now.nspid
                    ),
                );
                return 1;
            }
            0
        });
        let _ = rx.recv();
        body() | t.join().unwrap_or(1)
    })
}

/// A process's check after go: its identity must be what it recorded.
fn check(proto: &Proto, name: &str, before: &Seen, corrupt: bool) -> i32 {
    proto.wait_go();
    let mut want = before.clone();
    if corrupt {
        want.nspid.push_str(" 99");
    }
    let now = seen();
    if now != want {
        log(proto, &format!("{name}: was {want:?}, now {now:?}"));
        return 1;
    }
    0
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let mut report = Report::new();
    let root_before = seen();
    if root_before.pid != 1 {
        report.skip("not PID 1 of a PID namespace (run it with `stasis run`)");
        proto.finish(&report);
    }
    let mut fds = [0i32; 2];
    // SAFETY: valid out array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        stasis_tests::fatal("pipe2");
    }
    let (r, w) = (fds[0], fds[1]);
    let p = &proto;
    let b = spawn(false, move || {
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(r) };
        let me = seen();
        // SAFETY: a single-threaded process unshares its children's PID namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            log(p, "b: unshare(CLONE_NEWPID) failed");
            return 1;
        }
        let c = spawn(false, move || {
            let me = seen();
            let g1 = spawn(false, move || {
                let me = seen();
                let h = spawn(true, move || {
                    let me = seen();
                    let i = spawn(false, move || {
                        let me = seen();
                        recorded(w);
                        check(p, "i", &me, false)
                    });
                    with_thread(p, "h", || {
                        recorded(w);
                        check(p, "h", &me, corrupt) | reap(i).min(1)
                    })
                });
                recorded(w);
                check(p, "g1", &me, false) | reap(h).min(1)
            });
            let g2 = spawn(false, move || {
                let me = seen();
                with_thread(p, "g2", || {
                    recorded(w);
                    check(p, "g2", &me, false)
                })
            });
            recorded(w);
            let mut code = check(p, "c", &me, false) | reap(g1).min(1) | reap(g2).min(1);
            // d (b's child in our namespace) must finish before we, its init, exit.
            while !p.path("d-done").exists() {
                stasis_tests::nap(10_000_000);
            }
            if me.pid != 1 {
                log(p, "c: not the init of its namespace");
                code = 1;
            }
            code
        });
        let d = spawn(false, move || {
            let me = seen();
            recorded(w);
            check(p, "d", &me, false)
        });
        recorded(w);
        let mut code = check(p, "b", &me, false);
        let pfc = ns_ino("pid_for_children");
        if pfc != ns_ino(&format!("../../{c}/ns/pid")) || pfc == ns_ino("pid") {
            log(p, "b: pid_for_children is not c's namespace any more");
            code = 1;
        }
        code |= reap(d).min(1);
        let _ = std::fs::write(p.path("d-done"), "1");
        code | reap(c).min(1)
    });
    // SAFETY: closing our write end; reading from the pipe into a local.
    unsafe { libc::close(w) };
    let mut got = 0;
    let mut buf = [0u8; 16];
    while got < 7 {
        // SAFETY: reads into a local buffer.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: closing the read end.
    unsafe { libc::close(r) };
    if got != 7 {
        report.fail(format!("only {got} of 7 processes recorded themselves"));
        proto.finish(&report);
    }
    proto.ready();
    let code = check(&proto, "root", &root_before, false) | reap(b).min(1);
    let text = std::fs::read_to_string(proto.path("nspid.log")).unwrap_or_default();
    report.check(code == 0 && text.is_empty(), || {
        format!("exit {code}; {}", text.trim_end().replace('\n', "; "))
    });
    proto.finish(&report);
}
