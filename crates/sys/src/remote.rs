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
//!   that page only; no new mapping) or, in a process that unmapped its
//!   vDSO, into the zero padding past the end of an executable ELF segment
//!   in the last page of its mapping (the dump's `stub_site` module finds
//!   it: bytes that belong to no segment, never executed or read by the
//!   program), and below the thread's red zone we
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

use crate::hook::{fail_point, kill_point};
use crate::ptrace::{self, Regs, Stop};
use crate::{mem, xsave, Pid, Result, SysError};

/// The stub's bytes (see the module docs).
pub const STUB: [u8; 16] = [
    0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
];

/// The restore stub page: [`STUB`], then at [`AMX_WARMUP_OFF`] a sequence
/// that makes the kernel enable AMX tile state for the thread running it:
///
/// ```text
///   c4 e2 78 49 07   ldtilecfg [rdi]   ; a tile configuration in scratch
///   c4 e2 7b 49 c0   tilezero  tmm0    ; first use: the kernel grows the
///                                      ; thread's XSAVE buffer (XFD fault)
///   0f 05            syscall           ; stop here (rax: a harmless call)
/// ```
///
/// Until a thread has used AMX the kernel refuses (EINVAL) an XSAVE area
/// with live tile data through PTRACE_SETREGSET; asking for the permission
/// is not enough.
pub const RESTORE_STUB: [u8; 32] = {
    let amx: [u8; 12] = [
        0xc4, 0xe2, 0x78, 0x49, 0x07, 0xc4, 0xe2, 0x7b, 0x49, 0xc0, 0x0f, 0x05,
    ];
    let mut s = [0xcc; 32];
    let mut i = 0;
    while i < STUB.len() {
        s[i] = STUB[i];
        i += 1;
    }
    let mut j = 0;
    while j < amx.len() {
        s[AMX_WARMUP_OFF as usize + j] = amx[j];
        j += 1;
    }
    s
};

/// Offset of the AMX warm-up sequence in [`RESTORE_STUB`].
pub const AMX_WARMUP_OFF: u64 = 16;

/// Length of the healing stubs written into the `[vdso]` padding.
const HEAL_STUB_LEN: usize = 64;
/// Bytes a stub site must offer (see [`RemoteThread::healing`]).
pub const HEAL_STUB_BYTES: u64 = HEAL_STUB_LEN as u64;

/// Healing stub for a thread stopped anywhere but in `restart_syscall`:
/// the injected call, then `rt_sigreturn` to the frame.
const HEAL_STUB: [u8; HEAL_STUB_LEN] = {
    let mut s = [0xcc; HEAL_STUB_LEN];
    let mut i = 0;
    while i < STUB.len() {
        s[i] = STUB[i];
        i += 1;
    }
    s
};

/// Healing stub for a thread stopped inside `restart_syscall` (a sleep that
/// was already interrupted once, by a stop signal or an earlier dump).
/// `rt_sigreturn` resets the kernel's restart block, so such a thread
/// cannot simply be sent back to re-execute `restart_syscall` through the
/// frame: it would get EINTR. This stub therefore runs `restart_syscall`
/// itself *before* any `rt_sigreturn`, with the original mask back in
/// place, stores the result into the frame's rax, and only then returns to
/// the original context (whose rip is already past its `syscall`):
///
/// ```text
///   0f 05                     syscall                 ; the injected call
///   bf 02 00 00 00            mov  edi, 2             ; SIG_SETMASK
///   48 8d b4 24 28 01 00 00   lea  rsi, [rsp+0x128]   ; &frame.uc_sigmask
///   31 d2                     xor  edx, edx
///   41 ba 08 00 00 00         mov  r10d, 8
///   b8 0e 00 00 00            mov  eax, 14            ; rt_sigprocmask
///   0f 05                     syscall
///   b8 db 00 00 00            mov  eax, 219           ; restart_syscall
///   0f 05                     syscall
///   48 89 84 24 90 00 00 00   mov  [rsp+0x90], rax    ; frame.uc_mcontext.rax
///   b8 0f 00 00 00            mov  eax, 15            ; rt_sigreturn
///   0f 05                     syscall
/// ```
///
/// (`rsp` is frame + 8 throughout; a signal handler running meanwhile
/// builds its frame below it.) If the restarted call is interrupted again
/// without a handler, the kernel's own restart logic re-executes the
/// `syscall` above with rax = restart_syscall.
const HEAL_STUB_RESTART: [u8; HEAL_STUB_LEN] = {
    let code: [u8; 52] = [
        0x0f, 0x05, 0xbf, 0x02, 0x00, 0x00, 0x00, 0x48, 0x8d, 0xb4, 0x24, 0x28, 0x01, 0x00, 0x00,
        0x31, 0xd2, 0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0xb8, 0x0e, 0x00, 0x00, 0x00, 0x0f, 0x05,
        0xb8, 0xdb, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x89, 0x84, 0x24, 0x90, 0x00, 0x00, 0x00,
        0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05,
    ];
    let mut s = [0xcc; HEAL_STUB_LEN];
    let mut i = 0;
    while i < code.len() {
        s[i] = code[i];
        i += 1;
    }
    s
};

