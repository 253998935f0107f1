//! tp_netsk: netlink, packet and raw IP sockets survive checkpoint/restore.
//! The program unshares its network namespace (lo up) first, so nothing
//! else talks on it and the restore makes the sockets in a new one.
//!
//! Usage: `tp_netsk WORKDIR --kind netlink|packet|raw [--queued|--ring|--fanout] [--corrupt]`
//!
//! - `netlink`: a route socket bound by the kernel to RTMGRP_LINK and
//!   RTMGRP_IPV4_IFADDR and joined to group 36 (beyond the address's 32)
//!   with NETLINK_NO_ENOBUFS, NETLINK_PKTINFO and SO_RCVBUF; a datagram
//!   route socket bound to a chosen port id with NETLINK_EXT_ACK,
//!   NETLINK_GET_STRICT_CHK and NETLINK_CAP_ACK; a uevent socket in group
//!   1; a sock_diag socket that made a request (kernel-assigned port id);
//!   a NETLINK_USERSOCK pair, one connected to the other; a generic
//!   netlink socket never bound. After go each reads back (type,
//!   protocol, port id, groups, peer, options), then the datagram route
//!   socket adds 10.66.0.1/32 to lo (acknowledged), the first route socket
//!   receives that RTM_NEWADDR, the sock_diag socket answers a request
//!   and a message from the connected usersock one reaches the other.
//!   `--queued`: the address is added before the dump, so the notification
//!   waits in the route socket (refused by name).
//! - `packet`: a SOCK_DGRAM ETH_P_IP packet socket bound to lo with a
//!   classic BPF filter (UDP to port 7777 only), PACKET_AUXDATA,
//!   PACKET_ORIGDEV, PACKET_VERSION, PACKET_RESERVE, PACKET_TIMESTAMP,
//!   SO_RCVBUF, fanout group 77 (hash, rollover) of its own, lo's
//!   PACKET_MR_PROMISC once and PACKET_MR_ALLMULTI twice;
//!   a SOCK_RAW one with protocol 0. After go: addresses, options, filter
//!   read back; a datagram to 127.0.0.1:7777 arrives with its auxdata, one
//!   to 7778 does not; `--ring`: the second one has a PACKET_RX_RING,
//!   `--fanout`: a second socket joins the first one's fanout group 77
//!   (both refused by name); dropping PROMISC once clears lo's promiscuity,
//!   dropping ALLMULTI takes twice (`ip -d link` counts).
//! - `raw`: a raw ICMP socket bound to 127.0.0.1 with ICMP_FILTER (echo
//!   replies only) and IP_TTL; an IPPROTO_RAW socket connected to
//!   127.0.0.2; protocol 253 with IP_HDRINCL and a classic BPF filter
//!   (payloads starting with 'B' only); a raw ICMPv6 socket with
//!   ICMP6_FILTER; IPv6 protocol 253 with IPV6_CHECKSUM; an ICMP ping
//!   socket (SOCK_DGRAM) that has pinged (its identifier). After go each
//!   reads back; the ping socket pings 127.0.0.1 again and gets the reply
//!   with its identifier, the raw ICMP socket sees the echo reply but
//!   not the request, and of two raw packets only the 'B' one passes the
//!   filter. `--queued` (also with `packet`): a packet left
//!   unread (refused by name).

use stasis_tests::{errno, inet, Proto, Report};
use std::process::Command;

fn unshare_net() {
    // SAFETY: integer-only syscall on ourselves.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert!(r == 0, "unshare(CLONE_NEWNET): errno {}", errno());
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "ip link set lo up");
}

fn socket(family: i32, ty: i32, proto: i32) -> i32 {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(family, ty, proto) };
    assert!(
        fd >= 0,
        "socket({family}, {ty}, {proto}): errno {}",
        errno()
    );
    fd
}

fn getopt(fd: i32, level: i32, opt: i32) -> Result<i32, i32> {
    let b = inet::get_bytes(fd, level, opt)?;
    let mut w = [0u8; 4];
    w[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    Ok(i32::from_ne_bytes(w))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |w| u32::from_ne_bytes(w.try_into().unwrap_or_default()))
}

fn poll_in(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 && p.revents & libc::POLLIN != 0 }
}

fn recv(fd: i32, flags: i32) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 65536];
    // SAFETY: b is a live buffer of its length.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), flags) };
    (n >= 0).then(|| {
        b.truncate(n as usize);
        b
    })
}

