//! Pseudo-terminal ioctls: what the pty kind of descriptor needs (see
//! crates/dump/src/kinds/pty.rs and its restore twin). Terminal settings
//! and window size asked through a master are the slave's.

use crate::{check, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// ioctl(fd, req, &mut int) for the requests that read one int.
fn get_int(fd: &OwnedFd, req: libc::Ioctl, what: &str) -> Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: each request used here writes one int into v.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) };
    check(r.into(), what, None)?;
    Ok(v)
}

/// ioctl(fd, req, &int) for the requests that take a pointer to one int.
fn set_int(fd: &OwnedFd, req: libc::Ioctl, v: i32, what: &str) -> Result<()> {
    // SAFETY: each request used here reads one int from v.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &v) };
    check(r.into(), what, None).map(drop)
}

/// The pair's index N (/dev/pts/N) of a master (TIOCGPTN).
pub fn index(master: &OwnedFd) -> Result<u32> {
    get_int(master, libc::TIOCGPTN, "ioctl(TIOCGPTN)").map(|n| n as u32)
}

/// Whether the slave is locked (TIOCGPTLCK).
pub fn locked(master: &OwnedFd) -> Result<bool> {
    get_int(master, libc::TIOCGPTLCK, "ioctl(TIOCGPTLCK)").map(|n| n != 0)
}

pub fn set_locked(master: &OwnedFd, on: bool) -> Result<()> {
    set_int(master, libc::TIOCSPTLCK, i32::from(on), "ioctl(TIOCSPTLCK)")
}

/// Packet mode of a master (TIOCGPKT).
pub fn packet(master: &OwnedFd) -> Result<bool> {
    get_int(master, libc::TIOCGPKT, "ioctl(TIOCGPKT)").map(|n| n != 0)
}

pub fn set_packet(master: &OwnedFd, on: bool) -> Result<()> {
    set_int(master, libc::TIOCPKT, i32::from(on), "ioctl(TIOCPKT)")
}

/// Exclusive mode of this end (TIOCGEXCL).
pub fn exclusive(fd: &OwnedFd) -> Result<bool> {
    get_int(fd, libc::TIOCGEXCL, "ioctl(TIOCGEXCL)").map(|n| n != 0)
}

pub fn set_exclusive(fd: &OwnedFd, on: bool) -> Result<()> {
    let req = if on { libc::TIOCEXCL } else { libc::TIOCNXCL };
    // SAFETY: TIOCEXCL/TIOCNXCL take no argument.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req) };
    check(r.into(), "ioctl(TIOCEXCL)", None).map(drop)
}

/// Bytes waiting to be read on this end (FIONREAD).
pub fn readable(fd: &OwnedFd) -> Result<u32> {
    get_int(fd, libc::FIONREAD, "ioctl(FIONREAD)").map(|n| n.max(0) as u32)
}

