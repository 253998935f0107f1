//! Pseudo-terminal pairs held inside the tree: a /dev/ptmx master and its
//! /dev/pts/N slaves. The master is claimed here with the pair's state
//! (asked of a `pidfd_getfd` duplicate: lock, packet mode, the slave's
//! termios and window size, exclusive mode, session and foreground group);
//! a slave is claimed here too, and [`finish`] keeps it only if its master
//! is in the tree: otherwise it is the shell job's terminal (`-j`, a
//! `CharDevice`) or refused. Bytes queued in the pair cannot be read
//! without consuming them: a pair with any is refused by name.

use super::{Fd, Proc};
use crate::{At, DumpError, Result, Stage};
use stasis_image::{FdKind, PtyState, Termios};
use stasis_sys::pty;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The index N of /dev/pts/N for a device number, if it is a pty slave
/// (majors 136 to 143, 256 minors each).
pub(crate) fn pty_index(rdev: u64) -> Option<u32> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (136..=143)
        .contains(&major)
        .then(|| (major - 136) * 256 + minor)
}

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let (rdev, dev) = match d.stat()? {
        Some(md) if md.file_type().is_char_device() => (md.rdev(), md.dev()),
        _ => return Ok(None),
    };
    if let Some(index) = pty_index(rdev) {
        // Pairs are made again on our /dev/pts, or on the devpts of the
        // tree's own mount namespace at its /dev/pts (dump mntns.rs made
        // sure every master of the tree is on that one): a slave of any
        // other devpts instance would come back as another terminal.
        let devpts = |p: &str| std::fs::metadata(p).map(|m| m.dev()).ok();
        if devpts("/dev/pts") != Some(dev) && own_devpts(d.pid) != Some(dev) {
            return Err(d.refuse(&format!(
                "pts {index} of another devpts instance than /dev/pts (not supported)"
            )));
        }
        let slave = super::dup_of(d.pid, d.fd)?;
        // A hung-up slave (its master closed) answers EIO: nothing to read.
        let queued = match pty::readable(&slave) {
            Err(e) if e.errno() == Some(libc::EIO) => 0,
            r => r.at(d.pid, Stage::Check)?,
        };
        if queued != 0 {
            return Err(d.refuse(&format!(
                "pseudo-terminal slave with {queued} bytes of input not yet read (cannot be saved)"
            )));
        }
        return Ok(Some(FdKind::PtySlave {
            index,
            flags: d.flags(),
        }));
    }
    if (libc::major(rdev), libc::minor(rdev)) == (5, 0) {
        return dev_tty(d);
    }
    if (libc::major(rdev), libc::minor(rdev)) != (5, 2) {
        return Ok(None);
    }
    let master = super::dup_of(d.pid, d.fd)?;
    let (index, pty) = master_state(d, &master)?;
    Ok(Some(FdKind::PtyMaster {
        index,
        flags: d.flags(),
        pty,
    }))
}

/// The device of the devpts at /dev/pts as process `pid` sees it.
fn own_devpts(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/root/dev/pts"))
        .map(|m| m.dev())
        .ok()
}

/// /dev/tty: claimed if the terminal it names is a pty (its master may be
/// in the tree; [`finish`] decides), else left to `chardev`.
fn dev_tty(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let tty = super::dup_of(d.pid, d.fd)?;
    let index = match pty::device(&tty) {
        Ok(dev) => pty_index(dev),
        Err(e) if e.errno() == Some(libc::EIO) => None,
        Err(e) => return Err(e).at(d.pid, Stage::Check),
    };
    Ok(index.map(|index| FdKind::DevTty {
        index,
        flags: d.flags(),
    }))
}