// ---------------------------------------------------------------- netlink

const SOL_NETLINK: i32 = 270;
const NETLINK_ROUTE: i32 = 0;
const NETLINK_USERSOCK: i32 = 2;
const NETLINK_SOCK_DIAG: i32 = 4;
const NETLINK_KOBJECT_UEVENT: i32 = 15;
const NETLINK_GENERIC: i32 = 16;
const RTM_NEWADDR: u16 = 20;

fn nl_sockaddr(pid: u32, groups: u32) -> libc::sockaddr_nl {
    // SAFETY: plain data; zero is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_pid = pid;
    sa.nl_groups = groups;
    sa
}

fn nl_bind(fd: i32, pid: u32, groups: u32) {
    let sa = nl_sockaddr(pid, groups);
    // SAFETY: sa is a valid sockaddr_nl.
    let r = unsafe { libc::bind(fd, std::ptr::addr_of!(sa).cast(), 12) };
    assert_eq!(r, 0, "bind netlink {pid}: errno {}", errno());
}

fn nl_name(fd: i32, peer: bool) -> Result<(u32, u32), i32> {
    // sockaddr_nl: family, pad, pid, groups
    inet::name_bytes(fd, peer).map(|b| (u32_at(&b, 4), u32_at(&b, 8)))
}

fn nl_groups(fd: i32) -> Vec<u32> {
    let b = inet::get_bytes(fd, SOL_NETLINK, 9).unwrap_or_default();
    let mut out = Vec::new();
    for (i, w) in b.chunks_exact(4).enumerate() {
        let w = u32::from_ne_bytes(w.try_into().unwrap_or_default());
        for bit in 0..32 {
            if w & (1 << bit) != 0 {
                out.push((i * 32 + bit + 1) as u32);
            }
        }
    }
    out
}

/// A netlink request: header (type, flags, seq 7) and body.
fn nl_msg(ty: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + body.len());
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&7u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

fn nl_send(fd: i32, to: u32, msg: &[u8]) -> isize {
    let sa = nl_sockaddr(to, 0);
    // SAFETY: msg and sa live for the call.
    unsafe {
        libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            std::ptr::addr_of!(sa).cast(),
            12,
        )
    }
}

/// The message types in one datagram of netlink messages.
fn nl_types(b: &[u8]) -> Vec<(u16, i32)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= b.len() {
        let len = u32::from_ne_bytes(b[off..off + 4].try_into().unwrap_or_default()) as usize;
        let ty = u16::from_ne_bytes([b[off + 4], b[off + 5]]);
        let err = if ty == libc::NLMSG_ERROR as u16 && off + 20 <= b.len() {
            i32::from_ne_bytes(b[off + 16..off + 20].try_into().unwrap_or_default())
        } else {
            0
        };
        out.push((ty, err));
        if len < 16 {
            break;
        }
        off += (len + 3) & !3;
    }
    out
}

/// RTM_NEWADDR 10.66.0.1/32 on lo, with an acknowledgement.
fn add_address() -> Vec<u8> {
    // SAFETY: a valid C string.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    // struct ifaddrmsg: family, prefixlen, flags, scope, index
    let mut body = vec![libc::AF_INET as u8, 32, 0, 0];
    body.extend_from_slice(&lo.to_ne_bytes());
    for ty in [1u16, 2] {
        // IFA_ADDRESS, IFA_LOCAL
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&ty.to_ne_bytes());
        body.extend_from_slice(&[10, 66, 0, 1]);
    }
    nl_msg(
        RTM_NEWADDR,
        (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16,
        &body,
    )
}

/// A sock_diag request for every unix socket.
fn diag_request() -> Vec<u8> {
    let mut req = [0u8; 24];
    req[0] = libc::AF_UNIX as u8;
    req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    nl_msg(20, libc::NLM_F_DUMP as u16, &req)
}

/// Reads replies until NLMSG_DONE (or nothing more within a second).
fn drain_until_done(fd: i32) -> bool {
    while poll_in(fd, 1000) {
        let Some(b) = recv(fd, 0) else { return false };
        if nl_types(&b)
            .iter()
            .any(|&(t, _)| t == libc::NLMSG_DONE as u16)
        {
            return true;
        }
    }
    false
}

