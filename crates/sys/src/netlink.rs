//! A small rtnetlink client: links, addresses and routes of the calling
//! thread's network namespace read (RTM_GET* dumps) and recreated
//! (RTM_NEW*, RTM_SETLINK), plus the generic request loop sock_diag uses.

use crate::{check, last_errno, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NETLINK_ROUTE: i32 = 0;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_QDISC: u16 = 6;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn open(protocol: i32) -> Result<OwnedFd> {
    // SAFETY: plain socket creation; the descriptor is ours to own.
    let fd = check(
        unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                protocol,
            )
        }
        .into(),
        "socket(AF_NETLINK)",
        None,
    )?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends one request (`body` after the netlink header) on a new netlink
/// socket of `protocol` and hands each answer's payload and type to
/// `each`, until NLMSG_DONE or an acknowledgement; an error answer is
/// returned as the error.
pub(crate) fn transact(
    protocol: i32,
    msg_type: u16,
    flags: u16,
    body: &[u8],
    mut each: impl FnMut(u16, &[u8]),
) -> Result<()> {
    let sock = open(protocol)?;
    let mut req = vec![0u8; 16 + body.len()];
    let total = req.len() as u32;
    req[0..4].copy_from_slice(&total.to_le_bytes());
    req[4..6].copy_from_slice(&msg_type.to_le_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_le_bytes());
    req[8..12].copy_from_slice(&1u32.to_le_bytes());
    req[16..].copy_from_slice(body);
    // SAFETY: sockaddr_nl is plain data; zero means "the kernel".
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: req and sa live for the call.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            std::ptr::addr_of!(sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    check(n as libc::c_long, "send netlink request", None)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(SysError::new("recv netlink", None, last_errno()));
        }
        let data = &buf[..n as usize];
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32le(data, off) as usize;
            let ty = u16le(data, off + 4);
            if len < 16 || off + len > data.len() {
                return Err(SysError::other(
                    "netlink",
                    None,
                    "malformed netlink message",
                ));
            }
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let err =
                        i32::from_le_bytes(data[off + 16..off + 20].try_into().unwrap_or_default());
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(SysError::new("netlink", None, -err))
                    };
                }
                _ => each(ty, &data[off + 16..off + len]),
            }
            off += (len + 3) & !3;
        }
    }
}

/// The attributes (type, payload) after a fixed header of `skip` bytes.
fn attrs(msg: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    attributes(msg, skip)
        .into_iter()
        .map(|(t, v)| (t & 0x3fff, v))
        .collect()
}

fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_le_bytes());
    buf.extend_from_slice(&ty.to_le_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    /// IFF_* flags (IFF_UP = 1).
    pub flags: u32,
    /// IFLA_INFO_KIND ("veth", "dummy", ...), empty for lo and devices
    /// without one.
    pub kind: String,
    pub mtu: u32,
    /// IFLA_ADDRESS: the hardware address.
    pub mac: Vec<u8>,
    /// IFLA_LINK: a veth's peer index (in the peer's namespace), 0 if none.
    pub link: i32,
    /// IFLA_MASTER: the bridge (or bond) it is a port of, 0 if none.
    pub master: i32,
    /// IFLA_LINK_NETNSID: `link` is in another namespace (its id here).
    pub link_netnsid: Option<i32>,
    /// IFLA_OPERSTATE (RFC 2863: 0 unknown, 2 down, 6 up, ...).
    pub operstate: u8,
    /// IFLA_QDISC: its root qdisc's kind ("noop" until it was first up).
    pub qdisc: String,
    /// IFLA_INFO_DATA's attributes (the kind's own: a macvlan's mode, a
    /// tun's owner, ...), nested flag cleared.
    pub info_data: Vec<(u16, Vec<u8>)>,
}

