//! Socket calls on descriptors of our own (a socket being restored, or a
//! `pidfd_getfd` duplicate of a process's socket): integer and string
//! options, local and peer addresses, bind/listen/connect.

use crate::{check, last_errno, Result, SysError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// socket(2) with close-on-exec.
pub fn socket(family: i32, ty: i32, protocol: i32) -> Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) };
    check(fd.into(), "socket", None)?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// getsockopt of an int option.
pub fn get_int(fd: &OwnedFd, level: i32, opt: i32) -> Result<i32> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: v and len are live out-parameters of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            std::ptr::addr_of_mut!(v).cast(),
            &mut len,
        )
    };
    check(r.into(), &format!("getsockopt({level}, {opt})"), None)?;
    Ok(v)
}

/// setsockopt of an int option.
pub fn set_int(fd: &OwnedFd, level: i32, opt: i32, v: i32) -> Result<()> {
    // SAFETY: v lives for the call; its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            std::ptr::addr_of!(v).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    check(r.into(), &format!("setsockopt({level}, {opt}, {v})"), None).map(drop)
}

/// SO_PEERCRED of a unix socket.
pub fn ucred(fd: &OwnedFd) -> Result<libc::ucred> {
    ucred_raw(fd.as_raw_fd())
        .ok_or_else(|| SysError::new("getsockopt(SO_PEERCRED)", None, last_errno()))
}

/// SO_PEERCRED of descriptor `fd`, None on failure (errno set). Raw
/// calls only: callable in a forked child.
fn ucred_raw(fd: i32) -> Option<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are live out-parameters of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred)
}

/// What SO_PEERCRED and SO_PEERGROUPS give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// SO_PEERCRED (pid, effective uid, effective gid) and SO_PEERGROUPS
/// (supplementary groups) of a unix socket; None for a socket without
/// (a datagram socket connected by connect(2): SO_PEERGROUPS ENODATA).
pub fn peer_cred(fd: &OwnedFd) -> Result<Option<PeerCred>> {
    let cred = ucred(fd)?;
    let mut groups = vec![0u32; 65536];
    let mut len = (groups.len() * 4) as libc::socklen_t;
    // SAFETY: groups and len are live out-parameters; len is groups' size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    match check(r.into(), "getsockopt(SO_PEERGROUPS)", None) {
        Err(e) if e.source.raw_os_error() == Some(libc::ENODATA) => return Ok(None),
        r => r?,
    };
    groups.truncate(len as usize / 4);
    Ok(Some(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups,
    }))
}

/// The ids a helper of [`as_creator`] takes: effective (and real, saved)
/// uid and gid, supplementary groups.
pub struct Ids<'a> {
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
}

/// Runs `f` in a child of ours with PID `pid` (any free PID when None)
/// and the ids `ids`, sharing our descriptor table (CLONE_FILES): what a
/// socket records of its creator (SO_PEERCRED, SO_PEERGROUPS: socketpair,
/// listen, connect) is then that child's. `f` runs in the forked child:
/// raw system calls only (no allocation, no locks); it returns whether it
/// succeeded. The child exits at once (its PID stays what the sockets
/// report; the number is free again for a process to take). With no PID
/// to take and ids already ours, `f` runs here.
pub fn as_creator(
    pid: Option<i32>,
    ids: &Ids<'_>,
    what: &str,
    f: impl FnOnce() -> bool,
) -> Result<()> {
    use crate::clone::{fork_with_pid, Forked};
    let tids: Vec<i32> = pid.into_iter().collect();
    let (uid, gid) = (ids.uid, ids.gid);
    // Ids already ours are left alone (no privilege needed then).
    let mut own = vec![0u32; 65536];
    // SAFETY: plain calls; own is a live array of the length passed.
    let same = unsafe {
        let n = libc::getgroups(own.len() as i32, own.as_mut_ptr());
        own.truncate(usize::try_from(n).unwrap_or(0));
        libc::geteuid() == uid && libc::getegid() == gid && n >= 0 && own == ids.groups
    };
    if pid.is_none() && same {
        // Nothing a helper would change: the call is made here.
        return if f() {
            Ok(())
        } else {
            Err(SysError::new(what, None, last_errno()))
        };
    }
    // SAFETY: the child makes raw system calls only (f's contract) and
    // leaves through _exit.
    match unsafe { fork_with_pid(&tids, libc::CLONE_FILES as u64)? } {
        Forked::Child => {
            // SAFETY: raw calls on valid arguments; groups outlives them.
            let ok = same
                || unsafe {
                    libc::syscall(libc::SYS_setgroups, ids.groups.len(), ids.groups.as_ptr()) == 0
                        && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
                        && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0
                };
            crate::clone::exit_now(if !ok {
                1
            } else if f() {
                0
            } else {
                2
            })
        }
        Forked::Parent(child) => {
            let mut status = 0;
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(child.0, &mut status, libc::__WALL) };
            check(r.into(), "waitpid (socket helper)", Some(child))?;
            if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                let step = match libc::WEXITSTATUS(status) {
                    1 => "setting its ids".to_string(),
                    _ => what.to_string(),
                };
                return Err(SysError::other(
                    format!("{what} as pid {}, uid {uid}, gid {gid}", child.0),
                    Some(child),
                    format!("the helper failed {step} (status {status:#x})"),
                ));
            }
            Ok(())
        }
    }
}