struct NlSock {
    name: &'static str,
    fd: i32,
    ty: i32,
    proto: i32,
    opts: &'static [(&'static str, i32, i32, i32)],
}

fn nl_state(s: &NlSock) -> String {
    let mut v = format!(
        "type {:?} proto {:?} name {:?} peer {:?} groups {:?}",
        getopt(s.fd, libc::SOL_SOCKET, libc::SO_TYPE),
        getopt(s.fd, libc::SOL_SOCKET, libc::SO_PROTOCOL),
        nl_name(s.fd, false),
        nl_name(s.fd, true),
        nl_groups(s.fd)
    );
    for &(n, level, opt, _) in s.opts {
        v.push_str(&format!(" {n}={:?}", getopt(s.fd, level, opt)));
    }
    v
}

fn netlink(proto: &Proto, report: &mut Report, queued: bool, corrupt: bool) {
    let route = socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_ROUTE);
    let route_opts: &[(&str, i32, i32, i32)] = &[
        ("NETLINK_NO_ENOBUFS", SOL_NETLINK, 5, 1),
        ("NETLINK_PKTINFO", SOL_NETLINK, 3, 1),
        ("SO_RCVBUF", libc::SOL_SOCKET, libc::SO_RCVBUF, 150_000),
    ];
    for &(_, level, opt, v) in route_opts {
        inet::set(route, level, opt, v);
    }
    // RTMGRP_LINK | RTMGRP_IPV4_IFADDR, a port id the kernel picks.
    nl_bind(route, 0, 0x1 | 0x10);
    inet::set(route, SOL_NETLINK, 1, 36);
    let req = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_ROUTE);
    let req_opts: &[(&str, i32, i32, i32)] = &[
        ("NETLINK_EXT_ACK", SOL_NETLINK, 11, 1),
        ("NETLINK_GET_STRICT_CHK", SOL_NETLINK, 12, 1),
        ("NETLINK_CAP_ACK", SOL_NETLINK, 10, 1),
    ];
    for &(_, level, opt, v) in req_opts {
        inet::set(req, level, opt, v);
    }
    nl_bind(req, 0x5a5a_0001, 0);
    let uevent = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, NETLINK_KOBJECT_UEVENT);
    nl_bind(uevent, 0, 1);
    let diag = socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_SOCK_DIAG);
    report.eq("diag request sent", 40, nl_send(diag, 0, &diag_request()));
    report.check(drain_until_done(diag), || {
        "no NLMSG_DONE to the sock_diag request before the dump".into()
    });
    let (a, b) = (
        socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_USERSOCK),
        socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_USERSOCK),
    );
    nl_bind(a, 0x5a5a_0002, 0);
    let to_a = nl_sockaddr(0x5a5a_0002, 0);
    // SAFETY: to_a is a valid sockaddr_nl.
    let r = unsafe { libc::connect(b, std::ptr::addr_of!(to_a).cast(), 12) };
    assert_eq!(r, 0, "connect usersock: errno {}", errno());
    let generic = socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_GENERIC);
    let socks = [
        NlSock {
            name: "route",
            fd: route,
            ty: libc::SOCK_RAW,
            proto: NETLINK_ROUTE,
            opts: route_opts,
        },
        NlSock {
            name: "request",
            fd: req,
            ty: libc::SOCK_DGRAM,
            proto: NETLINK_ROUTE,
            opts: req_opts,
        },
        NlSock {
            name: "uevent",
            fd: uevent,
            ty: libc::SOCK_DGRAM,
            proto: NETLINK_KOBJECT_UEVENT,
            opts: &[],
        },
        NlSock {
            name: "sock_diag",
            fd: diag,
            ty: libc::SOCK_RAW,
            proto: NETLINK_SOCK_DIAG,
            opts: &[],
        },
        NlSock {
            name: "usersock a",
            fd: a,
            ty: libc::SOCK_RAW,
            proto: NETLINK_USERSOCK,
            opts: &[],
        },
        NlSock {
            name: "usersock b",
            fd: b,
            ty: libc::SOCK_RAW,
            proto: NETLINK_USERSOCK,
            opts: &[],
        },
        NlSock {
            name: "generic",
            fd: generic,
            ty: libc::SOCK_RAW,
            proto: NETLINK_GENERIC,
            opts: &[],
        },
    ];
    // What the program set, checked before the dump (the state is real).
    report.eq("route groups", vec![1, 5, 36], nl_groups(route));
    report.eq("uevent groups", vec![1], nl_groups(uevent));
    report.eq("request port id", Ok((0x5a5a_0001, 0)), nl_name(req, false));
    report.eq("usersock b peer", Ok((0x5a5a_0002, 0)), nl_name(b, true));
    report.eq("generic port id", Ok((0, 0)), nl_name(generic, false));
    for s in &socks {
        report.eq(
            &format!("{} type/protocol", s.name),
            (Ok(s.ty), Ok(s.proto)),
            (
                getopt(s.fd, libc::SOL_SOCKET, libc::SO_TYPE),
                getopt(s.fd, libc::SOL_SOCKET, libc::SO_PROTOCOL),
            ),
        );
        for &(n, level, opt, v) in s.opts {
            let want = if opt == libc::SO_RCVBUF { v * 2 } else { v };
            report.eq(
                &format!("{} {n} set", s.name),
                Ok(want),
                getopt(s.fd, level, opt),
            );
        }
    }
    let kernel_ids: Vec<u32> = [route, uevent, diag]
        .iter()
        .map(|&fd| nl_name(fd, false).map_or(0, |n| n.0))
        .collect();
    report.check(kernel_ids.iter().all(|&p| p != 0), || {
        format!("kernel-assigned port ids: {kernel_ids:?}")
    });
    let before: Vec<String> = socks.iter().map(nl_state).collect();
    if queued {
        report.eq(
            "add address before the dump",
            40,
            nl_send(req, 0, &add_address()) as i32,
        );
        // The route socket now holds the notification, unread.
        report.check(poll_in(route, 2000), || "no notification queued".into());
    }
    proto.ready_and_wait();
    for (s, was) in socks.iter().zip(&before) {
        let mut was = was.clone();
        if corrupt && s.name == "route" {
            was = was.replace("[1, 5, 36]", "[1, 5, 37]");
        }
        report.eq(&format!("{} after restore", s.name), was, nl_state(s));
    }
    // A request: the address, acknowledged.
    report.eq(
        "RTM_NEWADDR sent",
        40,
        nl_send(req, 0, &add_address()) as i32,
    );
    let ack = poll_in(req, 5000).then(|| recv(req, 0)).flatten();
    report.eq(
        "RTM_NEWADDR acknowledged",
        Some(vec![(libc::NLMSG_ERROR as u16, 0)]),
        ack.map(|b| nl_types(&b)),
    );
    // The notification to the group.
    let mut notified = false;
    while !notified && poll_in(route, 5000) {
        let Some(m) = recv(route, 0) else { break };
        notified = nl_types(&m).iter().any(|&(t, _)| t == RTM_NEWADDR);
    }
    report.check(notified, || "the route socket got no RTM_NEWADDR".into());
    // sock_diag still answers.
    report.eq("diag request after", 40, nl_send(diag, 0, &diag_request()));
    report.check(drain_until_done(diag), || {
        "no NLMSG_DONE to the sock_diag request after the restore".into()
    });
    // usersock: b's message reaches a, from b's port id.
    let msg = nl_msg(0x100, 0, b"hello");
    // SAFETY: msg lives for the call; b is connected.
    let n = unsafe { libc::send(b, msg.as_ptr().cast(), msg.len(), 0) };
    report.eq("usersock send", msg.len() as isize, n);
    let got = poll_in(a, 5000).then(|| recv(a, 0)).flatten();
    report.eq("usersock message", Some(msg), got);
}

