//! Threads: created by the leader with their old TIDs, each then sets what
//! is its own (name, pending signals, sigaltstack, tid address, robust
//! list, rseq); registers come last (registers stage).

use crate::guard::TreeGuard;
use crate::memory::STUB_LEN;
use crate::pids::host_tid;
use crate::{At, RestoreError, Result, Stage};
use stasis_image::{ProcessImage, ThreadState, UserRegs};
use stasis_sys::ptrace::{self, Regs};
use stasis_sys::remote::RemoteThread;
use stasis_sys::Pid;

pub(crate) fn image_to_regs(u: &UserRegs) -> Regs {
    Regs {
        r15: u.r15,
        r14: u.r14,
        r13: u.r13,
        r12: u.r12,
        rbp: u.rbp,
        rbx: u.rbx,
        r11: u.r11,
        r10: u.r10,
        r9: u.r9,
        r8: u.r8,
        rax: u.rax,
        rcx: u.rcx,
        rdx: u.rdx,
        rsi: u.rsi,
        rdi: u.rdi,
        orig_rax: u.orig_rax,
        rip: u.rip,
        cs: u.cs,
        eflags: u.eflags,
        rsp: u.rsp,
        ss: u.ss,
        fs_base: u.fs_base,
        gs_base: u.gs_base,
        ds: u.ds,
        es: u.es,
        fs: u.fs,
        gs: u.gs,
    }
}

/// PR_SET_NAME (the kernel keeps 15 bytes) for the calling thread.
pub(crate) fn set_name(r: &mut RemoteThread, pid: u32, name: &str) -> Result<()> {
    let mut comm = name.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    let at = r.stage(&comm).at(pid, Stage::Attributes)?;
    r.queue(
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, at],
        "prctl(PR_SET_NAME)",
    )
    .at(pid, Stage::Attributes)?;
    Ok(())
}

/// What belongs to one thread, executed by that thread.
pub(crate) fn thread_attributes(r: &mut RemoteThread, pid: u32, t: &ThreadState) -> Result<()> {
    let st = Stage::Attributes;
    set_name(r, pid, &t.comm)?;
    for p in &t.pending {
        let at = r.stage(&p.info).at(pid, st)?;
        r.queue(
            libc::SYS_rt_tgsigqueueinfo,
            &[u64::from(pid), u64::from(t.tid), u64::from(p.signo), at],
            "rt_tgsigqueueinfo",
        )
        .at(pid, st)?;
    }
    let ss = t.sigaltstack;
    let mut b = ss.sp.to_le_bytes().to_vec();
    // SS_ONSTACK is a report, not a setting.
    b.extend_from_slice(&(ss.flags & !(libc::SS_ONSTACK as u32)).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&ss.size.to_le_bytes());
    let at = r.stage(&b).at(pid, st)?;
    r.queue(libc::SYS_sigaltstack, &[at, 0], "sigaltstack")
        .at(pid, st)?;
    r.queue(
        libc::SYS_set_tid_address,
        &[t.clear_child_tid],
        "set_tid_address",
    )
    .at(pid, st)?;
    if t.robust_list_head != 0 {
        r.queue(
            libc::SYS_set_robust_list,
            &[t.robust_list_head, t.robust_list_len],
            "set_robust_list",
        )
        .at(pid, st)?;
    }
    if let Some(rs) = t.rseq {
        r.queue(
            libc::SYS_rseq,
            &[rs.addr, u64::from(rs.len), 0, u64::from(rs.signature)],
            "rseq(register)",
        )
        .at(pid, st)?;
    }
    // Queued: a new thread's run in one round trip (create_all), the
    // leader's with its next calls.
    Ok(())
}

const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Creates every thread but the leader by remote clone3s in the leader
/// (set_tid gives each its old TID at every level of a nested PID
/// namespace), all in one round trip; with PTRACE_O_TRACECLONE each
/// arrives traced and stopped before running any instruction (the batch
/// loop goes on through the leader's clone event stops). set_tid either
/// gives the TIDs asked for or fails (EEXIST), so a batch that succeeds
/// made exactly these threads. `tids` holds each thread's ids innermost
/// first (the one the leader's clone3 returns).
fn create_threads(leader: &mut RemoteThread, pid: u32, tids: &[Vec<u32>]) -> Result<Vec<Pid>> {
    let st = Stage::Attributes;
    if tids.is_empty() {
        return Ok(Vec::new());
    }
    for ids in tids {
        // clone_args (flags, pidfd, child_tid, parent_tid, exit_signal,
        // stack, stack_size, tls, set_tid, set_tid_size, cgroup), then the
        // TIDs, which set_tid points at.
        let mut args = Vec::with_capacity(88 + 4 * ids.len());
        for v in [
            CLONE_THREAD_FLAGS,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            ids.len() as u64,
            0,
        ] {
            args.extend_from_slice(&u64::to_le_bytes(v));
        }
        for &id in ids {
            args.extend_from_slice(&(id as i32).to_le_bytes());
        }
        let at = leader.stage(&args).at(pid, st)?;
        // set_tid: the address of the TIDs just after the arguments.
        let set_tid = at + 88;
        leader
            .write_scratch(at - leader.scratch().0 + 64, &set_tid.to_le_bytes())
            .at(pid, st)?;
        leader
            .queue(
                libc::SYS_clone3,
                &[at, 88],
                format!("clone3 thread {}", ids[0]),
            )
            .at(pid, st)?;
    }
    leader.flush().at(pid, st)?;
    let mut out = Vec::with_capacity(tids.len());
    for tid in tids.iter().map(|ids| ids[0]) {
        let t = host_tid(leader.tid(), tid).ok_or_else(|| RestoreError::Refused {
            pid,
            stage: st,
            what: format!("new thread {tid} not found in /proc"),
        })?;
        match ptrace::wait(t).at(pid, st)? {
            ptrace::Stop::Signal(libc::SIGSTOP) | ptrace::Stop::Event { .. } => out.push(t),
            other => {
                return Err(RestoreError::Refused {
                    pid,
                    stage: st,
                    what: format!("new thread {tid}: unexpected {other:?}"),
                })
            }
        }
    }
    Ok(out)
}

/// Creates every thread but the leader, each traced and set up with what
/// is its own; returns them in image order.
pub(crate) fn create_all(
    leader: &mut RemoteThread,
    img: &ProcessImage,
    stub: u64,
    guard: &mut TreeGuard,
    k: usize,
) -> Result<Vec<RemoteThread>> {
    let pid = img.pid;
    // Each thread's id at every level of a nested PID namespace, innermost
    // first; else the one it has.
    let wanted: Vec<Vec<u32>> = img.threads[1..]
        .iter()
        .map(|t| {
            if t.ns_tids.is_empty() {
                vec![t.tid]
            } else {
                t.ns_tids.iter().rev().copied().collect()
            }
        })
        .collect();
    let tids = create_threads(leader, pid, &wanted)?;
    guard.traced[k].1.extend(tids.iter().copied());
    let mut threads = Vec::with_capacity(tids.len());
    for (t, tid) in img.threads[1..].iter().zip(tids) {
        let mut tr = RemoteThread::plain(tid, stub, stub + 4096, STUB_LEN - 4096)
            .at(pid, Stage::Attributes)?;
        thread_attributes(&mut tr, pid, t)?;
        // One thread at a time: the threads of a process share the stub
        // area, where each batch's records and data are.
        tr.flush().at(pid, Stage::Attributes)?;
        threads.push(tr);
    }
    Ok(threads)
}
