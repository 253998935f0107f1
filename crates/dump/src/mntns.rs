//! The tree's mount namespace: when the root has one of its own (every
//! process shares it, see checks.rs), its mounts are saved from
//! /proc/ROOT/mountinfo, each classified by how a restore makes it again:
//! a bind of a host path (the same filesystem and directory as a mount of
//! the dumper's namespace), a fresh pseudo filesystem, or a tmpfs whose
//! contents are saved. Anything else is refused by name.

use crate::checks::refuse;
use crate::{At, DumpError, Result, Stage};
use stasis_image::mntns::{self as img, Mount, MountHow, MountNs};
use stasis_proc::MountInfo;
use stasis_sys::Pid;
use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

mod tmpfs;

/// criu's `--external dev[MAJOR/MINOR]:NAME`: a block device and its name.
type ExtDev = ((u32, u32), String);

/// Pseudo filesystems a restore mounts anew with their options.
const FRESH: [&str; 6] = ["proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2"];

fn ns_ino(task: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{task}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// The root's mount namespace, if it is not stasis's own. (A tree in a
/// PID namespace stasis runs keeps its private namespace, made anew with
/// only /proc: see checks.rs.)
/// `ext` lists criu's `--ext-mount-map MOUNTPOINT:KEY` given at dump,
/// `devs` its `--external dev[MAJOR/MINOR]:NAME`.
pub(crate) fn collect(
    root: Pid,
    pids: &[u32],
    ext: &[(String, String)],
    devs: &[ExtDev],
) -> Result<Option<MountNs>> {
    let r = root.0 as u32;
    let pid_ns = |t: &str| {
        std::fs::metadata(format!("/proc/{t}/ns/pid"))
            .ok()
            .map(|m| m.ino())
    };
    let pid_ns_tree = pid_ns(&r.to_string()) != pid_ns("self");
    if ns_ino(&r.to_string()) == ns_ino("self") {
        return Ok(None);
    }
    // A `stasis run` tree shares our root directory; a container pivoted
    // into a root of its own is saved like any other namespace.
    let same_root = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    if pid_ns_tree && same_root(&format!("/proc/{r}/root")) == same_root("/") {
        run_tree_mounts(r)?;
        return Ok(None);
    }
    let root_dir =
        std::fs::read_link(format!("/proc/{r}/root")).map_err(|source| DumpError::Io {
            pid: r,
            stage: Stage::Collect,
            what: format!("readlink /proc/{r}/root"),
            source,
        })?;
    if root_dir != std::path::Path::new("/") {
        return Err(refuse(
            r,
            format!(
                "a root directory ({}) other than its mount namespace's root: not restored yet",
                root_dir.display()
            ),
        ));
    }
    let theirs = ordered(r, stasis_proc::read_mountinfo(r).at(r, Stage::Collect)?)?;
    let text = std::fs::read("/proc/self/mountinfo").map_err(|source| DumpError::Io {
        pid: r,
        stage: Stage::Collect,
        what: "read /proc/self/mountinfo".into(),
        source,
    })?;
    let ours = stasis_proc::parse_mountinfo(&text)
        .map_err(|e| refuse(r, format!("our mountinfo: {e}")))?;
    let host_groups: HashSet<String> = ours.iter().flat_map(|m| m.optional.clone()).collect();
    for &p in pids {
        unreachable_files(r, p)?;
    }
    let mut mounts: Vec<Mount> = Vec::with_capacity(theirs.len());
    let mut bytes = 0u64;
    for m in &theirs {
        let how = match ext.iter().find(|(at, _)| *at == m.mount_point) {
            Some((_, key)) => MountHow::External {
                key: key.clone(),
                host_path: host_path_of(m, &ours).unwrap_or_default(),
            },
            None => classify(r, m, (&theirs, &ours), &mounts, (pids, devs), &mut bytes)?,
        };
        mounts.push(mount_of(r, m, &host_groups, how)?);
    }
    Ok(Some(MountNs { mounts }))
}

/// A `stasis run` tree's private mount namespace is made anew at restore
/// as a copy of ours with a fresh /proc: a mount the tree made there would
/// be lost, so it is refused by name.
fn run_tree_mounts(r: u32) -> Result<()> {
    let key = |m: &MountInfo| {
        (
            m.mount_point.clone(),
            m.fs_type.clone(),
            m.root.clone(),
            m.source.clone(),
            m.options.clone(),
        )
    };
    let mut ours: Vec<_> = stasis_proc::read_mountinfo(std::process::id())
        .at(r, Stage::Collect)?
        .iter()
        .map(key)
        .collect();
    let mut extra = Vec::new();
    for m in stasis_proc::read_mountinfo(r).at(r, Stage::Collect)? {
        match ours.iter().position(|k| *k == key(&m)) {
            Some(i) => {
                ours.swap_remove(i);
            }
            None => extra.push(m),
        }
    }
    // The one mount `stasis run` adds: a proc on /proc.
    if let Some(i) = extra
        .iter()
        .position(|m| m.fs_type == "proc" && m.mount_point == "/proc")
    {
        extra.remove(i);
    }
    if let Some(m) = extra.first() {
        return Err(refuse(
            r,
            format!(
                "a mount of its own in the mount namespace of its PID namespace ({} on {}): \
                 only the /proc `stasis run` made is restored there yet",
                m.fs_type, m.mount_point
            ),
        ));
    }
    // Mounts of ours the tree lacks: made here since `stasis run` (a new
    // copy would have them too) or unmounted by the tree; which of the two
    // cannot be told, so only noted.
    for k in &ours {
        log::warn!(
            "pid {r}: its PID namespace's mount namespace lacks our mount {} ({}); a restore's copy of ours will have it",
            k.0,
            k.1
        );
    }
    Ok(())
}

/// Parents before children, otherwise in the namespace's order; exactly
/// one root (a mount whose parent is not listed).
fn ordered(pid: u32, list: Vec<MountInfo>) -> Result<Vec<MountInfo>> {
    let ids: HashSet<u32> = list.iter().map(|m| m.mount_id).collect();
    let roots = list.iter().filter(|m| !ids.contains(&m.parent_id)).count();
    if roots != 1 || list.len() > img::MAX_MOUNTS {
        return Err(refuse(
            pid,
            format!(
                "a mount namespace of {} mounts with {roots} roots: not restored",
                list.len()
            ),
        ));
    }
    let mut done: HashSet<u32> = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let (ready, later): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|m| done.contains(&m.parent_id) || !ids.contains(&m.parent_id));
        if ready.is_empty() {
            return Err(refuse(
                pid,
                "a mount namespace whose mounts form a cycle".into(),
            ));
        }
        done.extend(ready.iter().map(|m| m.mount_id));
        out.extend(ready);
        rest = later;
    }
    Ok(out)
}