// ----------------------------------------------------------------- packet

const SOL_PACKET: i32 = 263;
const ETH_P_IP: u16 = 0x0800;

/// lo's promiscuity and allmulti counts, as `ip -d link` shows them
/// (SIOCGIFFLAGS and /sys do not show what packet sockets asked for).
fn promisc_allmulti() -> (u32, u32) {
    let out = Command::new("ip")
        .args(["-d", "link", "show", "lo"])
        .output()
        .expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let count = |word: &str| {
        let w: Vec<&str> = text.split_whitespace().collect();
        w.iter()
            .position(|x| *x == word)
            .and_then(|i| w.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX)
    };
    (count("promiscuity"), count("allmulti"))
}

fn packet_mreq(fd: i32, add: bool, ifindex: i32, ty: u16) -> i32 {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    b[4..6].copy_from_slice(&ty.to_ne_bytes());
    let opt = if add { 1 } else { 2 };
    // SAFETY: b lives for the call.
    let r = unsafe { libc::setsockopt(fd, SOL_PACKET, opt, b.as_ptr().cast(), 16) };
    if r == 0 {
        0
    } else {
        errno()
    }
}

fn ll_name(fd: i32) -> Result<(u16, i32), i32> {
    // sockaddr_ll: family, protocol (big-endian), ifindex, ...
    inet::name_bytes(fd, false).map(|b| (u16::from_be_bytes([b[2], b[3]]), u32_at(&b, 4) as i32))
}

