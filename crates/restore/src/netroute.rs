//! Policy routing rules, routes of every table and nexthop objects of the
//! tree's network namespace, and its iptables-legacy tables. The first
//! three are kept as the kernel's own dump messages: the restore sends
//! each back (RTM_NEW*) less what the kernel reports but does not take
//! (its flags for dead or link-down nexthops, a route's cache info, the
//! gateway it expands a nexthop object into), skipping the routes the
//! kernel makes itself (protocol kernel: local, broadcast, prefix and
//! link-local routes, which come with the addresses). Once the namespace
//! has settled, every rule, route and nexthop is read back and must
//! match the dump: a kernel route the original had deleted is deleted
//! again, and anything else that differs fails the restore by name.

use crate::netns::failed;
use crate::{At, Result, Stage};
use stasis_image::netns::RawMsg;
use stasis_image::NetNs;
use stasis_sys::netlink::{self, Object};
use stasis_sys::tool;
use std::net::{Ipv4Addr, Ipv6Addr};

const RTPROT_KERNEL: u8 = 2;
const RTNH_F_ONLINK: u32 = 4;
const FIB_RULE_INVERT: u32 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTA_CACHEINFO: u16 = 12;
const RTA_TABLE: u16 = 15;
const RTA_VIA: u16 = 18;
const RTA_EXPIRES: u16 = 23;
const RTA_NH_ID: u16 = 30;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_RES_GROUP: u16 = 12;
const FRA_PRIORITY: u16 = 6;
const NLA_TYPE_MASK: u16 = 0x3fff;

fn u32at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}

