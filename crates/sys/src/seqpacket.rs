//! SOCK_SEQPACKET transport for criu's RPC (`swrk` and `service`): one
//! protobuf message per record, the peer's credentials, an inherited
//! descriptor adopted by number.

use crate::{check, Pid, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The largest record we accept (criu's own messages are a few KiB).
pub const MAX_RECORD: usize = 1 << 20;

/// Adopts descriptor `fd`, inherited from our parent (`criu swrk FD`):
/// it must be open and a SOCK_SEQPACKET socket; it becomes close-on-exec.
pub fn adopt_socket(fd: i32) -> Result<OwnedFd> {
    if fd < 0 {
        return Err(SysError::other(
            format!("fd {fd}"),
            None,
            "not a descriptor",
        ));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    check(r.into(), &format!("fd {fd}"), None)?;
    // SAFETY: fd is open (checked above) and handed to us by our parent
    // for our exclusive use; nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Not a socket at all reads as -1.
    let ty = crate::sock::get_int(&owned, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
    if ty != libc::SOCK_SEQPACKET {
        // Not ours to close: give the number back untouched.
        std::mem::forget(owned);
        return Err(SysError::other(
            format!("fd {fd}"),
            None,
            "not a SOCK_SEQPACKET socket",
        ));
    }
    set_cloexec(&owned, true)?;
    Ok(owned)
}

/// Sets or clears FD_CLOEXEC.
pub fn set_cloexec(fd: &OwnedFd, on: bool) -> Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) };
    check(r.into(), "fcntl(F_SETFD)", None).map(drop)
}

/// The process at the other end (SO_PEERCRED): for a socketpair, the one
/// that created it; for an accepted connection, the one that connected.
pub fn peer_pid(fd: &OwnedFd) -> Result<Pid> {
    crate::sock::ucred(fd).map(|c| Pid(c.pid))
}

/// Receives one record, blocking. `Ok(None)`: the peer closed. A record
/// longer than [`MAX_RECORD`] is an error (it is consumed).
pub fn recv_record(fd: &OwnedFd) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; MAX_RECORD];
    loop {
        // SAFETY: buf is live and writable for its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 && crate::last_errno() == libc::EINTR {
            continue;
        }
        check(n as libc::c_long, "recv", None)?;
        let n = n as usize;
        if n == 0 {
            return Ok(None);
        }
        if n > buf.len() {
            return Err(SysError::other(
                "recv",
                None,
                format!("a record of {n} bytes (at most {MAX_RECORD})"),
            ));
        }
        buf.truncate(n);
        return Ok(Some(buf));
    }
}

/// Sends one record, blocking, without SIGPIPE.
pub fn send_record(fd: &OwnedFd, data: &[u8]) -> Result<()> {
    loop {
        // SAFETY: data is live for the call.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 && crate::last_errno() == libc::EINTR {
            continue;
        }
        check(n as libc::c_long, "send", None)?;
        return Ok(());
    }
}

/// A listening SOCK_SEQPACKET unix socket at `path` (criu's `service
/// --address`); a stale socket file there is removed first.
pub fn listen_at(path: &str) -> Result<OwnedFd> {
    crate::sock::remove_stale_socket(path, libc::SOCK_SEQPACKET)?;
    let fd = crate::sock::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0)?;
    let mut name = path.as_bytes().to_vec();
    name.push(0);
    crate::sock::bind_unix(&fd, &name)?;
    crate::sock::listen(&fd, 16)?;
    Ok(fd)
}

/// A connection to a `service` socket at `path`.
pub fn connect_to(path: &str) -> Result<OwnedFd> {
    let fd = crate::sock::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0)?;
    let mut name = path.as_bytes().to_vec();
    name.push(0);
    crate::sock::connect_unix(&fd, &name)?;
    Ok(fd)
}

/// Adopts an inherited listening SOCK_SEQPACKET socket by number (the
/// daemonized `service`).
pub fn adopt_listener(fd: i32) -> Result<OwnedFd> {
    let s = adopt_socket(fd)?;
    if crate::sock::get_int(&s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err(SysError::other(format!("fd {fd}"), None, "not listening"));
    }
    Ok(s)
}