/// socketpair(AF_UNIX, `ty`) made by an [`as_creator`] helper, put at two
/// numbers reserved here.
pub fn socketpair_as(ty: i32, pid: Option<i32>, ids: &Ids<'_>) -> Result<(OwnedFd, OwnedFd)> {
    let a = socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)?;
    let b = socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)?;
    let (na, nb) = (a.as_raw_fd(), b.as_raw_fd());
    as_creator(pid, ids, "socketpair", || {
        let mut fds = [0i32; 2];
        // SAFETY: raw calls; fds is a valid out array, na/nb are open.
        unsafe {
            libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) == 0
                && libc::dup3(fds[0], na, libc::O_CLOEXEC) >= 0
                && libc::dup3(fds[1], nb, libc::O_CLOEXEC) >= 0
                && libc::close(fds[0]) == 0
                && libc::close(fds[1]) == 0
        }
    })?;
    Ok((a, b))
}

/// listen(2) on `fd`, called by an [`as_creator`] helper.
pub fn listen_as(fd: &OwnedFd, backlog: i32, pid: Option<i32>, ids: &Ids<'_>) -> Result<()> {
    let n = fd.as_raw_fd();
    // SAFETY: a raw call on our open descriptor (shared with the helper).
    as_creator(pid, ids, "listen", || unsafe {
        libc::listen(n, backlog) == 0
    })
}

/// connect(2) of `fd` to the unix socket `name`, called by an
/// [`as_creator`] helper.
pub fn connect_unix_as(fd: &OwnedFd, name: &[u8], pid: Option<i32>, ids: &Ids<'_>) -> Result<()> {
    let (sa, len) = unix_addr(name)?;
    let n = fd.as_raw_fd();
    // SAFETY: a raw call on our open descriptor with a valid address.
    as_creator(pid, ids, "connect", || unsafe {
        libc::connect(n, std::ptr::addr_of!(sa).cast(), len) == 0
    })
}

/// SO_LINGER as getsockopt reads it: (l_onoff, l_linger in seconds).
pub fn get_linger(fd: &OwnedFd) -> Result<(i32, i32)> {
    let mut l = libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: l and len are live out-parameters of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of_mut!(l).cast(),
            &mut len,
        )
    };
    check(r.into(), "getsockopt(SO_LINGER)", None)?;
    Ok((l.l_onoff, l.l_linger))
}

/// Sets SO_LINGER to what [`get_linger`] read. Off with a time kept: the
/// time is set first (on), then lingering turned off, which keeps it.
pub fn set_linger(fd: &OwnedFd, (on, secs): (i32, i32)) -> Result<()> {
    let set = |on: i32| {
        let l = libc::linger {
            l_onoff: on,
            l_linger: secs,
        };
        // SAFETY: l lives for the call; its size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::addr_of!(l).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        check(
            r.into(),
            &format!("setsockopt(SO_LINGER, {on}, {secs})"),
            None,
        )
        .map(drop)
    };
    set(1)?;
    if on == 0 {
        set(0)?;
    }
    Ok(())
}

/// getsockopt of a byte-string option (up to 256 bytes), trailing NULs cut.
pub fn get_bytes(fd: &OwnedFd, level: i32, opt: i32) -> Result<Vec<u8>> {
    let mut b = get_raw(fd, level, opt)?;
    while b.last() == Some(&0) {
        b.pop();
    }
    Ok(b)
}

