//! Datagrams waiting in a UDP socket: read without taking them (MSG_PEEK
//! walking the queue with SO_PEEK_OFF, each with its source and, through
//! IP_PKTINFO/IPV6_RECVPKTINFO switched on for the walk, its destination
//! address), and put back into a new socket by sending them, with their
//! original sources, through a raw socket.

use crate::sock::{get_int, set_int};
use crate::{check, last_errno, Result, SysError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One waiting datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: IpAddr,
    pub data: Vec<u8>,
}

fn pktinfo_opt(family: i32) -> (i32, i32) {
    if family == libc::AF_INET6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    }
}

/// Every datagram waiting in `fd` (a socket of `family`), at most `limit`
/// bytes in all; the socket's peek offset and PKTINFO option are put back.
/// An empty datagram (which SO_PEEK_OFF cannot step over) is an error.
pub fn peek_datagrams(fd: &OwnedFd, family: i32, limit: usize) -> Result<Vec<Datagram>> {
    let (lvl, opt) = pktinfo_opt(family);
    let old_info = get_int(fd, lvl, opt)?;
    let old_off = get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    set_int(fd, lvl, opt, 1)?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let r = walk(fd, limit);
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old_off)?;
    set_int(fd, lvl, opt, old_info)?;
    r
}

fn walk(fd: &OwnedFd, limit: usize) -> Result<Vec<Datagram>> {
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 65536];
    let mut cbuf = [0u64; 32];
    loop {
        // SAFETY: plain data; zero is valid.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: plain data; zero is valid.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_name = std::ptr::addr_of_mut!(from).cast();
        mh.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: every pointer in mh refers to live buffers of their lengths.
        let n =
            unsafe { libc::recvmsg(fd.as_raw_fd(), &mut mh, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            return match last_errno() {
                libc::EAGAIN => Ok(out),
                e => Err(SysError::new("recvmsg(MSG_PEEK)", None, e)),
            };
        }
        if n == 0 || mh.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(SysError::other(
                "peek datagrams",
                None,
                "an empty or truncated datagram",
            ));
        }
        total += n as usize;
        if total > limit {
            return Err(SysError::other(
                "peek datagrams",
                None,
                format!("more than {limit} bytes queued"),
            ));
        }
        let from = parse_from(&from)
            .ok_or_else(|| SysError::other("peek datagrams", None, "no source address"))?;
        let to = parse_to(&mh)
            .ok_or_else(|| SysError::other("peek datagrams", None, "no destination address"))?;
        out.push(Datagram {
            from,
            to,
            data: buf[..n as usize].to_vec(),
        });
    }
}

/// The sender's address (flow label dropped: it is not the source's).
fn parse_from(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let mut a = crate::sock::from_storage(ss)?;
    if let SocketAddr::V6(v6) = &mut a {
        v6.set_flowinfo(0);
    }
    Some(a)
}

fn parse_to(mh: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: the kernel filled msg_control; the CMSG macros walk it within
    // msg_controllen; the data of each known message has its struct's size.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(mh);
        while !c.is_null() {
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let i = libc::CMSG_DATA(c)
                        .cast::<libc::in_pktinfo>()
                        .read_unaligned();
                    return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let i = libc::CMSG_DATA(c)
                        .cast::<libc::in6_pktinfo>()
                        .read_unaligned();
                    return Some(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(mh, c);
        }
    }
    None
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The ones' complement checksum of a TCP or UDP segment `l4` from `src`
/// to `dst` (with the pseudo header).
pub(crate) fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(v) => v.octets(),
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            };
            pseudo.extend_from_slice(&v6(s));
            pseudo.extend_from_slice(&v6(d));
            pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
    }
    fold(sum16(l4, sum16(&pseudo, 0)))
}

/// An address as on the wire: IPv4-mapped IPv6 goes as IPv4.
fn wire(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Sends the segment `l4` of protocol `proto` from `src` to `dst` through
/// a raw socket (needs CAP_NET_RAW), marked with `mark` (the network
/// lock lets marked packets through).
pub(crate) fn send_raw(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8], mark: u32) -> Result<()> {
    let (family, pkt, to) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(t)) => {
            let total = 20 + l4.len();
            let mut p = vec![0x45, 0];
            p.extend_from_slice(&(total as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(l4);
            // SAFETY: plain data; zero is valid.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from(t).to_be();
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: both are plain data; sockaddr_in is the smaller.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(ss).cast(), sa) };
            (
                libc::AF_INET,
                p,
                (ss, std::mem::size_of::<libc::sockaddr_in>()),
            )
        }
        (IpAddr::V6(s), IpAddr::V6(t)) => {
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&t.octets());
            p.extend_from_slice(l4);
            // SAFETY: plain data; zero is valid.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as u16;
            sa.sin6_addr.s6_addr = t.octets();
            // SAFETY: plain data; zero is valid.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: both are plain data; sockaddr_in6 is the smaller.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(ss).cast(), sa) };
            (
                libc::AF_INET6,
                p,
                (ss, std::mem::size_of::<libc::sockaddr_in6>()),
            )
        }
        _ => {
            return Err(SysError::other(
                "inject a packet",
                None,
                "source and destination of different families",
            ))
        }
    };
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    check(fd.into(), "socket(SOCK_RAW)", None)?;
    // SAFETY: a fresh descriptor nobody else owns.
    let raw = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int(&raw, libc::SOL_SOCKET, libc::SO_MARK, mark as i32)?;
    // SAFETY: pkt and the address live for the call.
    let n = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            std::ptr::addr_of!(to.0).cast(),
            to.1 as libc::socklen_t,
        )
    };
    check(n as libc::c_long, "send through a raw socket", None).map(drop)
}

/// Sends `d` to port `port` of its destination, from its original
/// source, through a raw socket (needs CAP_NET_RAW). IPv4-mapped IPv6
/// addresses go as IPv4.
pub fn inject(d: &Datagram, port: u16) -> Result<()> {
    let (src, dst) = (wire(d.from.ip()), wire(d.to));
    let ulen = 8 + d.data.len();
    let mut udp = Vec::with_capacity(ulen);
    udp.extend_from_slice(&d.from.port().to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&(ulen as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&d.data);
    // Over IPv4 checksum 0 means none; over IPv6 it is required.
    if src.is_ipv6() {
        let mut ck = l4_checksum(src, dst, libc::IPPROTO_UDP as u8, &udp);
        if ck == 0 {
            ck = 0xffff;
        }
        udp[6..8].copy_from_slice(&ck.to_be_bytes());
    }
    send_raw(
        src,
        dst,
        libc::IPPROTO_UDP as u8,
        &udp,
        crate::netlock::MARK,
    )
}
