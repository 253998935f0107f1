//! TCP repair mode (TCP_REPAIR and friends) on a socket of our own: a
//! `pidfd_getfd` duplicate of a process's connection at dump, a new socket
//! at restore. The sequences are the ones measured in DESIGN.md ("TCP
//! repair from outside", "TCP restore sequence that worked").

use crate::sock;
use crate::{check, Result, SysError};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const NO_QUEUE: i32 = 0;
const RECV_QUEUE: i32 = 1;
const SEND_QUEUE: i32 = 2;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
/// Bytes handed to the kernel per send while refilling a queue (the
/// receive queue takes one buffer per call).
const CHUNK: usize = 64 << 10;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const CLOSING: u8 = 11;

/// Our FIN was sent: it takes the sequence number after the send queue.
fn our_fin(state: u8) -> bool {
    matches!(state, FIN_WAIT1 | FIN_WAIT2 | LAST_ACK | CLOSING)
}

/// The peer's FIN was received: it took the sequence number after the
/// receive queue.
fn peer_fin(state: u8) -> bool {
    matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING)
}

/// The kernel's `struct tcp_repair_window`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// Everything repair mode reads of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    /// TCP state (1 established, 4 FIN_WAIT1, ...), from TCP_INFO.
    pub state: u8,
    /// Receive queue: rcv_nxt (the sequence after its last byte).
    pub rcv_nxt: u32,
    /// Send queue: write_seq (the sequence after its last byte).
    pub write_seq: u32,
    /// Bytes received, not read by the process.
    pub recv_queue: Vec<u8>,
    /// Bytes written by the process, not acknowledged (sent or not).
    pub send_queue: Vec<u8>,
    /// Of `send_queue`, the last bytes never sent.
    pub unsent: u32,
    pub mss: u32,
    /// Window scaling: Some((send, receive)) if negotiated.
    pub wscale: Option<(u8, u8)>,
    pub sack: bool,
    /// Timestamps: Some(current tsval) if negotiated.
    pub timestamp: Option<u32>,
    pub window: Window,
}

/// TCP_REPAIR on (1), off (0), or off without a window probe (-1).
pub fn set_repair(fd: &OwnedFd, v: i32) -> Result<()> {
    sock::set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, v)
}

fn ioctl_int(fd: &OwnedFd, req: libc::c_ulong, name: &str) -> Result<u32> {
    let mut v: i32 = 0;
    // SAFETY: these ioctls write one int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) };
    check(r.into(), name, None)?;
    Ok(v as u32)
}

/// MSG_PEEK of `len` bytes of the queue repair mode selected.
fn peek(fd: &OwnedFd, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    if len == 0 {
        return Ok(b);
    }
    // SAFETY: b is a live buffer of len bytes.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            b.as_mut_ptr().cast(),
            len,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    check(
        n as libc::c_long,
        &format!("recv(MSG_PEEK) of the {what}"),
        None,
    )?;
    if n as usize != len {
        return Err(SysError::other(
            format!("recv(MSG_PEEK) of the {what}"),
            None,
            format!("{n} of {len} bytes"),
        ));
    }
    Ok(b)
}

/// The queue sequence of `queue` (and select it for a peek).
fn queue_seq(fd: &OwnedFd, queue: i32) -> Result<u32> {
    sock::set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)?;
    sock::get_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ).map(|v| v as u32)
}

/// TCP_REPAIR_WINDOW (the kernel wants exactly its struct's size).
/// Selects `queue` and sets its sequence (where its first byte will be).
fn set_queue_seq(fd: &OwnedFd, queue: i32, seq: u32) -> Result<()> {
    sock::set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)?;
    sock::set_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ, seq as i32)
}

fn get_window(fd: &OwnedFd) -> Result<Window> {
    let mut w = [0u32; 5];
    let mut len = std::mem::size_of_val(&w) as libc::socklen_t;
    // SAFETY: w and len are live out-parameters; len is w's size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_REPAIR_WINDOW,
            w.as_mut_ptr().cast(),
            &mut len,
        )
    };
    check(r.into(), "getsockopt(TCP_REPAIR_WINDOW)", None)?;
    Ok(Window {
        snd_wl1: w[0],
        snd_wnd: w[1],
        max_window: w[2],
        rcv_wnd: w[3],
        rcv_wup: w[4],
    })
}

/// TCP state of a socket (TCP_INFO's first byte).
pub fn state(fd: &OwnedFd) -> Result<u8> {
    let info = sock::get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    Ok(info.first().copied().unwrap_or(7))
}

