//! The network lock of a dump with `--tcp-established` (criu's
//! `--network-lock`): right after the freeze every TCP connection of the
//! tree (any descriptor of any process whose socket is connected) is
//! found and locked (`stasis_sys::netlock`), before any of them is put in
//! repair mode. A successful dump that kills the tree leaves the lock on
//! (its name goes into the image: the restore releases it); a failed dump,
//! or one with `--leave-running`, releases it and turns repair mode off on
//! every connection, so the processes go on as before.
//!
//! A tree in a network namespace of its own is locked inside it (the
//! rules are made by a tool started from a thread that joined it): its
//! connections' 4-tuples are that namespace's, and its packets never pass
//! the dumper's. There it is always an nftables table of its own (an
//! iptables chain would sit in the namespace's `filter` table, whose
//! rules are saved with the namespace). The namespace dies with the tree; the image says so
//! (`in_netns`) and the restore locks the new namespace the same way.

use crate::freeze::FrozenTree;
use crate::{At, Result, Stage};
use stasis_image::kinds::inet::NetLock;
use stasis_sys::netlock::{self, Method};
use stasis_sys::{sock, tcprepair, util, Pid};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// A lock held on the tree's connections.
pub(crate) struct Lock {
    method: Method,
    name: String,
    conns: Vec<(SocketAddr, SocketAddr)>,
    /// (pid, fd) of every connected TCP descriptor: repair goes off on
    /// these if the processes go on running.
    socks: Vec<(u32, i32)>,
    armed: bool,
    /// The tree's own network namespace, where the lock is.
    ns: Option<OwnedFd>,
}

/// Runs `f` in the namespace `ns` (the tree's), or here when None.
fn in_ns<T: Send + 'static>(
    ns: Option<&OwnedFd>,
    f: impl FnOnce() -> stasis_sys::Result<T> + Send + 'static,
) -> stasis_sys::Result<T> {
    match ns {
        None => f(),
        Some(fd) => {
            let fd = fd.try_clone().map_err(|e| {
                stasis_sys::SysError::other("dup of a namespace descriptor", None, e.to_string())
            })?;
            stasis_sys::nsenter::in_ns(fd, libc::CLONE_NEWNET, None, f)?
        }
    }
}

/// The root's network namespace when it is not the dumper's.
fn own_netns(root: u32) -> Result<Option<OwnedFd>> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    let path = format!("/proc/{root}/ns/net");
    if ino(&path) == ino("/proc/self/ns/net") {
        return Ok(None);
    }
    util::open(&path, libc::O_RDONLY | libc::O_CLOEXEC)
        .map(Some)
        .at(root, Stage::Freeze)
}

/// (local, peer) of the descriptor if it is a connected TCP socket.
fn connected(pid: u32, fd: i32) -> Option<(SocketAddr, SocketAddr)> {
    let pidfd = util::pidfd_open(Pid(pid as i32)).ok()?;
    let dup = util::pidfd_getfd(&pidfd, Pid(pid as i32), fd).ok()?;
    let int = |l, o| sock::get_int(&dup, l, o).ok();
    if !matches!(
        int(libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        libc::AF_INET | libc::AF_INET6
    ) || int(libc::SOL_SOCKET, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
    {
        return None;
    }
    if matches!(tcprepair::state(&dup).ok()?, 7 | 10) {
        return None;
    }
    Some((sock::local_addr(&dup).ok()??, sock::peer_addr(&dup).ok()??))
}

/// Finds and locks the tree's TCP connections. None when the tree has
/// none.
pub(crate) fn lock_tree(tree: &FrozenTree, method: Method) -> Result<Option<Lock>> {
    let root = tree.procs.first().map_or(0, |p| p.pid.0 as u32);
    let mut conns = Vec::new();
    let mut socks = Vec::new();
    for p in &tree.procs {
        let pid = p.pid.0 as u32;
        for fd in stasis_proc::list_fds(pid).at(pid, Stage::Freeze)? {
            let Ok(link) = stasis_proc::read_link(pid, &format!("fd/{fd}")) else {
                continue;
            };
            if !link.starts_with("socket:[") {
                continue;
            }
            if let Some(c) = connected(pid, fd) {
                socks.push((pid, fd));
                if !conns.contains(&c) {
                    conns.push(c);
                }
            }
        }
    }
    if conns.is_empty() {
        return Ok(None);
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = format!("stasis_{root}_{secs}");
    let ns = own_netns(root)?;
    // In the tree's namespace the lock is a table of its own whatever the
    // method (an iptables chain would sit in the namespace's own `filter`
    // table, which the dump saves and the restore makes again).
    let method = match method {
        Method::Iptables if ns.is_some() => Method::Nftables,
        m => m,
    };
    let (n, c) = (name.clone(), conns.clone());
    in_ns(ns.as_ref(), move || netlock::lock(method, &n, &c)).at(root, Stage::Freeze)?;
    log::info!(
        "pid {root}: network lock {name} ({}) on {} TCP connection(s){}",
        method.name(),
        conns.len(),
        if ns.is_some() {
            " in its network namespace"
        } else {
            ""
        }
    );
    Ok(Some(Lock {
        method,
        name,
        conns,
        socks,
        armed: true,
        ns,
    }))
}

impl Lock {
    /// What the image records for the restore to release.
    pub(crate) fn image(&self) -> Option<NetLock> {
        (self.method != Method::Skip).then(|| NetLock {
            method: self.method.name().to_string(),
            name: self.name.clone(),
            conns: self.conns.clone(),
            in_netns: self.ns.is_some(),
        })
    }

    /// The tree is dead: the lock stays until a restore releases it.
    pub(crate) fn keep(mut self) {
        self.armed = false;
    }

    /// The tree goes on running: the lock released, repair mode off.
    pub(crate) fn release(mut self) -> Result<()> {
        self.armed = false;
        let root = self.socks.first().map_or(0, |s| s.0);
        let r = self.unlock().at(root, Stage::Finish);
        self.repair_off();
        r
    }

    fn unlock(&self) -> stasis_sys::Result<()> {
        let (method, name) = (self.method, self.name.clone());
        in_ns(self.ns.as_ref(), move || netlock::unlock(method, &name))
    }

    fn repair_off(&self) {
        for &(pid, fd) in &self.socks {
            let dup = util::pidfd_open(Pid(pid as i32))
                .and_then(|p| util::pidfd_getfd(&p, Pid(pid as i32), fd));
            if let Err(e) = dup.and_then(|d| tcprepair::set_repair(&d, 0)) {
                log::warn!("pid {pid}: fd {fd}: turning TCP repair off: {e}");
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.unlock() {
                log::warn!("releasing the network lock {}: {e}", self.name);
            }
            self.repair_off();
        }
    }
}
