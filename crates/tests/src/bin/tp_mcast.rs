//! tp_mcast: multicast group memberships of UDP sockets survive
//! checkpoint/restore, each with its interface and source filter. An
//! IPv4 socket joins 239.1.2.3 on lo (IP_ADD_MEMBERSHIP), 239.1.2.4 for
//! two sources only (IP_ADD_SOURCE_MEMBERSHIP: include mode) and
//! 239.1.2.5 with one source blocked (IP_BLOCK_SOURCE: exclude mode); an
//! IPv6 socket joins ff15::1234 on lo (IPV6_JOIN_GROUP). After restore
//! each membership is read back with getsockopt(MCAST_MSFILTER) (mode and
//! sources), a group never joined is not one, and a datagram sent to
//! 239.1.2.3 through lo arrives.
//!
//! Usage: `tp_mcast WORKDIR [--corrupt]`

use stasis_tests::{errno, Proto, Report};
use std::net::{Ipv4Addr, Ipv6Addr};

const MCAST_MSFILTER: i32 = 48;

fn udp(family: i32) -> i32 {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM, 0) };
    assert!(fd >= 0, "socket: errno {}", errno());
    fd
}

fn setopt<T>(fd: i32, level: i32, opt: i32, v: &T) {
    // SAFETY: v lives for the call; its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    assert_eq!(r, 0, "setsockopt {level}/{opt}: errno {}", errno());
}

fn in_addr(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from(a).to_be(),
    }
}

#[repr(C)]
struct GroupFilter {
    interface: u32,
    group: libc::sockaddr_storage,
    fmode: u32,
    numsrc: u32,
    slist: [libc::sockaddr_storage; 8],
}

