//! TCP and UDP sockets, read from a `pidfd_getfd` duplicate of the
//! process's socket: family, type and protocol (SO_DOMAIN, SO_TYPE,
//! SO_PROTOCOL), addresses, state (TCP_INFO), the int options of
//! `sock::INET_OPTS` that differ from a new socket's, the bound device;
//! for a listener its backlog and accept queue from inet sock_diag.
//!
//! Saved: TCP sockets that are not connected (listening, or bound or not);
//! UDP sockets bound and/or connected, with the datagrams waiting (their
//! sources and destinations: `udpq`); a classic BPF filter (SO_GET_FILTER).
//! Connected TCP sockets go to [`super::tcp`]; netlink, packet, raw IP
//! and ping sockets to [`super::netsk`]. Refused by name: connections
//! waiting in a listener's accept queue (unless `--skip-in-flight`, which
//! drops them), empty or corked datagrams, an eBPF filter, other
//! protocols over IP (SCTP, MPTCP) and other address families (AF_ALG,
//! vsock, XDP, ...). AF_UNIX is left to [`super::unix`].

use super::Fd;
use crate::{At, Result, Stage};
use stasis_image::kinds::inet::{Md5Key, Membership, SockExtra, UdpDatagram, MAX_UDP_QUEUED};
use stasis_image::FdKind;
use stasis_sys::{mcast, sock, sockdiag, udpq};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

const TCP_LISTEN: u8 = 10;
const TCP_CLOSE: u8 = 7;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if !d.link.starts_with("socket:[") {
        return Ok(None);
    }
    let (pid, st) = (d.pid, Stage::Check);
    let dup = d.dup()?;
    let int = |opt| sock::get_int(&dup, libc::SOL_SOCKET, opt).at(pid, st);
    let family = int(libc::SO_DOMAIN)?;
    let family_name = match family {
        libc::AF_UNIX => return Ok(None),
        libc::AF_INET | libc::AF_INET6 => "",
        libc::AF_NETLINK => return super::netsk::netlink(d, &dup).map(Some),
        libc::AF_PACKET => return super::netsk::packet(d, &dup).map(Some),
        libc::AF_ALG => "a crypto (AF_ALG) socket",
        libc::AF_VSOCK => "a vsock socket",
        libc::AF_BLUETOOTH => "a bluetooth socket",
        libc::AF_XDP => "an AF_XDP socket",
        _ => "a socket of an unknown address family",
    };
    if !family_name.is_empty() {
        return Err(d.refuse(&format!("{family_name} (family {family}, not supported)")));
    }
    let (ty, proto) = (int(libc::SO_TYPE)?, int(libc::SO_PROTOCOL)?);
    match (ty, proto) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => tcp(d, &dup, family).map(Some),
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => udp(d, &dup, family).map(Some),
        (libc::SOCK_RAW, _) => super::netsk::raw(d, &dup, family, ty, proto).map(Some),
        (libc::SOCK_DGRAM, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) => {
            super::netsk::raw(d, &dup, family, ty, proto).map(Some)
        }
        (_, libc::IPPROTO_SCTP) => Err(d.refuse("an SCTP socket (not supported)")),
        (_, libc::IPPROTO_MPTCP) => Err(d.refuse("an MPTCP socket (not supported)")),
        _ => Err(d.refuse(&format!(
            "an IP socket of type {ty}, protocol {proto} (not supported)"
        ))),
    }
}

/// What [`options`] reads: the int options and the others that differ
/// from a new socket's, the bound device.
pub(super) struct Options {
    pub(super) ints: BTreeMap<String, i32>,
    pub(super) extra: SockExtra,
    pub(super) device: String,
}

/// The options that differ from a new socket's, the bound device; refuses
/// an eBPF filter and an upper layer protocol (TCP_ULP).
pub(super) fn options(
    d: &Fd<'_>,
    dup: &OwnedFd,
    family: i32,
    ty: i32,
    proto: i32,
) -> Result<Options> {
    let fresh = sock::socket(family, ty, proto).at(d.pid, Stage::Check)?;
    options_with(d, dup, &fresh, family, proto)
}

