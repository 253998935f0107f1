//! Pseudo-terminal pairs whose master is in the image. The pair is made
//! again with its old index N: /dev/ptmx (the ptmx of the tree's own
//! devpts, if it has one: mntns.rs `ptmx`) is opened until the kernel hands
//! out N (it gives the lowest free index; the others are closed again), or
//! refused by name if N is taken. Before any slave is opened: unlocked,
//! the slave's termios and window size, then packet mode (a termios change
//! in packet mode would queue a status byte). Each slave description is a
//! TIOCGPTPEER open of the master. Once every descriptor is open
//! ([`finish_all`]): exclusive modes, owner and mode of /dev/pts/N, the
//! slave's closed state, the lock. The controlling terminal and the
//! foreground group are given by the session leader (sys/spawn.rs,
//! tree.rs).

use super::saved::io;
use super::{Cx, Opened, OPEN_FLAGS_DROP};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::{FdKind, ProcessImage, PtyState, Termios};
use stasis_sys::pty;
use stasis_sys::remote::RemoteThread;
use std::os::fd::OwnedFd;

const KIND: &str = "pty";

/// The image's state of pair `index` (stored with each master entry).
fn state(procs: &[ProcessImage], index: u32) -> Option<&PtyState> {
    procs
        .iter()
        .flat_map(|p| &p.files)
        .find_map(|e| match &e.kind {
            FdKind::PtyMaster { index: i, pty, .. } if *i == index => Some(pty),
            _ => None,
        })
}

fn refused(cx: &Cx<'_>, what: String) -> RestoreError {
    RestoreError::Refused {
        pid: cx.pid,
        stage: Stage::Fork,
        what: format!("fd {}: {what}", cx.fd),
    }
}

/// The master of pair `index`, made on first use.
fn master(o: &mut Opened, cx: &Cx<'_>, index: u32) -> Result<usize> {
    if let Some(i) = o.object(KIND, u64::from(index)) {
        return Ok(i);
    }
    let s = state(cx.procs, index)
        .ok_or_else(|| refused(cx, format!("pts {index}: no master in the image")))?;
    let flags = master_flags(cx.procs, index);
    let m = open_index(cx, index, flags)?;
    let (pid, st) = (cx.pid, Stage::Fork);
    pty::set_locked(&m, false).at(pid, st)?;
    pty::set_termios(&m, &s.termios.to_raw()).at(pid, st)?;
    let got = Termios::from_raw(&pty::termios(&m).at(pid, st)?);
    if got != s.termios {
        return Err(refused(
            cx,
            format!(
                "pts {index}: the kernel changed the terminal settings: {:?} became {got:?}",
                s.termios
            ),
        ));
    }
    pty::set_winsize(&m, s.winsize).at(pid, st)?;
    pty::set_packet(&m, s.packet).at(pid, st)?;
    let i = o.push(m);
    o.set_object(KIND, u64::from(index), i);
    Ok(i)
}

/// The open flags of the master of pair `index`.
fn master_flags(procs: &[ProcessImage], index: u32) -> u32 {
    procs
        .iter()
        .flat_map(|p| &p.files)
        .find_map(|e| match e.kind {
            FdKind::PtyMaster {
                index: i, flags, ..
            } if i == index => Some(flags),
            _ => None,
        })
        .unwrap_or(libc::O_RDWR as u32)
}

/// Opens /dev/ptmx until the kernel hands out `index`; refuses if it is
/// taken.
fn open_index(cx: &Cx<'_>, index: u32, flags: u32) -> Result<OwnedFd> {
    let fl = (flags as i32 & !OPEN_FLAGS_DROP) | libc::O_NOCTTY;
    let mut others = Vec::new();
    loop {
        let m = crate::mntns::open(&crate::mntns::ptmx(), fl).at(cx.pid, Stage::Fork)?;
        let got = pty::index(&m).at(cx.pid, Stage::Fork)?;
        if got == index {
            return Ok(m);
        }
        if got > index || others.len() > index as usize {
            return Err(refused(
                cx,
                format!("pts {index} is taken on this system (the kernel handed out pts {got})"),
            ));
        }
        others.push(m);
    }
}

pub(super) fn open_master(o: &mut Opened, cx: &Cx<'_>, index: u32) -> Result<usize> {
    master(o, cx, index)
}

/// A new description of slave `index` (TIOCGPTPEER on its master).
pub(super) fn open_slave(o: &mut Opened, cx: &Cx<'_>, index: u32, flags: u32) -> Result<usize> {
    let m = master(o, cx, index)?;
    let fl = flags as i32 & !OPEN_FLAGS_DROP;
    let s = pty::open_peer(&o.owned[m], fl).at(cx.pid, Stage::Fork)?;
    let i = o.push(s);
    o.pty_slaves.push((index, i));
    Ok(i)
}

/// Once every descriptor is open: exclusive modes, owner and mode of
/// /dev/pts/N, the slave's closed state, the lock.
pub(crate) fn finish_all(o: &Opened, procs: &[ProcessImage]) -> Result<()> {
    let pid = procs[0].pid;
    for (&(kind, index), &m) in &o.objects {
        if kind != KIND {
            continue;
        }
        let index = index as u32;
        if let Some(s) = state(procs, index) {
            finish_pair(o, pid, index, &o.owned[m], s)?;
        }
    }
    Ok(())
}

