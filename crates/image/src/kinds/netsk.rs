//! Netlink, packet and raw IP sockets: the socket type, the options saved
//! by name, a packet socket's memberships and filter, a raw socket's
//! addresses (of its family) and ICMP filter.

use crate::checker::Checker;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One PACKET_ADD_MEMBERSHIP of a packet socket, added `count` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketMember {
    pub ifindex: i32,
    /// PACKET_MR_MULTICAST (0), PROMISC (1), ALLMULTI (2), UNICAST (3).
    pub mr_type: u16,
    pub count: u32,
    #[serde(default, with = "crate::hex_bytes")]
    pub addr: Vec<u8>,
}

/// Groups a netlink socket may be in (the kernel's largest protocol, generic
/// netlink, grows its groups as families register: far below this).
const MAX_GROUPS: usize = 4096;
/// BPF_MAXINSNS.
const MAX_FILTER: usize = 4096 * 8;
/// struct packet_mreq's address.
const MAX_MEMBER_ADDR: usize = 8;
/// Memberships one packet socket may carry in an image.
const MAX_MEMBERS: usize = 4096;

fn types(c: &Checker<'_>, field: &str, ty: i32, allowed: &[i32]) -> Result<()> {
    c.ensure(allowed.contains(&ty), || {
        format!("{field}.sock_type: {ty} is not one of {allowed:?}")
    })
}

pub(super) fn validate_netlink(
    c: &Checker<'_>,
    field: &str,
    sock_type: i32,
    protocol: i32,
    groups: &[u32],
    opts: &BTreeMap<String, i32>,
) -> Result<()> {
    types(c, field, sock_type, &[libc::SOCK_RAW, libc::SOCK_DGRAM])?;
    c.ensure((0..32).contains(&protocol), || {
        format!("{field}.protocol: {protocol} is not a netlink protocol")
    })?;
    c.ensure(
        groups.len() <= MAX_GROUPS && groups.iter().all(|&g| g != 0),
        || format!("{field}.groups: {} groups, or a group 0", groups.len()),
    )?;
    super::inet::validate_opt_names(c, field, opts)
}

pub(super) fn validate_packet(
    c: &Checker<'_>,
    field: &str,
    sock_type: i32,
    members: &[PacketMember],
    opts: &BTreeMap<String, i32>,
    filter: &[u8],
) -> Result<()> {
    types(c, field, sock_type, &[libc::SOCK_RAW, libc::SOCK_DGRAM])?;
    c.ensure(members.len() <= MAX_MEMBERS, || {
        format!("{field}.members: {} memberships", members.len())
    })?;
    for m in members {
        c.ensure(m.addr.len() <= MAX_MEMBER_ADDR && m.count > 0, || {
            format!(
                "{field}.members: an address of {} bytes, or a count of {}",
                m.addr.len(),
                m.count
            )
        })?;
    }
    validate_filter(c, field, filter)?;
    super::inet::validate_opt_names(c, field, opts)
}

pub(super) fn validate_filter(c: &Checker<'_>, field: &str, filter: &[u8]) -> Result<()> {
    c.ensure(filter.len() % 8 == 0 && filter.len() <= MAX_FILTER, || {
        format!(
            "{field}.filter: {} bytes is not a classic BPF program",
            filter.len()
        )
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn validate_raw(
    c: &Checker<'_>,
    field: &str,
    family: u32,
    sock_type: i32,
    addrs: [Option<&SocketAddr>; 2],
    opts: &BTreeMap<String, i32>,
    device: &str,
    icmp_filter: &[u8],
) -> Result<()> {
    types(c, field, sock_type, &[libc::SOCK_RAW, libc::SOCK_DGRAM])?;
    c.ensure(matches!(icmp_filter.len(), 0 | 4 | 32), || {
        format!(
            "{field}.icmp_filter: {} bytes is not an ICMP filter",
            icmp_filter.len()
        )
    })?;
    super::inet::validate(c, field, family, addrs, opts, device)
}
