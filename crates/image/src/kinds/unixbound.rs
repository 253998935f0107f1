//! Unix sockets that are not connected: bound to a path (absolute, with
//! its NUL) or an abstract name, or not bound; queued datagrams capped.

use super::unix::{Queued, MAX_QUEUED};
use crate::checker::Checker;
use crate::error::Result;

/// sizeof(sun_path).
const MAX_NAME: usize = 108;

pub(super) fn validate(
    c: &Checker<'_>,
    field: &str,
    sock_type: u32,
    name: &[u8],
    queued: &[Queued],
) -> Result<()> {
    c.ensure(matches!(sock_type, 1 | 2 | 5), || {
        format!("{field}.sock_type: {sock_type} is not stream, dgram or seqpacket")
    })?;
    c.ensure(name.len() <= MAX_NAME, || {
        format!("{field}.name: {} bytes, more than {MAX_NAME}", name.len())
    })?;
    if let Some(&first) = name.first() {
        // A path: absolute, one NUL at the end.
        c.ensure(
            first == 0
                || (first == b'/'
                    && name.last() == Some(&0)
                    && !name[..name.len() - 1].contains(&0)),
            || format!("{field}.name: neither an absolute path nor an abstract name"),
        )?;
    }
    let total: usize = queued.iter().map(|q| q.data.len()).sum();
    c.ensure(total <= MAX_QUEUED, || {
        format!("{field}.queued: {total} bytes, more than {MAX_QUEUED}")
    })
}
