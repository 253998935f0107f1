//! Creating a restore child: fork with a chosen PID, place its descriptors,
//! stop under ptrace. Also the syscall-stub area the restorer injects through.

use crate::clone::{exit_now, fork_with_pid, Forked};
use crate::ptrace::{self, Stop};
use crate::{check, last_errno, remote, Pid, Result, SysError};

/// Where the child's descriptors come from. Every `srcs[i]` (a descriptor of
/// the caller) is first duplicated to `staging + i`; everything below
/// `staging` is closed; then each target `(i, fd, cloexec)` moves
/// `staging + i` to `fd`. Sources not named by a target stay at
/// `staging + i` ("service" descriptors for the restorer).
#[derive(Debug, Clone, Default)]
pub struct FdPlan {
    pub staging: i32,
    pub srcs: Vec<i32>,
    pub targets: Vec<(usize, i32, bool)>,
}

/// Exit codes of a child that failed before stopping.
pub fn child_failure(code: i32) -> &'static str {
    match code {
        2 => "the restorer died before the child started",
        3 => "duplicating descriptors to the staging range failed",
        4 => "placing a descriptor at its number failed",
        5 => "ptrace(PTRACE_TRACEME) failed",
        _ => "the child exited unexpectedly",
    }
}

/// Forks a child with PID `pid` (clone3 set_tid), which arranges its
/// descriptors by `plan`, blocks all signals and stops itself traced by us
/// with PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD. Returns it stopped.
/// On failure the child is killed and reaped.
pub fn spawn_stopped(pid: i32, plan: &FdPlan) -> Result<Pid> {
    let parent = crate::util::getpid().0;
    // SAFETY: the child only executes raw syscalls on data prepared before
    // the fork (no allocation, no locks) and leaves by _exit or by being
    // rebuilt under ptrace.
    match unsafe { fork_with_pid(&[pid], 0)? } {
        Forked::Child => child(parent, plan),
        Forked::Parent(child) => {
            let res = (|| {
                match ptrace::wait(child)? {
                    Stop::Signal(libc::SIGSTOP) => {}
                    Stop::Exited(code) => {
                        return Err(SysError::other(
                            "start restore child",
                            Some(child),
                            child_failure(code),
                        ))
                    }
                    other => {
                        return Err(SysError::other(
                            "start restore child",
                            Some(child),
                            format!("unexpected state {other:?}"),
                        ))
                    }
                }
                ptrace::set_options(child, libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACESYSGOOD)
            })();
            if let Err(e) = res {
                kill_and_reap(child);
                return Err(e);
            }
            Ok(child)
        }
    }
}

/// SIGKILL a child of ours and reap it.
pub fn kill_and_reap(child: Pid) {
    kill_and_reap_threads(child, &[]);
}

/// SIGKILL a child of ours whose other threads `threads` we trace, and reap
/// them all: traced threads first, since the leader's exit is reported
/// only after every other traced thread has been waited for.
pub fn kill_and_reap_threads(child: Pid, threads: &[Pid]) {
    let _ = crate::util::kill(child, libc::SIGKILL);
    for &t in threads {
        let _ = crate::util::waitpid(t, libc::__WALL);
    }
    let _ = crate::util::waitpid(child, libc::__WALL);
}

fn child(parent: i32, plan: &FdPlan) -> ! {
    // SAFETY: raw syscalls with integer arguments or pointers to memory
    // that lives for the call; no allocation (this runs right after a fork).
    unsafe {
        libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::syscall(libc::SYS_getppid) as i32 != parent {
            exit_now(2);
        }
        let all: u64 = !0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            0usize,
            8usize,
        );
        for (i, &src) in plan.srcs.iter().enumerate() {
            if libc::syscall(libc::SYS_dup2, src, plan.staging + i as i32) < 0 {
                exit_now(3);
            }
        }
        libc::syscall(libc::SYS_close_range, 0u32, (plan.staging - 1) as u32, 0u32);
        libc::syscall(
            libc::SYS_close_range,
            (plan.staging + plan.srcs.len() as i32) as u32,
            u32::MAX,
            0u32,
        );
        for &(i, fd, cloexec) in &plan.targets {
            let from = plan.staging + i as i32;
            let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
            if libc::syscall(libc::SYS_dup3, from, fd, flags) < 0 {
                exit_now(4);
            }
            libc::syscall(libc::SYS_close, from);
        }
        if libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) < 0 {
            exit_now(5);
        }
        libc::syscall(
            libc::SYS_kill,
            libc::syscall(libc::SYS_getpid),
            libc::SIGSTOP,
        );
        exit_now(6)
    }
}

/// Maps the stub area in the caller at `addr` (`len` bytes, fixed, never
/// replacing anything): the first page holds [`remote::STUB`] (r-x), the
/// rest is scratch (rw-). A child forked afterwards inherits it.
pub fn map_stub_area(addr: u64, len: u64) -> Result<()> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no
    // memory of ours changes; on success we own the new range.
    let p = unsafe {
        libc::mmap(
            addr as usize as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(SysError::new(
            format!("mmap stub area at {addr:#x}"),
            None,
            last_errno(),
        ));
    }
    if p as u64 != addr {
        // Old kernels ignore NOREPLACE and treat it as a hint.
        // SAFETY: unmapping the range the kernel just gave us.
        unsafe { libc::munmap(p, len as usize) };
        return Err(SysError::new(
            format!("mmap stub area at {addr:#x}"),
            None,
            libc::EEXIST,
        ));
    }
    // SAFETY: p points to a fresh, writable mapping of at least one page.
    unsafe {
        std::ptr::copy_nonoverlapping(remote::STUB.as_ptr(), p.cast::<u8>(), remote::STUB.len())
    };
    // SAFETY: changing protection of the first page of our own new mapping.
    let r = unsafe { libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC) };
    check(r.into(), "mprotect stub", None)?;
    Ok(())
}

pub fn unmap_stub_area(addr: u64, len: u64) {
    // SAFETY: the range was mapped by map_stub_area and nothing of ours lives there.
    unsafe { libc::munmap(addr as usize as *mut libc::c_void, len as usize) };
}
