//! TCP connections: a new socket gets the saved device and options
//! (buffer sizes forced, before the queues are refilled), then the
//! connection is rebuilt in repair mode (`tcprepair::restore`: bind,
//! sequences, connect without a SYN, TCP options, both queues, window).
//! Repair stays on through the fork; [`go_live`], the last step before the
//! tree resumes, releases the dump's network lock and turns repair off, so
//! the peers see the connection carry on. A connection dumped with
//! `--tcp-close`, or any with `restore --tcp-close`, comes back closed as
//! criu makes it: a new socket shut down both ways (reads end of file,
//! writes EPIPE).

use super::{Cx, Opened};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::kinds::inet::{NetLock, SockExtra, TcpStream};
use stasis_sys::netlock::{self, Method};
use stasis_sys::{sock, tcprepair, util};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// One saved connection, as the image has it.
pub(super) struct Saved<'a> {
    pub(super) family: u32,
    pub(super) local: &'a SocketAddr,
    pub(super) peer: &'a SocketAddr,
    pub(super) stream: Option<&'a TcpStream>,
    pub(super) opts: &'a BTreeMap<String, i32>,
    pub(super) extra: &'a SockExtra,
    pub(super) device: &'a str,
    pub(super) flags: u32,
}

fn sys_stream(s: &TcpStream) -> tcprepair::Stream {
    let w = s.window;
    tcprepair::Stream {
        state: s.state,
        rcv_nxt: s.rcv_nxt,
        write_seq: s.write_seq,
        recv_queue: s.recv_queue.clone(),
        send_queue: s.send_queue.clone(),
        unsent: s.unsent,
        mss: s.mss,
        wscale: s.wscale,
        sack: s.sack,
        timestamp: s.timestamp,
        window: tcprepair::Window {
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window,
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
        },
    }
}

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, s: &Saved<'_>) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let fd = sock::socket(s.family as i32, libc::SOCK_STREAM, libc::IPPROTO_TCP).at(pid, st)?;
    super::inet::device_and_options(cx, &fd, s.device, s.opts, s.extra, s.family)?;
    match s.stream.filter(|_| !o.tcp_close) {
        Some(stream) => {
            tcprepair::restore(&fd, &sys_stream(stream), s.local, s.peer).map_err(|mut e| {
                e.op = format!("fd {}: TCP {} -> {}: {}", cx.fd, s.local, s.peer, e.op);
                RestoreError::Sys {
                    pid,
                    stage: st,
                    source: e,
                }
            })?;
            o.repaired
                .push(fd.try_clone().map_err(|source| RestoreError::Io {
                    pid,
                    stage: st,
                    what: format!("fd {}: dup of a TCP connection", cx.fd),
                    source,
                })?);
        }
        None => {
            // criu's --tcp-close: a socket shut down both ways.
            if let Err(e) = sock::shutdown(&fd, 3) {
                if e.source.raw_os_error() != Some(libc::ENOTCONN) {
                    return Err(e).at(pid, st);
                }
            }
        }
    }
    util::set_status_flags(&fd, (s.flags as i32) & libc::O_NONBLOCK).at(pid, st)?;
    Ok(o.push(fd))
}

/// The last step before the tree resumes: the dump's network lock
/// released (a lock already gone is only logged: a restore done before
/// released it), then every rebuilt connection out of repair mode.
pub(crate) fn go_live(pid: u32, lock: Option<&NetLock>, repaired: Vec<OwnedFd>) -> Result<()> {
    let st = Stage::Resume;
    if let Some(l) = lock {
        let method = Method::parse(&l.method).unwrap_or(Method::Skip);
        if netlock::exists(method, &l.name) {
            netlock::unlock(method, &l.name).at(pid, st)?;
            log::info!("network lock {} ({}) released", l.name, l.method);
        } else {
            log::warn!(
                "network lock {} ({}) is not there any more: not released",
                l.name,
                l.method
            );
        }
    }
    for fd in &repaired {
        tcprepair::set_repair(fd, 0).at(pid, st)?;
    }
    Ok(())
}