/// getsockopt(MCAST_MSFILTER): (include mode, sources) or the errno.
fn filter(fd: i32, ifindex: u32, group: std::net::IpAddr) -> Result<(bool, Vec<String>), i32> {
    // SAFETY: plain data; zero is valid.
    let mut f: GroupFilter = unsafe { std::mem::zeroed() };
    f.interface = ifindex;
    f.numsrc = 8;
    let level = match group {
        std::net::IpAddr::V4(g) => {
            // SAFETY: storage is large and aligned enough for sockaddr_in.
            let s: &mut libc::sockaddr_in = unsafe { &mut *std::ptr::addr_of_mut!(f.group).cast() };
            s.sin_family = libc::AF_INET as u16;
            s.sin_addr = in_addr(g);
            libc::SOL_IP
        }
        std::net::IpAddr::V6(g) => {
            // SAFETY: storage is large and aligned enough for sockaddr_in6.
            let s: &mut libc::sockaddr_in6 =
                unsafe { &mut *std::ptr::addr_of_mut!(f.group).cast() };
            s.sin6_family = libc::AF_INET6 as u16;
            s.sin6_addr.s6_addr = g.octets();
            libc::SOL_IPV6
        }
    };
    let mut len = std::mem::size_of::<GroupFilter>() as u32;
    // SAFETY: f is a live buffer of len bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            MCAST_MSFILTER,
            std::ptr::addr_of_mut!(f).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(errno());
    }
    let sources = f.slist[..(f.numsrc as usize).min(8)]
        .iter()
        .map(|s| {
            // SAFETY: IPv4 sources here: the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*std::ptr::addr_of!(*s).cast() };
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).to_string()
        })
        .collect();
    Ok((f.fmode == 1, sources))
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    // SAFETY: a valid C string.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    let s4 = udp(libc::AF_INET);
    let any = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: in_addr(Ipv4Addr::UNSPECIFIED),
        sin_zero: [0; 8],
    };
    // SAFETY: any is a valid sockaddr_in.
    let r = unsafe { libc::bind(s4, std::ptr::addr_of!(any).cast(), 16) };
    assert_eq!(r, 0, "bind");
    let (g3, g4, g5) = (
        Ipv4Addr::new(239, 1, 2, 3),
        Ipv4Addr::new(239, 1, 2, 4),
        Ipv4Addr::new(239, 1, 2, 5),
    );
    let mreqn = libc::ip_mreqn {
        imr_multiaddr: in_addr(g3),
        imr_address: in_addr(Ipv4Addr::UNSPECIFIED),
        imr_ifindex: lo as i32,
    };
    setopt(s4, libc::SOL_IP, libc::IP_ADD_MEMBERSHIP, &mreqn);
    for src in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 1)] {
        let m = libc::ip_mreq_source {
            imr_multiaddr: in_addr(g4),
            imr_interface: in_addr(Ipv4Addr::LOCALHOST),
            imr_sourceaddr: in_addr(src),
        };
        setopt(s4, libc::SOL_IP, libc::IP_ADD_SOURCE_MEMBERSHIP, &m);
    }
    let m5 = libc::ip_mreqn {
        imr_multiaddr: in_addr(g5),
        ..mreqn
    };
    setopt(s4, libc::SOL_IP, libc::IP_ADD_MEMBERSHIP, &m5);
    let block = libc::ip_mreq_source {
        imr_multiaddr: in_addr(g5),
        imr_interface: in_addr(Ipv4Addr::LOCALHOST),
        imr_sourceaddr: in_addr(Ipv4Addr::new(127, 0, 0, 9)),
    };
    setopt(s4, libc::SOL_IP, libc::IP_BLOCK_SOURCE, &block);
    let s6 = udp(libc::AF_INET6);
    let g6: Ipv6Addr = "ff15::1234".parse().expect("v6 group");
    let m6 = libc::ipv6_mreq {
        ipv6mr_multiaddr: libc::in6_addr {
            s6_addr: g6.octets(),
        },
        ipv6mr_interface: lo,
    };
    setopt(s6, libc::SOL_IPV6, libc::IPV6_ADD_MEMBERSHIP, &m6);
    let state = |report: &mut Report, when: &str| {
        let want3 = if args.corrupt() {
            Ok((true, vec![]))
        } else {
            Ok((false, vec![]))
        };
        report.eq(&format!("{when}: {g3}"), want3, filter(s4, lo, g3.into()));
        let two = vec!["127.0.0.1".to_string(), "127.0.0.2".to_string()];
        let mut got4 = filter(s4, lo, g4.into());
        if let Ok((_, s)) = &mut got4 {
            s.sort();
        }
        report.eq(&format!("{when}: {g4}"), Ok((true, two)), got4);
        let nine = vec!["127.0.0.9".to_string()];
        report.eq(
            &format!("{when}: {g5}"),
            Ok((false, nine)),
            filter(s4, lo, g5.into()),
        );
        report.eq(
            &format!("{when}: {g6}"),
            Ok((false, vec![])),
            filter(s6, lo, g6.into()),
        );
        let never = Ipv4Addr::new(239, 1, 2, 6);
        report.eq(
            &format!("{when}: {never} never joined"),
            Err(libc::EADDRNOTAVAIL),
            filter(s4, lo, never.into()),
        );
    };
    state(&mut report, "before");
    proto.ready_and_wait();
    state(&mut report, "after");
    // A datagram to 239.1.2.3 through lo arrives.
    let mut name: libc::sockaddr_in = any;
    let mut len = 16u32;
    // SAFETY: live out-parameters.
    unsafe { libc::getsockname(s4, std::ptr::addr_of_mut!(name).cast(), &mut len) };
    let out = udp(libc::AF_INET);
    let via = libc::ip_mreqn {
        imr_multiaddr: in_addr(Ipv4Addr::UNSPECIFIED),
        imr_address: in_addr(Ipv4Addr::UNSPECIFIED),
        imr_ifindex: lo as i32,
    };
    setopt(out, libc::SOL_IP, libc::IP_MULTICAST_IF, &via);
    let to = libc::sockaddr_in {
        sin_addr: in_addr(g3),
        ..name
    };
    // SAFETY: sending from a live buffer to a valid address.
    let n = unsafe {
        libc::sendto(
            out,
            b"mc".as_ptr().cast(),
            2,
            0,
            std::ptr::addr_of!(to).cast(),
            16,
        )
    };
    report.eq("send to the group", 2, n);
    let mut p = libc::pollfd {
        fd: s4,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, 5000) };
    let mut b = [0u8; 8];
    // SAFETY: receiving into a live buffer.
    let n = unsafe { libc::recv(s4, b.as_mut_ptr().cast(), 8, libc::MSG_DONTWAIT) };
    report.eq(
        "datagram to the group",
        b"mc".to_vec(),
        b[..n.max(0) as usize].to_vec(),
    );
    proto.finish(&report);
}
