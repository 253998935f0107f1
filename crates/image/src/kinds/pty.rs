//! Pseudo-terminal pairs whose master is in the image (`FdKind::PtyMaster`,
//! `FdKind::PtySlave`): the pair's state, saved with each master entry.

use crate::checker::Checker;
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// The kernel's largest pty index (NR_UNIX98_PTY_MAX).
pub const MAX_PTY_INDEX: u32 = 1 << 20;
/// Control characters of a `struct termios2` (NCCS).
pub const NCCS: usize = 19;

/// The terminal settings (TCGETS2), speeds included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    /// Line discipline number (only N_TTY, 0, is dumped).
    pub line: u8,
    /// Control characters (`c_cc`, NCCS of them).
    pub cc: Vec<u8>,
    pub ispeed: u32,
    pub ospeed: u32,
}

impl Termios {
    /// From the kernel's `struct termios2`.
    pub fn from_raw(t: &libc::termios2) -> Termios {
        Termios {
            iflag: t.c_iflag,
            oflag: t.c_oflag,
            cflag: t.c_cflag,
            lflag: t.c_lflag,
            line: t.c_line,
            cc: t.c_cc[..NCCS].to_vec(),
            ispeed: t.c_ispeed,
            ospeed: t.c_ospeed,
        }
    }

    /// To the kernel's `struct termios2` (`cc` validated to NCCS bytes).
    pub fn to_raw(&self) -> libc::termios2 {
        let mut c_cc = [0u8; NCCS];
        let n = self.cc.len().min(NCCS);
        c_cc[..n].copy_from_slice(&self.cc[..n]);
        libc::termios2 {
            c_iflag: self.iflag,
            c_oflag: self.oflag,
            c_cflag: self.cflag,
            c_lflag: self.lflag,
            c_line: self.line,
            c_cc,
            c_ispeed: self.ispeed,
            c_ospeed: self.ospeed,
        }
    }
}

/// One pseudo-terminal pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyState {
    /// The slave is locked (TIOCGPTLCK): it cannot be opened.
    pub locked: bool,
    /// Packet mode on the master (TIOCGPKT).
    pub packet: bool,
    /// The slave's settings (asked through the master).
    pub termios: Termios,
    /// Window size: rows, columns, x and y pixels (TIOCGWINSZ).
    pub winsize: [u16; 4],
    /// Exclusive mode (TIOCGEXCL) of the master, and of the slave.
    pub master_exclusive: bool,
    pub slave_exclusive: bool,
    /// Owner, group and mode (permission bits) of /dev/pts/N.
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// The session (image numbering) whose controlling terminal it is; 0:
    /// none.
    #[serde(default)]
    pub session: u32,
    /// Its foreground process group (image numbering); 0: none.
    #[serde(default)]
    pub fg_pgrp: u32,
    /// Every slave descriptor was closed after one was opened: the master
    /// reads EIO and polls POLLHUP.
    #[serde(default)]
    pub slave_closed: bool,
    /// Access and modification times of /dev/pts/N, nanoseconds since the
    /// epoch (the idle time `w` shows); 0: not saved.
    #[serde(default)]
    pub atime_ns: i64,
    #[serde(default)]
    pub mtime_ns: i64,
    /// The slave's output stopped: 0 no, 2 by tcflow(TCOOFF) (IXON off:
    /// nothing else could have stopped it). 1 (stopped with IXON on) was
    /// written by older versions and is refused: a typed ^S and TCOOFF
    /// cannot be told apart.
    #[serde(default)]
    pub stopped: u8,
    /// The master's output stopped: only tcflow(TCOOFF) on the master can
    /// (its own termios, IXON off, cannot be changed).
    #[serde(default)]
    pub master_stopped: bool,
}

pub(super) fn validate(
    c: &Checker<'_>,
    field: &str,
    index: u32,
    pty: Option<&PtyState>,
) -> Result<()> {
    c.ensure(index < MAX_PTY_INDEX, || {
        format!("{field}.index: {index} too large")
    })?;
    let Some(p) = pty else { return Ok(()) };
    c.ensure(p.termios.cc.len() == NCCS, || {
        format!(
            "{field}.pty.termios.cc: {} control characters, not {NCCS}",
            p.termios.cc.len()
        )
    })?;
    c.ensure(p.termios.line == 0, || {
        format!(
            "{field}.pty.termios.line: line discipline {} (only N_TTY)",
            p.termios.line
        )
    })?;
    c.ensure(p.stopped == 0 || p.stopped == 2, || {
        format!(
            "{field}.pty.stopped: {} (0 or 2; 1, output stopped with IXON on, is refused: \
             a typed ^S and tcflow(TCOOFF) cannot be told apart)",
            p.stopped
        )
    })?;
    c.ensure(p.mode <= 0o7777, || {
        format!("{field}.pty.mode: {:#o}", p.mode)
    })?;
    c.ensure(p.fg_pgrp == 0 || p.session != 0, || {
        format!("{field}.pty.fg_pgrp: {} without a session", p.fg_pgrp)
    })
}
