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
    let mode_of = |tid: Pid| -> Result<u32> {
        if tid.0 as u32 == pid {
            return Ok(status.seccomp);
        }
        let path = format!("task/{}/status", tid.0);
        let text = stasis_proc::read(pid, &path).at(pid, Stage::Check)?;
        let s = stasis_proc::parse_status(&text)
            .map_err(|e| refuse(pid, format!("/proc/{pid}/{path}: {e}")))?;
        Ok(s.seccomp)
    };
    let mut first: Option<Vec<(Vec<u8>, u64)>> = None;
    for &tid in tids {
        let filters = match mode_of(tid)? {
            0 => Vec::new(),
            2 => ptrace::seccomp_filters(tid).at(pid, Stage::Check)?,
            mode => {
                return Err(refuse(
                    pid,
                    format!("thread {tid} is in seccomp mode {mode} (strict): not restored yet"),
                ))
            }
        };
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
