//! The tree's own mount namespace, rebuilt before anything else.
//!
//! The restorer unshares a private copy of its namespace, builds the saved
//! mount tree (parents first) on a staging directory, and while it is
//! there opens every file of the image inside that tree ([`open`]: openat2
//! with RESOLVE_IN_ROOT on the staging directory), so descriptors and
//! mappings name the new tree's mounts. It then goes back to its own
//! namespace; the first process it forks enters the built one and makes
//! the staging directory its root with pivot_root, detaching the rest
//! (the restorer's copy of its own mounts). Every other process is forked
//! inside and inherits it.

use crate::{At, RestoreError, Result, Stage};
use stasis_image::mntns::{Mount, MountHow, MountNs, TmpfsEntry};
use stasis_sys::mount as sys;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

/// The caller's say in where external mounts come from (criu's options).
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// `--root PATH`: the root mount is bound from PATH.
    pub root: Option<String>,
    /// `--ext-mount-map KEY:PATH`: the external mount saved as KEY is
    /// bound from PATH.
    pub ext_map: Vec<(String, String)>,
    /// `--inherit-fd fd[N]:KEY`: our descriptor N stands in for the
    /// image's external object KEY (a pipe whose other end was outside).
    pub inherit: Vec<(i32, String)>,
    /// `--external dev[NAME]:DEVPATH`: the block device a mount saved as
    /// external device NAME is mounted from.
    pub ext_devs: Vec<(String, String)>,
}

/// Where a mapped external mount is bound from instead of the path the
/// caller gave (a cgroup v1 bind mapped to its hierarchy's root:
/// `cgroups::bind_source`).
pub(crate) type Remap<'a> = &'a dyn Fn(&Mount, &str) -> Option<String>;

/// The namespace being restored: while the restorer is in it, its root
/// (for [`open`]) and the way home; then the descriptors the first
/// process forked enters and pivots with.
struct Active {
    root: OwnedFd,
    home: Option<(OwnedFd, OwnedFd)>,
    fork: (i32, i32),
    /// What the first process mounts itself (see [`late`]).
    late: Vec<sys::LateMount>,
    /// The ptmx of the tree's own devpts, as the tree sees it.
    ptmx: Option<String>,
}

static ACTIVE: Mutex<Option<Active>> = Mutex::new(None);

fn active() -> std::sync::MutexGuard<'static, Option<Active>> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens `path` as the restored processes will see it: inside the
/// rebuilt mount tree while the restorer is in it, else as is.
pub(crate) fn open(path: &str, flags: i32) -> stasis_sys::Result<OwnedFd> {
    match active().as_ref().filter(|a| a.home.is_some()) {
        Some(a) => sys::open_in_root(a.root.as_fd(), path, flags),
        None => stasis_sys::util::open(path, flags),
    }
}

/// stat of `path` as [`open`] sees it.
pub(crate) fn metadata(path: &str) -> std::io::Result<std::fs::Metadata> {
    let fd = open(path, libc::O_PATH).map_err(|e| e.source)?;
    std::fs::File::from(fd).metadata()
}

/// Where the tree's pty masters are opened: the ptmx of its own devpts
/// (the dump made sure every master of the tree is on that one), else
/// ours.
pub(crate) fn ptmx() -> String {
    active()
        .as_ref()
        .filter(|a| a.home.is_some())
        .and_then(|a| a.ptmx.clone())
        .unwrap_or_else(|| "/dev/ptmx".into())
}

