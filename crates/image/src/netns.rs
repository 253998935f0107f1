//! The network namespace of a tree, when the tree's root had one of its
//! own: its links (lo), addresses, main-table routes and a few sysctls. A
//! restore creates a new namespace with them before any socket of the
//! tree is made.

use serde::{Deserialize, Serialize};

/// The sysctls saved, under /proc/sys/net/.
pub const SYSCTLS: &[&str] = &[
    "ipv4/ip_forward",
    "ipv4/conf/all/forwarding",
    "ipv4/conf/default/forwarding",
    "ipv4/conf/all/rp_filter",
    "ipv4/conf/default/rp_filter",
    "ipv6/conf/all/disable_ipv6",
    "ipv6/conf/default/disable_ipv6",
    "ipv6/conf/lo/disable_ipv6",
    "ipv6/conf/all/forwarding",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetLink {
    pub index: i32,
    pub name: String,
    /// IFLA_INFO_KIND; empty for lo.
    #[serde(default)]
    pub kind: String,
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAddr {
    pub family: u8,
    pub prefixlen: u8,
    /// IFA_F_* flags.
    pub flags: u32,
    pub scope: u8,
    /// The link's index.
    pub index: i32,
    pub local: Vec<u8>,
    pub address: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRoute {
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetNs {
    pub links: Vec<NetLink>,
    pub addrs: Vec<NetAddr>,
    pub routes: Vec<NetRoute>,
    /// (name under /proc/sys/net/, value) for the [`SYSCTLS`] present.
    pub sysctls: Vec<(String, String)>,
}

impl NetNs {
    /// Bounds and names: only [`SYSCTLS`], addresses of 4 or 16 bytes.
    pub fn check(&self) -> Result<(), String> {
        if self.links.len() > 4096 || self.addrs.len() > 65536 || self.routes.len() > 65536 {
            return Err("net: too many links, addresses or routes".into());
        }
        if let Some((n, _)) = self
            .sysctls
            .iter()
            .find(|(n, _)| !SYSCTLS.contains(&n.as_str()))
        {
            return Err(format!("net.sysctls: {n:?} is not one stasis restores"));
        }
        let ok = |v: &Vec<u8>| matches!(v.len(), 0 | 4 | 16);
        if !self.addrs.iter().all(|a| ok(&a.local) && ok(&a.address))
            || !self
                .routes
                .iter()
                .all(|r| ok(&r.dst) && ok(&r.gateway) && ok(&r.prefsrc))
        {
            return Err("net: an address that is neither IPv4 nor IPv6".into());
        }
        Ok(())
    }
}
