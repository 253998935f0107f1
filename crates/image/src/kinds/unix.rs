//! Unix socket pairs: stream, dgram or seqpacket; their queued data
//! (within `MAX_QUEUED` bytes) and shutdown state.

use crate::checker::Checker;
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// Bytes of queued data one socket may carry in an image.
pub const MAX_QUEUED: usize = 16 << 20;

/// The credentials SO_PEERCRED and SO_PEERGROUPS give on a socket: for a
/// socketpair its creator's, as they were when it made the pair (PID as
/// the dumper sees it, effective uid and gid, supplementary groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// NGROUPS_MAX.
pub const MAX_GROUPS: usize = 65536;

/// One message (or a stream's bytes) waiting in a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    #[serde(with = "crate::hex_bytes")]
    pub data: Vec<u8>,
    /// Descriptors in flight with this message (SCM_RIGHTS), in order:
    /// each shares its open file description with a descriptor of the
    /// tree (`ofd`), sent again with the message at restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rights: Vec<InFlight>,
}

impl Queued {
    /// A message (or bytes) without descriptors in flight.
    pub fn plain(data: Vec<u8>) -> Queued {
        Queued {
            data,
            rights: Vec::new(),
        }
    }
}

/// One descriptor in flight (SCM_RIGHTS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The open file description (`FdEntry::ofd`) of a descriptor of the
    /// tree it shares.
    pub ofd: u64,
    /// What it is (its /proc link at the dump), for messages.
    pub link: String,
    /// The dump's handle on it until the descriptions are linked.
    #[serde(skip)]
    pub token: u64,
}

/// The open file descriptions (`FdEntry::ofd`) of every descriptor in
/// flight in a message queued in one of `files`' unix sockets.
pub fn ofds_in_flight<'a>(
    files: impl IntoIterator<Item = &'a crate::FdEntry>,
) -> std::collections::HashSet<u64> {
    files
        .into_iter()
        .filter_map(|e| match &e.kind {
            crate::FdKind::UnixSocket { queued, .. } => Some(queued),
            _ => None,
        })
        .flatten()
        .flat_map(|q| q.rights.iter().map(|r| r.ofd))
        .collect()
}

pub(super) fn validate(
    c: &Checker<'_>,
    field: &str,
    sock_type: u32,
    queued: &[Queued],
    shutdown: u8,
    name: &[u8],
    peercred: Option<&PeerCred>,
) -> Result<()> {
    c.ensure(
        peercred.is_none_or(|p| p.groups.len() <= MAX_GROUPS),
        || format!("{field}.peercred.groups: more than {MAX_GROUPS}"),
    )?;
    c.ensure(name.len() <= 108, || {
        format!("{field}.name: {} bytes, more than sun_path", name.len())
    })?;
    c.ensure(matches!(sock_type, 1 | 2 | 5), || {
        format!("{field}.sock_type: {sock_type} is not stream, dgram or seqpacket")
    })?;
    let total: usize = queued.iter().map(|q| q.data.len()).sum();
    let fds = queued.iter().map(|q| q.rights.len()).max().unwrap_or(0);
    c.ensure(fds <= 253, || {
        format!("{field}.queued: {fds} descriptors in one message, more than SCM_MAX_FD")
    })?;
    c.ensure(
        queued.iter().flat_map(|q| &q.rights).all(|r| r.ofd != 0),
        || format!("{field}.queued: a descriptor in flight without its open file description"),
    )?;
    c.ensure(total <= MAX_QUEUED, || {
        format!("{field}.queued: {total} bytes, more than {MAX_QUEUED}")
    })?;
    c.ensure(shutdown <= 3, || {
        format!("{field}.shutdown: {shutdown} is not a shutdown mode")
    })
}