/// [`options`], compared with the new socket `fresh` of the same kind.
pub(super) fn options_with(
    d: &Fd<'_>,
    dup: &OwnedFd,
    fresh: &OwnedFd,
    family: i32,
    proto: i32,
) -> Result<Options> {
    let (pid, st) = (d.pid, Stage::Check);
    let mut opts = BTreeMap::new();
    for &(name, level, opt) in sock::INET_OPTS {
        if !sock::opt_applies(level, family, proto) {
            continue;
        }
        // An option the kernel does not answer for this socket (or for a
        // new one) is not one it can have set.
        let (Ok(v), Ok(new)) = (
            sock::get_int(dup, level, opt),
            sock::get_int(fresh, level, opt),
        ) else {
            continue;
        };
        // IPV6_V6ONLY's default follows a sysctl (net.ipv6.bindv6only):
        // saved always, so a dual-stack socket stays one.
        if v != new || opt == libc::IPV6_V6ONLY {
            opts.insert(name.to_string(), v);
        }
    }
    let dev = sock::get_bytes(dup, libc::SOL_SOCKET, libc::SO_BINDTODEVICE).at(pid, st)?;
    Ok(Options {
        ints: opts,
        extra: SockExtra {
            filter: filter(d, dup)?,
            ..extra(d, dup, fresh, family, proto)?
        },
        device: String::from_utf8_lossy(&dev).into_owned(),
    })
}

/// The classic BPF filter attached to the socket (SO_ATTACH_FILTER), as
/// its instructions; an eBPF one (SO_ATTACH_BPF) cannot be read: refused.
pub(super) fn filter(d: &Fd<'_>, dup: &OwnedFd) -> Result<Vec<u8>> {
    stasis_sys::nlsock::get_filter(dup).map_err(|e| {
        d.refuse(&format!(
            "a socket whose BPF filter cannot be read (an eBPF program, SO_ATTACH_BPF: not \
             supported): {e}"
        ))
    })
}

/// SO_LINGER, TCP_CONGESTION and IP_OPTIONS where they differ from the
/// new socket `fresh`'s; refuses a ULP (kTLS and others), whose state
/// cannot be read.
fn extra(d: &Fd<'_>, dup: &OwnedFd, fresh: &OwnedFd, family: i32, proto: i32) -> Result<SockExtra> {
    let (pid, st) = (d.pid, Stage::Check);
    let mut e = SockExtra::default();
    let linger = sock::get_linger(dup).at(pid, st)?;
    if linger != sock::get_linger(fresh).at(pid, st)? {
        e.linger = Some(linger);
    }
    if proto == libc::IPPROTO_TCP {
        let ulp = sock::get_bytes(dup, libc::IPPROTO_TCP, libc::TCP_ULP).at(pid, st)?;
        if !ulp.is_empty() {
            let ulp = String::from_utf8_lossy(&ulp);
            return Err(d.refuse(&format!(
                "a TCP socket with the upper layer protocol {ulp:?} (TCP_ULP; kTLS and \
                 other ULPs keep state that cannot be read: not supported)"
            )));
        }
        e.md5 = md5_keys(d, dup, family)?;
        let cc = sock::get_bytes(dup, libc::IPPROTO_TCP, libc::TCP_CONGESTION).at(pid, st)?;
        if cc != sock::get_bytes(fresh, libc::IPPROTO_TCP, libc::TCP_CONGESTION).at(pid, st)? {
            e.congestion = String::from_utf8_lossy(&cc).into_owned();
        }
    }
    if family == libc::AF_INET {
        e.ip_options = sock::get_raw(dup, libc::IPPROTO_IP, libc::IP_OPTIONS).at(pid, st)?;
    }
    Ok(e)
}

