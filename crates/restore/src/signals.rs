//! Signal state of a process: dispositions, signals to drain, pending
//! signals (per-thread pending signals are set in threads.rs).

use crate::{At, Result, Stage};
use stasis_image::ProcessImage;
use stasis_sys::remote::{BatchCall, RemoteThread};

/// Signal dispositions: the saved ones, and SIG_DFL for whatever the
/// restorer's own runtime had installed (`inherited`: SigCgt | SigIgn of
/// the restorer at the fork, which the process has still).
pub(crate) fn dispositions(r: &mut RemoteThread, img: &ProcessImage, inherited: u64) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    for signo in 1..=64u32 {
        if signo == libc::SIGKILL as u32 || signo == libc::SIGSTOP as u32 {
            continue;
        }
        let saved = img.sigactions.iter().find(|a| a.signo == signo);
        let (h, f, rs, m) = match saved {
            Some(a) => (a.handler, a.flags, a.restorer, a.mask),
            None if inherited & (1u64 << (signo - 1)) != 0 => (0, 0, 0, 0),
            None => continue,
        };
        let mut b = Vec::with_capacity(32);
        for w in [h, f, rs, m] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let at = r.stage(&b).at(pid, st)?;
        r.queue(
            libc::SYS_rt_sigaction,
            &[u64::from(signo), at, 0, 8],
            format!("rt_sigaction({signo})"),
        )
        .at(pid, st)?;
    }
    // Flushed with the first call of `drain`.
    Ok(())
}

/// Signals that arrived while the tree was built (SIGCHLD from a zombie
/// child, say) are not the process's: drained, all being blocked. The
/// first wait runs in one round trip with the calls queued before it.
pub(crate) fn drain(r: &mut RemoteThread, pid: u32) -> Result<()> {
    let st = Stage::Attributes;
    let all = r.write_scratch(0, &(!0u64).to_le_bytes()).at(pid, st)?;
    let zero = r.write_scratch(16, &[0u8; 16]).at(pid, st)?;
    let wait = BatchCall::new(libc::SYS_rt_sigtimedwait, &[all, 0, zero, 8]);
    for _ in 0..128 {
        let got = r.queries(&[wait]).at(pid, st)?;
        if got.first().is_none_or(|&g| g < 0) {
            break;
        }
    }
    Ok(())
}

/// Pending signals: queued by the process to itself (only a process may
/// queue kernel-style siginfo to itself); all signals are blocked here.
pub(crate) fn queue_pending(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    for p in &img.shared_pending {
        let at = r.write_scratch(0, &p.info).at(pid, st)?;
        r.call(
            libc::SYS_rt_sigqueueinfo,
            &[u64::from(pid), u64::from(p.signo), at],
            "rt_sigqueueinfo",
        )
        .at(pid, st)?;
    }
    Ok(())
}
