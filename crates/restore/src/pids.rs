//! PIDs of the restored tree as the restorer sees them (equal to the
//! image's, unless the tree is in a new PID namespace).

use crate::{RestoreError, Result, Stage};
use stasis_image::ProcessImage;
use stasis_sys::spawn::TreePlan;
use stasis_sys::Pid;
use std::collections::HashMap;

/// The innermost PID of a task (last NSpid entry), from our /proc.
fn inner_pid(host: u32, tid: u32) -> Option<u32> {
    let text = stasis_proc::read(host, &format!("task/{tid}/status")).ok()?;
    stasis_proc::parse_status(&text)
        .ok()?
        .ns_pid
        .last()
        .copied()
}

/// Our PID of thread `inner` of the process whose leader we know as `leader`.
pub(crate) fn host_tid(leader: Pid, inner: u32) -> Option<Pid> {
    let l = leader.0 as u32;
    // Outside a new PID namespace the numbers are equal: one status read,
    // not one per thread of the process (creating n threads read n²/2).
    if inner_pid(l, inner) == Some(inner) {
        return Some(Pid(inner as i32));
    }
    stasis_proc::list_tasks(l)
        .ok()?
        .into_iter()
        .find(|&t| inner_pid(l, t) == Some(inner))
        .map(|t| Pid(t as i32))
}

/// The level of the tree's PID namespace in our /proc's NSpid: that of
/// its root (0 when unknown).
pub(crate) fn tree_level(root: Option<Pid>) -> usize {
    root.and_then(|r| stasis_proc::read_status(r.0 as u32).ok())
        .map_or(0, |s| s.ns_pid.len().saturating_sub(1))
}

/// Maps the image's PIDs of the restored tree to ours, walking the tree
/// from its root. Outside a new PID namespace they are equal; inside, the
/// image's are those of the tree's namespace (also for processes in
/// namespaces nested below it).
pub(crate) fn host_pids(root: Pid, pid_ns: bool) -> stasis_sys::Result<HashMap<u32, Pid>> {
    let level = tree_level(Some(root));
    let mut map = HashMap::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(h) = queue.pop_front() {
        let hu = h.0 as u32;
        let id = if pid_ns {
            stasis_proc::read_status(hu)
                .ok()
                .and_then(|s| s.ns_pid.get(level).copied())
                .unwrap_or(hu)
        } else {
            hu
        };
        map.insert(id, h);
        for t in stasis_proc::list_tasks(hu).unwrap_or_default() {
            for c in stasis_proc::read_children(hu, t).unwrap_or_default() {
                queue.push_back(Pid(c as i32));
            }
        }
    }
    Ok(map)
}

/// Process `target` of the tree (the image's PID) as `viewer` sees it:
/// the same PID, or for a viewer in a nested PID namespace the target's
/// PID at that level (the target must be in the same namespace).
pub(crate) fn seen_by(procs: &[ProcessImage], viewer: &ProcessImage, target: u32) -> Result<u32> {
    if viewer.ns_pids.is_empty() {
        return Ok(target);
    }
    procs
        .iter()
        .find(|p| p.pid == target && p.ns_pids.len() == viewer.ns_pids.len())
        .and_then(|p| p.ns_pids.last().copied())
        .ok_or_else(|| RestoreError::Refused {
            pid: viewer.pid,
            stage: Stage::Fork,
            what: format!("process {target} is not in its nested PID namespace"),
        })
}

/// Orders each process's children for the fork: those in its own PID
/// namespace first, then the init of a nested namespace, then the other
/// members of that namespace. A process with members of a nested
/// namespace it did not make the init of (or with several such inits)
/// is refused.
pub(crate) fn order_nested(procs: &[ProcessImage], plan: &mut TreePlan) -> Result<()> {
    let depth = |p: &stasis_sys::spawn::ProcPlan| p.nested_pids.len().max(1);
    for i in 0..plan.procs.len() {
        let d = depth(&plan.procs[i]);
        let mut kids = std::mem::take(&mut plan.procs[i].children);
        let rank = |c: usize| {
            let cp = &plan.procs[c];
            match (depth(cp) > d, cp.nested_init) {
                (false, _) => 0,
                (true, true) => 1,
                (true, false) => 2,
            }
        };
        kids.sort_by_key(|&c| rank(c));
        let inits = kids.iter().filter(|&&c| rank(c) == 1).count();
        let members = kids.iter().any(|&c| rank(c) == 2);
        let pfc = plan.procs[i].pid_for_children_nested;
        if (members || pfc) && inits != 1 {
            let pid = procs.get(i).map_or(plan.procs[i].pid as u32, |p| p.pid);
            return Err(RestoreError::Refused {
                pid,
                stage: Stage::Fork,
                what: format!(
                    "children in a nested PID namespace whose init is not its only nested child ({inits} inits)"
                ),
            });
        }
        plan.procs[i].children = kids;
    }
    Ok(())
}
