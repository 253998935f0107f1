//! Persistent tun/tap devices, made in the calling thread's network
//! namespace through /dev/net/tun.

use crate::{last_errno, Result, SysError};
use std::os::fd::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const TUNSETIFINDEX: libc::c_ulong = 0x4004_54da;
pub const IFF_TUN: u16 = 0x0001;
pub const IFF_TAP: u16 = 0x0002;
pub const IFF_MULTI_QUEUE: u16 = 0x0100;
pub const IFF_NO_PI: u16 = 0x1000;
pub const IFF_VNET_HDR: u16 = 0x4000;

/// Makes persistent device `name` with interface index `index` (0: the
/// kernel's choice), IFF_* `flags`, owner and group, and lets go of it.
pub fn make_persistent(
    name: &str,
    index: u32,
    flags: u16,
    owner: Option<u32>,
    group: Option<u32>,
) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| SysError::other("open /dev/net/tun", None, e.to_string()))?;
    let fd = f.as_raw_fd();
    let mut ifr = [0u8; 40];
    let n = name.len().min(15);
    ifr[..n].copy_from_slice(&name.as_bytes()[..n]);
    ifr[16..18].copy_from_slice(&flags.to_le_bytes());
    let call = |req: libc::c_ulong, arg: libc::c_ulong, op: &str| {
        // SAFETY: tun ioctls on our own descriptor; a pointer argument
        // points at a live local of the size the request reads.
        if unsafe { libc::ioctl(fd, req, arg) } < 0 {
            Err(SysError::new(op, None, last_errno()))
        } else {
            Ok(())
        }
    };
    if index > 0 {
        call(
            TUNSETIFINDEX,
            std::ptr::addr_of!(index) as libc::c_ulong,
            "TUNSETIFINDEX",
        )?;
    }
    call(TUNSETIFF, ifr.as_mut_ptr() as libc::c_ulong, "TUNSETIFF")?;
    if let Some(u) = owner {
        call(TUNSETOWNER, libc::c_ulong::from(u), "TUNSETOWNER")?;
    }
    if let Some(g) = group {
        call(TUNSETGROUP, libc::c_ulong::from(g), "TUNSETGROUP")?;
    }
    call(TUNSETPERSIST, 1, "TUNSETPERSIST")
}