/// Adds a TCP_MD5SIG key for the peers `addr`/`prefixlen` to the TCP
/// socket `fd` of `family` (TCP_MD5SIG_EXT with TCP_MD5SIG_FLAG_PREFIX;
/// an IPv4 peer of an IPv6 socket as a v4-mapped address).
pub fn add_md5_key(
    fd: &OwnedFd,
    family: i32,
    addr: IpAddr,
    prefixlen: u8,
    key: &[u8],
) -> Result<()> {
    const TCP_MD5SIG_EXT: i32 = 32;
    const FLAG_PREFIX: u8 = 1;
    // struct tcp_md5sig: sockaddr_storage (128), flags, prefixlen, keylen
    // (u16), ifindex (i32), key[80].
    let mut b = [0u8; 216];
    if key.len() > 80 {
        return Err(SysError::other(
            "TCP_MD5SIG",
            None,
            "key longer than 80 bytes",
        ));
    }
    match (family, addr) {
        (libc::AF_INET, IpAddr::V4(a)) => {
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[4..8].copy_from_slice(&a.octets());
        }
        (_, a) => {
            let v6 = match a {
                // Its prefix stays an IPv4 one (at most 32).
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[8..24].copy_from_slice(&v6.octets());
        }
    }
    b[128] = FLAG_PREFIX;
    b[129] = prefixlen;
    b[130..132].copy_from_slice(&(key.len() as u16).to_ne_bytes());
    b[136..136 + key.len()].copy_from_slice(key);
    set_bytes(fd, libc::IPPROTO_TCP, TCP_MD5SIG_EXT, &b).map_err(|mut e| {
        e.op = format!("TCP_MD5SIG key for {addr}/{prefixlen}: {}", e.op);
        e
    })
}

/// getsockopt of an option of up to 256 bytes, as the kernel gives it.
pub fn get_raw(fd: &OwnedFd, level: i32, opt: i32) -> Result<Vec<u8>> {
    let mut b = vec![0u8; 256];
    let mut len = b.len() as libc::socklen_t;
    // SAFETY: b and len are live out-parameters; len is b's size.
    let r =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, b.as_mut_ptr().cast(), &mut len) };
    check(r.into(), &format!("getsockopt({level}, {opt})"), None)?;
    b.truncate(len as usize);
    Ok(b)
}

/// setsockopt of a byte-string option.
pub fn set_bytes(fd: &OwnedFd, level: i32, opt: i32, v: &[u8]) -> Result<()> {
    // SAFETY: v lives for the call; its length is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            v.as_ptr().cast(),
            v.len() as libc::socklen_t,
        )
    };
    check(r.into(), &format!("setsockopt({level}, {opt})"), None).map(drop)
}

pub(crate) fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*std::ptr::addr_of!(*ss).cast() };
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*std::ptr::addr_of!(*ss).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub(crate) fn to_storage(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: storage is large and aligned enough for sockaddr_in.
            let s: &mut libc::sockaddr_in = unsafe { &mut *std::ptr::addr_of_mut!(ss).cast() };
            s.sin_family = libc::AF_INET as u16;
            s.sin_port = v4.port().to_be();
            s.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: storage is large and aligned enough for sockaddr_in6.
            let s: &mut libc::sockaddr_in6 = unsafe { &mut *std::ptr::addr_of_mut!(ss).cast() };
            s.sin6_family = libc::AF_INET6 as u16;
            s.sin6_port = v6.port().to_be();
            s.sin6_flowinfo = v6.flowinfo().to_be();
            s.sin6_addr.s6_addr = v6.ip().octets();
            s.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn name(fd: &OwnedFd, peer: bool) -> Result<Option<SocketAddr>> {
    // SAFETY: plain data, zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = std::ptr::addr_of_mut!(ss).cast();
    // SAFETY: ss and len are live out-parameters; len is ss's size.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    if r != 0 {
        let e = last_errno();
        if peer && e == libc::ENOTCONN {
            return Ok(None);
        }
        return Err(SysError::new(
            if peer { "getpeername" } else { "getsockname" },
            None,
            e,
        ));
    }
    Ok(from_storage(&ss))
}

/// getsockname of an AF_INET or AF_INET6 socket.
pub fn local_addr(fd: &OwnedFd) -> Result<Option<SocketAddr>> {
    name(fd, false)
}

/// getpeername; None when not connected.
pub fn peer_addr(fd: &OwnedFd) -> Result<Option<SocketAddr>> {
    name(fd, true)
}

