//! fanotify groups: what the fanotify kind of descriptor needs to make a
//! group again (see crates/dump/src/kinds/fanotify.rs and its restore
//! twin). File handles and FIONREAD are in [`crate::inotify`].

use crate::{check, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// fanotify_init(flags, event_f_flags): a new group.
pub fn init(flags: u32, event_flags: u32) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is ours to own.
    let fd = unsafe { libc::fanotify_init(flags, event_flags) };
    check(
        fd.into(),
        &format!("fanotify_init({flags:#x}, {event_flags:#x})"),
        None,
    )?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fanotify_mark(fd, flags, mask, AT_FDCWD, path).
pub fn mark(fd: &OwnedFd, flags: u32, mask: u64, path: &str) -> Result<()> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| SysError::other("fanotify_mark", None, "path contains NUL"))?;
    // SAFETY: c is a valid NUL-terminated path; fd is a group we hold.
    let r = unsafe { libc::fanotify_mark(fd.as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    check(
        r.into(),
        &format!("fanotify_mark({flags:#x}, {mask:#x}, {path})"),
        None,
    )
    .map(drop)
}

/// Reads and drops every event waiting in group `fd` without blocking,
/// closing the descriptor each event carries (groups not reporting file
/// ids give the reader one per event).
pub fn drain(fd: &OwnedFd) -> Result<()> {
    const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut buf = vec![0u8; 64 << 10];
    while crate::inotify::queued_bytes(fd)? > 0 {
        // SAFETY: reading into our own buffer of buf.len() bytes; events
        // are queued, so the read does not block.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return Err(SysError::new(
                "read fanotify events",
                None,
                crate::last_errno(),
            ));
        }
        let mut off = 0usize;
        while off + META <= n as usize {
            // SAFETY: the kernel wrote a whole event metadata record at off.
            let m: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            if m.fd >= 0 {
                // SAFETY: the event's descriptor was installed for us.
                unsafe { libc::close(m.fd) };
            }
            if (m.event_len as usize) < META {
                break;
            }
            off += m.event_len as usize;
        }
    }
    Ok(())
}
