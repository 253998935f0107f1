//! The tree's cgroup namespace: when the root has one of its own (every
//! process shares it, see checks.rs), the namespace's root cgroup in each
//! hierarchy. /proc/PID/cgroup shows paths relative to the reader's
//! cgroup namespace: read once by us and once from inside the tree's
//! namespace, the root's two paths differ by the namespace's root.

use crate::checks::refuse;
use crate::freeze::Frozen;
use crate::{At, Result, Stage};
use stasis_image::{CgroupNs, CgroupPath};
use std::os::unix::fs::MetadataExt;

fn ns_ino(task: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{task}/ns/cgroup"))
        .ok()
        .map(|m| m.ino())
}

type Lines = Vec<(String, String)>;

fn parse(pid: u32, text: &[u8]) -> Result<Lines> {
    stasis_proc::parse_cgroup(text).map_err(|e| refuse(pid, format!("/proc/{pid}/cgroup: {e}")))
}

/// `outside` with the suffix `inside` taken off: the namespace's root.
fn ns_root(outside: &str, inside: &str) -> Option<String> {
    if inside == "/" {
        return Some(outside.to_string());
    }
    let rest = outside.strip_suffix(inside)?;
    Some(if rest.is_empty() {
        "/".into()
    } else {
        rest.into()
    })
}

/// The namespace's roots, if the root's cgroup namespace is not ours.
/// A process in a cgroup above the namespace's root is refused.
pub(crate) fn collect(procs: &[Frozen]) -> Result<Option<CgroupNs>> {
    let Some(root) = procs.first().map(|f| f.pid) else {
        return Ok(None);
    };
    let r = root.0 as u32;
    if ns_ino(&r.to_string()) == ns_ino("self") {
        return Ok(None);
    }
    let outside = parse(r, &stasis_proc::read(r, "cgroup").at(r, Stage::Collect)?)?;
    let pids: Vec<u32> = procs.iter().map(|f| f.pid.0 as u32).collect();
    let texts = stasis_sys::nsenter::in_ns_of(root, "cgroup", libc::CLONE_NEWCGROUP, move || {
        pids.into_iter()
            .map(|p| (p, std::fs::read(format!("/proc/{p}/cgroup"))))
            .collect::<Vec<_>>()
    })
    .at(r, Stage::Collect)?;
    let mut inside_root = Lines::new();
    for (pid, text) in texts {
        let text = text.map_err(|e| refuse(pid, format!("/proc/{pid}/cgroup: {e}")))?;
        let lines = parse(pid, &text)?;
        if let Some((c, p)) = lines.iter().find(|(_, p)| p.starts_with("/..")) {
            return Err(refuse(
                pid,
                format!("cgroup {c}:{p}: a cgroup outside its cgroup namespace's root"),
            ));
        }
        if pid == r {
            inside_root = lines;
        }
    }
    let mut roots = Vec::new();
    for (controllers, out) in outside {
        let inside = inside_root.iter().find(|(c, _)| *c == controllers);
        let path = inside.and_then(|(_, i)| ns_root(&out, i)).ok_or_else(|| {
            refuse(
                r,
                format!("cgroup {controllers}:{out}: its cgroup namespace's root is not found"),
            )
        })?;
        roots.push(CgroupPath { controllers, path });
    }
    Ok(Some(CgroupNs { roots }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ns_root() {
        assert_eq!(super::ns_root("/a/b/c", "/c").as_deref(), Some("/a/b"));
        assert_eq!(super::ns_root("/a/b", "/").as_deref(), Some("/a/b"));
        assert_eq!(super::ns_root("/a", "/a").as_deref(), Some("/"));
        assert_eq!(super::ns_root("/a/b", "/x"), None);
    }
}
