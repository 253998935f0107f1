//! Remote system calls: making a stopped tracee execute a syscall for us.
//!
//! Two flavours share one mechanism, a 16-byte stub:
//!
//! ```text
//!   0f 05            syscall            ; the injected call
//!   b8 0f 00 00 00   mov  eax, 15       ; __NR_rt_sigreturn
//!   0f 05            syscall            ; return to the saved context
//!   cc ...           int3 (padding)
//! ```
//!
//! * **Healing** (dump): the stub is written into the zero padding at the end
//!   of the target's own `[vdso]` (PTRACE_POKEDATA breaks copy-on-write on
//!   that page only; no new mapping), and below the thread's red zone we
//!   build a real `rt_sigframe` holding the thread's original registers
//!   (with the kernel's syscall-restart fix-up applied), its blocked mask,
//!   its sigaltstack and its full XSAVE area. Every injected register set
//!   points `rsp` at that frame. If the dumper dies at *any* moment, the
//!   kernel detaches the tracee, which finishes the injected syscall (always
//!   a harmless query whose output lands in scratch memory below the frame),
//!   then executes `rt_sigreturn` and carries on exactly where it was
//!   stopped. The first injected call is `sigaltstack(NULL, &frame.uc_stack)`,
//!   so the frame's altstack is filled by the kernel itself before any
//!   `rt_sigreturn` can read it.
//! * **Plain** (restore): the stub lives in a page stasis mapped into its own
//!   restore child, which is traced with PTRACE_O_EXITKILL: a half-built
//!   process must die with its restorer.

use crate::ptrace::{self, Regs, Stop};
use crate::{mem, Pid, Result, SysError};

/// The stub's bytes (see the module docs).
pub const STUB: [u8; 16] = [
    0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
];

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
/// Size of `struct rt_sigframe` on x86-64 (pretcode + ucontext + siginfo).
const RT_SIGFRAME_SIZE: u64 = 440;
const UC_STACK_OFF: u64 = 24;
const MCONTEXT_OFF: usize = 48;
const SIGMASK_OFF: usize = 304;
/// Bytes below the frame for syscall arguments and results.
pub const HEAL_SCRATCH: u64 = 4096;
const RED_ZONE: u64 = 128;

/// Applies what the kernel does to a task leaving an interrupted syscall
/// with no signal handler to run: restartable errors re-execute the syscall.
/// `-ERESTART_RESTARTBLOCK` (sleeps) also re-executes the original call,
/// since its restart block does not survive; relative sleeps start over.
/// The result has `orig_rax = -1`, so the kernel applies nothing further.
pub fn restart_fixed(r: &Regs) -> Regs {
    let mut x = *r;
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK => {
                x.rax = r.orig_rax;
                x.rip = r.rip.wrapping_sub(2);
            }
            _ => {}
        }
    }
    x.orig_rax = u64::MAX;
    x
}

/// Writes the sigframe `_fpx_sw_bytes` into an XSAVE image from ptrace (whose
/// sw area holds XCR0 in its first word) and appends FP_XSTATE_MAGIC2.
fn sigframe_fpstate(xstate: &[u8]) -> Vec<u8> {
    let mut fp = xstate.to_vec();
    if fp.len() >= 512 {
        let xcr0 = u64::from_le_bytes(fp[464..472].try_into().unwrap_or([0; 8]));
        let size = fp.len() as u32;
        fp[464..468].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        fp[468..472].copy_from_slice(&(size + 4).to_le_bytes());
        fp[472..480].copy_from_slice(&xcr0.to_le_bytes());
        fp[480..484].copy_from_slice(&size.to_le_bytes());
        fp[484..512].fill(0);
    }
    fp.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    fp
}

