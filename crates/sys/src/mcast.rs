//! Multicast group memberships of an inet socket. The kernel lists the
//! groups joined on each interface (/proc/PID/net/igmp, igmp6), not per
//! socket; getsockopt(MCAST_MSFILTER) of one (interface, group) answers
//! for one socket: its filter mode and sources if it is a member,
//! EADDRNOTAVAIL if not. Joined again by MCAST_JOIN_GROUP and the filter
//! set by setsockopt(MCAST_MSFILTER).

use crate::sock::{from_storage, to_storage};
use crate::{check, last_errno, Result, SysError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

const MCAST_JOIN_GROUP: i32 = 42;
const MCAST_MSFILTER: i32 = 48;
const MCAST_EXCLUDE: u32 = 0;
const MCAST_INCLUDE: u32 = 1;
/// Sources read per membership; more is refused by the caller.
pub const MAX_SOURCES: usize = 64;

/// One membership: interface, group, filter mode and sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub ifindex: u32,
    pub group: IpAddr,
    /// MCAST_INCLUDE (only `sources`); else exclude `sources`.
    pub include: bool,
    pub sources: Vec<IpAddr>,
    /// How many sources the kernel has (more than `sources` when above
    /// [`MAX_SOURCES`]).
    pub total_sources: usize,
}

#[repr(C)]
struct GroupFilter {
    interface: u32,
    group: libc::sockaddr_storage,
    fmode: u32,
    numsrc: u32,
    slist: [libc::sockaddr_storage; MAX_SOURCES],
}

#[repr(C)]
struct GroupReq {
    interface: u32,
    group: libc::sockaddr_storage,
}

fn level(group: &IpAddr) -> i32 {
    if group.is_ipv4() {
        libc::SOL_IP
    } else {
        libc::SOL_IPV6
    }
}

fn new_filter(ifindex: u32, group: IpAddr) -> Box<GroupFilter> {
    // SAFETY: plain data; all zero is valid.
    let mut f: Box<GroupFilter> = Box::new(unsafe { std::mem::zeroed() });
    f.interface = ifindex;
    f.group = to_storage(&SocketAddr::new(group, 0)).0;
    f
}

/// The groups joined on some interface of `pid`'s network namespace:
/// (interface index, group).
fn candidates(pid: u32, v6: bool) -> Vec<(u32, IpAddr)> {
    let mut out = Vec::new();
    let igmp = std::fs::read_to_string(format!("/proc/{pid}/net/igmp")).unwrap_or_default();
    let mut ifindex = None;
    for l in igmp.lines().skip(1) {
        if l.starts_with('\t') {
            let hex = l.split_whitespace().next().unwrap_or_default();
            if let (Some(i), Ok(v)) = (ifindex, u32::from_str_radix(hex, 16)) {
                out.push((i, IpAddr::V4(Ipv4Addr::from(v.to_le_bytes()))));
            }
        } else {
            ifindex = l.split_whitespace().next().and_then(|i| i.parse().ok());
        }
    }
    if v6 {
        let igmp6 = std::fs::read_to_string(format!("/proc/{pid}/net/igmp6")).unwrap_or_default();
        for l in igmp6.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (Some(i), Some(g)) = (f.first().and_then(|i| i.parse().ok()), f.get(2)) else {
                continue;
            };
            if let Ok(v) = u128::from_str_radix(g, 16) {
                out.push((i, IpAddr::V6(Ipv6Addr::from(v))));
            }
        }
    }
    out
}

/// The memberships of socket `fd` (of `pid`'s network namespace, family
/// `family`).
pub fn memberships(pid: u32, fd: &OwnedFd, family: i32) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    for (ifindex, group) in candidates(pid, family == libc::AF_INET6) {
        let mut f = new_filter(ifindex, group);
        // Room for this many sources (the kernel copies no more).
        f.numsrc = MAX_SOURCES as u32;
        let mut len = std::mem::size_of::<GroupFilter>() as libc::socklen_t;
        // SAFETY: f is a live, writable buffer of `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level(&group),
                MCAST_MSFILTER,
                std::ptr::addr_of_mut!(*f).cast(),
                &mut len,
            )
        };
        if r != 0 {
            match last_errno() {
                libc::EADDRNOTAVAIL | libc::EINVAL | libc::ENODEV => continue,
                e => return Err(SysError::new("getsockopt(MCAST_MSFILTER)", None, e)),
            }
        }
        let total = f.numsrc as usize;
        let sources = f.slist[..total.min(MAX_SOURCES)]
            .iter()
            .filter_map(|s| from_storage(s).map(|a| a.ip()))
            .collect();
        out.push(Member {
            ifindex,
            group,
            include: f.fmode == MCAST_INCLUDE,
            sources,
            total_sources: total,
        });
    }
    Ok(out)
}

/// Joins `m`'s group on its interface with its filter.
pub fn join(fd: &OwnedFd, m: &Member) -> Result<()> {
    let what = format!("join {} on interface {}", m.group, m.ifindex);
    let req = GroupReq {
        interface: m.ifindex,
        group: to_storage(&SocketAddr::new(m.group, 0)).0,
    };
    // SAFETY: req is live for the call; its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level(&m.group),
            MCAST_JOIN_GROUP,
            std::ptr::addr_of!(req).cast(),
            std::mem::size_of::<GroupReq>() as libc::socklen_t,
        )
    };
    check(r.into(), &what, None)?;
    if !m.include && m.sources.is_empty() {
        return Ok(());
    }
    let mut f = new_filter(m.ifindex, m.group);
    f.fmode = if m.include {
        MCAST_INCLUDE
    } else {
        MCAST_EXCLUDE
    };
    f.numsrc = m.sources.len().min(MAX_SOURCES) as u32;
    for (d, s) in f.slist.iter_mut().zip(&m.sources) {
        *d = to_storage(&SocketAddr::new(*s, 0)).0;
    }
    // SAFETY: f is live for the call; its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level(&m.group),
            MCAST_MSFILTER,
            std::ptr::addr_of!(*f).cast(),
            std::mem::size_of::<GroupFilter>() as libc::socklen_t,
        )
    };
    check(r.into(), &format!("{what}: source filter"), None).map(drop)
}
