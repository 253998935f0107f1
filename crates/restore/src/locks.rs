//! File locks and leases, re-taken by the restored process itself through
//! its own descriptors: a POSIX lock belongs to the process that calls
//! fcntl, and a flock taken remotely shows the process's PID in
//! /proc/locks, as it did before the dump. flock, OFD locks and leases
//! belong to the open file description, which the restorer created before
//! the fork, so each is taken once (the dump recorded it once).
//!
//! When: at the end of the rebuild, after the service descriptors are
//! closed (closing any descriptor of a file drops the process's POSIX locks
//! on it) and after credentials (a lease needs the owner's fsuid or
//! CAP_LEASE, as when it was taken), before the tree resumes: no
//! instruction of the process runs without its locks.

use crate::{At, RestoreError, Result, Stage};
use stasis_image::{FdKind, FileLock, LockKind, ProcessImage};
use stasis_sys::remote::RemoteThread;

const F_SETLK: u64 = 6;
const F_OFD_SETLK: u64 = 37;
const F_SETLEASE: u64 = 1024;
const F_RDLCK: i16 = 0;
const F_WRLCK: i16 = 1;

/// The path of descriptor `fd` in the image, for messages.
pub(crate) fn fd_name(img: &ProcessImage, fd: i32) -> String {
    img.files
        .iter()
        .find(|e| e.fd == fd)
        .map(|e| match &e.kind {
            FdKind::Regular { file, .. } => file.path.clone(),
            FdKind::CharDevice { path, .. }
            | FdKind::Path { path, .. }
            | FdKind::Fifo { path, .. }
            | FdKind::ProcFile { path, .. } => path.clone(),
            FdKind::Pidfd { pid, .. } => format!("pidfd of PID {pid}"),
            FdKind::Pipe { id, .. } => format!("pipe:[{id}]"),
            FdKind::ExternalFile { key, .. } => key.clone(),
            FdKind::UnixSocket { id, .. } => format!("socket:[{id}]"),
            FdKind::Saved { id, .. } => format!("saved file {id}"),
            FdKind::EventFd { .. } => "anon_inode:[eventfd]".into(),
            FdKind::TimerFd { .. } => "anon_inode:[timerfd]".into(),
            FdKind::SignalFd { .. } => "anon_inode:[signalfd]".into(),
            FdKind::Epoll { .. } => "anon_inode:[eventpoll]".into(),
            FdKind::Inotify { .. } => "anon_inode:inotify".into(),
            FdKind::Fanotify { .. } => "anon_inode:[fanotify]".into(),
            FdKind::UnixBound { name, .. } => {
                format!("unix socket {}", String::from_utf8_lossy(name))
            }
            FdKind::TcpSocket { local, .. } => format!("TCP socket {local:?}"),
            FdKind::TcpConnection { local, peer, .. } => format!("TCP {local} -> {peer}"),
            FdKind::UdpSocket { local, .. } => format!("UDP socket {local:?}"),
            FdKind::NetlinkSocket {
                protocol, portid, ..
            } => format!("netlink socket (protocol {protocol}, port id {portid})"),
            FdKind::PacketSocket { ifindex, .. } => format!("packet socket (ifindex {ifindex})"),
            FdKind::RawSocket {
                protocol, local, ..
            } => format!("raw socket (protocol {protocol}) {local:?}"),
            FdKind::PtyMaster { index, .. } => format!("/dev/ptmx (pts {index})"),
            FdKind::PtySlave { index, .. } => format!("/dev/pts/{index}"),
            FdKind::DevTty { index, .. } => format!("/dev/tty (pts {index})"),
            FdKind::Mqueue { name, .. } => format!("POSIX message queue /{name}"),
        })
        .unwrap_or_else(|| "?".into())
}

/// `struct flock` for F_SETLK / F_OFD_SETLK (SEEK_SET; l_pid 0).
fn flock_struct(l: &FileLock) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&(if l.write { F_WRLCK } else { F_RDLCK }).to_le_bytes());
    b.extend_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&(l.start as i64).to_le_bytes());
    b.extend_from_slice(&(l.len as i64).to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b
}

/// Takes every lock and lease of the process, never waiting: a lock
/// someone else took since the dump fails the restore, naming it.
pub(crate) fn restore(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    for l in &img.file_locks {
        let fd = l.fd as u64;
        let mode = if l.write { "write" } else { "read" };
        let range = if l.len == 0 {
            format!("{}..EOF", l.start)
        } else {
            format!("{}..{}", l.start, l.start + l.len - 1)
        };
        let (what, got) = match l.kind {
            LockKind::Posix | LockKind::Ofd => {
                let at = r.write_scratch(0, &flock_struct(l)).at(pid, st)?;
                let (cmd, name) = if l.kind == LockKind::Posix {
                    (F_SETLK, "POSIX")
                } else {
                    (F_OFD_SETLK, "OFD")
                };
                (
                    format!("{name} {mode} lock {range}"),
                    r.syscall(libc::SYS_fcntl, &[fd, cmd, at]).at(pid, st)?,
                )
            }
            LockKind::Flock => {
                let op = if l.write {
                    libc::LOCK_EX
                } else {
                    libc::LOCK_SH
                } | libc::LOCK_NB;
                (
                    format!("flock ({})", if l.write { "exclusive" } else { "shared" }),
                    r.syscall(libc::SYS_flock, &[fd, op as u64]).at(pid, st)?,
                )
            }
            LockKind::Lease => {
                let t = if l.write { F_WRLCK } else { F_RDLCK };
                (
                    format!("{mode} lease"),
                    r.syscall(libc::SYS_fcntl, &[fd, F_SETLEASE, t as u64])
                        .at(pid, st)?,
                )
            }
        };
        if got < 0 {
            let errno = (-got) as i32;
            let why = if errno == libc::EAGAIN || errno == libc::EACCES {
                " (taken by another process since the dump)"
            } else {
                ""
            };
            return Err(RestoreError::Sys {
                pid,
                stage: st,
                source: stasis_sys::SysError::new(
                    format!("fd {}: re-take {what} on {}{why}", l.fd, fd_name(img, l.fd)),
                    None,
                    errno,
                ),
            });
        }
    }
    Ok(())
}
