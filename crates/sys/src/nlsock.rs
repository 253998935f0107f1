//! Netlink and packet sockets: their addresses, multicast groups and
//! options on a socket of our own (a `pidfd_getfd` duplicate, or one being
//! restored), and what only the kernel's sock_diag tells about them
//! (netlink_diag: memory queued, a dump in progress; packet_diag: rings,
//! fanout, memberships). sock_diag answers for the asking thread's network
//! namespace.

use crate::{check, Result, SysError};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

pub const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
pub const SOL_PACKET: i32 = 263;
const S: i32 = libc::SOL_SOCKET;

/// The int options a raw IP socket has beyond `sock::INET_OPTS`.
pub const RAW_OPTS: &[(&str, i32, i32)] = &[
    ("IP_HDRINCL", libc::IPPROTO_IP, libc::IP_HDRINCL),
    ("IPV6_HDRINCL", libc::IPPROTO_IPV6, 36),
    ("IPV6_CHECKSUM", libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM),
];

/// The socket-level int options netlink and packet sockets are saved with.
const SOCKET_OPTS: &[(&str, i32, i32)] = &[
    ("SO_RCVBUF", S, libc::SO_RCVBUF),
    ("SO_SNDBUF", S, libc::SO_SNDBUF),
    ("SO_MARK", S, libc::SO_MARK),
    ("SO_PRIORITY", S, libc::SO_PRIORITY),
    ("SO_RCVLOWAT", S, libc::SO_RCVLOWAT),
    ("SO_TIMESTAMP", S, libc::SO_TIMESTAMP),
    ("SO_TIMESTAMPNS", S, libc::SO_TIMESTAMPNS),
    ("SO_RXQ_OVFL", S, libc::SO_RXQ_OVFL),
];

/// The netlink ones.
const NETLINK_ONLY: &[(&str, i32, i32)] = &[
    ("NETLINK_PKTINFO", SOL_NETLINK, 3),
    ("NETLINK_BROADCAST_ERROR", SOL_NETLINK, 4),
    ("NETLINK_NO_ENOBUFS", SOL_NETLINK, 5),
    ("NETLINK_LISTEN_ALL_NSID", SOL_NETLINK, 8),
    ("NETLINK_CAP_ACK", SOL_NETLINK, 10),
    ("NETLINK_EXT_ACK", SOL_NETLINK, 11),
    ("NETLINK_GET_STRICT_CHK", SOL_NETLINK, 12),
    ("SO_PASSCRED", S, libc::SO_PASSCRED),
];

/// The packet ones.
const PACKET_ONLY: &[(&str, i32, i32)] = &[
    ("PACKET_AUXDATA", SOL_PACKET, 8),
    ("PACKET_ORIGDEV", SOL_PACKET, 9),
    ("PACKET_VERSION", SOL_PACKET, 10),
    ("PACKET_RESERVE", SOL_PACKET, 12),
    ("PACKET_LOSS", SOL_PACKET, 14),
    ("PACKET_VNET_HDR", SOL_PACKET, 15),
    ("PACKET_TIMESTAMP", SOL_PACKET, 17),
    ("PACKET_QDISC_BYPASS", SOL_PACKET, 20),
    ("PACKET_IGNORE_OUTGOING", SOL_PACKET, 23),
    ("PACKET_VNET_HDR_SZ", SOL_PACKET, 24),
    ("SO_BUSY_POLL", S, libc::SO_BUSY_POLL),
];

/// The int options a netlink socket is saved with (those that differ from
/// a new socket's), by name: (name, level, option).
pub fn netlink_opts() -> Vec<(&'static str, i32, i32)> {
    [SOCKET_OPTS, NETLINK_ONLY].concat()
}

/// The int options a packet socket is saved with, by name.
pub fn packet_opts() -> Vec<(&'static str, i32, i32)> {
    [SOCKET_OPTS, PACKET_ONLY].concat()
}

fn nl_addr(portid: u32, groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; zero is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_pid = portid;
    sa.nl_groups = groups;
    sa
}

