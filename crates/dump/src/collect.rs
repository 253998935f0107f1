//! Collecting a frozen process's state from /proc, ptrace and remote
//! syscalls. The kinds of state have their own modules (kinds/ for
//! descriptors, memory.rs, threads.rs, signals.rs, timers.rs, pidns.rs);
//! this gathers them into one `ProcessImage`.

use crate::freeze::Frozen;
use crate::threads::{collect_thread, query_thread};
use crate::{checks, kinds, memory, signals, timers, At, DumpError, Result, Stage};
use stasis_image::{
    Creds, MmState, ProcAttrs, ProcessImage, Rlimit, Sched, SigAction, ThreadState,
};
use stasis_proc::{SmapsEntry, Status};
use stasis_sys::remote::{le_u32, le_u64, RemoteThread};
use stasis_sys::{ptrace, util, xsave};
use std::os::fd::{AsFd, OwnedFd};

/// Everything collected before pages are written.
pub(crate) struct Collected {
    pub image: ProcessImage,
    pub page_plan: memory::PagePlan,
    /// The process's PID in our namespace (`image.pid` may be rewritten
    /// to the PID namespace's view).
    pub host_pid: u32,
    /// Its write tracker (pre-copy), taken back from the last round's
    /// holder or created for this one.
    pub uffd: Option<OwnedFd>,
    /// Its PID in the parent image, when `uffd` comes from there.
    pub parent_pid: Option<u32>,
    /// SysV shm segments it opened for the dump (sysvipc::open_remote).
    pub sysv: Vec<(i32, OwnedFd)>,
    /// Its tracker was re-armed with the page plan (memory::plan).
    pub armed: bool,
}

/// SysV segments a process opened for the dump: (id, memory object).
type SysvOpened = Vec<(i32, OwnedFd)>;

/// The write tracker a process starts collection with (pre-copy).
pub(crate) struct TrackIn {
    /// Taken back from the parent's holder, with the parent image's PID.
    pub taken: Option<(OwnedFd, u32)>,
    /// Create one in the target if none was taken.
    pub want_new: bool,
}

/// What cannot be saved yet, refused before anything is written.
fn check(pid: u32, status: &Status) -> Result<()> {
    // Nested PID namespaces: pidns.rs (their levels are saved).
    // Per-process x86 state that lives outside the XSAVE area: refused
    // until it is restored (linear address masking changes how every
    // pointer is read; a shadow stack must be rebuilt with the stack).
    if status.untag_mask != u64::MAX {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what: format!(
                "linear address masking (LAM, untag mask {:#x})",
                status.untag_mask
            ),
        });
    }
    if !status.x86_thread_features.is_empty() {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what: format!(
                "x86 thread features enabled by arch_prctl ({}: shadow stack)",
                status.x86_thread_features
            ),
        });
    }
    Ok(())
}

