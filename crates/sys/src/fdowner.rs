//! fcntl queries on a descriptor of our own (a pidfd_getfd duplicate of a
//! target's): signal owner, signal, lease, status flags.

use crate::{check, Result};
use std::os::fd::{AsRawFd, BorrowedFd};

/// fcntl commands (linux/fcntl.h) the libc crate lacks.
pub const F_SETSIG: i32 = 10;
pub const F_GETSIG: i32 = 11;
pub const F_SETOWN_EX: i32 = 15;
pub const F_GETOWN_EX: i32 = 16;

/// `fcntl(F_GETOWN_EX)`: (owner type F_OWNER_TID/PID/PGRP, id in our PID
/// namespace; 0 if none).
pub fn get_owner_ex(fd: BorrowedFd<'_>) -> Result<(u32, i32)> {
    // struct f_owner_ex { int type; pid_t pid; }
    let mut o = [0i32; 2];
    // SAFETY: `o` is 8 writable bytes, the size of struct f_owner_ex.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, o.as_mut_ptr()) };
    check(r.into(), "fcntl(F_GETOWN_EX)", None)?;
    Ok((o[0] as u32, o[1]))
}

/// `fcntl(F_GETSIG)`: the signal sent for I/O readiness (0: SIGIO).
pub fn get_sig(fd: BorrowedFd<'_>) -> Result<u32> {
    // SAFETY: integer-only fcntl query.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) };
    check(r.into(), "fcntl(F_GETSIG)", None).map(|v| v as u32)
}

/// `fcntl(F_GETLEASE)`: F_RDLCK, F_WRLCK or F_UNLCK.
pub fn get_lease(fd: BorrowedFd<'_>) -> Result<i32> {
    // SAFETY: integer-only fcntl query.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETLEASE) };
    check(r.into(), "fcntl(F_GETLEASE)", None).map(|v| v as i32)
}
