//! TCP and UDP sockets (not connected TCP; UDP bound or connected): the
//! family, the addresses (of that family), the options saved by name and
//! the device bound to.

use crate::checker::Checker;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One datagram waiting in a UDP socket: its source, the address it was
/// sent to, its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpDatagram {
    pub from: SocketAddr,
    pub to: std::net::IpAddr,
    #[serde(with = "crate::hex_bytes")]
    pub data: Vec<u8>,
}

/// Bytes of queued datagrams one socket may carry in an image.
pub const MAX_UDP_QUEUED: usize = 16 << 20;

/// Option names are short identifiers (`SO_REUSEADDR`, `TCP_KEEPIDLE`).
const MAX_OPT_NAME: usize = 32;
/// IFNAMSIZ - 1.
const MAX_DEVICE: usize = 15;

pub(super) fn validate(
    c: &Checker<'_>,
    field: &str,
    family: u32,
    addrs: [Option<&SocketAddr>; 2],
    opts: &BTreeMap<String, i32>,
    device: &str,
) -> Result<()> {
    c.ensure(matches!(family, 2 | 10), || {
        format!("{field}.family: {family} is not AF_INET or AF_INET6")
    })?;
    for a in addrs.into_iter().flatten() {
        c.ensure(a.is_ipv4() == (family == 2), || {
            format!("{field}: address {a} is not of family {family}")
        })?;
    }
    for name in opts.keys() {
        c.ensure(
            !name.is_empty()
                && name.len() <= MAX_OPT_NAME
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
            || format!("{field}.opts: {name:?} is not an option name"),
        )?;
    }
    c.ensure(device.len() <= MAX_DEVICE && !device.contains('\0'), || {
        format!("{field}.device: {device:?} is not a device name")
    })
}

pub(super) fn validate_queued(c: &Checker<'_>, field: &str, queued: &[UdpDatagram]) -> Result<()> {
    let total: usize = queued.iter().map(|d| d.data.len()).sum();
    c.ensure(total <= MAX_UDP_QUEUED, || {
        format!("{field}.queued: {total} bytes, more than {MAX_UDP_QUEUED}")
    })?;
    for d in queued {
        c.ensure(!d.data.is_empty() && d.data.len() <= 65507, || {
            format!("{field}.queued: a datagram of {} bytes", d.data.len())
        })?;
    }
    Ok(())
}