/// bind(2) to an inet address.
pub fn bind(fd: &OwnedFd, a: &SocketAddr) -> Result<()> {
    let (ss, len) = to_storage(a);
    // SAFETY: ss holds a valid address of length len.
    let r = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(ss).cast(), len) };
    check(r.into(), &format!("bind({a})"), None).map(drop)
}

/// connect(2) to an inet address (a datagram socket: no packet is sent).
pub fn connect(fd: &OwnedFd, a: &SocketAddr) -> Result<()> {
    let (ss, len) = to_storage(a);
    // SAFETY: ss holds a valid address of length len.
    let r = unsafe { libc::connect(fd.as_raw_fd(), std::ptr::addr_of!(ss).cast(), len) };
    check(r.into(), &format!("connect({a})"), None).map(drop)
}

/// listen(2).
pub fn listen(fd: &OwnedFd, backlog: i32) -> Result<()> {
    // SAFETY: plain call on our descriptor.
    let r = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    check(r.into(), &format!("listen({backlog})"), None).map(drop)
}

/// Whether a datagram (even an empty one) is waiting, without taking it.
pub fn has_datagram(fd: &OwnedFd) -> Result<bool> {
    let mut b = [0u8; 1];
    // SAFETY: b is a live buffer of its length.
    let r = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            b.as_mut_ptr().cast(),
            0,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    if r >= 0 {
        return Ok(true);
    }
    match last_errno() {
        libc::EAGAIN => Ok(false),
        e => Err(SysError::new("recv(MSG_PEEK)", None, e)),
    }
}

/// Whether an out-of-band byte (MSG_OOB) waits to be read: peeked, so
/// the queue is untouched (EINVAL: none, or the socket keeps it inline).
pub fn has_oob(fd: &OwnedFd) -> Result<bool> {
    let mut b = [0u8; 1];
    // SAFETY: b is a live buffer of its length.
    let r = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_OOB | libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if r >= 0 {
        return Ok(true);
    }
    match last_errno() {
        libc::EINVAL | libc::EAGAIN | libc::EOPNOTSUPP => Ok(false),
        e => Err(SysError::new("recv(MSG_OOB|MSG_PEEK)", None, e)),
    }
}

/// SIOCOUTQ: bytes in the send queue (UDP: corked data not yet sent).
pub fn outq(fd: &OwnedFd) -> Result<i32> {
    let mut v: i32 = 0;
    // SAFETY: SIOCOUTQ writes one int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut v) };
    check(r.into(), "ioctl(SIOCOUTQ)", None)?;
    Ok(v)
}

const SOL_TCP: i32 = libc::IPPROTO_TCP;
const SOL_UDP: i32 = libc::IPPROTO_UDP;
const IP: i32 = libc::IPPROTO_IP;
const IP6: i32 = libc::IPPROTO_IPV6;
const S: i32 = libc::SOL_SOCKET;