/// Collects one frozen process; `shmem` records the pages of shared
/// anonymous objects saved by the processes collected before; `early`:
/// its smaps and numa_maps read before the freeze, verified unchanged
/// (preread.rs).
pub(crate) fn collect(
    frozen: &mut Frozen,
    shell_job: bool,
    sockets: &kinds::SockOpts,
    shmem: &mut crate::shmem::Saved,
    (track, early): (TrackIn, Option<crate::preread::Early>),
    (sysv_reads, witnesses): (&[(i32, u64)], &mut crate::landlock::Witnesses),
) -> Result<Collected> {
    let p = frozen.pid;
    let pid = p.0 as u32;
    let early_used = early.as_ref().map(|e| e.before_freeze);

    // ---- check: what we cannot save yet, before anything is written ----
    if let Some(what) = crate::memkinds::refuse_tasks(pid, &frozen.tids) {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what,
        });
    }
    let stat = stasis_proc::read_stat(pid).at(pid, Stage::Collect)?;
    let status = stasis_proc::read_status(pid).at(pid, Stage::Collect)?;
    check(pid, &status)?;
    crate::lsm::check(pid)?;
    let seccomp = crate::seccomp::collect(pid, &status, &frozen.tids)?;
    let t = std::time::Instant::now();
    let fds = kinds::collect_fds(pid, shell_job, sockets)?;
    log::debug!("pid {pid}: descriptors collected in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let (smaps, policies, planned) = match early {
        Some(e) => (e.smaps, e.policies, e.planned),
        None => (
            stasis_proc::read_smaps(pid).at(pid, Stage::Collect)?,
            crate::memkinds::refuse_policies(pid),
            None,
        ),
    };
    let smaps_took = t.elapsed();
    let (mut uffd, parent_pid) = track
        .taken
        .map_or((None, None), |(f, p)| (Some(f), Some(p)));
    // A further brief round re-arms the tracker taken from the last one
    // in the same pass as it finds what was written since.
    let armed = track.want_new && uffd.is_some();
    let (vmas, page_plan) = match planned {
        // Planned ahead as this would: no tracker to register with.
        Some(p) if uffd.is_none() => p,
        _ => memory::plan(
            pid,
            (&smaps, policies),
            shmem,
            (uffd.as_ref().map(|f| f.as_fd()), armed),
        )?,
    };
    log::debug!(
        "pid {pid}: smaps and numa_maps {} in {smaps_took:?}, page plan in {:?}",
        match early_used {
            Some(true) => "taken from the pre-read",
            Some(false) => "read ahead",
            None => "read",
        },
        t.elapsed() - smaps_took
    );

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
    let new_uffd = track.want_new && uffd.is_none();
    let mut sysv = Vec::new();
    let (threads, q, timers, attrs) = query_threads(
        frozen,
        pid,
        (&status, &smaps),
        new_uffd.then_some(&mut uffd),
        (sysv_reads, &mut sysv),
        witnesses,
    )?;

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
        xcomp_perm: q.xcomp_perm,
        xcomp_guest_perm: q.xcomp_guest_perm,
        seccomp,
        sigactions: q.sigactions,
        shared_pending,
        itimers: timers.0,
        posix_timers: timers.1,
        threads,
        files: fds,
        mm,
        saved_files: Vec::new(),
        file_locks: Vec::new(),
        ctty_pty: kinds::pty_index(u64::from(stat.tty_nr)),
        fd_owners: Vec::new(),
        proc_attrs: Some(attrs),
        cwd_saved: 0,
        ns_pids: Vec::new(),
        pid_for_children_nested: false,
        session_keyring: q.session_keyring,
    };
    Ok(Collected {
        image,
        page_plan,
        host_pid: pid,
        uffd,
        parent_pid,
        sysv,
        armed,
    })
}

/// Queries every thread by self-healing remote syscalls, one at a time;
/// the leader also answers for the process. Returns the threads, the
/// process's answers, its timers and its settings.
fn query_threads(
    frozen: &mut Frozen,
    pid: u32,
    (status, smaps): (&Status, &[SmapsEntry]),
    uffd: Option<&mut Option<OwnedFd>>,
    (sysv_reads, sysv): (&[(i32, u64)], &mut SysvOpened),
    witnesses: &mut crate::landlock::Witnesses,
) -> Result<(Vec<ThreadState>, Queried, timers::Timers, ProcAttrs)> {
    let mut uffd = uffd;
    let p = frozen.pid;
    let writable: Vec<(u64, u64)> = smaps
        .iter()
        .filter(|s| s.map.write && !s.map.shared)
        .map(|s| (s.map.start, s.map.end))
        .collect();
    let vdso = crate::stub_site::find(pid, smaps);
    // The healing area is shared by the threads: none may still be in it.
    for &tid in &frozen.tids {
        let rip = ptrace::get_regs(tid).at(pid, Stage::Query)?.rip;
        if stasis_sys::remote::in_heal_area(vdso, rip) {
            return Err(DumpError::Sys {
                pid,
                stage: Stage::Query,
                source: stasis_sys::SysError::other(
                    "prepare remote syscalls",
                    Some(tid),
                    "the thread is still running the healing stub of a stasis that was killed; \
                     try again once it has left it",
                ),
            });
        }
    }
    frozen.set_site(vdso, writable.clone());
    let mut threads = Vec::with_capacity(frozen.tids.len());
    let mut q = None;
    let mut timers = (Vec::new(), Vec::new());
    let mut attrs = crate::procattrs::Collector::new(pid, smaps);
    let mut pdeaths = Vec::with_capacity(frozen.tids.len());
    // A witness for the Landlock probe of every thread (landlock.rs).
    let landlock = witnesses.of(pid, status)?;
    for tid in frozen.tids.clone() {
        let mut t = collect_thread(pid, tid)?;
        let remote = RemoteThread::healing(tid, vdso, &writable).at(pid, Stage::Query)?;
        frozen.set_remote(remote);
        let r = frozen.remote().ok_or(DumpError::Unsupported {
            pid,
            stage: Stage::Query,
            what: "remote".into(),
        })?;
        if let Some(probe) = landlock {
            let own = status.ns_pid.last().copied().unwrap_or(pid);
            crate::landlock::probe(r, (pid, own), probe)?;
        }
        let (altstack, clear_child_tid) = query_thread(r, pid)?;
        pdeaths.push((tid, checks::query_thread(r, pid)?));
        t.sigaltstack = altstack;
        t.clear_child_tid = clear_child_tid;
        attrs.thread(r, tid)?;
        if tid == p {
            let dynamic = xsave::dynamic(xsave::features(&t.xsave));
            let mut queried = query(r, pid, status.sig_cgt | status.sig_ign, dynamic)?;
            queried.session_keyring = checks::query_process(r, pid)?;
            q = Some(queried);
            timers = timers::query_timers(r, pid)?;
            attrs.process(r)?;
            *sysv = crate::sysvipc::open_remote(r, pid, sysv_reads)?;
            if let Some(u) = uffd.as_mut() {
                **u = Some(crate::track::inject(r, pid)?);
            }
        }
        frozen.finish_remote().at(pid, Stage::Query)?;
        threads.push(t);
    }
    let q = q.ok_or(DumpError::NoProcess { pid })?;
    // A restore gives every thread the leader's parent-death signal.
    if let Some((tid, sig)) = pdeaths.iter().find(|(_, s)| *s != q.pdeath_signal) {
        return Err(checks::refuse(
            pid,
            format!(
                "thread {tid} has a parent-death signal of its own ({sig}; the leader's is {})",
                q.pdeath_signal
            ),
        ));
    }
    // SUID_DUMP_ROOT is set by the kernel only; prctl cannot give it back.
    if q.dumpable == 2 {
        return Err(checks::refuse(
            pid,
            "dumpable 2 (SUID_DUMP_ROOT, set by the kernel after a set-id exec)".into(),
        ));
    }
    Ok((threads, q, timers, attrs.finish()?))
}

