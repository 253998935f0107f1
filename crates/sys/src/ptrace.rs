//! ptrace(2) wrappers. See ptrace(2) for the stop model; stasis only uses
//! PTRACE_SEIZE-style tracing (or PTRACE_TRACEME for its own restore children).

use crate::{check, last_errno, Pid, Result, SysError};

/// x86-64 general registers, as `struct user_regs_struct`.
pub type Regs = libc::user_regs_struct;

pub const PTRACE_EVENT_STOP: i32 = 128;
const NT_PRSTATUS: libc::c_int = 1;
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Upper bound of the XSAVE area on any x86-64 CPU this code expects.
pub const XSTATE_MAX: usize = 64 * 1024;

fn raw(req: libc::c_uint, pid: Pid, addr: usize, data: usize, op: &str) -> Result<libc::c_long> {
    // SAFETY: ptrace with integer/pointer arguments; every caller passes either
    // 0 or a pointer to a live, correctly sized buffer for requests that
    // read or write through `addr`/`data`.
    let r = unsafe {
        libc::ptrace(
            req,
            pid.0,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    check(r, op, Some(pid))
}

/// PTRACE_SEIZE with the given PTRACE_O_* options; the task keeps running.
pub fn seize(pid: Pid, options: libc::c_int) -> Result<()> {
    raw(
        libc::PTRACE_SEIZE,
        pid,
        0,
        options as usize,
        "ptrace(PTRACE_SEIZE)",
    )
    .map(drop)
}

/// PTRACE_INTERRUPT: stop a seized task in PTRACE_EVENT_STOP.
pub fn interrupt(pid: Pid) -> Result<()> {
    raw(
        libc::PTRACE_INTERRUPT,
        pid,
        0,
        0,
        "ptrace(PTRACE_INTERRUPT)",
    )
    .map(drop)
}

pub fn set_options(pid: Pid, options: libc::c_int) -> Result<()> {
    raw(
        libc::PTRACE_SETOPTIONS,
        pid,
        0,
        options as usize,
        "ptrace(PTRACE_SETOPTIONS)",
    )
    .map(drop)
}

/// Resume, delivering `sig` (0 for none).
pub fn cont(pid: Pid, sig: i32) -> Result<()> {
    raw(
        libc::PTRACE_CONT,
        pid,
        0,
        sig as usize,
        "ptrace(PTRACE_CONT)",
    )
    .map(drop)
}

/// Resume until the next syscall entry or exit.
pub fn syscall(pid: Pid, sig: i32) -> Result<()> {
    raw(
        libc::PTRACE_SYSCALL,
        pid,
        0,
        sig as usize,
        "ptrace(PTRACE_SYSCALL)",
    )
    .map(drop)
}

/// Detach, delivering `sig` (0 for none).
pub fn detach(pid: Pid, sig: i32) -> Result<()> {
    raw(
        libc::PTRACE_DETACH,
        pid,
        0,
        sig as usize,
        "ptrace(PTRACE_DETACH)",
    )
    .map(drop)
}

/// PTRACE_TRACEME, called by a child of the tracer.
pub fn traceme() -> Result<()> {
    // SAFETY: PTRACE_TRACEME takes no pointer arguments.
    let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize) };
    check(r, "ptrace(PTRACE_TRACEME)", None).map(drop)
}

fn getregset(pid: Pid, nt: libc::c_int, buf: &mut [u8], op: &str) -> Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    raw(
        libc::PTRACE_GETREGSET,
        pid,
        nt as usize,
        std::ptr::addr_of_mut!(iov) as usize,
        op,
    )?;
    Ok(iov.iov_len)
}

fn setregset(pid: Pid, nt: libc::c_int, buf: &[u8], op: &str) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    raw(
        libc::PTRACE_SETREGSET,
        pid,
        nt as usize,
        std::ptr::addr_of_mut!(iov) as usize,
        op,
    )
    .map(drop)
}

/// General registers (NT_PRSTATUS), including fs_base and gs_base.
pub fn get_regs(pid: Pid) -> Result<Regs> {
    // SAFETY: user_regs_struct is plain integers; all-zero is valid.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<Regs>();
    // SAFETY: the slice covers exactly `regs`, which outlives it.
    let buf =
        unsafe { std::slice::from_raw_parts_mut(std::ptr::addr_of_mut!(regs).cast::<u8>(), size) };
    let n = getregset(
        pid,
        NT_PRSTATUS,
        buf,
        "ptrace(PTRACE_GETREGSET, NT_PRSTATUS)",
    )?;
    if n != size {
        return Err(SysError::other(
            "ptrace(PTRACE_GETREGSET, NT_PRSTATUS)",
            Some(pid),
            format!("short regset: {n} bytes"),
        ));
    }
    Ok(regs)
}

