//! userfaultfd write-protection in asynchronous mode, used as a dirty
//! page tracker (pre-copy): the kernel resolves write faults itself and
//! clears the page's uffd-wp bit; PAGEMAP_SCAN reports the pages written
//! since (PAGE_IS_WRITTEN) and protects them again. The descriptor is a
//! duplicate (pidfd_getfd) of one the target created: its context is the
//! target's mm.
//!
//! Also missing-page mode for lazy restore: UFFDIO_COPY / ZEROPAGE / WAKE
//! and the messages (faults and the non-cooperative events) read from the
//! descriptor.

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
    enable_features(fd, UFFD_FEATURE_WP_ASYNC)
}

/// UFFDIO_REGISTER in write-protect mode over [start, start + len).
pub fn register_wp(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    register(fd, start, len, UFFDIO_REGISTER_MODE_WP, "WP")
}

fn register(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64, name: &str) -> Result<()> {
    let mut r = UffdioRegister {
        start,
        len,
        mode,
        ioctls: 0,
    };
    // SAFETY: `r` is a valid struct uffdio_register, live for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER, std::ptr::addr_of_mut!(r)) };
    if ret < 0 {
        return Err(SysError::new(
            format!("ioctl(UFFDIO_REGISTER, {name}) {start:#x}+{len:#x}"),
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

// ---- Missing-page mode (lazy restore) ----

/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;
/// `_IOR(0xAA, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
/// `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// A forked child's registered areas get a userfaultfd of their own,
/// delivered to the reader (needs CAP_SYS_PTRACE).
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// mremap of a registered area is reported.
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// MADV_DONTNEED / MADV_REMOVE of a registered area is reported.
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// munmap of a registered area is reported.
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;

/// `uffd_msg.event` values.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

/// One message read from a userfaultfd, decoded.
#[derive(Debug)]
pub enum Msg {
    /// A thread waits for the page at `addr`.
    Fault { addr: u64 },
    /// The registered process forked: `fd` is a new userfaultfd (in our
    /// descriptor table) for the child's address space.
    Fork { fd: std::os::fd::OwnedFd },
    /// `[from, from + len)` moved to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `[start, end)` was dropped (MADV_DONTNEED/REMOVE): it reads as
    /// zeros from now on.
    Remove { start: u64, end: u64 },
    /// `[start, end)` was unmapped.
    Unmap { start: u64, end: u64 },
    /// An event this code does not know.
    Other(u8),
}

/// Outcome of one UFFDIO_COPY / UFFDIO_ZEROPAGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// This many bytes were filled from the start (all, or up to a page
    /// that could not be).
    Done(u64),
    /// The first page is present already (EEXIST).
    Exists,
    /// The address space is changing (an event is unread): try later.
    Again,
    /// No registered mapping there any more (ENOENT / EINVAL).
    Gone,
    /// The process has exited (ESRCH).
    Exited,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// UFFDIO_API asking for `features` (once per descriptor).
pub fn enable_features(fd: BorrowedFd<'_>, features: u64) -> Result<()> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `a` is a valid struct uffdio_api, live for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, std::ptr::addr_of_mut!(a)) };
    check(r as libc::c_long, "ioctl(UFFDIO_API)", None).map(|_| ())
}

/// UFFDIO_REGISTER in missing mode over [start, start + len).
pub fn register_missing(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    register(fd, start, len, UFFDIO_REGISTER_MODE_MISSING, "MISSING")
}

/// UFFDIO_UNREGISTER over [start, start + len): the areas there lose
/// their registration (and the VmFlags that show it).
pub fn unregister(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    let mut rg = UffdioRange { start, len };
    // SAFETY: `rg` is a valid struct uffdio_range, live for the call.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            UFFDIO_UNREGISTER,
            std::ptr::addr_of_mut!(rg),
        )
    };
    check(
        r as libc::c_long,
        &format!("ioctl(UFFDIO_UNREGISTER) {start:#x}+{len:#x}"),
        None,
    )
    .map(|_| ())
}

fn fill_result(ret: i32, done: i64, what: &str, at: u64) -> Result<Fill> {
    if done > 0 {
        return Ok(Fill::Done(done as u64));
    }
    if ret == 0 {
        return Ok(Fill::Done(0));
    }
    let e = if done < 0 {
        (-done) as i32
    } else {
        crate::last_errno()
    };
    match e {
        libc::EEXIST => Ok(Fill::Exists),
        libc::EAGAIN => Ok(Fill::Again),
        libc::ENOENT | libc::EINVAL => Ok(Fill::Gone),
        libc::ESRCH => Ok(Fill::Exited),
        e => Err(SysError::new(format!("ioctl({what}) {at:#x}"), None, e)),
    }
}

/// UFFDIO_COPY of `data` to `dst` (page-aligned, whole pages); wakes the
/// threads waiting there.
pub fn copy(fd: BorrowedFd<'_>, dst: u64, data: &[u8]) -> Result<Fill> {
    let mut c = UffdioCopy {
        dst,
        src: data.as_ptr() as u64,
        len: data.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `c` is a valid struct uffdio_copy whose source is `data`,
    // readable for its length; the kernel writes only into `c` and the
    // target's address space.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_COPY, std::ptr::addr_of_mut!(c)) };
    fill_result(r, c.copy, "UFFDIO_COPY", dst)
}

/// UFFDIO_ZEROPAGE over [start, start + len); wakes the waiters.
pub fn zeropage(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<Fill> {
    let mut z = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `z` is a valid struct uffdio_zeropage, live for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_ZEROPAGE, std::ptr::addr_of_mut!(z)) };
    fill_result(r, z.zeropage, "UFFDIO_ZEROPAGE", start)
}

/// UFFDIO_WAKE over [start, start + len): threads that faulted on a page
/// someone else filled meanwhile.
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    let mut rg = UffdioRange { start, len };
    // SAFETY: `rg` is a valid struct uffdio_range, live for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_WAKE, std::ptr::addr_of_mut!(rg)) };
    check(r as libc::c_long, "ioctl(UFFDIO_WAKE)", None).map(|_| ())
}

/// Reads the next message (the descriptor is non-blocking): None if there
/// is none now.
pub fn read_msg(fd: BorrowedFd<'_>) -> Result<Option<Msg>> {
    let mut b = [0u8; 32];
    // SAFETY: reads at most 32 bytes into `b`.
    let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
    if n < 0 {
        let e = crate::last_errno();
        if e == libc::EAGAIN || e == libc::EINTR {
            return Ok(None);
        }
        return Err(SysError::new("read(userfaultfd)", None, e));
    }
    if n != 32 {
        return Err(SysError::new(
            "read(userfaultfd): short message",
            None,
            libc::EIO,
        ));
    }
    let u = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    Ok(Some(match b[0] {
        UFFD_EVENT_PAGEFAULT => Msg::Fault { addr: u(16) },
        UFFD_EVENT_FORK => {
            let fd = i32::from_le_bytes(b[8..12].try_into().unwrap_or_default());
            // SAFETY: the kernel installed this descriptor in our table for
            // us with the fork event; nothing else owns it.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            Msg::Fork { fd }
        }
        UFFD_EVENT_REMAP => Msg::Remap {
            from: u(8),
            to: u(16),
            len: u(24),
        },
        UFFD_EVENT_REMOVE => Msg::Remove {
            start: u(8),
            end: u(16),
        },
        UFFD_EVENT_UNMAP => Msg::Unmap {
            start: u(8),
            end: u(16),
        },
        e => Msg::Other(e),
    }))
}