fn put(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Builds the rt_sigframe (at `frame`) plus the fpstate (at `fpstate`).
fn build_frame(frame: u64, fpstate: u64, regs: &Regs, mask: u64, fp: &[u8]) -> Vec<u8> {
    let total = (fpstate - frame) as usize + fp.len();
    let mut b = vec![0u8; total];
    put(
        &mut b,
        8,
        UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
    );
    let m = MCONTEXT_OFF;
    let gp = [
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rdi,
        regs.rsi,
        regs.rbp,
        regs.rbx,
        regs.rdx,
        regs.rax,
        regs.rcx,
        regs.rsp,
        regs.rip,
        regs.eflags,
    ];
    for (i, v) in gp.iter().enumerate() {
        put(&mut b, m + i * 8, *v);
    }
    // cs, gs, fs, ss as u16 at m+144.
    let segs = [
        regs.cs as u16,
        regs.gs as u16,
        regs.fs as u16,
        regs.ss as u16,
    ];
    for (i, s) in segs.iter().enumerate() {
        b[m + 144 + i * 2..m + 146 + i * 2].copy_from_slice(&s.to_le_bytes());
    }
    put(&mut b, m + 184, fpstate);
    put(&mut b, SIGMASK_OFF, mask);
    let off = (fpstate - frame) as usize;
    b[off..off + fp.len()].copy_from_slice(fp);
    b
}

struct Heal {
    orig_regs: Regs,
    orig_mask: u64,
    frame: u64,
    patch: u64,
}

/// A stopped thread that executes system calls on our behalf.
pub struct RemoteThread {
    tid: Pid,
    stub: u64,
    scratch: u64,
    scratch_len: u64,
    /// Register set the injections start from (segment registers, fs/gs base).
    base: Regs,
    heal: Option<Heal>,
    /// A signal-delivery stop for SIGSTOP seen while injecting: re-delivered on finish.
    pending_stop: bool,
}

impl RemoteThread {
    /// Prepares self-healing injection into a thread that is seized and stopped
    /// in PTRACE_EVENT_STOP. `vdso` is its `[vdso]` range; `writable` lists
    /// its writable mappings, to check the frame fits on the stack. `xstate`
    /// is the thread's XSAVE area as read by [`ptrace::get_xstate`].
    /// Nothing about the thread changes if this fails.
    pub fn healing(
        tid: Pid,
        vdso: (u64, u64),
        writable: &[(u64, u64)],
        xstate: &[u8],
    ) -> Result<RemoteThread> {
        let orig_regs = ptrace::get_regs(tid)?;
        let orig_mask = ptrace::get_sigmask(tid)?;
        let patch = vdso
            .1
            .checked_sub(STUB.len() as u64)
            .filter(|p| *p >= vdso.0)
            .ok_or_else(|| {
                SysError::other(
                    "prepare remote syscalls",
                    Some(tid),
                    "no [vdso] mapping to hold the syscall stub",
                )
            })?;
        let w0 = ptrace::peek(tid, patch)?;
        let w1 = ptrace::peek(tid, patch + 8)?;
        if w0 != 0 || w1 != 0 {
            return Err(SysError::other(
                "prepare remote syscalls",
                Some(tid),
                format!("the tail of [vdso] at {patch:#x} is not free padding"),
            ));
        }
        let fp = sigframe_fpstate(xstate);
        let top = orig_regs.rsp.wrapping_sub(RED_ZONE);
        let fpstate = top.wrapping_sub(fp.len() as u64) & !63;
        let frame = fpstate.wrapping_sub(RT_SIGFRAME_SIZE) & !15;
        let scratch = frame.wrapping_sub(HEAL_SCRATCH) & !63;
        let fits = writable
            .iter()
            .any(|&(s, e)| s <= scratch && orig_regs.rsp <= e && scratch < orig_regs.rsp);
        if !fits {
            return Err(SysError::other(
                "prepare remote syscalls",
                Some(tid),
                format!(
                    "stack pointer {:#x} has no {} writable bytes below it",
                    orig_regs.rsp,
                    orig_regs.rsp - scratch
                ),
            ));
        }
        let frame_bytes = build_frame(frame, fpstate, &restart_fixed(&orig_regs), orig_mask, &fp);
        mem::write_bytes(tid, frame, &frame_bytes)?;
        ptrace::poke(
            tid,
            patch,
            u64::from_le_bytes(STUB[0..8].try_into().unwrap_or_default()),
        )?;
        ptrace::poke(
            tid,
            patch + 8,
            u64::from_le_bytes(STUB[8..16].try_into().unwrap_or_default()),
        )?;
        let mut t = RemoteThread {
            tid,
            stub: patch,
            scratch,
            scratch_len: frame - scratch,
            base: orig_regs,
            heal: Some(Heal {
                orig_regs,
                orig_mask,
                frame,
                patch,
            }),
            pending_stop: false,
        };
        // First call: let the kernel write the altstack into the frame. From
        // here on the injected context heals itself if we disappear.
        let r = t.syscall(libc::SYS_sigaltstack, &[0, frame + UC_STACK_OFF]);
        let r = match r {
            Ok(v) => v,
            Err(e) => {
                // The stub and frame are in place but may not have run; undo.
                let _ = t.finish();
                return Err(e);
            }
        };
        if r < 0 {
            let _ = t.finish();
            return Err(SysError::new("remote sigaltstack", Some(tid), (-r) as i32));
        }
        // Block every signal while we inject; rt_sigreturn would restore the
        // original mask, and finish() does too.
        if let Err(e) = ptrace::set_sigmask(tid, !0) {
            let _ = t.finish();
            return Err(e);
        }
        Ok(t)
    }

    /// Injection through a stub already mapped in the tracee (restore). The
    /// tracee must be stopped (a signal-delivery or syscall stop) and traced
    /// with PTRACE_O_TRACESYSGOOD.
    pub fn plain(tid: Pid, stub: u64, scratch: u64, scratch_len: u64) -> Result<RemoteThread> {
        let base = ptrace::get_regs(tid)?;
        Ok(RemoteThread {
            tid,
            stub,
            scratch,
            scratch_len,
            base,
            heal: None,
            pending_stop: false,
        })
    }

    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// Original registers (healing mode) or the registers at attach (plain).
    pub fn orig_regs(&self) -> Regs {
        self.heal.as_ref().map(|h| h.orig_regs).unwrap_or(self.base)
    }

    pub fn orig_sigmask(&self) -> Option<u64> {
        self.heal.as_ref().map(|h| h.orig_mask)
    }

    /// Address and length of scratch memory in the tracee.
    pub fn scratch(&self) -> (u64, u64) {
        (self.scratch, self.scratch_len)
    }

    pub fn write_scratch(&self, off: u64, data: &[u8]) -> Result<u64> {
        if off + data.len() as u64 > self.scratch_len {
            return Err(SysError::other(
                "write scratch",
                Some(self.tid),
                "argument too large for scratch area",
            ));
        }
        mem::write_bytes(self.tid, self.scratch + off, data)?;
        Ok(self.scratch + off)
    }

    pub fn read_scratch(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        if off + len as u64 > self.scratch_len {
            return Err(SysError::other(
                "read scratch",
                Some(self.tid),
                "read beyond scratch area",
            ));
        }
        mem::read_bytes(self.tid, self.scratch + off, len)
    }

    /// Moves the stub (restore: after the address space was rebuilt the
    /// stub page stays where it was mapped, but callers may relocate scratch).
    pub fn set_scratch(&mut self, scratch: u64, len: u64) {
        self.scratch = scratch;
        self.scratch_len = len;
    }

    /// Executes syscall `nr` with up to six arguments; returns the raw result
    /// (a negative errno on failure).
    pub fn syscall(&mut self, nr: libc::c_long, args: &[u64]) -> Result<i64> {
        let mut r = self.base;
        r.rip = self.stub;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        r.rdi = a(0);
        r.rsi = a(1);
        r.rdx = a(2);
        r.r10 = a(3);
        r.r8 = a(4);
        r.r9 = a(5);
        r.rsp = match &self.heal {
            Some(h) => h.frame + 8,
            None => self.scratch + self.scratch_len,
        };
        ptrace::set_regs(self.tid, &r)?;
        self.step_to_syscall(nr)?; // entry
        self.step_to_syscall(nr)?; // exit
        let out = ptrace::get_regs(self.tid)?;
        Ok(out.rax as i64)
    }

    /// Like [`Self::syscall`], but a negative result becomes an error naming `what`.
    pub fn call(&mut self, nr: libc::c_long, args: &[u64], what: &str) -> Result<u64> {
        let r = self.syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(SysError::new(
                format!("remote {what}"),
                Some(self.tid),
                (-r) as i32,
            ));
        }
        Ok(r as u64)
    }

    fn step_to_syscall(&mut self, nr: libc::c_long) -> Result<()> {
        loop {
            ptrace::syscall(self.tid, 0)?;
            match ptrace::wait(self.tid)? {
                Stop::Syscall => return Ok(()),
                Stop::Signal(libc::SIGSTOP) => self.pending_stop = true,
                Stop::Signal(_) | Stop::Event { .. } => {
                    // Everything else is blocked; an event stop here is an
                    // INTERRUPT from elsewhere or a group stop: just go on.
                }
                Stop::Exited(c) => {
                    return Err(SysError::other(
                        format!("remote syscall {nr}"),
                        Some(self.tid),
                        format!("task exited with status {c}"),
                    ))
                }
                Stop::Killed(s) => {
                    return Err(SysError::other(
                        format!("remote syscall {nr}"),
                        Some(self.tid),
                        format!("task killed by signal {s}"),
                    ))
                }
            }
        }
    }

    /// Healing mode: puts the thread back exactly as it was found, stopped in
    /// PTRACE_EVENT_STOP with its original registers and mask, so that
    /// resuming it applies the kernel's own syscall-restart logic. Plain
    /// mode: nothing to undo. The thread stays traced and stopped.
    pub fn finish(mut self) -> Result<()> {
        let Some(h) = self.heal.take() else {
            return Ok(());
        };
        let tid = self.tid;
        ptrace::set_sigmask(tid, h.orig_mask)?;
        // Leave the syscall stop for an interrupt stop taken before any user
        // instruction runs (INTERRUPT sets TIF_SIGPENDING).
        ptrace::interrupt(tid)?;
        ptrace::cont(tid, 0)?;
        loop {
            match ptrace::wait(tid)? {
                Stop::Event {
                    event: ptrace::PTRACE_EVENT_STOP,
                    ..
                } => break,
                Stop::Signal(libc::SIGSTOP) => {
                    self.pending_stop = true;
                    ptrace::cont(tid, 0)?;
                }
                Stop::Signal(s) => ptrace::cont(tid, s)?,
                Stop::Syscall | Stop::Event { .. } => ptrace::cont(tid, 0)?,
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(SysError::other(
                        "finish remote syscalls",
                        Some(tid),
                        "task died",
                    ))
                }
            }
        }
        ptrace::set_regs(tid, &h.orig_regs)?;
        ptrace::poke(tid, h.patch, 0)?;
        ptrace::poke(tid, h.patch + 8, 0)?;
        if self.pending_stop {
            crate::util::kill(tid, libc::SIGSTOP)?;
        }
        Ok(())
    }
}

/// Reads a NUL-free C struct field helper: little-endian u64 at `off`.
pub fn le_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

pub fn le_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}
