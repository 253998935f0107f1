//! The tree's cgroups, with criu's `--manage-cgroups` modes and
//! `--cgroup-root`.
//!
//! Before anything is created, every cgroup the image names is found on
//! this machine's cgroup mounts and checked against the mode; then the
//! missing ones are made (parents first) and given their saved owner,
//! mode and properties. The restorer's own cgroup and its ancestors are
//! the host's: the modes do not apply to them and nothing is written
//! there. Each process joins its cgroups right after it is
//! seized, before its memory is rebuilt, so that its pages are charged
//! there. On failure the cgroups made here are removed again, once the
//! tree is gone (the guard is dropped after the tree's).

use crate::{RestoreError, Result, Stage};
use stasis_image::{CgroupDir, CgroupPath, Cgroups};
use stasis_sys::Pid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// criu's `--manage-cgroups` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupMode {
    /// Join nothing: the tree stays in the restorer's cgroups.
    Ignore,
    /// Join; every cgroup must exist; properties untouched.
    None,
    /// Join; every cgroup must exist; properties written.
    Props,
    /// Join; missing cgroups are made with their properties, existing
    /// ones left as they are (criu's default).
    #[default]
    Soft,
    /// Join; missing cgroups made, properties written to all.
    Full,
    /// Join; no cgroup may exist: all are made with their properties.
    Strict,
}

impl CgroupMode {
    /// The mode named as criu names it.
    pub fn parse(s: &str) -> Option<CgroupMode> {
        Some(match s {
            "ignore" => CgroupMode::Ignore,
            "none" => CgroupMode::None,
            "props" => CgroupMode::Props,
            "soft" => CgroupMode::Soft,
            "full" => CgroupMode::Full,
            "strict" => CgroupMode::Strict,
            _ => return None,
        })
    }
}

/// criu's `--cgroup-root [CONTROLLER:]/PATH`: the root process's cgroup
/// in that hierarchy (every one without a controller) becomes PATH, and
/// the tree's cgroups below it move along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    pub controller: Option<String>,
    pub path: String,
}

