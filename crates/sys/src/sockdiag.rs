//! AF_UNIX sockets as the kernel's sock_diag netlink interface reports them
//! (the same source as `ss -x`): type, state, peer, bound name, queued bytes.

use crate::{check, Result};
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_ICONS: u32 = 0x8;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// One AF_UNIX socket of our network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixSocket {
    pub ino: u64,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: u8,
    /// TCP-style state: 1 established, 7 close, 10 listen.
    pub state: u8,
    /// Inode of the peer, 0 if none (unconnected, or the peer was closed).
    pub peer: u64,
    /// Bound name (abstract names start with a NUL byte), if any.
    pub name: Option<Vec<u8>>,
    /// Bytes (stream) or messages waiting to be read; a listener: the
    /// connections waiting to be accepted.
    pub rqueue: u32,
    /// A listener: its backlog.
    pub wqueue: u32,
    /// RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2).
    pub shutdown: u8,
    /// A bound path: the socket file's inode and device (kernel form
    /// major << 20 | minor).
    pub vfs: Option<(u64, u32)>,
    /// A listener: the inodes of the clients waiting to be accepted.
    pub icons: Vec<u64>,
}

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Sends one sock_diag dump request (`req`: the family's request struct,
/// after the netlink header) and hands each answer's payload to `each`.
pub(crate) fn diag_dump(req_body: &[u8], mut each: impl FnMut(&[u8])) -> Result<()> {
    crate::netlink::transact(
        NETLINK_SOCK_DIAG,
        SOCK_DIAG_BY_FAMILY,
        crate::netlink::NLM_F_DUMP,
        req_body,
        |_, m| each(m),
    )
}

/// Every AF_UNIX socket of our network namespace, by inode.
pub fn unix_sockets() -> Result<HashMap<u64, UnixSocket>> {
    // unix_diag_req (24)
    let mut req = [0u8; 24];
    req[0] = libc::AF_UNIX as u8;
    req[4..8].copy_from_slice(&u32::MAX.to_le_bytes()); // all states
    req[12..16].copy_from_slice(
        &(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN | UDIAG_SHOW_VFS | UDIAG_SHOW_ICONS)
            .to_le_bytes(),
    );
    let mut out = HashMap::new();
    diag_dump(&req, |msg| {
        if msg.len() >= 16 {
            let mut s = UnixSocket {
                sock_type: msg[1],
                state: msg[2],
                ino: u64::from(u32le(msg, 4)),
                ..Default::default()
            };
            let mut a = 16;
            while a + 4 <= msg.len() {
                let alen = usize::from(u16le(msg, a));
                let aty = u16le(msg, a + 2);
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                let payload = &msg[a + 4..a + alen];
                match aty {
                    UNIX_DIAG_NAME => s.name = Some(payload.to_vec()),
                    UNIX_DIAG_PEER if payload.len() >= 4 => s.peer = u64::from(u32le(payload, 0)),
                    UNIX_DIAG_RQLEN if payload.len() >= 8 => {
                        s.rqueue = u32le(payload, 0);
                        s.wqueue = u32le(payload, 4);
                    }
                    UNIX_DIAG_SHUTDOWN if !payload.is_empty() => s.shutdown = payload[0],
                    UNIX_DIAG_VFS if payload.len() >= 8 => {
                        s.vfs = Some((u64::from(u32le(payload, 0)), u32le(payload, 4)));
                    }
                    UNIX_DIAG_ICONS => {
                        s.icons = payload
                            .chunks_exact(4)
                            .map(|c| u64::from(u32le(c, 0)))
                            .collect();
                    }
                    _ => {}
                }
                a += (alen + 3) & !3;
            }
            out.insert(s.ino, s);
        }
    })?;
    Ok(out)
}

/// One TCP or UDP socket of our network namespace, as inet sock_diag
/// reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InetSocket {
    pub ino: u64,
    /// TCP state (1 established, 7 close, 10 listen, ...).
    pub state: u8,
    /// A listener: connections waiting in its accept queue; otherwise
    /// bytes (TCP) or memory (UDP) in the receive queue.
    pub rqueue: u32,
    /// A listener: its backlog; otherwise the send queue.
    pub wqueue: u32,
    /// TCP_MD5SIG keys (INET_DIAG_MD5SIG: given to a caller with
    /// CAP_NET_ADMIN only).
    pub md5: Vec<Md5Key>,
}

/// One TCP_MD5SIG key as INET_DIAG_MD5SIG shows it (`struct
/// tcp_diag_md5sig`): the peer's address family, prefix and address, the
/// key. Not shown: a key's interface (TCP_MD5SIG_FLAG_IFINDEX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Md5Key {
    pub prefixlen: u8,
    pub addr: IpAddr,
    pub key: Vec<u8>,
}

