//! The network namespace of a tree, when the tree's root had one of its
//! own: its links (lo and veth pairs), addresses, rules, routes of every
//! table, nexthop objects, the namespace's sysctls, its nftables ruleset
//! and iptables-legacy tables. A restore creates a new
//! namespace with them before any socket of the tree is made.

use serde::{Deserialize, Serialize};

/// The other end of a veth pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethPeer {
    /// Its name (in its own namespace).
    pub name: String,
    /// The peer is in the tree's namespace too: its index there.
    #[serde(default)]
    pub inside: Option<i32>,
    /// Outside: its MAC address, MTU and the bridge it was a port of
    /// (empty: none), as the dumper's namespace showed them.
    #[serde(default)]
    pub mac: Vec<u8>,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub master: String,
    /// Outside: it was down (not IFF_UP) at dump; the restore leaves it
    /// down (the inner end then has no carrier).
    #[serde(default)]
    pub down: bool,
    /// Outside: its root qdisc's kind (see [`NetLink::qdisc`]).
    #[serde(default)]
    pub qdisc: String,
}

/// A macvlan link: its mode and flags, and its lower device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Macvlan {
    /// IFLA_MACVLAN_MODE: 1 private, 2 vepa, 4 bridge, 8 passthru.
    pub mode: u32,
    /// IFLA_MACVLAN_FLAGS (1: nopromisc).
    #[serde(default)]
    pub flags: u16,
    /// IFLA_MACVLAN_BC_QUEUE_LEN (0: not shown).
    #[serde(default)]
    pub bc_queue_len: u32,
    /// The lower device's name: in the tree's namespace too (`inside`),
    /// or in the dumper's (empty: in a third one, named at restore by
    /// criu's `--external macvlan[NAME]:OUTER`).
    pub lower: String,
    #[serde(default)]
    pub inside: bool,
}

/// A persistent tun/tap device (no queue attached): what IFLA_INFO_DATA
/// shows of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tun {
    /// IFF_TAP (else IFF_TUN).
    pub tap: bool,
    /// Packet information header (no IFF_NO_PI).
    #[serde(default)]
    pub pi: bool,
    #[serde(default)]
    pub vnet_hdr: bool,
    #[serde(default)]
    pub multi_queue: bool,
    /// TUNSETOWNER / TUNSETGROUP (absent: none).
    #[serde(default)]
    pub owner: Option<u32>,
    #[serde(default)]
    pub group: Option<u32>,
    /// What the device keeps for the next process to attach (not shown
    /// by rtnetlink).
    #[serde(default)]
    pub kept: TunKept,
}

/// What a persistent tun/tap device keeps from a process that closed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunKept {
    /// TUNSETOFFLOAD's TUN_F_* flags, from its active ethtool features
    /// (0: none allowed).
    #[serde(default)]
    pub offload: u32,
    /// TUNSETVNETHDRSZ (0: not read, the kernel's default 10).
    #[serde(default)]
    pub vnet_hdr_sz: u32,
    /// TUNSETVNETLE, TUNSETVNETBE.
    #[serde(default)]
    pub vnet_le: bool,
    #[serde(default)]
    pub vnet_be: bool,
    /// Its ethtool features (ETH_SS_FEATURES names): those a process can
    /// change that were asked for, and those on. Empty: not read.
    #[serde(default)]
    pub features_requested: Vec<String>,
    #[serde(default)]
    pub features_active: Vec<String>,
}