/// Every interface of the calling thread's network namespace.
pub fn links() -> Result<Vec<Link>> {
    let mut out = Vec::new();
    transact(
        NETLINK_ROUTE,
        RTM_GETLINK,
        NLM_F_DUMP,
        &[0u8; 16],
        |ty, m| {
            if ty != RTM_NEWLINK || m.len() < 16 {
                return;
            }
            let mut l = Link {
                index: u32le(m, 4) as i32,
                name: String::new(),
                flags: u32le(m, 8),
                kind: String::new(),
                mtu: 0,
                mac: Vec::new(),
                link: 0,
                master: 0,
                link_netnsid: None,
                operstate: 0,
                qdisc: String::new(),
                info_data: Vec::new(),
            };
            let int = |v: &[u8]| if v.len() >= 4 { u32le(v, 0) } else { 0 };
            for (t, v) in attrs(m, 16) {
                match t {
                    IFLA_IFNAME => l.name = cstr(v),
                    IFLA_ADDRESS => l.mac = v.to_vec(),
                    IFLA_MTU => l.mtu = int(v),
                    IFLA_QDISC => l.qdisc = cstr(v),
                    IFLA_LINK => l.link = int(v) as i32,
                    IFLA_MASTER => l.master = int(v) as i32,
                    IFLA_LINK_NETNSID => l.link_netnsid = Some(int(v) as i32),
                    IFLA_OPERSTATE => l.operstate = v.first().copied().unwrap_or(0),
                    IFLA_LINKINFO => {
                        for (t, x) in attrs(v, 0) {
                            match t {
                                IFLA_INFO_KIND => l.kind = cstr(x),
                                IFLA_INFO_DATA => {
                                    l.info_data = attrs(x, 0)
                                        .into_iter()
                                        .map(|(t, y)| (t, y.to_vec()))
                                        .collect()
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push(l);
        },
    )?;
    Ok(out)
}

fn cstr(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
}

/// Sets or clears IFF_UP on interface `index`.
pub fn set_link_up(index: i32, up: bool) -> Result<()> {
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&index.to_le_bytes());
    body[8..12].copy_from_slice(&u32::from(up).to_le_bytes());
    body[12..16].copy_from_slice(&1u32.to_le_bytes()); // change: IFF_UP
    transact(NETLINK_ROUTE, RTM_NEWLINK, NLM_F_ACK, &body, |_, _| {})
}

/// An interface address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub family: u8,
    pub prefixlen: u8,
    pub flags: u32,
    pub scope: u8,
    pub index: i32,
    pub local: Vec<u8>,
    pub address: Vec<u8>,
}

/// Every address of the calling thread's network namespace.
pub fn addrs() -> Result<Vec<Addr>> {
    let mut out = Vec::new();
    transact(
        NETLINK_ROUTE,
        RTM_GETADDR,
        NLM_F_DUMP,
        &[0u8; 8],
        |ty, m| {
            if ty != RTM_NEWADDR || m.len() < 8 {
                return;
            }
            let mut a = Addr {
                family: m[0],
                prefixlen: m[1],
                flags: u32::from(m[2]),
                scope: m[3],
                index: u32le(m, 4) as i32,
                local: Vec::new(),
                address: Vec::new(),
            };
            for (t, v) in attrs(m, 8) {
                match t {
                    IFA_ADDRESS => a.address = v.to_vec(),
                    IFA_LOCAL => a.local = v.to_vec(),
                    IFA_FLAGS if v.len() >= 4 => a.flags = u32le(v, 0),
                    _ => {}
                }
            }
            out.push(a);
        },
    )?;
    Ok(out)
}

/// Adds an address (fails with EEXIST if it is there).
pub fn add_addr(a: &Addr) -> Result<()> {
    new_addr(a, NLM_F_CREATE | NLM_F_EXCL)
}

/// Sets the flags of an address that is there to `a.flags` (an IPv6
/// address's nodad cleared, for one).
pub fn change_addr(a: &Addr) -> Result<()> {
    new_addr(a, NLM_F_REPLACE)
}

fn new_addr(a: &Addr, flags: u16) -> Result<()> {
    let mut body = vec![a.family, a.prefixlen, a.flags as u8, a.scope];
    body.extend_from_slice(&a.index.to_le_bytes());
    if !a.local.is_empty() {
        put_attr(&mut body, IFA_LOCAL, &a.local);
    }
    if !a.address.is_empty() {
        put_attr(&mut body, IFA_ADDRESS, &a.address);
    }
    put_attr(&mut body, IFA_FLAGS, &a.flags.to_le_bytes());
    transact(
        NETLINK_ROUTE,
        RTM_NEWADDR,
        NLM_F_ACK | flags,
        &body,
        |_, _| {},
    )
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub family: u8,
    pub dst_len: u8,
    pub tos: u8,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub rtype: u8,
    pub dst: Vec<u8>,
    pub gateway: Vec<u8>,
    pub prefsrc: Vec<u8>,
    pub oif: i32,
    pub priority: u32,
}

/// Adds a route (fails with EEXIST if it is there).
pub fn add_route(r: &Route) -> Result<()> {
    let table = r.table.min(255) as u8;
    let mut body = vec![
        r.family, r.dst_len, 0, r.tos, table, r.protocol, r.scope, r.rtype,
    ];
    body.extend_from_slice(&0u32.to_le_bytes());
    put_attr(&mut body, RTA_TABLE, &r.table.to_le_bytes());
    for (ty, v) in [
        (RTA_DST, &r.dst),
        (RTA_GATEWAY, &r.gateway),
        (RTA_PREFSRC, &r.prefsrc),
    ] {
        if !v.is_empty() {
            put_attr(&mut body, ty, v);
        }
    }
    if r.oif != 0 {
        put_attr(&mut body, RTA_OIF, &r.oif.to_le_bytes());
    }
    if r.priority != 0 {
        put_attr(&mut body, RTA_PRIORITY, &r.priority.to_le_bytes());
    }
    transact(
        NETLINK_ROUTE,
        RTM_NEWROUTE,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &body,
        |_, _| {},
    )
}

/// Runs `f` on a new thread that joins the network namespace of socket
/// `sock` (SIOCGSKNS): sock_diag answers for its own namespace only.
pub fn in_ns_of_socket<T: Send + 'static>(
    sock: &impl AsRawFd,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: the ioctl takes no argument and returns a new descriptor.
    let ns = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSKNS) };
    check(ns.into(), "ioctl(SIOCGSKNS)", None)?;
    // SAFETY: fresh descriptor from the kernel.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    crate::nsenter::in_ns(ns, libc::CLONE_NEWNET, None, f)
}

const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_GETRULE: u16 = 34;
const RTM_NEWNEXTHOP: u16 = 104;
const RTM_GETNEXTHOP: u16 = 106;

/// Which rtnetlink objects [`dump_raw`] and [`add_raw`] handle: each is
/// kept as the kernel dumps it (its fixed header and attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// fib_rule_hdr, 12 bytes: `ip rule` of every family.
    Rule,
    /// rtmsg, 12 bytes: routes of every table and family.
    Route,
    /// nhmsg, 8 bytes: `ip nexthop` objects.
    Nexthop,
}