pub fn set_regs(pid: Pid, regs: &Regs) -> Result<()> {
    let size = std::mem::size_of::<Regs>();
    // SAFETY: the slice covers exactly `*regs`, plain integers.
    let buf = unsafe { std::slice::from_raw_parts(std::ptr::from_ref(regs).cast::<u8>(), size) };
    setregset(
        pid,
        NT_PRSTATUS,
        buf,
        "ptrace(PTRACE_SETREGSET, NT_PRSTATUS)",
    )
}

/// The full XSAVE area (NT_X86_XSTATE), in the standard (non-compacted) format.
pub fn get_xstate(pid: Pid) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let n = getregset(
        pid,
        NT_X86_XSTATE,
        &mut buf,
        "ptrace(PTRACE_GETREGSET, NT_X86_XSTATE)",
    )?;
    buf.truncate(n);
    Ok(buf)
}

pub fn set_xstate(pid: Pid, xstate: &[u8]) -> Result<()> {
    setregset(
        pid,
        NT_X86_XSTATE,
        xstate,
        "ptrace(PTRACE_SETREGSET, NT_X86_XSTATE)",
    )
}

/// Blocked signal mask (bit N-1 = signal N).
pub fn get_sigmask(pid: Pid) -> Result<u64> {
    let mut mask = 0u64;
    raw(
        libc::PTRACE_GETSIGMASK,
        pid,
        8,
        std::ptr::addr_of_mut!(mask) as usize,
        "ptrace(PTRACE_GETSIGMASK)",
    )?;
    Ok(mask)
}

pub fn set_sigmask(pid: Pid, mask: u64) -> Result<()> {
    let m = mask;
    raw(
        libc::PTRACE_SETSIGMASK,
        pid,
        8,
        std::ptr::addr_of!(m) as usize,
        "ptrace(PTRACE_SETSIGMASK)",
    )
    .map(drop)
}

/// rseq registration: (address, length, signature), or None.
pub fn get_rseq(pid: Pid) -> Result<Option<(u64, u32, u32)>> {
    #[repr(C)]
    #[derive(Default)]
    struct RseqConf {
        ptr: u64,
        size: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    let mut conf = RseqConf::default();
    raw(
        libc::PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        std::mem::size_of::<RseqConf>(),
        std::ptr::addr_of_mut!(conf) as usize,
        "ptrace(PTRACE_GET_RSEQ_CONFIGURATION)",
    )?;
    Ok((conf.ptr != 0).then_some((conf.ptr, conf.size, conf.sig)))
}

/// Reads one word of the tracee's memory (works on read-only pages).
/// Offset of `u_debugreg` in the x86-64 `struct user` (PTRACE_PEEKUSER).
const USER_DEBUGREG_OFF: u64 = 848;

/// Debug register `n` (0-7) of a stopped tracee (PTRACE_PEEKUSER).
pub fn debug_reg(pid: Pid, n: u64) -> Result<u64> {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: PEEKUSER reads the tracee's user area into the return value.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_PEEKUSER,
            pid.0,
            (USER_DEBUGREG_OFF + 8 * n) as usize as *mut libc::c_void,
            0usize,
        )
    };
    if r == -1 && last_errno() != 0 {
        return Err(SysError::new(
            "ptrace(PTRACE_PEEKUSER, debug register)",
            Some(pid),
            last_errno(),
        ));
    }
    Ok(r as u64)
}

/// Whether GDT TLS entry `entry` (12-14) of a stopped tracee is in use
/// (set_thread_area; PTRACE_GET_THREAD_AREA).
pub fn thread_area_used(pid: Pid, entry: u32) -> Result<bool> {
    const PTRACE_GET_THREAD_AREA: libc::c_uint = 25;
    // struct user_desc: entry_number, base_addr, limit, then a flags word.
    let mut desc = [0u32; 4];
    // SAFETY: the kernel writes one struct user_desc (16 bytes) into desc.
    let r = unsafe {
        libc::ptrace(
            PTRACE_GET_THREAD_AREA,
            pid.0,
            entry as usize as *mut libc::c_void,
            desc.as_mut_ptr(),
        )
    };
    if r == -1 {
        return Err(SysError::new(
            "ptrace(PTRACE_GET_THREAD_AREA)",
            Some(pid),
            last_errno(),
        ));
    }
    // An empty entry reads back as base 0, limit 0, read_exec_only and
    // seg_not_present set (flag bits 3 and 5), nothing else.
    Ok(desc[1] != 0 || desc[2] != 0 || desc[3] != 0b10_1000)
}

/// Whether syscall user dispatch is on for a stopped tracee
/// (PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG).
pub fn syscall_user_dispatch_on(pid: Pid) -> Result<bool> {
    const PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG: libc::c_uint = 0x4211;
    // struct ptrace_sud_config: mode, selector, offset, len.
    let mut cfg = [0u64; 4];
    // SAFETY: the kernel writes at most `addr` (= the struct's size) bytes into cfg.
    let r = unsafe {
        libc::ptrace(
            PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG,
            pid.0,
            std::mem::size_of_val(&cfg),
            cfg.as_mut_ptr(),
        )
    };
    if r == -1 {
        return Err(SysError::new(
            "ptrace(PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG)",
            Some(pid),
            last_errno(),
        ));
    }
    Ok(cfg[0] != 0)
}

