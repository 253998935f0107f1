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
    (r == 0).then(|| parse(&ss)).flatten()
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
