//! The tree's network namespace. The thread that opens the tree's files
//! and forks it enters a new namespace first (unshare), and fills it: the
//! dump's network lock (when it was made inside the tree's namespace),
//! lo, veth pairs (the outer end made in the restorer's namespace under
//! its saved name or the one `--veth-pair`/`--external veth[...]` gives,
//! and made a port of its bridge), macvlan links (on a lower device
//! inside, or outside: made there and moved in), persistent tun/tap
//! devices (TUNSETIFF), sysctls, addresses, nexthops, rules,
//! routes (netroute.rs), the nftables ruleset and iptables-legacy tables. It stays there until the fork: the sockets it opens
//! for the tree (listeners bound to the namespace's addresses, TCP
//! connections, UDP, ...) are the new namespace's, and every process is
//! born in it. Then it goes back to its own namespace.
//!
//! criu's `--join-ns net:PATH`: the namespace at PATH is joined instead
//! and left as it is (only the lock is made in it).

use crate::{At, NetOptions, RestoreError, Result, Stage};
use stasis_image::kinds::inet::NetLock;
use stasis_image::netns::{tun_info, was_up, Macvlan, NetAddr, NetLink, NetRoute, Tun};
use stasis_image::NetNs;
use stasis_sys::netlock::{self, Method};
use stasis_sys::{netlink, nsenter, tool};
use std::os::fd::{AsRawFd, OwnedFd};

/// The restorer's own namespace while it is in the tree's.
pub(crate) struct Net {
    back: Option<OwnedFd>,
    /// The tree's new namespace.
    inside: OwnedFd,
    /// The lock made in it, released by [`Net::release_lock`].
    lock: Option<NetLock>,
    pid: u32,
}

pub(crate) fn failed(pid: u32, what: String) -> RestoreError {
    RestoreError::Refused {
        pid,
        stage: Stage::Fork,
        what,
    }
}

