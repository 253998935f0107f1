//! The tree's own user namespace: its maps and setgroups, and the
//! credentials of every process as the namespace sees them.

use crate::collect::Collected;
use crate::{DumpError, Result, Stage};
use stasis_image::userns::{parse_map, to_inside, UserNs};
use stasis_sys::Pid;

fn refuse(pid: u32, what: String) -> DumpError {
    DumpError::Unsupported {
        pid,
        stage: Stage::Check,
        what,
    }
}

fn ns_ino(task: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{task}/ns/user"))
        .ok()
        .map(|m| m.ino())
}

/// The root's user namespace when it is not ours (checks.rs made sure
/// the whole tree shares it): a child of ours, around a PID namespace of
/// the tree's own, setgroups "allow".
pub(crate) fn collect(root: Pid) -> Result<Option<UserNs>> {
    let r = root.0 as u32;
    let mine = ns_ino("self");
    let theirs = ns_ino(&r.to_string());
    if theirs == mine {
        return Ok(None);
    }
    let id = theirs.unwrap_or(0);
    if stasis_sys::userns::parent_ino(r) != mine {
        return Err(refuse(
            r,
            format!("a user namespace (user:[{id}]) that is not a child of the dumper's: not restored yet"),
        ));
    }
    let pid_ns = |t: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{t}/ns/pid"))
            .ok()
            .map(|m| m.ino())
    };
    if pid_ns(&r.to_string()) == pid_ns("self") {
        return Err(refuse(
            r,
            format!("a user namespace of its own (user:[{id}]) without a PID namespace of its own: not restored yet"),
        ));
    }
    let read = |name: &str| {
        stasis_proc::read(r, name).map_err(|e| refuse(r, format!("read /proc/{r}/{name}: {e}")))
    };
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let map = |name: &str| -> Result<Vec<_>> {
        let t = text(read(name)?);
        parse_map(&t).ok_or_else(|| refuse(r, format!("/proc/{r}/{name}: not a map: {t:?}")))
    };
    let setgroups = text(read("setgroups")?);
    if setgroups.trim() != "allow" {
        return Err(refuse(
            r,
            format!("setgroups \"deny\" in its user namespace (user:[{id}]): not restored yet"),
        ));
    }
    let ns = UserNs {
        uid_map: map("uid_map")?,
        gid_map: map("gid_map")?,
        projid_map: map("projid_map")?,
        setgroups_allow: true,
    };
    if let Err(m) = ns.check() {
        return Err(refuse(r, format!("its user namespace (user:[{id}]): {m}")));
    }
    Ok(Some(ns))
}

/// Every process's ids (read from /proc as our namespace sees them)
/// become the ones its user namespace sees; an id the namespace does not
/// map is refused.
pub(crate) fn translate_creds(procs: &mut [Collected], ns: &UserNs) -> Result<()> {
    for c in procs {
        let host = c.host_pid;
        let creds = &mut c.image.creds;
        let conv = |map, id: u32, what: &str| {
            to_inside(map, id).ok_or_else(|| {
                refuse(
                    host,
                    format!("{what} {id} is not mapped in its user namespace"),
                )
            })
        };
        for u in &mut creds.uids {
            *u = conv(&ns.uid_map, *u, "uid")?;
        }
        for g in creds.gids.iter_mut().chain(creds.groups.iter_mut()) {
            *g = conv(&ns.gid_map, *g, "gid")?;
        }
    }
    Ok(())
}

/// A restore makes the tree's user namespace first and every namespace
/// of the tree's own inside it (restore userns.rs), so each must belong
/// to the tree's user namespace (ioctl NS_GET_USERNS), as one the tree
/// made itself does. One made outside it and entered later (a network
/// namespace set up by the host before the tree unshared its user
/// namespace) would come back owned differently: refused by name.
pub(crate) fn check_owners(root: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ino = |t: &str, name: &str| {
        std::fs::metadata(format!("/proc/{t}/ns/{name}"))
            .ok()
            .map(|m| m.ino())
    };
    let user = ino(&root.to_string(), "user");
    for name in ["pid", "mnt", "net", "ipc", "uts", "cgroup", "time"] {
        let theirs = ino(&root.to_string(), name);
        if theirs == ino("self", name) {
            continue;
        }
        let owner = stasis_sys::userns::owner_ino(&format!("/proc/{root}/ns/{name}"));
        if owner != user {
            return Err(refuse(
                root,
                format!(
                    "its {name} namespace ({name}:[{}]) belongs to another user namespace than the tree's (user:[{}]): not restored yet",
                    theirs.unwrap_or(0),
                    user.unwrap_or(0)
                ),
            ));
        }
    }
    Ok(())
}

/// What is not restored together with a user namespace yet: objects the
/// restorer would make outside the tree's namespaces.
pub(crate) fn refuse_with(root: u32, others: &[(&str, bool)]) -> Result<()> {
    match others.iter().find(|(_, has)| *has) {
        Some((name, _)) => Err(refuse(
            root,
            format!("{name} together with a user namespace of its own: not restored yet"),
        )),
        None => Ok(()),
    }
}