/// The image's record of one mount: its flags and propagation (a slave,
/// or a peer group shared with the dumper's namespace, refused).
fn mount_of(
    pid: u32,
    m: &MountInfo,
    host_groups: &HashSet<String>,
    how: MountHow,
) -> Result<Mount> {
    let mut attrs = 0;
    for o in m.options.split(',') {
        attrs |= match o {
            "ro" => img::ATTR_RDONLY,
            "nosuid" => img::ATTR_NOSUID,
            "nodev" => img::ATTR_NODEV,
            "noexec" => img::ATTR_NOEXEC,
            "noatime" => img::ATTR_NOATIME,
            "strictatime" => img::ATTR_STRICTATIME,
            "nodiratime" => img::ATTR_NODIRATIME,
            "nosymfollow" => img::ATTR_NOSYMFOLLOW,
            "rw" | "relatime" => 0,
            other => {
                return Err(refuse(
                    pid,
                    format!(
                        "mount {} ({}): mount option {other}: not restored",
                        m.mount_id, m.mount_point
                    ),
                ))
            }
        };
    }
    // mountinfo names relatime and noatime; strictatime is the absence
    // of both.
    if !m
        .options
        .split(',')
        .any(|o| o == "relatime" || o == "noatime")
    {
        attrs |= img::ATTR_STRICTATIME;
    }
    let (mut shared, mut unbindable) = (0, false);
    for o in &m.optional {
        if let Some(g) = o.strip_prefix("shared:") {
            if host_groups.contains(o) {
                return Err(refuse(pid, format!("mount {} ({}): shared with a mount of the dumper's namespace (peer group {g}): propagation across namespaces is not restored", m.mount_id, m.mount_point)));
            }
            shared = g.parse().unwrap_or(0);
        } else if o == "unbindable" {
            unbindable = true;
        } else {
            return Err(refuse(
                pid,
                format!(
                    "mount {} ({}): propagation {o} (a slave mount): not restored yet",
                    m.mount_id, m.mount_point
                ),
            ));
        }
    }
    let super_options = m
        .super_options
        .split(',')
        .filter(|o| !o.is_empty() && *o != "rw")
        .collect::<Vec<_>>()
        .join(",");
    Ok(Mount {
        id: m.mount_id,
        parent: m.parent_id,
        mount_point: m.mount_point.clone(),
        root: m.root.clone(),
        fs_type: m.fs_type.clone(),
        source: m.source.clone(),
        attrs,
        super_options,
        dev: (m.major, m.minor),
        shared,
        unbindable,
        how,
    })
}