/// The int options a TCP or UDP socket is saved with, by name: (name,
/// level, option). The dump saves those that differ from a new socket's;
/// SOL_TCP ones apply to TCP only, SOL_UDP to UDP, IPPROTO_IP to AF_INET,
/// IPPROTO_IPV6 to AF_INET6.
pub const INET_OPTS: &[(&str, i32, i32)] = &[
    ("SO_REUSEADDR", S, libc::SO_REUSEADDR),
    ("SO_REUSEPORT", S, libc::SO_REUSEPORT),
    ("SO_KEEPALIVE", S, libc::SO_KEEPALIVE),
    ("SO_RCVBUF", S, libc::SO_RCVBUF),
    ("SO_SNDBUF", S, libc::SO_SNDBUF),
    ("SO_MARK", S, libc::SO_MARK),
    ("SO_PRIORITY", S, libc::SO_PRIORITY),
    ("SO_RCVLOWAT", S, libc::SO_RCVLOWAT),
    ("SO_OOBINLINE", S, libc::SO_OOBINLINE),
    ("SO_BROADCAST", S, libc::SO_BROADCAST),
    ("SO_DONTROUTE", S, libc::SO_DONTROUTE),
    ("SO_NO_CHECK", S, libc::SO_NO_CHECK),
    ("SO_TIMESTAMP", S, libc::SO_TIMESTAMP),
    ("SO_TIMESTAMPNS", S, libc::SO_TIMESTAMPNS),
    ("SO_RXQ_OVFL", S, libc::SO_RXQ_OVFL),
    ("SO_PASSCRED", S, libc::SO_PASSCRED),
    ("SO_BUSY_POLL", S, libc::SO_BUSY_POLL),
    ("TCP_NODELAY", SOL_TCP, libc::TCP_NODELAY),
    ("TCP_MAXSEG", SOL_TCP, libc::TCP_MAXSEG),
    ("TCP_CORK", SOL_TCP, libc::TCP_CORK),
    ("TCP_KEEPIDLE", SOL_TCP, libc::TCP_KEEPIDLE),
    ("TCP_KEEPINTVL", SOL_TCP, libc::TCP_KEEPINTVL),
    ("TCP_KEEPCNT", SOL_TCP, libc::TCP_KEEPCNT),
    ("TCP_SYNCNT", SOL_TCP, libc::TCP_SYNCNT),
    ("TCP_LINGER2", SOL_TCP, libc::TCP_LINGER2),
    ("TCP_DEFER_ACCEPT", SOL_TCP, libc::TCP_DEFER_ACCEPT),
    ("TCP_WINDOW_CLAMP", SOL_TCP, libc::TCP_WINDOW_CLAMP),
    ("TCP_USER_TIMEOUT", SOL_TCP, libc::TCP_USER_TIMEOUT),
    ("TCP_FASTOPEN", SOL_TCP, libc::TCP_FASTOPEN),
    ("TCP_NOTSENT_LOWAT", SOL_TCP, libc::TCP_NOTSENT_LOWAT),
    ("UDP_CORK", SOL_UDP, 1),
    ("UDP_SEGMENT", SOL_UDP, 103),
    ("IP_TOS", IP, libc::IP_TOS),
    ("IP_TTL", IP, libc::IP_TTL),
    ("IP_RECVERR", IP, libc::IP_RECVERR),
    ("IP_FREEBIND", IP, libc::IP_FREEBIND),
    ("IP_TRANSPARENT", IP, libc::IP_TRANSPARENT),
    ("IP_PKTINFO", IP, libc::IP_PKTINFO),
    ("IP_MTU_DISCOVER", IP, libc::IP_MTU_DISCOVER),
    ("IP_MULTICAST_TTL", IP, libc::IP_MULTICAST_TTL),
    ("IP_MULTICAST_LOOP", IP, libc::IP_MULTICAST_LOOP),
    // The interface's address (struct in_addr, read and set as 4 bytes);
    // one chosen by index alone (struct ip_mreqn) reads as 0.
    ("IP_MULTICAST_IF", IP, libc::IP_MULTICAST_IF),
    ("IP_MULTICAST_ALL", IP, libc::IP_MULTICAST_ALL),
    ("IP_RECVTOS", IP, libc::IP_RECVTOS),
    ("IP_RECVTTL", IP, libc::IP_RECVTTL),
    ("IP_RECVOPTS", IP, libc::IP_RECVOPTS),
    ("IP_RETOPTS", IP, libc::IP_RETOPTS),
    ("IP_RECVORIGDSTADDR", IP, libc::IP_RECVORIGDSTADDR),
    ("IP_NODEFRAG", IP, 22),
    ("IP_CHECKSUM", IP, 23),
    ("IP_BIND_ADDRESS_NO_PORT", IP, libc::IP_BIND_ADDRESS_NO_PORT),
    ("IPV6_V6ONLY", IP6, libc::IPV6_V6ONLY),
    ("IPV6_UNICAST_HOPS", IP6, libc::IPV6_UNICAST_HOPS),
    ("IPV6_TCLASS", IP6, libc::IPV6_TCLASS),
    ("IPV6_RECVPKTINFO", IP6, libc::IPV6_RECVPKTINFO),
    ("IPV6_RECVERR", IP6, libc::IPV6_RECVERR),
    ("IPV6_MTU_DISCOVER", IP6, libc::IPV6_MTU_DISCOVER),
    ("IPV6_MULTICAST_HOPS", IP6, libc::IPV6_MULTICAST_HOPS),
    ("IPV6_MULTICAST_LOOP", IP6, libc::IPV6_MULTICAST_LOOP),
    ("IPV6_MULTICAST_IF", IP6, libc::IPV6_MULTICAST_IF),
    ("IPV6_MULTICAST_ALL", IP6, 29),
    ("IPV6_RECVHOPLIMIT", IP6, libc::IPV6_RECVHOPLIMIT),
    ("IPV6_RECVTCLASS", IP6, libc::IPV6_RECVTCLASS),
    ("IPV6_DONTFRAG", IP6, libc::IPV6_DONTFRAG),
    ("IPV6_AUTOFLOWLABEL", IP6, 70),
    ("IPV6_FREEBIND", IP6, 78),
    ("IPV6_TRANSPARENT", IP6, 75),
];

