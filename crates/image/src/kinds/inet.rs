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

/// A multicast group membership of a UDP socket (IP_ADD_MEMBERSHIP,
/// IPV6_JOIN_GROUP, MCAST_JOIN_GROUP, ...) with its source filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The interface's index (as the kernel keeps it).
    pub ifindex: u32,
    pub group: std::net::IpAddr,
    /// Filter mode: only `sources` (MCAST_INCLUDE), or all but them.
    #[serde(default)]
    pub include: bool,
    #[serde(default)]
    pub sources: Vec<std::net::IpAddr>,
}

/// The options of a TCP or UDP socket that are not ints, each as
/// getsockopt reads it, present only where it differs from a new socket's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockExtra {
    /// SO_LINGER: (l_onoff, l_linger in seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<(i32, i32)>,
    /// TCP_CONGESTION: the algorithm's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub congestion: String,
    /// IP_OPTIONS: the IPv4 options the socket sends (up to 40 bytes).
    #[serde(
        default,
        with = "crate::hex_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_options: Vec<u8>,
    /// TCP_MD5SIG keys (read through inet sock_diag: listeners and
    /// connections).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub md5: Vec<Md5Key>,
    /// SO_ATTACH_FILTER: a classic BPF program's instructions (8 bytes
    /// each).
    #[serde(
        default,
        with = "crate::hex_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub filter: Vec<u8>,
}

/// One TCP_MD5SIG key: the peers it signs for (address and prefix) and
/// the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Md5Key {
    pub addr: std::net::IpAddr,
    pub prefixlen: u8,
    #[serde(with = "crate::hex_bytes")]
    pub key: Vec<u8>,
}

/// TCP_MD5SIG_MAXKEYLEN.
const MAX_MD5_KEY: usize = 80;
/// Keys one socket may carry in an image.
const MAX_MD5_KEYS: usize = 4096;

