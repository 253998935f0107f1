//! Freezing a process from the outside, and the guard that always puts it back.

use crate::{At, DumpError, Result, Stage};
use stasis_sys::ptrace::{self, Stop, PTRACE_EVENT_STOP};
use stasis_sys::remote::RemoteThread;
use stasis_sys::{util, Pid};
use std::os::fd::OwnedFd;

/// A process's `[vdso]` range (the stub site) and its private writable
/// areas (for the scratch area): what [`RemoteThread::healing`] needs.
type StubSite = ((u64, u64), Vec<(u64, u64)>);

/// Every thread of a process, seized and stopped in PTRACE_EVENT_STOP.
///
/// Dropping it without [`Frozen::release`] or [`Frozen::kill`] (any error
/// path) undoes remote-syscall state and detaches every thread, so the
/// process carries on as if nothing happened.
pub struct Frozen {
    pub pid: Pid,
    pub tids: Vec<Pid>,
    /// The process was in a group stop (SIGSTOP/SIGTSTP) when seized.
    pub was_stopped: bool,
    remote: Option<RemoteThread>,
    /// Where remote calls can be made in it again (the stub site and the
    /// private writable areas), for [`Frozen::keeper`].
    site: Option<StubSite>,
    done: bool,
}

/// The options the dump traces with: with CAP_SYS_ADMIN (and no seccomp
/// of our own), PTRACE_O_SUSPEND_SECCOMP too, so that a target's seccomp
/// filters do not apply to the dump's remote calls (a filter that kills on
/// an unexpected call would kill the target).
fn seize_options() -> libc::c_int {
    static OPTIONS: std::sync::OnceLock<libc::c_int> = std::sync::OnceLock::new();
    *OPTIONS.get_or_init(|| {
        let own = stasis_proc::read_status(std::process::id()).ok();
        // Capability 21: CAP_SYS_ADMIN.
        let can_suspend = own.is_some_and(|s| s.seccomp == 0 && s.cap_eff & (1 << 21) != 0);
        if can_suspend {
            libc::PTRACE_O_TRACESYSGOOD | ptrace::PTRACE_O_SUSPEND_SECCOMP
        } else {
            libc::PTRACE_O_TRACESYSGOOD
        }
    })
}

fn seize_one(tid: Pid) -> stasis_sys::Result<bool> {
    ptrace::seize(tid, seize_options())?;
    stasis_sys::hook::kill_point("freeze-seized");
    ptrace::interrupt(tid)?;
    loop {
        match ptrace::wait(tid)? {
            Stop::Event {
                event: PTRACE_EVENT_STOP,
                sig,
            } => {
                return Ok(sig != libc::SIGTRAP);
            }
            // A signal arrived before the interrupt: let it be delivered as
            // it would have been; the pending interrupt stops the task next.
            Stop::Signal(sig) => ptrace::cont(tid, sig)?,
            Stop::Syscall | Stop::Event { .. } => ptrace::cont(tid, 0)?,
            Stop::Exited(_) | Stop::Killed(_) => {
                return Err(stasis_sys::SysError::other(
                    "freeze",
                    Some(tid),
                    "task exited while being frozen",
                ))
            }
        }
    }
}

impl Frozen {
    /// Seizes and stops every thread of `pid`, rescanning /proc/PID/task
    /// until no new thread appears.
    pub fn freeze(pid: Pid) -> Result<Frozen> {
        let p = pid.0 as u32;
        if !util::pid_exists(pid) {
            return Err(DumpError::NoProcess { pid: p });
        }
        let status = stasis_proc::read_status(p).at(p, Stage::Freeze)?;
        if status.tgid != p {
            return Err(DumpError::Unsupported {
                pid: p,
                stage: Stage::Freeze,
                what: format!("a thread (tid {p} belongs to process {})", status.tgid),
            });
        }
        if status.tracer_pid != 0 {
            return Err(DumpError::Unsupported {
                pid: p,
                stage: Stage::Freeze,
                what: format!("a process traced by pid {}", status.tracer_pid),
            });
        }
        let mut f = Frozen {
            pid,
            tids: Vec::new(),
            was_stopped: false,
            remote: None,
            site: None,
            done: false,
        };
        loop {
            let tasks = stasis_proc::list_tasks(p).at(p, Stage::Freeze)?;
            let new: Vec<Pid> = tasks
                .iter()
                .map(|&t| Pid(t as i32))
                .filter(|t| !f.tids.contains(t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                match seize_one(tid) {
                    Ok(stopped) => {
                        f.was_stopped |= stopped;
                        f.tids.push(tid);
                    }
                    // A thread that exited meanwhile is simply gone.
                    Err(e) if tid != pid && e.errno() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        return Err(DumpError::Sys {
                            pid: p,
                            stage: Stage::Freeze,
                            source: e,
                        })
                    }
                }
            }
        }
        // The main thread first: /proc lists tasks by number, and after
        // the PID counter wrapped a thread's TID can be below the PID.
        f.tids.sort_by_key(|&t| t != pid);
        Ok(f)
    }

