//! tp_tcp: established TCP connections survive checkpoint/restore
//! (`--tcp-established`), byte-exact both ways, without the peer seeing a
//! reset.
//!
//! Set up before the dump:
//! * a peer OUTSIDE the dumped tree: a process started by a double fork in
//!   a new session (its parent exits, so it is no descendant), listening on
//!   127.0.0.1 and [::1] (and, with `--mapped`, on 127.0.0.1 reached from a
//!   dual-stack IPv6 socket as ::ffff:127.0.0.1); the program connects to
//!   each. The peer sends 50 000 bytes the program does not read (its
//!   receive queue) and reads nothing, while the program writes until its
//!   send queue is full (EAGAIN): data in flight, acknowledged and not.
//! * a connection with both ends inside the program (IPv4): one end writes
//!   until full, the other sends 30 000 bytes not read.
//!
//! Every socket is non-blocking; some have TCP_NODELAY, SO_KEEPALIVE,
//! SO_LINGER and the reno congestion algorithm (TCP_CONGESTION).
//!
//! After restore each end checks its addresses, O_NONBLOCK and options,
//! then both ends of every connection go on: each sends 200 000 more bytes
//! of its stream (byte i of a direction's stream is a function of i), then
//! its total, then shuts down its writing side, while reading everything
//! the other side sent until end of file: every byte must be the one
//! expected at its position and the total must match (nothing lost,
//! duplicated or reordered). The peer writes its own verdict (a reset is a
//! FAIL) into peer-N.result, which the program waits for.
//!
//! `--half-closed`: before the dump, ends are half-closed into every
//! state: FIN_WAIT1 (FIN behind a full send queue), FIN_WAIT2, CLOSING
//! (both sides shut down, ours unsent), CLOSE_WAIT, LAST_ACK (FIN behind a
//! full send queue); an end that shut down writes its total to a file
//! instead of the stream.
//!
//! `--close` (dump or restore with `--tcp-close`): the connections come
//! back closed: reading gives end of file, writing EPIPE.
//!
//! `--netns host|peer-ns`: the program runs in a network namespace of
//! its own, reached through a veth pair whose outer end is a port of a
//! bridge (10.93.X.1/24, X from the PID) in the first namespace; inside:
//! lo, the veth (10.93.X.2/24, MTU 1400, a MAC of its own), a route to
//! 10.94.0.0/16 via the bridge. The peer is in the first namespace (`host`,
//! on the bridge's address) or in a named namespace `stcPID` of its own
//! (`peer-ns`, 10.93.X.3 behind a second veth on the bridge: migration of
//! a server between two namespaces as seen by a client in a third; IPv6
//! fd93:X::1, ::2, ::3/64, no DAD, likewise); an IPv4 and an IPv6
//! connection to it, and the pair inside over 127.0.0.1. After
//! restore the veth's address, MAC, MTU, flags and the route must read as
//! before. The names made are listed in `net-names` (bridge, netns) for
//! the harness to remove.
//!
//! `--md5`: the connection with both ends inside signs its segments with
//! a TCP_MD5SIG key (a lost key drops every segment: the streams stall).
//!
//! Usage: `tp_tcp WORKDIR [--corrupt] [--mapped] [--close] [--half-closed]
//! [--netns host|peer-ns] [--md5]`

use stasis_tests::inet::{
    get, get_bytes, md5_key, name, set, set_bytes, set_linger, sock, sockaddr,
};
use stasis_tests::{errno, Proto, Report};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

const PEER_UNREAD: usize = 50_000;
const INSIDE_UNREAD: usize = 30_000;
const MORE: usize = 200_000;

/// Byte `i` of the stream of direction `seed`.
fn gen(seed: u64, i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (x >> 29) as u8 ^ (i as u8)
}

fn fill(seed: u64, from: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = gen(seed, from + k as u64);
    }
}

