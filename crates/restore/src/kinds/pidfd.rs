//! pidfds: opened by the process itself with a remote `pidfd_open` of the
//! restored process or thread, once every process of the tree exists with
//! its PID ([`super::reopen_late`]), in the process's own PID namespace.

use crate::{At, Result, Stage};
use stasis_sys::remote::RemoteThread;

/// `pidfd_open(target)` (for descriptor `fd`) in the process with
/// PIDFD_NONBLOCK (O_NONBLOCK) and PIDFD_THREAD (O_EXCL) as saved; returns
/// the new descriptor (close-on-exec) and its name for messages.
pub(super) fn open(
    r: &mut RemoteThread,
    pid: u32,
    fd: i32,
    target: u32,
    flags: u32,
) -> Result<(u64, String)> {
    let what = format!("fd {fd} (pidfd of PID {target})");
    let keep = flags as i32 & (libc::O_NONBLOCK | libc::O_EXCL);
    let new = r
        .call(
            libc::SYS_pidfd_open,
            &[u64::from(target), keep as u64],
            &format!("pidfd_open {what}"),
        )
        .at(pid, Stage::Attributes)?;
    Ok((new, what))
}