/// Runs `f` where absolute paths name what the tree will see: while the
/// restorer is in the built namespace, on a thread of its own whose root
/// is the built tree's (unshare CLONE_FS, fchdir, chroot: the rest of the
/// restorer keeps its root); else here. For a unix socket bound to a path
/// (bind takes the path as its name, so it cannot be bound by a path
/// relative to that root).
pub(crate) fn in_tree_root<T: Send>(pid: u32, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    // The lock is let go before `f` runs (it may take it).
    let root = active()
        .as_ref()
        .filter(|a| a.home.is_some())
        .map(|a| a.root.try_clone());
    let root = match root {
        Some(r) => r.map_err(|source| RestoreError::Io {
            pid,
            stage: Stage::Fork,
            what: "dup the rebuilt tree's root".into(),
            source,
        })?,
        None => return f(),
    };
    sys::on_thread_in_root(root.as_fd(), f).at(pid, Stage::Fork)?
}

/// The built namespace and its root (descriptors of ours), for the first
/// process forked ([`stasis_sys::spawn::TreePlan::mntns`]).
pub(crate) fn for_fork() -> Option<(i32, i32)> {
    active().as_ref().map(|a| a.fork)
}

/// The mounts the first process forked makes once it is in the tree's
/// namespaces ([`stasis_sys::spawn::TreePlan::late_mounts`]).
pub(crate) fn late_mounts() -> Vec<sys::LateMount> {
    active()
        .as_ref()
        .map(|a| a.late.clone())
        .unwrap_or_default()
}

/// Back to the restorer's own namespace and working directory; files are
/// opened as they are by path from now on.
pub(crate) fn leave() -> stasis_sys::Result<()> {
    let home = active().as_mut().and_then(|a| a.home.take());
    if let Some((ns, cwd)) = home {
        sys::setns_mnt(ns.as_fd())?;
        sys::fchdir(cwd.as_fd())?;
    }
    Ok(())
}

/// A mount namespace built for the tree (its descriptors). Dropping it
/// takes the restorer back to its own namespace (if it has not gone yet)
/// and removes the staging directory; the built namespace lives on in the
/// tree, or vanishes with the last descriptor when the restore failed.
pub(crate) struct Built {
    _ns: Option<OwnedFd>,
    _root: Option<OwnedFd>,
    /// Detached mounts the first process attaches (late mounts).
    _late: Vec<OwnedFd>,
    staging: std::path::PathBuf,
}

impl Drop for Built {
    fn drop(&mut self) {
        if let Err(e) = leave() {
            log::warn!("leaving the built mount namespace: {e}");
        }
        *active() = None;
        let _ = std::fs::remove_dir(&self.staging);
    }
}

/// Builds the saved namespace (see the module comment) and stays in it.
/// `held`: the tree's user namespace, whose holder made the namespace to
/// build in (userns.rs) and opens the tmpfs and devpts made in it; else
/// a copy of ours is unshared.
pub(crate) fn build(
    ns: Option<&MountNs>,
    (opts, held): (&MountOptions, Option<&crate::userns::Held>),
    remap: Remap<'_>,
    pid: u32,
) -> Result<Option<Built>> {
    let Some(ns) = ns else { return Ok(None) };
    let st = Stage::Preflight;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| RestoreError::Io {
            pid,
            stage: st,
            what,
            source,
        }
    };
    let staging = std::env::temp_dir().join(format!(".stasis-mntns-{}", std::process::id()));
    std::fs::create_dir(&staging).map_err(io(&format!("mkdir {}", staging.display())))?;
    let mut built = Built {
        _ns: None,
        _root: None,
        _late: Vec::new(),
        staging: staging.clone(),
    };
    let home = (
        sys::own_mntns().at(pid, st)?,
        stasis_sys::util::open(".", libc::O_PATH | libc::O_DIRECTORY).at(pid, st)?,
    );
    let stand_in = home.0.try_clone().map_err(io("dup a descriptor"))?;
    // From here on a failure goes home (Built's drop).
    *active() = Some(Active {
        root: stand_in,
        home: Some(home),
        fork: (-1, -1),
        late: Vec::new(),
        ptmx: ns
            .mounts
            .iter()
            .find(|m| m.fs_type == "devpts" && matches!(m.how, MountHow::Fresh))
            .map(|m| format!("{}/ptmx", m.mount_point.trim_end_matches('/'))),
    });
    match held.and_then(|h| h.mnt.as_ref()) {
        Some(m) => sys::enter_private(m.as_fd()).at(pid, st)?,
        None => sys::unshare_private().at(pid, st)?,
    }
    let ns_fd = sys::own_mntns().at(pid, st)?;
    let staging_s = staging.to_string_lossy().into_owned();
    let (late, late_fds) = mount_all(ns, (opts, remap, held), &staging_s, pid)?;
    built._late = late_fds;
    let root = stasis_sys::util::open(&staging_s, libc::O_PATH | libc::O_DIRECTORY).at(pid, st)?;
    let dup = root.try_clone().map_err(io("dup the tree's root"))?;
    if let Some(a) = active().as_mut() {
        a.root = dup;
        a.fork = (ns_fd.as_raw_fd(), root.as_raw_fd());
        a.late = late;
    }
    built._ns = Some(ns_fd);
    built._root = Some(root);
    log::info!(
        "pid {pid}: mount namespace of {} mounts built",
        ns.mounts.len()
    );
    Ok(Some(built))
}