/// How a restore makes `m` again, or a refusal naming it.
fn classify(
    pid: u32,
    m: &MountInfo,
    (tree, ours): (&[MountInfo], &[MountInfo]),
    before: &[Mount],
    (pids, devs): (&[u32], &[ExtDev]),
    bytes: &mut u64,
) -> Result<MountHow> {
    if let Some(host_path) = host_path_of(m, ours) {
        return Ok(MountHow::External {
            key: host_path.clone(),
            host_path,
        });
    }
    let name = format!(
        "mount {} ({}, {} from {})",
        m.mount_id, m.mount_point, m.fs_type, m.source
    );
    // A bind of a directory or file of an earlier mount of the namespace's
    // own (a proc, tmpfs, ... made here): bound again from it.
    if let Some((b, rel)) = before.iter().find_map(|b| {
        let own = matches!(
            b.how,
            MountHow::Fresh | MountHow::Tmpfs { .. } | MountHow::Device { .. }
        );
        let rel = if b.root == "/" {
            Some(m.root.as_str())
        } else {
            m.root
                .strip_prefix(b.root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
        }?;
        (own && b.dev == (m.major, m.minor)).then(|| (b, rel.trim_start_matches('/')))
    }) {
        return Ok(MountHow::Bind {
            of: b.id,
            root: rel.to_string(),
        });
    }
    if before.iter().any(|b| b.dev == (m.major, m.minor)) {
        return Err(refuse(pid, format!("{name}: a second mount of a filesystem of the namespace's own (a bind inside the namespace): not restored yet")));
    }
    if m.root != "/" {
        return Err(refuse(
            pid,
            format!(
                "{name}: a bind of {} of a filesystem of the namespace's own: not restored yet",
                m.root
            ),
        ));
    }
    if let Some((_, name)) = devs.iter().find(|(d, _)| *d == (m.major, m.minor)) {
        return Ok(MountHow::Device { name: name.clone() });
    }
    if FRESH.contains(&m.fs_type.as_str()) {
        if m.fs_type == "devpts" {
            // A restore opens every pty master of the tree on the tree's
            // own devpts (restore kinds/pty.rs): one on another instance
            // would come back on this one.
            if let Some((p, fd)) = master_elsewhere(pids, (m.major, m.minor)) {
                return Err(refuse(
                    pid,
                    format!(
                        "{name}: a devpts instance of its own, and pid {p} fd {fd} a pty master of another devpts: not restored yet"
                    ),
                ));
            }
        }
        return Ok(MountHow::Fresh);
    }
    if m.fs_type == "tmpfs" {
        if tree
            .iter()
            .any(|o| o.parent_id == m.mount_id && o.mount_point == m.mount_point)
        {
            return Err(refuse(pid, format!("{name}: covered by another mount on its mount point, so its contents cannot be read: not restored")));
        }
        let dir = format!("/proc/{pid}/root{}", m.mount_point);
        let entries = tmpfs::save(pid, &name, &dir, &m.mount_point, bytes)?;
        return Ok(MountHow::Tmpfs { entries });
    }
    Err(refuse(pid, format!("{name}: a {} filesystem that is not a mount of the dumper's namespace: only binds of host paths, proc, sysfs, devpts, mqueue, cgroup, cgroup2 and tmpfs are restored", m.fs_type)))
}

/// The path in the dumper's namespace that shows the same filesystem and
/// directory as `m`: a mount of ours on the same device whose root
/// contains m's root. A visible one must still resolve to that device
/// there; one covered by another mount on its mount point is taken too
/// (a restore uncovers it in its private copy of the namespace).
fn host_path_of(m: &MountInfo, ours: &[MountInfo]) -> Option<String> {
    let covered = |h: &MountInfo| {
        ours.iter()
            .any(|o| o.parent_id == h.mount_id && o.mount_point == h.mount_point)
    };
    let path = |h: &MountInfo| -> Option<String> {
        let rel = if h.root == "/" {
            m.root.as_str()
        } else {
            m.root
                .strip_prefix(h.root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))?
        };
        let p = format!(
            "{}{}",
            h.mount_point.trim_end_matches('/'),
            rel.trim_end_matches('/')
        );
        Some(if p.is_empty() { "/".to_string() } else { p })
    };
    let same = ours
        .iter()
        .filter(|h| (h.major, h.minor) == (m.major, m.minor));
    let visible = same
        .clone()
        .filter(|h| !covered(h))
        .filter_map(path)
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|md| {
                (libc::major(md.dev()), libc::minor(md.dev())) == (m.major, m.minor)
            })
        });
    visible.or_else(|| {
        same.filter(|h| covered(h) && h.root == m.root)
            .map(|h| h.mount_point.clone())
            .next()
    })
}

