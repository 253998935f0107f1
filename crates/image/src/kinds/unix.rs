//! Unix socket pairs: stream, dgram or seqpacket.

use crate::checker::Checker;
use crate::error::Result;

pub(super) fn validate(c: &Checker<'_>, field: &str, sock_type: u32) -> Result<()> {
    c.ensure(matches!(sock_type, 1 | 2 | 5), || {
        format!("{field}.sock_type: {sock_type} is not stream, dgram or seqpacket")
    })
}