fn listener(a: SocketAddr, v6only: Option<i32>) -> i32 {
    let fd = sock(
        if a.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        },
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
    );
    if let Some(v) = v6only {
        set(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v);
    }
    let (ss, len) = sockaddr(&a);
    // SAFETY: ss holds an address of length len.
    let r = unsafe { libc::bind(fd, std::ptr::addr_of!(ss).cast(), len) };
    assert_eq!(r, 0, "bind {a}: errno {}", errno());
    // SAFETY: plain call.
    assert_eq!(unsafe { libc::listen(fd, 8) }, 0);
    fd
}

fn connect(family: i32, to: SocketAddr) -> i32 {
    let fd = sock(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC);
    if family == libc::AF_INET6 {
        set(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0);
    }
    let (ss, len) = sockaddr(&to);
    // SAFETY: ss holds an address of length len.
    let r = unsafe { libc::connect(fd, std::ptr::addr_of!(ss).cast(), len) };
    assert_eq!(r, 0, "connect {to}: errno {}", errno());
    fd
}

fn accept(l: i32) -> i32 {
    // SAFETY: null address out-parameters are allowed.
    let fd = unsafe {
        libc::accept4(
            l,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(fd >= 0, "accept: errno {}", errno());
    fd
}

fn nonblock(fd: i32) {
    // SAFETY: plain fcntl calls.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        )
    };
}

fn send_some(fd: i32, buf: &[u8]) -> Result<usize, i32> {
    // SAFETY: sending from a live slice.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// Sends `n` bytes of stream `seed` from position `*pos` (blocking by
/// polling), or until the socket takes no more when `n` is None.
fn push(fd: i32, seed: u64, pos: &mut u64, n: Option<usize>) -> Result<(), String> {
    let mut buf = vec![0u8; 16 << 10];
    let end = n.map(|n| *pos + n as u64);
    loop {
        let want = end.map_or(buf.len() as u64, |e| (e - *pos).min(buf.len() as u64)) as usize;
        if want == 0 {
            return Ok(());
        }
        fill(seed, *pos, &mut buf[..want]);
        match send_some(fd, &buf[..want]) {
            Ok(k) => *pos += k as u64,
            Err(libc::EAGAIN) if end.is_none() => return Ok(()),
            Err(libc::EAGAIN) => wait(fd, libc::POLLOUT)?,
            Err(e) => return Err(format!("send: errno {e}")),
        }
    }
}

fn wait(fd: i32, ev: i16) -> Result<(), String> {
    let mut p = libc::pollfd {
        fd,
        events: ev,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 30_000) };
    if r == 0 {
        return Err(format!("poll({ev}) timed out after 30 s"));
    }
    Ok(())
}

/// One end of a connection: its descriptor, the stream it sends, how much
/// it sent, the stream it expects.
struct End {
    fd: i32,
    tx_seed: u64,
    tx: u64,
    rx_seed: u64,
    /// This end shut down writing before the dump (`--half-closed`).
    half: bool,
    /// The other end did: its total is in this file, not in the stream.
    rx_total_file: Option<std::path::PathBuf>,
}

impl End {
    fn new(fd: i32, tx_seed: u64, rx_seed: u64) -> End {
        End {
            fd,
            tx_seed,
            tx: 0,
            rx_seed,
            half: false,
            rx_total_file: None,
        }
    }
}

/// After restore: sends MORE bytes, its total, shuts down writing, and
/// reads the other side's stream to end of file, checking every byte.
fn carry_on(e: &mut End) -> Result<String, String> {
    let mut sent_more = 0usize;
    let mut trailer_sent = e.half;
    // Without a trailer every byte received is data.
    let aside = if e.rx_total_file.is_some() { 0 } else { 8 };
    let mut got: Vec<u8> = Vec::new();
    let mut rx = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if Instant::now() > deadline {
            return Err(format!("timed out: {rx} bytes received, {} sent", e.tx));
        }
        if !trailer_sent {
            if sent_more < MORE {
                let before = e.tx;
                let n = (MORE - sent_more).min(16 << 10);
                let mut chunk = vec![0u8; n];
                fill(e.tx_seed, e.tx, &mut chunk);
                match send_some(e.fd, &chunk) {
                    Ok(k) => e.tx += k as u64,
                    Err(libc::EAGAIN) => {}
                    Err(x) => return Err(format!("send after restore: errno {x}")),
                }
                sent_more += (e.tx - before) as usize;
            } else {
                let t = e.tx.to_le_bytes();
                match send_some(e.fd, &t) {
                    Ok(8) => {
                        trailer_sent = true;
                        // SAFETY: plain call.
                        unsafe { libc::shutdown(e.fd, libc::SHUT_WR) };
                    }
                    Ok(k) => return Err(format!("short trailer send {k}")),
                    Err(libc::EAGAIN) => {}
                    Err(x) => return Err(format!("send trailer: errno {x}")),
                }
            }
        }
        // SAFETY: reading into a live buffer.
        let n = unsafe { libc::recv(e.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            // Keep the last 8 bytes aside: they may be the trailer.
            got.extend_from_slice(&buf[..n as usize]);
            let keep = got.len().saturating_sub(aside);
            for (k, &b) in got[..keep].iter().enumerate() {
                let i = rx + k as u64;
                if b != gen(e.rx_seed, i) {
                    return Err(format!(
                        "byte {i} is {b:#x}, expected {:#x}",
                        gen(e.rx_seed, i)
                    ));
                }
            }
            rx += keep as u64;
            got.drain(..keep);
        } else if n == 0 {
            if !trailer_sent {
                continue;
            }
            let total = match &e.rx_total_file {
                Some(f) => std::fs::read_to_string(f)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(u64::MAX),
                None if got.len() == 8 => u64::from_le_bytes(got[..8].try_into().unwrap_or([0; 8])),
                None => return Err(format!("end of file after {rx} bytes without a total")),
            };
            if total != rx {
                return Err(format!("received {rx} bytes, the sender sent {total}"));
            }
            return Ok(format!("{rx} received, {} sent", e.tx));
        } else {
            match errno() {
                libc::EAGAIN => {
                    let ev = if trailer_sent {
                        libc::POLLIN
                    } else {
                        libc::POLLIN | libc::POLLOUT
                    };
                    wait(e.fd, ev)?;
                }
                x => return Err(format!("recv after {rx} bytes: errno {x} (reset?)")),
            }
        }
    }
}

/// Resets a connection whose check failed, so its other end stops at once.
fn abort(fd: i32) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: l lives for the call; the descriptor is not used afterwards.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(l).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
        libc::close(fd);
    }
}