/// One classic BPF instruction.
fn ins(code: u16, jt: u8, jf: u8, k: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..2].copy_from_slice(&code.to_ne_bytes());
    b[2] = jt;
    b[3] = jf;
    b[4..8].copy_from_slice(&k.to_ne_bytes());
    b
}

/// Classic BPF on an ETH_P_IP SOCK_DGRAM socket (data from the IP
/// header): UDP (protocol 17) to port 7777 (a 20-byte header), else drop.
fn filter_prog() -> Vec<u8> {
    [
        ins(0x30, 0, 0, 9),     // ldb [9]
        ins(0x15, 0, 3, 17),    // jeq #17
        ins(0x28, 0, 0, 22),    // ldh [22]
        ins(0x15, 0, 1, 7777),  // jeq #7777
        ins(0x06, 0, 0, 65535), // ret #65535
        ins(0x06, 0, 0, 0),     // ret #0
    ]
    .concat()
}

/// SO_ATTACH_FILTER of `prog`, asserted.
fn attach(fd: i32, prog: &[u8]) {
    #[repr(C)]
    struct Fprog {
        len: u16,
        filter: *const u8,
    }
    let fp = Fprog {
        len: (prog.len() / 8) as u16,
        filter: prog.as_ptr(),
    };
    // SAFETY: fp and the program live for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(fp).cast(),
            std::mem::size_of::<Fprog>() as u32,
        )
    };
    assert_eq!(r, 0, "SO_ATTACH_FILTER: errno {}", errno());
}

fn get_filter(fd: i32) -> Result<Vec<u8>, i32> {
    let mut b = vec![0u8; 64 * 8];
    let mut len = 64u32;
    // SAFETY: b holds 64 instructions.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(errno());
    }
    b.truncate(len as usize * 8);
    Ok(b)
}

const PACKET_OPTS: &[(&str, i32, i32)] = &[
    ("PACKET_AUXDATA", SOL_PACKET, 8),
    ("PACKET_ORIGDEV", SOL_PACKET, 9),
    ("PACKET_VERSION", SOL_PACKET, 10),
    ("PACKET_RESERVE", SOL_PACKET, 12),
    ("PACKET_TIMESTAMP", SOL_PACKET, 17),
    ("PACKET_FANOUT", SOL_PACKET, 18),
    ("SO_RCVBUF", libc::SOL_SOCKET, libc::SO_RCVBUF),
];

fn packet_state(fd: i32) -> String {
    let mut v = format!(
        "type {:?} proto {:?} name {:?} filter {:?}",
        getopt(fd, libc::SOL_SOCKET, libc::SO_TYPE),
        getopt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL),
        ll_name(fd),
        get_filter(fd).map(|f| f.len())
    );
    for &(n, level, opt) in PACKET_OPTS {
        v.push_str(&format!(" {n}={:?}", getopt(fd, level, opt)));
    }
    v
}