impl CgroupRoot {
    pub fn parse(s: &str) -> std::result::Result<CgroupRoot, String> {
        let (controller, path) = match s.split_once(':') {
            Some((c, p)) => (Some(c.to_owned()), p),
            None => (None, s),
        };
        let at = CgroupPath {
            controllers: controller.clone().unwrap_or_default(),
            path: path.to_owned(),
        };
        at.check()?;
        Ok(CgroupRoot {
            controller,
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    fn applies(&self, controllers: &str) -> bool {
        match &self.controller {
            None => true,
            Some(c) => controllers.split(',').any(|x| x == c),
        }
    }
}

/// The cgroups made ready for the tree; removes the ones it made unless
/// [`Prepared::keep`] is called.
#[derive(Default)]
pub(crate) struct Prepared {
    /// Per process (image PID): the directories to join.
    joins: HashMap<u32, Vec<PathBuf>>,
    /// Per process: the directories it is in already by inheritance from
    /// us, which it joins only when the tree has its own cgroup namespace
    /// (its root moved itself to the namespace's root: cgroupns.rs).
    inherited: HashMap<u32, Vec<PathBuf>>,
    /// The tree's cgroup namespace's roots, located like its cgroups.
    pub(crate) ns_roots: Vec<PathBuf>,
    made: Vec<PathBuf>,
    keep: bool,
}

fn refused(pid: u32, what: String) -> RestoreError {
    RestoreError::Refused {
        pid,
        stage: Stage::Preflight,
        what,
    }
}

/// `p` moved under the `--cgroup-root` that applies to its hierarchy,
/// given the root process's saved cgroup there.
fn moved(
    p: &CgroupPath,
    roots: &[CgroupRoot],
    root_set: &[CgroupPath],
) -> std::result::Result<CgroupPath, String> {
    let Some(r) = roots.iter().rev().find(|r| r.applies(&p.controllers)) else {
        return Ok(p.clone());
    };
    let old = root_set
        .iter()
        .find(|q| q.controllers == p.controllers)
        .map(|q| q.path.trim_end_matches('/'))
        .unwrap_or("");
    let rest = p
        .path
        .strip_prefix(old)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .ok_or_else(|| {
            format!(
                "cgroup {}:{} is not below the root process's {old:?}: --cgroup-root cannot move it",
                p.controllers, p.path
            )
        })?;
    let path = format!("{}{rest}", r.path);
    Ok(CgroupPath {
        controllers: p.controllers.clone(),
        path: if path.is_empty() { "/".into() } else { path },
    })
}

/// A container's cgroup v1 bind (its own cgroup of one hierarchy, at
/// `saved_root` there, runc's /sys/fs/cgroup/CONTROLLER), when the caller
/// maps it to a cgroup above the container's (runc 1.1 names the
/// hierarchy's root, or its own cgroup there): the directory of the cgroup the tree is
/// restored into (its `--cgroup-root` applied), so the container sees its
/// own cgroup again, not the whole hierarchy. None when that is not the
/// case (the mapping is used as given).
pub(crate) fn bind_source(
    cg: Option<&Cgroups>,
    roots: &[CgroupRoot],
    root_pid: u32,
    (super_options, saved_root): (&str, &str),
    given: &str,
) -> Option<PathBuf> {
    let cg = cg?;
    let opts: Vec<&str> = super_options.split(',').collect();
    let root_set = cg.set_of(root_pid)?.paths.clone();
    let p = root_set
        .iter()
        .find(|p| p.path == saved_root && p.controllers.split(',').all(|c| opts.contains(&c)))?;
    let mounts = stasis_proc::read_mountinfo(std::process::id()).ok()?;
    let new = moved(p, roots, &root_set).ok()?;
    let dir = stasis_proc::cgroup_dir(&mounts, &new.controllers, &new.path)?;
    // Only a cgroup above the tree's own (the hierarchy's root, or the
    // caller's own cgroup runc names) is narrowed down to it.
    dir.starts_with(given).then_some(dir)
}

/// Finds, checks and makes the tree's cgroups. Nothing is created unless
/// every check passed.
pub(crate) fn prepare(
    cg: Option<&Cgroups>,
    ns: Option<&stasis_image::CgroupNs>,
    mode: CgroupMode,
    roots: &[CgroupRoot],
    root_pid: u32,
) -> Result<Prepared> {
    let Some(cg) = cg.filter(|_| mode != CgroupMode::Ignore) else {
        return Ok(Prepared::default());
    };
    let mounts = stasis_proc::read_mountinfo(std::process::id())
        .map_err(|e| refused(root_pid, format!("reading our mount table: {e}")))?;
    let own = std::fs::read("/proc/self/cgroup")
        .ok()
        .and_then(|t| stasis_proc::parse_cgroup(&t).ok())
        .unwrap_or_default();
    let root_set = cg
        .set_of(root_pid)
        .map(|s| s.paths.clone())
        .unwrap_or_default();
    let locate = |p: &CgroupPath| -> Result<(CgroupPath, PathBuf)> {
        let p = moved(p, roots, &root_set).map_err(|e| refused(root_pid, e))?;
        let dir = stasis_proc::cgroup_dir(&mounts, &p.controllers, &p.path).ok_or_else(|| {
            refused(
                root_pid,
                format!(
                    "cgroup {}:{}: that hierarchy is not mounted here",
                    name(&p.controllers),
                    p.path
                ),
            )
        })?;
        Ok((p, dir))
    };
    let mut prepared = Prepared::default();
    for &(pid, set) in &cg.members {
        let mut dirs = Vec::new();
        let mut inherited = Vec::new();
        for p in &cg.sets[set as usize].paths {
            let (p, dir) = locate(p)?;
            // Already there: inherited from us through the fork.
            if !own.contains(&(p.controllers.clone(), p.path.clone())) {
                dirs.push(dir);
            } else {
                inherited.push(dir);
            }
        }
        prepared.joins.insert(pid, dirs);
        prepared.inherited.insert(pid, inherited);
    }
    for p in ns.iter().flat_map(|n| &n.roots) {
        prepared.ns_roots.push(locate(p)?.1);
    }
    // Every cgroup of every set, with its ancestors, parents first; each
    // with the saved cgroup it stands for, if any (ancestors above a
    // --cgroup-root stand for none).
    let saved: HashMap<&CgroupPath, &CgroupDir> = cg.dirs.iter().map(|d| (&d.at, d)).collect();
    let mut origin: HashMap<CgroupPath, CgroupPath> = HashMap::new();
    let mut all: Vec<CgroupPath> = Vec::new();
    for p in cg.sets.iter().flat_map(|s| &s.paths) {
        for anc in p.lineage() {
            if let Ok(m) = moved(&anc, roots, &root_set) {
                origin.entry(m).or_insert(anc);
            }
        }
        let (m, _) = locate(p)?;
        for anc in m.lineage() {
            if !all.contains(&anc) {
                all.push(anc);
            }
        }
    }
    all.sort_by_key(|m| (m.path.matches('/').count(), m.path.clone()));
    let mut plan = Vec::new();
    for m in &all {
        let dir = stasis_proc::cgroup_dir(&mounts, &m.controllers, &m.path).ok_or_else(|| {
            refused(
                root_pid,
                format!(
                    "cgroup {}:{}: not reachable here",
                    name(&m.controllers),
                    m.path
                ),
            )
        })?;
        let exists = dir.is_dir();
        let label = format!("{}:{}", name(&m.controllers), m.path);
        // Our own cgroup and its ancestors are the host's, not the tree's:
        // never checked against the mode, never written.
        if ours(&own, m) {
            continue;
        }
        match (mode, exists) {
            (CgroupMode::None | CgroupMode::Props, false) => {
                return Err(refused(
                    root_pid,
                    format!("cgroup {label} does not exist (--manage-cgroups none/props needs it)"),
                ))
            }
            (CgroupMode::Strict, true) => {
                return Err(refused(
                    root_pid,
                    format!("cgroup {label} exists (--manage-cgroups strict makes every cgroup)"),
                ))
            }
            _ => {}
        }
        let write_props = !exists || matches!(mode, CgroupMode::Props | CgroupMode::Full);
        let props = origin.get(m).and_then(|o| saved.get(o).copied());
        plan.push((dir, exists, props.filter(|_| write_props), label));
    }
    for (dir, exists, props, label) in plan {
        if !exists {
            std::fs::create_dir(&dir)
                .map_err(|e| refused(root_pid, format!("making cgroup {label}: {e}")))?;
            prepared.made.push(dir.clone());
        }
        if let Some(d) = props {
            apply(&dir, d, !exists)
                .map_err(|e| refused(root_pid, format!("cgroup {label}: {e}")))?;
        }
    }
    Ok(prepared)
}

/// Whether `m` is the restorer's own cgroup in its hierarchy, or above it.
fn ours(own: &[(String, String)], m: &CgroupPath) -> bool {
    own.iter().any(|(c, p)| {
        *c == m.controllers
            && (p == &m.path
                || p.strip_prefix(m.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    })
}

/// The hierarchy's name for messages.
fn name(controllers: &str) -> &str {
    if controllers.is_empty() {
        "cgroup2"
    } else {
        controllers
    }
}

/// Writes a saved cgroup's properties (and, if `made`, its owner and
/// mode) in the order of `PROPERTIES`.
fn apply(dir: &Path, d: &CgroupDir, made: bool) -> std::result::Result<(), String> {
    for (file, value) in &d.props {
        let write = |f: &str, v: &str| {
            std::fs::write(dir.join(f), v).map_err(|e| format!("writing {v:?} to {f}: {e}"))
        };
        match file.as_str() {
            "devices.list" => {
                if value.trim() != "a *:* rwm" {
                    write("devices.deny", "a")?;
                    for line in value.lines().filter(|l| !l.trim().is_empty()) {
                        write("devices.allow", line)?;
                    }
                }
            }
            "cgroup.subtree_control" => {
                let v: Vec<String> = value.split_whitespace().map(|c| format!("+{c}")).collect();
                if !v.is_empty() {
                    write(file, &v.join(" "))?;
                }
            }
            _ if value.is_empty() => {}
            _ => {
                // Unchanged values are not written: some files refuse a
                // write of their own value in some states (an exclusive
                // cpuset), and nothing is lost.
                if std::fs::read_to_string(dir.join(file)).is_ok_and(|cur| cur.trim_end() == value)
                {
                    continue;
                }
                write(file, value)?;
            }
        }
    }
    if made {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(dir, Some(d.uid), Some(d.gid))
            .map_err(|e| format!("chown: {e}"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(d.mode))
            .map_err(|e| format!("chmod: {e}"))?;
    }
    Ok(())
}

impl Prepared {
    /// Moves the process `pid` of the image (`host` here) into its
    /// cgroups.
    pub(crate) fn join(&self, pid: u32, host: Pid) -> Result<()> {
        let inherited = self
            .inherited
            .get(&pid)
            .filter(|_| !self.ns_roots.is_empty());
        for dir in self.joins.get(&pid).into_iter().chain(inherited).flatten() {
            std::fs::write(dir.join("cgroup.procs"), host.0.to_string()).map_err(|e| {
                RestoreError::Refused {
                    pid,
                    stage: Stage::Attributes,
                    what: format!("joining cgroup {}: {e}", dir.display()),
                }
            })?;
        }
        Ok(())
    }

    /// The restore succeeded: the cgroups made here stay.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for dir in self.made.iter().rev() {
            // The tree's processes are gone, but a cgroup is freed a
            // moment after its last task exits.
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(c: &str, path: &str) -> CgroupPath {
        CgroupPath {
            controllers: c.into(),
            path: path.into(),
        }
    }

    #[test]
    fn cgroup_root_moves_the_tree() {
        let roots = vec![CgroupRoot::parse("/new").unwrap()];
        let set = vec![p("pids", "/old/c"), p("", "/old")];
        assert_eq!(
            moved(&p("pids", "/old/c/x"), &roots, &set).unwrap(),
            p("pids", "/new/x")
        );
        assert_eq!(moved(&p("", "/old"), &roots, &set).unwrap(), p("", "/new"));
        assert!(moved(&p("pids", "/elsewhere"), &roots, &set).is_err());
        let only_cpu = vec![CgroupRoot::parse("cpu:/n").unwrap()];
        let set = vec![p("cpu,cpuacct", "/o"), p("pids", "/o")];
        assert_eq!(
            moved(&p("cpu,cpuacct", "/o/a"), &only_cpu, &set).unwrap(),
            p("cpu,cpuacct", "/n/a")
        );
        assert_eq!(
            moved(&p("pids", "/o/a"), &only_cpu, &set).unwrap(),
            p("pids", "/o/a")
        );
        assert!(CgroupRoot::parse("cpu:../x").is_err());
        assert_eq!(CgroupMode::parse("soft"), Some(CgroupMode::Soft));
        assert_eq!(CgroupMode::parse("bogus"), None);
    }
}
