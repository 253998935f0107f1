//! Collecting a frozen process's state from /proc, ptrace and remote syscalls.

use crate::freeze::Frozen;
use crate::{kinds, memory, At, DumpError, Result, Stage};
use stasis_image::{
    Creds, ITimer, MmState, PendingSignal, PosixTimer, ProcessImage, Rlimit, Rseq, Sched,
    SigAction, SigAltStack, ThreadState, UserRegs,
};
use stasis_sys::ptrace::{self, Regs};
use stasis_sys::remote::{le_u32, le_u64, RemoteThread};
use stasis_sys::{util, Pid};

/// Everything collected before pages are written.
pub(crate) struct Collected {
    pub image: ProcessImage,
    pub page_plan: memory::PagePlan,
    /// The process's PID in our namespace (`image.pid` may be rewritten
    /// to the PID namespace's view).
    pub host_pid: u32,
}

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

pub(crate) fn collect(frozen: &mut Frozen, shell_job: bool) -> Result<Collected> {
    let p = frozen.pid;
    let pid = p.0 as u32;

    // ---- check: what we cannot save yet, before anything is written ----
    let stat = stasis_proc::read_stat(pid).at(pid, Stage::Collect)?;
    let status = stasis_proc::read_status(pid).at(pid, Stage::Collect)?;
    if status.seccomp != 0 {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what: "a seccomp-filtered process".into(),
        });
    }
    if status.ns_pid.len() > 2 {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what: "a process in a PID namespace nested two levels below stasis's".into(),
        });
    }
    let fds = kinds::collect_fds(pid, shell_job)?;
    let smaps = stasis_proc::read_smaps(pid).at(pid, Stage::Collect)?;
    let (vmas, page_plan) = memory::plan(pid, &smaps)?;

    // ---- collect: /proc and ptrace ----
    let tid = p;
    let shared_pending = pending_signals(pid, tid, true)?;
    let exe_link = stasis_proc::read_link(pid, "exe").at(pid, Stage::Collect)?;
    let exe = kinds::regular::file_id(pid, Stage::Collect, &exe_link, &format!("/proc/{pid}/exe"))?;
    let cwd = stasis_proc::read_link(pid, "cwd").at(pid, Stage::Collect)?;
    let root = stasis_proc::read_link(pid, "root").at(pid, Stage::Collect)?;
    let personality = std::fs::read_to_string(format!("/proc/{pid}/personality"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0);
    let rlimits = stasis_proc::read_limits(pid)
        .at(pid, Stage::Collect)?
        .into_iter()
        .map(|(resource, cur, max)| Rlimit { resource, cur, max })
        .collect();
    let (policy, rt_priority) = util::sched_get(p).at(pid, Stage::Collect)?;
    let nice = util::get_nice(p).at(pid, Stage::Collect)?;
    let auxv = stasis_proc::read_auxv(pid).at(pid, Stage::Collect)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or(stat.comm.clone());

    // ---- query: remote syscalls, self-healing, one thread at a time ----
    let writable: Vec<(u64, u64)> = smaps
        .iter()
        .filter(|s| s.map.write)
        .map(|s| (s.map.start, s.map.end))
        .collect();
    let vdso = smaps
        .iter()
        .find(|s| s.map.path.as_deref() == Some("[vdso]"))
        .map(|s| (s.map.start, s.map.end))
        .unwrap_or((0, 0));
    let mut threads = Vec::with_capacity(frozen.tids.len());
    let mut q = None;
    let mut timers = (Vec::new(), Vec::new());
    for tid in frozen.tids.clone() {
        let mut t = collect_thread(pid, tid)?;
        let remote = RemoteThread::healing(tid, vdso, &writable, &t.xsave).at(pid, Stage::Query)?;
        frozen.set_remote(remote);
        let r = frozen.remote().ok_or(DumpError::Unsupported {
            pid,
            stage: Stage::Query,
            what: "remote".into(),
        })?;
        let (altstack, clear_child_tid) = query_thread(r, pid)?;
        t.sigaltstack = altstack;
        t.clear_child_tid = clear_child_tid;
        if tid == p {
            q = Some(query(r, pid, status.sig_cgt | status.sig_ign)?);
            timers = query_timers(r, pid)?;
        }
        frozen.finish_remote().at(pid, Stage::Query)?;
        threads.push(t);
    }
    let q = q.ok_or(DumpError::NoProcess { pid })?;

    let mm = MmState {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk: q.brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv,
        vmas,
        pages: Vec::new(),
        cow_pages: Vec::new(),
    };
    let image = ProcessImage {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        exit_signal: stat.exit_signal.max(0) as u32,
        stopped: frozen.was_stopped,
        comm,
        exe,
        cwd,
        root,
        umask: status.umask.unwrap_or(0o022),
        personality,
        creds: Creds {
            uids: status.uids,
            gids: status.gids,
            groups: status.groups.clone(),
            cap_inheritable: status.cap_inh,
            cap_permitted: status.cap_prm,
            cap_effective: status.cap_eff,
            cap_bounding: status.cap_bnd,
            cap_ambient: status.cap_amb,
            securebits: q.securebits,
            no_new_privs: status.no_new_privs,
        },
        rlimits,
        sched: Sched {
            policy,
            rt_priority,
            nice,
        },
        pdeath_signal: q.pdeath_signal,
        dumpable: q.dumpable,
        sigactions: q.sigactions,
        shared_pending,
        itimers: timers.0,
        posix_timers: timers.1,
        threads,
        files: fds,
        mm,
        saved_files: Vec::new(),
    };
    Ok(Collected {
        image,
        page_plan,
        host_pid: pid,
    })
}

