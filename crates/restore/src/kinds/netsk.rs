//! Netlink, packet and raw IP sockets, made in the restorer (in the tree's
//! network namespace when it has one: netns.rs).
//!
//! - netlink: `socket` with the protocol, the options, bind to the saved
//!   port id (kernel-assigned ones too), NETLINK_ADD_MEMBERSHIP of every
//!   group, connect to the saved peer.
//! - packet: `socket` with the protocol, the options, the classic BPF
//!   filter, bind to the protocol and interface, PACKET_ADD_MEMBERSHIP as
//!   many times as it was added, the fanout group joined.
//! - raw IP and ping: `socket`, the device and options (`inet`'s), the raw
//!   ones (IP_HDRINCL, ...), ICMP_FILTER / ICMP6_FILTER, bind, connect.

use super::{Cx, Opened};
use crate::{At, Result, Stage};
use stasis_image::kinds::inet::SockExtra;
use stasis_image::kinds::netsk::PacketMember;
use stasis_sys::{nlsock, sock, util};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

fn set_opts(
    cx: &Cx<'_>,
    fd: &OwnedFd,
    table: &[(&str, i32, i32)],
    opts: &BTreeMap<String, i32>,
) -> Result<()> {
    for (name, &v) in opts {
        sock::set_named(fd, table, name, v)
            .map_err(|mut e| {
                e.op = format!("fd {}: {}", cx.fd, e.op);
                e
            })
            .at(cx.pid, Stage::Fork)?;
    }
    Ok(())
}

fn done(o: &mut Opened, cx: &Cx<'_>, fd: OwnedFd, flags: u32) -> Result<usize> {
    util::set_status_flags(&fd, (flags as i32) & libc::O_NONBLOCK).at(cx.pid, Stage::Fork)?;
    Ok(o.push(fd))
}

/// One saved netlink socket.
pub(super) struct Netlink<'a> {
    pub(super) protocol: i32,
    pub(super) sock_type: i32,
    pub(super) portid: u32,
    pub(super) groups: &'a [u32],
    pub(super) dst: (u32, u32),
    pub(super) opts: &'a BTreeMap<String, i32>,
    pub(super) filter: &'a [u8],
    pub(super) flags: u32,
}

pub(super) fn open_netlink(o: &mut Opened, cx: &Cx<'_>, s: &Netlink<'_>) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let fd = sock::socket(libc::AF_NETLINK, s.sock_type, s.protocol).at(pid, st)?;
    set_opts(cx, &fd, &nlsock::netlink_opts(), s.opts)?;
    if !s.filter.is_empty() {
        nlsock::attach_filter(&fd, s.filter).at(pid, st)?;
    }
    if s.portid != 0 {
        nlsock::nl_bind(&fd, s.portid).at(pid, st)?;
    }
    for &g in s.groups {
        nlsock::nl_join(&fd, g).at(pid, st)?;
    }
    if s.dst != (0, 0) {
        nlsock::nl_connect(&fd, s.dst.0, s.dst.1).at(pid, st)?;
    }
    done(o, cx, fd, s.flags)
}

/// One saved packet socket.
pub(super) struct Packet<'a> {
    pub(super) sock_type: i32,
    pub(super) protocol: i32,
    pub(super) num: u16,
    pub(super) ifindex: i32,
    pub(super) members: &'a [PacketMember],
    pub(super) opts: &'a BTreeMap<String, i32>,
    pub(super) filter: &'a [u8],
    pub(super) fanout: u32,
    pub(super) flags: u32,
}

pub(super) fn open_packet(o: &mut Opened, cx: &Cx<'_>, s: &Packet<'_>) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let fd = sock::socket(libc::AF_PACKET, s.sock_type, s.protocol).at(pid, st)?;
    set_opts(cx, &fd, &nlsock::packet_opts(), s.opts)?;
    if !s.filter.is_empty() {
        nlsock::attach_filter(&fd, s.filter).at(pid, st)?;
    }
    // socket(2)'s protocol is in network byte order.
    if s.ifindex != 0 || s.num != u16::from_be(s.protocol as u16) {
        nlsock::packet_bind(&fd, s.num, s.ifindex).at(pid, st)?;
    }
    for m in s.members {
        let pm = nlsock::PacketMember {
            ifindex: m.ifindex,
            mr_type: m.mr_type,
            count: m.count,
            addr: m.addr.clone(),
        };
        for _ in 0..m.count {
            nlsock::packet_join(&fd, &pm).at(pid, st)?;
        }
    }
    if s.fanout != 0 {
        // Once bound: only a running socket joins a group.
        sock::set_int(&fd, nlsock::SOL_PACKET, 18, s.fanout as i32).at(pid, st)?;
    }
    done(o, cx, fd, s.flags)
}

/// One saved raw IP or ping socket.
pub(super) struct Raw<'a> {
    pub(super) family: u32,
    pub(super) sock_type: i32,
    pub(super) protocol: i32,
    pub(super) local: Option<&'a SocketAddr>,
    pub(super) peer: Option<&'a SocketAddr>,
    pub(super) opts: &'a BTreeMap<String, i32>,
    pub(super) device: &'a str,
    pub(super) icmp_filter: &'a [u8],
    pub(super) extra: &'a SockExtra,
    pub(super) flags: u32,
}

pub(super) fn open_raw(o: &mut Opened, cx: &Cx<'_>, s: &Raw<'_>) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let fd = sock::socket(s.family as i32, s.sock_type, s.protocol).at(pid, st)?;
    let (raw, inet): (BTreeMap<String, i32>, BTreeMap<String, i32>) = s
        .opts
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .partition(|(k, _)| nlsock::RAW_OPTS.iter().any(|(n, _, _)| n == k));
    super::inet::device_and_options(cx, &fd, s.device, &inet, s.extra, s.family)?;
    set_opts(cx, &fd, nlsock::RAW_OPTS, &raw)?;
    if !s.icmp_filter.is_empty() {
        let level = if s.family as i32 == libc::AF_INET {
            libc::IPPROTO_RAW
        } else {
            libc::IPPROTO_ICMPV6
        };
        sock::set_bytes(&fd, level, 1, s.icmp_filter).at(pid, st)?;
    }
    if let Some(a) = s.local {
        sock::bind(&fd, a).at(pid, st)?;
    }
    if let Some(a) = s.peer {
        sock::connect(&fd, a).at(pid, st)?;
    }
    done(o, cx, fd, s.flags)
}
