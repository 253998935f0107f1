//! Persistent tun/tap devices, made in the calling thread's network
//! namespace through /dev/net/tun, and what such a device keeps for the
//! next process to attach (read by attaching to it without a carrier).

use crate::{last_errno, Result, SysError};
use std::os::fd::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const TUNGETFEATURES: libc::c_ulong = 0x8004_54cf;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETIFINDEX: libc::c_ulong = 0x4004_54da;
const TUNGETFILTER: libc::c_ulong = 0x8010_54db;
const TUNSETVNETLE: libc::c_ulong = 0x4004_54dc;
const TUNGETVNETLE: libc::c_ulong = 0x8004_54dd;
const TUNSETVNETBE: libc::c_ulong = 0x4004_54de;
const TUNGETVNETBE: libc::c_ulong = 0x8004_54df;
pub const IFF_TUN: u16 = 0x0001;
pub const IFF_TAP: u16 = 0x0002;
const IFF_NO_CARRIER: u16 = 0x0040;
pub const IFF_MULTI_QUEUE: u16 = 0x0100;
pub const IFF_NO_PI: u16 = 0x1000;
pub const IFF_VNET_HDR: u16 = 0x4000;

/// TUNSETIFF's flags of a device of this type, packet information
/// header, vnet header and queues (what rtnetlink shows of them).
pub fn iff_flags(tap: bool, pi: bool, vnet_hdr: bool, multi_queue: bool) -> u16 {
    let mut flags = if tap { IFF_TAP } else { IFF_TUN };
    for (on, f) in [
        (!pi, IFF_NO_PI),
        (vnet_hdr, IFF_VNET_HDR),
        (multi_queue, IFF_MULTI_QUEUE),
    ] {
        if on {
            flags |= f;
        }
    }
    flags
}

/// The kernel's vnet header size of a new device (struct virtio_net_hdr).
pub const DEFAULT_VNET_HDR_SZ: i32 = 10;

/// TUNSETOFFLOAD's flags and the ethtool feature each turns on (the
/// kernel's set_offload): TUN_F_CSUM, TSO4, TSO6, TSO_ECN, USO4|USO6,
/// UDP_TUNNEL_GSO, UDP_TUNNEL_GSO_CSUM.
pub const OFFLOADS: [(&str, u32); 7] = [
    ("tx-checksum-ip-generic", 0x01),
    ("tx-tcp-segmentation", 0x02),
    ("tx-tcp6-segmentation", 0x04),
    ("tx-tcp-ecn-segmentation", 0x08),
    ("tx-udp-segmentation", 0x20 | 0x40),
    ("tx-udp_tnl-segmentation", 0x80),
    ("tx-udp_tnl-csum-segmentation", 0x100),
];

/// What a device keeps across queues: set through a queue, kept once it
/// closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// TUNSETOFFLOAD's TUN_F_* flags (0: not called at making).
    pub offload: u32,
    /// TUNSETVNETHDRSZ.
    pub vnet_hdr_sz: i32,
    /// TUNSETVNETLE, TUNSETVNETBE.
    pub vnet_le: bool,
    pub vnet_be: bool,
}

impl Default for Kept {
    fn default() -> Self {
        Kept {
            offload: 0,
            vnet_hdr_sz: DEFAULT_VNET_HDR_SZ,
            vnet_le: false,
            vnet_be: false,
        }
    }
}

/// A queue of device `name`: /dev/net/tun after TUNSETIFF.
struct Queue(std::fs::File);

impl Queue {
    fn attach(name: &str, index: u32, flags: u16) -> Result<Queue> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| SysError::other("open /dev/net/tun", None, e.to_string()))?;
        let q = Queue(f);
        // TUNSETIFF ignores flags it does not know: a kernel without
        // IFF_NO_CARRIER (before 6.0) would turn the carrier on.
        let known = q.get(TUNGETFEATURES, "TUNGETFEATURES")? as u16;
        if flags & !known != 0 {
            return Err(SysError::other(
                "TUNSETIFF",
                None,
                format!("flags {:#x} not known to this kernel", flags & !known),
            ));
        }
        let mut ifr = [0u8; 40];
        let n = name.len().min(15);
        ifr[..n].copy_from_slice(&name.as_bytes()[..n]);
        ifr[16..18].copy_from_slice(&flags.to_le_bytes());
        if index > 0 {
            q.call(
                TUNSETIFINDEX,
                std::ptr::addr_of!(index) as libc::c_ulong,
                "TUNSETIFINDEX",
            )?;
        }
        q.call(TUNSETIFF, ifr.as_mut_ptr() as libc::c_ulong, "TUNSETIFF")?;
        Ok(q)
    }

    fn call(&self, req: libc::c_ulong, arg: libc::c_ulong, op: &str) -> Result<()> {
        // SAFETY: tun ioctls on our own descriptor; a pointer argument
        // points at a live local of the size the request reads or writes.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), req, arg) } < 0 {
            Err(SysError::new(op, None, last_errno()))
        } else {
            Ok(())
        }
    }

    fn get(&self, req: libc::c_ulong, op: &str) -> Result<i32> {
        let mut v: libc::c_int = 0;
        self.call(req, std::ptr::addr_of_mut!(v) as libc::c_ulong, op)?;
        Ok(v)
    }

    fn set(&self, req: libc::c_ulong, v: i32, op: &str) -> Result<()> {
        self.call(req, std::ptr::addr_of!(v) as libc::c_ulong, op)
    }
}