/// Whether an option of `level` applies to a socket of this family and
/// protocol.
pub fn opt_applies(level: i32, family: i32, protocol: i32) -> bool {
    match level {
        SOL_TCP => protocol == libc::IPPROTO_TCP,
        SOL_UDP => protocol == libc::IPPROTO_UDP,
        IP => family == libc::AF_INET,
        IP6 => family == libc::AF_INET6,
        _ => true,
    }
}

/// Instructions of a classic BPF filter attached with SO_ATTACH_FILTER
/// (0: none).
pub fn filter_len(fd: &OwnedFd) -> Result<u32> {
    let mut len: libc::socklen_t = 0;
    // SAFETY: with a zero length the kernel writes only `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::null_mut(),
            &mut len,
        )
    };
    check(r.into(), "getsockopt(SO_GET_FILTER)", None)?;
    Ok(len)
}

/// The int options a unix socket is saved with (those that differ from a
/// new socket's), by name.
/// The options of [`UNIX_OPTS`] whose value on `sock` differs from the one
/// on `fresh` (a new socket of the same type), by name; options either
/// socket does not answer are left out.
pub fn changed_unix_options(
    sock: &OwnedFd,
    fresh: &OwnedFd,
) -> std::collections::BTreeMap<String, i32> {
    changed_options(UNIX_OPTS, sock, fresh)
}

/// The options of `table` whose value on `sock` differs from the one on
/// `fresh` (a new socket of the same kind), by name; options either socket
/// does not answer are left out.
pub fn changed_options(
    table: &[(&str, i32, i32)],
    sock: &OwnedFd,
    fresh: &OwnedFd,
) -> std::collections::BTreeMap<String, i32> {
    table
        .iter()
        .filter_map(|&(name, level, opt)| {
            match (get_int(sock, level, opt), get_int(fresh, level, opt)) {
                (Ok(v), Ok(new)) if v != new => Some((name.to_string(), v)),
                _ => None,
            }
        })
        .collect()
}

pub const UNIX_OPTS: &[(&str, i32, i32)] = &[
    ("SO_PASSCRED", S, libc::SO_PASSCRED),
    ("SO_PASSSEC", S, libc::SO_PASSSEC),
    ("SO_PEEK_OFF", S, libc::SO_PEEK_OFF),
    ("SO_RCVBUF", S, libc::SO_RCVBUF),
    ("SO_SNDBUF", S, libc::SO_SNDBUF),
    ("SO_RCVLOWAT", S, libc::SO_RCVLOWAT),
    ("SO_TIMESTAMP", S, libc::SO_TIMESTAMP),
    ("SO_TIMESTAMPNS", S, libc::SO_TIMESTAMPNS),
    ("SO_MARK", S, libc::SO_MARK),
    ("SO_PRIORITY", S, libc::SO_PRIORITY),
    ("SO_PASSPIDFD", S, 76),
];

/// What [`peek_queue`] found waiting in a socket.
#[derive(Debug, Default)]
pub struct Peeked {
    /// One entry per message; a stream: its bytes in one or more pieces.
    pub msgs: Vec<Vec<u8>>,
    /// Some message carries descriptors (SCM_RIGHTS).
    pub rights: bool,
    /// The descriptors in flight, installed in us by the peek: (index of
    /// the message in `msgs`, its descriptors in order).
    pub fds: Vec<(usize, Vec<OwnedFd>)>,
    /// Some message was larger than the buffer or was empty.
    pub odd: bool,
    /// Some message came from a bound (named) sender.
    pub named_sender: bool,
}

/// Reads every message waiting in a socket without taking it: MSG_PEEK
/// with SO_PEEK_OFF walking the queue from 0 (the socket's own peek
/// offset is put back). At most `limit` bytes. `eof`: an empty read ends
/// the queue (a stream, or a socket shut down for reading); otherwise it
/// is an empty message, which SO_PEEK_OFF cannot step over (`odd`).
pub fn peek_queue(fd: &OwnedFd, limit: usize, eof: bool) -> Result<Peeked> {
    let old = get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let r = peek_loop(fd, limit, eof);
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)?;
    r
}