struct Queried {
    sigactions: Vec<SigAction>,
    pdeath_signal: u32,
    dumpable: u32,
    securebits: u32,
    brk: u64,
}

/// State only the process itself can report, through remote syscalls.
/// Every call is a pure query writing into scratch memory below the
/// thread's healing frame.
fn query(r: &mut RemoteThread, pid: u32, handled: u64) -> Result<Queried> {
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

    r.call(
        libc::SYS_prctl,
        &[libc::PR_GET_PDEATHSIG as u64, scratch],
        "prctl(PR_GET_PDEATHSIG)",
    )
    .at(pid, st)?;
    let pdeath_signal = le_u32(&r.read_scratch(0, 4).at(pid, st)?, 0);
    let dumpable = r
        .call(
            libc::SYS_prctl,
            &[libc::PR_GET_DUMPABLE as u64],
            "prctl(PR_GET_DUMPABLE)",
        )
        .at(pid, st)? as u32;
    let securebits = r
        .call(
            libc::SYS_prctl,
            &[libc::PR_GET_SECUREBITS as u64],
            "prctl(PR_GET_SECUREBITS)",
        )
        .at(pid, st)? as u32;
    let brk = r.call(libc::SYS_brk, &[0], "brk(0)").at(pid, st)?;
    Ok(Queried {
        sigactions,
        pdeath_signal,
        dumpable,
        securebits,
        brk,
    })
}

fn pending_signals(pid: u32, tid: Pid, shared: bool) -> Result<Vec<PendingSignal>> {
    Ok(ptrace::peek_siginfo(tid, shared)
        .at(pid, Stage::Collect)?
        .into_iter()
        .map(|info| PendingSignal {
            signo: le_u32(&info, 0),
            info: info.to_vec(),
        })
        .collect())
}

/// Per-thread state visible through ptrace and /proc.
fn collect_thread(pid: u32, tid: Pid) -> Result<ThreadState> {
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
    })
}