fn peer_result(proto: &Proto, k: usize) -> String {
    proto
        .path(&format!("peer-{k}.result"))
        .display()
        .to_string()
}

/// The peer, outside the tree: accepts one connection per listener,
/// sends PEER_UNREAD bytes on each, reads nothing until go (or until a
/// connection ends before it: FAIL), then carries on and writes its verdict.
fn peer(proto: &Proto, listeners: &[i32], half: bool) -> ! {
    let mut conns: Vec<End> = listeners
        .iter()
        .enumerate()
        .map(|(k, &l)| {
            let fd = accept(l);
            nonblock(fd);
            End::new(fd, 100 + k as u64, 200 + k as u64)
        })
        .collect();
    for c in &mut conns {
        let mut pos = 0;
        let _ = push(c.fd, c.tx_seed, &mut pos, Some(PEER_UNREAD));
        c.tx = pos;
    }
    if half {
        // The program's IPv4 end goes to CLOSING: it shuts down first.
        let t = Instant::now();
        while !proto.path("c-shut").exists() && t.elapsed() < Duration::from_secs(5) {
            stasis_tests::nap(stasis_tests::POLL_NS);
        }
        shut(proto, &mut conns[0]);
    }
    let start = Instant::now();
    while !proto.go_released() {
        let dead = conns.iter().any(|c| {
            let mut p = libc::pollfd {
                fd: c.fd,
                events: if half { 0 } else { libc::POLLRDHUP },
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut p, 1, 0) };
            p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
        });
        if dead || !proto.dir().exists() || start.elapsed() > Duration::from_secs(300) {
            for k in 0..conns.len() {
                let _ = std::fs::write(peer_result(proto, k), "FAIL: closed before go\n");
            }
            std::process::exit(1);
        }
        stasis_tests::nap(stasis_tests::POLL_NS);
    }
    totals_from_files(proto, &mut conns.iter_mut().collect::<Vec<_>>());
    std::thread::scope(|s| {
        for (k, c) in conns.iter_mut().enumerate() {
            s.spawn(move || {
                let line = match carry_on(c).inspect_err(|_| abort(c.fd)) {
                    Ok(m) => format!("PASS: {m}\n"),
                    Err(m) => format!("FAIL: {m}\n"),
                };
                let path = peer_result(proto, k);
                let tmp = format!("{path}.tmp");
                if std::fs::write(&tmp, line).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
            });
        }
    });
    std::process::exit(0);
}