fn peek_loop(fd: &OwnedFd, limit: usize, eof: bool) -> Result<Peeked> {
    let mut p = Peeked::default();
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let mut cbuf = [0u64; 64];
    // SAFETY: plain data; zero is valid.
    let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; zero is valid.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = std::mem::size_of_val(&cbuf);
        mh.msg_name = std::ptr::addr_of_mut!(from).cast();
        mh.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
        // SAFETY: every pointer in mh refers to live buffers of their lengths.
        let n = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut mh,
                libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            match last_errno() {
                libc::EAGAIN => return Ok(p),
                e => return Err(SysError::new("recvmsg(MSG_PEEK)", None, e)),
            }
        }
        take_rights(&mh, &mut p);
        // Only the family (2 bytes): an unnamed sender.
        if mh.msg_namelen as usize > std::mem::size_of::<libc::sa_family_t>() {
            p.named_sender = true;
        }
        if mh.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            p.odd = true;
            return Ok(p);
        }
        if n == 0 {
            p.odd = !eof;
            return Ok(p);
        }
        total += n as usize;
        if total > limit {
            return Err(SysError::other(
                "peek socket queue",
                None,
                format!("more than {limit} bytes queued"),
            ));
        }
        p.msgs.push(buf[..n as usize].to_vec());
    }
}

/// Takes the descriptors an SCM_RIGHTS message installed in us (for the
/// message about to be pushed to `p.msgs`).
fn take_rights(mh: &libc::msghdr, p: &mut Peeked) {
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control; the CMSG macros walk it within
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                p.rights = true;
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..n {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(mh, c);
        }
    }
    if !fds.is_empty() {
        p.fds.push((p.msgs.len(), fds));
    }
}

/// sendmsg(2) of one message with descriptors in flight (SCM_RIGHTS),
/// non-blocking, no SIGPIPE; on a stream what did not fit is sent after.
pub fn send_rights(fd: &OwnedFd, data: &[u8], fds: &[&OwnedFd], stream: bool) -> Result<()> {
    let mut cbuf = vec![0u64; 8 + fds.len()];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zero is valid.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    // SAFETY: CMSG_SPACE is arithmetic; cbuf is at least that long (8 bytes
    // per descriptor plus the header).
    let space = unsafe { libc::CMSG_SPACE((fds.len() * 4) as u32) } as usize;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = space;
    // SAFETY: the control buffer is `space` bytes long and aligned; the
    // CMSG macros stay within it; iov points into `data`, only read.
    let n = unsafe {
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((fds.len() * 4) as u32) as usize;
        let out = libc::CMSG_DATA(c).cast::<i32>();
        for (i, f) in fds.iter().enumerate() {
            out.add(i).write_unaligned(f.as_raw_fd());
        }
        libc::sendmsg(fd.as_raw_fd(), &mh, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
    };
    check(n as libc::c_long, "send queued data with descriptors", None)?;
    let n = n as usize;
    if n < data.len() {
        if !stream {
            return Err(SysError::other(
                "send queued data with descriptors",
                None,
                format!("{n} of {} bytes sent", data.len()),
            ));
        }
        return send_all(fd, &data[n..], true);
    }
    Ok(())
}

/// send(2) of one whole message, non-blocking, no SIGPIPE.
pub fn send_all(fd: &OwnedFd, data: &[u8], stream: bool) -> Result<()> {
    let mut off = 0;
    loop {
        // SAFETY: sending from a live slice.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data[off..].as_ptr().cast(),
                data.len() - off,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        check(n as libc::c_long, "send queued data", None)?;
        off += n as usize;
        if off >= data.len() || !stream {
            return Ok(());
        }
    }
}

/// shutdown(2) with sock_diag's mode (1 receive, 2 send, 3 both).
pub fn shutdown(fd: &OwnedFd, mode: u8) -> Result<()> {
    let how = match mode {
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    // SAFETY: plain call on our descriptor.
    let r = unsafe { libc::shutdown(fd.as_raw_fd(), how) };
    check(r.into(), &format!("shutdown({mode})"), None).map(drop)
}

/// sockaddr_un for a name as sock_diag reports it (a path with its NUL,
/// or an abstract name starting with NUL).
fn unix_addr(name: &[u8]) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: plain data; zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.len() > sa.sun_path.len() {
        return Err(SysError::other("unix address", None, "name too long"));
    }
    sa.sun_family = libc::AF_UNIX as u16;
    for (d, &s) in sa.sun_path.iter_mut().zip(name) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + name.len();
    Ok((sa, len as libc::socklen_t))
}

/// bind(2) to a unix name.
pub fn bind_unix(fd: &OwnedFd, name: &[u8]) -> Result<()> {
    let (sa, len) = unix_addr(name)?;
    // SAFETY: sa holds a valid address of length len.
    let r = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(sa).cast(), len) };
    check(
        r.into(),
        &format!("bind({})", String::from_utf8_lossy(name)),
        None,
    )
    .map(drop)
}