/// Every file a process holds by path (exe, cwd, descriptors, mappings)
/// must be the very file its path names in the tree's namespace (seen
/// through /proc/ROOT/root), since a restore opens it by that path inside
/// the rebuilt tree. A file on a mount that is not there (the old root
/// after a pivot_root, a mount of the namespace it came from) whose path
/// names another file, or none, is refused by name.
/// statfs f_type of the mqueue file system.
const MQUEUE_MAGIC: i64 = 0x1980_0202;

fn unreachable_files(root: u32, pid: u32) -> Result<()> {
    let mut links = vec![format!("/proc/{pid}/exe"), format!("/proc/{pid}/cwd")];
    for dir in ["fd", "map_files"] {
        if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/{dir}")) {
            links.extend(
                d.filter_map(std::result::Result::ok)
                    .map(|e| e.path().to_string_lossy().into_owned()),
            );
        }
    }
    for l in links {
        let Ok(target) = std::fs::read_link(&l) else {
            continue;
        };
        let t = target.to_string_lossy();
        if !t.starts_with('/')
            || t.starts_with("/memfd:")
            || t.starts_with("/SYSV")
            || t.ends_with(" (deleted)")
        {
            continue; // not a path, or saved whole
        }
        // A POSIX message queue is opened by name in its IPC namespace, not
        // by path (kinds/mqueue.rs).
        if stasis_sys::fileops::fs_type(&l).ok() == Some(MQUEUE_MAGIC) {
            continue;
        }
        let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        let held = id(&l);
        let theirs = format!("/proc/{root}/root{t}");
        // A character device is the device its number names (runc makes
        // /dev/null and the like anew in the container's /dev): the same
        // number at that path there is the same device.
        let rdev = |p: &str| {
            std::fs::metadata(p)
                .ok()
                .filter(|m| m.file_type().is_char_device())
                .map(|m| m.rdev())
        };
        if rdev(&l).is_some() && rdev(&l) == rdev(&theirs) {
            continue;
        }
        if held.is_some() && held != id(&theirs) {
            return Err(refuse(pid, format!("{l} ({t}) is on a mount outside its mount namespace (the old root of a pivot_root, or the namespace it came from), and that path names another file or none there")));
        }
    }
    Ok(())
}

/// A pty master (/dev/ptmx, 5:2) of the tree whose devpts is not `dev`.
fn master_elsewhere(pids: &[u32], dev: (u32, u32)) -> Option<(u32, String)> {
    pids.iter().find_map(|&p| {
        std::fs::read_dir(format!("/proc/{p}/fd"))
            .ok()?
            .find_map(|e| {
                let e = e.ok()?;
                let md = std::fs::metadata(e.path()).ok()?;
                let master = md.file_type().is_char_device()
                    && (libc::major(md.rdev()), libc::minor(md.rdev())) == (5, 2);
                let on = (libc::major(md.dev()), libc::minor(md.dev())) == dev;
                (master && !on).then(|| (p, e.file_name().to_string_lossy().into_owned()))
            })
    })
}