/// Starts the peer by a double fork into a new session; returns once its
/// first child has exited (the peer is then nobody's descendant here).
fn start_peer(proto: &Proto, listeners: &[i32], half: bool, ns: Option<i32>) {
    // SAFETY: fork in a single-threaded program.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // The peer leaves the program's namespace (which must die with
        // the tree) for its own.
        if let Some(ns) = ns {
            setns(ns);
            // SAFETY: the descriptor is not needed any more.
            unsafe { libc::close(ns) };
        }
        // SAFETY: plain calls in the child.
        unsafe { libc::setsid() };
        // SAFETY: as above.
        if unsafe { libc::fork() } == 0 {
            peer(proto, listeners, half);
        }
        // SAFETY: leave at once.
        unsafe { libc::_exit(0) };
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    for &l in listeners {
        // SAFETY: our copies of the listeners are not needed.
        unsafe { libc::close(l) };
    }
}

fn tx_file(proto: &Proto, seed: u64) -> std::path::PathBuf {
    proto.path(&format!("tx-{seed}"))
}

/// Shuts down writing on `e`, its total written to a file first.
fn shut(proto: &Proto, e: &mut End) {
    std::fs::write(tx_file(proto, e.tx_seed), e.tx.to_string()).expect("tx file");
    // SAFETY: plain call.
    unsafe { libc::shutdown(e.fd, libc::SHUT_WR) };
    e.half = true;
}

/// After go: an end whose other side shut down reads that side's total
/// from its file.
fn totals_from_files(proto: &Proto, ends: &mut [&mut End]) {
    for e in ends {
        let f = tx_file(proto, e.rx_seed);
        if f.exists() {
            e.rx_total_file = Some(f);
        }
    }
}

fn tcp_state(fd: i32) -> u8 {
    let mut info = [0u8; 8];
    let mut len = 8u32;
    // SAFETY: info and len are live out-parameters.
    unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    info[0]
}