/// EEXIST is fine: lo's own addresses and routes come with it.
fn added(r: stasis_sys::Result<()>) -> stasis_sys::Result<()> {
    match r {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

fn addr(a: &NetAddr) -> netlink::Addr {
    netlink::Addr {
        family: a.family,
        prefixlen: a.prefixlen,
        flags: a.flags,
        scope: a.scope,
        index: a.index,
        local: a.local.clone(),
        address: a.address.clone(),
    }
}

fn route(r: &NetRoute) -> netlink::Route {
    netlink::Route {
        family: r.family,
        dst_len: r.dst_len,
        tos: r.tos,
        table: r.table,
        protocol: r.protocol,
        scope: r.scope,
        rtype: r.rtype,
        dst: r.dst.clone(),
        gateway: r.gateway.clone(),
        prefsrc: r.prefsrc.clone(),
        oif: r.oif,
        priority: r.priority,
    }
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `ip link add` arguments for one end: name, index, MAC, MTU.
fn end_args(name: &str, index: i32, hw: &[u8], mtu: u32) -> Vec<String> {
    let mut v = vec!["name".to_string(), name.to_string()];
    if index > 0 {
        v.extend(["index".into(), index.to_string()]);
    }
    if hw.len() == 6 {
        v.extend(["address".into(), mac(hw)]);
    }
    if mtu > 0 {
        v.extend(["mtu".into(), mtu.to_string()]);
    }
    v
}

fn ip(args: &[String]) -> stasis_sys::Result<()> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    tool::run("ip", &a, None)
}

/// Makes veth `l` (and its other end) in the calling thread's namespace;
/// an outer end goes into `host` (the restorer's namespace), under its
/// saved name or the one the options give, onto its bridge, up unless it
/// was down at dump.
fn make_veth(
    l: &NetLink,
    links: &[NetLink],
    opts: &NetOptions,
    host: &OwnedFd,
    pid: u32,
) -> Result<()> {
    let peer = l.veth.clone().unwrap_or_default();
    let mut args: Vec<String> = vec!["link".into(), "add".into()];
    args.extend(end_args(&l.name, l.index, &l.mac, l.mtu));
    args.extend(["type".into(), "veth".into(), "peer".into()]);
    if let Some(pi) = peer.inside {
        let Some(p) = links.iter().find(|p| p.index == pi) else {
            return Err(failed(
                pid,
                format!("veth {}: its peer (index {pi}) is not in the image", l.name),
            ));
        };
        args.extend(end_args(&p.name, p.index, &p.mac, p.mtu));
        return ip(&args).map_err(|e| failed(pid, format!("veth {}/{}: {e}", l.name, p.name)));
    }
    let given = opts.veths.iter().find(|v| v.inner == l.name);
    let outer = given.map_or(peer.name.clone(), |v| v.outer.clone());
    let bridge = match given {
        Some(v) => v.bridge.clone(),
        None => Some(peer.master.clone()).filter(|m| !m.is_empty()),
    };
    if outer.is_empty() {
        return Err(failed(
            pid,
            format!(
                "veth {}: its outer end was in another namespace; name it with \
                 --veth-pair {}=OUTER[@BRIDGE]",
                l.name, l.name
            ),
        ));
    }
    args.extend(end_args(&outer, 0, &peer.mac, peer.mtu));
    let host_path = format!("/proc/{}/fd/{}", std::process::id(), host.as_raw_fd());
    args.extend(["netns".into(), host_path]);
    ip(&args).map_err(|e| {
        failed(
            pid,
            format!(
                "veth {} (outer end {outer}): {e} (another outer name: --veth-pair {}=OUTER[@BRIDGE])",
                l.name, l.name
            ),
        )
    })?;
    let mut set: Vec<String> = vec!["link".into(), "set".into(), outer.clone()];
    if let Some(b) = &bridge {
        set.extend(["master".into(), b.clone()]);
    }
    // Made down; left so when it was down at dump (set up and down
    // again if it had been up: its qdisc then is not noop).
    let up = !peer.down || was_up(peer.down, &peer.qdisc);
    if up {
        set.push("up".into());
    } else if bridge.is_none() {
        return Ok(());
    }
    let mut cmds = vec![set];
    if peer.down && up {
        cmds.push(vec![
            "link".into(),
            "set".into(),
            outer.clone(),
            "down".into(),
        ]);
    }
    let h = host
        .try_clone()
        .map_err(|e| failed(pid, format!("dup of the restorer's namespace: {e}")))?;
    nsenter::in_ns(h, libc::CLONE_NEWNET, None, move || {
        cmds.iter().try_for_each(|c| ip(c))
    })
    .and_then(|r| r)
    .map_err(|e| {
        failed(
            pid,
            format!(
                "veth {}: outer end {outer}{}: {e}",
                l.name,
                bridge
                    .map(|b| format!(" onto bridge {b}"))
                    .unwrap_or_default()
            ),
        )
    })
}

/// Makes macvlan `l` on its lower device: one in the namespace, or one
/// in the restorer's (`host`: the saved name or the one criu's
/// `--external macvlan[NAME]:OUTER` gives), made there and moved in; then
/// checks its mode, flags and broadcast queue length read back.
fn make_macvlan(
    l: &NetLink,
    m: &Macvlan,
    opts: &NetOptions,
    host: &OwnedFd,
    pid: u32,
) -> Result<()> {
    let mode = match m.mode {
        1 => "private",
        2 => "vepa",
        4 => "bridge",
        8 => "passthru",
        _ => {
            return Err(failed(
                pid,
                format!("macvlan {}: mode {} is not restored", l.name, m.mode),
            ))
        }
    };
    let given = opts.macvlans.iter().find(|v| v.inner == l.name);
    let lower = given.map_or(m.lower.clone(), |v| v.outer.clone());
    let hint = format!("--external macvlan[{}]:OUTER", l.name);
    if lower.is_empty() {
        return Err(failed(
            pid,
            format!(
                "macvlan {}: its lower device was in another namespace; name it with {hint}",
                l.name
            ),
        ));
    }
    let mut args: Vec<String> = vec!["link".into(), "add".into(), "link".into(), lower.clone()];
    args.extend(end_args(&l.name, l.index, &l.mac, l.mtu));
    let outside = !m.inside || given.is_some();
    // The new namespace, named to `ip` by path; open until it ran.
    let mut _inside = None;
    if outside {
        let inside =
            stasis_sys::util::open("/proc/thread-self/ns/net", libc::O_RDONLY | libc::O_CLOEXEC)
                .at(pid, Stage::Fork)?;
        args.extend([
            "netns".into(),
            format!("/proc/{}/fd/{}", std::process::id(), inside.as_raw_fd()),
        ]);
        _inside = Some(inside);
    }
    args.extend(["type".into(), "macvlan".into(), "mode".into(), mode.into()]);
    if m.flags & 1 != 0 {
        args.extend(["flag".into(), "nopromisc".into()]);
    }
    if m.bc_queue_len != 0 {
        args.extend(["bcqueuelen".into(), m.bc_queue_len.to_string()]);
    }
    let made = if outside {
        let h = host
            .try_clone()
            .map_err(|e| failed(pid, format!("dup of the restorer's namespace: {e}")))?;
        nsenter::in_ns(h, libc::CLONE_NEWNET, None, move || ip(&args)).and_then(|r| r)
    } else {
        ip(&args)
    };
    made.map_err(|e| {
        failed(
            pid,
            format!(
                "macvlan {} on lower device {lower}: {e} (another lower device: {hint})",
                l.name
            ),
        )
    })?;
    let back = netlink::links()
        .at(pid, Stage::Fork)?
        .into_iter()
        .find(|x| x.index == l.index && x.name == l.name);
    let get = |x: &netlink::Link, t: u16| {
        x.info_data
            .iter()
            .find(|(y, _)| *y == t)
            .and_then(|(_, v)| v.get(..4))
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let ok = back.as_ref().is_some_and(|x| {
        x.kind == "macvlan"
            && get(x, 1) == m.mode
            && get(x, 2) as u16 == m.flags
            && (m.bc_queue_len == 0 || get(x, 7) == m.bc_queue_len)
    });
    if !ok {
        return Err(failed(
            pid,
            format!(
                "macvlan {}: reads back differently after it was made: {back:?}",
                l.name
            ),
        ));
    }
    Ok(())
}

/// Makes persistent tun/tap device `l` in the calling thread's namespace
/// with its index (TUNSETIFINDEX), flags, owner and group and what it
/// keeps (offloads, vnet header size and byte order), then its MAC, MTU
/// and ethtool features; checks what the kernel then shows of it.
fn make_tun(l: &NetLink, t: &Tun, pid: u32) -> Result<()> {
    use stasis_sys::{ethtool, tun::*};
    let what = |e: String| failed(pid, format!("tun/tap device {}: {e}", l.name));
    let flags = iff_flags(t.tap, t.pi, t.vnet_hdr, t.multi_queue);
    let k = &t.kept;
    let kept = Kept {
        offload: k.offload,
        vnet_hdr_sz: if k.vnet_hdr_sz == 0 {
            DEFAULT_VNET_HDR_SZ
        } else {
            k.vnet_hdr_sz as i32
        },
        vnet_le: k.vnet_le,
        vnet_be: k.vnet_be,
    };
    make_persistent(&l.name, l.index as u32, flags, t.owner, t.group, &kept)
        .map_err(|e| what(e.to_string()))?;
    let mut set: Vec<String> = vec!["link".into(), "set".into(), "dev".into(), l.name.clone()];
    if l.mac.len() == 6 && t.tap {
        set.extend(["address".into(), mac(&l.mac)]);
    }
    if l.mtu > 0 {
        set.extend(["mtu".into(), l.mtu.to_string()]);
    }
    ip(&set).map_err(|e| what(e.to_string()))?;
    if !k.features_requested.is_empty() {
        ethtool::set_requested(&l.name, &k.features_requested).map_err(|e| what(e.to_string()))?;
    }
    let back = netlink::links()
        .at(pid, Stage::Fork)?
        .into_iter()
        .find(|x| x.index == l.index && x.name == l.name && x.kind == "tun")
        .map(|x| tun_info(&x.info_data));
    let shown = Tun {
        kept: Default::default(),
        ..t.clone()
    };
    match back {
        Some((b, 0, true)) if b == shown => {}
        b => {
            return Err(what(format!(
                "reads back differently after it was made: {b:?}"
            )))
        }
    }
    let (got, _) = read_kept(&l.name, flags).map_err(|e| what(e.to_string()))?;
    if got != (Kept { offload: 0, ..kept }) {
        return Err(what(format!(
            "keeps {got:?} after it was made, not {kept:?}"
        )));
    }
    if !k.features_requested.is_empty() {
        let (req, act) = ethtool::requested_and_active(&l.name).map_err(|e| what(e.to_string()))?;
        if req != k.features_requested || act != k.features_active {
            return Err(what(format!(
                "its ethtool features read back differently after it was made: asked for \
                 {req:?}, on {act:?}; saved: asked for {:?}, on {:?}",
                k.features_requested, k.features_active
            )));
        }
    }
    Ok(())
}

/// Where a sysctl is written: `all` before `default` before each
/// interface's (writing `all` changes every interface's).
fn sysctl_rank(name: &str) -> u8 {
    if name.contains("/all/") {
        0
    } else if name.contains("/default/") {
        1
    } else {
        2
    }
}

/// Writes the sysctls whose value differs from the new namespace's, in
/// rank order, then checks every one reads as saved (a second round for
/// values an `all` write changed again).
fn write_sysctls(list: &[(String, String)], pid: u32) -> Result<()> {
    let mut order: Vec<&(String, String)> = list.iter().collect();
    order.sort_by_key(|(n, _)| sysctl_rank(n));
    let read = |n: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/{n}"))
            .map(|v| v.trim_end_matches('\n').to_string())
    };
    for round in 0..3 {
        let mut wrong = None;
        for (name, value) in &order {
            match read(name) {
                Ok(v) if v == *value => continue,
                Ok(_) => {}
                Err(e) => {
                    return Err(failed(
                        pid,
                        format!("sysctl net/{name} (saved {value:?}) in the new namespace: {e}"),
                    ))
                }
            }
            if round == 2 {
                wrong = Some((name, value, read(name).unwrap_or_default()));
                break;
            }
            if let Err(e) = std::fs::write(format!("/proc/sys/net/{name}"), value) {
                log::debug!("sysctl net/{name} = {value:?}: {e} (round {round})");
            }
        }
        if let Some((n, v, now)) = wrong {
            return Err(failed(
                pid,
                format!("sysctl net/{n}: reads {now:?} after writing the saved {v:?}"),
            ));
        }
    }
    Ok(())
}

const IFA_F_NODAD: u32 = 0x02;
const IFA_F_TENTATIVE: u32 = 0x40;
const IFF_LOWER_UP: u32 = 0x1_0000;

/// Adds the saved addresses. An IPv6 address that had passed duplicate
/// address detection at dump (not tentative) but is on a link that is up
/// without a carrier now (its veth peer down, as at dump) would stay
/// tentative, without its local route, until a carrier comes: it is
/// added with nodad (usable at once, its routes made as for a detected
/// one), then given its saved flags back once it is not tentative.
fn add_addrs(list: &[NetAddr], pid: u32) -> Result<()> {
    let no_carrier: Vec<i32> = netlink::links()
        .at(pid, Stage::Fork)?
        .iter()
        .filter(|l| l.flags & libc::IFF_UP as u32 != 0 && l.flags & IFF_LOWER_UP == 0)
        .map(|l| l.index)
        .collect();
    let mut quick = Vec::new();
    for a in list {
        let mut x = addr(a);
        if i32::from(a.family) == libc::AF_INET6
            && a.flags & (IFA_F_TENTATIVE | IFA_F_NODAD) == 0
            && no_carrier.contains(&a.index)
        {
            x.flags |= IFA_F_NODAD;
            quick.push(a);
        }
        added(netlink::add_addr(&x)).at(pid, Stage::Fork)?;
    }
    if quick.is_empty() {
        return Ok(());
    }
    let same = |x: &netlink::Addr, a: &NetAddr| {
        x.index == a.index && x.local == a.local && x.address == a.address
    };
    // Its local route (table local, type local, the address /128), which
    // the kernel adds just after it clears the tentative flag.
    let local_route = |a: &NetAddr, routes: &[Vec<u8>]| {
        let ip = if a.local.is_empty() {
            &a.address
        } else {
            &a.local
        };
        routes.iter().any(|m| {
            m.len() >= 12
                && i32::from(m[0]) == libc::AF_INET6
                && m[1] == 128
                && m[7] == 2
                && netlink::attributes(m, 12)
                    .iter()
                    .any(|(t, v)| t & 0x3fff == 1 && v == ip)
        })
    };
    let mut changed = false;
    for _ in 0..500 {
        let now = netlink::addrs().at(pid, Stage::Fork)?;
        let routes = netlink::dump_raw(netlink::Object::Route).at(pid, Stage::Fork)?;
        let pending = quick.iter().any(|a| {
            now.iter()
                .any(|x| same(x, a) && x.flags & IFA_F_TENTATIVE != 0)
                || !local_route(a, &routes)
        });
        if !pending && changed {
            return Ok(());
        }
        if !pending {
            for a in &quick {
                netlink::change_addr(&addr(a)).at(pid, Stage::Fork)?;
            }
            changed = true;
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(failed(
        pid,
        "an IPv6 address added with nodad on a link without carrier stayed tentative for 5 s"
            .into(),
    ))
}

/// Fills the calling thread's (new) namespace.
fn configure(img: &NetNs, opts: &NetOptions, host: &OwnedFd, pid: u32) -> Result<()> {
    for l in &img.links {
        if l.kind == "veth" {
            // A pair inside is made once, by its lower index.
            if l.veth
                .as_ref()
                .and_then(|p| p.inside)
                .is_some_and(|pi| pi < l.index)
            {
                continue;
            }
            make_veth(l, &img.links, opts, host, pid)?;
        } else if let (Some(t), "tun") = (&l.tun, &l.kind[..]) {
            make_tun(l, t, pid)?;
        } else if l.kind != "macvlan" && (l.name != "lo" || !l.kind.is_empty() || l.index != 1) {
            return Err(failed(
                pid,
                format!(
                    "link {} ({}): only lo, veth pairs, macvlan links and tun/tap devices \
                     are restored",
                    l.name, l.kind
                ),
            ));
        }
    }
    // On their lower devices, made above when in the namespace.
    for l in &img.links {
        match (&l.kind[..], &l.macvlan) {
            ("macvlan", Some(m)) => make_macvlan(l, m, opts, host, pid)?,
            ("macvlan", None) => {
                return Err(failed(
                    pid,
                    format!("macvlan {}: no mode in the image", l.name),
                ))
            }
            _ => {}
        }
    }
    for l in &img.links {
        // Down at dump but up before (its qdisc): up once first.
        if was_up(!l.up, &l.qdisc) {
            netlink::set_link_up(l.index, true).at(pid, Stage::Fork)?;
        }
        netlink::set_link_up(l.index, l.up).at(pid, Stage::Fork)?;
    }
    write_sysctls(&img.sysctls, pid)?;
    add_addrs(&img.addrs, pid)?;
    for r in &img.routes {
        added(netlink::add_route(&route(r))).at(pid, Stage::Fork)?;
    }
    crate::netroute::restore(img, pid)?;
    if !img.nft.is_empty() {
        tool::run("nft", &["-f", "-"], Some(&img.nft))
            .map_err(|e| failed(pid, format!("nftables ruleset of the namespace: {e}")))?;
    }
    crate::netroute::legacy(img, pid)?;
    settle(pid)?;
    crate::netroute::check(img, pid)
}

/// Waits until no IPv6 address is tentative on a link with a carrier
/// and every veth that is up has an operational state: an address is
/// usable (a socket can bind it) only once duplicate address detection
/// finished, which on lo is at once but asynchronous, and a link's
/// carrier shows (IFF_RUNNING) only once the kernel's link watch ran
/// (up to a second later).
fn settle(pid: u32) -> Result<()> {
    for _ in 0..500 {
        let links = netlink::links().at(pid, Stage::Fork)?;
        let carrier: Vec<i32> = links
            .iter()
            .filter(|l| l.flags & IFF_LOWER_UP != 0)
            .map(|l| l.index)
            .collect();
        let pending = links
            .iter()
            .any(|l| l.kind == "veth" && l.flags & libc::IFF_UP as u32 != 0 && l.operstate == 0);
        let addrs = netlink::addrs().at(pid, Stage::Fork)?;
        if !pending
            && addrs
                .iter()
                .all(|a| a.flags & IFA_F_TENTATIVE == 0 || !carrier.contains(&a.index))
        {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(failed(
        pid,
        "an IPv6 address stayed tentative (duplicate address detection) for 5 s".into(),
    ))
}

/// The dump's lock made again here, when it was made in the tree's
/// namespace (the old one died with the tree).
fn relock(lock: Option<&NetLock>, pid: u32) -> Result<Option<NetLock>> {
    let Some(l) = lock.filter(|l| l.in_netns) else {
        return Ok(None);
    };
    let method = Method::parse(&l.method).unwrap_or(Method::Skip);
    netlock::lock(method, &l.name, &l.conns).at(pid, Stage::Fork)?;
    Ok(Some(l.clone()))
}

impl Net {
    /// Enters a new network namespace holding the image's contents (or
    /// joins `--join-ns net:PATH`), the lock made first. `made`: the new
    /// namespace, made already (owned by the tree's user namespace:
    /// userns.rs), else unshared here.
    pub(crate) fn enter(
        img: Option<&NetNs>,
        (opts, made): (&NetOptions, Option<&OwnedFd>),
        lock: Option<&NetLock>,
        pid: u32,
    ) -> Result<Net> {
        let back = match &opts.join {
            Some(path) => {
                let back = stasis_sys::util::open(
                    "/proc/thread-self/ns/net",
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
                .at(pid, Stage::Fork)?;
                let ns = stasis_sys::util::open(
                    &path.to_string_lossy(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
                .at(pid, Stage::Fork)?;
                nsenter::join(&ns, libc::CLONE_NEWNET)
                    .map_err(|e| failed(pid, format!("--join-ns net:{}: {e}", path.display())))?;
                back
            }
            None => match made {
                Some(ns) => {
                    let back = stasis_sys::util::open(
                        "/proc/thread-self/ns/net",
                        libc::O_RDONLY | libc::O_CLOEXEC,
                    )
                    .at(pid, Stage::Fork)?;
                    nsenter::join(ns, libc::CLONE_NEWNET).at(pid, Stage::Fork)?;
                    back
                }
                None => nsenter::unshare_thread("net", libc::CLONE_NEWNET).at(pid, Stage::Fork)?,
            },
        };
        let inside =
            stasis_sys::util::open("/proc/thread-self/ns/net", libc::O_RDONLY | libc::O_CLOEXEC)
                .at(pid, Stage::Fork)?;
        let mut net = Net {
            back: Some(back),
            inside,
            lock: None,
            pid,
        };
        net.lock = relock(lock, pid)?;
        if let (None, Some(img)) = (&opts.join, img) {
            let host = net.back.as_ref().ok_or_else(|| {
                failed(pid, "the restorer's own network namespace is gone".into())
            })?;
            configure(img, opts, host, pid)?;
        }
        Ok(net)
    }

    /// Right after the fork: the restorer goes back to its own namespace.
    pub(crate) fn leave(&mut self) -> Result<()> {
        if let Some(back) = self.back.take() {
            nsenter::join(&back, libc::CLONE_NEWNET).at(self.pid, Stage::Fork)?;
        }
        Ok(())
    }

    /// The last step before the tree resumes: the lock made in the tree's
    /// namespace released there.
    pub(crate) fn release_lock(&mut self) -> Result<()> {
        let Some(l) = self.lock.take() else {
            return Ok(());
        };
        let method = Method::parse(&l.method).unwrap_or(Method::Skip);
        let ns = self
            .inside
            .try_clone()
            .map_err(|e| failed(self.pid, format!("dup of the tree's namespace: {e}")))?;
        let name = l.name.clone();
        nsenter::in_ns(ns, libc::CLONE_NEWNET, None, move || {
            netlock::unlock(method, &name)
        })
        .and_then(|r| r)
        .at(self.pid, Stage::Resume)?;
        log::info!(
            "network lock {} ({}) released in the tree's namespace",
            l.name,
            l.method
        );
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.leave();
    }
}