impl Object {
    fn types(self) -> (u16, u16, u16) {
        match self {
            Object::Rule => (RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE),
            Object::Route => (RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE),
            Object::Nexthop => (RTM_NEWNEXTHOP, 0, RTM_GETNEXTHOP),
        }
    }

    /// The fixed header's length.
    pub fn header(self) -> usize {
        match self {
            Object::Nexthop => 8,
            _ => 12,
        }
    }
}

/// Every object of kind `o` in the calling thread's network namespace, as
/// the kernel's dump gives it (the payload after the netlink header).
pub fn dump_raw(o: Object) -> Result<Vec<Vec<u8>>> {
    let (new, _, get) = o.types();
    let mut out = Vec::new();
    transact(
        NETLINK_ROUTE,
        get,
        NLM_F_DUMP,
        &vec![0u8; o.header()],
        |ty, m| {
            if ty == new && m.len() >= o.header() {
                out.push(m.to_vec());
            }
        },
    )?;
    Ok(out)
}

/// Adds one object (`body`: a header and attributes), failing with
/// EEXIST if it is there.
pub fn add_raw(o: Object, body: &[u8]) -> Result<()> {
    let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    transact(NETLINK_ROUTE, o.types().0, flags, body, |_, _| {})
}

/// Deletes one rule or route given as dumped.
pub fn del_raw(o: Object, body: &[u8]) -> Result<()> {
    transact(NETLINK_ROUTE, o.types().1, NLM_F_ACK, body, |_, _| {})
}

/// The attributes (type with its flags, payload) of `msg` after a fixed
/// header of `skip` bytes.
pub fn attributes(msg: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = skip;
    while off + 4 <= msg.len() {
        let len = u16le(msg, off) as usize;
        if len < 4 || off + len > msg.len() {
            break;
        }
        out.push((u16le(msg, off + 2), &msg[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// Appends attribute `ty` (padded).
pub fn push_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    put_attr(buf, ty, data)
}

/// The id the calling thread's network namespace gives the namespace of
/// `ns` (RTM_GETNSID), if it has one: what IFLA_LINK_NETNSID says for a
/// link whose other end or lower device is there.
pub fn nsid_of(ns: &impl AsRawFd) -> Result<Option<i32>> {
    const RTM_NEWNSID: u16 = 88;
    const RTM_GETNSID: u16 = 90;
    const NETNSA_NSID: u16 = 1;
    const NETNSA_FD: u16 = 3;
    let mut body = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    put_attr(&mut body, NETNSA_FD, &(ns.as_raw_fd() as u32).to_le_bytes());
    let mut id = None;
    // The answer, then the acknowledgement that ends the loop.
    transact(NETLINK_ROUTE, RTM_GETNSID, NLM_F_ACK, &body, |ty, m| {
        if ty == RTM_NEWNSID {
            if let Some((_, v)) = attrs(m, 4).into_iter().find(|a| a.0 == NETNSA_NSID) {
                id = Some(u32le(v, 0) as i32).filter(|&i| i >= 0);
            }
        }
    })?;
    Ok(id)
}