/// The pair's state as its master shows it (PIDs in our namespace until
/// [`finish`] translates them).
fn master_state(d: &Fd<'_>, m: &OwnedFd) -> Result<(u32, PtyState)> {
    let (pid, st) = (d.pid, Stage::Check);
    let index = pty::index(m).at(pid, st)?;
    let ldisc = pty::line_discipline(m).at(pid, st)?;
    if ldisc != 0 {
        return Err(d.refuse(&format!(
            "pseudo-terminal master of pts {index}: line discipline {ldisc} (only N_TTY)"
        )));
    }
    if pty::termios_locked(m).at(pid, st)? {
        return Err(d.refuse(&format!(
            "pseudo-terminal master of pts {index}: locked termios fields (TIOCSLCKTRMIOS; not supported)"
        )));
    }
    let queued = pty::readable(m).at(pid, st)?;
    if queued != 0 {
        return Err(d.refuse(&format!(
            "pseudo-terminal master of pts {index}: {queued} bytes of output not yet read (cannot be saved)"
        )));
    }
    let (hup, pri) = pty::poll_now(m).at(pid, st)?;
    let packet = pty::packet(m).at(pid, st)?;
    if packet && pri {
        return Err(d.refuse(&format!(
            "pseudo-terminal master of pts {index}: a packet-mode status byte not yet read (cannot be saved)"
        )));
    }
    let termios = Termios::from_raw(&pty::termios(m).at(pid, st)?);
    let session = pty::session(m).at(pid, st)?.unwrap_or(0).max(0) as u32;
    let fg_pgrp = if session != 0 {
        pty::foreground(m).at(pid, st)?.max(0) as u32
    } else {
        0
    };
    // The slave's node on the master's devpts: the tree's own, or ours.
    let on_own = std::fs::File::from(super::dup_of(d.pid, d.fd)?)
        .metadata()
        .ok()
        .map(|m| m.dev())
        .is_some_and(|dev| own_devpts(d.pid) == Some(dev));
    let node = if on_own {
        format!("/proc/{}/root/dev/pts/{index}", d.pid)
    } else {
        format!("/dev/pts/{index}")
    };
    let md = std::fs::metadata(&node).map_err(|source| DumpError::Io {
        pid,
        stage: st,
        what: format!("stat {node}"),
        source,
    })?;
    Ok((
        index,
        PtyState {
            locked: pty::locked(m).at(pid, st)?,
            packet,
            termios,
            winsize: pty::winsize(m).at(pid, st)?,
            master_exclusive: pty::exclusive(m).at(pid, st)?,
            slave_exclusive: false,
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode() & 0o7777,
            session,
            fg_pgrp,
            slave_closed: hup,
            atime_ns: md.atime() * 1_000_000_000 + md.atime_nsec(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            stopped: 0,
            master_stopped: false,
        },
    ))
}

fn refuse(pid: u32, what: String) -> DumpError {
    DumpError::Unsupported {
        pid,
        stage: Stage::Check,
        what,
    }
}

/// Once every process is collected and PIDs are final: slaves whose master
/// is outside the tree become the shell job's terminal (or are refused);
/// each pair's slave exclusivity, session and foreground group are put in
/// the image's numbering; controlling terminals are checked.
pub(crate) fn finish(procs: &mut [Proc<'_>], shell_job: bool) -> Result<()> {
    let masters: HashSet<u32> = procs
        .iter()
        .flat_map(|p| &p.image.files)
        .filter_map(|e| match e.kind {
            FdKind::PtyMaster { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    outside_slaves(procs, &masters, shell_job)?;
    let mut states: HashMap<u32, PtyState> = HashMap::new();
    for p in procs.iter() {
        for e in &p.image.files {
            if let FdKind::PtyMaster { index, pty, .. } = &e.kind {
                states.entry(*index).or_insert_with(|| pty.clone());
            }
        }
    }
    for (&index, s) in states.iter_mut() {
        pair_in_tree(procs, index, s)?;
    }
    for p in procs.iter_mut() {
        for e in p.image.files.iter_mut() {
            if let FdKind::PtyMaster { index, pty, .. } = &mut e.kind {
                *pty = states[index].clone();
            }
        }
    }
    controlling_terminals(procs, &states, shell_job)?;
    dev_ttys(procs)
}

/// /dev/tty descriptors of pairs in the tree: each names its process's
/// controlling terminal (the process opens it again itself) and is its
/// own (a shared one would become one per process).
fn dev_ttys(procs: &[Proc<'_>]) -> Result<()> {
    for p in procs {
        for e in &p.image.files {
            if let FdKind::DevTty { index, .. } = e.kind {
                if p.image.ctty_pty != Some(index) {
                    return Err(refuse(
                        p.host,
                        format!(
                            "fd {} (/dev/tty): names pts {index}, which is no longer its controlling terminal (not supported)",
                            e.fd
                        ),
                    ));
                }
            }
        }
    }
    super::refuse_shared(procs, "/dev/tty", |k| matches!(k, FdKind::DevTty { .. }))
}

/// Slaves (and controlling terminals) whose master is not in the tree: the
/// shell job's terminal with `-j`, refused otherwise; one such terminal
/// per process.
fn outside_slaves(procs: &mut [Proc<'_>], masters: &HashSet<u32>, shell_job: bool) -> Result<()> {
    for p in procs.iter_mut() {
        let mut ttys = HashSet::new();
        for e in p.image.files.iter_mut() {
            let (index, flags, devtty) = match e.kind {
                FdKind::PtySlave { index, flags } if !masters.contains(&index) => {
                    (index, flags, false)
                }
                FdKind::DevTty { index, flags } if !masters.contains(&index) => {
                    (index, flags, true)
                }
                FdKind::CharDevice { rdev, .. } if is_terminal(rdev) => {
                    ttys.insert(rdev);
                    continue;
                }
                _ => continue,
            };
            if !shell_job {
                return Err(refuse(
                    p.host,
                    format!(
                        "fd {} (/dev/pts/{index}): a terminal whose master is outside the tree; use --shell-job (-j) to dump a process attached to one",
                        e.fd
                    ),
                ));
            }
            let rdev = libc::makedev(136 + index / 256, index % 256);
            ttys.insert(rdev);
            e.kind = FdKind::CharDevice {
                path: if devtty {
                    "/dev/tty".into()
                } else {
                    format!("/dev/pts/{index}")
                },
                rdev: if devtty { libc::makedev(5, 0) } else { rdev },
                flags,
            };
        }
        if ttys.len() > 1 {
            return Err(refuse(
                p.host,
                "a second terminal: a shell job's descriptors may name one terminal only".into(),
            ));
        }
    }
    Ok(())
}

/// A terminal other than /dev/tty (which names the caller's own).
fn is_terminal(rdev: u64) -> bool {
    let m = libc::major(rdev);
    (matches!(m, 4 | 5 | 136..=143)) && (m, libc::minor(rdev)) != (5, 0)
}

/// One pair whose master is in the tree: its slave's exclusive mode and
/// unread input (through a slave descriptor of the tree, or a slave opened
/// for the question if every one was closed), its session and foreground
/// group in the image's numbering.
fn pair_in_tree(procs: &[Proc<'_>], index: u32, s: &mut PtyState) -> Result<()> {
    let root = procs[0].host;
    let held = procs.iter().find_map(|p| {
        p.image.files.iter().find_map(|e| match e.kind {
            FdKind::PtySlave { index: i, .. } if i == index => Some((p.host, e.fd)),
            _ => None,
        })
    });
    let slave = match held {
        Some((pid, fd)) => Some(super::dup_of(pid, fd)?),
        None if s.slave_closed && !s.locked => {
            let m = master_of(procs, index)?;
            Some(pty::open_peer(&m, libc::O_RDWR | libc::O_NONBLOCK).at(root, Stage::Check)?)
        }
        None => None,
    };
    match slave {
        Some(sl) => {
            s.slave_exclusive = pty::exclusive(&sl).at(root, Stage::Check)?;
            let queued = pty::readable(&sl).at(root, Stage::Check)?;
            if queued != 0 {
                return Err(refuse(
                    root,
                    format!("pts {index}: {queued} bytes of input not yet read (cannot be saved)"),
                ));
            }
            // Output stopped (the master's unread output is refused
            // elsewhere, so a full master is not what stops it). With
            // IXON off only tcflow(TCOOFF) can have stopped it (turning
            // IXON off restarts a ^S stop). With IXON on, a typed ^S and
            // TCOOFF look the same (the kernel's tco_stopped is not
            // shown), and typing ^Q to tell them apart would restart a ^S
            // stop of the running original.
            if pty::output_stopped(&sl).at(root, Stage::Check)? {
                if s.termios.iflag & libc::IXON != 0 {
                    return Err(refuse(
                        root,
                        format!(
                            "pts {index}: output stopped while IXON is on: a typed STOP \
                             character (^S) and tcflow(TCOOFF) cannot be told apart (not supported)"
                        ),
                    ));
                }
                s.stopped = 2;
            }
            // The master's output: only tcflow(TCOOFF) on it stops it (its
            // own termios has IXON off and cannot be changed); the
            // slave's input is empty (above), so a full buffer is not
            // what keeps it from polling writable.
            s.master_stopped =
                pty::output_stopped(&master_of(procs, index)?).at(root, Stage::Check)?;
        }
        None => {
            return Err(refuse(
                root,
                format!(
                    "pts {index}: its slave was never opened, so input written to it cannot be checked (not supported)"
                ),
            ))
        }
    }
    translate(procs, index, s)
}

/// A duplicate of the master of pair `index`.
fn master_of(procs: &[Proc<'_>], index: u32) -> Result<OwnedFd> {
    for p in procs {
        for e in &p.image.files {
            if matches!(e.kind, FdKind::PtyMaster { index: i, .. } if i == index) {
                return super::dup_of(p.host, e.fd);
            }
        }
    }
    Err(refuse(procs[0].host, format!("pts {index}: no master")))
}

/// Session and foreground group from our numbering to the image's: the
/// session leader and a member of the group must be in the tree.
fn translate(procs: &[Proc<'_>], index: u32, s: &mut PtyState) -> Result<()> {
    if s.session == 0 {
        return Ok(());
    }
    let root = procs[0].host;
    let leader = procs
        .iter()
        .find(|p| p.host == s.session)
        .ok_or_else(|| {
            refuse(
                root,
                format!(
                    "pts {index}: the controlling terminal of session {} whose leader is outside the tree",
                    s.session
                ),
            )
        })?;
    let sid = leader.image.pid;
    let mut fg = 0;
    if s.fg_pgrp != 0 {
        for p in procs {
            let st = stasis_proc::read_stat(p.host).at(p.host, Stage::Collect)?;
            if st.pgrp == s.fg_pgrp {
                fg = p.image.pgid;
                break;
            }
        }
        if fg == 0 {
            return Err(refuse(
                root,
                format!(
                    "pts {index}: foreground process group {} has no process in the tree",
                    s.fg_pgrp
                ),
            ));
        }
    }
    s.session = sid;
    s.fg_pgrp = fg;
    Ok(())
}

/// Every process's controlling terminal: a pty of the tree is the one of
/// its session, whose leader is in the tree; the shell job's is kept with
/// `-j`; any other is refused.
fn controlling_terminals(
    procs: &mut [Proc<'_>],
    states: &HashMap<u32, PtyState>,
    shell_job: bool,
) -> Result<()> {
    let by_session: HashMap<u32, u32> = states
        .iter()
        .filter(|(_, s)| s.session != 0)
        .map(|(&i, s)| (s.session, i))
        .collect();
    for p in procs.iter_mut() {
        let img = &mut p.image;
        let want = by_session.get(&img.sid).copied();
        match (img.ctty_pty, want) {
            (Some(i), Some(j)) if i == j => {}
            (Some(i), _) if !states.contains_key(&i) => {
                if !shell_job {
                    return Err(refuse(
                        p.host,
                        format!(
                            "a controlling terminal (pts {i}) whose master is outside the tree; use --shell-job (-j) to dump a process attached to one"
                        ),
                    ));
                }
                img.ctty_pty = None;
            }
            (None, None) => {}
            (have, want) => {
                return Err(refuse(
                    p.host,
                    format!(
                        "controlling terminal {} but its session's is {} (TIOCNOTTY or TIOCSCTTY elsewhere; not supported)",
                        have.map_or("none".into(), |i| format!("pts {i}")),
                        want.map_or("none".into(), |i| format!("pts {i}")),
                    ),
                ))
            }
        }
    }
    Ok(())
}
