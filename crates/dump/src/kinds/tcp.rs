//! TCP connections (criu's `--tcp-established`, `--tcp-close`), on the
//! `pidfd_getfd` duplicate [`super::inet`] identified: both addresses, the
//! options (as [`super::inet::options`] reads them, less TCP_MAXSEG and
//! TCP_WINDOW_CLAMP, which the connection's own state carries, and the
//! multicast ones) and, with
//! `--tcp-established`, the repair-mode state (`tcprepair::dump`: sequences,
//! both queues, MSS, window scales, SACK, timestamps, window). The socket
//! stays in repair mode: when the dump kills the process it closes without
//! a word to the peer (the network lock, `crate::netlock`, holds the rest);
//! a failed dump or `--leave-running` turns repair off again.
//!
//! Saved: ESTABLISHED and the half-closed states FIN_WAIT1, FIN_WAIT2,
//! CLOSING, CLOSE_WAIT, LAST_ACK (IPv4, IPv6, v4-mapped on dual-stack
//! sockets); with `--tcp-close` any connected state, restored closed.
//! Refused by name: any connection without either option, and
//! connections not yet established (SYN_SENT, SYN_RECV).

use super::{Fd, TcpMode};
use crate::{At, Result, Stage};
use stasis_image::kinds::inet::{TcpStream, TcpWindow, MAX_TCP_QUEUE};
use stasis_image::FdKind;
use stasis_sys::{sock, tcprepair};
use std::os::fd::OwnedFd;

/// Options the repaired connection carries itself, and multicast options
/// (an accepted connection inherits values no TCP socket may set).
const NOT_OPTIONS: &[&str] = &[
    "TCP_MAXSEG",
    "TCP_WINDOW_CLAMP",
    "IP_MULTICAST_TTL",
    "IP_MULTICAST_LOOP",
    "IPV6_MULTICAST_HOPS",
    "IPV6_MULTICAST_LOOP",
    "IP_MULTICAST_IF",
    "IPV6_MULTICAST_IF",
];

/// The kernel's name of a TCP state.
pub(crate) fn state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}

fn image_stream(s: tcprepair::Stream) -> TcpStream {
    let w = s.window;
    TcpStream {
        state: s.state,
        rcv_nxt: s.rcv_nxt,
        write_seq: s.write_seq,
        recv_queue: s.recv_queue,
        send_queue: s.send_queue,
        unsent: s.unsent,
        mss: s.mss,
        wscale: s.wscale,
        sack: s.sack,
        timestamp: s.timestamp,
        window: TcpWindow {
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window,
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
        },
    }
}

/// A connected TCP socket in state `state` (not LISTEN, not CLOSE).
pub(super) fn connection(d: &Fd<'_>, dup: &OwnedFd, family: i32, state: u8) -> Result<FdKind> {
    let (pid, st) = (d.pid, Stage::Check);
    let name = state_name(state);
    let mode = d.sockets.tcp;
    if matches!(state, 2 | 3) {
        return Err(d.refuse(&format!(
            "a TCP connection not yet established (state {name}; not supported)"
        )));
    }
    if mode == TcpMode::Refuse {
        let ends = match (sock::local_addr(dup), sock::peer_addr(dup)) {
            (Ok(Some(l)), Ok(Some(p))) => format!(" {l} -> {p}"),
            _ => String::new(),
        };
        return Err(d.refuse(&format!(
            "a TCP connection{ends} in state {name} (criu's --tcp-established saves it, \
             --tcp-close restores it closed)"
        )));
    }
    if mode == TcpMode::Established && !matches!(state, 1 | 4 | 5 | 8 | 9 | 11) {
        return Err(d.refuse(&format!(
            "a TCP connection in state {name} (not supported; --tcp-close restores it closed)"
        )));
    }
    let (Some(local), Some(peer)) = (
        sock::local_addr(dup).at(pid, st)?,
        sock::peer_addr(dup).at(pid, st)?,
    ) else {
        return Err(d.refuse(&format!(
            "a TCP connection in state {name} without both addresses"
        )));
    };
    let mut o = super::inet::options(d, dup, family, libc::SOCK_STREAM, libc::IPPROTO_TCP)?;
    o.ints.retain(|k, _| !NOT_OPTIONS.contains(&k.as_str()));
    let stream = if mode == TcpMode::Established {
        let s = tcprepair::dump(dup, MAX_TCP_QUEUE).map_err(|e| {
            d.refuse(&format!(
                "a TCP connection {local} -> {peer} whose state cannot be read: {e}"
            ))
        })?;
        log::debug!(
            "pid {pid}: fd {}: TCP {local} -> {peer}: {} bytes to read, {} to send ({} unsent)",
            d.fd,
            s.recv_queue.len(),
            s.send_queue.len(),
            s.unsent
        );
        Some(Box::new(image_stream(s)))
    } else {
        None
    };
    Ok(FdKind::TcpConnection {
        family: family as u32,
        local,
        peer,
        stream,
        opts: o.ints,
        device: o.device,
        extra: o.extra,
        flags: d.flags(),
    })
}
