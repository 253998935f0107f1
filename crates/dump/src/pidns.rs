//! PID namespaces: a tree whose root is the init of its own PID namespace
//! is saved with the namespace's PIDs.

use crate::collect::Collected;
use crate::{At, DumpError, Result, Stage};

/// The innermost PID of a task, from /proc/PID/task/TID/status NSpid.
pub(crate) fn inner_id(host: u32, tid: u32, stage: Stage) -> Result<(u32, stasis_proc::Status)> {
    let text = stasis_proc::read(host, &format!("task/{tid}/status")).at(host, stage)?;
    let st = stasis_proc::parse_status(&text).map_err(|e| DumpError::Unsupported {
        pid: host,
        stage,
        what: format!("status of task {tid}: {e}"),
    })?;
    let inner = st.ns_pid.last().copied().unwrap_or(tid);
    Ok((inner, st))
}

/// A tree whose root is the init of its own PID namespace is saved with
/// the namespace's PIDs (a restore recreates the namespace, so the host
/// PIDs are free to differ): rewrites pid, ppid, pgid, sid and tids.
/// Returns whether the tree is such a namespace.
pub(crate) fn translate_to_pid_ns(
    procs: &mut [Collected],
    zombies: &mut [crate::freeze::ZombieInfo],
) -> Result<bool> {
    let Some(root) = procs.first() else {
        return Ok(false);
    };
    let root_host = root.host_pid;
    let (root_inner, root_status) = inner_id(root_host, root_host, Stage::Check)?;
    if root_status.ns_pid.len() < 2 {
        return Ok(false);
    }
    if root_inner != 1 {
        return Err(DumpError::Unsupported {
            pid: root_host,
            stage: Stage::Check,
            what: format!(
                "a process inside a PID namespace (PID {root_inner} there) that is not its init; dump the namespace's init"
            ),
        });
    }
    let mut map = std::collections::HashMap::new();
    for c in procs.iter() {
        let (inner, st) = inner_id(c.host_pid, c.host_pid, Stage::Check)?;
        if st.ns_pid.len() != root_status.ns_pid.len() {
            return Err(DumpError::Unsupported {
                pid: c.host_pid,
                stage: Stage::Check,
                what: "a process in a nested PID namespace".into(),
            });
        }
        map.insert(c.host_pid, inner);
    }
    for z in zombies.iter() {
        let (inner, _) = inner_id(z.pid, z.pid, Stage::Check)?;
        map.insert(z.pid, inner);
    }
    for c in procs.iter_mut() {
        let host = c.host_pid;
        let (_, st) = inner_id(host, host, Stage::Check)?;
        let img = &mut c.image;
        img.pid = map[&host];
        img.ppid = map.get(&img.ppid).copied().unwrap_or(0);
        img.pgid = st.ns_pgid.last().copied().unwrap_or(0);
        img.sid = st.ns_sid.last().copied().unwrap_or(0);
        for v in &mut img.mm.vmas {
            if v.cow_owner != 0 {
                v.cow_owner = map.get(&v.cow_owner).copied().unwrap_or(0);
            }
        }
        for t in &mut img.posix_timers {
            if t.notify_tid != 0 {
                t.notify_tid = inner_id(host, t.notify_tid, Stage::Check)?.0;
            }
        }
        for t in &mut img.threads {
            t.tid = inner_id(host, t.tid, Stage::Check)?.0;
        }
    }
    for z in zombies.iter_mut() {
        let (inner, st) = inner_id(z.pid, z.pid, Stage::Check)?;
        z.ppid = map.get(&z.ppid).copied().unwrap_or(0);
        z.pgid = st.ns_pgid.last().copied().unwrap_or(0);
        z.sid = st.ns_sid.last().copied().unwrap_or(0);
        z.pid = inner;
    }
    Ok(true)
}