pub fn peek(pid: Pid, addr: u64) -> Result<u64> {
    // PTRACE_PEEKDATA returns the word; -1 is ambiguous, so clear errno first.
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: PEEKDATA reads the tracee's memory, not ours.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_PEEKDATA,
            pid.0,
            addr as usize as *mut libc::c_void,
            0usize,
        )
    };
    if r == -1 {
        let e = last_errno();
        if e != 0 {
            return Err(SysError::new(
                format!("ptrace(PTRACE_PEEKDATA, {addr:#x})"),
                Some(pid),
                e,
            ));
        }
    }
    Ok(r as u64)
}

/// Writes one word of the tracee's memory, even into read-only or executable
/// private pages (the kernel breaks copy-on-write).
pub fn poke(pid: Pid, addr: u64, word: u64) -> Result<()> {
    raw(
        libc::PTRACE_POKEDATA,
        pid,
        addr as usize,
        word as usize,
        &format!("ptrace(PTRACE_POKEDATA, {addr:#x})"),
    )
    .map(drop)
}

/// What `waitpid` reported for a traced task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Exited(i32),
    Killed(i32),
    /// Syscall entry or exit (PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// A PTRACE_EVENT_* stop; for PTRACE_EVENT_STOP, `sig` tells interrupt (SIGTRAP) from group stop.
    Event {
        event: i32,
        sig: i32,
    },
    /// Signal-delivery stop (or a TRACEME child's stop).
    Signal(i32),
}

/// waitpid(pid, __WALL) until it reports something.
pub fn wait(pid: Pid) -> Result<Stop> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid.0, &mut status, libc::__WALL) };
        if r == -1 {
            let e = last_errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(SysError::new("waitpid", Some(pid), e));
        }
        break;
    }
    Ok(decode_status(status))
}

pub fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        Stop::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Stop::Killed(libc::WTERMSIG(status))
    } else {
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if sig == (libc::SIGTRAP | 0x80) {
            Stop::Syscall
        } else if event != 0 {
            Stop::Event { event, sig }
        } else {
            Stop::Signal(sig)
        }
    }
}

/// Pending signals of a stopped tracee, without dequeuing them
/// (PTRACE_PEEKSIGINFO): the thread's own queue, or with `shared` the
/// process-wide one. Each entry is a raw 128-byte `siginfo_t`.
pub fn peek_siginfo(pid: Pid, shared: bool) -> Result<Vec<[u8; 128]>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const PEEKSIGINFO_SHARED: u32 = 1;
    let mut out = Vec::new();
    let mut buf = vec![[0u8; 128]; 64];
    loop {
        let args = PeekArgs {
            off: out.len() as u64,
            flags: if shared { PEEKSIGINFO_SHARED } else { 0 },
            nr: 64,
        };
        let n = raw(
            libc::PTRACE_PEEKSIGINFO,
            pid,
            std::ptr::addr_of!(args) as usize,
            buf.as_mut_ptr() as usize,
            "ptrace(PTRACE_PEEKSIGINFO)",
        )?;
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    Ok(out)
}

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_GET_SECCOMP_METADATA: libc::c_uint = 0x420d;
/// PTRACE_O_SUSPEND_SECCOMP: the tracee's seccomp filters do not apply
/// while it is traced with this option (restore: the remote calls after
/// its filters are installed).
pub const PTRACE_O_SUSPEND_SECCOMP: libc::c_int = 1 << 21;
/// One classic BPF instruction (`struct sock_filter`).
pub const BPF_INSN_LEN: usize = 8;

/// Every seccomp filter of the stopped tracee `tid`, oldest first: the
/// program (BPF_INSN_LEN bytes per instruction) and its flags (only
/// SECCOMP_FILTER_FLAG_LOG is reported by the kernel).
pub fn seccomp_filters(tid: Pid) -> Result<Vec<(Vec<u8>, u64)>> {
    let mut out = Vec::new();
    for idx in 0usize.. {
        let n = match raw(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            idx,
            0,
            "ptrace(PTRACE_SECCOMP_GET_FILTER)",
        ) {
            Err(e) if e.errno() == Some(libc::ENOENT) => break,
            r => r? as usize,
        };
        let mut prog = vec![0u8; n * BPF_INSN_LEN];
        let got = raw(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            idx,
            prog.as_mut_ptr() as usize,
            "ptrace(PTRACE_SECCOMP_GET_FILTER)",
        )? as usize;
        prog.truncate(got * BPF_INSN_LEN);
        // struct seccomp_metadata { u64 filter_off; u64 flags; }
        let mut meta = [idx as u64, 0u64];
        raw(
            PTRACE_GET_SECCOMP_METADATA,
            tid,
            std::mem::size_of_val(&meta),
            meta.as_mut_ptr() as usize,
            "ptrace(PTRACE_GET_SECCOMP_METADATA)",
        )?;
        out.push((prog, meta[1]));
    }
    Ok(out)
}