const INET_DIAG_MD5SIG: u16 = 18;
/// sizeof(struct tcp_diag_md5sig).
const MD5SIG_LEN: usize = 100;

fn md5_keys(payload: &[u8]) -> Vec<Md5Key> {
    payload
        .chunks_exact(MD5SIG_LEN)
        .filter_map(|k| {
            let addr = match i32::from(k[0]) {
                libc::AF_INET => IpAddr::from([k[4], k[5], k[6], k[7]]),
                libc::AF_INET6 => IpAddr::from(<[u8; 16]>::try_from(&k[4..20]).ok()?),
                _ => return None,
            };
            let len = usize::from(u16le(k, 2)).min(MD5SIG_LEN - 20);
            Some(Md5Key {
                prefixlen: k[1],
                addr,
                key: k[20..20 + len].to_vec(),
            })
        })
        .collect()
}

/// Every socket of `family` (AF_INET or AF_INET6) and `protocol`
/// (IPPROTO_TCP or IPPROTO_UDP) of our network namespace, by inode.
pub fn inet_sockets(family: i32, protocol: i32) -> Result<HashMap<u64, InetSocket>> {
    // inet_diag_req_v2: family, protocol, ext, pad, states, sockid (48)
    let mut req = [0u8; 56];
    req[0] = family as u8;
    req[1] = protocol as u8;
    // INET_DIAG_INFO: the kernel adds the TCP extras (MD5 keys) with it.
    req[2] = 1 << (2 - 1);
    req[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut out = HashMap::new();
    diag_dump(&req, |msg| {
        // inet_diag_msg: family, state, timer, retrans, id (48), expires,
        // rqueue, wqueue, uid, inode
        if msg.len() >= 72 {
            let mut s = InetSocket {
                state: msg[1],
                rqueue: u32le(msg, 56),
                wqueue: u32le(msg, 60),
                ino: u64::from(u32le(msg, 68)),
                md5: Vec::new(),
            };
            let mut a = 72;
            while a + 4 <= msg.len() {
                let alen = usize::from(u16le(msg, a));
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                if u16le(msg, a + 2) == INET_DIAG_MD5SIG {
                    s.md5 = md5_keys(&msg[a + 4..a + alen]);
                }
                a += (alen + 3) & !3;
            }
            if s.ino != 0 {
                out.insert(s.ino, s);
            }
        }
    })?;
    Ok(out)
}

/// The local addresses of the connection requests (SYN received, the
/// handshake not finished: request sockets) of TCP over `family` in our
/// network namespace, one entry per request.
pub fn tcp_syn_recv(family: i32) -> Result<Vec<std::net::SocketAddr>> {
    const TCP_SYN_RECV: u32 = 3;
    let mut req = [0u8; 56];
    req[0] = family as u8;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&(1u32 << TCP_SYN_RECV).to_le_bytes());
    let mut out = Vec::new();
    diag_dump(&req, |msg| {
        // inet_diag_msg: family, state, timer, retrans, then sockid:
        // sport, dport (big-endian), src[16], dst[16], ...
        if msg.len() >= 72 && u32::from(msg[1]) == TCP_SYN_RECV {
            let port = u16::from_be_bytes([msg[4], msg[5]]);
            let ip = if i32::from(msg[0]) == libc::AF_INET {
                IpAddr::from([msg[8], msg[9], msg[10], msg[11]])
            } else {
                let mut a = [0u8; 16];
                a.copy_from_slice(&msg[8..24]);
                IpAddr::from(a)
            };
            out.push(std::net::SocketAddr::new(ip, port));
        }
    })?;
    Ok(out)
}

/// socketpair(AF_UNIX, `sock_type`) with close-on-exec in the caller.
pub fn socketpair(sock_type: i32) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-int out array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            sock_type | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    check(r.into(), "socketpair", None)?;
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    fn ino(fd: &OwnedFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|m| m.ino())
            .unwrap_or(0)
    }

    #[test]
    fn socketpair_peers_are_reported() {
        let (a, b) = socketpair(libc::SOCK_STREAM).expect("socketpair");
        let (ia, ib) = (ino(&a), ino(&b));
        let all = unix_sockets().expect("sock_diag");
        let sa = all.get(&ia).expect("first end listed");
        assert_eq!(sa.peer, ib);
        assert_eq!(sa.sock_type, libc::SOCK_STREAM as u8);
        assert_eq!(all.get(&ib).map(|s| s.peer), Some(ia));
        // SAFETY: writing a literal into our own socket.
        unsafe { libc::write(a.as_raw_fd(), b"abc".as_ptr().cast(), 3) };
        assert_eq!(
            unix_sockets()
                .expect("sock_diag")
                .get(&ib)
                .map(|s| s.rqueue),
            Some(3)
        );
        drop(b);
        assert_eq!(
            unix_sockets().expect("sock_diag").get(&ia).map(|s| s.peer),
            Some(0)
        );
    }
}
