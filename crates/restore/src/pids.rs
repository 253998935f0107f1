//! PIDs of the restored tree as the restorer sees them (equal to the
//! image's, unless the tree is in a new PID namespace).

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

/// Maps the image's PIDs of the restored tree to ours, walking the tree
/// from its root. Outside a new PID namespace they are equal.
pub(crate) fn host_pids(root: Pid, pid_ns: bool) -> stasis_sys::Result<HashMap<u32, Pid>> {
    let mut map = HashMap::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(h) = queue.pop_front() {
        let hu = h.0 as u32;
        let inner = if pid_ns {
            inner_pid(hu, hu).unwrap_or(hu)
        } else {
            hu
        };
        map.insert(inner, h);
        for t in stasis_proc::list_tasks(hu).unwrap_or_default() {
            for c in stasis_proc::read_children(hu, t).unwrap_or_default() {
                queue.push_back(Pid(c as i32));
            }
        }
    }
    Ok(map)
}
