//! The tree's network namespace: when the root has one of its own (every
//! process shares it, see checks.rs), its links, addresses, main-table
//! routes and sysctls, read over rtnetlink by a thread that joined it.
//! Only lo is restored: any other link is refused by name, and so are
//! nftables rules inside the namespace.

use crate::checks::refuse;
use crate::{At, Result, Stage};
use stasis_image::netns::{NetAddr, NetLink, NetRoute, SYSCTLS};
use stasis_image::NetNs;
use stasis_sys::{netlink, Pid};
use std::os::unix::fs::MetadataExt;

const RT_TABLE_MAIN: u32 = 254;
const RTPROT_KERNEL: u8 = 2;

fn ns_ino(task: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{task}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The namespace's contents, or why it cannot be restored.
fn read_inside() -> std::result::Result<NetNs, String> {
    let links = netlink::links().map_err(|e| format!("reading links: {e}"))?;
    if let Some(l) = links.iter().find(|l| l.name != "lo" || !l.kind.is_empty()) {
        let kind = if l.kind.is_empty() { "device" } else { &l.kind };
        return Err(format!(
            "link {} ({kind}, index {}) in its network namespace: only lo is restored yet \
             (a veth pair needs criu's --veth-pair/--external veth[...], not supported yet)",
            l.name, l.index
        ));
    }
    let ruleset = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output();
    if let Ok(out) = ruleset {
        if out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Err(
                "nftables rules in its network namespace (nft list ruleset): not \
                        restored yet"
                    .into(),
            );
        }
    }
    let addrs = netlink::addrs().map_err(|e| format!("reading addresses: {e}"))?;
    let routes = netlink::routes().map_err(|e| format!("reading routes: {e}"))?;
    let sysctls = SYSCTLS
        .iter()
        .filter_map(|n| {
            let v = std::fs::read_to_string(format!("/proc/sys/net/{n}")).ok()?;
            Some((n.to_string(), v.trim().to_string()))
        })
        .collect();
    Ok(NetNs {
        links: links
            .into_iter()
            .map(|l| NetLink {
                index: l.index,
                name: l.name,
                kind: l.kind,
                up: l.flags & libc::IFF_UP as u32 != 0,
            })
            .collect(),
        addrs: addrs.into_iter().map(addr).collect(),
        routes: routes
            .into_iter()
            .filter(|r| r.table == RT_TABLE_MAIN && r.protocol != RTPROT_KERNEL)
            .map(route)
            .collect(),
        sysctls,
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
    stasis_sys::nsenter::in_ns_of(root, "net", libc::CLONE_NEWNET, read_inside)
        .at(p, Stage::Collect)?
        .map(Some)
        .map_err(|what| refuse(p, what))
}
