//! Seccomp: the filters of every thread, read with
//! PTRACE_SECCOMP_GET_FILTER (oldest first) and their LOG flag. Every
//! thread must carry the same filters as the leader (a restore installs
//! them once for all threads, with TSYNC); strict mode (1) is refused.

use crate::checks::refuse;
use crate::{At, Result, Stage};
use stasis_image::SeccompFilter;
use stasis_proc::Status;
use stasis_sys::{ptrace, Pid};

/// The process's filters (empty: none), or its refusal by name.
pub(crate) fn collect(pid: u32, status: &Status, tids: &[Pid]) -> Result<Vec<SeccompFilter>> {
    // Every thread is in the leader's mode: checks.rs refused any other.
    match status.seccomp {
        0 => return Ok(Vec::new()),
        2 => {}
        mode => {
            return Err(refuse(
                pid,
                format!("thread {pid} is in seccomp mode {mode} (strict): not restored yet"),
            ))
        }
    }
    let mut first: Option<Vec<(Vec<u8>, u64)>> = None;
    for &tid in tids {
        let filters = ptrace::seccomp_filters(tid).at(pid, Stage::Check)?;
        match &first {
            None => first = Some(filters),
            Some(f) if *f == filters => {}
            Some(_) => {
                return Err(refuse(
                    pid,
                    format!("thread {tid} has seccomp filters of its own (they differ from the leader's): not restored yet"),
                ))
            }
        }
    }
    Ok(first
        .unwrap_or_default()
        .into_iter()
        .map(|(prog, flags)| SeccompFilter { prog, flags })
        .collect())
}
