//! A process that tells whether a thread lives in a Landlock domain.
//!
//! No file or call shows a thread's Landlock domain (none in 6.18:
//! /proc/PID/status, /proc/PID/attr and landlock_*() have no getter).
//! What does show it: a thread in a domain may not ptrace-access a
//! process outside that domain (Landlock's ptrace_access_check), while
//! one in no domain may, other checks passing. [`Witness`] is such a
//! process, made to pass every other check for one target: in its PID
//! namespace (so the target can name it), with the target's real uid and
//! gid, no capabilities, dumpable, and any process allowed to trace it
//! (Yama, for attach-mode checks). The target then compares itself with
//! it by kcmp(KCMP_VM), which needs ptrace read access to both: a result
//! means allowed (no domain), EPERM denied (a domain). Nothing changes.

use crate::{check, Pid, Result, SysError};
use std::os::fd::{AsRawFd, OwnedFd};

/// The witness process; it exits when dropped.
pub struct Witness {
    /// Its PID here.
    pub pid: Pid,
    hold: Option<OwnedFd>,
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.hold = None;
        let mut st = 0;
        // SAFETY: reaps our own child, which exits once `hold` is closed.
        unsafe { libc::waitpid(self.pid.0, &mut st, libc::__WALL) };
    }
}

/// Landlock is enabled on this kernel (landlock_create_ruleset reports
/// an ABI version).
pub fn enabled() -> bool {
    const VERSION: u64 = 1;
    // SAFETY: a NULL attribute with size 0 and the VERSION flag only
    // queries the ABI version.
    let r = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, 0usize, 0usize, VERSION) };
    r >= 1
}

/// Starts a witness for a target with real ids `uid`, `gid`, in the PID
/// namespace `pidns` (a /proc/PID/ns/pid descriptor; None: ours) and the
/// user namespace `userns` (None: ours; the ids are then that
/// namespace's: the capability check compares capabilities there).
pub fn witness(
    uid: u32,
    gid: u32,
    pidns: Option<OwnedFd>,
    userns: Option<OwnedFd>,
) -> Result<Witness> {
    let user_fd = userns.as_ref().map_or(-1, |f| f.as_raw_fd());
    let (ready_r, ready_w) = crate::util::pipe()?;
    let (hold_r, hold_w) = crate::util::pipe()?;
    let fds = [
        ready_r.as_raw_fd(),
        ready_w.as_raw_fd(),
        hold_r.as_raw_fd(),
        hold_w.as_raw_fd(),
    ];
    // Forked from a short-lived thread: setns(CLONE_NEWPID) changes only
    // that thread's namespace for children.
    let pid = std::thread::spawn(move || -> Result<Pid> {
        if let Some(ns) = &pidns {
            // SAFETY: setns on a namespace descriptor we own.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) };
            check(r.into(), "setns(pid) for the Landlock witness", None)?;
        }
        // SAFETY: the child makes raw system calls only and _exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: raw calls on integers and our pipe descriptors.
            unsafe { run(uid, gid, fds, user_fd) }
        }
        check(child.into(), "fork (Landlock witness)", None).map(|p| Pid(p as i32))
    })
    .join()
    .map_err(|_| SysError::other("Landlock witness thread", None, "panicked"))??;
    drop(userns);
    drop(ready_w);
    drop(hold_r);
    let w = Witness {
        pid,
        hold: Some(hold_w),
    };
    let mut b = [0u8; 1];
    // SAFETY: b is a live 1-byte buffer.
    let n = unsafe { libc::read(ready_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    if n != 1 || b[0] != b'y' {
        return Err(SysError::other(
            "Landlock witness",
            Some(pid),
            "it could not take the target's ids",
        ));
    }
    Ok(w)
}

/// The witness: in the user namespace `user_fd` (if not -1), the
/// target's real ids, no capabilities, dumpable, traceable by anyone;
/// reports "y" (or "n") and waits until the other end of the hold pipe
/// is closed.
///
/// # Safety
/// Only in a freshly forked child: raw calls, then _exit.
unsafe fn run(uid: u32, gid: u32, [ready_r, ready_w, hold_r, hold_w]: [i32; 4], user_fd: i32) -> ! {
    // SAFETY: raw calls on integers and small stack buffers.
    unsafe {
        libc::close(ready_r);
        libc::close(hold_w);
        let joined = user_fd < 0 || libc::setns(user_fd, libc::CLONE_NEWUSER) == 0;
        // Nothing else of the dumper's: another witness's hold pipe kept
        // open here would keep that witness waiting forever.
        let (a, b) = (ready_w.min(hold_r) as u32, ready_w.max(hold_r) as u32);
        libc::syscall(libc::SYS_close_range, 3u32, a.saturating_sub(1), 0u32);
        libc::syscall(libc::SYS_close_range, a + 1, b - 1, 0u32);
        libc::syscall(libc::SYS_close_range, b + 1, u32::MAX, 0u32);
        let no_caps = [0u32; 6];
        let header = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this process
                                          // No supplementary groups (where setgroups is allowed: a user
                                          // namespace may deny it; groups play no part in the check).
        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>());
        let ok = joined
            && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
            && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0
            && libc::syscall(libc::SYS_capset, header.as_ptr(), no_caps.as_ptr()) == 0
            && libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) == 0;
        // Yama (where built): any process may trace us.
        libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0);
        let b = if ok { b"y" } else { b"n" };
        libc::write(ready_w, b.as_ptr().cast(), 1);
        let mut x = [0u8; 1];
        libc::read(hold_r, x.as_mut_ptr().cast(), 1);
        libc::_exit(0)
    }
}