/// Puts the connection in repair mode and reads it; repair stays on (the
/// caller turns it off if the process goes on running). `limit` caps each
/// queue.
pub fn dump(fd: &OwnedFd, limit: usize) -> Result<Stream> {
    let info = sock::get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    if info.len() < 8 {
        return Err(SysError::other("TCP_INFO", None, "short answer"));
    }
    let inq = ioctl_int(fd, libc::FIONREAD, "ioctl(SIOCINQ)")? as usize;
    let mut outq = ioctl_int(fd, libc::TIOCOUTQ, "ioctl(SIOCOUTQ)")? as usize;
    let mut unsent = ioctl_int(fd, SIOCOUTQNSD, "ioctl(SIOCOUTQNSD)")?;
    // Our FIN, not yet acknowledged, takes a sequence number at the end
    // of the send queue (unsent if `unsent` counts it) but no byte.
    if matches!(info[0], FIN_WAIT1 | LAST_ACK | CLOSING) && outq > 0 {
        outq -= 1;
        unsent = unsent.saturating_sub(1);
    }
    if inq > limit || outq > limit {
        return Err(SysError::other(
            "TCP queues",
            None,
            format!("{inq} bytes to read and {outq} to send, more than {limit}"),
        ));
    }
    set_repair(fd, 1)?;
    let rcv_nxt = queue_seq(fd, RECV_QUEUE)?;
    let recv_queue = peek(fd, inq, "receive queue")?;
    let write_seq = queue_seq(fd, SEND_QUEUE)?;
    let send_queue = peek(fd, outq, "send queue")?;
    sock::set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, NO_QUEUE)?;
    let opts = info[5];
    let timestamp = if opts & TCPI_OPT_TIMESTAMPS != 0 {
        Some(sock::get_int(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP)? as u32)
    } else {
        None
    };
    Ok(Stream {
        state: info[0],
        rcv_nxt,
        write_seq,
        recv_queue,
        send_queue,
        unsent,
        mss: sock::get_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG)? as u32,
        wscale: (opts & TCPI_OPT_WSCALE != 0).then_some((info[6] & 0xf, info[6] >> 4)),
        sack: opts & TCPI_OPT_SACK != 0,
        timestamp,
        window: get_window(fd)?,
    })
}

/// Sends `data` in chunks, non-blocking: in repair mode into the queue
/// selected, else as the process would.
fn send_chunks(fd: &OwnedFd, data: &[u8], what: &str) -> Result<()> {
    for c in data.chunks(CHUNK) {
        sock::send_all(fd, c, true).map_err(|mut e| {
            e.op = format!("{} ({what}, {} bytes)", e.op, data.len());
            e
        })?;
    }
    Ok(())
}

fn set_options(fd: &OwnedFd, s: &Stream) -> Result<()> {
    let mut opts: Vec<(u32, u32)> = vec![(2, s.mss)];
    if let Some((snd, rcv)) = s.wscale {
        opts.push((3, u32::from(snd) | (u32::from(rcv) << 16)));
    }
    if s.sack {
        opts.push((4, 0));
    }
    if s.timestamp.is_some() {
        opts.push((8, 0));
    }
    let bytes: Vec<u8> = opts
        .iter()
        .flat_map(|(c, v)| c.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
        .collect();
    sock::set_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &bytes)?;
    if let Some(ts) = s.timestamp {
        sock::set_int(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP, ts as i32)?;
    }
    Ok(())
}

/// Both queues, in repair mode: the receive queue, the sent part of the
/// send queue, then the unsent part through the normal path (repair mode
/// would count it as sent).
fn fill_queues(fd: &OwnedFd, s: &Stream) -> Result<()> {
    sock::set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, RECV_QUEUE)?;
    send_chunks(fd, &s.recv_queue, "receive queue")?;
    let sent = s.send_queue.len() - (s.unsent as usize).min(s.send_queue.len());
    sock::set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, SEND_QUEUE)?;
    send_chunks(fd, &s.send_queue[..sent], "send queue, sent part")?;
    if sent < s.send_queue.len() {
        set_repair(fd, TCP_REPAIR_OFF_NO_WP)?;
        let r = send_chunks(fd, &s.send_queue[sent..], "send queue, unsent part");
        set_repair(fd, 1)?;
        r?;
    }
    Ok(())
}