/// bind(2) of a packet socket to ETH_P_IP on lo, asserted.
fn bind_ip_lo(fd: i32, lo: i32) {
    // SAFETY: plain data; zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETH_P_IP.to_be();
    sa.sll_ifindex = lo;
    // SAFETY: sa is a valid sockaddr_ll.
    let r = unsafe {
        libc::bind(
            fd,
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind packet: errno {}", errno());
}

fn udp_send(port: u16) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.send_to(b"pkt", ("127.0.0.1", port)).expect("send");
}

fn packet(proto: &Proto, report: &mut Report, args: &stasis_tests::Args) {
    let corrupt = args.corrupt();
    // SAFETY: a valid C string.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
    let p = socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from(ETH_P_IP.to_be()),
    );
    let prog = filter_prog();
    attach(p, &prog);
    for (opt, v) in [(8, 1), (9, 1), (10, 1), (12, 64), (17, 1)] {
        inet::set(p, SOL_PACKET, opt, v);
    }
    inet::set(p, libc::SOL_SOCKET, libc::SO_RCVBUF, 120_000);
    bind_ip_lo(p, lo);
    report.eq("add promisc", 0, packet_mreq(p, true, lo, 1));
    report.eq("add allmulti", 0, packet_mreq(p, true, lo, 2));
    report.eq("add allmulti again", 0, packet_mreq(p, true, lo, 2));
    report.eq("lo promisc, allmulti before", (1, 1), promisc_allmulti());
    let idle = socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
    if args.flag("ring") {
        // struct tpacket_req: block size, blocks, frame size, frames.
        let req: Vec<u8> = [4096u32, 1, 2048, 2]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        inet::set_bytes(idle, SOL_PACKET, 5, &req);
    }
    // Fanout group 77 of its own, PACKET_FANOUT_HASH with
    // PACKET_FANOUT_FLAG_ROLLOVER.
    inet::set(p, SOL_PACKET, 18, 77 | (0x1000 << 16));
    report.eq(
        "fanout before",
        Ok(77 | (0x10 << 24)),
        getopt(p, SOL_PACKET, 18),
    );
    let second = args.flag("fanout").then(|| {
        // A second member: refused (the order they joined in is not shown).
        let q = socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_IP.to_be()));
        bind_ip_lo(q, lo);
        inet::set(q, SOL_PACKET, 18, 77 | (0x1000 << 16));
        q
    });
    report.eq("bound before", Ok((ETH_P_IP, lo)), ll_name(p));
    report.eq("filter before", Ok(prog.clone()), get_filter(p));
    let before = (packet_state(p), packet_state(idle));
    if args.flag("queued") {
        // A packet through the filter, left unread.
        udp_send(7777);
        report.check(poll_in(p, 2000), || {
            "nothing queued in the packet socket".into()
        });
    }
    proto.ready_and_wait();
    if let Some(q) = second {
        // The dump was refused: the second member leaves, so the flows
        // below all reach the first one.
        // SAFETY: q is ours and not used afterwards.
        unsafe { libc::close(q) };
    }
    if args.flag("queued") {
        // The dump was refused: the queued packet is still ours to read.
        report.check(recv(p, libc::MSG_DONTWAIT).is_some(), || {
            "the queued packet is gone".into()
        });
    }
    let mut want = before.clone();
    if corrupt {
        want.0 = want
            .0
            .replace("PACKET_RESERVE=Ok(64)", "PACKET_RESERVE=Ok(65)");
    }
    report.eq(
        "packet socket after",
        want,
        (packet_state(p), packet_state(idle)),
    );
    report.eq("filter after", Ok(prog), get_filter(p));
    report.eq("lo promisc, allmulti after", (1, 1), promisc_allmulti());
    // Through the filter: 7778 is dropped, 7777 arrives with auxdata.
    udp_send(7778);
    udp_send(7777);
    let mut b = [0u8; 2048];
    let mut ctl = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    };
    // SAFETY: plain data; zero is valid.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.as_mut_ptr().cast();
    mh.msg_controllen = ctl.len();
    let n = if poll_in(p, 5000) {
        // SAFETY: mh points at live buffers.
        unsafe { libc::recvmsg(p, &mut mh, libc::MSG_DONTWAIT) }
    } else {
        -1
    };
    let port = (n >= 24).then(|| u16::from_be_bytes([b[22], b[23]]));
    report.eq("packet through the filter", Some(7777), port);
    // SAFETY: mh was filled by recvmsg.
    let cm = unsafe { libc::CMSG_FIRSTHDR(&mh) };
    // SAFETY: cm is null or points into ctl.
    let aux = !cm.is_null() && unsafe { (*cm).cmsg_level == SOL_PACKET && (*cm).cmsg_type == 8 };
    report.check(aux, || "no PACKET_AUXDATA with the packet".into());
    report.check(!poll_in(p, 300), || {
        "a second packet passed the filter".into()
    });
    // Membership counts: promisc once, allmulti twice.
    report.eq("drop promisc", 0, packet_mreq(p, false, lo, 1));
    report.eq("promisc after one drop", (0, 1), promisc_allmulti());
    report.eq("drop allmulti", 0, packet_mreq(p, false, lo, 2));
    report.eq(
        "allmulti after one drop (added twice)",
        (0, 1),
        promisc_allmulti(),
    );
    report.eq("drop allmulti again", 0, packet_mreq(p, false, lo, 2));
    report.eq("allmulti after two drops", (0, 0), promisc_allmulti());
}

