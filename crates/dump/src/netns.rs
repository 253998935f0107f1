//! The tree's network namespace: when the root has one of its own (every
//! process shares it, see checks.rs), its links, addresses, main-table
//! routes, sysctls and nftables ruleset, read (rtnetlink, /proc/sys/net,
//! `nft list`) by a thread that joined it. Links: lo and veth pairs (the
//! other end inside, or outside in the dumper's namespace: its name, MAC,
//! MTU and bridge noted); any other kind is refused by name, and so are
//! iptables-legacy rules.

use crate::checks::refuse;
use crate::{At, Result, Stage};
use stasis_image::netns::{NetAddr, NetLink, NetRoute, VethPeer};
use stasis_image::NetNs;
use stasis_sys::{netlink, tool, Pid};
use std::os::unix::fs::MetadataExt;

const RT_TABLE_MAIN: u32 = 254;
const RTPROT_KERNEL: u8 = 2;

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

/// iptables-legacy rules (not nftables, so `nft` does not see them):
/// refused by name.
fn legacy_rules() -> Option<String> {
    for cmd in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        let Ok(out) = tool::output(cmd, &[], None) else {
            continue;
        };
        let changed = out.lines().any(|l| {
            l.starts_with("-A")
                || (l.starts_with(':')
                    && !l.starts_with(":PREROUTING ACCEPT")
                    && !l.starts_with(":INPUT ACCEPT")
                    && !l.starts_with(":OUTPUT ACCEPT")
                    && !l.starts_with(":FORWARD ACCEPT")
                    && !l.starts_with(":POSTROUTING ACCEPT"))
        });
        if changed {
            return Some(format!(
                "iptables-legacy rules in its network namespace ({cmd}): not restored \
                 (nftables and iptables-nft rules are)"
            ));
        }
    }
    None
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
        },
        // In a third namespace: the restore names it (criu's --veth-pair).
        None => VethPeer::default(),
    }
}

/// The namespace's contents, or why it cannot be restored.
fn read_inside(root: u32, host: Vec<netlink::Link>) -> std::result::Result<NetNs, String> {
    let links = netlink::links().map_err(|e| format!("reading links: {e}"))?;
    if let Some(l) = links
        .iter()
        .find(|l| !(l.name == "lo" && l.kind.is_empty()) && l.kind != "veth")
    {
        let kind = if l.kind.is_empty() { "device" } else { &l.kind };
        return Err(format!(
            "link {} ({kind}, index {}) in its network namespace: only lo and veth pairs \
             are restored",
            l.name, l.index
        ));
    }
    if let Some(why) = legacy_rules() {
        return Err(why);
    }
    let nft = nft_ruleset(root)?;
    let addrs = netlink::addrs().map_err(|e| format!("reading addresses: {e}"))?;
    let routes = netlink::routes().map_err(|e| format!("reading routes: {e}"))?;
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
                veth: (l.kind == "veth").then(|| veth_peer(l, &links, &host)),
            })
            .collect(),
        addrs: addrs.into_iter().map(addr).collect(),
        routes: routes
            .into_iter()
            .filter(|r| r.table == RT_TABLE_MAIN && r.protocol != RTPROT_KERNEL)
            .map(route)
            .collect(),
        sysctls: sysctls(),
        nft,
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

fn route(r: netlink::Route) -> NetRoute {
    NetRoute {
        family: r.family,
        dst_len: r.dst_len,
        tos: r.tos,
        table: r.table,
        protocol: r.protocol,
        scope: r.scope,
        rtype: r.rtype,
        dst: r.dst,
        gateway: r.gateway,
        prefsrc: r.prefsrc,
        oif: r.oif,
        priority: r.priority,
    }
}

/// The root's network namespace, if it is not stasis's own.
pub(crate) fn collect(root: Pid) -> Result<Option<NetNs>> {
    let p = root.0 as u32;
    if ns_ino(&p.to_string()) == ns_ino("self") {
        return Ok(None);
    }
    let host = netlink::links().at(p, Stage::Collect)?;
    stasis_sys::nsenter::in_ns_of(root, "net", libc::CLONE_NEWNET, move || {
        read_inside(p, host)
    })
    .at(p, Stage::Collect)?
    .map(Some)
    .map_err(|what| refuse(p, what))
}
