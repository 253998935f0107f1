//! The cgroups the tree's processes were in, and the properties of those
//! cgroups (criu's cgroup image, in our own shape).
//!
//! A process belongs to one cgroup in each hierarchy: the cgroup v2
//! hierarchy (controllers `""`) and each mounted v1 hierarchy, named by
//! its controllers as /proc/PID/cgroup prints them (`cpu,cpuacct`,
//! `name=systemd`). Processes with the same memberships share one set.
//! Properties are saved for each cgroup a process was in and for its
//! ancestors (not the hierarchy's root), but only for the files listed in
//! [`PROPERTIES`]: a restore writes nothing else.

use serde::{Deserialize, Serialize};

/// The property files a restore may write, in the order it writes them
/// (cpuset's CPUs and memory nodes first: a v1 cpuset cgroup takes no task
/// until both are set; the CFS period before the quota it bounds;
/// `cgroup.subtree_control` before any child is made).
pub const PROPERTIES: &[&str] = &[
    "cpuset.cpus",
    "cpuset.mems",
    "cpuset.cpu_exclusive",
    "cpuset.mem_exclusive",
    "cgroup.subtree_control",
    "cgroup.max.descendants",
    "cgroup.max.depth",
    "cpu.shares",
    "cpu.cfs_period_us",
    "cpu.cfs_quota_us",
    "cpu.weight",
    "cpu.max",
    "cpu.idle",
    "memory.limit_in_bytes",
    "memory.soft_limit_in_bytes",
    "memory.swappiness",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "memory.swap.max",
    "memory.oom.group",
    "pids.max",
    "blkio.weight",
    "io.weight",
    "net_cls.classid",
    "devices.list",
];

/// Longest cgroup path or property value kept.
pub const MAX_CGROUP_TEXT: usize = 4096;
/// Most cgroups (sets, dirs) an image may describe.
pub const MAX_CGROUPS: usize = 65536;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroups {
    /// Distinct membership sets.
    pub sets: Vec<CgroupSet>,
    /// (pid, index into `sets`) for every process of the tree.
    pub members: Vec<(u32, u32)>,
    /// Saved cgroups with their properties, parents before children.
    pub dirs: Vec<CgroupDir>,
}

/// One membership per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSet {
    pub paths: Vec<CgroupPath>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CgroupPath {
    /// The hierarchy: `""` for cgroup v2, else the v1 controllers
    /// (`cpu,cpuacct`, `name=systemd`).
    pub controllers: String,
    /// The cgroup, from the hierarchy's root (`/`, `/a/b`).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDir {
    pub at: CgroupPath,
    /// Mode bits (0o7777) and owner of the directory.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// (file, value) for the files of [`PROPERTIES`] it has, in that order.
    /// `devices.list` (v1) is the allow list: written as a deny of all,
    /// then one allow per line.
    pub props: Vec<(String, String)>,
}

impl CgroupPath {
    /// Checks the names a restore will turn into paths: the controllers
    /// plain, the path absolute with no `.`/`..` component and no NUL.
    pub fn check(&self) -> Result<(), String> {
        let c = &self.controllers;
        if c.len() > 256
            || !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_,=.-".contains(ch))
        {
            return Err(format!("cgroup hierarchy {c:?}: not a controller list"));
        }
        let p = &self.path;
        if p.len() > MAX_CGROUP_TEXT
            || !p.starts_with('/')
            || p.contains('\0')
            || p.split('/').any(|s| s == "." || s == "..")
        {
            return Err(format!("cgroup path {p:?}: not an absolute cgroup path"));
        }
        Ok(())
    }

    /// Its ancestors below the root, outermost first, then itself
    /// (`/a/b` → `/a`, `/a/b`; `/` → nothing).
    pub fn lineage(&self) -> Vec<CgroupPath> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for part in self.path.split('/').filter(|s| !s.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            out.push(CgroupPath {
                controllers: self.controllers.clone(),
                path: cur.clone(),
            });
        }
        out
    }
}

impl Cgroups {
    /// Checks counts, names and references; property files only from
    /// [`PROPERTIES`].
    pub fn check(&self) -> Result<(), String> {
        if self.sets.len() > MAX_CGROUPS
            || self.dirs.len() > MAX_CGROUPS
            || self.members.len() > MAX_CGROUPS
        {
            return Err("cgroups: too many entries".into());
        }
        for s in &self.sets {
            for p in &s.paths {
                p.check()?;
            }
        }
        for &(pid, set) in &self.members {
            if set as usize >= self.sets.len() {
                return Err(format!(
                    "cgroups: process {pid} names set {set}, not in the image"
                ));
            }
        }
        for d in &self.dirs {
            d.at.check()?;
            for (file, value) in &d.props {
                if !PROPERTIES.contains(&file.as_str()) {
                    return Err(format!(
                        "cgroup {}: property {file:?} is not one stasis restores",
                        d.at.path
                    ));
                }
                if value.len() > MAX_CGROUP_TEXT || value.contains('\0') {
                    return Err(format!(
                        "cgroup {}: property {file}: value too long or holds a NUL",
                        d.at.path
                    ));
                }
            }
        }
        Ok(())
    }

    /// The membership set of process `pid`, if the image has one.
    pub fn set_of(&self, pid: u32) -> Option<&CgroupSet> {
        self.members
            .iter()
            .find(|(p, _)| *p == pid)
            .and_then(|&(_, s)| self.sets.get(s as usize))
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
    fn paths_checked_and_lineage() {
        assert!(p("", "/a/b").check().is_ok());
        assert!(p("cpu,cpuacct", "/").check().is_ok());
        assert!(p("name=systemd", "/x").check().is_ok());
        assert!(p("", "a").check().is_err());
        assert!(p("", "/a/../b").check().is_err());
        assert!(p("", "/a/./b").check().is_err());
        assert!(p("cpu/..", "/").check().is_err());
        let l = p("pids", "/a/b").lineage();
        assert_eq!(l, vec![p("pids", "/a"), p("pids", "/a/b")]);
        assert!(p("pids", "/").lineage().is_empty());
    }

    #[test]
    fn unknown_property_refused() {
        let mut c = Cgroups {
            sets: vec![CgroupSet {
                paths: vec![p("pids", "/a")],
            }],
            members: vec![(7, 0)],
            dirs: vec![CgroupDir {
                at: p("pids", "/a"),
                mode: 0o755,
                uid: 0,
                gid: 0,
                props: vec![("pids.max".into(), "5".into())],
            }],
        };
        assert!(c.check().is_ok());
        assert_eq!(c.set_of(7).map(|s| s.paths.len()), Some(1));
        c.dirs[0]
            .props
            .push(("release_agent".into(), "/bin/sh".into()));
        assert!(c.check().is_err());
        c.dirs[0].props.pop();
        c.members.push((8, 3));
        assert!(c.check().is_err());
    }
}
