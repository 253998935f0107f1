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

/// The PID of a task at namespace level `lv` (0: the outermost our /proc
/// shows), from its status NSpid.
fn level_id(host: u32, tid: u32, lv: usize, stage: Stage) -> Result<(u32, stasis_proc::Status)> {
    let (_, st) = inner_id(host, tid, stage)?;
    let id = st.ns_pid.get(lv).copied().unwrap_or(tid);
    Ok((id, st))
}

/// A tree whose root is the init of its own PID namespace is saved with
/// the namespace's PIDs (a restore recreates the namespace, so the host
/// PIDs are free to differ): rewrites pid, ppid, pgid, sid and tids.
/// Processes in PID namespaces nested below the root's keep the root
/// namespace's PIDs as their identity and every deeper level's in
/// `ns_pids`. Returns whether the tree is such a namespace.
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
    // The root namespace's level in NSpid, as our /proc shows it.
    let lv = root_status.ns_pid.len() - 1;
    let mut map = std::collections::HashMap::new();
    for c in procs.iter() {
        let (id, st) = level_id(c.host_pid, c.host_pid, lv, Stage::Check)?;
        if st.ns_pid.len() < root_status.ns_pid.len() {
            return Err(DumpError::Unsupported {
                pid: c.host_pid,
                stage: Stage::Check,
                what: "a process outside its root's PID namespace".into(),
            });
        }
        map.insert(c.host_pid, id);
    }
    for z in zombies.iter() {
        let (id, st) = level_id(z.pid, z.pid, lv, Stage::Check)?;
        if st.ns_pid.len() != root_status.ns_pid.len() {
            return Err(DumpError::Unsupported {
                pid: z.pid,
                stage: Stage::Check,
                what: "a zombie in a nested PID namespace: not restored yet".into(),
            });
        }
        map.insert(z.pid, id);
    }
    for c in procs.iter_mut() {
        let host = c.host_pid;
        let (_, st) = level_id(host, host, lv, Stage::Check)?;
        let img = &mut c.image;
        img.pid = map[&host];
        img.ppid = map.get(&img.ppid).copied().unwrap_or(0);
        img.pgid = st.ns_pgid.get(lv).copied().unwrap_or(0);
        img.sid = st.ns_sid.get(lv).copied().unwrap_or(0);
        if st.ns_pid.len() > lv + 1 {
            img.ns_pids = st.ns_pid[lv..].to_vec();
        }
        img.pid_for_children_nested = pid_for_children_nested(host);
        for v in &mut img.mm.vmas {
            if v.cow_owner != 0 {
                v.cow_owner = map.get(&v.cow_owner).copied().unwrap_or(0);
            }
        }
        for t in &mut img.posix_timers {
            if t.notify_tid != 0 {
                t.notify_tid = level_id(host, t.notify_tid, lv, Stage::Check)?.0;
            }
        }
        let nested = !img.ns_pids.is_empty();
        for t in &mut img.threads {
            let (id, ts) = level_id(host, t.tid, lv, Stage::Check)?;
            t.tid = id;
            if nested {
                t.ns_tids = ts.ns_pid.get(lv..).unwrap_or_default().to_vec();
            }
        }
    }
    for z in zombies.iter_mut() {
        let (id, st) = level_id(z.pid, z.pid, lv, Stage::Check)?;
        z.ppid = map.get(&z.ppid).copied().unwrap_or(0);
        z.pgid = st.ns_pgid.get(lv).copied().unwrap_or(0);
        z.sid = st.ns_sid.get(lv).copied().unwrap_or(0);
        z.pid = id;
    }
    Ok(true)
}

/// Whether the process's pid_for_children differs from its own PID
/// namespace (checks.rs made sure it is then a child's nested one).
fn pid_for_children_nested(host: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |ns: &str| {
        std::fs::metadata(format!("/proc/{host}/ns/{ns}"))
            .ok()
            .map(|m| m.ino())
    };
    ino("pid_for_children").is_some_and(|c| Some(c) != ino("pid"))
}

/// What a process in a nested PID namespace may not have yet: anything
/// that names a PID as the process sees it, other than its own.
/// Runs once the descriptor owners are collected.
pub(crate) fn refuse_nested(procs: &[Collected]) -> Result<()> {
    for c in procs.iter().filter(|c| !c.image.ns_pids.is_empty()) {
        refuse_nested_one(c.host_pid, &c.image)?;
    }
    Ok(())
}

fn refuse_nested_one(host: u32, img: &stasis_image::ProcessImage) -> Result<()> {
    use stasis_image::FdKind;
    let what = if img.posix_timers.iter().any(|t| t.notify_tid != 0) {
        Some("a POSIX timer signalling a thread".to_string())
    } else if !img.fd_owners.is_empty() {
        Some("a descriptor with a signal owner".to_string())
    } else {
        img.files.iter().find_map(|f| match &f.kind {
            FdKind::Pidfd { .. } | FdKind::ProcFile { .. } => {
                Some(format!("descriptor {} naming a process", f.fd))
            }
            _ => None,
        })
    };
    match what {
        Some(w) => Err(DumpError::Unsupported {
            pid: host,
            stage: Stage::Check,
            what: format!("a process in a nested PID namespace with {w}: not restored yet"),
        }),
        None => Ok(()),
    }
}