/// What IFLA_INFO_DATA of a tun/tap link shows: the device, its number
/// of queues a process holds (attached, or detached by TUNSETQUEUE) and
/// whether it is persistent.
pub fn tun_info(d: &[(u16, Vec<u8>)]) -> (Tun, u32, bool) {
    let get = |t: u16| d.iter().find(|(x, _)| *x == t).map(|(_, v)| v.as_slice());
    let flag = |t: u16| get(t).and_then(|v| v.first().copied()).unwrap_or(0) != 0;
    let word = |t: u16| {
        get(t)
            .and_then(|v| v.get(..4))
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // IFLA_TUN_OWNER 1, GROUP 2, TYPE 3, PI 4, VNET_HDR 5, PERSIST 6,
    // MULTI_QUEUE 7.
    let tun = Tun {
        tap: get(3).and_then(|v| v.first().copied()) == Some(2),
        pi: flag(4),
        vnet_hdr: flag(5),
        multi_queue: flag(7),
        owner: word(1),
        group: word(2),
        kept: TunKept::default(),
    };
    // NUM_QUEUES 8, NUM_DISABLED_QUEUES 9.
    let held = word(8).unwrap_or(0) + word(9).unwrap_or(0);
    (tun, held, flag(6))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetLink {
    pub index: i32,
    pub name: String,
    /// IFLA_INFO_KIND; empty for lo.
    #[serde(default)]
    pub kind: String,
    pub up: bool,
    #[serde(default)]
    pub mtu: u32,
    /// IFLA_ADDRESS (the MAC address).
    #[serde(default)]
    pub mac: Vec<u8>,
    /// A veth's other end.
    #[serde(default)]
    pub veth: Option<VethPeer>,
    /// A macvlan's mode and lower device.
    #[serde(default)]
    pub macvlan: Option<Macvlan>,
    /// A tun/tap device's flags and owner.
    #[serde(default)]
    pub tun: Option<Tun>,
    /// Its root qdisc's kind (IFLA_QDISC): "noop" on a link never up; a
    /// link down at dump with another one (noqueue, ...) had been up, and
    /// is set up and down again at restore. Empty: not saved.
    #[serde(default)]
    pub qdisc: String,
}

/// A link down at dump that had been up before (its qdisc is not the
/// "noop" of a link never up).
pub fn was_up(down: bool, qdisc: &str) -> bool {
    down && !qdisc.is_empty() && qdisc != "noop"
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

/// One rtnetlink object (a rule, route or nexthop) as the kernel's dump
/// gave it: its fixed header and attributes, without the netlink header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawMsg(#[serde(with = "crate::hex_bytes")] pub Vec<u8>);

/// The main-table route of images written before routes were kept as
/// [`RawMsg`]s (still restored).
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
    /// Older images' main-table routes; empty in new ones.
    #[serde(default)]
    pub routes: Vec<NetRoute>,
    /// Every IPv4 and IPv6 route of every table, the kernel's own
    /// (protocol kernel) included, as RTM_GETROUTE dumped them: the
    /// restore adds the others and checks the whole set reads back.
    #[serde(default)]
    pub route_msgs: Vec<RawMsg>,
    /// Policy routing rules of every family (`ip rule`, `ip -6 rule`), in
    /// the kernel's order, the default ones included.
    #[serde(default)]
    pub rule_msgs: Vec<RawMsg>,
    /// Nexthop objects (`ip nexthop`).
    #[serde(default)]
    pub nexthop_msgs: Vec<RawMsg>,
    /// `iptables-legacy-save -c` and `ip6tables-legacy-save -c` output
    /// (empty: no legacy rules), loaded with the `-restore -c` tools.
    #[serde(default)]
    pub iptables_legacy: String,
    #[serde(default)]
    pub ip6tables_legacy: String,
    /// (name under /proc/sys/net/, value): every sysctl the namespace
    /// shows that is readable and writable.
    pub sysctls: Vec<(String, String)>,
    /// Its nftables ruleset (`nft list table` of each table, less the
    /// network lock's), as `nft -f` reads it; empty: none.
    #[serde(default)]
    pub nft: String,
}

/// A sysctl name under /proc/sys/net/: a relative path of plain parts.
pub fn sysctl_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 256
        && n.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:@".contains(&b))
        })
}

impl NetNs {
    /// Bounds and names: sysctl names that stay under /proc/sys/net,
    /// addresses of 4 or 16 bytes, link names the kernel accepts.
    pub fn check(&self) -> Result<(), String> {
        if self.links.len() > 4096
            || self.addrs.len() > 65536
            || self.routes.len() > 65536
            || self.sysctls.len() > 65536
            || self.nft.len() > 16 << 20
            || self.route_msgs.len() > 1 << 20
            || self.rule_msgs.len() > 65536
            || self.nexthop_msgs.len() > 65536
            || self.iptables_legacy.len() > 16 << 20
            || self.ip6tables_legacy.len() > 16 << 20
        {
            return Err("net: too many links, addresses, routes or sysctls".into());
        }
        if let Some((n, _)) = self.sysctls.iter().find(|(n, _)| !sysctl_name_ok(n)) {
            return Err(format!("net.sysctls: {n:?} is not a sysctl name"));
        }
        let ifname = |n: &str| {
            !n.is_empty() && n.len() < 16 && n.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        };
        for l in &self.links {
            let peer_ok = l.veth.as_ref().is_none_or(|p| {
                (p.name.is_empty() || ifname(&p.name)) && (p.master.is_empty() || ifname(&p.master))
            }) && l
                .macvlan
                .as_ref()
                .is_none_or(|m| m.lower.is_empty() || ifname(&m.lower));
            if !ifname(&l.name) || !peer_ok {
                return Err(format!("net.links: {:?} is not an interface name", l.name));
            }
        }
        let short = |l: &[RawMsg], header: usize| l.iter().any(|m| m.0.len() < header);
        if short(&self.route_msgs, 12) || short(&self.rule_msgs, 12) || short(&self.nexthop_msgs, 8)
        {
            return Err("net: a rule, route or nexthop shorter than its header".into());
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
