//! Unix socket pairs: stream, dgram or seqpacket; their queued data
//! (within `MAX_QUEUED` bytes) and shutdown state.

use crate::checker::Checker;
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// Bytes of queued data one socket may carry in an image.
pub const MAX_QUEUED: usize = 16 << 20;

/// One message (or a stream's bytes) waiting in a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    #[serde(with = "crate::hex_bytes")]
    pub data: Vec<u8>,
}

pub(super) fn validate(
    c: &Checker<'_>,
    field: &str,
    sock_type: u32,
    queued: &[Queued],
    shutdown: u8,
    name: &[u8],
) -> Result<()> {
    c.ensure(name.len() <= 108, || {
        format!("{field}.name: {} bytes, more than sun_path", name.len())
    })?;
    c.ensure(matches!(sock_type, 1 | 2 | 5), || {
        format!("{field}.sock_type: {sock_type} is not stream, dgram or seqpacket")
    })?;
    let total: usize = queued.iter().map(|q| q.data.len()).sum();
    c.ensure(total <= MAX_QUEUED, || {
        format!("{field}.queued: {total} bytes, more than {MAX_QUEUED}")
    })?;
    c.ensure(shutdown <= 3, || {
        format!("{field}.shutdown: {shutdown} is not a shutdown mode")
    })
}
