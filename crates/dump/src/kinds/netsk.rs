//! Netlink, packet and raw IP sockets, on the `pidfd_getfd` duplicate
//! [`super::inet`] identified, in the process's own network namespace
//! (a socket of another one is refused: the restore makes its sockets in
//! the tree's).
//!
//! - netlink: protocol and type, the bound port id (kernel-assigned or
//!   chosen), every multicast group (NETLINK_LIST_MEMBERSHIPS), the
//!   connected peer (port id, group), the options of
//!   `nlsock::netlink_opts` that differ from a new socket's, a classic BPF
//!   filter. Refused by name: messages waiting to be read and a dump in
//!   progress (netlink_diag in the socket's namespace), an eBPF filter.
//! - packet: type, protocol, the protocol and interface bound to, the
//!   PACKET_ADD_MEMBERSHIP list (packet_diag), the options of
//!   `nlsock::packet_opts`, a classic BPF filter, a fanout group of its
//!   own. Refused by name: rings (PACKET_RX_RING/TX_RING), a fanout group
//!   of several sockets or with a program, packets waiting, an eBPF
//!   filter, SOCK_PACKET.
//! - raw IP (SOCK_RAW) and ping (SOCK_DGRAM + IPPROTO_ICMP/ICMPV6): both
//!   addresses, the options of `sock::INET_OPTS` plus IP_HDRINCL,
//!   IPV6_HDRINCL and IPV6_CHECKSUM, ICMP_FILTER / ICMP6_FILTER, the bound
//!   device, SO_LINGER, IP_OPTIONS, a classic BPF filter. Refused by name:
//!   packets waiting, an eBPF filter.

use super::Fd;
use crate::{At, Result, Stage};
use stasis_image::kinds::netsk::PacketMember;
use stasis_image::FdKind;
use stasis_sys::{nlsock, sock};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// Refuses a socket of a network namespace other than the process's.
fn same_netns(d: &Fd<'_>, dup: &OwnedFd, what: &str) -> Result<()> {
    let (pid, st) = (d.pid, Stage::Check);
    let sk = nlsock::socket_netns(dup).at(pid, st)?;
    let own = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino())
        .unwrap_or(0);
    if sk != own {
        return Err(d.refuse(&format!(
            "{what} of another network namespace than its process's (not supported)"
        )));
    }
    Ok(())
}

pub(super) fn netlink(d: &Fd<'_>, dup: &OwnedFd) -> Result<FdKind> {
    let (pid, st) = (d.pid, Stage::Check);
    let int = |opt| sock::get_int(dup, libc::SOL_SOCKET, opt).at(pid, st);
    let (ty, protocol) = (int(libc::SO_TYPE)?, int(libc::SO_PROTOCOL)?);
    let what = format!("a netlink socket (protocol {protocol})");
    same_netns(d, dup, &what)?;
    let (portid, _) = nlsock::nl_name(dup, false).at(pid, st)?;
    let (dst_portid, dst_group) = nlsock::nl_name(dup, true).unwrap_or((0, 0));
    let groups = nlsock::nl_groups(dup).at(pid, st)?;
    let ino = d.socket_ino().unwrap_or(0);
    let diag = stasis_sys::netlink::in_ns_of_socket(dup, nlsock::netlink_sockets)
        .at(pid, st)?
        .at(pid, st)?;
    match diag.get(&ino) {
        // Neither bound nor in a group: nothing can reach it.
        None if portid == 0 && groups.is_empty() => {}
        None => return Err(d.refuse(&format!("{what} netlink_diag does not list"))),
        Some(s) if s.flags & nlsock::NDIAG_FLAG_CB_RUNNING != 0 => {
            return Err(d.refuse(&format!(
                "{what} in the middle of a dump request (its replies are not all sent: \
                 not supported)"
            )))
        }
        Some(s) if s.rmem != 0 => {
            return Err(d.refuse(&format!(
                "{what} with messages waiting to be read ({} bytes queued: not supported)",
                s.rmem
            )))
        }
        Some(_) => {}
    }
    let fresh = sock::socket(libc::AF_NETLINK, ty, protocol).at(pid, st)?;
    Ok(FdKind::NetlinkSocket {
        protocol,
        sock_type: ty,
        portid,
        groups,
        dst_portid,
        dst_group,
        opts: sock::changed_options(&nlsock::netlink_opts(), dup, &fresh),
        filter: super::inet::filter(d, dup)?,
        flags: d.flags(),
    })
}

pub(super) fn packet(d: &Fd<'_>, dup: &OwnedFd) -> Result<FdKind> {
    let (pid, st) = (d.pid, Stage::Check);
    let int = |opt| sock::get_int(dup, libc::SOL_SOCKET, opt).at(pid, st);
    let (ty, protocol) = (int(libc::SO_TYPE)?, int(libc::SO_PROTOCOL)?);
    // SOCK_PACKET (10), the obsolete kind.
    if ty == 10 {
        return Err(d.refuse("a SOCK_PACKET packet socket (obsolete; not supported)"));
    }
    same_netns(d, dup, "a packet socket")?;
    let ino = d.socket_ino().unwrap_or(0);
    let diag = stasis_sys::netlink::in_ns_of_socket(dup, nlsock::packet_sockets)
        .at(pid, st)?
        .at(pid, st)?;
    let Some(s) = diag.get(&ino) else {
        return Err(d.refuse("a packet socket packet_diag does not list"));
    };
    if s.rx_ring || s.tx_ring {
        return Err(d.refuse(
            "a packet socket with a mapped ring (PACKET_RX_RING/PACKET_TX_RING: not supported)",
        ));
    }
    let fanout = match s.fanout {
        None => 0,
        Some(f) => fanout(d, dup, &diag, f)?,
    };
    if s.rmem != 0 || sock::has_datagram(dup).unwrap_or(true) {
        return Err(d.refuse(&format!(
            "a packet socket with packets waiting to be read ({} bytes queued: not supported)",
            s.rmem
        )));
    }
    let filter = super::inet::filter(d, dup)?;
    let fresh = sock::socket(libc::AF_PACKET, ty, protocol).at(pid, st)?;
    Ok(FdKind::PacketSocket {
        sock_type: ty,
        protocol,
        num: s.num,
        ifindex: s.ifindex,
        members: s
            .members
            .iter()
            .map(|m| PacketMember {
                ifindex: m.ifindex,
                mr_type: m.mr_type,
                count: m.count,
                addr: m.addr.clone(),
            })
            .collect(),
        opts: sock::changed_options(&nlsock::packet_opts(), dup, &fresh),
        filter,
        fanout,
        flags: d.flags(),
    })
}

