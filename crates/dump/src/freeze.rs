//! Freezing a process from the outside, and the guard that always puts it back.

use crate::{At, DumpError, Result, Stage};
use stasis_sys::ptrace::{self, Stop, PTRACE_EVENT_STOP};
use stasis_sys::remote::RemoteThread;
use stasis_sys::{util, Pid};

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
    done: bool,
}

fn seize_one(tid: Pid) -> stasis_sys::Result<bool> {
    ptrace::seize(tid, libc::PTRACE_O_TRACESYSGOOD)?;
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
        Ok(f)
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
        for &tid in &self.tids {
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
