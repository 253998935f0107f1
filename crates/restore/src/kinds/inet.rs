//! TCP and UDP sockets: a new socket gets the saved options (each by its
//! name in `sock::INET_OPTS`; buffer sizes with the FORCE variants, halved
//! since the kernel doubles them) and device, then is bound, listened on
//! (TCP, with the saved backlog) or connected (UDP). SO_REUSEADDR is on
//! while binding (the dead process's connections may linger in TIME_WAIT
//! on the port) and set to its saved value afterwards. TCP_FASTOPEN and
//! TCP_DEFER_ACCEPT are set once listening. A UDP socket's waiting
//! datagrams are sent to it again from their sources through a raw socket.

use super::{Cx, Opened};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::kinds::inet::{Membership, SockExtra, UdpDatagram};
use stasis_sys::{mcast, sock, udpq, util};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

const AFTER_LISTEN: &[&str] = &["TCP_FASTOPEN", "TCP_DEFER_ACCEPT"];

/// One saved socket, as the image has it.
pub(super) struct Saved<'a> {
    pub(super) family: u32,
    pub(super) local: Option<&'a SocketAddr>,
    pub(super) peer: Option<&'a SocketAddr>,
    /// TCP: Some(backlog) for a listener.
    pub(super) listen: Option<i32>,
    pub(super) opts: &'a BTreeMap<String, i32>,
    pub(super) extra: &'a SockExtra,
    pub(super) device: &'a str,
    pub(super) flags: u32,
    /// UDP: the datagrams waiting.
    pub(super) queued: &'a [UdpDatagram],
    /// UDP: multicast group memberships.
    pub(super) memberships: &'a [Membership],
}

fn set_opt(cx: &Cx<'_>, fd: &OwnedFd, name: &str, v: i32) -> Result<()> {
    sock::set_named(fd, sock::INET_OPTS, name, v)
        .map_err(|mut e| {
            e.op = format!("fd {}: {}", cx.fd, e.op);
            e
        })
        .at(cx.pid, Stage::Fork)
}

/// The waiting datagrams, sent again from their sources through a raw
/// socket; waits (up to a second) until the socket holds them all.
fn requeue(cx: &Cx<'_>, fd: &OwnedFd, s: &Saved<'_>) -> Result<()> {
    let (pid, st) = (cx.pid, Stage::Fork);
    if s.queued.is_empty() {
        return Ok(());
    }
    let port = s.local.map_or(0, |a| a.port());
    for g in s.queued {
        let d = udpq::Datagram {
            from: g.from,
            to: g.to,
            data: g.data.clone(),
        };
        udpq::inject(&d, port)
            .map_err(|mut e| {
                e.op = format!("fd {}: {}", cx.fd, e.op);
                e
            })
            .at(pid, st)?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let got = udpq::peek_datagrams(fd, s.family as i32, usize::MAX).at(pid, st)?;
        if got.len() >= s.queued.len() {
            let same = got
                .iter()
                .zip(s.queued)
                .all(|(a, b)| a.data == b.data && a.from == b.from);
            if same {
                return Ok(());
            }
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!(
                    "fd {}: the requeued datagrams differ from the saved ones",
                    cx.fd
                ),
            });
        }
        if std::time::Instant::now() > deadline {
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!(
                    "fd {}: {} of {} requeued datagrams arrived",
                    cx.fd,
                    got.len(),
                    s.queued.len()
                ),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The device bound to and the options (those set once listening aside).
pub(super) fn device_and_options(
    cx: &Cx<'_>,
    fd: &OwnedFd,
    device: &str,
    opts: &BTreeMap<String, i32>,
    extra: &SockExtra,
    family: u32,
) -> Result<()> {
    if !device.is_empty() {
        sock::set_bytes(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            device.as_bytes(),
        )
        .at(cx.pid, Stage::Fork)?;
    }
    set_extra(fd, family, extra)
        .map_err(|mut e| {
            e.op = format!("fd {}: {}", cx.fd, e.op);
            e
        })
        .at(cx.pid, Stage::Fork)?;
    for (name, &v) in opts {
        if !AFTER_LISTEN.contains(&name.as_str()) && !already(fd, name, v) {
            set_opt(cx, fd, name, v)?;
        }
    }
    Ok(())
}

/// Whether the new socket has the option at the saved value already: a
/// value that follows from others (TCP_MAXSEG of a socket with IP
/// options) is then not set, the kernel may refuse it as a setting.
fn already(fd: &OwnedFd, name: &str, v: i32) -> bool {
    let Some(&(_, level, opt)) = sock::INET_OPTS.iter().find(|(n, _, _)| *n == name) else {
        return false;
    };
    sock::get_int(fd, level, opt).is_ok_and(|now| now == v)
}

/// A classic BPF filter, SO_LINGER, TCP_CONGESTION, IP_OPTIONS and TCP_MD5SIG keys, where saved
/// (before the int options: IP options change TCP_MAXSEG's reading; keys
/// before a listen or a connection's rebuild).
fn set_extra(fd: &OwnedFd, family: u32, e: &SockExtra) -> stasis_sys::Result<()> {
    if !e.filter.is_empty() {
        stasis_sys::nlsock::attach_filter(fd, &e.filter)?;
    }
    for k in &e.md5 {
        sock::add_md5_key(fd, family as i32, k.addr, k.prefixlen, &k.key)?;
    }
    if let Some(l) = e.linger {
        sock::set_linger(fd, l)?;
    }
    if !e.congestion.is_empty() {
        sock::set_bytes(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            e.congestion.as_bytes(),
        )?;
    }
    if !e.ip_options.is_empty() {
        sock::set_bytes(fd, libc::IPPROTO_IP, libc::IP_OPTIONS, &e.ip_options)?;
    }
    Ok(())
}

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, s: &Saved<'_>, tcp: bool) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let (ty, proto) = if tcp {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP)
    } else {
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP)
    };
    let fd = sock::socket(s.family as i32, ty, proto).at(pid, st)?;
    device_and_options(cx, &fd, s.device, s.opts, s.extra, s.family)?;
    if let Some(a) = s.local {
        sock::set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).at(pid, st)?;
        sock::bind(&fd, a).at(pid, st)?;
        let reuse = s.opts.get("SO_REUSEADDR").copied().unwrap_or(0);
        sock::set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse).at(pid, st)?;
    }
    if let Some(backlog) = s.listen {
        sock::listen(&fd, backlog).at(pid, st)?;
    }
    for m in s.memberships {
        let m = mcast::Member {
            ifindex: m.ifindex,
            group: m.group,
            include: m.include,
            sources: m.sources.clone(),
            total_sources: m.sources.len(),
        };
        mcast::join(&fd, &m)
            .map_err(|mut e| {
                e.op = format!("fd {}: {}", cx.fd, e.op);
                e
            })
            .at(pid, st)?;
    }
    for (name, &v) in s.opts {
        if AFTER_LISTEN.contains(&name.as_str()) {
            set_opt(cx, &fd, name, v)?;
        }
    }
    if let Some(a) = s.peer {
        sock::connect(&fd, a).at(pid, st)?;
    }
    requeue(cx, &fd, s)?;
    util::set_status_flags(&fd, (s.flags as i32) & libc::O_NONBLOCK).at(pid, st)?;
    Ok(o.push(fd))
}
