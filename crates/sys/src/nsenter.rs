//! Running a closure in another process's namespace: a short-lived thread
//! joins it (setns changes only the calling thread's namespaces) and runs
//! the closure there.

use crate::{check, Pid, Result, SysError};
use std::os::fd::AsRawFd;

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