/// `--half-closed`: the outside IPv4 end (full send queue) and the inside
/// writer shut down writing (FIN_WAIT1, the FIN behind unsent data; the
/// peer also shut down its side of the IPv4 one: CLOSING); the IPv6 end
/// after 1000 bytes (FIN_WAIT2). Two more pairs inside: one side sends
/// 1000 bytes and shuts down (FIN_WAIT2), the other stays (CLOSE_WAIT) or
/// fills its send queue and shuts down (LAST_ACK). Every end must reach
/// its state before the dump.
fn half_closed_setup(proto: &Proto, ends: &mut Vec<(String, End)>, report: &mut Report) {
    let n = ends.len();
    for k in [0, 1, n - 2] {
        shut(proto, &mut ends[k].1);
    }
    std::fs::write(proto.path("c-shut"), "").expect("c-shut");
    for (k, last_ack) in [(0u64, false), (1, true)] {
        let lo4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let l = listener(lo4, None);
        let mut w = End::new(
            connect(libc::AF_INET, name(l, false).unwrap_or(lo4)),
            400 + 2 * k,
            401 + 2 * k,
        );
        let mut r = End::new(accept(l), 401 + 2 * k, 400 + 2 * k);
        // SAFETY: the listener is not needed any more.
        unsafe { libc::close(l) };
        nonblock(w.fd);
        nonblock(r.fd);
        let _ = push(w.fd, w.tx_seed, &mut w.tx, Some(1000));
        shut(proto, &mut w);
        if last_ack {
            await_state(r.fd, 8);
            let _ = push(r.fd, r.tx_seed, &mut r.tx, None);
            shut(proto, &mut r);
        }
        let name = if last_ack { "LAST_ACK" } else { "CLOSE_WAIT" };
        ends.push((format!("inside {name} pair, FIN_WAIT2 side"), w));
        ends.push((format!("inside {name} pair, {name} side"), r));
    }
    let want: Vec<u8> = ends
        .iter()
        .enumerate()
        .map(|(k, _)| match k {
            0 => 11,
            1 => 5,
            k if k == n - 2 => 4,
            k if k == n - 1 => 1,
            k if k >= n => [5, 8, 5, 9][k - n],
            _ => 1,
        })
        .collect();
    for ((what, e), w) in ends.iter().zip(want) {
        let st = await_state(e.fd, w);
        report.check(st == w, || {
            format!("{what}: state {st} before the dump, not {w}")
        });
    }
}

/// Waits (up to 3 s) for `fd` to reach TCP state `want`; the state then.
fn await_state(fd: i32, want: u8) -> u8 {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) && tcp_state(fd) != want {
        stasis_tests::nap(5_000_000);
    }
    tcp_state(fd)
}

/// Waits until `n` bytes are waiting on `fd`.
fn await_inq(fd: i32, n: usize) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let mut v = 0i32;
        // SAFETY: FIONREAD writes one int.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut v) };
        if v as usize >= n {
            return;
        }
        stasis_tests::nap(5_000_000);
    }
}

struct Before {
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    nodelay: i32,
    keepalive: i32,
    linger: Result<Vec<u8>, i32>,
    congestion: Result<Vec<u8>, i32>,
}

fn before(fd: i32) -> Before {
    Before {
        local: name(fd, false),
        peer: name(fd, true),
        nodelay: get(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY),
        keepalive: get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        linger: get_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER),
        congestion: get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION),
    }
}

fn check_same(report: &mut Report, what: &str, fd: i32, b: &Before) {
    let a = before(fd);
    report.eq(&format!("{what}: local address"), b.local, a.local);
    report.eq(&format!("{what}: peer address"), b.peer, a.peer);
    report.eq(&format!("{what}: TCP_NODELAY"), b.nodelay, a.nodelay);
    report.eq(&format!("{what}: SO_KEEPALIVE"), b.keepalive, a.keepalive);
    report.eq(&format!("{what}: SO_LINGER"), &b.linger, &a.linger);
    report.eq(
        &format!("{what}: TCP_CONGESTION"),
        &b.congestion,
        &a.congestion,
    );
    // SAFETY: plain fcntl.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    report.check(fl & libc::O_NONBLOCK != 0, || {
        format!("{what}: O_NONBLOCK lost")
    });
}

/// `--close`: every end reads end of file (or an error) and cannot write.
fn check_closed(report: &mut Report, what: &str, fd: i32) {
    let mut b = [0u8; 16];
    // SAFETY: reading into a live buffer.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
    report.check(n <= 0 && (n == 0 || errno() != libc::EAGAIN), || {
        format!(
            "{what}: read {n} (errno {}) on a closed connection",
            errno()
        )
    });
    let r = send_some(fd, b"x");
    report.check(r.is_err(), || {
        format!("{what}: a write succeeded on a closed connection")
    });
}

fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn open_ns(path: &str) -> i32 {
    let c = std::ffi::CString::new(path).expect("path");
    // SAFETY: opening a path; the descriptor is closed by the caller.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open {path}: errno {}", errno());
    fd
}

