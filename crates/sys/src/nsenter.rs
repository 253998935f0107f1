//! Running a closure in another process's namespace: a short-lived thread
//! joins it (setns changes only the calling thread's namespaces) and runs
//! the closure there.

use crate::{check, Pid, Result, SysError};
use std::os::fd::{AsRawFd, OwnedFd};

/// Runs `f` on a new thread that first joins the `name` namespace
/// (`/proc/PID/ns/NAME`, `flag` = its CLONE_NEW* constant) of `pid`.
pub fn in_ns_of<T: Send + 'static>(
    pid: Pid,
    name: &str,
    flag: i32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let path = format!("/proc/{}/ns/{name}", pid.0);
    let ns = std::fs::File::open(&path).map_err(|e| {
        SysError::new(
            format!("open {path}"),
            Some(pid),
            e.raw_os_error().unwrap_or(0),
        )
    })?;
    in_ns(ns.into(), flag, Some(pid), f)
}

/// Runs `f` on a new thread that first joins the namespace `ns` (of type
/// `flag`; `pid` names the process it belongs to, for errors).
pub fn in_ns<T: Send + 'static>(
    ns: std::os::fd::OwnedFd,
    flag: i32,
    pid: Option<Pid>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || -> Result<T> {
        // SAFETY: setns on a namespace descriptor we own; it changes this
        // short-lived thread only.
        let r = unsafe { libc::setns(ns.as_raw_fd(), flag) };
        check(r.into(), "setns", pid)?;
        Ok(f())
    })
    .join()
    .map_err(|_| SysError::other("namespace thread", pid, "panicked"))?
}

/// Moves the calling thread into a new namespace (`flag`, named `name` in
/// /proc/thread-self/ns/); returns a descriptor of the old one, to go back
/// with [`join`].
pub fn unshare_thread(name: &str, flag: i32) -> Result<std::os::fd::OwnedFd> {
    let old = crate::util::open(
        &format!("/proc/thread-self/ns/{name}"),
        libc::O_RDONLY | libc::O_CLOEXEC,
    )?;
    // SAFETY: unshare with an integer flag; affects the calling thread.
    let r = unsafe { libc::unshare(flag) };
    check(r.into(), &format!("unshare({name})"), None)?;
    Ok(old)
}

/// Moves the calling thread into the namespace `ns` (of type `flag`).
pub fn join(ns: &impl AsRawFd, flag: i32) -> Result<()> {
    // SAFETY: setns on a namespace descriptor the caller owns.
    let r = unsafe { libc::setns(ns.as_raw_fd(), flag) };
    check(r.into(), "setns", None).map(|_| ())
}

/// Runs `f` in a child forked into the PID namespace `pid_ns` (a
/// descriptor of it, or a pidfd of a process in it) by a thread of its
/// own (whose pid_for_children it becomes; the thread's other namespaces
/// are the caller's), and returns the `n` integers `f` wrote: what the
/// kernel translates into the reader's PID namespace (SO_PEERCRED, SysV
/// IPC's PIDs) reads as that namespace numbers it, even for a process
/// that has exited. `f` runs in the forked child: raw system calls only
/// (no allocation, no locks); it returns whether it succeeded.
pub fn ints_in_pid_ns(
    pid_ns: &OwnedFd,
    n: usize,
    what: &str,
    f: impl FnOnce(&mut [i32]) -> bool + Send,
) -> Result<Vec<i32>> {
    use crate::clone::{exit_now, fork_with_pid, Forked};
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<i32>> {
            let mut out = vec![0i32; n];
            let (r, w) = crate::util::pipe()?;
            join(pid_ns, libc::CLONE_NEWPID)?;
            // SAFETY: the child runs `f` (raw calls only, its contract) on
            // memory allocated before the fork, then leaves through _exit.
            match unsafe { fork_with_pid(&[], 0)? } {
                Forked::Child => {
                    if !f(&mut out) {
                        exit_now(1);
                    }
                    let len = n * 4;
                    // SAFETY: writes `out`, a live buffer of `len` bytes.
                    let sent = unsafe { libc::write(w.as_raw_fd(), out.as_ptr().cast(), len) };
                    exit_now(if sent == len as isize { 0 } else { 1 })
                }
                Forked::Parent(child) => {
                    drop(w);
                    let mut bytes = Vec::with_capacity(n * 4);
                    let read = std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut bytes);
                    let mut status = 0;
                    // SAFETY: waits for our own child.
                    let waited = unsafe { libc::waitpid(child.0, &mut status, 0) };
                    check(waited.into(), "waitpid (PID namespace reader)", Some(child))?;
                    if read.is_err() || bytes.len() != n * 4 || status != 0 {
                        return Err(SysError::other(
                            format!("{what} inside the tree's PID namespace"),
                            Some(child),
                            format!("the reader failed (status {status:#x})"),
                        ));
                    }
                    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                        *o = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                    }
                    Ok(out)
                }
            }
        })
        .join()
        .unwrap_or_else(|_| Err(SysError::other(what, None, "reader thread panicked")))
    })
}