/// A netlink socket's own (`peer` false: port id, groups of the first 32)
/// or connected (`peer`: destination port id and group) address.
pub fn nl_name(fd: &OwnedFd, peer: bool) -> Result<(u32, u32)> {
    let mut sa = nl_addr(0, 0);
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = std::ptr::addr_of_mut!(sa).cast();
    // SAFETY: sa and len are live out-parameters of the right size.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    check(
        r.into(),
        if peer { "getpeername" } else { "getsockname" },
        None,
    )?;
    Ok((sa.nl_pid, sa.nl_groups))
}

/// Every multicast group the netlink socket is in (NETLINK_LIST_MEMBERSHIPS:
/// group numbers from 1, beyond the 32 of the address too).
pub fn nl_groups(fd: &OwnedFd) -> Result<Vec<u32>> {
    let mut words = vec![0u32; 8];
    loop {
        let mut len = (words.len() * 4) as libc::socklen_t;
        // SAFETY: words is a live buffer of len bytes.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_LIST_MEMBERSHIPS,
                words.as_mut_ptr().cast(),
                &mut len,
            )
        };
        check(r.into(), "getsockopt(NETLINK_LIST_MEMBERSHIPS)", None)?;
        let need = (len as usize).div_ceil(4);
        if need <= words.len() {
            words.truncate(need);
            break;
        }
        words = vec![0u32; need];
    }
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        for b in 0..32 {
            if w & (1 << b) != 0 {
                out.push((i * 32 + b + 1) as u32);
            }
        }
    }
    Ok(out)
}

/// bind(2) of a netlink socket to port id `portid` (no groups).
pub fn nl_bind(fd: &OwnedFd, portid: u32) -> Result<()> {
    let sa = nl_addr(portid, 0);
    // SAFETY: sa is a valid sockaddr_nl of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    check(r.into(), &format!("bind(netlink port id {portid})"), None).map(drop)
}

/// connect(2) of a netlink socket to port id `portid` and group `group`.
pub fn nl_connect(fd: &OwnedFd, portid: u32, group: u32) -> Result<()> {
    let sa = nl_addr(portid, group);
    // SAFETY: sa is a valid sockaddr_nl of the size given.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    check(
        r.into(),
        &format!("connect(netlink port id {portid}, group {group})"),
        None,
    )
    .map(drop)
}

/// NETLINK_ADD_MEMBERSHIP of multicast group `group`.
pub fn nl_join(fd: &OwnedFd, group: u32) -> Result<()> {
    crate::sock::set_int(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group as i32).map_err(|mut e| {
        e.op = format!("netlink group {group}: {}", e.op);
        e
    })
}

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Walks the netlink attributes from `off` of `msg`: (type, payload).
fn attrs(msg: &[u8], mut off: usize, mut each: impl FnMut(u16, &[u8])) {
    while off + 4 <= msg.len() {
        let alen = usize::from(u16le(msg, off));
        if alen < 4 || off + alen > msg.len() {
            break;
        }
        each(u16le(msg, off + 2) & 0x3fff, &msg[off + 4..off + alen]);
        off += (alen + 3) & !3;
    }
}

/// A netlink socket as netlink_diag reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NlDiag {
    pub protocol: u8,
    pub portid: u32,
    /// Memory the receive queue holds (SK_MEMINFO_RMEM_ALLOC): messages
    /// not yet read.
    pub rmem: u32,
    /// NDIAG_FLAG_*: 1 a dump is in progress (its callback runs).
    pub flags: u32,
}

pub const NDIAG_FLAG_CB_RUNNING: u32 = 1;

