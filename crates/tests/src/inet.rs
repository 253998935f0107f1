//! Socket addresses for the test programs: `sockaddr_storage` to and
//! from `SocketAddr`, and a descriptor's local or peer address.

use crate::errno;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A `sockaddr_storage` holding `a`, and its length.
pub fn sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v) => {
            // SAFETY: storage fits a sockaddr_in.
            let s: &mut libc::sockaddr_in = unsafe { &mut *std::ptr::addr_of_mut!(ss).cast() };
            s.sin_family = libc::AF_INET as u16;
            s.sin_port = v.port().to_be();
            s.sin_addr.s_addr = u32::from(*v.ip()).to_be();
            16
        }
        SocketAddr::V6(v) => {
            // SAFETY: storage fits a sockaddr_in6.
            let s: &mut libc::sockaddr_in6 = unsafe { &mut *std::ptr::addr_of_mut!(ss).cast() };
            s.sin6_family = libc::AF_INET6 as u16;
            s.sin6_port = v.port().to_be();
            s.sin6_addr.s6_addr = v.ip().octets();
            28
        }
    };
    (ss, len)
}

/// The address in `ss` (AF_INET or AF_INET6).
pub fn parse(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: family says sockaddr_in.
            let s: &libc::sockaddr_in = unsafe { &*std::ptr::addr_of!(*ss).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
                u16::from_be(s.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says sockaddr_in6.
            let s: &libc::sockaddr_in6 = unsafe { &*std::ptr::addr_of!(*ss).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(s.sin6_addr.s6_addr),
                u16::from_be(s.sin6_port),
                0,
                0,
            )))
        }
        _ => None,
    }
}

/// getsockname (or getpeername with `peer`) of `fd`.
pub fn name(fd: i32, peer: bool) -> Option<SocketAddr> {
    let b = name_bytes(fd, peer).ok()?;
    // SAFETY: zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: b is at most the storage's size (the kernel's answer to it).
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), std::ptr::addr_of_mut!(ss).cast::<u8>(), b.len())
    };
    parse(&ss)
}

/// getsockname (or getpeername with `peer`) of `fd` as the kernel's
/// bytes (any family); on error the errno.
pub fn name_bytes(fd: i32, peer: bool) -> Result<Vec<u8>, i32> {
    // SAFETY: zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    let p = std::ptr::addr_of_mut!(ss).cast();
    // SAFETY: ss and len are live out-parameters.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r != 0 {
        return Err(errno());
    }
    let n = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: ss holds n initialised bytes.
    let b = unsafe { std::slice::from_raw_parts(std::ptr::addr_of!(ss).cast::<u8>(), n) };
    Ok(b.to_vec())
}

/// socket(2), asserted.
pub fn sock(family: i32, ty: i32) -> i32 {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(family, ty, 0) };
    assert!(fd >= 0, "socket: errno {}", errno());
    fd
}

/// setsockopt of an int, asserted.
pub fn set(fd: i32, level: i32, opt: i32, v: i32) {
    // SAFETY: v lives for the call.
    let r = unsafe { libc::setsockopt(fd, level, opt, std::ptr::addr_of!(v).cast(), 4) };
    assert_eq!(r, 0, "setsockopt({level}, {opt}, {v}): errno {}", errno());
}

/// getsockopt of an int; on error -1000 - errno.
pub fn get(fd: i32, level: i32, opt: i32) -> i32 {
    let (mut v, mut len) = (0i32, 4u32);
    // SAFETY: v and len are live out-parameters.
    let r = unsafe { libc::getsockopt(fd, level, opt, std::ptr::addr_of_mut!(v).cast(), &mut len) };
    if r != 0 {
        return -errno() - 1000;
    }
    v
}

/// getsockopt of a byte string (up to 64 bytes); on error the errno as text.
pub fn get_bytes(fd: i32, level: i32, opt: i32) -> Result<Vec<u8>, i32> {
    let mut b = [0u8; 64];
    let mut len = b.len() as u32;
    // SAFETY: b and len are live out-parameters; len is b's size.
    let r = unsafe { libc::getsockopt(fd, level, opt, b.as_mut_ptr().cast(), &mut len) };
    if r != 0 {
        return Err(errno());
    }
    Ok(b[..len as usize].to_vec())
}

/// setsockopt of a byte string, asserted.
pub fn set_bytes(fd: i32, level: i32, opt: i32, v: &[u8]) {
    // SAFETY: v lives for the call; its length is passed.
    let r = unsafe { libc::setsockopt(fd, level, opt, v.as_ptr().cast(), v.len() as u32) };
    assert_eq!(r, 0, "setsockopt({level}, {opt}, {v:?}): errno {}", errno());
}

/// SO_LINGER, asserted.
pub fn set_linger(fd: i32, on: i32, secs: i32) {
    let l = libc::linger {
        l_onoff: on,
        l_linger: secs,
    };
    // SAFETY: l lives for the call; its size is passed.
    let b = unsafe {
        std::slice::from_raw_parts(
            std::ptr::addr_of!(l).cast::<u8>(),
            std::mem::size_of::<libc::linger>(),
        )
    };
    set_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER, b);
}

/// A TCP_MD5SIG key on `fd` for the IPv4 peer `peer` (struct tcp_md5sig).
pub fn md5_key(fd: i32, peer: Ipv4Addr, key: &[u8]) {
    let mut b = [0u8; 216];
    b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    b[4..8].copy_from_slice(&peer.octets());
    b[130..132].copy_from_slice(&(key.len() as u16).to_ne_bytes());
    b[136..136 + key.len()].copy_from_slice(key);
    set_bytes(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &b);
}
