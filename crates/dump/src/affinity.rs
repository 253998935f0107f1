//! CPU affinity (sched_getaffinity), per thread: saved only when a thread
//! was bound to fewer CPUs than were online, so an unbound process stays
//! unbound on a machine with other CPUs.

use crate::{At, Result, Stage};
use stasis_sys::{util, Pid};

/// The CPUs online on this machine (/sys/devices/system/cpu/online).
fn online() -> Option<Vec<usize>> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let mut out = Vec::new();
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
        out.extend(a..=b);
    }
    Some(out)
}

/// The CPUs `tid` is bound to, or empty when it may run on every online CPU.
pub(crate) fn bound_cpus(pid: u32, tid: Pid) -> Result<Vec<u32>> {
    let cpus = util::get_affinity(tid).at(pid, Stage::Collect)?;
    let all = online().unwrap_or_default();
    if all.iter().all(|c| cpus.contains(c)) {
        return Ok(Vec::new());
    }
    Ok(cpus.into_iter().map(|c| c as u32).collect())
}