// -------------------------------------------------------------------- raw

fn in4(a: [u8; 4], port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a),
        },
        sin_zero: [0; 8],
    }
}

fn inet_name(fd: i32, peer: bool) -> Result<Vec<u8>, i32> {
    inet::name_bytes(fd, peer)
}

const RAW_OPTS: &[(&str, i32, i32)] = &[
    ("IP_TTL", libc::IPPROTO_IP, libc::IP_TTL),
    ("IP_HDRINCL", libc::IPPROTO_IP, libc::IP_HDRINCL),
    ("IPV6_CHECKSUM", libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM),
    (
        "IPV6_UNICAST_HOPS",
        libc::IPPROTO_IPV6,
        libc::IPV6_UNICAST_HOPS,
    ),
];

fn raw_state(fd: i32, v6: bool) -> String {
    let mut v = format!(
        "type {:?} proto {:?} name {:?} peer {:?}",
        getopt(fd, libc::SOL_SOCKET, libc::SO_TYPE),
        getopt(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL),
        inet_name(fd, false),
        inet_name(fd, true)
    );
    for &(n, level, opt) in RAW_OPTS {
        if (level == libc::IPPROTO_IPV6) == v6 {
            v.push_str(&format!(" {n}={:?}", getopt(fd, level, opt)));
        }
    }
    v.push_str(&format!(
        " icmp {:?} icmp6 {:?}",
        inet::get_bytes(fd, libc::IPPROTO_RAW, 1),
        inet::get_bytes(fd, libc::IPPROTO_ICMPV6, 1)
    ));
    v
}

/// An ICMP echo request (id 0: the ping socket puts its identifier).
fn echo(seq: u16) -> [u8; 12] {
    let mut m = [8u8, 0, 0, 0, 0, 0, 0, 0, b'p', b'i', b'n', b'g'];
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m
}

fn ping(fd: i32, seq: u16) -> Option<Vec<u8>> {
    let to = in4([127, 0, 0, 1], 0);
    let m = echo(seq);
    // SAFETY: m and to live for the call.
    let n = unsafe {
        libc::sendto(
            fd,
            m.as_ptr().cast(),
            m.len(),
            0,
            std::ptr::addr_of!(to).cast(),
            16,
        )
    };
    if n != m.len() as isize {
        return None;
    }
    poll_in(fd, 5000).then(|| recv(fd, 0)).flatten()
}