/// arch_prctl: the XSAVE components the process may use.
const ARCH_GET_XCOMP_PERM: u64 = 0x1022;
/// arch_prctl: the XSAVE components its KVM guests may use.
const ARCH_GET_XCOMP_GUEST_PERM: u64 = 0x1024;

struct Queried {
    /// ARCH_GET_XCOMP_PERM (0 when the CPU has no dynamic components).
    xcomp_perm: u64,
    /// ARCH_GET_XCOMP_GUEST_PERM (0 likewise).
    xcomp_guest_perm: u64,
    sigactions: Vec<SigAction>,
    pdeath_signal: u32,
    dumpable: u32,
    securebits: u32,
    brk: u64,
    /// A session keyring of its own (checks::query_process).
    session_keyring: Option<stasis_image::Keyring>,
}

/// State only the process itself can report, through remote syscalls.
/// Every call is a pure query writing into the healing scratch area
/// (64 bytes, put back afterwards).
///
/// `dynamic` lists the XSAVE components this CPU enables on first use (AMX
/// tile data): when there are any, the process's permission for them is
/// read too (a process that asked for AMX must get it back, or its next
/// tile instruction dies with SIGILL).
fn query(r: &mut RemoteThread, pid: u32, handled: u64, dynamic: u64) -> Result<Queried> {
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
    let (mut xcomp_perm, mut xcomp_guest_perm) = (0, 0);
    if dynamic != 0 {
        let mut perm = |code: u64, what: &str| -> Result<u64> {
            r.call(libc::SYS_arch_prctl, &[code, scratch], what)
                .at(pid, st)?;
            Ok(le_u64(&r.read_scratch(0, 8).at(pid, st)?, 0))
        };
        xcomp_perm = perm(ARCH_GET_XCOMP_PERM, "arch_prctl(ARCH_GET_XCOMP_PERM)")?;
        xcomp_guest_perm = perm(
            ARCH_GET_XCOMP_GUEST_PERM,
            "arch_prctl(ARCH_GET_XCOMP_GUEST_PERM)",
        )?;
    }
    Ok(Queried {
        xcomp_perm,
        xcomp_guest_perm,
        sigactions,
        pdeath_signal,
        dumpable,
        securebits,
        brk,
        session_keyring: None,
    })
}
