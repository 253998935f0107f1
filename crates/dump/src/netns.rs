//! The tree's network namespace: when the root has one of its own (every
//! process shares it, see checks.rs), its links, addresses, policy
//! routing rules, routes of every table, nexthop objects, sysctls,
//! nftables ruleset and iptables-legacy tables, read (rtnetlink,
//! /proc/sys/net, `nft list`, `iptables-legacy-save -c`) by a thread that
//! joined it. Links: lo and veth pairs (the other end inside, or outside
//! in the dumper's namespace: its name, MAC, MTU and bridge noted); any
//! other kind is refused by name, and so are legacy rules whose state the
//! saved text does not carry.

use crate::checks::refuse;
use crate::{At, Result, Stage};
use stasis_image::netns::{tun_info, Macvlan, NetAddr, NetLink, RawMsg, Tun, TunKept, VethPeer};
use stasis_image::NetNs;
use stasis_sys::netlink::{self, Object};
use stasis_sys::{tool, Pid};
use std::os::unix::fs::MetadataExt;

fn ns_ino(task: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{task}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The sysctls under /proc/sys/net/ of the calling thread's namespace
/// that can be read and written, as (relative name, value). A namespace
/// other than the first shows only its own (per-namespace) sysctls, and
/// the global ones it shows are read-only there.
fn sysctls() -> Vec<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(format!("/proc/sys/net/{d}")) else {
            continue;
        };
        let mut names: Vec<_> = rd.flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = format!("{d}{}", e.file_name().to_string_lossy());
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                dirs.push(format!("{name}/"));
            } else if md.permissions().mode() & 0o600 == 0o600 {
                // Unreadable ones (stable_secret unset: EIO) have no value.
                if let Ok(v) = std::fs::read_to_string(e.path()) {
                    out.push((name, v.trim_end_matches('\n').to_string()));
                }
            }
        }
    }
    out
}

/// The nftables ruleset, table by table, less the network lock's
/// (`stasis_ROOT_*`, made by this dump).
fn nft_ruleset(root: u32) -> std::result::Result<String, String> {
    let tables = match tool::output("nft", &["list", "tables"], None) {
        Ok(t) => t,
        // No nft here: no nftables rules can have been made either.
        Err(e) if e.to_string().contains("No such file") => return Ok(String::new()),
        Err(e) => return Err(format!("listing its nftables tables: {e}")),
    };
    let lock = format!("stasis_{root}_");
    let mut text = String::new();
    for line in tables.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [_, family, name] = w[..] else { continue };
        if name.starts_with(&lock) {
            continue;
        }
        let t = tool::output("nft", &["list", "table", family, name], None)
            .map_err(|e| format!("listing nftables table {family} {name}: {e}"))?;
        text.push_str(&t);
    }
    Ok(text)
}

/// Matches and targets whose state lives in the kernel and that
/// `iptables-legacy-save` does not show (hit lists, token buckets, the
/// remaining quota, the nth counter), or that name objects not saved
/// (ipsets).
const LEGACY_STATEFUL: &[&str] = &[
    "-m recent",
    "-m hashlimit",
    "-m limit",
    "-m quota",
    "--mode nth",
    "-m set",
    "-j SET",
    "-m connlimit",
    "-j IDLETIMER",
    "-j LED",
];

/// iptables-legacy tables (not nftables, so `nft` does not see them),
/// with counters: (IPv4, IPv6), each empty when no table holds a rule or
/// a policy other than ACCEPT. A rule whose state the text does not
/// carry is refused by name.
fn legacy_rules() -> std::result::Result<(String, String), String> {
    let mut out = Vec::new();
    for cmd in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        let Ok(text) = tool::output(cmd, &["-c"], None) else {
            out.push(String::new());
            continue;
        };
        let builtin = ["PREROUTING", "INPUT", "OUTPUT", "FORWARD", "POSTROUTING"];
        // Rules read `[PKTS:BYTES] -A CHAIN ...` with -c; chains
        // `:NAME POLICY [PKTS:BYTES]`.
        let changed = text.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w[..] {
                [c, "-A", ..] if c.starts_with('[') => true,
                ["-A", ..] => true,
                [chain, policy, ..] if chain.starts_with(':') => {
                    !builtin.contains(&&chain[1..]) || policy != "ACCEPT"
                }
                _ => false,
            }
        });
        if let Some(l) = text.lines().find(|l| {
            LEGACY_STATEFUL
                .iter()
                .any(|m| format!("{l} ").contains(&format!("{m} ")))
        }) {
            return Err(format!(
                "iptables-legacy rule in its network namespace ({cmd}: {l}): its state in \
                 the kernel is not saved"
            ));
        }
        out.push(if changed { text } else { String::new() });
    }
    Ok((out.remove(0), out.remove(0)))
}

