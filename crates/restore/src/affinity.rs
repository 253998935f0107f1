//! CPU affinity of each thread, set last: the restorer pins the process to
//! one CPU while it makes remote calls, then every thread gets its saved
//! binding, or, if it was not bound, the mask the restorer started with.

use crate::{At, RestoreError, Result, Stage};
use stasis_image::ThreadState;
use stasis_sys::{util, Pid};

/// Sets the saved CPUs of every bound thread of `pid`; `tids` follows
/// `threads`. A CPU that is not online here is refused by name.
pub(crate) fn apply(pid: u32, threads: &[ThreadState], tids: &[Pid]) -> Result<()> {
    for (t, &tid) in threads.iter().zip(tids) {
        if t.cpus.is_empty() {
            continue;
        }
        let cpus: Vec<usize> = t.cpus.iter().map(|&c| c as usize).collect();
        util::set_affinity(tid, &cpus).at(pid, Stage::Resume)?;
        let got = util::get_affinity(tid).at(pid, Stage::Resume)?;
        if got != cpus {
            return Err(RestoreError::Refused {
                pid,
                stage: Stage::Resume,
                what: format!(
                    "thread {} was bound to CPUs {:?}; only {got:?} of them can be used here",
                    t.tid, t.cpus
                ),
            });
        }
    }
    Ok(())
}
