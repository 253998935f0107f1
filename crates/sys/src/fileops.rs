//! File calls std does not offer: SEEK_DATA/SEEK_HOLE and the file system
//! type of a path.

use crate::{last_errno, Result, SysError};
use std::os::fd::{AsRawFd, BorrowedFd};

fn seek(fd: BorrowedFd<'_>, off: u64, whence: i32, what: &str) -> Result<Option<u64>> {
    let Ok(o) = i64::try_from(off) else {
        return Ok(None);
    };
    // SAFETY: lseek on a descriptor borrowed for the call; no memory involved.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), o, whence) };
    if r < 0 {
        let e = last_errno();
        if e == libc::ENXIO {
            return Ok(None);
        }
        return Err(SysError::new(format!("lseek({what}, {off})"), None, e));
    }
    Ok(u64::try_from(r).ok())
}

/// The data ranges `(offset, len)` of the file open as `fd`, of size
/// `size`, as SEEK_DATA and SEEK_HOLE see them (file systems without hole
/// support report one range: the whole file). Moves the file offset.
pub fn data_extents(fd: BorrowedFd<'_>, size: u64) -> Result<Vec<(u64, u64)>> {
    data_extents_in(fd, 0, size)
}

/// The data ranges `(offset, len)` of the file open as `fd` within
/// `[from, to)`, cut to it. Moves the file offset.
pub fn data_extents_in(fd: BorrowedFd<'_>, from: u64, to: u64) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let Some(start) = seek(fd, at, libc::SEEK_DATA, "SEEK_DATA")? else {
            break;
        };
        if start >= to {
            break;
        }
        let end = seek(fd, start, libc::SEEK_HOLE, "SEEK_HOLE")?
            .unwrap_or(to)
            .min(to);
        if end <= start {
            break;
        }
        out.push((start, end - start));
        at = end;
    }
    Ok(out)
}

/// `f_type` of the file system holding `path` (statfs).
pub fn fs_type(path: &str) -> Result<i64> {
    let c = crate::util::cstring(path, "statfs")?;
    // SAFETY: an all-zero statfs is a valid out buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st a live buffer of the right type.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if r < 0 {
        return Err(SysError::new(format!("statfs {path}"), None, last_errno()));
    }
    Ok(st.f_type)
}

/// procfs's `f_type`.
pub const PROC_SUPER_MAGIC: i64 = 0x9fa0;
