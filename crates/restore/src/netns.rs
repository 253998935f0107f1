//! The tree's network namespace. The thread that opens the tree's files
//! and forks it enters a new namespace first (unshare), sets lo up, the
//! sysctls, addresses and routes, and stays there until the fork: the
//! sockets it opens for the tree (listeners bound to the namespace's
//! addresses, UDP, ...) are the new namespace's, and every process is born
//! in it. Then it goes back to its own namespace.

use crate::{At, RestoreError, Result, Stage};
use stasis_image::netns::{NetAddr, NetRoute};
use stasis_image::NetNs;
use stasis_sys::{netlink, nsenter};
use std::os::fd::OwnedFd;

/// The restorer's own namespace while it is in the tree's.
pub(crate) struct Net {
    back: Option<OwnedFd>,
    pid: u32,
}

fn failed(pid: u32, what: String) -> RestoreError {
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

/// Fills the calling thread's (new) namespace.
fn configure(img: &NetNs, pid: u32) -> Result<()> {
    for l in &img.links {
        if l.name != "lo" || !l.kind.is_empty() || l.index != 1 {
            return Err(failed(
                pid,
                format!("link {} ({}): only lo is restored", l.name, l.kind),
            ));
        }
        netlink::set_link_up(l.index, l.up).at(pid, Stage::Fork)?;
    }
    for (name, value) in &img.sysctls {
        std::fs::write(format!("/proc/sys/net/{name}"), value)
            .map_err(|e| failed(pid, format!("sysctl net/{name} = {value}: {e}")))?;
    }
    for a in &img.addrs {
        added(netlink::add_addr(&addr(a))).at(pid, Stage::Fork)?;
    }
    for r in &img.routes {
        added(netlink::add_route(&route(r))).at(pid, Stage::Fork)?;
    }
    settle(pid)
}

/// Waits until no IPv6 address is tentative: an address is usable (a
/// socket can bind it) only once duplicate address detection finished,
/// which on lo is at once but asynchronous.
fn settle(pid: u32) -> Result<()> {
    const IFA_F_TENTATIVE: u32 = 0x40;
    for _ in 0..500 {
        let addrs = netlink::addrs().at(pid, Stage::Fork)?;
        if addrs.iter().all(|a| a.flags & IFA_F_TENTATIVE == 0) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(failed(
        pid,
        "an IPv6 address stayed tentative (duplicate address detection) for 5 s".into(),
    ))
}

impl Net {
    /// Enters a new network namespace holding the image's contents.
    pub(crate) fn enter(img: &NetNs, pid: u32) -> Result<Net> {
        let back = nsenter::unshare_thread("net", libc::CLONE_NEWNET).at(pid, Stage::Fork)?;
        let mut net = Net {
            back: Some(back),
            pid,
        };
        configure(img, pid)?;
        net.pid = pid;
        Ok(net)
    }

    /// Right after the fork: the restorer goes back to its own namespace.
    pub(crate) fn leave(&mut self) -> Result<()> {
        if let Some(back) = self.back.take() {
            nsenter::join(&back, libc::CLONE_NEWNET).at(self.pid, Stage::Fork)?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.leave();
    }
}