fn finish_pair(o: &Opened, pid: u32, index: u32, master: &OwnedFd, s: &PtyState) -> Result<()> {
    let st = Stage::Fork;
    let held = o
        .pty_slaves
        .iter()
        .find(|(i, _)| *i == index)
        .map(|&(_, k)| &o.owned[k]);
    // A slave to work on: one of the tree's, or one opened for the purpose
    // (the dump saw every slave closed; closing this one again restores
    // that: the master reads EIO and polls POLLHUP).
    let slave = match held {
        Some(f) => f
            .try_clone()
            .map_err(io(pid, format!("dup a slave of pts {index}")))?,
        None => pty::open_peer(master, libc::O_RDWR).at(pid, st)?,
    };
    let f = std::fs::File::from(slave);
    std::os::unix::fs::fchown(&f, Some(s.uid), Some(s.gid)).map_err(io(
        pid,
        format!("fchown /dev/pts/{index} to {}:{}", s.uid, s.gid),
    ))?;
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(s.mode))
        .map_err(io(pid, format!("fchmod /dev/pts/{index}")))?;
    if s.atime_ns > 0 && s.mtime_ns > 0 {
        // Last: every read and write of the terminal moves them.
        let at = |ns: i64| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64);
        let times = std::fs::FileTimes::new()
            .set_accessed(at(s.atime_ns))
            .set_modified(at(s.mtime_ns));
        f.set_times(times)
            .map_err(io(pid, format!("futimens /dev/pts/{index}")))?;
    }
    let f = OwnedFd::from(f);
    pty::set_exclusive(&f, s.slave_exclusive).at(pid, st)?;
    pty::set_exclusive(master, s.master_exclusive).at(pid, st)?;
    stop_output(pid, index, master, &f, s)?;
    drop(f);
    if held.is_none() && !s.slave_closed {
        return Err(RestoreError::Refused {
            pid,
            stage: st,
            what: format!("pts {index}: no slave open and none ever closed (stasis does not write such images)"),
        });
    }
    pty::set_locked(master, s.locked).at(pid, st)
}

/// Output stopped again as it was: the slave's and the master's, each by
/// tcflow(TCOOFF) on that end (a typed START character does not restart
/// it); then waits (at most 2 s) until the end no longer polls writable.
fn stop_output(
    pid: u32,
    index: u32,
    master: &OwnedFd,
    slave: &OwnedFd,
    s: &PtyState,
) -> Result<()> {
    let st = Stage::Fork;
    for (on, end, what) in [
        (s.stopped == 2, slave, "its output"),
        (s.master_stopped, master, "its master's output"),
    ] {
        if on && !stopped_again(end).at(pid, st)? {
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!("pts {index}: {what} did not stop"),
            });
        }
    }
    // In packet mode the slave's stop queued a status byte (TIOCPKT_STOP)
    // for the master's reader; the dump saw none waiting (it refuses one),
    // so the original's reader had taken it.
    if s.packet && s.stopped == 2 {
        pty::take_status(master).at(pid, st)?;
    }
    Ok(())
}

/// TCOOFF on `end`, then whether it stopped within 2 s.
fn stopped_again(end: &OwnedFd) -> stasis_sys::Result<bool> {
    pty::stop_output_tcooff(end)?;
    for _ in 0..200 {
        if pty::output_stopped(end)? {
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(false)
}

/// The restorer's master descriptor of pair `index` (for TIOCSCTTY).
pub(crate) fn master_fd(o: &Opened, index: u32) -> Option<i32> {
    use std::os::fd::AsRawFd;
    o.object(KIND, u64::from(index))
        .map(|i| o.owned[i].as_raw_fd())
}

/// Each pty's foreground process group, set by its session leader (its
/// controlling terminal since the fork, so /dev/tty names it) once the
/// groups exist: TIOCSPGRP needs a group of the caller's session.
pub(crate) fn set_foreground(procs: &[ProcessImage], remotes: &mut [RemoteThread]) -> Result<()> {
    let st = Stage::Attributes;
    for (img, r) in procs.iter().zip(remotes.iter_mut()) {
        let Some(index) = img.ctty_pty.filter(|_| img.sid == img.pid) else {
            continue;
        };
        let Some(s) = state(procs, index) else {
            continue;
        };
        if s.fg_pgrp == 0 || s.fg_pgrp == img.pgid {
            continue; // TIOCSCTTY made the leader's group the foreground
        }
        let what = format!("/dev/tty (pts {index})");
        let path = r.write_scratch(0, b"/dev/tty\0").at(img.pid, st)?;
        let arg = r
            .write_scratch(16, &s.fg_pgrp.to_le_bytes())
            .at(img.pid, st)?;
        let fl = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        let fd = r
            .call(
                libc::SYS_openat,
                &[libc::AT_FDCWD as u64, path, fl as u64, 0],
                &format!("open {what}"),
            )
            .at(img.pid, st)?;
        let set = r.call(
            libc::SYS_ioctl,
            &[fd, libc::TIOCSPGRP, arg],
            &format!("TIOCSPGRP {} on {what}", s.fg_pgrp),
        );
        r.call(libc::SYS_close, &[fd], &format!("close {what}"))
            .at(img.pid, st)?;
        set.at(img.pid, st)?;
    }
    Ok(())
}
