//! userfaultfd write-protection in asynchronous mode, used as a dirty
//! page tracker (pre-copy): the kernel resolves write faults itself and
//! clears the page's uffd-wp bit; PAGEMAP_SCAN reports the pages written
//! since (PAGE_IS_WRITTEN) and protects them again. The descriptor is a
//! duplicate (pidfd_getfd) of one the target created: its context is the
//! target's mm.

use crate::{check, Result, SysError};
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFD_API: u64 = 0xaa;
/// Write faults resolved by the kernel (implies WP_UNPOPULATED).
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// userfaultfd(2) flag: handle user-mode faults only (what an
/// unprivileged process may ask for).
pub const UFFD_USER_MODE_ONLY: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// UFFDIO_API with asynchronous write-protection (once per descriptor).
pub fn enable_wp_async(fd: BorrowedFd<'_>) -> Result<()> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC,
        ioctls: 0,
    };
    // SAFETY: `a` is a valid struct uffdio_api, live for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, std::ptr::addr_of_mut!(a)) };
    check(r as libc::c_long, "ioctl(UFFDIO_API, WP_ASYNC)", None).map(|_| ())
}

/// UFFDIO_REGISTER in write-protect mode over [start, start + len).
pub fn register_wp(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    let mut r = UffdioRegister {
        start,
        len,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: `r` is a valid struct uffdio_register, live for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER, std::ptr::addr_of_mut!(r)) };
    if ret < 0 {
        return Err(SysError::new(
            format!("ioctl(UFFDIO_REGISTER, WP) {start:#x}+{len:#x}"),
            None,
            crate::last_errno(),
        ));
    }
    Ok(())
}

/// Clears FD_CLOEXEC, so that a child spawned next inherits `fd`.
pub fn inheritable(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: fcntl on a descriptor we hold.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
    check(r as libc::c_long, "fcntl(F_SETFD, 0)", None).map(|_| ())
}