/// A fanout group (`diag_fanout`: packet_diag's id | type << 16) as
/// getsockopt(PACKET_FANOUT) reads it (id | (type | flags) << 16, what
/// setsockopt takes again). Refused: a group of several sockets (which
/// member each flow goes to follows the order they joined in, which
/// nothing shows), a CBPF/EBPF type (its program cannot be read), a
/// group with a kernel-chosen id (PACKET_FANOUT_FLAG_UNIQUEID: no id may
/// be asked for with it).
fn fanout(
    d: &Fd<'_>,
    dup: &OwnedFd,
    diag: &std::collections::HashMap<u64, nlsock::PacketDiag>,
    diag_fanout: u32,
) -> Result<u32> {
    const CBPF: u32 = 6;
    const EBPF: u32 = 7;
    const UNIQUEID: u32 = 0x2000;
    let id = diag_fanout & 0xffff;
    let members = diag
        .values()
        .filter(|p| p.fanout.map(|f| f & 0xffff) == Some(id))
        .count();
    let v = sock::get_int(dup, nlsock::SOL_PACKET, 18).at(d.pid, Stage::Check)? as u32;
    let type_flags = v >> 16;
    let why = if members > 1 {
        format!("{members} members: which one gets each flow follows the order they joined in")
    } else if matches!(type_flags & 0xff, CBPF | EBPF) {
        "a BPF program choosing the member, which cannot be read".to_string()
    } else if type_flags & UNIQUEID != 0 {
        "a kernel-chosen id (PACKET_FANOUT_FLAG_UNIQUEID)".to_string()
    } else {
        return Ok(v);
    };
    Err(d.refuse(&format!(
        "a packet socket in fanout group {id} with {why} (not supported)"
    )))
}

/// A raw IP socket (`ty` SOCK_RAW) or a ping socket (SOCK_DGRAM).
pub(super) fn raw(d: &Fd<'_>, dup: &OwnedFd, family: i32, ty: i32, proto: i32) -> Result<FdKind> {
    let (pid, st) = (d.pid, Stage::Check);
    let what = if ty == libc::SOCK_RAW {
        format!("a raw IP socket (protocol {proto})")
    } else {
        "an ICMP (ping) socket".to_string()
    };
    same_netns(d, dup, &what)?;
    if sock::has_datagram(dup).unwrap_or(true) {
        return Err(d.refuse(&format!(
            "{what} with packets waiting to be read (not supported)"
        )));
    }
    // Made in the socket's namespace: the defaults (IP_TTL) and the right
    // to make a ping socket (ping_group_range) are that namespace's.
    let fresh = stasis_sys::netlink::in_ns_of_socket(dup, move || sock::socket(family, ty, proto))
        .at(pid, st)?
        .at(pid, st)?;
    let o = super::inet::options_with(d, dup, &fresh, family, proto)?;
    let mut opts = o.ints;
    for &(name, level, opt) in nlsock::RAW_OPTS {
        if !sock::opt_applies(level, family, proto) {
            continue;
        }
        if let (Ok(v), Ok(new)) = (
            sock::get_int(dup, level, opt),
            sock::get_int(&fresh, level, opt),
        ) {
            if v != new {
                opts.insert(name.to_string(), v);
            }
        }
    }
    let icmp_filter = match (family, ty, proto) {
        (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) => {
            let f = sock::get_raw(dup, libc::IPPROTO_RAW, 1).at(pid, st)?;
            let new = sock::get_raw(&fresh, libc::IPPROTO_RAW, 1).at(pid, st)?;
            if f == new {
                Vec::new()
            } else {
                f
            }
        }
        (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) => {
            let f = sock::get_raw(dup, libc::IPPROTO_ICMPV6, 1).at(pid, st)?;
            let new = sock::get_raw(&fresh, libc::IPPROTO_ICMPV6, 1).at(pid, st)?;
            if f == new {
                Vec::new()
            } else {
                f
            }
        }
        _ => Vec::new(),
    };
    let local = sock::local_addr(dup)
        .at(pid, st)?
        .filter(|a| !a.ip().is_unspecified() || (ty == libc::SOCK_DGRAM && a.port() != 0));
    let peer = sock::peer_addr(dup).at(pid, st)?;
    Ok(FdKind::RawSocket {
        family: family as u32,
        sock_type: ty,
        protocol: proto,
        local,
        peer,
        opts,
        device: o.device,
        icmp_filter,
        extra: o.extra,
        flags: d.flags(),
    })
}
