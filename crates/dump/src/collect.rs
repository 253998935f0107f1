//! Collecting a frozen process's state from /proc, ptrace and remote
//! syscalls. The kinds of state have their own modules (kinds/ for
//! descriptors, memory.rs, threads.rs, signals.rs, timers.rs, pidns.rs);
//! this gathers them into one `ProcessImage`.

use crate::freeze::Frozen;
use crate::threads::{collect_thread, query_thread};
use crate::{kinds, memory, signals, timers, At, DumpError, Result, Stage};
use stasis_image::{Creds, MmState, ProcessImage, Rlimit, Sched, SigAction, ThreadState};
use stasis_proc::{SmapsEntry, Status};
use stasis_sys::remote::{le_u32, RemoteThread};
use stasis_sys::util;

/// Everything collected before pages are written.
pub(crate) struct Collected {
    pub image: ProcessImage,
    pub page_plan: memory::PagePlan,
    /// The process's PID in our namespace (`image.pid` may be rewritten
    /// to the PID namespace's view).
    pub host_pid: u32,
}

/// What cannot be saved yet, refused before anything is written.
fn check(pid: u32, status: &Status) -> Result<()> {
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
    Ok(())
}

pub(crate) fn collect(frozen: &mut Frozen, shell_job: bool) -> Result<Collected> {
    let p = frozen.pid;
    let pid = p.0 as u32;

    // ---- check: what we cannot save yet, before anything is written ----
    let stat = stasis_proc::read_stat(pid).at(pid, Stage::Collect)?;
    let status = stasis_proc::read_status(pid).at(pid, Stage::Collect)?;
    check(pid, &status)?;
    let fds = kinds::collect_fds(pid, shell_job)?;
    let smaps = stasis_proc::read_smaps(pid).at(pid, Stage::Collect)?;
    let (vmas, page_plan) = memory::plan(pid, &smaps)?;

    // ---- collect: /proc and ptrace ----
    let tid = p;
    let shared_pending = signals::pending_signals(pid, tid, true)?;
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
    let (threads, q, timers) = query_threads(frozen, pid, &status, &smaps)?;

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

/// Queries every thread by self-healing remote syscalls, one at a time;
/// the leader also answers for the process. Returns the threads, the
/// process's answers and its timers.
fn query_threads(
    frozen: &mut Frozen,
    pid: u32,
    status: &Status,
    smaps: &[SmapsEntry],
) -> Result<(Vec<ThreadState>, Queried, timers::Timers)> {
    let p = frozen.pid;
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
            timers = timers::query_timers(r, pid)?;
        }
        frozen.finish_remote().at(pid, Stage::Query)?;
        threads.push(t);
    }
    let q = q.ok_or(DumpError::NoProcess { pid })?;
    Ok((threads, q, timers))
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
    let sigactions = crate::signals::query_sigactions(r, pid, handled)?;
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