const NR_RESTART_SYSCALL: u64 = 219;

/// A stub as the words poked into the tracee.
fn words(stub: &[u8; HEAL_STUB_LEN]) -> [u64; HEAL_STUB_LEN / 8] {
    let mut out = [0u64; HEAL_STUB_LEN / 8];
    for (i, w) in out.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&stub[i * 8..i * 8 + 8]);
        *w = u64::from_le_bytes(b);
    }
    out
}

/// Whether the bytes at the end of `[vdso]` (or of another stub site, see
/// the module docs) may hold a healing stub.
///
/// Invariant: the padding past the end of the vDSO image is never executed
/// or read by the program, and stasis only ever writes a healing stub
/// there. So each word is either zero (free padding) or the matching word
/// of one of the stubs, left by an earlier stasis that was killed between
/// poking a stub and zeroing it again (possibly halfway). Both are safe to
/// overwrite; anything else is not padding and is refused.
pub fn padding_is_ours(found: &[u64]) -> bool {
    let (a, b) = (words(&HEAL_STUB), words(&HEAL_STUB_RESTART));
    found.len() == a.len()
        && found
            .iter()
            .enumerate()
            .all(|(i, &w)| w == 0 || w == a[i] || w == b[i])
}

/// Whether `r` is a thread stopped inside an interrupted `restart_syscall`.
fn in_restart_syscall(r: &Regs) -> bool {
    r.orig_rax == NR_RESTART_SYSCALL && r.rax as i64 == ERESTART_RESTARTBLOCK
}

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

