//! tp_inet: TCP listeners and UDP sockets survive checkpoint/restore.
//!
//! Default: an IPv4 listener with every option applications set
//! (SO_REUSEADDR, SO_REUSEPORT, keepalive and its TCP_KEEP*, TCP_NODELAY,
//! buffer sizes, TCP_DEFER_ACCEPT, TCP_FASTOPEN, SO_MARK, SO_BINDTODEVICE,
//! O_NONBLOCK, backlog 7), an IPv6-only listener, a dual-stack listener,
//! a bound UDP socket and a bound, connected one (SO_BROADCAST, IP_TOS),
//! a TCP socket bound but not listening and one not bound.
//! After restore every option, address, flag and backlog (as `ss` shows it)
//! is compared with what it was, and every socket is used: a client
//! connects to each listener (the dual-stack one over IPv4) and datagrams
//! go both ways with their sources checked.
//!
//! `--in-flight`: a listener with one connection waiting to be accepted
//! (its client closed); the dump refuses it unless `--skip-in-flight`,
//! after which the queue is empty and the listener still accepts
//! (`--expect-dropped`; without it the connection must still be queued).
//! `--established`: an established TCP connection (refused).
//! `--udp-queued`: UDP sockets with datagrams waiting (IPv4 from two
//! senders, IPv6 on a connected socket): read after restore with their
//! sources, in order.
//!
//! `--opts`: options that are not plain ints, or were not checked by the
//! default case, each set away from its default: SO_LINGER (on with a
//! time; off with a time kept), TCP_CONGESTION, IP_OPTIONS, IP_TTL,
//! IP_TOS, IP_MULTICAST_IF (by address), IP_MULTICAST_ALL, IP_RECVTOS,
//! IPV6_UNICAST_HOPS, IPV6_TCLASS, IPV6_MULTICAST_IF, IPV6_MULTICAST_HOPS,
//! IPV6_RECVHOPLIMIT; every one read back after restore; a listener with
//! a TCP_MD5SIG key accepts a client signing with it (`--corrupt` changes
//! the congestion algorithm of one socket and the listener's key).
//!
//! `--syn-recv`: a listener holding a half-open connection (see
//! `syn_recv`): refused unless `--skip-in-flight` (`--expect-dropped`).
//!
//! Usage: `tp_inet WORKDIR [--corrupt] [--in-flight|--established|--udp-queued|--opts|--syn-recv]`

use stasis_tests::inet::{
    get, get_bytes, md5_key, name, parse, set, set_bytes, set_linger, sock, sockaddr,
};
use stasis_tests::{errno, Proto, Report};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

fn device(fd: i32) -> String {
    let mut b = [0u8; 32];
    let mut len = b.len() as u32;
    // SAFETY: b and len are live out-parameters.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    String::from_utf8_lossy(&b[..len as usize])
        .trim_end_matches('\0')
        .to_string()
}

fn bind(fd: i32, a: SocketAddr) {
    let (ss, len) = sockaddr(&a);
    // SAFETY: ss holds a valid address.
    let r = unsafe { libc::bind(fd, std::ptr::addr_of!(ss).cast(), len) };
    assert_eq!(r, 0, "bind {a}: errno {}", errno());
}

fn connect(fd: i32, a: SocketAddr) -> i32 {
    let (ss, len) = sockaddr(&a);
    // SAFETY: ss holds a valid address.
    unsafe { libc::connect(fd, std::ptr::addr_of!(ss).cast(), len) }
}

fn listen(fd: i32, backlog: i32) {
    // SAFETY: plain call.
    let r = unsafe { libc::listen(fd, backlog) };
    assert_eq!(r, 0, "listen: errno {}", errno());
}

fn wait_readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, 5000) == 1 }
}

fn accept(fd: i32) -> i32 {
    if !wait_readable(fd) {
        return -1;
    }
    // SAFETY: no address wanted.
    unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) }
}

fn send(fd: i32, b: &[u8]) -> isize {
    // SAFETY: live slice, no SIGPIPE.
    unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) }
}