/// The socket's TCP_MD5SIG keys, from inet sock_diag in the socket's
/// network namespace (a socket the kernel does not list there, neither
/// listening nor connected, shows none).
fn md5_keys(d: &Fd<'_>, dup: &OwnedFd, family: i32) -> Result<Vec<Md5Key>> {
    let (pid, st) = (d.pid, Stage::Check);
    let Some(ino) = d.socket_ino() else {
        return Ok(Vec::new());
    };
    let diag = stasis_sys::netlink::in_ns_of_socket(dup, move || {
        sockdiag::inet_sockets(family, libc::IPPROTO_TCP)
    })
    .at(pid, st)?
    .at(pid, st)?;
    Ok(diag
        .get(&ino)
        .map(|s| {
            s.md5
                .iter()
                .map(|k| Md5Key {
                    addr: k.addr,
                    prefixlen: k.prefixlen,
                    key: k.key.clone(),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Connections a listener has half-open (SYN received, the handshake not
/// finished; also a client's bare ACK held back by TCP_DEFER_ACCEPT): lost
/// at restore (the client's next segment draws a reset), so refused like
/// those waiting to be accepted unless criu's `--skip-in-flight`.
fn half_open(d: &Fd<'_>, dup: &OwnedFd, family: i32) -> Result<()> {
    let (pid, st) = (d.pid, Stage::Check);
    let Some(local) = sock::local_addr(dup).at(pid, st)? else {
        return Ok(());
    };
    // An IPv6 listener takes IPv4 clients too (unless IPV6_V6ONLY): their
    // requests are AF_INET ones.
    let reqs = stasis_sys::netlink::in_ns_of_socket(dup, move || {
        let mut v = sockdiag::tcp_syn_recv(family)?;
        if family == libc::AF_INET6 {
            v.extend(sockdiag::tcp_syn_recv(libc::AF_INET)?);
        }
        Ok::<_, stasis_sys::SysError>(v)
    })
    .at(pid, st)?
    .at(pid, st)?;
    let canon = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    let mine = |a: &std::net::SocketAddr| {
        a.port() == local.port()
            && (local.ip().is_unspecified() || canon(a.ip()) == canon(local.ip()))
    };
    let n = reqs.iter().filter(|a| mine(a)).count();
    if n == 0 {
        return Ok(());
    }
    if !d.sockets.skip_in_flight {
        return Err(d.refuse(&format!(
            "a listening TCP socket with {n} half-open connection(s) (SYN_RECV; criu's \
             --skip-in-flight drops them)"
        )));
    }
    log::warn!(
        "pid {pid}: fd {} ({}): {n} half-open connection(s) dropped (--skip-in-flight)",
        d.fd,
        d.link
    );
    Ok(())
}

fn tcp(d: &Fd<'_>, dup: &OwnedFd, family: i32) -> Result<FdKind> {
    let (pid, st) = (d.pid, Stage::Check);
    let info = sock::get_bytes(dup, libc::IPPROTO_TCP, libc::TCP_INFO).at(pid, st)?;
    let state = info.first().copied().unwrap_or(TCP_CLOSE);
    let (mut listening, mut backlog) = (false, 0);
    match state {
        TCP_CLOSE => {}
        TCP_LISTEN => {
            let ino = d.socket_ino().unwrap_or(0);
            // sock_diag answers for its own network namespace: the socket's.
            let diag = stasis_sys::netlink::in_ns_of_socket(dup, move || {
                sockdiag::inet_sockets(family, libc::IPPROTO_TCP)
            })
            .at(pid, st)?
            .at(pid, st)?;
            let Some(s) = diag.get(&ino) else {
                return Err(d.refuse("a listening TCP socket sock_diag does not list"));
            };
            if s.rqueue != 0 {
                if !d.sockets.skip_in_flight {
                    return Err(d.refuse(&format!(
                        "a listening TCP socket with {} connection(s) waiting to be accepted \
                         (not supported: only a new handshake puts a connection in an accept \
                         queue, and the kernel picks its server-side sequence numbers, which \
                         the peer already knows otherwise; criu's --skip-in-flight drops them)",
                        s.rqueue
                    )));
                }
                log::warn!(
                    "pid {pid}: fd {} ({}): {} connection(s) waiting to be accepted dropped \
                     (--skip-in-flight)",
                    d.fd,
                    d.link,
                    s.rqueue
                );
            }
            half_open(d, dup, family)?;
            listening = true;
            backlog = s.wqueue as i32;
        }
        s => return super::tcp::connection(d, dup, family, s),
    }
    let local = sock::local_addr(dup).at(pid, st)?.filter(|a| a.port() != 0);
    let o = options(d, dup, family, libc::SOCK_STREAM, libc::IPPROTO_TCP)?;
    Ok(FdKind::TcpSocket {
        family: family as u32,
        local,
        listening,
        backlog,
        opts: o.ints,
        device: o.device,
        extra: o.extra,
        flags: d.flags(),
    })
}

/// Options that make recvmsg report a datagram's metadata.
const RECV_METADATA: [&str; 10] = [
    "SO_TIMESTAMP",
    "SO_TIMESTAMPNS",
    "SO_RXQ_OVFL",
    "IP_PKTINFO",
    "IP_RECVTOS",
    "IP_RECVTTL",
    "IP_RECVORIGDSTADDR",
    "IPV6_RECVPKTINFO",
    "IPV6_RECVHOPLIMIT",
    "IPV6_RECVTCLASS",
];

fn udp(d: &Fd<'_>, dup: &OwnedFd, family: i32) -> Result<FdKind> {
    let (pid, st) = (d.pid, Stage::Check);
    let queued: Vec<UdpDatagram> = udpq::peek_datagrams(dup, family, MAX_UDP_QUEUED)
        .map_err(|e| {
            d.refuse(&format!(
                "a UDP socket whose waiting datagrams cannot be saved: {e}"
            ))
        })?
        .into_iter()
        .map(|g| UdpDatagram {
            from: g.from,
            to: g.to,
            data: g.data,
        })
        .collect();
    if sock::outq(dup).at(pid, st)? != 0 {
        return Err(d.refuse("a UDP socket with corked data not yet sent (not supported)"));
    }
    let local = sock::local_addr(dup).at(pid, st)?.filter(|a| a.port() != 0);
    let peer = sock::peer_addr(dup).at(pid, st)?;
    let o = options(d, dup, family, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
    // A waiting datagram is requeued through loopback at restore: the
    // receive time, TOS, TTL and incoming interface it then carries are
    // new. Refused where the program asked to be told them.
    if !queued.is_empty() {
        if let Some(name) = o.ints.keys().find(|n| RECV_METADATA.contains(&n.as_str())) {
            return Err(d.refuse(&format!(
                "a UDP socket with {} datagram(s) waiting and {name} on: the metadata it \
                 reports with each (receive time, TOS, TTL, interface) cannot be given back",
                queued.len()
            )));
        }
    }
    let memberships = memberships(d, dup, family)?;
    Ok(FdKind::UdpSocket {
        family: family as u32,
        local,
        peer,
        queued,
        opts: o.ints,
        device: o.device,
        extra: o.extra,
        flags: d.flags(),
        memberships,
    })
}

/// The socket's multicast memberships (`mcast::memberships`): refused
/// when a source filter is longer than can be read.
fn memberships(d: &Fd<'_>, dup: &OwnedFd, family: i32) -> Result<Vec<Membership>> {
    let found = mcast::memberships(d.pid, dup, family).at(d.pid, Stage::Check)?;
    let mut out = Vec::with_capacity(found.len());
    for m in found {
        if m.total_sources > m.sources.len() {
            return Err(d.refuse(&format!(
                "a UDP socket in multicast group {} with {} sources in its filter \
                 (more than {} not supported)",
                m.group,
                m.total_sources,
                mcast::MAX_SOURCES
            )));
        }
        out.push(Membership {
            ifindex: m.ifindex,
            group: m.group,
            include: m.include,
            sources: m.sources,
        });
    }
    Ok(out)
}
