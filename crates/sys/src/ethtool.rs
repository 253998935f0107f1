//! A network device's ethtool features (SIOCETHTOOL: ETHTOOL_GFEATURES,
//! ETHTOOL_SFEATURES), by the names of the ETH_SS_FEATURES string set, in
//! the calling thread's network namespace.

use crate::{check, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// One feature: whether a process can change it, whether it was asked
/// for (ethtool -K, or the driver), and whether it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub name: String,
    pub available: bool,
    pub requested: bool,
    pub active: bool,
}

/// SIOCETHTOOL on device `dev` with `buf` as the command.
fn ethtool(dev: &str, buf: &mut [u32], op: &str) -> Result<()> {
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let s = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into(),
        "socket(AF_INET) for SIOCETHTOOL",
        None,
    )?;
    // SAFETY: s was just returned by socket().
    let s = unsafe { OwnedFd::from_raw_fd(s as i32) };
    let mut ifr = [0u8; 40];
    let n = dev.len().min(15);
    ifr[..n].copy_from_slice(&dev.as_bytes()[..n]);
    ifr[16..24].copy_from_slice(&(buf.as_mut_ptr() as usize as u64).to_ne_bytes());
    // SAFETY: the ifreq names a live buffer as large as the command says.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), SIOCETHTOOL, ifr.as_mut_ptr()) };
    check(r.into(), &format!("SIOCETHTOOL {op} on {dev}"), None).map(drop)
}

/// The names of the feature bits, in bit order.
fn names(dev: &str) -> Result<Vec<String>> {
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    ethtool(dev, &mut info, "ETHTOOL_GSSET_INFO")?;
    if info[2] & (1 << ETH_SS_FEATURES) == 0 {
        return Err(SysError::other(
            format!("ETHTOOL_GSSET_INFO on {dev}"),
            None,
            "no feature names",
        ));
    }
    let n = info[4] as usize;
    let mut buf = vec![0u32; 3 + n * ETH_GSTRING_LEN / 4];
    buf[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, n as u32]);
    ethtool(dev, &mut buf, "ETHTOOL_GSTRINGS")?;
    let bytes: Vec<u8> = buf[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|c| {
            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect())
}

/// Every named feature of `dev`.
pub fn features(dev: &str) -> Result<Vec<Feature>> {
    let names = names(dev)?;
    let blocks = names.len().div_ceil(32);
    let mut buf = vec![0u32; 2 + 4 * blocks];
    buf[..2].copy_from_slice(&[ETHTOOL_GFEATURES, blocks as u32]);
    ethtool(dev, &mut buf, "ETHTOOL_GFEATURES")?;
    let bit = |i: usize, k: usize| buf[2 + 4 * (i / 32) + k] & (1 << (i % 32)) != 0;
    Ok(names
        .into_iter()
        .enumerate()
        .filter(|(_, n)| !n.is_empty())
        .map(|(i, name)| Feature {
            name,
            available: bit(i, 0),
            requested: bit(i, 1),
            active: bit(i, 2),
        })
        .collect())
}

/// The names of the features of `dev` a process can change that are
/// asked for, and of those on.
pub fn requested_and_active(dev: &str) -> Result<(Vec<String>, Vec<String>)> {
    let f = features(dev)?;
    let names = |p: fn(&Feature) -> bool| -> Vec<String> {
        f.iter().filter(|x| p(x)).map(|x| x.name.clone()).collect()
    };
    Ok((names(|x| x.available && x.requested), names(|x| x.active)))
}

/// Asks for every feature of `dev` a process can change to be on if it is
/// named in `on`, off otherwise (ethtool -K).
pub fn set_requested(dev: &str, on: &[String]) -> Result<()> {
    let names = names(dev)?;
    let blocks = names.len().div_ceil(32);
    let mut get = vec![0u32; 2 + 4 * blocks];
    get[..2].copy_from_slice(&[ETHTOOL_GFEATURES, blocks as u32]);
    ethtool(dev, &mut get, "ETHTOOL_GFEATURES")?;
    let mut set = vec![0u32; 2 + 2 * blocks];
    set[..2].copy_from_slice(&[ETHTOOL_SFEATURES, blocks as u32]);
    for (i, n) in names.iter().enumerate() {
        let (b, m) = (i / 32, 1u32 << (i % 32));
        if get[2 + 4 * b] & m == 0 {
            continue; // not changeable
        }
        set[2 + 2 * b] |= m;
        if on.contains(n) {
            set[3 + 2 * b] |= m;
        }
    }
    ethtool(dev, &mut set, "ETHTOOL_SFEATURES")
}