/// Per-thread state only the thread can tell: (sigaltstack, clear_child_tid).
fn query_thread(r: &mut RemoteThread, pid: u32) -> Result<(SigAltStack, u64)> {
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

/// The innermost PID of a task, from /proc/PID/task/TID/status NSpid.
fn inner_id(host: u32, tid: u32, stage: Stage) -> Result<(u32, stasis_proc::Status)> {
    let text = stasis_proc::read(host, &format!("task/{tid}/status")).at(host, stage)?;
    let st = stasis_proc::parse_status(&text).map_err(|e| DumpError::Unsupported {
        pid: host,
        stage,
        what: format!("status of task {tid}: {e}"),
    })?;
    let inner = st.ns_pid.last().copied().unwrap_or(tid);
    Ok((inner, st))
}

/// A tree whose root is the init of its own PID namespace is saved with
/// the namespace's PIDs (a restore recreates the namespace, so the host
/// PIDs are free to differ): rewrites pid, ppid, pgid, sid and tids.
/// Returns whether the tree is such a namespace.
pub(crate) fn translate_to_pid_ns(
    procs: &mut [Collected],
    zombies: &mut [crate::freeze::ZombieInfo],
) -> Result<bool> {
    let Some(root) = procs.first() else {
        return Ok(false);
    };
    let root_host = root.host_pid;
    let (root_inner, root_status) = inner_id(root_host, root_host, Stage::Check)?;
    if root_status.ns_pid.len() < 2 {
        return Ok(false);
    }
    if root_inner != 1 {
        return Err(DumpError::Unsupported {
            pid: root_host,
            stage: Stage::Check,
            what: format!(
                "a process inside a PID namespace (PID {root_inner} there) that is not its init; dump the namespace's init"
            ),
        });
    }
    let mut map = std::collections::HashMap::new();
    for c in procs.iter() {
        let (inner, st) = inner_id(c.host_pid, c.host_pid, Stage::Check)?;
        if st.ns_pid.len() != root_status.ns_pid.len() {
            return Err(DumpError::Unsupported {
                pid: c.host_pid,
                stage: Stage::Check,
                what: "a process in a nested PID namespace".into(),
            });
        }
        map.insert(c.host_pid, inner);
    }
    for z in zombies.iter() {
        let (inner, _) = inner_id(z.pid, z.pid, Stage::Check)?;
        map.insert(z.pid, inner);
    }
    for c in procs.iter_mut() {
        let host = c.host_pid;
        let (_, st) = inner_id(host, host, Stage::Check)?;
        let img = &mut c.image;
        img.pid = map[&host];
        img.ppid = map.get(&img.ppid).copied().unwrap_or(0);
        img.pgid = st.ns_pgid.last().copied().unwrap_or(0);
        img.sid = st.ns_sid.last().copied().unwrap_or(0);
        for v in &mut img.mm.vmas {
            if v.cow_owner != 0 {
                v.cow_owner = map.get(&v.cow_owner).copied().unwrap_or(0);
            }
        }
        for t in &mut img.posix_timers {
            if t.notify_tid != 0 {
                t.notify_tid = inner_id(host, t.notify_tid, Stage::Check)?.0;
            }
        }
        for t in &mut img.threads {
            t.tid = inner_id(host, t.tid, Stage::Check)?.0;
        }
    }
    for z in zombies.iter_mut() {
        let (inner, st) = inner_id(z.pid, z.pid, Stage::Check)?;
        z.ppid = map.get(&z.ppid).copied().unwrap_or(0);
        z.pgid = st.ns_pgid.last().copied().unwrap_or(0);
        z.sid = st.ns_sid.last().copied().unwrap_or(0);
        z.pid = inner;
    }
    Ok(true)
}

/// Interval timers and POSIX timers, read by the process itself
/// (getitimer, timer_gettime: queries only).
fn query_timers(r: &mut RemoteThread, pid: u32) -> Result<(Vec<ITimer>, Vec<PosixTimer>)> {
    let st = Stage::Query;
    let (scratch, _) = r.scratch();
    let mut itimers = Vec::new();
    for which in 0..3u32 {
        r.call(
            libc::SYS_getitimer,
            &[u64::from(which), scratch],
            "getitimer",
        )
        .at(pid, st)?;
        let b = r.read_scratch(0, 32).at(pid, st)?;
        let us = |off: usize| le_u64(&b, off) * 1_000_000 + le_u64(&b, off + 8);
        let (interval_us, value_us) = (us(0), us(16));
        if interval_us != 0 || value_us != 0 {
            itimers.push(ITimer {
                which,
                interval_us,
                value_us,
            });
        }
    }
    let mut timers = Vec::new();
    let list = match stasis_proc::read_timers(pid) {
        Ok(l) => l,
        Err(_) => return Ok((itimers, timers)), // no CONFIG_CHECKPOINT_RESTORE: no timers file
    };
    for t in list {
        r.call(
            libc::SYS_timer_gettime,
            &[t.id as u64, scratch],
            &format!("timer_gettime({})", t.id),
        )
        .at(pid, st)?;
        let b = r.read_scratch(0, 32).at(pid, st)?;
        let ns = |off: usize| le_u64(&b, off) * 1_000_000_000 + le_u64(&b, off + 8);
        let overrun = r
            .syscall(libc::SYS_timer_getoverrun, &[t.id as u64])
            .at(pid, st)?;
        let base = match t.notify.as_str() {
            "none" => 1,
            "thread" => 2,
            _ => 0,
        };
        timers.push(PosixTimer {
            id: t.id,
            clock_id: t.clock_id,
            notify: base | if t.notify_tid.is_some() { 4 } else { 0 },
            signo: t.signal.max(0) as u32,
            sigev_value: t.sigev_value,
            notify_tid: t.notify_tid.unwrap_or(0),
            interval_ns: ns(0),
            value_ns: ns(16),
            overrun: overrun.max(0) as i32,
        });
    }
    Ok((itimers, timers))
}