/// connect(2) to a unix name.
pub fn connect_unix(fd: &OwnedFd, name: &[u8]) -> Result<()> {
    let (sa, len) = unix_addr(name)?;
    // SAFETY: sa holds a valid address of length len.
    let r = unsafe { libc::connect(fd.as_raw_fd(), std::ptr::addr_of!(sa).cast(), len) };
    check(
        r.into(),
        &format!("connect({})", String::from_utf8_lossy(name)),
        None,
    )
    .map(drop)
}

/// sendto(2) of one datagram to a unix name, non-blocking.
pub fn sendto_unix(fd: &OwnedFd, name: &[u8], data: &[u8]) -> Result<()> {
    let (sa, len) = unix_addr(name)?;
    // SAFETY: data and sa are live for the call.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            std::ptr::addr_of!(sa).cast(),
            len,
        )
    };
    check(r as libc::c_long, "sendto queued datagram", None).map(drop)
}

/// Sets the option called `name` in `table` ([`INET_OPTS`],
/// [`UNIX_OPTS`]) to `v` as getsockopt read it: buffer sizes are halved
/// (the kernel doubles them) and set with the FORCE variants (above the
/// sysctl maximum, as the process may have had them).
pub fn set_named(fd: &OwnedFd, table: &[(&str, i32, i32)], name: &str, v: i32) -> Result<()> {
    let Some(&(_, level, opt)) = table.iter().find(|(n, _, _)| *n == name) else {
        return Err(SysError::other(
            format!("setsockopt {name}"),
            None,
            "unknown option",
        ));
    };
    let (opt, v) = match (level, opt) {
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => (libc::SO_RCVBUFFORCE, v / 2),
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => (libc::SO_SNDBUFFORCE, v / 2),
        _ => (opt, v),
    };
    set_int(fd, level, opt, v).map_err(|mut e| {
        e.op = format!("{name}: {}", e.op);
        e
    })
}

/// accept4(2) with close-on-exec.
pub fn accept(fd: &OwnedFd) -> Result<OwnedFd> {
    // SAFETY: no address wanted.
    let r = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    check(r.into(), "accept", None)?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Makes room at a unix socket's path: a socket file nobody listens on
/// (connect is refused: a dead process's) is removed. Ok(false): nothing
/// was there; an error names a live socket or another kind of file.
pub fn remove_stale_socket(path: &str, ty: i32) -> Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Ok(false);
    };
    if !m.file_type().is_socket() {
        return Err(SysError::other(
            format!("bind {path}"),
            None,
            "the path exists and is not a socket",
        ));
    }
    let probe = socket(libc::AF_UNIX, ty, 0)?;
    let mut name = path.as_bytes().to_vec();
    name.push(0);
    match connect_unix(&probe, &name) {
        Err(e) if e.errno() == Some(libc::ECONNREFUSED) => {}
        _ => {
            return Err(SysError::other(
                format!("bind {path}"),
                None,
                "the path is in use by a live socket",
            ))
        }
    }
    std::fs::remove_file(path).map_err(|e| {
        SysError::new(
            format!("remove the old socket file {path}"),
            None,
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })?;
    Ok(true)
}

/// The PIDs SO_PEERCRED reports on `socks` as a process of the PID
/// namespace `pid_ns` sees them ([`crate::nsenter::ints_in_pid_ns`]).
pub fn peer_pids_in_pid_ns(pid_ns: &OwnedFd, socks: &[OwnedFd]) -> Result<Vec<i32>> {
    let raw: Vec<i32> = socks.iter().map(AsRawFd::as_raw_fd).collect();
    crate::nsenter::ints_in_pid_ns(pid_ns, raw.len(), "SO_PEERCRED", |out| {
        raw.iter()
            .zip(out.iter_mut())
            .all(|(&fd, o)| match ucred_raw(fd) {
                Some(c) => {
                    *o = c.pid;
                    true
                }
                None => false,
            })
    })
}
