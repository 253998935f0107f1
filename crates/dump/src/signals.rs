//! Signal state: dispositions (queried by the process itself) and pending
//! signals (PTRACE_PEEKSIGINFO, per process and per thread).

use crate::{At, Result, Stage};
use stasis_image::{PendingSignal, SigAction};
use stasis_sys::ptrace;
use stasis_sys::remote::{le_u32, le_u64, RemoteThread};
use stasis_sys::Pid;

pub(crate) fn pending_signals(pid: u32, tid: Pid, shared: bool) -> Result<Vec<PendingSignal>> {
    Ok(ptrace::peek_siginfo(tid, shared)
        .at(pid, Stage::Collect)?
        .into_iter()
        .map(|info| PendingSignal {
            signo: le_u32(&info, 0),
            info: info.to_vec(),
        })
        .collect())
}

/// The handlers of every signal not at SIG_DFL (`handled`: SigCgt|SigIgn
/// from status), asked with rt_sigaction by the process itself.
pub(crate) fn query_sigactions(
    r: &mut RemoteThread,
    pid: u32,
    handled: u64,
) -> Result<Vec<SigAction>> {
    let st = Stage::Query;
    let (scratch, _) = r.scratch();
    let mut sigactions = Vec::new();
    for signo in 1..=64u32 {
        if signo == libc::SIGKILL as u32 || signo == libc::SIGSTOP as u32 {
            continue;
        }
        if handled & (1u64 << (signo - 1)) == 0 {
            continue; // SIG_DFL
        }
        r.call(
            libc::SYS_rt_sigaction,
            &[u64::from(signo), 0, scratch, 8],
            "rt_sigaction",
        )
        .at(pid, st)?;
        let b = r.read_scratch(0, 32).at(pid, st)?;
        sigactions.push(SigAction {
            signo,
            handler: le_u64(&b, 0),
            flags: le_u64(&b, 8),
            restorer: le_u64(&b, 16),
            mask: le_u64(&b, 24),
        });
    }
    Ok(sigactions)
}