fn setns(fd: i32) {
    // SAFETY: joining a namespace we hold a descriptor of.
    let r = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: errno {}", errno());
}

/// A link line less what a new outer end changes (its index in `@ifN`)
/// and the operational state word.
fn link_line(l: &str) -> String {
    let mut out = Vec::new();
    let mut skip = false;
    for w in l.split_whitespace() {
        if skip {
            skip = false;
            continue;
        }
        if w == "state" {
            skip = true;
            continue;
        }
        out.push(w.split("@if").next().unwrap_or(w).to_string());
    }
    out.join(" ")
}

/// `--netns`: what the program's namespace shows of itself (`ip`).
fn net_state(vi: &str) -> Vec<String> {
    vec![
        link_line(&ip(&["-o", "link", "show", "dev", vi])),
        ip(&["-o", "-4", "addr", "show", "dev", vi]),
        ip(&["-o", "-6", "addr", "show", "dev", vi, "scope", "global"]),
        ip(&["-4", "route", "show"]),
    ]
}

/// `--netns MODE`: the bridge, the program's own namespace with its veth,
/// (`peer-ns`) the peer's namespace; the peer's listener made in the
/// peer's namespace. The program ends in its own namespace; returns the
/// listener, a descriptor of the peer's namespace (for the peer to join)
/// and the inner veth's name.
fn net_setup(proto: &Proto, mode: &str) -> (Vec<i32>, i32, String) {
    let pid = std::process::id();
    let x = pid % 250 + 1;
    let (br, vo, vi) = (
        format!("stbr{pid}"),
        format!("stvo{pid}"),
        format!("stvi{pid}"),
    );
    let (cn, co, ci) = (
        format!("stc{pid}"),
        format!("stco{pid}"),
        format!("stci{pid}"),
    );
    let peer_ns = mode == "peer-ns";
    let names = if peer_ns {
        format!("{br}\n{cn}\n")
    } else {
        format!("{br}\n")
    };
    std::fs::write(proto.path("net-names"), names).expect("net-names");
    ip(&["link", "add", &br, "type", "bridge"]);
    ip(&["addr", "add", &format!("10.93.{x}.1/24"), "dev", &br]);
    ip(&[
        "addr",
        "add",
        &format!("fd93:{x:x}::1/64"),
        "dev",
        &br,
        "nodad",
    ]);
    ip(&["link", "set", &br, "up"]);
    let (peer_ip, peer_ip6) = if peer_ns {
        ip(&["netns", "add", &cn]);
        ip(&[
            "link", "add", &co, "type", "veth", "peer", "name", &ci, "netns", &cn,
        ]);
        ip(&["link", "set", &co, "master", &br, "up"]);
        ip(&[
            "-n",
            &cn,
            "addr",
            "add",
            &format!("10.93.{x}.3/24"),
            "dev",
            &ci,
        ]);
        let a6 = format!("fd93:{x:x}::3/64");
        ip(&["-n", &cn, "addr", "add", &a6, "dev", &ci, "nodad"]);
        ip(&["-n", &cn, "link", "set", &ci, "up"]);
        ip(&["-n", &cn, "link", "set", "lo", "up"]);
        (Ipv4Addr::new(10, 93, x as u8, 3), 3)
    } else {
        (Ipv4Addr::new(10, 93, x as u8, 1), 1)
    };
    let peer_ip6 = Ipv6Addr::new(0xfd93, x as u16, 0, 0, 0, 0, 0, peer_ip6);
    let host = open_ns("/proc/self/ns/net");
    let peer = if peer_ns {
        open_ns(&format!("/run/netns/{cn}"))
    } else {
        host
    };
    // The peer's listener, in the peer's namespace.
    setns(peer);
    let ls = vec![
        listener(SocketAddr::new(IpAddr::V4(peer_ip), 0), None),
        listener(SocketAddr::new(IpAddr::V6(peer_ip6), 0), Some(1)),
    ];
    setns(host);
    // SAFETY: integer-only syscall on ourselves (single-threaded).
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "unshare(CLONE_NEWNET): errno {}", errno());
    let own = open_ns("/proc/self/ns/net");
    setns(host);
    let own_path = format!("/proc/{pid}/fd/{own}");
    ip(&[
        "link",
        "add",
        &vo,
        "mtu",
        "1400",
        "type",
        "veth",
        "peer",
        "name",
        &vi,
        "mtu",
        "1400",
        "address",
        &format!("02:93:00:00:{:02x}:02", x),
        "netns",
        &own_path,
    ]);
    ip(&["link", "set", &vo, "master", &br, "up"]);
    setns(own);
    ip(&["link", "set", "lo", "up"]);
    ip(&["addr", "add", &format!("10.93.{x}.2/24"), "dev", &vi]);
    ip(&[
        "addr",
        "add",
        &format!("fd93:{x:x}::2/64"),
        "dev",
        &vi,
        "nodad",
    ]);
    ip(&["link", "set", &vi, "up"]);
    ip(&[
        "route",
        "add",
        "10.94.0.0/16",
        "via",
        &format!("10.93.{x}.1"),
    ]);
    // SAFETY: closing our own descriptors: neither may be in the tree.
    unsafe {
        libc::close(own);
        if peer != host {
            libc::close(host);
        }
    }
    (ls, peer, vi)
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let lo4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let lo6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0);
    let netns = args.get("netns").map(str::to_string);
    // The peer's listeners: IPv4, IPv6, and (--mapped) IPv4 again for a
    // dual-stack client; with --netns an IPv4 and an IPv6 one, in the peer's
    // namespace.
    let (ls, peer_ns, vi) = match &netns {
        Some(mode) => {
            let (ls, ns, vi) = net_setup(&proto, mode);
            (ls, Some(ns), Some(vi))
        }
        None => {
            let mut ls = vec![listener(lo4, None), listener(lo6, Some(1))];
            if args.flag("mapped") {
                ls.push(listener(lo4, None));
            }
            (ls, None, None)
        }
    };
    let addrs: Vec<SocketAddr> = ls.iter().filter_map(|&l| name(l, false)).collect();
    // The peer first: it must not inherit the program's connections.
    let half = args.flag("half-closed");
    start_peer(&proto, &ls, half, peer_ns);
    if let Some(ns) = peer_ns {
        // SAFETY: our copy is not needed any more.
        unsafe { libc::close(ns) };
    }
    let net_before = vi.as_deref().map(net_state);
    let mut ends: Vec<(String, End)> = Vec::new();
    for (k, a) in addrs.iter().enumerate() {
        let (family, to) = match k {
            0 => (libc::AF_INET, *a),
            1 => (libc::AF_INET6, *a),
            _ => {
                let m = match a.ip() {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                (libc::AF_INET6, SocketAddr::new(IpAddr::V6(m), a.port()))
            }
        };
        let fd = connect(family, to);
        ends.push((
            format!("outside peer over {to}"),
            End::new(fd, 200 + k as u64, 100 + k as u64),
        ));
    }
    // Both ends inside.
    let l = listener(lo4, None);
    let a = if args.flag("md5") {
        // Both ends sign with a key (TCP_MD5SIG): the listener's is
        // copied to the accepted end.
        md5_key(l, Ipv4Addr::LOCALHOST, b"inside key");
        let c = sock(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC);
        md5_key(c, Ipv4Addr::LOCALHOST, b"inside key");
        let to = name(l, false).unwrap_or(lo4);
        let (ss, len) = sockaddr(&to);
        // SAFETY: ss holds an address of length len.
        let r = unsafe { libc::connect(c, std::ptr::addr_of!(ss).cast(), len) };
        assert_eq!(r, 0, "connect {to} with a key: errno {}", errno());
        c
    } else {
        connect(libc::AF_INET, name(l, false).unwrap_or(lo4))
    };
    let b = accept(l);
    // SAFETY: the listener is not needed any more.
    unsafe { libc::close(l) };
    ends.push(("inside, writer".into(), End::new(a, 300, 301)));
    ends.push(("inside, reader".into(), End::new(b, 301, 300)));
    for (k, (_, e)) in ends.iter_mut().enumerate() {
        nonblock(e.fd);
        set(e.fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (k % 2) as i32);
        set(
            e.fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            1 - (k % 2) as i32,
        );
        // SO_LINGER and the congestion algorithm, on every other end.
        if k % 2 == 0 {
            set_linger(e.fd, 1, 5 + k as i32);
            set_bytes(e.fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, b"reno");
        }
    }
    // Queues: the reader inside sends INSIDE_UNREAD bytes; every other end
    // writes until its send queue is full.
    let n = ends.len();
    for (k, (what, e)) in ends.iter_mut().enumerate() {
        let amount = if k == n - 1 {
            Some(INSIDE_UNREAD)
        } else if half && k == 1 {
            // Fits: its FIN is acknowledged (FIN_WAIT2).
            Some(1000)
        } else {
            None
        };
        if let Err(m) = push(e.fd, e.tx_seed, &mut e.tx, amount) {
            report.fail(format!("{what}: filling: {m}"));
        }
    }
    for (k, (_, e)) in ends.iter().enumerate() {
        let want = if k < n - 2 {
            PEER_UNREAD
        } else if k == n - 2 {
            INSIDE_UNREAD
        } else {
            1
        };
        await_inq(e.fd, want);
    }
    if half {
        half_closed_setup(&proto, &mut ends, &mut report);
    }
    let saved: Vec<Before> = ends.iter().map(|(_, e)| before(e.fd)).collect();
    proto.ready_and_wait();
    if args.corrupt() {
        ends[0].1.rx_seed ^= 1;
    }
    for ((what, e), b) in ends.iter().zip(&saved) {
        check_same(&mut report, what, e.fd, b);
    }
    if let (Some(vi), Some(b)) = (&vi, &net_before) {
        let now = net_state(vi);
        for (k, (b, a)) in b.iter().zip(&now).enumerate() {
            report.eq(&format!("namespace state {k} (ip)"), b, a);
        }
    }
    if args.flag("md5") {
        // Both ends of the inside connection still hold a key, as `ss`
        // shows it (inet sock_diag: no call reads a key back).
        let port = name(ends[n - 1].1.fd, false).map_or(0, |a| a.port());
        let filter = format!("( sport = :{port} or dport = :{port} )");
        let out = std::process::Command::new("ss")
            .args(["-tinH", "state", "established", &filter])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        report.eq(
            "ends with a TCP_MD5SIG key (ss md5keys)",
            2,
            out.matches("md5keys:127.0.0.1/32").count(),
        );
    }
    totals_from_files(
        &proto,
        &mut ends.iter_mut().map(|(_, e)| e).collect::<Vec<_>>(),
    );
    if args.flag("close") {
        for (what, e) in &ends {
            check_closed(&mut report, what, e.fd);
        }
        proto.finish(&report);
    }
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = ends
            .iter_mut()
            .map(|(_, e)| s.spawn(move || carry_on(e).inspect_err(|_| abort(e.fd))))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    for ((what, _), r) in ends.iter().zip(results) {
        match r {
            Ok(m) => eprintln!("tp_tcp: {what}: {m}"),
            Err(m) => report.fail(format!("{what}: {m}")),
        }
    }
    for k in 0..addrs.len() {
        let path = peer_result(&proto, k);
        let t = Instant::now();
        let line = loop {
            if let Ok(s) = std::fs::read_to_string(&path) {
                break s;
            }
            if t.elapsed() > Duration::from_secs(20) {
                break "FAIL: no verdict".into();
            }
            stasis_tests::nap(stasis_tests::POLL_NS);
        };
        report.check(line.starts_with("PASS"), || {
            format!("peer {k}: {}", line.trim())
        });
    }
    proto.finish(&report);
}
