//! inotify instances and file handles: what the inotify kind of descriptor
//! needs (see crates/dump/src/kinds/inotify.rs and its restore twin).

use crate::{check, last_errno, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// inotify_init1(flags), close-on-exec in the caller.
pub fn init(flags: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is ours to own.
    let fd = unsafe { libc::inotify_init1(flags | libc::IN_CLOEXEC) };
    check(fd.into(), "inotify_init1", None)?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// inotify_add_watch(fd, path, mask): the watch descriptor.
pub fn add_watch(fd: &OwnedFd, path: &str, mask: u32) -> Result<i32> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| SysError::other("inotify_add_watch", None, "path contains NUL"))?;
    // SAFETY: c is a valid NUL-terminated path; fd is an inotify instance we hold.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
    check(wd.into(), &format!("inotify_add_watch {path}"), None)?;
    Ok(wd)
}

/// inotify_rm_watch(fd, wd) (queues an IN_IGNORED event).
pub fn rm_watch(fd: &OwnedFd, wd: i32) -> Result<()> {
    // SAFETY: plain syscall on an inotify instance we hold.
    let r = unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) };
    check(r.into(), &format!("inotify_rm_watch({wd})"), None).map(drop)
}

/// Bytes of events waiting to be read (FIONREAD).
pub fn queued_bytes(fd: &OwnedFd) -> Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into n.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    check(r.into(), "ioctl(FIONREAD)", None)?;
    Ok(n.max(0) as u32)
}

/// Reads and drops every event waiting in the instance, without blocking.
pub fn drain(fd: &OwnedFd) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    while queued_bytes(fd)? > 0 {
        // SAFETY: reading into our own buffer of buf.len() bytes; the
        // instance has events queued, so the read does not block.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return Err(SysError::new("read inotify events", None, last_errno()));
        }
    }
    Ok(())
}

/// open_by_handle_at(mount_fd, handle, flags): the object a file handle
/// names, on the filesystem of `mount_fd` (needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(
    mount_fd: &OwnedFd,
    handle_type: i32,
    handle: &[u8],
    flags: i32,
) -> Result<OwnedFd> {
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; },
    // built in u32 words for its alignment.
    let bytes = u32::try_from(handle.len())
        .map_err(|_| SysError::other("open_by_handle_at", None, "handle too long"))?;
    let mut words = vec![0u32; 2 + handle.len().div_ceil(4)];
    words[0] = bytes;
    words[1] = handle_type as u32;
    for (i, b) in handle.iter().enumerate() {
        words[2 + i / 4] |= u32::from(*b) << (8 * (i % 4));
    }
    // SAFETY: words holds a complete struct file_handle of `bytes` handle
    // bytes and lives for the call; the descriptor returned is ours to own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            words.as_mut_ptr(),
            flags | libc::O_CLOEXEC,
        )
    };
    let fd = check(fd, "open_by_handle_at", None)?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