fn raw(proto: &Proto, report: &mut Report, corrupt: bool, queued: bool) {
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0").expect("ping_group_range");
    let icmp = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
    let lo = in4([127, 0, 0, 1], 0);
    // SAFETY: lo is a valid sockaddr_in.
    let r = unsafe { libc::bind(icmp, std::ptr::addr_of!(lo).cast(), 16) };
    assert_eq!(r, 0, "bind raw");
    // Every ICMP type blocked but 0 (echo reply).
    inet::set_bytes(icmp, libc::IPPROTO_RAW, 1, &(!1u32).to_ne_bytes());
    inet::set(icmp, libc::IPPROTO_IP, libc::IP_TTL, 33);
    let rawip = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
    let two = in4([127, 0, 0, 2], 0);
    // SAFETY: two is a valid sockaddr_in.
    let r = unsafe { libc::connect(rawip, std::ptr::addr_of!(two).cast(), 16) };
    assert_eq!(r, 0, "connect raw");
    let p253 = socket(libc::AF_INET, libc::SOCK_RAW, 253);
    inet::set(p253, libc::IPPROTO_IP, libc::IP_HDRINCL, 1);
    // Only packets whose first payload byte is 'B' (after a 20-byte header).
    let prog = [
        ins(0x30, 0, 0, 20),    // ldb [20]
        ins(0x15, 0, 1, 0x42),  // jeq #'B'
        ins(0x06, 0, 0, 65535), // ret #65535
        ins(0x06, 0, 0, 0),     // ret #0
    ]
    .concat();
    attach(p253, &prog);
    let icmp6 = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
    // ICMP6_FILTER: everything blocked but 129 (echo reply).
    let mut f6 = [0xffu8; 32];
    f6[129 / 8] &= !(1 << (129 % 8));
    inet::set_bytes(icmp6, libc::IPPROTO_ICMPV6, 1, &f6);
    let v6_253 = socket(libc::AF_INET6, libc::SOCK_RAW, 253);
    inet::set(v6_253, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 2);
    inet::set(v6_253, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 7);
    let pinger = socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
    let reply = ping(pinger, 1);
    report.check(
        reply.as_ref().is_some_and(|r| r.first() == Some(&0)),
        || format!("no echo reply before the dump: {reply:?}"),
    );
    // The raw ICMP socket saw the reply (not the request): read it.
    let seen = poll_in(icmp, 2000).then(|| recv(icmp, 0)).flatten();
    report.eq(
        "raw ICMP saw the reply",
        Some(0u8),
        seen.as_ref().and_then(|p| p.get(20).copied()),
    );
    report.check(!poll_in(icmp, 200), || {
        "the raw ICMP socket saw the request".into()
    });
    let ident = inet_name(pinger, false);
    let fds = [
        (icmp, false),
        (rawip, false),
        (p253, false),
        (icmp6, true),
        (v6_253, true),
        (pinger, false),
    ];
    let before: Vec<String> = fds.iter().map(|&(fd, v6)| raw_state(fd, v6)).collect();
    if queued {
        // An echo reply left unread in the raw ICMP socket.
        report.check(ping(pinger, 9).is_some(), || {
            "no reply to the queued ping".into()
        });
        report.check(poll_in(icmp, 2000), || {
            "nothing queued in the raw socket".into()
        });
    }
    proto.ready_and_wait();
    if queued {
        // The dump was refused: the queued reply is still ours to read.
        report.check(recv(icmp, libc::MSG_DONTWAIT).is_some(), || {
            "the queued reply is gone".into()
        });
    }
    for (i, (&(fd, v6), was)) in fds.iter().zip(&before).enumerate() {
        let mut was = was.clone();
        if corrupt && i == 0 {
            was = was.replace("IP_TTL=Ok(33)", "IP_TTL=Ok(34)");
        }
        report.eq(
            &format!("raw socket {i} after restore"),
            was,
            raw_state(fd, v6),
        );
    }
    report.eq("ping identifier", ident, inet_name(pinger, false));
    let reply = ping(pinger, 2);
    report.eq(
        "echo reply after restore",
        Some((0u8, 2u16)),
        reply
            .as_ref()
            .filter(|r| r.len() >= 8)
            .map(|r| (r[0], u16::from_be_bytes([r[6], r[7]]))),
    );
    report.eq("raw filter after restore", Ok(prog), get_filter(p253));
    // Through the filter: 'A' is dropped, 'B' arrives.
    let out = socket(libc::AF_INET, libc::SOCK_RAW, 253);
    for payload in [b"A", b"B"] {
        // SAFETY: payload and lo live for the call.
        let n = unsafe {
            libc::sendto(
                out,
                payload.as_ptr().cast(),
                1,
                0,
                std::ptr::addr_of!(lo).cast(),
                16,
            )
        };
        report.eq("raw send", 1, n);
    }
    let got = poll_in(p253, 2000).then(|| recv(p253, 0)).flatten();
    report.eq(
        "raw packet through the filter",
        Some(b'B'),
        got.and_then(|p| p.get(20).copied()),
    );
    report.check(!poll_in(p253, 200), || {
        "a second raw packet passed the filter".into()
    });
    let seen = poll_in(icmp, 2000).then(|| recv(icmp, 0)).flatten();
    report.eq(
        "raw ICMP saw the reply after",
        Some(0u8),
        seen.as_ref().and_then(|p| p.get(20).copied()),
    );
    report.check(!poll_in(icmp, 200), || {
        "the raw ICMP socket saw the request after".into()
    });
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    unshare_net();
    match args.get("kind") {
        Some("netlink") => netlink(&proto, &mut report, args.flag("queued"), args.corrupt()),
        Some("packet") => packet(&proto, &mut report, &args),
        Some("raw") => raw(&proto, &mut report, args.corrupt(), args.flag("queued")),
        k => panic!("--kind {k:?}: netlink, packet or raw"),
    }
    proto.finish(&report);
}