/// Makes persistent device `name` with interface index `index` (0: the
/// kernel's choice), IFF_* `flags`, owner and group and what it keeps,
/// and lets go of it.
pub fn make_persistent(
    name: &str,
    index: u32,
    flags: u16,
    owner: Option<u32>,
    group: Option<u32>,
    kept: &Kept,
) -> Result<()> {
    let q = Queue::attach(name, index, flags)?;
    if let Some(u) = owner {
        q.call(TUNSETOWNER, libc::c_ulong::from(u), "TUNSETOWNER")?;
    }
    if let Some(g) = group {
        q.call(TUNSETGROUP, libc::c_ulong::from(g), "TUNSETGROUP")?;
    }
    if kept.offload != 0 {
        q.call(
            TUNSETOFFLOAD,
            libc::c_ulong::from(kept.offload),
            "TUNSETOFFLOAD",
        )?;
    }
    if kept.vnet_hdr_sz != DEFAULT_VNET_HDR_SZ {
        q.set(TUNSETVNETHDRSZ, kept.vnet_hdr_sz, "TUNSETVNETHDRSZ")?;
    }
    if kept.vnet_le {
        q.set(TUNSETVNETLE, 1, "TUNSETVNETLE")?;
    }
    if kept.vnet_be {
        q.set(TUNSETVNETBE, 1, "TUNSETVNETBE")?;
    }
    q.call(TUNSETPERSIST, 1, "TUNSETPERSIST")
}

/// What persistent device `name` (IFF_* `flags` as rtnetlink shows them:
/// TUN or TAP, NO_PI, VNET_HDR, MULTI_QUEUE; no queue attached) keeps
/// (the offloads left at 0), and the length of the socket filter
/// TUNATTACHFILTER left on a tap (0: none), read by attaching to it: with
/// IFF_NO_CARRIER its carrier stays off, so nothing of the device changes
/// (TUNSETIFF writes back the flags it already has) and a dumper killed
/// while attached leaves it as it was (the queue closes with it).
pub fn read_kept(name: &str, flags: u16) -> Result<(Kept, u16)> {
    let q = Queue::attach(name, 0, flags | IFF_NO_CARRIER)?;
    let vnet_hdr_sz = match q.get(TUNGETVNETHDRSZ, "TUNGETVNETHDRSZ") {
        // With a packet information header (IFF_NOFILTER is IFF_NO_PI)
        // TUNSETIFF puts a socket filter the device keeps on the new
        // queue and, having done so, returns without attaching it.
        Err(e) if e.errno() == Some(libc::EBADFD) => {
            return Err(SysError::other(
                "TUNSETIFF",
                None,
                "not attached: the kernel put a socket filter left by TUNATTACHFILTER on the queue instead",
            ))
        }
        r => r?,
    };
    // Without TUN_VNET_CROSS_LE the big-endian header cannot be asked for
    // (EINVAL), nor set.
    let be = match q.get(TUNGETVNETBE, "TUNGETVNETBE") {
        Err(e) if e.errno() == Some(libc::EINVAL) => 0,
        r => r?,
    };
    let filter_len = if flags & IFF_TAP != 0 {
        // struct sock_fprog: the length, then the setter's pointer.
        let mut fprog = [0u64; 2];
        q.call(
            TUNGETFILTER,
            fprog.as_mut_ptr() as libc::c_ulong,
            "TUNGETFILTER",
        )?;
        fprog[0] as u16
    } else {
        0
    };
    let kept = Kept {
        offload: 0,
        vnet_hdr_sz,
        vnet_le: q.get(TUNGETVNETLE, "TUNGETVNETLE")? != 0,
        vnet_be: be != 0,
    };
    Ok((kept, filter_len))
}