impl SockExtra {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// TCP_CA_NAME_MAX - 1.
const MAX_CONGESTION: usize = 15;
/// The IPv4 header's room for options.
const MAX_IP_OPTIONS: usize = 40;

pub(super) fn validate_extra(c: &Checker<'_>, field: &str, e: &SockExtra) -> Result<()> {
    c.ensure(
        e.congestion.len() <= MAX_CONGESTION
            && e.congestion
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        || {
            format!(
                "{field}.extra.congestion: {:?} is not an algorithm name",
                e.congestion
            )
        },
    )?;
    c.ensure(e.ip_options.len() <= MAX_IP_OPTIONS, || {
        format!(
            "{field}.extra.ip_options: {} bytes, more than {MAX_IP_OPTIONS}",
            e.ip_options.len()
        )
    })?;
    super::netsk::validate_filter(c, field, &e.filter)?;
    c.ensure(e.md5.len() <= MAX_MD5_KEYS, || {
        format!(
            "{field}.extra.md5: {} keys, more than {MAX_MD5_KEYS}",
            e.md5.len()
        )
    })?;
    for k in &e.md5 {
        let bits = if k.addr.is_ipv4() { 32 } else { 128 };
        c.ensure(k.key.len() <= MAX_MD5_KEY && k.prefixlen <= bits, || {
            format!(
                "{field}.extra.md5: key for {}/{} of {} bytes",
                k.addr,
                k.prefixlen,
                k.key.len()
            )
        })?;
    }
    c.ensure(
        e.linger
            .is_none_or(|(on, secs)| matches!(on, 0 | 1) && secs >= 0),
        || {
            format!(
                "{field}.extra.linger: {:?} is not a linger setting",
                e.linger
            )
        },
    )
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
    validate_opt_names(c, field, opts)?;
    c.ensure(device.len() <= MAX_DEVICE && !device.contains('\0'), || {
        format!("{field}.device: {device:?} is not a device name")
    })
}

/// Every saved option's name looks like one (SO_..., TCP_..., ...).
pub(super) fn validate_opt_names(
    c: &Checker<'_>,
    field: &str,
    opts: &BTreeMap<String, i32>,
) -> Result<()> {
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
    Ok(())
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

/// Bytes one TCP queue (receive or send) may carry in an image.
pub const MAX_TCP_QUEUE: usize = 64 << 20;

/// `struct tcp_repair_window`, as TCP_REPAIR_WINDOW reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// A TCP connection's state as repair mode reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpStream {
    /// TCP state: 1 ESTABLISHED; half-closed: 4 FIN_WAIT1, 5 FIN_WAIT2,
    /// 9 LAST_ACK, 11 CLOSING (our FIN sent, counted in `write_seq`), 8
    /// CLOSE_WAIT, 9, 11 (the peer's FIN received, counted in `rcv_nxt`).
    pub state: u8,
    /// The sequence after the last byte received (rcv_nxt).
    pub rcv_nxt: u32,
    /// The sequence after the last byte the process wrote (write_seq).
    pub write_seq: u32,
    /// Received, not yet read by the process.
    #[serde(with = "crate::hex_bytes")]
    pub recv_queue: Vec<u8>,
    /// Written by the process, not acknowledged by the peer: sent (first)
    /// and never sent (the last `unsent` bytes).
    #[serde(with = "crate::hex_bytes")]
    pub send_queue: Vec<u8>,
    pub unsent: u32,
    /// The MSS clamp (TCP_MAXSEG in repair mode).
    pub mss: u32,
    /// Window scaling (send, receive), when negotiated.
    #[serde(default)]
    pub wscale: Option<(u8, u8)>,
    #[serde(default)]
    pub sack: bool,
    /// The timestamp clock (TCP_TIMESTAMP), when timestamps were negotiated.
    #[serde(default)]
    pub timestamp: Option<u32>,
    pub window: TcpWindow,
}

/// The network lock a dump left on its TCP connections: the method
/// (criu's `--network-lock` names), the lock's name (the nftables table or
/// iptables chain) and the connections (local, peer) it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetLock {
    pub method: String,
    pub name: String,
    pub conns: Vec<(SocketAddr, SocketAddr)>,
    /// The lock was made inside the tree's own network namespace (which
    /// died with the tree): a restore makes it again in the new one before
    /// any connection is rebuilt, and releases it there.
    #[serde(default)]
    pub in_netns: bool,
}

/// Lock names: what nftables tables and iptables chains both accept.
const MAX_LOCK_NAME: usize = 28;

pub(crate) fn validate_lock(c: &Checker<'_>, l: &NetLock) -> Result<()> {
    c.ensure(matches!(l.method.as_str(), "iptables" | "nftables"), || {
        format!(
            "net_lock.method: {:?} is not iptables or nftables",
            l.method
        )
    })?;
    c.ensure(
        !l.name.is_empty()
            && l.name.len() <= MAX_LOCK_NAME
            && l.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        || format!("net_lock.name: {:?} is not a lock name", l.name),
    )
}

pub(super) fn validate_stream(c: &Checker<'_>, field: &str, s: &TcpStream) -> Result<()> {
    c.ensure(matches!(s.state, 1 | 4 | 5 | 8 | 9 | 11), || {
        format!(
            "{field}.stream.state: {} is not ESTABLISHED or half-closed",
            s.state
        )
    })?;
    for (name, q) in [("recv_queue", &s.recv_queue), ("send_queue", &s.send_queue)] {
        c.ensure(q.len() <= MAX_TCP_QUEUE, || {
            format!(
                "{field}.stream.{name}: {} bytes, more than {MAX_TCP_QUEUE}",
                q.len()
            )
        })?;
    }
    c.ensure(s.unsent as usize <= s.send_queue.len(), || {
        format!(
            "{field}.stream.unsent: {} bytes of a {}-byte send queue",
            s.unsent,
            s.send_queue.len()
        )
    })?;
    c.ensure(s.wscale.is_none_or(|(a, b)| a <= 14 && b <= 14), || {
        format!("{field}.stream.wscale: {:?} above 14", s.wscale)
    })
}
