//! The tree's own user namespace, and the namespaces it owns.
//!
//! A namespace belongs to the user namespace of the process that makes
//! it. So before anything else a holder (a child of ours, see
//! stasis_sys::userns::spawn_holder) makes the user namespace, gets its
//! maps written from outside, and unshares in it the namespaces the
//! restorer fills before the fork: network, IPC, mount. The restorer
//! joins those (setns: its privileges reach into every user namespace
//! below its own) to build them. At the fork a forker enters the user
//! namespace and makes the PID namespace, whose init the first process
//! is; that one makes the rest itself (UTS, time, cgroup: sys/spawn.rs
//! `spawn_in_user_ns`).
use crate::{At, RestoreError, Result, Stage};
use stasis_image::userns::map_text;
use stasis_image::{Inventory, UserNs};
use std::os::fd::OwnedFd;

/// The image's user namespace, if any, once checked restorable here: only
/// with a PID namespace of the tree's own.
pub(crate) fn check<'a>(
    inv: &'a Inventory,
    opts: &crate::RestoreOptions,
) -> Result<Option<&'a UserNs>> {
    let Some(u) = inv.user_ns.as_ref() else {
        return Ok(None);
    };
    let refuse = |what: String| RestoreError::Refused {
        pid: inv.root_pid,
        stage: Stage::Preflight,
        what,
    };
    if !inv.pid_ns {
        return Err(refuse(
            "a user namespace of its own without a PID namespace of its own: not restored yet"
                .into(),
        ));
    }
    if opts.sibling {
        return Err(refuse(
            "--restore-sibling with a user namespace of its own: not restored yet".into(),
        ));
    }
    Ok(Some(u))
}

/// The tree's user namespace and the namespaces its holder made in it,
/// as descriptors of ours; dropping it ends the holder (the namespaces
/// live on in these descriptors, then in the tree).
pub(crate) struct Held {
    pub(crate) holder: stasis_sys::userns::Holder,
    /// Our uid and gid of the namespace's root (uid and gid 0 inside).
    pub(crate) root_ids: (u32, u32),
    /// The image's uid and gid maps.
    pub(crate) maps: crate::sysvipc::IdMaps,
    pub(crate) user: OwnedFd,
    pub(crate) net: Option<OwnedFd>,
    pub(crate) ipc: Option<OwnedFd>,
    pub(crate) mnt: Option<OwnedFd>,
}

impl Drop for Held {
    fn drop(&mut self) {
        stasis_sys::spawn::kill_and_reap(self.holder.pid);
    }
}

/// Makes the image's user namespace and, owned by it, the network, IPC
/// and mount namespaces the image has of its own.
pub(crate) fn hold(inv: &Inventory, u: &UserNs) -> Result<Held> {
    let pid = inv.root_pid;
    let st = Stage::Preflight;
    let [setgroups, uid_map, gid_map, projid_map] = maps(u);
    let ids = stasis_sys::userns::IdMaps {
        uid_map: &uid_map,
        gid_map: &gid_map,
        projid_map: &projid_map,
        setgroups: &setgroups,
    };
    let net = inv.net.is_some();
    let ipc = inv.ipc.as_ref().is_some_and(|i| i.own);
    let mnt = inv.mntns.is_some();
    let mut flags = 0;
    for (has, f) in [
        (net, libc::CLONE_NEWNET),
        (ipc, libc::CLONE_NEWIPC),
        (mnt, libc::CLONE_NEWNS),
    ] {
        if has {
            flags |= f;
        }
    }
    let holder = stasis_sys::userns::spawn_holder(&ids, flags).at(pid, st)?;
    let h = holder.pid;
    let root = |map: &[stasis_image::userns::IdRange]| {
        map.iter()
            .find(|r| r.inside == 0 && r.count > 0)
            .map_or(u32::MAX - 1, |r| r.outside)
    };
    let mut held = Held {
        holder,
        root_ids: (root(&u.uid_map), root(&u.gid_map)),
        maps: (u.uid_map.clone(), u.gid_map.clone()),
        user: open_ns(h, "user").at(pid, st)?,
        net: None,
        ipc: None,
        mnt: None,
    };
    if net {
        held.net = Some(open_ns(h, "net").at(pid, st)?);
    }
    if ipc {
        held.ipc = Some(open_ns(h, "ipc").at(pid, st)?);
    }
    if mnt {
        held.mnt = Some(open_ns(h, "mnt").at(pid, st)?);
    }
    log::info!("pid {pid}: user namespace made (holder {h}), owning the tree's namespaces");
    Ok(held)
}

fn open_ns(p: stasis_sys::Pid, name: &str) -> stasis_sys::Result<OwnedFd> {
    stasis_sys::util::open(
        &format!("/proc/{}/ns/{name}", p.0),
        libc::O_RDONLY | libc::O_CLOEXEC,
    )
}

impl Held {
    /// The ids of a socket call ([`stasis_sys::spawn::SockCall`]), saved as
    /// ours, made the ones the namespace numbers them by; the first id the
    /// namespace does not map is refused by name.
    pub(crate) fn call_ids_inside(
        &self,
        pid: u32,
        c: &mut stasis_sys::spawn::SockCall,
    ) -> Result<()> {
        use stasis_image::userns::to_inside;
        let (uids, gids) = &self.maps;
        let maker = c.pid;
        let refuse = |what: &str, id: u32| RestoreError::Refused {
            pid,
            stage: Stage::Fork,
            what: format!(
                "a unix socket made as {what} {id} by PID {}, which the tree's user namespace does \
                 not map (its SO_PEERCRED could not be given back)",
                maker
            ),
        };
        c.uid = to_inside(uids, c.uid).ok_or_else(|| refuse("uid", c.uid))?;
        c.gid = to_inside(gids, c.gid).ok_or_else(|| refuse("gid", c.gid))?;
        for g in &mut c.groups {
            *g = to_inside(gids, *g).ok_or_else(|| refuse("group", *g))?;
        }
        Ok(())
    }
}

/// setgroups, uid_map, gid_map, projid_map as /proc/PID/ takes them.
pub(crate) fn maps(u: &UserNs) -> [String; 4] {
    [
        if u.setgroups_allow { "allow" } else { "deny" }.to_string(),
        map_text(&u.uid_map),
        map_text(&u.gid_map),
        map_text(&u.projid_map),
    ]
}

/// Whether process `host` (our PID) is in another user namespace than
/// ours: its credentials are never the ones it inherited from us.
pub(crate) fn other_than_ours(host: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |t: &str| {
        std::fs::metadata(format!("/proc/{t}/ns/user"))
            .ok()
            .map(|m| m.ino())
    };
    // Ours never changes (a process with threads cannot setns into
    // another user namespace): read once.
    static OURS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    ino(&host.to_string()) != *OURS.get_or_init(|| ino("self"))
}