    /// Records where remote calls can be made again (see [`Frozen::keeper`]).
    pub fn set_site(&mut self, vdso: (u64, u64), writable: Vec<(u64, u64)>) {
        self.site = Some((vdso, writable));
    }

    /// A memory keeper for a process about to be killed: a process made
    /// by a remote `clone(CLONE_VM | CLONE_PTRACE)`, which shares the
    /// target's memory and is stopped (traced by us) before it runs a
    /// single instruction. While it lives, the target's exit does not free
    /// its memory (the mm has another user), so the target's PIDs are free
    /// at once; the keeper is killed right after and frees the memory in
    /// its own exit, while the caller goes on (docs/architecture.md,
    /// "Freeing a killed tree's memory later"). Only after the image is
    /// complete (the target never runs again), for a process of our own
    /// PID namespace (the init of another one waits for every member
    /// anyway) holding at least [`KEEP_FROM`] bytes. None when any of that
    /// does not hold or a step fails: the kill then frees the memory first,
    /// as it always did.
    fn keeper(&mut self) -> Option<Pid> {
        let pid = self.pid;
        let (vdso, writable) = self.site.clone()?;
        if crate::checks::ns_id(&pid.0.to_string(), "pid") != crate::checks::ns_id("self", "pid") {
            return None;
        }
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", pid.0)).ok()?;
        let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        if resident * 4096 < KEEP_FROM {
            return None;
        }
        let mut r = RemoteThread::healing(pid, vdso, &writable).ok()?;
        // The exit signal is 0: no signal to anyone should it die early.
        let flags = (libc::CLONE_VM | libc::CLONE_PTRACE) as u64;
        let made = r.syscall(libc::SYS_clone, &[flags, 0, 0, 0, 0]);
        if let Err(e) = r.finish() {
            log::debug!("pid {}: after the keeper's clone: {e}", pid.0);
        }
        let k = match made {
            Ok(k) if k > 0 => Pid(k as i32),
            Ok(e) => {
                log::debug!("pid {}: no memory keeper: clone: errno {}", pid.0, -e);
                return None;
            }
            Err(e) => {
                log::debug!("pid {}: no memory keeper: {e}", pid.0);
                return None;
            }
        };
        // Traced from birth: it stops before its first instruction, and
        // dies should its tracer end (never to run the target's code).
        let stopped = match ptrace::wait(k) {
            Ok(Stop::Event { .. } | Stop::Signal(_)) => {
                ptrace::set_options(k, seize_options() | libc::PTRACE_O_EXITKILL)
                    .map_err(|e| e.to_string())
                    .and_then(|()| Self::own_session(k, vdso, &writable))
            }
            other => Err(format!("{other:?}")),
        };
        match stopped {
            Ok(()) => {
                log::debug!("pid {}: memory keeper {} holds its memory", pid.0, k.0);
                Some(k)
            }
            Err(why) => {
                log::warn!("pid {}: memory keeper {}: {why}; killed", pid.0, k.0);
                let _ = util::kill(k, libc::SIGKILL);
                reap_traced(k);
                None
            }
        }
    }

