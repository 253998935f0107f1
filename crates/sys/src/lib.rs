//! Raw kernel interfaces for stasis.
//!
//! Every `unsafe` block in the project lives in this crate and carries a
//! `// SAFETY:` comment naming the invariant it relies on. Everything above
//! this crate is safe Rust.

pub mod buf;
pub mod cgroupns;
pub mod clone;
pub mod ethtool;
pub mod fanotify;
pub mod fdowner;
pub mod features;
pub mod fileops;
pub mod hook;
pub mod inotify;
pub mod landlock;
pub mod mem;
pub mod netlink;
pub mod netlock;
pub mod ptrace;
pub mod pty;
pub mod remote;
pub mod sched;
pub mod seqpacket;
pub mod tcprepair;
pub mod util;
pub mod xsave;

use std::fmt;

/// A process or thread id in the caller's PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub i32);

impl Pid {
    pub fn as_raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A failed system call: which operation, on which task, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{op}{}: {source}", match .pid { Some(p) => format!(" (pid {p})"), None => String::new() })]
pub struct SysError {
    pub op: String,
    pub pid: Option<Pid>,
    #[source]
    pub source: std::io::Error,
}

impl SysError {
    pub fn new(op: impl Into<String>, pid: Option<Pid>, errno: i32) -> Self {
        SysError {
            op: op.into(),
            pid,
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    /// The errno, if this error came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// An error that is not an errno (protocol violation, unexpected stop).
    pub fn other(op: impl Into<String>, pid: Option<Pid>, msg: impl Into<String>) -> Self {
        SysError {
            op: op.into(),
            pid,
            source: std::io::Error::other(msg.into()),
        }
    }
}

pub type Result<T> = std::result::Result<T, SysError>;

/// Decodes a libc return value: -1 means failure with errno set.
pub(crate) fn check(ret: libc::c_long, op: &str, pid: Option<Pid>) -> Result<libc::c_long> {
    if ret == -1 {
        Err(SysError::new(op, pid, last_errno()))
    } else {
        Ok(ret)
    }
}

pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
pub mod mcast;
pub mod mount;
pub mod mqueue;
pub mod nlsock;
pub mod nsenter;
pub mod pagemap;
pub mod perf;
pub mod sock;
pub mod sockdiag;
pub mod spawn;
pub mod sysvipc;
pub mod timens;
pub mod tool;
pub mod tun;
pub mod udpq;
pub mod uffd;
pub mod userns;
