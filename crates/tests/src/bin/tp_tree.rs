//! tp_tree: a process tree survives checkpoint/restore: PIDs, parents,
//! sessions, process groups, a zombie with its exit status, a stopped
//! process, a process blocked in wait.
//!
//! Usage: `tp_tree WORKDIR [--corrupt]`
//!
//! ```text
//! root (this process)
//!  ├─ a: session leader (setsid)
//!  │   └─ a1: its own process group, in a's session
//!  ├─ b: blocked in waitpid() for its child b1
//!  │   └─ b1: polls for go, exits 0
//!  ├─ z: exits 42 at once, left unreaped (a zombie)
//!  ├─ s: stops itself (SIGSTOP) and stays stopped
//!  └─ e: created with exit signal SIGUSR1 instead of SIGCHLD
//! ```
//!
//! Every live process checks its own pid, ppid, pgid and sid after go and
//! reports through its exit status; the root checks the zombie's status,
//! that s is still stopped (then continues it), and the task states.

use stasis_tests::{Proto, Report};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
}

fn ids() -> Ids {
    // SAFETY: these calls cannot fail for the calling process.
    unsafe {
        Ids {
            pid: libc::getpid(),
            ppid: libc::getppid(),
            pgid: libc::getpgrp(),
            sid: libc::getsid(0),
        }
    }
}

/// Runs `f` in a child process; returns its PID.
fn spawn(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the program is single-threaded, so fork is safe; the child
    // leaves through _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// A child's body: waits for go, then checks its identity didn't change.
fn check_after_go(proto: &Proto, before: Ids) -> i32 {
    proto.wait_go();
    let after = ids();
    let mut code = 0;
    if after.pid != before.pid {
        code |= 1;
    }
    if after.ppid != before.ppid {
        code |= 2;
    }
    if after.pgid != before.pgid {
        code |= 4;
    }
    if after.sid != before.sid {
        code |= 8;
    }
    code
}

fn wait_status(pid: i32) -> Option<i32> {
    let mut st = 0;
    // SAFETY: valid out pointer; pid is our child.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    (r == pid).then_some(st)
}

fn state_of(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .unwrap_or('?')
}

/// A child whose exit signal is SIGUSR1 instead of SIGCHLD (clone3).
fn spawn_exit_signal(sig: i32, f: impl FnOnce() -> i32) -> i32 {
    let mut args = [0u64; 11];
    args[4] = sig as u64; // exit_signal
                          // SAFETY: clone3 without CLONE_VM behaves like fork; single-threaded,
                          // the child leaves with _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args.as_ptr(),
            std::mem::size_of_val(&args),
        )
    } as i32;
    assert!(pid >= 0, "clone3 failed");
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    pid
}

fn exit_signal_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(35)?.parse().ok()
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let root_before = ids();
    // SIGUSR1 stays blocked: it is the exit signal of child e.
    let usr1 = 1u64 << (libc::SIGUSR1 - 1);
    // SAFETY: setting our own mask.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &usr1 as *const u64,
            0usize,
            8usize,
        )
    };
    let e = spawn_exit_signal(libc::SIGUSR1, || {
        proto.wait_go();
        0
    });

    let a = spawn(|| {
        // SAFETY: setsid in a fresh child that is not a group leader.
        unsafe { libc::setsid() };
        let me = ids();
        let a1 = spawn(|| {
            // SAFETY: becoming our own group leader.
            unsafe { libc::setpgid(0, 0) };
            let me = ids();
            std::fs::write(proto.path("a1.ids"), format!("{me:?}")).ok();
            check_after_go(&proto, me)
        });
        let code = check_after_go(&proto, me);
        match wait_status(a1) {
            Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => code,
            Some(st) if libc::WIFEXITED(st) => code | (libc::WEXITSTATUS(st) << 4),
            _ => code | 0x40,
        }
    });
    let b = spawn(|| {
        let me = ids();
        let b1 = spawn(|| check_after_go(&proto, ids()));
        // Blocked in wait4 until b1 exits after go.
        let st = wait_status(b1);
        let mut code = 0;
        match st {
            Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
            _ => code |= 0x10,
        }
        let after = ids();
        if after != me {
            code |= 0x20;
        }
        code
    });
    let z = spawn(|| 42);
    let s = spawn(|| {
        let me = ids();
        // SAFETY: stopping ourselves; the root continues us after go.
        unsafe { libc::raise(libc::SIGSTOP) };
        let after = ids();
        i32::from(after != me)
    });

    // Ready once z is a zombie, s is stopped, and a1 is in its own group.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (state_of(z) != 'Z' || state_of(s) != 'T' || !proto.path("a1.ids").exists())
        && std::time::Instant::now() < deadline
    {
        stasis_tests::nap(5_000_000);
    }
    std::fs::write(proto.path("tree.pids"), format!("{a} {b} {z} {s}\n")).ok();
    proto.ready_and_wait();

    let mut report = Report::new();
    report.eq("root ids", root_before, ids());
    // s must still be stopped after a restore.
    report.eq("state of the stopped child", 'T', state_of(s));
    report.eq("state of the zombie", 'Z', state_of(z));
    report.eq(
        "exit signal of child e",
        Some(libc::SIGUSR1),
        exit_signal_of(e),
    );
    let mut st = 0;
    // SAFETY: a child with a non-SIGCHLD exit signal needs __WALL.
    let r = unsafe { libc::waitpid(e, &mut st, libc::__WALL) };
    report.check(
        r == e && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        || format!("child e: status {st:#x}"),
    );
    // SAFETY: continuing our own stopped child.
    unsafe { libc::kill(s, libc::SIGCONT) };
    let zs = wait_status(z);
    let zcode = zs
        .filter(|&st| libc::WIFEXITED(st))
        .map(|st| libc::WEXITSTATUS(st));
    report.eq(
        "zombie exit status",
        Some(if corrupt { 43 } else { 42 }),
        zcode,
    );
    for (name, pid) in [("a", a), ("b", b), ("s", s)] {
        match wait_status(pid) {
            Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => {}
            Some(st) => report.fail(format!(
                "child {name} (pid {pid}) reported failure: wait status {st:#x}"
            )),
            None => report.fail(format!("child {name} (pid {pid}) could not be waited for")),
        }
    }
    proto.finish(&report);
}