/// Whether the output of this end is stopped (^S with IXON, or tcflow
/// TCOOFF on it): it then never polls writable (its write room is 0), the
/// other end's reader having nothing left unread. Changes nothing.
pub fn output_stopped(end: &OwnedFd) -> Result<bool> {
    let mut p = libc::pollfd {
        fd: end.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: p is one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    check(r.into(), "poll(POLLOUT) on a pty", None)?;
    Ok(p.revents & libc::POLLOUT == 0)
}

/// Stops the output of this end as tcflow(TCOOFF) does (a typed START
/// character does not restart it).
pub fn stop_output_tcooff(end: &OwnedFd) -> Result<()> {
    // SAFETY: TCXONC takes an integer argument.
    let r = unsafe { libc::ioctl(end.as_raw_fd(), libc::TCXONC, libc::TCOOFF) };
    check(r.into(), "ioctl(TCXONC, TCOOFF)", None).map(drop)
}

/// Bytes written on this end not yet passed on (TIOCOUTQ).
pub fn unsent(fd: &OwnedFd) -> Result<u32> {
    get_int(fd, libc::TIOCOUTQ, "ioctl(TIOCOUTQ)").map(|n| n.max(0) as u32)
}

/// The device number of the terminal behind a descriptor (TIOCGDEV):
/// what /dev/tty names, for one opened as /dev/tty.
pub fn device(fd: &OwnedFd) -> Result<u64> {
    let mut v: libc::c_uint = 0;
    // SAFETY: TIOCGDEV writes one unsigned int (new_encode_dev: the
    // encoding of user space's dev_t).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGDEV, &mut v) };
    check(r.into(), "ioctl(TIOCGDEV)", None)?;
    Ok(u64::from(v))
}

/// The line discipline (TIOCGETD).
pub fn line_discipline(fd: &OwnedFd) -> Result<i32> {
    get_int(fd, libc::TIOCGETD, "ioctl(TIOCGETD)")
}

/// The session whose controlling terminal this is (TIOCGSID), in the
/// caller's PID namespace; None if none.
pub fn session(master: &OwnedFd) -> Result<Option<i32>> {
    match get_int(master, libc::TIOCGSID, "ioctl(TIOCGSID)") {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.errno() == Some(libc::ENOTTY) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The foreground process group (TIOCGPGRP), in the caller's PID
/// namespace; 0 if none.
pub fn foreground(master: &OwnedFd) -> Result<i32> {
    get_int(master, libc::TIOCGPGRP, "ioctl(TIOCGPGRP)")
}

/// The slave's settings (TCGETS2).
pub fn termios(fd: &OwnedFd) -> Result<libc::termios2> {
    // SAFETY: termios2 is plain old data; all zeroes is a valid value.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 writes one struct termios2 into t.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, &mut t) };
    check(r.into(), "ioctl(TCGETS2)", None)?;
    Ok(t)
}

/// Sets the slave's settings (TCSETS2, at once).
pub fn set_termios(fd: &OwnedFd, t: &libc::termios2) -> Result<()> {
    // SAFETY: TCSETS2 reads one struct termios2 from t.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS2, t) };
    check(r.into(), "ioctl(TCSETS2)", None).map(drop)
}

/// Whether any termios field of the slave is locked (TIOCGLCKTRMIOS: a
/// mask set with TIOCSLCKTRMIOS, all zeroes by default).
pub fn termios_locked(fd: &OwnedFd) -> Result<bool> {
    // SAFETY: termios is plain old data; all zeroes is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGLCKTRMIOS writes one struct termios into t.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGLCKTRMIOS, &mut t) };
    check(r.into(), "ioctl(TIOCGLCKTRMIOS)", None)?;
    Ok(t.c_iflag | t.c_oflag | t.c_cflag | t.c_lflag != 0
        || t.c_line != 0
        || t.c_cc.iter().any(|&c| c != 0))
}

/// Window size: rows, columns, x and y pixels (TIOCGWINSZ).
pub fn winsize(fd: &OwnedFd) -> Result<[u16; 4]> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize into w.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) };
    check(r.into(), "ioctl(TIOCGWINSZ)", None)?;
    Ok([w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel])
}

pub fn set_winsize(fd: &OwnedFd, v: [u16; 4]) -> Result<()> {
    let w = libc::winsize {
        ws_row: v[0],
        ws_col: v[1],
        ws_xpixel: v[2],
        ws_ypixel: v[3],
    };
    // SAFETY: TIOCSWINSZ reads one struct winsize from w.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &w) };
    check(r.into(), "ioctl(TIOCSWINSZ)", None).map(drop)
}

/// Opens the slave of `master` (TIOCGPTPEER) with `flags` (O_NOCTTY and
/// O_CLOEXEC added).
pub fn open_peer(master: &OwnedFd, flags: i32) -> Result<OwnedFd> {
    let f = flags | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as its argument and returns
    // a new descriptor, ours to own.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, f) };
    check(fd.into(), "ioctl(TIOCGPTPEER)", None)?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a master polls at once: (POLLHUP: every slave descriptor was
/// closed after one had been opened, POLLPRI: a packet-mode status byte
/// waits).
pub fn poll_now(master: &OwnedFd) -> Result<(bool, bool)> {
    let mut p = libc::pollfd {
        fd: master.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    check(r.into(), "poll(master)", None)?;
    Ok((
        p.revents & libc::POLLHUP != 0,
        p.revents & libc::POLLPRI != 0,
    ))
}

/// Reads the packet-mode status byte waiting on `master`, if one does
/// (a read of a packet-mode master returns it alone, and clears it).
pub fn take_status(master: &OwnedFd) -> Result<Option<u8>> {
    if !poll_now(master)?.1 {
        return Ok(None);
    }
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into b; POLLPRI said it is there.
    let r = unsafe { libc::read(master.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    check(
        r as libc::c_long,
        "read the status byte of a packet-mode master",
        None,
    )?;
    Ok(Some(b[0]))
}
