//! Making a new cgroup namespace rooted at given cgroups, from a freshly
//! forked restore child (raw syscalls, no allocation).

use std::ffi::CString;

/// Joins each cgroup whose `cgroup.procs` file is listed (writing "0"
/// moves the writer), then unshares a new cgroup namespace, whose root in
/// every hierarchy is the caller's cgroup there at that moment (`joined`:
/// the caller joined them already, see [`join`]). Returns false if any
/// step failed.
///
/// # Safety
/// Only from a forked, single-threaded child: raw syscalls, no allocation.
pub unsafe fn enter_new(procs_files: &[CString], joined: bool) -> bool {
    // SAFETY: the caller's contract, forwarded.
    if !joined && !unsafe { join(procs_files) } {
        return false;
    }
    // SAFETY: integer-only syscall on ourselves.
    unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWCGROUP) == 0 }
}

/// Joins each cgroup whose `cgroup.procs` file is listed.
///
/// # Safety
/// As [`enter_new`].
pub unsafe fn join(procs_files: &[CString]) -> bool {
    for f in procs_files {
        // SAFETY: raw syscalls on a NUL-terminated path prepared before
        // the fork and a static one-byte buffer.
        unsafe {
            let fd = libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return false;
            }
            let w = libc::syscall(libc::SYS_write, fd, b"0".as_ptr(), 1usize);
            libc::syscall(libc::SYS_close, fd);
            if w != 1 {
                return false;
            }
        }
    }
    true
}