/// `msg`'s header with its flags word (bytes `at..at+4`) masked, and the
/// attributes `keep` lets through, `map` rewriting a payload.
fn rebuild(
    msg: &[u8],
    header: usize,
    at: usize,
    mask: u32,
    keep: impl Fn(u16) -> bool,
    map: impl Fn(u16, &[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = msg[..header].to_vec();
    let flags = u32at(&out, at) & mask;
    out[at..at + 4].copy_from_slice(&flags.to_le_bytes());
    for (ty, v) in netlink::attributes(msg, header) {
        if keep(ty & NLA_TYPE_MASK) {
            netlink::push_attr(&mut out, ty, &map(ty & NLA_TYPE_MASK, v));
        }
    }
    out
}

/// RTA_MULTIPATH's rtnexthop entries with their flags masked to onlink.
fn multipath(v: &[u8]) -> Vec<u8> {
    let mut out = v.to_vec();
    let mut off = 0;
    while off + 8 <= out.len() {
        let len = usize::from(u16::from_le_bytes([out[off], out[off + 1]]));
        if len < 8 {
            break;
        }
        out[off + 2] &= RTNH_F_ONLINK as u8;
        off += (len + 3) & !3;
    }
    out
}

/// A dumped route as RTM_NEWROUTE takes it.
fn route_request(m: &[u8]) -> Vec<u8> {
    let nh_obj = netlink::attributes(m, 12)
        .iter()
        .any(|(t, _)| t & NLA_TYPE_MASK == RTA_NH_ID);
    rebuild(
        m,
        12,
        8,
        RTNH_F_ONLINK,
        |t| {
            t != RTA_CACHEINFO
                && !(nh_obj && matches!(t, RTA_OIF | RTA_GATEWAY | RTA_MULTIPATH | RTA_VIA))
        },
        |t, v| {
            if t == RTA_MULTIPATH {
                multipath(v)
            } else {
                v.to_vec()
            }
        },
    )
}

/// A dumped nexthop as RTM_NEWNEXTHOP takes it: scope 0, flags onlink
/// only, and only the attributes a new one may carry.
fn nexthop_request(m: &[u8]) -> Vec<u8> {
    let mut out = rebuild(
        m,
        8,
        4,
        RTNH_F_ONLINK,
        |t| matches!(t, 1..=8 | 11 | 12 | 16),
        |t, v| {
            if t != NHA_RES_GROUP {
                return v.to_vec();
            }
            // Buckets, idle and unbalanced timers; not the time the group
            // has been unbalanced (read only).
            let mut n = Vec::new();
            for (ty, x) in netlink::attributes(v, 0) {
                if matches!(ty & NLA_TYPE_MASK, 1..=3) {
                    netlink::push_attr(&mut n, ty, x);
                }
            }
            n
        },
    );
    out[1] = 0;
    out[3] = 0;
    out
}

/// A dumped rule as RTM_NEWRULE takes it: only its invert flag (the
/// kernel works out unresolved and detached again).
fn rule_request(m: &[u8]) -> Vec<u8> {
    rebuild(m, 12, 8, FIB_RULE_INVERT, |_| true, |_, v| v.to_vec())
}

fn attr(m: &[u8], header: usize, ty: u16) -> Option<&[u8]> {
    netlink::attributes(m, header)
        .into_iter()
        .find(|(t, _)| t & NLA_TYPE_MASK == ty)
        .map(|(_, v)| v)
}

fn ip_text(v: &[u8]) -> String {
    match v.len() {
        4 => Ipv4Addr::from(<[u8; 4]>::try_from(v).unwrap_or_default()).to_string(),
        16 => Ipv6Addr::from(<[u8; 16]>::try_from(v).unwrap_or_default()).to_string(),
        _ => "?".into(),
    }
}

/// "route 10.6.0.0/16 (IPv4, table 100, type 1)".
fn route_name(m: &[u8]) -> String {
    let fam = if i32::from(m[0]) == libc::AF_INET6 {
        "IPv6"
    } else {
        "IPv4"
    };
    let dst = attr(m, 12, RTA_DST).map_or_else(
        || {
            if fam == "IPv6" {
                "::".into()
            } else {
                "0.0.0.0".into()
            }
        },
        ip_text,
    );
    let table = attr(m, 12, RTA_TABLE).map_or(u32::from(m[4]), |v| u32at(v, 0));
    format!(
        "route {dst}/{} ({fam}, table {table}, type {}, protocol {})",
        m[1], m[7], m[5]
    )
}

fn rule_name(m: &[u8]) -> String {
    let pref = attr(m, 12, FRA_PRIORITY).map_or(0, |v| u32at(v, 0));
    format!(
        "rule {pref} (family {}, table {}, action {})",
        m[0], m[4], m[7]
    )
}

fn nexthop_name(m: &[u8]) -> String {
    format!(
        "nexthop id {}",
        attr(m, 8, NHA_ID).map_or(0, |v| u32at(v, 0))
    )
}

/// Nexthops (plain ones before groups, which name them), rules (the new
/// namespace's defaults removed first, so the saved list is the whole
/// list, in order) and the routes the kernel does not make. A route whose
/// gateway is reached through another route is retried after the others.
pub(crate) fn restore(img: &NetNs, pid: u32) -> Result<()> {
    let (plain, groups): (Vec<&RawMsg>, Vec<&RawMsg>) = img
        .nexthop_msgs
        .iter()
        .partition(|m| attr(&m.0, 8, NHA_GROUP).is_none());
    for m in plain.into_iter().chain(groups) {
        netlink::add_raw(Object::Nexthop, &nexthop_request(&m.0))
            .map_err(|e| failed(pid, format!("{} of its namespace: {e}", nexthop_name(&m.0))))?;
    }
    if !img.rule_msgs.is_empty() {
        for m in netlink::dump_raw(Object::Rule).at(pid, Stage::Fork)? {
            netlink::del_raw(Object::Rule, &m).map_err(|e| {
                failed(
                    pid,
                    format!("removing the new namespace's {}: {e}", rule_name(&m)),
                )
            })?;
        }
    }
    for m in &img.rule_msgs {
        netlink::add_raw(Object::Rule, &rule_request(&m.0))
            .map_err(|e| failed(pid, format!("{} of its namespace: {e}", rule_name(&m.0))))?;
    }
    let mut left: Vec<&RawMsg> = img
        .route_msgs
        .iter()
        .filter(|m| m.0[5] != RTPROT_KERNEL)
        .collect();
    while !left.is_empty() {
        let mut errors = Vec::new();
        let before = left.len();
        left.retain(
            |m| match netlink::add_raw(Object::Route, &route_request(&m.0)) {
                Ok(()) => false,
                Err(e) => {
                    errors.push(format!("{}: {e}", route_name(&m.0)));
                    true
                }
            },
        );
        if left.len() == before {
            return Err(failed(
                pid,
                format!("{} of its namespace", errors.join("; ")),
            ));
        }
    }
    Ok(())
}

/// A route as compared: without its cache info and remaining lifetime.
fn route_key(m: &[u8]) -> Vec<u8> {
    rebuild(
        m,
        12,
        8,
        u32::MAX,
        |t| t != RTA_CACHEINFO && t != RTA_EXPIRES,
        |_, v| v.to_vec(),
    )
}

/// [`route_key`] without the route's flags (rtm_flags: linkdown, dead,
/// ...): the same route, whatever state its link is in.
fn route_key_any_flags(m: &[u8]) -> Vec<u8> {
    let mut k = route_key(m);
    k[8..12].fill(0);
    k
}

/// The IPv4 and IPv6 routes of the namespace.
fn routes_now(pid: u32) -> Result<Vec<Vec<u8>>> {
    Ok(netlink::dump_raw(Object::Route)
        .at(pid, Stage::Fork)?
        .into_iter()
        .filter(|m| matches!(i32::from(m[0]), libc::AF_INET | libc::AF_INET6))
        .collect())
}

/// `now` less `saved`, as multisets of `key`.
fn extra<'a>(now: &'a [Vec<u8>], saved: &[Vec<u8>], key: fn(&[u8]) -> Vec<u8>) -> Vec<&'a Vec<u8>> {
    let mut want: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for m in saved {
        *want.entry(key(m)).or_default() += 1;
    }
    now.iter()
        .filter(|m| match want.get_mut(&key(m)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

/// After the namespace settled: the kernel's own routes the original did
/// not have are removed, then rules, routes and nexthops must read back
/// as dumped.
pub(crate) fn check(img: &NetNs, pid: u32) -> Result<()> {
    if img.route_msgs.is_empty() && img.rule_msgs.is_empty() {
        // An image from before rules and routes of every table were kept.
        return Ok(());
    }
    let saved: Vec<Vec<u8>> = img.route_msgs.iter().map(|m| m.0.clone()).collect();
    let now = routes_now(pid)?;
    let missing: Vec<Vec<u8>> = extra(&saved, &now, route_key)
        .into_iter()
        .map(|m| route_key_any_flags(m))
        .collect();
    for m in extra(&now, &saved, route_key) {
        // One that differs from a saved one in its flags only is not the
        // kernel's own extra route: it is reported below.
        if m[5] == RTPROT_KERNEL && !missing.contains(&route_key_any_flags(m)) {
            netlink::del_raw(Object::Route, m).map_err(|e| {
                failed(pid, format!("removing the kernel's {}: {e}", route_name(m)))
            })?;
        }
    }
    let now = routes_now(pid)?;
    let differ = |what: &str, m: &[u8], name: fn(&[u8]) -> String| {
        failed(
            pid,
            format!("{} of its namespace {what} after the restore", name(m)),
        )
    };
    let more = extra(&now, &saved, route_key);
    let less = extra(&saved, &now, route_key);
    for m in &less {
        if let Some(n) = more
            .iter()
            .find(|n| route_key_any_flags(n) == route_key_any_flags(m))
        {
            let what = format!(
                "has rtm_flags {:#x} (at dump {:#x}; 0x10: linkdown, its link has no carrier)",
                u32at(n, 8),
                u32at(m, 8)
            );
            return Err(differ(&what, m, route_name));
        }
    }
    if let Some(m) = more.first() {
        return Err(differ("is there (it was not)", m, route_name));
    }
    if let Some(m) = less.first() {
        return Err(differ("is missing", m, route_name));
    }
    let same = |m: &[u8]| m.to_vec();
    for (o, list, name) in [
        (
            Object::Rule,
            &img.rule_msgs,
            rule_name as fn(&[u8]) -> String,
        ),
        (Object::Nexthop, &img.nexthop_msgs, nexthop_name),
    ] {
        let now = netlink::dump_raw(o).unwrap_or_default();
        let saved: Vec<Vec<u8>> = list.iter().map(|m| m.0.clone()).collect();
        if let Some(m) = extra(&saved, &now, same).first() {
            return Err(differ("is missing or reads differently", m, name));
        }
        if let Some(m) = extra(&now, &saved, same).first() {
            return Err(differ("is there (it was not)", m, name));
        }
        if o == Object::Rule && now != saved {
            return Err(failed(
                pid,
                "its policy routing rules come back in another order".into(),
            ));
        }
    }
    Ok(())
}

/// Legacy tables' text without counters and comments, table by table in
/// name order (the save lists them in the order they were loaded).
fn rules_text(t: &str) -> Vec<Vec<String>> {
    let mut tables: Vec<Vec<String>> = Vec::new();
    for l in t.lines().filter(|l| !l.starts_with('#')) {
        let l = match l.strip_prefix('[') {
            Some(r) => r.split_once("] ").map_or(l, |x| x.1),
            None => l,
        };
        let l = match l.rsplit_once(" [") {
            Some((a, _)) if l.starts_with(':') => a,
            _ => l,
        };
        match tables.last_mut() {
            Some(t) if !l.starts_with('*') => t.push(l.to_string()),
            _ => tables.push(vec![l.to_string()]),
        }
    }
    tables.sort();
    tables
}

/// The iptables-legacy tables loaded with their counters
/// (`*-legacy-restore -c`), then read back: the rules must be the saved
/// ones.
pub(crate) fn legacy(img: &NetNs, pid: u32) -> Result<()> {
    for (text, tool_name) in [
        (&img.iptables_legacy, "iptables-legacy"),
        (&img.ip6tables_legacy, "ip6tables-legacy"),
    ] {
        if text.is_empty() {
            continue;
        }
        tool::run(&format!("{tool_name}-restore"), &["-w", "-c"], Some(text))
            .map_err(|e| failed(pid, format!("{tool_name} tables of its namespace: {e}")))?;
        let back = tool::output(&format!("{tool_name}-save"), &["-c"], None)
            .map_err(|e| failed(pid, format!("{tool_name}-save in its namespace: {e}")))?;
        if rules_text(&back) != rules_text(text) {
            return Err(failed(
                pid,
                format!(
                    "{tool_name} tables of its namespace read back differently after the restore"
                ),
            ));
        }
    }
    Ok(())
}
