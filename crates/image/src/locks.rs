//! File locks, leases and per-descriptor signal ownership: the image types
//! (kept by each process in [`crate::ProcessImage::file_locks`] and
//! [`crate::ProcessImage::fd_owners`]; both empty in older images).

use serde::{Deserialize, Serialize};

/// The kind of a file lock, as /proc/locks names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// fcntl(F_SETLK) record lock: owned by the process, per file.
    Posix,
    /// flock(2): owned by the open file description.
    Flock,
    /// fcntl(F_OFD_SETLK) record lock: owned by the open file description.
    Ofd,
    /// fcntl(F_SETLEASE) lease (`write` false: F_RDLCK, true: F_WRLCK).
    Lease,
}

/// One lock or lease a process held, re-taken at restore through
/// descriptor `fd` of that process (the descriptor it was taken through,
/// or for POSIX locks one open on the same file with the needed mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    pub fd: i32,
    pub kind: LockKind,
    /// Exclusive (WRITE) rather than shared (READ).
    pub write: bool,
    /// First byte of the range (record locks; 0 for flock and leases).
    pub start: u64,
    /// Length of the range; 0 = to end of file, however long it grows.
    pub len: u64,
}

/// The signal-driven I/O settings of one open file description, as seen
/// through descriptor `fd`: F_SETOWN_EX owner, F_SETSIG signal and the
/// status flags (`O_*` from fdinfo without O_CLOEXEC, incl. O_ASYNC, which
/// open(2) ignores). Recorded only when an owner, a signal or O_ASYNC is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdOwner {
    pub fd: i32,
    /// F_OWNER_TID (0), F_OWNER_PID (1) or F_OWNER_PGRP (2).
    pub owner_type: u32,
    /// The owner, in the image's PID numbering (0: none).
    pub owner_pid: u32,
    /// F_GETSIG (0: SIGIO).
    pub signal: u32,
    /// Status flags to set with F_SETFL.
    pub flags: u32,
}

/// The checks [`crate::validate_process`] makes: every lock and owner
/// names a descriptor of the process, ranges are sane, values bounded.
pub fn check(img: &crate::ProcessImage) -> Result<(), String> {
    let has_fd = |fd: i32| img.files.iter().any(|f| f.fd == fd);
    if img.file_locks.len() > 65_536 {
        return Err(format!("file_locks: {} entries", img.file_locks.len()));
    }
    for (i, l) in img.file_locks.iter().enumerate() {
        if !has_fd(l.fd) {
            return Err(format!(
                "file_locks[{i}].fd: {} is not a descriptor of the process",
                l.fd
            ));
        }
        if l.start > i64::MAX as u64 || l.len > i64::MAX as u64 {
            return Err(format!(
                "file_locks[{i}]: range {}+{} too large",
                l.start, l.len
            ));
        }
        if matches!(l.kind, LockKind::Flock | LockKind::Lease) && (l.start != 0 || l.len != 0) {
            return Err(format!("file_locks[{i}]: a {:?} lock with a range", l.kind));
        }
    }
    for (i, o) in img.fd_owners.iter().enumerate() {
        if !has_fd(o.fd) {
            return Err(format!(
                "fd_owners[{i}].fd: {} is not a descriptor of the process",
                o.fd
            ));
        }
        if o.owner_type > 2 || o.signal > 64 || o.owner_pid > i32::MAX as u32 {
            return Err(format!(
                "fd_owners[{i}]: owner type {}, pid {}, signal {}",
                o.owner_type, o.owner_pid, o.signal
            ));
        }
    }
    Ok(())
}
