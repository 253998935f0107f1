//! Files and directories under `/proc/N` (on procfs) held open: recorded
//! by path, the PID they name and offset. The restored process opens them
//! again itself, once the whole tree exists with its PIDs, in its own
//! /proc, so they name the restored processes. [`finish`] checks, once the
//! PIDs are final, that each (and a working directory under /proc) names
//! a process, thread or zombie of the tree: after a restore, a PID outside
//! it may be anyone's.

use super::{Fd, Proc, Tasks};
use crate::{At, DumpError, Result, Stage};
use stasis_image::FdKind;
use stasis_sys::fileops::{fs_type, PROC_SUPER_MAGIC};

/// `/proc/N...`: N, and the TID after `/task/` if any.
fn proc_pid(path: &str) -> Option<(u32, Option<u32>)> {
    let rest = path.strip_prefix("/proc/")?;
    let (n, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let pid = n.parse::<u32>().ok()?;
    let tid = tail
        .strip_prefix("task/")
        .and_then(|t| t.split('/').next())
        .and_then(|t| t.parse().ok());
    Some((pid, tid))
}

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let Some((target, _)) = proc_pid(d.link) else {
        return Ok(None);
    };
    // The link may name /proc/N of another file system mounted there.
    let fs = fs_type(&format!("/proc/{}/fd/{}", d.pid, d.fd)).at(d.pid, Stage::Check)?;
    if fs != PROC_SUPER_MAGIC {
        return Ok(None);
    }
    Ok(Some(FdKind::ProcFile {
        path: d.link.to_string(),
        pid: target,
        flags: d.flags(),
        pos: d.info.pos,
    }))
}

/// Once the tree's PIDs are final: every /proc descriptor and /proc
/// working directory names a process (or zombie) and thread of the tree;
/// one of a non-leader thread of another process, a working directory
/// under a thread's entry (it is entered before any thread is made again)
/// and a descriptor shared with another process are refused by name.
pub(super) fn finish(procs: &mut [Proc<'_>], tasks: &Tasks, _pid_ns: bool) -> Result<()> {
    let st = Stage::Check;
    for p in procs.iter() {
        let (host, me) = (p.host, p.image.pid);
        let refuse = |what: String| DumpError::Unsupported {
            pid: host,
            stage: st,
            what,
        };
        for e in &p.image.files {
            let FdKind::ProcFile { path, pid, .. } = &e.kind else {
                continue;
            };
            check_path(tasks, path, *pid)
                .map_err(|why| refuse(format!("fd {} ({path}): {why}", e.fd)))?;
            let tid = proc_pid(path).and_then(|p| p.1).unwrap_or(*pid);
            if tasks.thread_of_another(me, *pid) || (*pid != me && tid != *pid) {
                return Err(refuse(format!(
                    "fd {} ({path}): a /proc entry of a thread of another process (not supported yet)",
                    e.fd
                )));
            }
        }
        let cwd = &p.image.cwd;
        let Some((n, tid)) = proc_pid(cwd) else {
            continue;
        };
        if fs_type(&format!("/proc/{host}/cwd")).at(host, st)? != PROC_SUPER_MAGIC {
            continue;
        }
        let tid = tid.unwrap_or(n);
        let thread = tid != n || !(tasks.is_process(n) || tasks.is_zombie(n));
        check_path(tasks, cwd, n)
            .and_then(|()| {
                if thread {
                    // Entered before any thread is made again.
                    Err("a /proc entry of a thread (not supported yet)".to_string())
                } else {
                    Ok(())
                }
            })
            .map_err(|why| refuse(format!("working directory {cwd}: {why}")))?;
    }
    super::refuse_shared(procs, "a /proc descriptor", |k| {
        matches!(k, FdKind::ProcFile { .. })
    })
}

/// `/proc/PID[/task/TID]...` names a process (or zombie) and thread of the tree.
fn check_path(tasks: &Tasks, path: &str, pid: u32) -> std::result::Result<(), String> {
    let tid = proc_pid(path).and_then(|p| p.1);
    let in_tree = match tasks.tids(pid) {
        Some(tids) => tid.is_none_or(|t| tids.contains(&t)),
        // /proc/TID of a thread works too (a hidden entry).
        None => tasks.is_zombie(pid) || (tasks.is_task(pid) && tid.is_none_or(|t| t == pid)),
    };
    if in_tree {
        Ok(())
    } else {
        Err(format!(
            "a /proc entry of process {pid}{}, which is outside the dumped tree (not supported)",
            tid.map(|t| format!(" thread {t}")).unwrap_or_default()
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_paths() {
        assert_eq!(super::proc_pid("/proc/12/status"), Some((12, None)));
        assert_eq!(super::proc_pid("/proc/12"), Some((12, None)));
        assert_eq!(
            super::proc_pid("/proc/12/task/13/stat"),
            Some((12, Some(13)))
        );
        assert_eq!(super::proc_pid("/proc/meminfo"), None);
        assert_eq!(super::proc_pid("/procx/1"), None);
    }
}
