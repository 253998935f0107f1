//! Threads: registers, XSAVE area, blocked mask, pending signals, rseq,
//! name and robust list from ptrace and /proc ([`collect_thread`]); the
//! sigaltstack and tid address only the thread can tell ([`query_thread`]).

use crate::signals::pending_signals;
use crate::{At, Result, Stage};
use stasis_image::{Rseq, SigAltStack, ThreadState, UserRegs};
use stasis_sys::ptrace::{self, Regs};
use stasis_sys::remote::{le_u32, le_u64, RemoteThread};
use stasis_sys::{util, Pid};

pub(crate) fn regs_to_image(r: &Regs) -> UserRegs {
    UserRegs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

/// Per-thread state visible through ptrace and /proc.
pub(crate) fn collect_thread(pid: u32, tid: Pid) -> Result<ThreadState> {
    let st = Stage::Collect;
    let regs = ptrace::get_regs(tid).at(pid, st)?;
    let xsave = ptrace::get_xstate(tid).at(pid, st)?;
    let sigmask = ptrace::get_sigmask(tid).at(pid, st)?;
    let pending = pending_signals(pid, tid, false)?;
    let rseq = ptrace::get_rseq(tid)
        .at(pid, st)?
        .map(|(addr, len, signature)| Rseq {
            addr,
            len,
            signature,
        });
    let (robust_list_head, robust_list_len) = util::get_robust_list(tid).at(pid, st)?;
    let cpus = crate::affinity::bound_cpus(pid, tid)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_default();
    Ok(ThreadState {
        tid: tid.0 as u32,
        comm,
        regs: regs_to_image(&regs),
        xsave,
        sigmask,
        sigaltstack: SigAltStack::default(),
        clear_child_tid: 0,
        rseq,
        pending,
        robust_list_head,
        robust_list_len,
        cpus,
        ns_tids: Vec::new(),
    })
}

/// Per-thread state only the thread can tell: (sigaltstack, clear_child_tid).
pub(crate) fn query_thread(r: &mut RemoteThread, pid: u32) -> Result<(SigAltStack, u64)> {
    let st = Stage::Query;
    let (scratch, _) = r.scratch();
    r.call(libc::SYS_sigaltstack, &[0, scratch], "sigaltstack")
        .at(pid, st)?;
    let b = r.read_scratch(0, 24).at(pid, st)?;
    let altstack = SigAltStack {
        sp: le_u64(&b, 0),
        flags: le_u32(&b, 8),
        size: le_u64(&b, 16),
    };
    r.call(
        libc::SYS_prctl,
        &[libc::PR_GET_TID_ADDRESS as u64, scratch],
        "prctl(PR_GET_TID_ADDRESS)",
    )
    .at(pid, st)?;
    let clear_child_tid = le_u64(&r.read_scratch(0, 8).at(pid, st)?, 0);
    Ok((altstack, clear_child_tid))
}