/// Rebuilds the connection `local` — `peer` on a new TCP socket whose
/// options and buffer sizes are set: repair on, bind, queue sequences,
/// connect (no SYN), TCP options, the queues, the window. Repair stays on
/// (see [`set_repair`]) until the caller's network lock is released.
///
/// Half-closed states are rebuilt as ESTABLISHED without the FINs'
/// sequence numbers, then: our FIN (FIN_WAIT1, FIN_WAIT2, LAST_ACK,
/// CLOSING) by shutdown(SHUT_WR), sent (again) once the lock is released
/// (a peer that had it acknowledges it again: FIN_WAIT2 comes back as
/// FIN_WAIT1 until then); the peer's (CLOSE_WAIT, LAST_ACK, CLOSING) by a
/// forged FIN|ACK through a raw socket, before our shutdown except in
/// CLOSING.
pub fn restore(fd: &OwnedFd, s: &Stream, local: &SocketAddr, peer: &SocketAddr) -> Result<()> {
    let write_seq = s.write_seq.wrapping_sub(u32::from(our_fin(s.state)));
    let rcv_nxt = s.rcv_nxt.wrapping_sub(u32::from(peer_fin(s.state)));
    set_repair(fd, 1)?;
    sock::bind(fd, local)?;
    let outq = s.send_queue.len() as u32;
    let inq = s.recv_queue.len() as u32;
    set_queue_seq(fd, RECV_QUEUE, rcv_nxt.wrapping_sub(inq))?;
    set_queue_seq(fd, SEND_QUEUE, write_seq.wrapping_sub(outq))?;
    sock::connect(fd, peer)?;
    set_options(fd, s)?;
    // Room for the queues while they are refilled (the skbs take more than
    // the bytes), then the buffer sizes set before are put back.
    let bufs = [
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, s.send_queue.len()),
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, s.recv_queue.len()),
    ];
    let mut before = Vec::new();
    for (get, force, q) in bufs {
        let cur = sock::get_int(fd, libc::SOL_SOCKET, get)?;
        let room = (q.saturating_mul(4) + (1 << 20)).min(i32::MAX as usize / 2) as i32;
        if q > 0 && room > cur {
            before.push((force, cur));
            sock::set_int(fd, libc::SOL_SOCKET, force, room)?;
        }
    }
    fill_queues(fd, s)?;
    for (force, cur) in before {
        sock::set_int(fd, libc::SOL_SOCKET, force, cur / 2)?;
    }
    let mut w = s.window;
    // The kernel refuses a window update beyond rcv_nxt: the peer's FIN
    // is not received yet.
    if (w.rcv_wup.wrapping_sub(rcv_nxt) as i32) > 0 {
        w.rcv_wup = rcv_nxt;
    }
    let bytes: Vec<u8> = [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    sock::set_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &bytes)?;
    sock::set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, NO_QUEUE)?;
    let fins = Fins {
        local,
        peer,
        seq: rcv_nxt,
        ack: write_seq.wrapping_sub(outq),
    };
    match s.state {
        CLOSING => {
            shut_write(fd)?;
            fins.receive(fd, s, CLOSING)
        }
        st => {
            if peer_fin(st) {
                fins.receive(fd, s, CLOSE_WAIT)?;
            }
            if our_fin(st) {
                shut_write(fd)?;
            }
            Ok(())
        }
    }
}

/// shutdown(SHUT_WR) out of repair mode: the FIN is queued (and sent once
/// the lock is released).
fn shut_write(fd: &OwnedFd) -> Result<()> {
    set_repair(fd, TCP_REPAIR_OFF_NO_WP)?;
    let r = sock::shutdown(fd, 2);
    set_repair(fd, 1)?;
    r
}

/// The peer's FIN, forged: from `peer` to `local`, sequence `seq` (the
/// receive queue's end), acknowledging `ack` (nothing new).
struct Fins<'a> {
    local: &'a SocketAddr,
    peer: &'a SocketAddr,
    seq: u32,
    ack: u32,
}

impl Fins<'_> {
    /// Sends the FIN through a raw socket (marked: the network lock lets
    /// it in) and waits (up to a second) for the socket to reach `want`.
    fn receive(&self, fd: &OwnedFd, s: &Stream, want: u8) -> Result<()> {
        let (src, dst) = (
            crate::netlock::on_wire(self.peer),
            crate::netlock::on_wire(self.local),
        );
        let shift = s.wscale.map_or(0, |w| w.0);
        let win = (s.window.snd_wnd >> shift).min(0xffff) as u16;
        let mut tcp = Vec::with_capacity(20);
        tcp.extend_from_slice(&src.port().to_be_bytes());
        tcp.extend_from_slice(&dst.port().to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.extend_from_slice(&[5 << 4, 0x11]); // 20-byte header; FIN|ACK
        tcp.extend_from_slice(&win.to_be_bytes());
        tcp.extend_from_slice(&[0; 4]); // checksum, urgent pointer
        let ck = crate::udpq::l4_checksum(src.ip(), dst.ip(), libc::IPPROTO_TCP as u8, &tcp);
        tcp[16..18].copy_from_slice(&ck.to_be_bytes());
        let proto = libc::IPPROTO_TCP as u8;
        crate::udpq::send_raw(src.ip(), dst.ip(), proto, &tcp, crate::netlock::MARK)?;
        let t = std::time::Instant::now();
        loop {
            let st = state(fd)?;
            if st == want {
                return Ok(());
            }
            if t.elapsed() > std::time::Duration::from_secs(1) {
                return Err(SysError::other(
                    "the peer's FIN, forged",
                    None,
                    format!("the socket is in state {st}, not {want}"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