/// Every netlink socket of our network namespace, by inode.
pub fn netlink_sockets() -> Result<HashMap<u64, NlDiag>> {
    const NDIAG_PROTO_ALL: u8 = 255;
    const NDIAG_SHOW_MEMINFO: u32 = 1;
    const NDIAG_SHOW_FLAGS: u32 = 8;
    const NETLINK_DIAG_MEMINFO: u16 = 0;
    const NETLINK_DIAG_FLAGS: u16 = 4;
    // netlink_diag_req: family, protocol, pad, ino, show, cookie[2]
    let mut req = [0u8; 20];
    req[0] = libc::AF_NETLINK as u8;
    req[1] = NDIAG_PROTO_ALL;
    req[8..12].copy_from_slice(&(NDIAG_SHOW_MEMINFO | NDIAG_SHOW_FLAGS).to_le_bytes());
    let mut out = HashMap::new();
    crate::sockdiag::diag_dump(&req, |msg| {
        // netlink_diag_msg: family, type, protocol, state, portid,
        // dst_portid, dst_group, ino, cookie[2] (28)
        if msg.len() < 28 {
            return;
        }
        let mut d = NlDiag {
            protocol: msg[2],
            portid: u32le(msg, 4),
            ..NlDiag::default()
        };
        attrs(msg, 28, |ty, p| match ty {
            NETLINK_DIAG_MEMINFO if p.len() >= 4 => d.rmem = u32le(p, 0),
            NETLINK_DIAG_FLAGS if p.len() >= 4 => d.flags = u32le(p, 0),
            _ => {}
        });
        out.insert(u64::from(u32le(msg, 16)), d);
    })?;
    Ok(out)
}

/// One PACKET_ADD_MEMBERSHIP as packet_diag lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketMember {
    pub ifindex: i32,
    /// PACKET_MR_MULTICAST (0), PROMISC (1), ALLMULTI (2), UNICAST (3).
    pub mr_type: u16,
    /// How many times it was added.
    pub count: u32,
    pub addr: Vec<u8>,
}

/// A packet socket as packet_diag reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketDiag {
    /// The protocol it receives (host byte order: ETH_P_ALL is 3).
    pub num: u16,
    /// The interface it is bound to (0: every one).
    pub ifindex: i32,
    pub members: Vec<PacketMember>,
    pub rx_ring: bool,
    pub tx_ring: bool,
    /// PACKET_DIAG_FANOUT: the group's id | type << 16 (None: not in one).
    pub fanout: Option<u32>,
    /// Memory the receive queue holds.
    pub rmem: u32,
}

/// Every packet socket of our network namespace, by inode.
pub fn packet_sockets() -> Result<HashMap<u64, PacketDiag>> {
    const SHOW_INFO: u32 = 1;
    const SHOW_MCLIST: u32 = 2;
    const SHOW_RING_CFG: u32 = 4;
    const SHOW_FANOUT: u32 = 8;
    const SHOW_MEMINFO: u32 = 0x10;
    const INFO: u16 = 0;
    const MCLIST: u16 = 1;
    const RX_RING: u16 = 2;
    const TX_RING: u16 = 3;
    const FANOUT: u16 = 4;
    const MEMINFO: u16 = 6;
    // packet_diag_req: family, protocol, pad, ino, show, cookie[2]
    let mut req = [0u8; 20];
    req[0] = libc::AF_PACKET as u8;
    req[8..12].copy_from_slice(
        &(SHOW_INFO | SHOW_MCLIST | SHOW_RING_CFG | SHOW_FANOUT | SHOW_MEMINFO).to_le_bytes(),
    );
    let mut out = HashMap::new();
    crate::sockdiag::diag_dump(&req, |msg| {
        // packet_diag_msg: family, type, num (u16), ino, cookie[2] (16)
        if msg.len() < 16 {
            return;
        }
        let mut d = PacketDiag {
            num: u16::from_ne_bytes([msg[2], msg[3]]),
            ..PacketDiag::default()
        };
        attrs(msg, 16, |ty, p| match ty {
            // packet_diag_info: index, version, reserve, copy_thresh,
            // tstamp, flags
            INFO if p.len() >= 4 => d.ifindex = u32le(p, 0) as i32,
            // packet_diag_mclist: index, count, type (u16), alen (u16),
            // addr[32]
            MCLIST => {
                for m in p.chunks_exact(44) {
                    let alen = usize::from(u16le(m, 10)).min(32);
                    d.members.push(PacketMember {
                        ifindex: u32le(m, 0) as i32,
                        count: u32le(m, 4),
                        mr_type: u16le(m, 8),
                        addr: m[12..12 + alen].to_vec(),
                    });
                }
            }
            RX_RING => d.rx_ring = true,
            TX_RING => d.tx_ring = true,
            FANOUT if p.len() >= 4 => d.fanout = Some(u32le(p, 0)),
            MEMINFO if p.len() >= 4 => d.rmem = u32le(p, 0),
            _ => {}
        });
        out.insert(u64::from(u32le(msg, 4)), d);
    })?;
    Ok(out)
}

