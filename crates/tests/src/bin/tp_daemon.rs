//! tp_daemon: a daemon whose session leader has exited, with a process
//! group whose leader has exited, keeps both after checkpoint/restore.
//!
//! Usage: `tp_daemon WORKDIR [--corrupt]`
//!
//! The started process forks L, which calls setsid (session L) and forks
//! the daemon D, then exits: D is in session L with no leader. D forks
//! G1, which makes its own group, and G2, which joins it; G1 exits: G2's
//! group has no leader. D writes its PID to `WORK/daemon.pid`; the
//! harness dumps D. After go, D and G2 check their session and group.

use stasis_tests::{Proto, Report};

fn ids() -> (i32, i32, i32) {
    // SAFETY: cannot fail for the calling process.
    unsafe { (libc::getpid(), libc::getpgrp(), libc::getsid(0)) }
}

fn fork(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: single-threaded; the child leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let c = f();
        // SAFETY: ends the child.
        unsafe { libc::_exit(c) };
    }
    pid
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let leader = fork(|| {
        // SAFETY: a fresh child is no group leader: setsid succeeds.
        unsafe { libc::setsid() };
        fork(|| daemon(&proto, corrupt));
        0
    });
    let mut st = 0;
    // SAFETY: reaping our own child, the exited session leader.
    unsafe { libc::waitpid(leader, &mut st, 0) };
    // The starter stays until go, so the harness sees it alive until the
    // daemon is ready; it is not part of the daemon's tree.
    proto.wait_go();
}

fn daemon(proto: &Proto, corrupt: bool) -> i32 {
    let me = ids();
    let g1 = fork(|| {
        // SAFETY: becoming a group leader.
        unsafe { libc::setpgid(0, 0) };
        0
    });
    let g2 = fork(|| {
        // Wait until our parent has moved us into g1's group.
        while ids().1 == me.1 {
            stasis_tests::nap(1_000_000);
        }
        let before = ids();
        proto.wait_go();
        i32::from(ids() != before)
    });
    // SAFETY: moving g2 into g1's group, then reaping g1 (the group's leader).
    unsafe {
        while libc::setpgid(g2, g1) != 0 {
            stasis_tests::nap(1_000_000);
        }
        let mut st = 0;
        libc::waitpid(g1, &mut st, 0);
    }
    std::fs::write(proto.path("daemon.pid"), format!("{}\n", me.0)).expect("daemon.pid");
    proto.ready_and_wait();
    let mut report = Report::new();
    let now = ids();
    report.eq(
        "daemon (pid, pgid, sid)",
        me,
        if corrupt { (0, 0, 0) } else { now },
    );
    report.check(me.2 != me.0 && me.1 == me.2, || {
        format!("daemon is not in a leaderless session: {me:?}")
    });
    let mut st = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(g2, &mut st, 0) };
    report.check(
        r == g2 && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        || format!("the group member changed its (pid, pgid, sid) or failed: status {st:#x}"),
    );
    proto.finish(&report);
}