    /// Puts keeper `k` in a session of its own: it was born in the
    /// target's process group and session, and a PID that is still some
    /// process's group or session ID cannot be given to a restored process.
    /// Its registers (left at the target's stub, which is gone) are first
    /// pointed away from the stub site: it never runs them.
    fn own_session(
        k: Pid,
        vdso: (u64, u64),
        writable: &[(u64, u64)],
    ) -> std::result::Result<(), String> {
        let err = |e: stasis_sys::SysError| e.to_string();
        let mut regs = ptrace::get_regs(k).map_err(err)?;
        regs.rip = 0;
        regs.orig_rax = u64::MAX;
        ptrace::set_regs(k, &regs).map_err(err)?;
        let mut kr = RemoteThread::healing(k, vdso, writable).map_err(err)?;
        let sid = kr.syscall(libc::SYS_setsid, &[]);
        kr.finish().map_err(err)?;
        match sid.map_err(err)? {
            s if s == i64::from(k.0) => Ok(()),
            e => Err(format!("setsid: {e}")),
        }
    }

    pub fn set_remote(&mut self, r: RemoteThread) {
        self.remote = Some(r);
    }

    pub fn remote(&mut self) -> Option<&mut RemoteThread> {
        self.remote.as_mut()
    }

    /// Ends remote-syscall mode early, restoring the thread's context.
    pub fn finish_remote(&mut self) -> stasis_sys::Result<()> {
        match self.remote.take() {
            Some(r) => r.finish(),
            None => Ok(()),
        }
    }

    fn undo(&mut self) -> stasis_sys::Result<()> {
        let mut first_err = self.finish_remote().err();
        stasis_sys::hook::kill_point("before-detach");
        for &tid in &self.tids {
            if let Err(e) = ptrace::detach(tid, 0) {
                first_err.get_or_insert(e);
            }
        }
        self.done = true;
        first_err.map_or(Ok(()), Err)
    }

    /// Resumes the process as it was (dump with --leave-running).
    pub fn release(mut self) -> stasis_sys::Result<()> {
        self.undo()
    }