fn recv_from(fd: i32) -> (Vec<u8>, Option<SocketAddr>) {
    if !wait_readable(fd) {
        return (vec![], None);
    }
    let mut b = vec![0u8; 256];
    // SAFETY: zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    // SAFETY: live buffers.
    let n = unsafe {
        libc::recvfrom(
            fd,
            b.as_mut_ptr().cast(),
            b.len(),
            0,
            std::ptr::addr_of_mut!(ss).cast(),
            &mut len,
        )
    };
    b.truncate(n.max(0) as usize);
    (b, parse(&ss))
}

fn close(fd: i32) {
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
}

const OPTS: &[(&str, i32, i32)] = &[
    ("SO_REUSEADDR", libc::SOL_SOCKET, libc::SO_REUSEADDR),
    ("SO_REUSEPORT", libc::SOL_SOCKET, libc::SO_REUSEPORT),
    ("SO_KEEPALIVE", libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    ("SO_RCVBUF", libc::SOL_SOCKET, libc::SO_RCVBUF),
    ("SO_SNDBUF", libc::SOL_SOCKET, libc::SO_SNDBUF),
    ("SO_MARK", libc::SOL_SOCKET, libc::SO_MARK),
    ("SO_BROADCAST", libc::SOL_SOCKET, libc::SO_BROADCAST),
    ("TCP_KEEPIDLE", libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    ("TCP_KEEPINTVL", libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    ("TCP_KEEPCNT", libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    ("TCP_NODELAY", libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (
        "TCP_DEFER_ACCEPT",
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
    ),
    ("TCP_FASTOPEN", libc::IPPROTO_TCP, libc::TCP_FASTOPEN),
    ("IP_TOS", libc::IPPROTO_IP, libc::IP_TOS),
    ("IPV6_V6ONLY", libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
];

/// Everything checked about one socket.
#[derive(Debug, Clone, PartialEq)]
struct State {
    opts: Vec<(&'static str, i32)>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    nonblock: bool,
    device: String,
    backlog: Option<u32>,
}

/// The options `--opts` sets, read as bytes: (name, level, option).
const MORE_OPTS: &[(&str, i32, i32)] = &[
    ("SO_LINGER", libc::SOL_SOCKET, libc::SO_LINGER),
    ("TCP_CONGESTION", libc::IPPROTO_TCP, libc::TCP_CONGESTION),
    ("IP_OPTIONS", libc::IPPROTO_IP, libc::IP_OPTIONS),
    ("IP_TTL", libc::IPPROTO_IP, libc::IP_TTL),
    ("IP_TOS", libc::IPPROTO_IP, libc::IP_TOS),
    ("IP_MULTICAST_IF", libc::IPPROTO_IP, libc::IP_MULTICAST_IF),
    ("IP_MULTICAST_ALL", libc::IPPROTO_IP, libc::IP_MULTICAST_ALL),
    ("IP_RECVTOS", libc::IPPROTO_IP, libc::IP_RECVTOS),
    (
        "IPV6_UNICAST_HOPS",
        libc::IPPROTO_IPV6,
        libc::IPV6_UNICAST_HOPS,
    ),
    ("IPV6_TCLASS", libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (
        "IPV6_MULTICAST_IF",
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_IF,
    ),
    (
        "IPV6_MULTICAST_HOPS",
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_HOPS,
    ),
    (
        "IPV6_RECVHOPLIMIT",
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVHOPLIMIT,
    ),
    // Plain ints, set below to values a new socket does not have.
    ("SO_PRIORITY", libc::SOL_SOCKET, libc::SO_PRIORITY),
    ("SO_RCVLOWAT", libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    ("SO_OOBINLINE", libc::SOL_SOCKET, libc::SO_OOBINLINE),
    ("SO_TIMESTAMPNS", libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
    (
        "TCP_USER_TIMEOUT",
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
    ),
    (
        "TCP_NOTSENT_LOWAT",
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
    ),
    ("TCP_SYNCNT", libc::IPPROTO_TCP, libc::TCP_SYNCNT),
    ("TCP_LINGER2", libc::IPPROTO_TCP, libc::TCP_LINGER2),
    ("TCP_CORK", libc::IPPROTO_TCP, libc::TCP_CORK),
    ("UDP_CORK", libc::IPPROTO_UDP, UDP_CORK),
    ("UDP_SEGMENT", libc::IPPROTO_UDP, UDP_SEGMENT),
    ("IP_FREEBIND", libc::IPPROTO_IP, libc::IP_FREEBIND),
    ("IP_RECVERR", libc::IPPROTO_IP, libc::IP_RECVERR),
    ("IP_PKTINFO", libc::IPPROTO_IP, libc::IP_PKTINFO),
    ("IP_MTU_DISCOVER", libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    ("IP_MULTICAST_TTL", libc::IPPROTO_IP, libc::IP_MULTICAST_TTL),
    (
        "IP_MULTICAST_LOOP",
        libc::IPPROTO_IP,
        libc::IP_MULTICAST_LOOP,
    ),
    ("IP_RECVTTL", libc::IPPROTO_IP, libc::IP_RECVTTL),
    ("IP_TRANSPARENT", libc::IPPROTO_IP, libc::IP_TRANSPARENT),
    ("IPV6_DONTFRAG", libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG),
    ("IPV6_AUTOFLOWLABEL", libc::IPPROTO_IPV6, IPV6_AUTOFLOWLABEL),
    (
        "IPV6_RECVPKTINFO",
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVPKTINFO,
    ),
    (
        "IPV6_MULTICAST_LOOP",
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_LOOP,
    ),
    ("IPV6_RECVERR", libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
];

/// Option numbers the libc crate does not name (linux/udp.h, in6.h).
const UDP_CORK: i32 = 1;
const UDP_SEGMENT: i32 = 103;
const IPV6_AUTOFLOWLABEL: i32 = 70;

type Readings = Vec<(&'static str, Result<Vec<u8>, i32>)>;

fn more_opts(fd: i32) -> Readings {
    MORE_OPTS
        .iter()
        .map(|&(n, l, o)| (n, get_bytes(fd, l, o)))
        .collect()
}

/// `--opts`: sockets with the options of [`MORE_OPTS`] set, compared
/// (every option, set or not) before and after; then each still works.
fn more_options(proto: &stasis_tests::Proto, args: &stasis_tests::Args, report: &mut Report) {
    // An IPv4 listener: lingering 17 s, reno, record route, TTL 33.
    let l4 = sock(libc::AF_INET, libc::SOCK_STREAM);
    set_linger(l4, 1, 17);
    set_bytes(l4, libc::IPPROTO_TCP, libc::TCP_CONGESTION, b"reno");
    set_bytes(
        l4,
        libc::IPPROTO_IP,
        libc::IP_OPTIONS,
        &[7, 7, 4, 0, 0, 0, 0, 0],
    );
    set(l4, libc::IPPROTO_IP, libc::IP_TTL, 33);
    // Plain ints (docs/state.md, "other int options").
    for (level, opt, v) in [
        (libc::SOL_SOCKET, libc::SO_PRIORITY, 5),
        (libc::SOL_SOCKET, libc::SO_RCVLOWAT, 3),
        (libc::SOL_SOCKET, libc::SO_OOBINLINE, 1),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 12_345),
        (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, 65_536),
        (libc::IPPROTO_TCP, libc::TCP_SYNCNT, 4),
        (libc::IPPROTO_TCP, libc::TCP_LINGER2, 17),
    ] {
        set(l4, level, opt, v);
    }
    bind(l4, lo4());
    listen(l4, 2);
    // An IPv6 TCP socket, not bound: lingering off with 9 s kept, hop
    // limit 7, traffic class 0x28.
    let t6 = sock(libc::AF_INET6, libc::SOCK_STREAM);
    set_linger(t6, 1, 9);
    set_linger(t6, 0, 9);
    set(t6, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 7);
    set(t6, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 0x28);
    set(t6, libc::IPPROTO_TCP, libc::TCP_CORK, 1);
    // UDP over IPv4: multicast through lo by its address, every group's
    // traffic off, TOS 0x20, TOS of received datagrams on.
    let u4 = sock(libc::AF_INET, libc::SOCK_DGRAM);
    set_bytes(u4, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &[127, 0, 0, 1]);
    set(u4, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, 0);
    set(u4, libc::IPPROTO_IP, libc::IP_TOS, 0x20);
    set(u4, libc::IPPROTO_IP, libc::IP_RECVTOS, 1);
    set(u4, libc::IPPROTO_IP, libc::IP_TTL, 5);
    for (level, opt, v) in [
        (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1),
        (libc::IPPROTO_UDP, UDP_CORK, 1),
        (libc::IPPROTO_UDP, UDP_SEGMENT, 1400),
        (libc::IPPROTO_IP, libc::IP_FREEBIND, 1),
        (libc::IPPROTO_IP, libc::IP_RECVERR, 1),
        (libc::IPPROTO_IP, libc::IP_PKTINFO, 1),
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        ),
        (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, 4),
        (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 0),
        (libc::IPPROTO_IP, libc::IP_RECVTTL, 1),
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT, 1),
    ] {
        set(u4, level, opt, v);
    }
    bind(u4, lo4());
    // UDP over IPv6: multicast through interface 1 (lo), 3 hops.
    let u6 = sock(libc::AF_INET6, libc::SOCK_DGRAM);
    set(u6, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, 1);
    set(u6, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 3);
    set(u6, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1);
    for (opt, v) in [
        (libc::IPV6_DONTFRAG, 1),
        (IPV6_AUTOFLOWLABEL, 0),
        (libc::IPV6_RECVPKTINFO, 1),
        (libc::IPV6_MULTICAST_LOOP, 0),
        (libc::IPV6_RECVERR, 1),
    ] {
        set(u6, libc::IPPROTO_IPV6, opt, v);
    }
    bind(u6, lo6());
    // A listener taking connections signed with a key (TCP_MD5SIG).
    let lm = sock(libc::AF_INET, libc::SOCK_STREAM);
    md5_key(lm, Ipv4Addr::LOCALHOST, MD5_KEY);
    bind(lm, lo4());
    listen(lm, 2);
    let socks = [
        ("ipv4 listener", l4),
        ("ipv6 tcp socket", t6),
        ("udp v4", u4),
        ("udp v6", u6),
    ];
    let before: Vec<Readings> = socks.iter().map(|&(_, fd)| more_opts(fd)).collect();
    proto.ready_and_wait();
    if args.corrupt() {
        set_bytes(l4, libc::IPPROTO_TCP, libc::TCP_CONGESTION, b"bbr");
        set(u4, libc::IPPROTO_IP, libc::IP_RECVTTL, 0);
    }
    for (i, &(what, fd)) in socks.iter().enumerate() {
        report.eq(what, &before[i], &more_opts(fd));
    }
    let port = name(l4, false).map(|a| a.port()).unwrap_or(0);
    serve_one(
        report,
        "ipv4 listener",
        l4,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
    );
    if args.corrupt() {
        md5_key(lm, Ipv4Addr::LOCALHOST, b"another key");
    }
    let port = name(lm, false).map(|a| a.port()).unwrap_or(0);
    serve_md5(
        report,
        "listener with a TCP_MD5SIG key",
        lm,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
    );
}

/// `--syn-recv`: a listener with TCP_DEFER_ACCEPT holds a connection
/// half-open (the client's bare ACK held back): the client is a process
/// outside the tree (a grandchild that left it), told through files in
/// the work directory. After go (a refused dump: the process ran on; with
/// `--expect-dropped`, restored after `--skip-in-flight`) the client sends
/// a byte: the connection is accepted (or, dropped, it is not).
fn syn_recv(proto: &stasis_tests::Proto, args: &stasis_tests::Args, report: &mut Report) {
    let l = sock(libc::AF_INET, libc::SOCK_STREAM);
    set(l, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 30);
    bind(l, lo4());
    listen(l, 4);
    let at = name(l, false).unwrap_or(lo4());
    let (send_now, done) = (proto.path("client-send"), proto.path("client-done"));
    let mut ready = [0i32; 2];
    // SAFETY: a valid out array; fork in a single-threaded program, the
    // children run plain calls and _exit.
    unsafe {
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        let c = libc::fork();
        if c == 0 {
            if libc::fork() == 0 {
                // Out of the program's group and session too.
                libc::setsid();
                libc::close(ready[0]);
                libc::close(l);
                let s = sock(libc::AF_INET, libc::SOCK_STREAM);
                let r = connect(s, at);
                libc::write(ready[1], [u8::from(r == 0)].as_ptr().cast(), 1);
                libc::close(ready[1]);
                // The byte that completes the accept, once told; gone when
                // told (or after a minute at most).
                let mut sent = false;
                for _ in 0..6000 {
                    if done.exists() {
                        break;
                    }
                    if !sent && send_now.exists() {
                        send(s, b"x");
                        sent = true;
                    }
                    stasis_tests::nap(10_000_000);
                }
                libc::_exit(0);
            }
            libc::_exit(0);
        }
        libc::waitpid(c, std::ptr::null_mut(), 0);
        libc::close(ready[1]);
        let mut b = [0u8; 1];
        libc::read(ready[0], b.as_mut_ptr().cast(), 1);
        libc::close(ready[0]);
        report.eq("client connected", 1, b[0]);
    }
    // Let the bare ACK arrive (and be held back).
    stasis_tests::nap(50_000_000);
    proto.ready_and_wait();
    let _ = std::fs::write(&send_now, b"");
    // SAFETY: plain calls on our descriptor.
    let a = unsafe {
        libc::fcntl(l, libc::F_SETFL, libc::O_NONBLOCK);
        let mut p = libc::pollfd {
            fd: l,
            events: libc::POLLIN,
            revents: 0,
        };
        libc::poll(&mut p, 1, 2000);
        libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut())
    };
    let _ = std::fs::write(&done, b"");
    let expect = args.flag("expect-dropped") == args.corrupt();
    report.check((a >= 0) == expect, || {
        format!("the half-open connection after go: accept returned {a}")
    });
}

/// Send-Q of a listener as `ss` shows it: its backlog.
fn backlog(port: u16) -> Option<u32> {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(2)?.parse().ok()
}

fn state(fd: i32, listener: bool) -> State {
    let tcp = get(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == libc::IPPROTO_TCP;
    let local = name(fd, false);
    State {
        opts: OPTS
            .iter()
            .filter(|(n, _, _)| tcp || !n.starts_with("TCP_"))
            .map(|&(n, l, o)| (n, get(fd, l, o)))
            .collect(),
        local,
        peer: name(fd, true),
        // SAFETY: plain fcntl.
        nonblock: unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0,
        device: device(fd),
        backlog: if listener {
            local.and_then(|a| backlog(a.port()))
        } else {
            None
        },
    }
}

fn lo4() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn lo6() -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
}

/// A client connects to `to`, sends "ping"; the listener accepts and reads it.
fn serve_one(report: &mut Report, what: &str, listener: i32, to: SocketAddr) {
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    serve_client(report, what, listener, to, sock(family, libc::SOCK_STREAM));
}

const MD5_KEY: &[u8] = b"stasis md5 key";

/// `serve_one` with a client signing with [`MD5_KEY`], which gives up
/// after 5 s (a listener without the key drops its SYNs).
fn serve_md5(report: &mut Report, what: &str, listener: i32, to: SocketAddr) {
    let c = sock(libc::AF_INET, libc::SOCK_STREAM);
    md5_key(c, Ipv4Addr::LOCALHOST, MD5_KEY);
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: tv lives for the call; its size is passed.
    unsafe {
        libc::setsockopt(
            c,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    serve_client(report, what, listener, to, c);
}

fn serve_client(report: &mut Report, what: &str, listener: i32, to: SocketAddr, c: i32) {
    let r = connect(c, to);
    report.check(r == 0, || {
        format!("{what}: connect {to}: errno {}", errno())
    });
    send(c, b"ping");
    let a = accept(listener);
    report.check(a >= 0, || format!("{what}: accept: errno {}", errno()));
    if a >= 0 {
        let (got, _) = recv_from(a);
        report.eq(
            &format!("{what}: bytes through the accepted connection"),
            b"ping".to_vec(),
            got,
        );
        close(a);
    }
    close(c);
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    if args.flag("established") {
        let l = sock(libc::AF_INET, libc::SOCK_STREAM);
        bind(l, lo4());
        listen(l, 1);
        let c = sock(libc::AF_INET, libc::SOCK_STREAM);
        connect(c, name(l, false).unwrap_or(lo4()));
        let _a = accept(l);
        proto.ready_and_wait();
        proto.finish(&report);
    }
    if args.flag("syn-recv") {
        syn_recv(&proto, &args, &mut report);
        proto.finish(&report);
    }
    if args.flag("opts") {
        more_options(&proto, &args, &mut report);
        proto.finish(&report);
    }
    if args.flag("udp-queued") {
        // Datagrams waiting: two from one IPv4 sender, one from another
        // (unconnected receiver); one over IPv6 to a connected socket.
        let u = sock(libc::AF_INET, libc::SOCK_DGRAM);
        bind(u, lo4());
        let v = sock(libc::AF_INET, libc::SOCK_DGRAM);
        connect(v, name(u, false).unwrap_or(lo4()));
        let w = sock(libc::AF_INET, libc::SOCK_DGRAM);
        connect(w, name(u, false).unwrap_or(lo4()));
        send(v, b"q1");
        send(w, b"from-w");
        send(v, b"q22");
        let a6 = sock(libc::AF_INET6, libc::SOCK_DGRAM);
        bind(a6, lo6());
        let b6 = sock(libc::AF_INET6, libc::SOCK_DGRAM);
        bind(b6, lo6());
        connect(a6, name(b6, false).unwrap_or(lo6()));
        connect(b6, name(a6, false).unwrap_or(lo6()));
        send(b6, b"six");
        // Let loopback deliver them before the dump.
        stasis_tests::nap(50_000_000);
        proto.ready_and_wait();
        let mut want = vec![
            (b"q1".to_vec(), name(v, false)),
            (b"from-w".to_vec(), name(w, false)),
            (b"q22".to_vec(), name(v, false)),
        ];
        if args.corrupt() {
            want.swap(0, 2);
        }
        for w in want {
            report.eq("queued datagram (data, source)", w, recv_from(u));
        }
        report.eq(
            "queued ipv6 datagram",
            (b"six".to_vec(), name(b6, false)),
            recv_from(a6),
        );
        proto.finish(&report);
    }
    if args.flag("in-flight") {
        let l = sock(libc::AF_INET, libc::SOCK_STREAM);
        bind(l, lo4());
        listen(l, 4);
        let at = name(l, false).unwrap_or(lo4());
        let c = sock(libc::AF_INET, libc::SOCK_STREAM);
        connect(c, at);
        close(c);
        proto.ready_and_wait();
        // The waiting connection was dropped: nothing to accept at once.
        // SAFETY: plain fcntl and accept on our listener.
        let a = unsafe {
            libc::fcntl(l, libc::F_SETFL, libc::O_NONBLOCK);
            libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut())
        };
        // With --expect-dropped (restored after `dump --skip-in-flight`)
        // the queue is empty; without it (the dump refused, the process
        // ran on) the connection is still there.
        let dropped = a < 0 && errno() == libc::EAGAIN;
        let expect = args.flag("expect-dropped") != args.corrupt();
        report.check(dropped == expect, || {
            format!("accept queue after restore: accept returned {a}")
        });
        serve_one(&mut report, "listener after the drop", l, at);
        proto.finish(&report);
    }

    // IPv4 listener with every option.
    let l4 = sock(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
    for (o, v) in [
        (libc::SO_REUSEADDR, 1),
        (libc::SO_REUSEPORT, 1),
        (libc::SO_KEEPALIVE, 1),
        (libc::SO_RCVBUF, 100_000),
        (libc::SO_SNDBUF, 70_000),
        (libc::SO_MARK, 0x5eed),
    ] {
        set(l4, libc::SOL_SOCKET, o, v);
    }
    for (o, v) in [
        (libc::TCP_KEEPIDLE, 77),
        (libc::TCP_KEEPINTVL, 13),
        (libc::TCP_KEEPCNT, 4),
        (libc::TCP_NODELAY, 1),
        (libc::TCP_DEFER_ACCEPT, 9),
        (libc::TCP_FASTOPEN, 5),
    ] {
        set(l4, libc::IPPROTO_TCP, o, v);
    }
    // SAFETY: a literal device name.
    let r = unsafe {
        libc::setsockopt(
            l4,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            b"lo".as_ptr().cast(),
            2,
        )
    };
    assert_eq!(r, 0, "SO_BINDTODEVICE: errno {}", errno());
    bind(l4, lo4());
    listen(l4, 7);
    // IPv6 only, and dual-stack.
    let l6 = sock(libc::AF_INET6, libc::SOCK_STREAM);
    set(l6, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1);
    bind(l6, lo6());
    listen(l6, 3);
    let ld = sock(libc::AF_INET6, libc::SOCK_STREAM);
    set(ld, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0);
    bind(ld, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)));
    listen(ld, 128);
    // UDP: bound, and bound + connected.
    let ua = sock(libc::AF_INET, libc::SOCK_DGRAM);
    set(ua, libc::SOL_SOCKET, libc::SO_BROADCAST, 1);
    set(ua, libc::IPPROTO_IP, libc::IP_TOS, 0x10);
    bind(ua, lo4());
    let ub = sock(libc::AF_INET6, libc::SOCK_DGRAM);
    bind(ub, lo6());
    let uc = sock(libc::AF_INET6, libc::SOCK_DGRAM);
    bind(uc, lo6());
    let r = connect(ub, name(uc, false).unwrap_or(lo6()));
    assert_eq!(r, 0, "udp connect: errno {}", errno());
    let ud = sock(libc::AF_INET, libc::SOCK_DGRAM);
    bind(ud, lo4());
    // TCP bound but not listening yet, and not even bound.
    let tb = sock(libc::AF_INET6, libc::SOCK_STREAM);
    bind(tb, lo6());
    let tu = sock(libc::AF_INET6, libc::SOCK_STREAM);

    let socks = [
        ("ipv4 listener", l4, true),
        ("ipv6 listener", l6, true),
        ("dual-stack listener", ld, true),
        ("udp bound", ua, false),
        ("udp connected", ub, false),
        ("udp peer", uc, false),
        ("udp v4 peer", ud, false),
        ("tcp bound", tb, false),
        ("tcp unbound", tu, false),
    ];
    let before: Vec<State> = socks.iter().map(|&(_, fd, l)| state(fd, l)).collect();
    proto.ready_and_wait();
    for (i, &(what, fd, l)) in socks.iter().enumerate() {
        let mut b = before[i].clone();
        if args.corrupt() && i == 0 {
            b.backlog = b.backlog.map(|n| n + 1);
        }
        report.eq(what, b, state(fd, l));
    }
    let port = |fd| name(fd, false).map(|a| a.port()).unwrap_or(0);
    serve_one(
        &mut report,
        "ipv4 listener",
        l4,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port(l4))),
    );
    serve_one(
        &mut report,
        "ipv6 listener",
        l6,
        SocketAddr::from((Ipv6Addr::LOCALHOST, port(l6))),
    );
    serve_one(
        &mut report,
        "dual-stack listener over ipv4",
        ld,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port(ld))),
    );
    // The bound socket listens on its port now; the unbound one connects.
    listen(tb, 2);
    let tb_at = SocketAddr::from((Ipv6Addr::LOCALHOST, port(tb)));
    report.eq("connect from the unbound TCP socket", 0, connect(tu, tb_at));
    report.check(accept(tb) >= 0, || "accept on the bound TCP socket".into());
    // Datagrams both ways, sources checked.
    send(ub, b"to-c");
    let (got, from) = recv_from(uc);
    report.eq(
        "datagram from the connected socket",
        (b"to-c".to_vec(), name(ub, false)),
        (got, from),
    );
    let (ss, len) = sockaddr(&name(ua, false).unwrap_or(lo4()));
    // SAFETY: ss holds a valid address.
    unsafe {
        libc::sendto(
            ud,
            b"to-a".as_ptr().cast(),
            4,
            0,
            std::ptr::addr_of!(ss).cast(),
            len,
        )
    };
    let (got, from) = recv_from(ua);
    report.eq(
        "datagram to the bound socket",
        (b"to-a".to_vec(), name(ud, false)),
        (got, from),
    );
    proto.finish(&report);
}
