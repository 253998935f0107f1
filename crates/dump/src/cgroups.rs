//! The cgroups of the tree: each process's membership in every hierarchy
//! (/proc/PID/cgroup), and the properties of each cgroup it was in and of
//! their ancestors, read from the dumper's cgroup mounts (see
//! `stasis_image::cgroups`). A thread in another cgroup than its process
//! (v1 `tasks`, v2 threaded cgroups) is refused by name.

use crate::checks::refuse;
use crate::freeze::Frozen;
use crate::{At, Result, Stage};
use stasis_image::cgroups::PROPERTIES;
use stasis_image::{CgroupDir, CgroupPath, CgroupSet, Cgroups};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

fn memberships(pid: u32, task: &str) -> Result<Vec<CgroupPath>> {
    let text = stasis_proc::read(pid, task).at(pid, Stage::Collect)?;
    let lines = stasis_proc::parse_cgroup(&text)
        .map_err(|e| refuse(pid, format!("/proc/{pid}/{task}: {e}")))?;
    Ok(lines
        .into_iter()
        .map(|(controllers, path)| CgroupPath { controllers, path })
        .collect())
}

/// Every process's cgroups; `image_pids[i]` is the image's PID of
/// `procs[i]` (they differ in a PID namespace).
pub(crate) fn collect(procs: &[Frozen], image_pids: &[u32]) -> Result<Cgroups> {
    let mut sets: Vec<CgroupSet> = Vec::new();
    let mut members = Vec::with_capacity(procs.len());
    for (f, &image_pid) in procs.iter().zip(image_pids) {
        let pid = f.pid.0 as u32;
        let own = memberships(pid, "cgroup")?;
        for t in f.tids.iter().filter(|t| **t != f.pid) {
            let theirs = memberships(pid, &format!("task/{}/cgroup", t.0))?;
            if let Some(p) = theirs.iter().find(|p| !own.contains(p)) {
                return Err(refuse(
                    pid,
                    format!(
                        "thread {} is in cgroup {}:{} of its own; per-thread cgroups are not restored yet",
                        t.0, p.controllers, p.path
                    ),
                ));
            }
        }
        let idx = match sets.iter().position(|s| s.paths == own) {
            Some(i) => i,
            None => {
                sets.push(CgroupSet { paths: own });
                sets.len() - 1
            }
        };
        members.push((image_pid, idx as u32));
    }
    let wanted: BTreeSet<(usize, String, String)> = sets
        .iter()
        .flat_map(|s| s.paths.iter().flat_map(CgroupPath::lineage))
        .map(|p| (p.path.matches('/').count(), p.controllers, p.path))
        .collect();
    let root = procs.first().map(|f| f.pid.0 as u32).unwrap_or(0);
    let mounts = stasis_proc::read_mountinfo(std::process::id()).at(root, Stage::Collect)?;
    let dirs = wanted
        .into_iter()
        .filter_map(|(_, controllers, path)| {
            let at = CgroupPath { controllers, path };
            let dir = stasis_proc::cgroup_dir(&mounts, &at.controllers, &at.path)?;
            Some(read_dir(at, &dir))
        })
        .collect();
    Ok(Cgroups {
        sets,
        members,
        dirs,
    })
}

/// A cgroup's owner, mode and the properties it has. Files that do not
/// exist (controller absent) or cannot be read are left out.
fn read_dir(at: CgroupPath, dir: &std::path::Path) -> CgroupDir {
    let meta = std::fs::metadata(dir).ok();
    let props = PROPERTIES
        .iter()
        .filter_map(|name| {
            let v = std::fs::read_to_string(dir.join(name)).ok()?;
            Some(((*name).to_owned(), v.trim_end_matches('\n').to_owned()))
        })
        .collect();
    CgroupDir {
        at,
        mode: meta.as_ref().map_or(0o755, |m| m.mode() & 0o7777),
        uid: meta.as_ref().map_or(0, MetadataExt::uid),
        gid: meta.as_ref().map_or(0, MetadataExt::gid),
        props,
    }
}
