//! The tree's own user namespace: made by the clone that makes the PID
//! namespace (sys/spawn.rs), so it owns that one and every namespace the
//! first process makes after it; its maps are written from outside.

use crate::{RestoreError, Result, Stage};
use stasis_image::userns::map_text;
use stasis_image::{Inventory, UserNs};

/// The image's user namespace, if any, once checked restorable here: only
/// with a PID namespace of the tree's own, and none of the namespaces the
/// restorer makes outside the first process (network, IPC, mount) or
/// with the host's privileges (cgroup).
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
    let others = [
        ("a network", inv.net.is_some()),
        ("an IPC", inv.ipc.is_some()),
        ("a mount", inv.mntns.is_some()),
        ("a cgroup", inv.cgroup_ns.is_some()),
    ];
    if let Some((name, _)) = others.iter().find(|(_, has)| *has) {
        return Err(refuse(format!(
            "{name} namespace of its own together with a user namespace of its own: not restored yet"
        )));
    }
    Ok(Some(u))
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
    ino(&host.to_string()) != ino("self")
}