/// The fpstate of a healing frame: the thread's XSAVE area from ptrace, cut
/// to the size the kernel accepts for this task's signal frames (see
/// [`xsave::sigframe_layout`]: on CPUs with AMX that is less than ptrace's
/// size until the task uses AMX), with the sigframe `_fpx_sw_bytes` in the
/// software-reserved bytes and FP_XSTATE_MAGIC2 appended.
fn sigframe_fpstate(xstate: &[u8]) -> Vec<u8> {
    if xstate.len() < xsave::HEADER_END {
        return xstate.to_vec();
    }
    let (size, features) = xsave::sigframe_layout(xstate);
    let mut fp = xstate[..size].to_vec();
    let bv = xsave::xstate_bv(&fp) & features;
    fp[xsave::HEADER_OFF..xsave::HEADER_OFF + 8].copy_from_slice(&bv.to_le_bytes());
    let sw = xsave::SW_RESERVED_OFF;
    let size = size as u32;
    fp[sw..sw + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    fp[sw + 4..sw + 8].copy_from_slice(&(size + 4).to_le_bytes());
    fp[sw + 8..sw + 16].copy_from_slice(&features.to_le_bytes());
    fp[sw + 16..sw + 20].copy_from_slice(&size.to_le_bytes());
    fp[sw + 20..512].fill(0);
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
    /// The thread was stopped inside the stub itself: leave it in place.
    keep_stub: bool,
}

/// Remote system calls executed by this process so far (each one is a
/// ptrace round trip: set registers, two syscall stops, get registers).
static REMOTE_SYSCALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many remote system calls this process has executed so far; the
/// difference across an operation is its count.
pub fn remote_syscalls() -> u64 {
    REMOTE_SYSCALLS.load(std::sync::atomic::Ordering::Relaxed)
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
    /// in PTRACE_EVENT_STOP. `vdso` is the stub site: its `[vdso]` range,
    /// or a range of never-used executable bytes (the stub goes into the
    /// last [`HEAL_STUB_BYTES`] bytes of it); `writable` lists
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
            .checked_sub(HEAL_STUB_LEN as u64)
            .filter(|p| *p >= vdso.0)
            .ok_or_else(|| {
                SysError::other(
                    "prepare remote syscalls",
                    Some(tid),
                    "no [vdso] mapping, nor zero padding past an executable segment, to hold the syscall stub",
                )
            })?;
        let mut found = Vec::with_capacity(HEAL_STUB_LEN / 8);
        for i in 0..HEAL_STUB_LEN as u64 / 8 {
            found.push(ptrace::peek(tid, patch + i * 8)?);
        }
        if !padding_is_ours(&found) {
            return Err(SysError::other(
                "prepare remote syscalls",
                Some(tid),
                format!("the stub site at {patch:#x} (end of [vdso] or of an executable segment) is not free padding"),
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
        // The context the frame returns to. Normally the original one with
        // the kernel's restart fix-up applied (an interrupted call runs
        // again). Inside restart_syscall that is impossible (rt_sigreturn
        // resets the restart block), so the stub restarts the call itself
        // first and the frame returns past it (see HEAL_STUB_RESTART).
        let (stub, frame_regs) = if in_restart_syscall(&orig_regs) {
            let mut x = orig_regs;
            x.orig_rax = u64::MAX;
            (&HEAL_STUB_RESTART, x)
        } else {
            (&HEAL_STUB, restart_fixed(&orig_regs))
        };
        // A thread may be stopped *inside* a stub left by an earlier stasis
        // that was killed (typically sleeping in the restart stub's
        // restart_syscall). That code must stay exactly as it is (zeroing
        // or rewriting it would crash the thread), and registers pointing
        // into it would make an image no restore can run. Refused before
        // the thread is touched: it leaves the stub within a few
        // instructions, or when its restarted call returns.
        let stub_area = patch..patch + HEAL_STUB_LEN as u64;
        let keep_stub = stub_area.contains(&orig_regs.rip);
        if keep_stub {
            return Err(SysError::other(
                "prepare remote syscalls",
                Some(tid),
                "the thread is still running the healing stub of a stasis that was killed; \
                 try again once its interrupted call has returned",
            ));
        }
        let frame_bytes = build_frame(frame, fpstate, &frame_regs, orig_mask, &fp);
        mem::write_bytes(tid, frame, &frame_bytes)?;
        kill_point("heal-frame");
        for (i, w) in words(stub).iter().enumerate() {
            ptrace::poke(tid, patch + i as u64 * 8, *w)?;
            if i == 3 {
                kill_point("heal-stub-half");
            }
        }
        kill_point("heal-stub");
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
                keep_stub,
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
        kill_point("heal-mask");
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
        self.inject(self.stub, nr, args)
    }

    /// Restore only: runs the AMX warm-up sequence of [`RESTORE_STUB`] in
    /// this thread (which must be allowed to use AMX: ARCH_REQ_XCOMP_PERM),
    /// so that its tile state can then be set through ptrace.
    pub fn amx_warmup(&mut self) -> Result<()> {
        if self.heal.is_some() {
            return Err(SysError::other(
                "AMX warm-up",
                Some(self.tid),
                "only in a process being restored",
            ));
        }
        // Palette 1; tmm0: 16 rows of 64 bytes.
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        cfg[16..18].copy_from_slice(&64u16.to_le_bytes());
        cfg[48] = 16;
        let at = self.write_scratch(0, &cfg)?;
        let r = self.inject(self.stub + AMX_WARMUP_OFF, libc::SYS_getpid, &[at])?;
        if r < 0 {
            return Err(SysError::new("AMX warm-up", Some(self.tid), (-r) as i32));
        }
        Ok(())
    }

    /// Runs the code at `entry` (which ends in a `syscall`) with `nr` and
    /// `args` in the syscall registers; returns rax after that syscall.
    fn inject(&mut self, entry: u64, nr: libc::c_long, args: &[u64]) -> Result<i64> {
        REMOTE_SYSCALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log::trace!("tid {}: remote syscall {nr}", self.tid);
        let mut r = self.base;
        r.rip = entry;
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
        // From here until finish() the thread holds an injected register
        // set; in healing mode its rsp is the sigframe, so a dumper killed
        // at any of these points leaves a thread that runs the injected
        // query, then rt_sigreturn, and is back where it was stopped.
        kill_point("inject-set-regs");
        self.step_to_syscall(nr)?; // entry
        kill_point("syscall-entry");
        self.step_to_syscall(nr)?; // exit
        kill_point("syscall-exit");
        if fail_point("syscall-exit") {
            return Err(SysError::other(
                format!("remote syscall {nr}"),
                Some(self.tid),
                "injected fault (STASIS_FAULT)",
            ));
        }
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
                // Injected code faulted (restore: every signal is blocked,
                // so these can only be synchronous): resuming would run
                // the faulting instruction again forever.
                Stop::Signal(s @ (libc::SIGILL | libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE))
                    if self.heal.is_none() =>
                {
                    return Err(SysError::other(
                        format!("remote syscall {nr}"),
                        Some(self.tid),
                        format!("injected code faulted with signal {s}"),
                    ))
                }
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
        // Order matters: until set_regs below the thread still holds an
        // injected register set, whose rt_sigreturn restores the original
        // mask anyway; the original registers never run with the all-blocked
        // injection mask.
        ptrace::set_sigmask(tid, h.orig_mask)?;
        kill_point("finish-mask");
        // Leave the syscall stop for an interrupt stop taken before any user
        // instruction runs (INTERRUPT sets TIF_SIGPENDING).
        ptrace::interrupt(tid)?;
        ptrace::cont(tid, 0)?;
        kill_point("finish-cont");
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
        kill_point("finish-stop");
        ptrace::set_regs(tid, &h.orig_regs)?;
        // The original registers are back: from here on the stub is never
        // run again; a kill below leaves (part of) it in the padding, which
        // the next dump recognises (see padding_is_ours).
        kill_point("finish-regs");
        for i in 0..HEAL_STUB_LEN as u64 / 8 * u64::from(!h.keep_stub) {
            ptrace::poke(tid, h.patch + i * 8, 0)?;
            if i == 3 {
                kill_point("finish-unpatch-half");
            }
        }
        kill_point("finish-unpatch");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_stub_is_recognised() {
        let (a, b) = (words(&HEAL_STUB), words(&HEAL_STUB_RESTART));
        assert!(padding_is_ours(&[0; 8]));
        assert!(padding_is_ours(&a));
        assert!(padding_is_ours(&b));
        let mut half = a;
        half[..4].fill(0);
        assert!(padding_is_ours(&half));
        let mut mixed = b;
        mixed[0] = a[0];
        assert!(padding_is_ours(&mixed));
        let mut swapped = a;
        swapped.swap(0, 1);
        assert!(!padding_is_ours(&swapped));
        let mut other = [0u64; 8];
        other[7] = 1;
        assert!(!padding_is_ours(&other));
        assert!(!padding_is_ours(&[0; 2]));
    }

    #[test]
    fn restart_stub_offsets_match_the_frame() {
        // rsp = frame + 8 while the stub runs.
        let disp =
            |at: usize| u32::from_le_bytes(HEAL_STUB_RESTART[at..at + 4].try_into().unwrap());
        assert_eq!(disp(11) as usize, SIGMASK_OFF - 8);
        assert_eq!(disp(41) as usize, MCONTEXT_OFF + 13 * 8 - 8);
        assert_eq!(&HEAL_STUB_RESTART[50..52], &[0x0f, 0x05]);
    }
}