/// Filesystems that belong to a namespace of the process that creates
/// them (PID, network, IPC, cgroup): made by the tree's first process.
const NS_BOUND: [&str; 5] = ["proc", "sysfs", "mqueue", "cgroup", "cgroup2"];

/// Every mount, parents first, attached on `staging` (the root) or at its
/// mount point inside the tree; then propagation. A namespace-bound
/// filesystem, every mount stacked on one and every bind of one are left
/// to the first process forked ([`sys::LateMount`], returned with the
/// detached mounts it attaches, which must stay open until the fork).
fn mount_all(
    ns: &MountNs,
    (opts, remap, held): (&MountOptions, Remap<'_>, Option<&crate::userns::Held>),
    staging: &str,
    pid: u32,
) -> Result<(Vec<sys::LateMount>, Vec<OwnedFd>)> {
    let mut external = externals(ns, opts, remap, pid)?;
    let mut mounts: HashMap<u32, OwnedFd> = HashMap::new();
    let mut late_ids = std::collections::HashSet::new();
    let (mut late, mut keep) = (Vec::new(), Vec::new());
    let cstr = |m: &Mount, s: &str| {
        std::ffi::CString::new(s).map_err(|_| refused(pid, m, format!("{s:?}: a NUL byte")))
    };
    for (i, m) in ns.mounts.iter().enumerate() {
        let bind_src = match &m.how {
            MountHow::Bind { of, root } => {
                let src = ns
                    .mounts
                    .iter()
                    .find(|s| s.id == *of)
                    .ok_or_else(|| refused(pid, m, format!("bind of unknown mount {of}")))?;
                Some((src.id, bind_path(&src.mount_point, root)))
            }
            _ => None,
        };
        let ns_bound = matches!(m.how, MountHow::Fresh) && NS_BOUND.contains(&m.fs_type.as_str());
        let is_late = i > 0
            && (ns_bound
                || late_ids.contains(&m.parent)
                || bind_src
                    .as_ref()
                    .is_some_and(|(of, _)| late_ids.contains(of)));
        if is_late {
            if m.shared != 0 || m.unbindable {
                return Err(refused(pid, m, "shared or unbindable, made inside the new namespaces: propagation not restored yet".into()));
            }
            late_ids.insert(m.id);
            let at = cstr(m, &m.mount_point)?;
            late.push(match (&m.how, bind_src) {
                (_, Some((_, from))) => sys::LateMount::Bind {
                    from: cstr(m, &from)?,
                    attrs: m.attrs,
                    at,
                },
                (MountHow::Fresh, None) if ns_bound => sys::LateMount::Fresh {
                    fs: cstr(m, &m.fs_type)?,
                    source: cstr(m, &m.source)?,
                    options: m
                        .super_options
                        .split(',')
                        .filter(|o| !o.is_empty())
                        .map(|o| match o.split_once('=') {
                            Some((k, v)) => Ok((cstr(m, k)?, Some(cstr(m, v)?))),
                            None => Ok((cstr(m, o)?, None)),
                        })
                        .collect::<Result<_>>()?,
                    attrs: m.attrs,
                    at,
                },
                _ => {
                    let fd = match external.remove(&m.id) {
                        Some(fd) => fd,
                        None => fresh(m, opts, pid, held)?,
                    };
                    sys::set_attrs(fd.as_fd(), m.attrs)
                        .map_err(|e| refused(pid, m, e.to_string()))?;
                    let l = sys::LateMount::Attach {
                        fd: fd.as_raw_fd(),
                        at,
                    };
                    keep.push(fd);
                    l
                }
            });
            continue;
        }
        let root = || {
            mounts
                .get(&ns.mounts[0].id)
                .map(|f| f.as_fd())
                .ok_or_else(|| refused(pid, m, "no root mount".into()))
        };
        let fd = match (external.remove(&m.id), &bind_src) {
            (Some(fd), _) => fd,
            (None, Some((_, from))) => {
                let p = sys::open_in_root(root()?, from, libc::O_PATH | libc::O_NOFOLLOW)
                    .map_err(|e| refused(pid, m, format!("its source {from}: {e}")))?;
                sys::clone_mount_at(p.as_fd()).map_err(|e| refused(pid, m, e.to_string()))?
            }
            (None, None) => fresh(m, opts, pid, held)?,
        };
        sys::set_attrs(fd.as_fd(), m.attrs).map_err(|e| refused(pid, m, e.to_string()))?;
        let target = if i == 0 {
            stasis_sys::util::open(staging, libc::O_PATH | libc::O_DIRECTORY)
                .at(pid, Stage::Preflight)?
        } else {
            sys::open_in_root(root()?, &m.mount_point, libc::O_PATH | libc::O_NOFOLLOW)
                .map_err(|e| refused(pid, m, format!("its mount point: {e}")))?
        };
        sys::attach(fd.as_fd(), target.as_fd()).map_err(|e| refused(pid, m, e.to_string()))?;
        mounts.insert(m.id, fd);
    }
    propagation(ns, &mounts, pid)?;
    for l in &late {
        log::debug!("pid {pid}: mounted by the first process: {:?}", l);
    }
    Ok((late, keep))
}

/// The path of `root` (relative) of a mount at `mount_point`.
fn bind_path(mount_point: &str, root: &str) -> String {
    match (mount_point.trim_end_matches('/'), root) {
        ("", "") => "/".into(),
        (mp, "") => mp.into(),
        (mp, r) => format!("{mp}/{r}"),
    }
}

fn refused(pid: u32, m: &Mount, why: String) -> RestoreError {
    RestoreError::Refused {
        pid,
        stage: Stage::Preflight,
        what: format!("mount {} ({}, {}): {why}", m.id, m.mount_point, m.fs_type),
    }
}

/// A new filesystem for `m` (a pseudo filesystem, or a tmpfs filled
/// with its saved contents), detached.
/// A new filesystem for `m`. In a tree with a user namespace a tmpfs or
/// devpts is made from a context its holder opened, so the superblock
/// belongs to that user namespace as when the tree mounted it (a tmpfs
/// there is nodev; a devpts's ptmx belongs to its root), created and
/// filled with the filesystem ids of the namespace's root (a superblock
/// of a user namespace takes files only from ids mapped there).
fn fresh(
    m: &Mount,
    opts: &MountOptions,
    pid: u32,
    held: Option<&crate::userns::Held>,
) -> Result<OwnedFd> {
    let tmpfs = matches!(m.how, MountHow::Tmpfs { .. });
    let all: Vec<&str> = m
        .super_options
        .split(',')
        .filter(|o| !o.is_empty())
        .collect();
    // A read-only tmpfs is filled first, then made read-only.
    let source = match &m.how {
        MountHow::Device { name } => device(m, name, opts, pid)?,
        _ => m.source.clone(),
    };
    let options: Vec<&str> = all
        .iter()
        .copied()
        .filter(|o| !tmpfs || *o != "ro")
        .collect();
    let make = |fd: OwnedFd| -> std::result::Result<OwnedFd, String> {
        if let MountHow::Tmpfs { entries } = &m.how {
            fill(fd.as_raw_fd(), entries)?;
            if all.contains(&"ro") {
                sys::reconfigure_read_only(fd.as_fd()).map_err(|e| e.to_string())?;
            }
        }
        Ok(fd)
    };
    let inside = held.filter(|_| tmpfs || m.fs_type == "devpts");
    let made = match inside {
        Some(h) => {
            let ctx = h
                .holder
                .fsopen(&m.fs_type)
                .map_err(|e| refused(pid, m, e.to_string()))?;
            stasis_sys::userns::with_fs_ids(h.root_ids, || {
                Ok(sys::new_fs_from(ctx, &m.fs_type, &source, &options, 0)
                    .map_err(|e| e.to_string())
                    .and_then(make))
            })
            .map_err(|e| refused(pid, m, e.to_string()))?
        }
        None => sys::new_fs(&m.fs_type, &source, &options, 0)
            .map_err(|e| e.to_string())
            .and_then(make),
    };
    made.map_err(|e| refused(pid, m, e))
}

/// The block device an external device mount `name` is mounted from:
/// the one `--external dev[NAME]:DEVPATH` names, which must be a block
/// device.
fn device(m: &Mount, name: &str, opts: &MountOptions, pid: u32) -> Result<String> {
    use std::os::unix::fs::FileTypeExt;
    let Some((_, path)) = opts.ext_devs.iter().find(|(n, _)| n == name) else {
        return Err(refused(
            pid,
            m,
            format!("external device {name}: give its device with --external dev[{name}]:DEVPATH"),
        ));
    };
    match std::fs::metadata(path) {
        Ok(md) if md.file_type().is_block_device() => Ok(path.clone()),
        Ok(_) => Err(refused(
            pid,
            m,
            format!("external device {name}: {path} is not a block device"),
        )),
        Err(e) => Err(refused(
            pid,
            m,
            format!("external device {name}: {path}: {e}"),
        )),
    }
}

/// Detached copies of every external mount, taken before anything is
/// uncovered: first the ones criu's options name or whose host path still
/// shows their filesystem; then, in order, the ones a mount of ours
/// covers, uncovered in our private copy of the namespace (detached at
/// the pivot anyway).
fn externals(
    ns: &MountNs,
    opts: &MountOptions,
    remap: Remap<'_>,
    pid: u32,
) -> Result<HashMap<u32, OwnedFd>> {
    let mut out = HashMap::new();
    let mut covered = Vec::new();
    for (i, m) in ns.mounts.iter().enumerate() {
        let MountHow::External { key, host_path } = &m.how else {
            continue;
        };
        let given = if i == 0 { opts.root.as_deref() } else { None }.or_else(|| {
            opts.ext_map
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        });
        let remapped = given.and_then(|g| remap(m, g));
        if let (Some(r), Some(g)) = (&remapped, given) {
            log::info!(
                "pid {pid}: mount {} ({}): bound from {r}, its cgroup in the hierarchy {g} names",
                m.id,
                m.mount_point
            );
        }
        let src = remapped.as_deref().or(given).unwrap_or(host_path);
        let fd = sys::clone_mount(src)
            .map_err(|e| refused(pid, m, format!("external mount {key}: {e}")))?;
        if given.is_none() && dev_of(&fd) != m.dev {
            covered.push((m, host_path.as_str(), i == 0));
            continue;
        }
        out.insert(m.id, fd);
    }
    for (m, path, is_root) in covered {
        let mut fd = sys::clone_mount(path).map_err(|e| refused(pid, m, e.to_string()))?;
        for _ in 0..8 {
            if dev_of(&fd) == m.dev || sys::detach(path).is_err() {
                break;
            }
            fd = sys::clone_mount(path).map_err(|e| refused(pid, m, e.to_string()))?;
        }
        let dev = dev_of(&fd);
        if dev != m.dev {
            return Err(refused(pid, m, format!(
                "external mount {path}: it is device {}:{} here, {}:{} at the dump; name its source with --ext-mount-map {path}:PATH{}",
                dev.0, dev.1, m.dev.0, m.dev.1, if is_root { " or --root PATH" } else { "" }
            )));
        }
        out.insert(m.id, fd);
    }
    Ok(out)
}

fn dev_of(fd: &OwnedFd) -> (u32, u32) {
    fd.try_clone()
        .and_then(|f| std::fs::File::from(f).metadata())
        .map(|md| (libc::major(md.dev()), libc::minor(md.dev())))
        .unwrap_or((0, 0))
}

/// Creates the saved entries in a fresh tmpfs (the detached mount `mnt`),
/// parents first; times last, deepest first, since creating an entry
/// moves its directory's times.
fn fill(mnt: i32, entries: &[TmpfsEntry]) -> std::result::Result<(), String> {
    use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
    let base = format!("/proc/self/fd/{mnt}");
    let at = |e: &TmpfsEntry| {
        if e.path.is_empty() {
            base.clone()
        } else {
            format!("{base}/{}", e.path)
        }
    };
    let err = |e: &TmpfsEntry, what: &str, x: &dyn std::fmt::Display| {
        format!("tmpfs entry {:?}: {what}: {x}", e.path)
    };
    for e in entries {
        let p = at(e);
        let kind = e.mode & libc::S_IFMT;
        match kind {
            libc::S_IFDIR if e.path.is_empty() => Ok(()),
            libc::S_IFDIR => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&p)
                .map_err(|x| err(e, "mkdir", &x)),
            libc::S_IFLNK => symlink(&e.target, &p).map_err(|x| err(e, "symlink", &x)),
            libc::S_IFREG => std::fs::write(&p, &e.data).map_err(|x| err(e, "write", &x)),
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                sys::mknod(&p, e.mode, e.rdev).map_err(|x| err(e, "mknod", &x))
            }
            _ => Err(err(e, "type", &format!("{kind:#o} not restorable"))),
        }?;
        std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).map_err(|x| err(e, "chown", &x))?;
        if kind != libc::S_IFLNK {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode & 0o7777))
                .map_err(|x| err(e, "chmod", &x))?;
        }
    }
    for e in entries.iter().rev() {
        sys::set_times_nofollow(&at(e), e.atime, e.mtime).map_err(|x| err(e, "times", &x))?;
    }
    Ok(())
}

/// Peer groups and unbindable mounts, once every mount is attached (so
/// that attaching did not propagate anywhere).
fn propagation(ns: &MountNs, mounts: &HashMap<u32, OwnedFd>, pid: u32) -> Result<()> {
    let mut first: HashMap<u32, u32> = HashMap::new();
    for m in &ns.mounts {
        // Late mounts are refused if shared or unbindable.
        let Some(fd) = mounts.get(&m.id).map(|f| f.as_fd()) else {
            continue;
        };
        if m.shared != 0 {
            match first.get(&m.shared) {
                Some(f) => sys::join_peer_group(mounts[f].as_fd(), fd),
                None => {
                    first.insert(m.shared, m.id);
                    sys::set_propagation(fd, true)
                }
            }
            .map_err(|e| refused(pid, m, e.to_string()))?;
        } else if m.unbindable {
            sys::set_propagation(fd, false).map_err(|e| refused(pid, m, e.to_string()))?;
        }
    }
    Ok(())
}