/// bind(2) of a packet socket to protocol `num` (host byte order) on
/// interface `ifindex` (0: every one).
pub fn packet_bind(fd: &OwnedFd, num: u16, ifindex: i32) -> Result<()> {
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = num.to_be();
    sa.sll_ifindex = ifindex;
    // SAFETY: sa is a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    check(
        r.into(),
        &format!("bind(packet protocol {num:#06x}, ifindex {ifindex})"),
        None,
    )
    .map(drop)
}

/// PACKET_ADD_MEMBERSHIP of `m`, once.
pub fn packet_join(fd: &OwnedFd, m: &PacketMember) -> Result<()> {
    const PACKET_ADD_MEMBERSHIP: i32 = 1;
    // struct packet_mreq: ifindex, type (u16), alen (u16), address[8]
    if m.addr.len() > 8 {
        return Err(SysError::other(
            "PACKET_ADD_MEMBERSHIP",
            None,
            "address longer than 8 bytes",
        ));
    }
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&m.ifindex.to_ne_bytes());
    b[4..6].copy_from_slice(&m.mr_type.to_ne_bytes());
    b[6..8].copy_from_slice(&(m.addr.len() as u16).to_ne_bytes());
    b[8..8 + m.addr.len()].copy_from_slice(&m.addr);
    crate::sock::set_bytes(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &b).map_err(|mut e| {
        e.op = format!(
            "PACKET_ADD_MEMBERSHIP (type {}, ifindex {}): {}",
            m.mr_type, m.ifindex, e.op
        );
        e
    })
}

/// The inode of the network namespace socket `fd` belongs to (SIOCGSKNS).
pub fn socket_netns(fd: &OwnedFd) -> Result<u64> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::MetadataExt;
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: the ioctl takes no argument and returns a new descriptor.
    let ns = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSKNS) };
    check(ns.into(), "ioctl(SIOCGSKNS)", None)?;
    // SAFETY: fresh descriptor from the kernel.
    let ns = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(ns) });
    ns.metadata()
        .map(|m| m.ino())
        .map_err(|e| SysError::other("fstat(netns)", None, e.to_string()))
}

/// A classic BPF filter attached with SO_ATTACH_FILTER, as its
/// instructions (8 bytes each; empty: none). An eBPF program
/// (SO_ATTACH_BPF) cannot be read: EACCES.
pub fn get_filter(fd: &OwnedFd) -> Result<Vec<u8>> {
    let n = crate::sock::filter_len(fd)? as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut b = vec![0u8; n * 8];
    // SO_GET_FILTER's length counts instructions, not bytes.
    let mut len = n as libc::socklen_t;
    // SAFETY: b holds `len` instructions.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    check(r.into(), "getsockopt(SO_GET_FILTER)", None)?;
    b.truncate(len as usize * 8);
    Ok(b)
}

/// SO_ATTACH_FILTER of the classic BPF program `insns` (8 bytes each).
pub fn attach_filter(fd: &OwnedFd, insns: &[u8]) -> Result<()> {
    // struct sock_fprog: len (u16), then a pointer to the instructions.
    #[repr(C)]
    struct Fprog {
        len: u16,
        filter: *const u8,
    }
    let p = Fprog {
        len: (insns.len() / 8) as u16,
        filter: insns.as_ptr(),
    };
    // SAFETY: p and the instructions it points to live for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(p).cast(),
            std::mem::size_of::<Fprog>() as libc::socklen_t,
        )
    };
    check(r.into(), "setsockopt(SO_ATTACH_FILTER)", None).map(drop)
}