    /// Kills the process after a complete dump and reaps our trace of it.
    pub fn kill(mut self) -> stasis_sys::Result<()> {
        self.done = true;
        util::kill(self.pid, libc::SIGKILL)?;
        // Non-leader threads first: the leader's exit is reported only
        // once every other (traced) thread has been reaped.
        for &tid in self.tids.iter().rev() {
            // As tracer we see each thread die; the real parent then reaps the process.
            loop {
                match ptrace::wait(tid) {
                    Ok(Stop::Exited(_)) | Ok(Stop::Killed(_)) | Err(_) => break,
                    Ok(_) => {
                        let _ = ptrace::cont(tid, 0);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.undo() {
                log::warn!("pid {}: resuming after a failed dump: {e}", self.pid);
            }
        }
    }
}

/// The memory keepers of a killed tree (see [`Frozen::keeper`]) and the
/// write trackers of that memory. Dropping it kills the keepers, whose
/// exits free the memory while the caller goes on (a thread of ours takes
/// their exits, then closes the trackers). Should the thread that traced
/// them end first, the kernel kills them (PTRACE_O_EXITKILL).
#[derive(Debug, Default)]
pub struct Keepers {
    pids: Vec<Pid>,
    trackers: Vec<OwnedFd>,
}

impl Drop for Keepers {
    fn drop(&mut self) {
        let pids = std::mem::take(&mut self.pids);
        let trackers = std::mem::take(&mut self.trackers);
        if pids.is_empty() {
            return;
        }
        for &k in &pids {
            let _ = util::kill(k, libc::SIGKILL);
        }
        std::thread::spawn(move || {
            pids.into_iter().for_each(reap_traced);
            drop(trackers);
        });
    }
}

/// Takes the exit of `k`, a killed tracee of ours, from ptrace (its
/// parent reaps it then).
fn reap_traced(k: Pid) {
    while !matches!(
        ptrace::wait(k),
        Ok(Stop::Exited(_) | Stop::Killed(_)) | Err(_)
    ) {}
}

/// Processes holding less memory than this are killed without a keeper
/// (their exit frees it in well under a millisecond).
const KEEP_FROM: u64 = 64 << 20;

/// An exited, not yet reaped member of the tree.
pub struct ZombieInfo {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub exit_status: i32,
    pub exit_signal: u32,
}

/// A whole process tree, frozen parents first.
pub struct FrozenTree {
    /// Live processes in breadth-first order (parents before children).
    pub procs: Vec<Frozen>,
    pub zombies: Vec<ZombieInfo>,
}

impl FrozenTree {
    /// Freezes `root` and all its descendants: each process is frozen
    /// before its children are listed, so no new child can appear behind
    /// our back (a frozen process cannot fork).
    pub fn freeze(root: Pid) -> Result<FrozenTree> {
        let mut tree = FrozenTree {
            procs: Vec::new(),
            zombies: Vec::new(),
        };
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(p) = queue.pop_front() {
            let pu = p.0 as u32;
            let mut stat = match stasis_proc::read_stat(pu) {
                Ok(s) => s,
                Err(_) if p != root => continue, // exited and reaped meanwhile
                Err(e) => return Err(e).at(pu, Stage::Freeze),
            };
            // A child (its parent is frozen: it can only exit) that exits
            // between the read and the seize cannot be seized (EPERM on a
            // dying task): read again, and take it as the zombie it is.
            let mut frozen = None;
            if stat.state != 'Z' && stat.state != 'X' {
                match Frozen::freeze(p) {
                    Ok(f) => frozen = Some(f),
                    Err(e) if p != root => match stasis_proc::read_stat(pu) {
                        Ok(s) if s.state == 'Z' || s.state == 'X' => stat = s,
                        Ok(_) => return Err(e),
                        Err(_) => continue,
                    },
                    Err(e) => return Err(e),
                }
            }
            if stat.state == 'Z' || stat.state == 'X' {
                if p == root {
                    return Err(DumpError::Unsupported {
                        pid: pu,
                        stage: Stage::Freeze,
                        what: "a zombie".into(),
                    });
                }
                tree.zombies.push(ZombieInfo {
                    pid: pu,
                    ppid: stat.ppid,
                    pgid: stat.pgrp,
                    sid: stat.session,
                    exit_status: stat.exit_code,
                    exit_signal: stat.exit_signal.max(0) as u32,
                });
                continue;
            }
            let Some(f) = frozen else { continue };
            for &tid in &f.tids {
                let kids = stasis_proc::read_children(pu, tid.0 as u32).at(pu, Stage::Freeze)?;
                queue.extend(kids.into_iter().map(|k| Pid(k as i32)));
            }
            tree.procs.push(f);
        }
        Ok(tree)
    }

    /// Resumes every process as it was (dump with --leave-running).
    pub fn release(self) -> stasis_sys::Result<()> {
        let mut first = None;
        for f in self.procs {
            if let Err(e) = f.release() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Resumes every process as it was now, before the dump ends (a brief
    /// pre-dump round); the zombies' records stay.
    pub fn release_procs(&mut self) -> stasis_sys::Result<()> {
        let procs = std::mem::take(&mut self.procs);
        FrozenTree {
            procs,
            zombies: Vec::new(),
        }
        .release()
    }

    /// Kills every process after a complete dump.
    pub fn kill(self) -> stasis_sys::Result<()> {
        self.kill_tree()
    }

    /// [`FrozenTree::kill`], but each large process's memory is freed
    /// after its PIDs are (see [`Frozen::keeper`]). `trackers` (write
    /// trackers of the tree's memory) are closed once that memory is gone.
    /// The memory is freed when the returned [`Keepers`] is dropped.
    pub fn kill_freeing_later(
        mut self,
        trackers: Vec<OwnedFd>,
    ) -> (stasis_sys::Result<()>, Keepers) {
        let pids: Vec<Pid> = self.procs.iter_mut().filter_map(Frozen::keeper).collect();
        let r = self.kill_tree();
        if !pids.is_empty() {
            log::debug!("the tree is gone; its memory is held by {pids:?} until released");
        }
        (r, Keepers { pids, trackers })
    }

    fn kill_tree(self) -> stasis_sys::Result<()> {
        let mut first = None;
        // Leaves first: a parent (above all the init of a PID namespace,
        // which waits for every task of its namespace when it dies) cannot
        // finish exiting while its traced children are not yet released.
        // Every process is sent SIGKILL before any is waited for: the init
        // of a nested PID namespace waits for members whose parent is
        // outside it (still stopped otherwise) to be reaped.
        for f in self.procs.iter().rev() {
            let _ = util::kill(f.pid, libc::SIGKILL);
        }
        for f in self.procs.into_iter().rev() {
            if let Err(e) = f.kill() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