/// The other end of veth `l`: in the namespace too (`inside`), or in the
/// dumper's (`host`: its links), found by index and checked to point back.
fn veth_peer(l: &netlink::Link, links: &[netlink::Link], host: &[netlink::Link]) -> VethPeer {
    if l.link_netnsid.is_none() {
        let name = links
            .iter()
            .find(|p| p.index == l.link)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        return VethPeer {
            name,
            inside: Some(l.link),
            ..VethPeer::default()
        };
    }
    match host
        .iter()
        .find(|p| p.index == l.link && p.kind == "veth" && p.link == l.index)
    {
        Some(p) => VethPeer {
            name: p.name.clone(),
            inside: None,
            mac: p.mac.clone(),
            mtu: p.mtu,
            master: host
                .iter()
                .find(|m| p.master != 0 && m.index == p.master)
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            down: p.flags & libc::IFF_UP as u32 == 0,
            qdisc: p.qdisc.clone(),
        },
        // In a third namespace: the restore names it (criu's --veth-pair).
        None => VethPeer::default(),
    }
}

/// Macvlan `l`: its mode, flags and broadcast queue length, and its lower
/// device's name (in the namespace, or in the dumper's: found by index;
/// in a third, unnamed). Source mode (a MAC list) and a broadcast cutoff
/// other than the default are refused by name.
fn macvlan(
    l: &netlink::Link,
    links: &[netlink::Link],
    host: &[netlink::Link],
    host_id: Option<i32>,
) -> std::result::Result<Macvlan, String> {
    const MODE: u16 = 1;
    const FLAGS: u16 = 2;
    const BC_QUEUE_LEN: u16 = 7;
    const BC_CUTOFF: u16 = 9;
    const SOURCE: u32 = 16;
    let get = |t: u16| {
        l.info_data
            .iter()
            .find(|(x, _)| *x == t)
            .map(|(_, v)| v.as_slice())
    };
    let u32of = |v: &[u8]| {
        v.get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mode = get(MODE).map_or(0, u32of);
    let flags = get(FLAGS).map_or(0, |v| {
        v.get(..2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
    });
    let cutoff = get(BC_CUTOFF).map_or(1, u32of) as i32;
    if mode == SOURCE || cutoff != 1 {
        return Err(format!(
            "macvlan {} (index {}) in its network namespace: {}: not restored",
            l.name,
            l.index,
            if mode == SOURCE {
                "source mode (its MAC list)".to_string()
            } else {
                format!("broadcast cutoff {cutoff}")
            }
        ));
    }
    let (lower, inside) = match l.link_netnsid {
        None => (
            links
                .iter()
                .find(|p| p.index == l.link)
                .map(|p| p.name.clone()),
            true,
        ),
        Some(id) if Some(id) == host_id => (
            host.iter()
                .find(|p| p.index == l.link)
                .map(|p| p.name.clone()),
            false,
        ),
        Some(_) => (None, false),
    };
    Ok(Macvlan {
        mode,
        flags,
        bc_queue_len: get(BC_QUEUE_LEN).map_or(0, u32of),
        lower: lower.unwrap_or_default(),
        inside,
    })
}

/// Tun/tap device `l` (IFLA_TUN_*): a persistent one with no queue
/// attached, and what it keeps; one a process holds open is refused by
/// name (the descriptor is not restored either).
fn tun(l: &netlink::Link) -> std::result::Result<Tun, String> {
    let (mut tun, queues, persist) = tun_info(&l.info_data);
    let dev = format!(
        "tun/tap device {} (index {}) in its network namespace",
        l.name, l.index
    );
    if queues > 0 || !persist {
        return Err(format!(
            "{dev}: {queues} queue(s) attached (a process holds /dev/net/tun): not restored"
        ));
    }
    tun.kept = tun_kept(&l.name, &tun).map_err(|e| format!("{dev}: {e}"))?;
    Ok(tun)
}

/// What persistent device `name` keeps: its ethtool features, the
/// offloads TUNSETOFFLOAD allowed (read from them), vnet header size and
/// byte order (read by attaching to it, which changes nothing of it).
/// Refused: a socket filter (TUNATTACHFILTER; its program cannot be read
/// back), and offloads changed through ethtool after TUNSETOFFLOAD (which
/// offloads it allowed is then not shown).
fn tun_kept(name: &str, t: &Tun) -> std::result::Result<TunKept, String> {
    use stasis_sys::{ethtool, tun::*};
    let (requested, active) = ethtool::requested_and_active(name).map_err(|e| e.to_string())?;
    // The offloads TUNSETOFFLOAD governs, as the device has them (a
    // process can change each: requested on by default).
    let feats = ethtool::features(name).map_err(|e| e.to_string())?;
    let user: Vec<&(&str, u32)> = OFFLOADS
        .iter()
        .filter(|(n, _)| feats.iter().any(|x| x.available && x.name == *n))
        .collect();
    let on = |v: &[String]| -> Vec<&str> {
        user.iter()
            .map(|(n, _)| *n)
            .filter(|n| v.iter().any(|x| x == n))
            .collect()
    };
    let (req, act) = (on(&requested), on(&active));
    // TUNSETOFFLOAD asks for exactly what it allows, so after it the
    // requested offloads are the active ones; a device it never touched
    // asks for all of them and has none. Anything else was changed through
    // ethtool since.
    if req != act && !(req.len() == user.len() && act.is_empty()) {
        return Err(format!(
            "offloads changed through ethtool after TUNSETOFFLOAD (asked for {req:?}, on {act:?}): \
             which ones TUNSETOFFLOAD allowed is not shown (not supported)"
        ));
    }
    let offload = user
        .iter()
        .filter(|(n, _)| act.contains(n))
        .fold(0, |a, (_, f)| a | f);
    let flags = iff_flags(t.tap, t.pi, t.vnet_hdr, t.multi_queue);
    let (k, filter) = read_kept(name, flags).map_err(|e| format!("attaching to read it: {e}"))?;
    if filter > 0 {
        return Err(format!(
            "a socket filter of {filter} instructions (TUNATTACHFILTER) left by a process that \
             closed it: its program cannot be read back (not supported)"
        ));
    }
    Ok(TunKept {
        offload,
        vnet_hdr_sz: k.vnet_hdr_sz.max(0) as u32,
        vnet_le: k.vnet_le,
        vnet_be: k.vnet_be,
        features_requested: requested,
        features_active: active,
    })
}

/// The namespace's contents, or why it cannot be restored.
fn read_inside(
    root: u32,
    host: Vec<netlink::Link>,
    host_ns: std::os::fd::OwnedFd,
) -> std::result::Result<NetNs, String> {
    let links = netlink::links().map_err(|e| format!("reading links: {e}"))?;
    if let Some(l) = links.iter().find(|l| {
        let lo = l.name == "lo" && l.kind.is_empty();
        !(lo || matches!(&l.kind[..], "veth" | "macvlan" | "tun"))
    }) {
        let kind = if l.kind.is_empty() { "device" } else { &l.kind };
        return Err(format!(
            "link {} ({kind}, index {}) in its network namespace: only lo, veth pairs, \
             macvlan links and tun/tap devices are restored",
            l.name, l.index
        ));
    }
    let mut tuns = Vec::new();
    for l in links.iter().filter(|l| l.kind == "tun") {
        tuns.push((l.index, tun(l)?));
    }
    let mut macvlans = Vec::new();
    for l in links.iter().filter(|l| l.kind == "macvlan") {
        let host_id = netlink::nsid_of(&host_ns)
            .map_err(|e| format!("the dumper's namespace id in the tree's: {e}"))?;
        macvlans.push((l.index, macvlan(l, &links, &host, host_id)?));
    }
    let (iptables_legacy, ip6tables_legacy) = legacy_rules()?;
    let nft = nft_ruleset(root)?;
    let addrs = netlink::addrs().map_err(|e| format!("reading addresses: {e}"))?;
    let (rules, routes, nexthops) = routing()?;
    Ok(NetNs {
        links: links
            .iter()
            .map(|l| NetLink {
                index: l.index,
                name: l.name.clone(),
                kind: l.kind.clone(),
                up: l.flags & libc::IFF_UP as u32 != 0,
                mtu: l.mtu,
                mac: l.mac.clone(),
                qdisc: l.qdisc.clone(),
                veth: (l.kind == "veth").then(|| veth_peer(l, &links, &host)),
                macvlan: macvlans
                    .iter()
                    .find(|(i, _)| *i == l.index)
                    .map(|(_, m)| m.clone()),
                tun: tuns
                    .iter()
                    .find(|(i, _)| *i == l.index)
                    .map(|(_, t)| t.clone()),
            })
            .collect(),
        addrs: addrs.into_iter().map(addr).collect(),
        routes: Vec::new(),
        route_msgs: routes,
        rule_msgs: rules,
        nexthop_msgs: nexthops,
        sysctls: sysctls(),
        nft,
        iptables_legacy,
        ip6tables_legacy,
    })
}

fn addr(a: netlink::Addr) -> NetAddr {
    NetAddr {
        family: a.family,
        prefixlen: a.prefixlen,
        flags: a.flags,
        scope: a.scope,
        index: a.index,
        local: a.local,
        address: a.address,
    }
}

/// Rules, routes and nexthops.
type Routing = (Vec<RawMsg>, Vec<RawMsg>, Vec<RawMsg>);

/// Rules, routes (every table) and nexthop objects, as the kernel dumps
/// them. Routes of a family other than IPv4 and IPv6 (multicast
/// forwarding entries, MPLS) are refused by name.
fn routing() -> std::result::Result<Routing, String> {
    let dump = |o: Object, what: &str| {
        netlink::dump_raw(o).map_err(|e| format!("reading its {what}: {e}"))
    };
    let rules = dump(Object::Rule, "policy routing rules")?;
    let routes = dump(Object::Route, "routes")?;
    // A kernel without nexthop objects has none to save.
    let nexthops = match netlink::dump_raw(Object::Nexthop) {
        Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => Vec::new(),
        r => r.map_err(|e| format!("reading its nexthop objects: {e}"))?,
    };
    if let Some(r) = routes
        .iter()
        .find(|r| !matches!(i32::from(r[0]), libc::AF_INET | libc::AF_INET6))
    {
        return Err(format!(
            "a route of address family {} (multicast forwarding or MPLS) in its network \
             namespace: not restored",
            r[0]
        ));
    }
    let raw = |v: Vec<Vec<u8>>| v.into_iter().map(RawMsg).collect();
    Ok((raw(rules), raw(routes), raw(nexthops)))
}

/// The root's network namespace, if it is not stasis's own.
pub(crate) fn collect(root: Pid) -> Result<Option<NetNs>> {
    let p = root.0 as u32;
    if ns_ino(&p.to_string()) == ns_ino("self") {
        return Ok(None);
    }
    let host = netlink::links().at(p, Stage::Collect)?;
    let host_ns =
        stasis_sys::util::open("/proc/thread-self/ns/net", libc::O_RDONLY | libc::O_CLOEXEC)
            .at(p, Stage::Collect)?;
    stasis_sys::nsenter::in_ns_of(root, "net", libc::CLONE_NEWNET, move || {
        read_inside(p, host, host_ns)
    })
    .at(p, Stage::Collect)?
    .map(Some)
    .map_err(|what| refuse(p, what))
}
