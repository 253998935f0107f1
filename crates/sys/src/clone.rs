//! clone3(2) with `set_tid`: a child with a chosen PID.

use crate::{last_errno, Pid, Result, SysError};

/// `struct clone_args` of clone3(2).
#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// What [`fork_with_pid`] returned in this process.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// Forks the calling thread like fork(2), but the child gets PID `tids[0]` in
/// the innermost PID namespace (`tids` lists the PID for each namespace
/// level, innermost first; see clone3(2)). `flags` may add CLONE_NEW* flags.
///
/// # Safety
/// Like fork(2) in a multithreaded program: the child may only use
/// async-signal-safe operations (raw syscalls, no allocation, no locks)
/// until it execs or exits, and it must not return into code that assumes
/// glibc's cached thread id (glibc is not told about this fork).
pub unsafe fn fork_with_pid(tids: &[i32], flags: u64) -> Result<Forked> {
    // SAFETY: the caller's contract, forwarded.
    unsafe { fork_with_pid_fd(tids, flags, None) }
}

/// [`fork_with_pid`], also asking clone3 for a pidfd of the child
/// (CLONE_PIDFD), written to `pidfd` in the parent: a handle that names
/// this child even after it is reaped and its PID reused.
///
/// # Safety
/// As [`fork_with_pid`].
pub unsafe fn fork_with_pid_fd(
    tids: &[i32],
    mut flags: u64,
    pidfd: Option<&mut i32>,
) -> Result<Forked> {
    let set: Vec<libc::pid_t> = tids.to_vec();
    let pidfd_at = match pidfd {
        Some(p) => {
            flags |= libc::CLONE_PIDFD as u64;
            p as *mut i32 as u64
        }
        None => 0,
    };
    let args = CloneArgs {
        flags,
        pidfd: pidfd_at,
        // clone3 refuses an exit signal with CLONE_PARENT: the child gets
        // the caller's own.
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        set_tid: if set.is_empty() {
            0
        } else {
            set.as_ptr() as u64
        },
        set_tid_size: set.len() as u64,
        ..Default::default()
    };
    // SAFETY: args is a valid clone_args of the size passed; with stack = 0
    // the child continues on a copy of our stack, like fork(2). The caller
    // upholds the post-fork restrictions.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        -1 => {
            let e = last_errno();
            let what = match e {
                libc::EEXIST => format!(
                    "PID {} is already in use",
                    tids.first().copied().unwrap_or(0)
                ),
                _ => format!("clone3 with PID {}", tids.first().copied().unwrap_or(0)),
            };
            Err(SysError::new(what, tids.first().map(|&p| Pid(p)), e))
        }
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid(pid as i32))),
    }
}

/// Terminates the calling process at once (no atexit handlers, no flushing):
/// the only safe exit for a forked child.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Runs `f(arg)` on a new thread of the calling process and waits for it
/// to end: a raw clone (CLONE_VM | CLONE_THREAD and the rest a thread
/// shares), on `stack`, with no libc thread state. What the thread does
/// to its own credentials (raw setresuid and the like change the calling
/// thread only) stays with it, while what it makes reports the process's
/// PID: SO_PEERCRED records the caller's thread group and credentials.
/// False if the thread could not be made.
///
/// # Safety
/// `f` may make raw syscalls only: it shares the caller's thread-local
/// storage and signal handlers. `stack` is used by nothing else until
/// this returns.
pub unsafe fn on_raw_thread(f: extern "C" fn(usize), arg: usize, stack: &mut [u8]) -> bool {
    const FLAGS: libc::c_long = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID) as libc::c_long;
    let tid = std::sync::atomic::AtomicI32::new(0);
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    let tid_at = tid.as_ptr();
    let ret: libc::c_long;
    // SAFETY: clone(flags, top, &tid, &tid, 0). The new thread starts on
    // `top` (16-byte aligned, so f is entered as the ABI wants), calls
    // f(arg) and exits the thread alone (SYS_exit); it never returns here.
    // The kernel writes its TID to `tid` before clone returns to us and
    // clears it, with a futex wake, when the thread is gone.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "mov eax, 60",
            "xor edi, edi",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone => ret,
            in("rdi") FLAGS,
            in("rsi") top,
            in("rdx") tid_at,
            in("r10") tid_at,
            in("r8") 0usize,
            in("r12") arg,
            in("r13") f as usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return false;
    }
    loop {
        let t = tid.load(std::sync::atomic::Ordering::Acquire);
        if t == 0 {
            return true;
        }
        // SAFETY: waits on our own word; the kernel's wake at the thread's
        // exit is a shared futex wake, so this wait is not private.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                tid_at,
                libc::FUTEX_WAIT,
                t,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }
}
