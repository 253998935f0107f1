//! Remote system calls: making a stopped tracee execute a syscall for us.
//!
//! * **Healing** (dump): the code below is written into the zero padding at
//!   the end of the target's own `[vdso]` (PTRACE_POKEDATA breaks
//!   copy-on-write on that page only; no new mapping), followed by a data
//!   block holding the thread's original context: the registers a syscall
//!   and the stub clobber (with the kernel's syscall-restart fix-up
//!   applied), its blocked mask, and the original bytes of the small
//!   scratch area the injected calls write their results into. Every
//!   injected register set points `rip` at the stub and leaves `rsp` and
//!   every other register as the thread had them. If the dumper dies at
//!   *any* moment, the kernel detaches the tracee, which finishes the
//!   injected syscall (always a harmless query), copies the scratch bytes
//!   back, restores its mask and registers, and jumps to where it was
//!   stopped. Nothing is written below the stack pointer and no byte of the
//!   program's memory stays changed: the scratch bytes are put back by the
//!   dumper (or by the stub) before the thread runs again.
//!
//!   An earlier design built an `rt_sigframe` (registers + 2.8 KiB XSAVE +
//!   4 KiB scratch) below the thread's red zone and left it there. That is
//!   dead memory only under the C ABI: a Go thread runs on a goroutine
//!   stack of a few KiB carved out of the heap, with other goroutines'
//!   stacks right below it, so the dump zeroed their return addresses and
//!   every Go program (even with `dump -R`) died moments later.
//! * **Plain** (restore): the stub lives in a page stasis mapped into its own
//!   restore child, which is traced with PTRACE_O_EXITKILL: a half-built
//!   process must die with its restorer.

use crate::hook::{fail_point, kill_point};
use crate::ptrace::{self, Regs, Stop};
use crate::{mem, Pid, Result, SysError};

/// The plain stub's bytes: the injected call, then `rt_sigreturn`
/// (restore only: its stub page is the restorer's own).
///
/// ```text
///   0f 05            syscall            ; the injected call
///   b8 0f 00 00 00   mov  eax, 15       ; __NR_rt_sigreturn
///   0f 05            syscall
///   cc ...           int3 (padding)
/// ```
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
pub const RESTORE_STUB: [u8; 96] = {
    let amx: [u8; 12] = [
        0xc4, 0xe2, 0x78, 0x49, 0x07, 0xc4, 0xe2, 0x7b, 0x49, 0xc0, 0x0f, 0x05,
    ];
    let mut s = [0xcc; 96];
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
    let mut m = 0;
    while m < SINGLE.len() {
        s[SINGLE_OFF as usize + m] = SINGLE[m];
        m += 1;
    }
    let mut k = 0;
    while k < BATCH_LOOP.len() {
        s[BATCH_OFF as usize + k] = BATCH_LOOP[k];
        k += 1;
    }
    s
};

/// Offset of the AMX warm-up sequence in [`RESTORE_STUB`].
pub const AMX_WARMUP_OFF: u64 = 16;
/// Offset of [`SINGLE`] in [`RESTORE_STUB`] (between the AMX warm-up and
/// the batch loop).
pub const SINGLE_OFF: u64 = 28;
/// One call that stops once: `syscall; int3`. A single restore call runs
/// here with PTRACE_CONT and costs one ptrace stop (the trap) instead of
/// two (syscall entry and exit) for stepping through [`STUB`].
pub const SINGLE: [u8; 3] = [0x0f, 0x05, 0xcc];
const _: () =
    assert!(AMX_WARMUP_OFF + 12 <= SINGLE_OFF && SINGLE_OFF + SINGLE.len() as u64 <= BATCH_OFF);
/// Offset of [`BATCH_LOOP`] in [`RESTORE_STUB`].
pub const BATCH_OFF: u64 = 32;

/// The batch loop of the restore stub: runs `r13` system calls described
/// by 64-byte records at `r12` (number, six arguments, result written
/// back), stopping after the first that fails, then traps (`int3`), so a
/// whole list of calls costs one ptrace round trip:
///
/// ```text
///   loop: test r13, r13 ; jz done
///         mov rax, [r12]      ; mov rdi, [r12+8] ; mov rsi, [r12+16]
///         mov rdx, [r12+24]   ; mov r10, [r12+32]; mov r8, [r12+40]
///         mov r9, [r12+48]    ; syscall          ; mov [r12+56], rax
///         cmp rax, -4095      ; jae done         ; an error: stop here
///         add r12, 64         ; dec r13          ; jmp loop
///   done: int3
/// ```
pub const BATCH_LOOP: [u8; 64] = [
    0x4d, 0x85, 0xed, 0x74, 0x3a, 0x49, 0x8b, 0x04, 0x24, 0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b,
    0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44,
    0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x48, 0x3d,
    0x01, 0xf0, 0xff, 0xff, 0x73, 0x09, 0x49, 0x83, 0xc4, 0x40, 0x49, 0xff, 0xcd, 0xeb, 0xc1, 0xcc,
];
/// Bytes of one batch record.
const BATCH_RECORD: usize = 64;
/// Most records run in one round trip.
pub const BATCH_MAX: usize = 512;

/// One system call of a batch: number and six arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchCall {
    pub nr: libc::c_long,
    pub args: [u64; 6],
}

impl BatchCall {
    pub fn new(nr: libc::c_long, args: &[u64]) -> BatchCall {
        let mut a = [0u64; 6];
        a[..args.len().min(6)].copy_from_slice(&args[..args.len().min(6)]);
        BatchCall { nr, args: a }
    }
}

/// Bytes at the end of `[vdso]` used while healing: code, data, saved scratch.
pub const HEAL_AREA_LEN: u64 = 320;
/// Offset of the context block in the healing area (after the code).
const HEAL_CODE_LEN: usize = 128;
const HEAL_DATA_OFF: usize = HEAL_CODE_LEN;
/// Offset of the original scratch bytes in the healing area.
const HEAL_SAVED_OFF: usize = 256;
/// Scratch bytes for the injected calls' results (every dump query fits).
pub const HEAL_SCRATCH: u64 = 64;
/// Bytes of the healing code written (and, from its end, removed) in the
/// first of two writes.
const HEAL_HALF: usize = 32;

/// Words of the context block, in order.
const D_SRC: usize = 0;
const D_DST: usize = 1;
const D_LEN: usize = 2;
const D_MASK: usize = 3;
const D_RAX: usize = 4;
const D_RDI: usize = 5;
const D_RSI: usize = 6;
const D_RDX: usize = 7;
const D_R10: usize = 8;
const D_R8: usize = 9;
const D_R9: usize = 10;
const D_RCX: usize = 11;
const D_R11: usize = 12;
const D_RIP: usize = 13;
const D_WORDS: usize = 14;
// The context block fits between the code and the saved bytes, which end the area.
const _: () = assert!(
    HEAL_DATA_OFF + D_WORDS * 8 <= HEAL_SAVED_OFF
        && HEAL_SAVED_OFF as u64 + HEAL_SCRATCH == HEAL_AREA_LEN
);

/// The healing stub: the injected call, then the way back to the original
/// context without touching the stack or the flags (only `mov`, `lea`,
/// `rep movsb` and syscalls, which keep rflags):
///
/// ```text
///   0f 05                  syscall                  ; the injected call
///   48 8b 35 <d>           mov  rsi, [rip+SRC]      ; saved scratch bytes
///   48 8b 3d <d>           mov  rdi, [rip+DST]      ; scratch area
///   48 8b 0d <d>           mov  rcx, [rip+LEN]
///   f3 a4                  rep movsb                ; scratch put back
///   bf 02 00 00 00         mov  edi, 2              ; SIG_SETMASK
///   48 8d 35 <d>           lea  rsi, [rip+MASK]
///   ba 00 00 00 00         mov  edx, 0
///   41 ba 08 00 00 00      mov  r10d, 8
///   b8 0e 00 00 00         mov  eax, 14             ; rt_sigprocmask
///   0f 05                  syscall                  ; mask put back
///   48 8b 05 <d> ...       mov  rax/rdi/rsi/rdx/r10/r8/r9/rcx/r11, [rip+..]
///   ff 25 <d>              jmp  [rip+RIP]           ; original context
/// ```
///
/// `rep movsb` follows the direction flag, which is the thread's own: the
/// context block gives the last bytes instead of the first when it is set.
/// The scratch bytes go back before the mask: a signal handler that runs
/// once the mask is back sees the program's memory as it was.
fn heal_code() -> [u8; HEAL_CODE_LEN] {
    fn rip_rel(c: &mut Vec<u8>, op: &[u8], word: usize) {
        c.extend_from_slice(op);
        let next = c.len() + 4;
        let target = HEAL_DATA_OFF + word * 8;
        c.extend_from_slice(&((target as i32) - (next as i32)).to_le_bytes());
    }
    let mut c: Vec<u8> = Vec::with_capacity(HEAL_CODE_LEN);
    c.extend_from_slice(&[0x0f, 0x05]);
    rip_rel(&mut c, &[0x48, 0x8b, 0x35], D_SRC);
    rip_rel(&mut c, &[0x48, 0x8b, 0x3d], D_DST);
    rip_rel(&mut c, &[0x48, 0x8b, 0x0d], D_LEN);
    c.extend_from_slice(&[0xf3, 0xa4]);
    c.extend_from_slice(&[0xbf, 0x02, 0x00, 0x00, 0x00]);
    rip_rel(&mut c, &[0x48, 0x8d, 0x35], D_MASK);
    c.extend_from_slice(&[0xba, 0x00, 0x00, 0x00, 0x00]);
    c.extend_from_slice(&[0x41, 0xba, 0x08, 0x00, 0x00, 0x00]);
    c.extend_from_slice(&[0xb8, 0x0e, 0x00, 0x00, 0x00]);
    c.extend_from_slice(&[0x0f, 0x05]);
    for (op, word) in [
        ([0x48, 0x8b, 0x05], D_RAX),
        ([0x48, 0x8b, 0x3d], D_RDI),
        ([0x48, 0x8b, 0x35], D_RSI),
        ([0x48, 0x8b, 0x15], D_RDX),
        ([0x4c, 0x8b, 0x15], D_R10),
        ([0x4c, 0x8b, 0x05], D_R8),
        ([0x4c, 0x8b, 0x0d], D_R9),
        ([0x48, 0x8b, 0x0d], D_RCX),
        ([0x4c, 0x8b, 0x1d], D_R11),
    ] {
        rip_rel(&mut c, &op, word);
    }
    rip_rel(&mut c, &[0xff, 0x25], D_RIP);
    let mut out = [0xcc; HEAL_CODE_LEN];
    out[..c.len()].copy_from_slice(&c);
    out
}

/// Bytes as the words poked into the tracee.
fn to_words(b: &[u8]) -> Vec<u64> {
    b.chunks(8)
        .map(|w| {
            let mut x = [0u8; 8];
            x[..w.len()].copy_from_slice(w);
            u64::from_le_bytes(x)
        })
        .collect()
}

/// The healing area of a `[vdso]` mapping: its last [`HEAL_AREA_LEN`] bytes.
pub fn heal_area(vdso: (u64, u64)) -> Option<std::ops::Range<u64>> {
    let start = vdso.1.checked_sub(HEAL_AREA_LEN)?;
    (start >= vdso.0).then_some(start..vdso.1)
}

/// Whether the bytes at the end of `[vdso]` (or of another healing site:
/// zero padding past an executable ELF segment in a process without a
/// vDSO, found by the dump's `stub_site` module) may hold the healing area.
///
/// Invariant: the padding past the end of the vDSO image is never executed
/// or read by the program, and stasis only ever writes its healing area
/// there: the code first, then the data; when done, the data is zeroed
/// first, then the code. So every code word is zero or the stub's own,
/// and a non-zero data word implies the whole code is in place (left by an
/// earlier stasis killed in between). Anything else is not padding and is
/// refused.
pub fn padding_is_ours(found: &[u64]) -> bool {
    let code = to_words(&heal_code());
    if found.len() != HEAL_AREA_LEN as usize / 8 {
        return false;
    }
    let (c, d) = found.split_at(code.len());
    let code_ok = c.iter().zip(&code).all(|(&w, &s)| w == 0 || w == s);
    let code_whole = c == code.as_slice();
    code_ok && (code_whole || d.iter().all(|&w| w == 0))
}

const NR_RESTART_SYSCALL: u64 = 219;
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

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

/// The direction flag in rflags.
const EFLAGS_DF: u64 = 1 << 10;

/// The context block: where the stub copies the scratch bytes from and to,
/// the original mask, and the registers to return with.
fn context_block(area: u64, scratch: u64, back: &Regs, mask: u64) -> [u64; D_WORDS] {
    let saved = area + HEAL_SAVED_OFF as u64;
    // Backwards when the thread's direction flag is set.
    let last = if back.eflags & EFLAGS_DF != 0 {
        HEAL_SCRATCH - 1
    } else {
        0
    };
    let mut d = [0u64; D_WORDS];
    d[D_SRC] = saved + last;
    d[D_DST] = scratch + last;
    d[D_LEN] = HEAL_SCRATCH;
    d[D_MASK] = mask;
    d[D_RAX] = back.rax;
    d[D_RDI] = back.rdi;
    d[D_RSI] = back.rsi;
    d[D_RDX] = back.rdx;
    d[D_R10] = back.r10;
    d[D_R8] = back.r8;
    d[D_R9] = back.r9;
    d[D_RCX] = back.rcx;
    d[D_R11] = back.r11;
    d[D_RIP] = back.rip;
    d
}

/// Bytes below the stack pointer left alone when picking the scratch area.
const RED_ZONE: u64 = 128;

struct Heal {
    orig_regs: Regs,
    orig_mask: u64,
    /// Start of the healing area in `[vdso]`.
    area: u64,
    /// The scratch area's original bytes, written back by finish().
    saved: Vec<u8>,
    /// The thread's memory, to write the area.
    fmem: mem::ForcedMem,
}

/// Remote system calls executed by this process so far.
static REMOTE_SYSCALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// ptrace round trips they took (one per call, or one per batch: set
/// registers, run, get registers).
static ROUND_TRIPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many remote system calls this process has executed so far; the
/// difference across an operation is its count.
pub fn remote_syscalls() -> u64 {
    REMOTE_SYSCALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// How many ptrace round trips those calls took.
pub fn round_trips() -> u64 {
    ROUND_TRIPS.load(std::sync::atomic::Ordering::Relaxed)
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
    /// Calls queued by [`RemoteThread::queue`], each with what it does (for
    /// its error), run as one batch before any other injection.
    queued: Vec<(BatchCall, String)>,
    /// Bytes of scratch given out by [`RemoteThread::stage`] since the last
    /// flush, from [`STAGE_BASE`] up.
    staged: u64,
    /// Where the records of a batch [`RemoteThread::flush_start`] started
    /// are (its results are read by `flush_end`).
    started: Option<u64>,
}

/// Where staged data for queued calls starts in the scratch area (below
/// it: the arguments of single calls).
const STAGE_BASE: u64 = 4096;

impl RemoteThread {
    /// Prepares self-healing injection into a thread that is seized and stopped
    /// in PTRACE_EVENT_STOP. `vdso` is its `[vdso]` range (or, without a
    /// vDSO, a range of never-used executable padding whose last
    /// [`HEAL_AREA_LEN`] bytes hold the area); `writable` lists
    /// its private writable mappings, where the scratch area may go. The
    /// caller must have checked that no thread of the process is inside the
    /// healing area ([`in_heal_area`]). Nothing about the thread changes if
    /// this fails; once it succeeds, the thread's registers point at the
    /// stub and a dumper dying at any instant leaves it unharmed.
    pub fn healing(tid: Pid, vdso: (u64, u64), writable: &[(u64, u64)]) -> Result<RemoteThread> {
        let orig_regs = ptrace::get_regs(tid)?;
        let orig_mask = ptrace::get_sigmask(tid)?;
        let area = heal_area(vdso).ok_or_else(|| {
            SysError::other(
                "prepare remote syscalls",
                Some(tid),
                "no [vdso] mapping, nor zero padding past an executable segment, to hold the syscall stub",
            )
        })?;
        // The area is read and written through /proc/TID/mem: a few
        // system calls instead of a PEEKDATA or POKEDATA per word.
        let fmem = mem::ForcedMem::open(tid)?;
        let mut bytes = [0u8; HEAL_AREA_LEN as usize];
        fmem.read(area.start, &mut bytes)?;
        let found = to_words(&bytes);
        if !padding_is_ours(&found) {
            return Err(SysError::other(
                "prepare remote syscalls",
                Some(tid),
                format!(
                    "the healing site at {:#x} (end of [vdso] or of an executable segment) is not free padding",
                    area.start
                ),
            ));
        }
        // A thread stopped inside the stub of an earlier stasis that was
        // killed is a few instructions from its own context; its registers
        // are half restored and the area must not change under it.
        if area.contains(&orig_regs.rip) {
            return Err(SysError::other(
                "prepare remote syscalls",
                Some(tid),
                "the thread is still running the healing stub of a stasis that was killed; \
                 try again once it has left it",
            ));
        }
        // Scratch: just below the red zone when that is private writable
        // memory (it is put back byte for byte, so it need not be free),
        // else the start of the first private writable mapping.
        let below = orig_regs.rsp.wrapping_sub(RED_ZONE + HEAL_SCRATCH) & !15;
        let inside = |a: u64| {
            writable
                .iter()
                .any(|&(s, e)| s <= a && a + HEAL_SCRATCH <= e)
        };
        let scratch = if inside(below) {
            below
        } else {
            writable
                .iter()
                .find(|&&(s, e)| e - s >= HEAL_SCRATCH)
                .map(|&(s, _)| s)
                .ok_or_else(|| {
                    SysError::other(
                        "prepare remote syscalls",
                        Some(tid),
                        "no private writable memory for the scratch area",
                    )
                })?
        };
        let saved = mem::read_bytes(tid, scratch, HEAL_SCRATCH as usize)?;
        // The context the stub returns to: the original one with the
        // kernel's own restart fix-up applied. Nothing here calls
        // rt_sigreturn, so the restart block of an interrupted sleep is
        // intact: it goes on through restart_syscall, as the kernel does.
        let mut back = restart_fixed(&orig_regs);
        if (orig_regs.orig_rax as i64) >= 0 && orig_regs.rax as i64 == ERESTART_RESTARTBLOCK {
            back.rax = NR_RESTART_SYSCALL;
        }
        // Each write lands whole or not at all should we be killed (one
        // copy into one page); the code goes in two, as a dumper killed
        // between them may leave it (see padding_is_ours).
        let code = heal_code();
        fmem.write(area.start, &code[..HEAL_HALF])?;
        kill_point("heal-stub-half");
        fmem.write(area.start + HEAL_HALF as u64, &code[HEAL_HALF..])?;
        kill_point("heal-stub");
        let mut data: Vec<u8> = context_block(area.start, scratch, &back, orig_mask)
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        data.resize(HEAL_SAVED_OFF - HEAL_DATA_OFF, 0);
        data.extend_from_slice(&saved);
        fmem.write(area.start + HEAL_DATA_OFF as u64, &data)?;
        kill_point("heal-frame");
        let t = RemoteThread {
            tid,
            stub: area.start,
            scratch,
            scratch_len: HEAL_SCRATCH,
            base: orig_regs,
            heal: Some(Heal {
                orig_regs,
                orig_mask,
                area: area.start,
                saved,
                fmem,
            }),
            pending_stop: false,
            queued: Vec::new(),
            staged: 0,
            started: None,
        };
        // Park the thread on the stub (a getpid, should we vanish now), then
        // block every signal while we inject: the stub puts the mask back.
        let park = t.injected(t.stub, libc::SYS_getpid, &[]);
        if let Err(e) = ptrace::set_regs(tid, &park).and_then(|_| ptrace::set_sigmask(tid, !0)) {
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
            queued: Vec::new(),
            staged: 0,
            started: None,
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

    /// The register set that runs syscall `nr` through the stub. Healing
    /// mode keeps the thread's own stack pointer (nothing is pushed);
    /// plain mode runs on the scratch area.
    fn injected(&self, entry: u64, nr: libc::c_long, args: &[u64]) -> Regs {
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
        if self.heal.is_none() {
            r.rsp = self.scratch + self.scratch_len;
        }
        r
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

    /// Whether a call may unmap, move, replace or change the code page of
    /// the stub: it must then stop at its syscall exit, before the thread
    /// fetches another instruction from there.
    fn may_touch_stub(&self, nr: libc::c_long, args: &[u64]) -> bool {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        let hits = |start: u64, len: u64| {
            start < self.stub + 4096 && self.stub < start.saturating_add(len)
        };
        match nr {
            libc::SYS_munmap
            | libc::SYS_mmap
            | libc::SYS_mprotect
            | libc::SYS_pkey_mprotect
            | libc::SYS_madvise
            | libc::SYS_remap_file_pages => hits(a(0), a(1)),
            libc::SYS_mremap => hits(a(0), a(1)) || hits(a(4), a(2)),
            libc::SYS_shmat | libc::SYS_shmdt => true,
            _ => false,
        }
    }

    /// Runs the code at `entry` (which ends in a `syscall`) with `nr` and
    /// `args` in the syscall registers; returns rax after that syscall.
    /// Restore mode: a plain call runs through [`SINGLE`] (one stop).
    fn inject(&mut self, entry: u64, nr: libc::c_long, args: &[u64]) -> Result<i64> {
        self.flush()?;
        REMOTE_SYSCALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log::trace!("tid {}: remote syscall {nr}", self.tid);
        if self.heal.is_none() && entry == self.stub && !self.may_touch_stub(nr, args) {
            let r = self.injected(self.stub + SINGLE_OFF, nr, args);
            ptrace::set_regs(self.tid, &r)?;
            self.run_to_trap()?;
            if fail_point("syscall-exit") {
                return Err(SysError::other(
                    format!("remote syscall {nr}"),
                    Some(self.tid),
                    "injected fault (STASIS_FAULT)",
                ));
            }
            return Ok(ptrace::get_regs(self.tid)?.rax as i64);
        }
        let r = self.injected(entry, nr, args);
        ptrace::set_regs(self.tid, &r)?;
        // From here until finish() the thread holds an injected register
        // set; in healing mode a dumper killed at any of these points leaves
        // a thread that runs the injected query, then the rest of the stub,
        // and is back where it was stopped with its memory as it was.
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

    /// Restore only (the queue never holds calls in healing mode): runs
    /// `calls` in order through the stub's batch loop, [`BATCH_MAX`] per
    /// ptrace round trip, and returns their results. Stops after the first
    /// call that fails (a result in -4095..-1): the results then end with
    /// that one, the calls after it not run.
    fn run_batch(&mut self, calls: &[BatchCall]) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(BATCH_MAX) {
            let done = self.batch_chunk(chunk, &mut out)?;
            if done < chunk.len() {
                break;
            }
        }
        Ok(out)
    }

    /// One round trip; appends the results of the calls run, returns how
    /// many ran without failing.
    fn batch_chunk(&mut self, chunk: &[BatchCall], out: &mut Vec<i64>) -> Result<usize> {
        let off = self.batch_start(chunk)?;
        self.batch_end(chunk.len(), off, out)
    }

    /// Starts the queued calls (restore mode, at most [`BATCH_MAX`]) and
    /// returns without waiting: the thread runs them while the caller
    /// starts other processes' batches; [`Self::flush_end`] waits and
    /// reports as [`Self::flush`] does. False: nothing was started (no
    /// calls, or too many: then `flush_end` runs them all). Nothing else
    /// may be done with this thread in between, nor with another thread
    /// whose scratch area is the same memory (the threads of one process:
    /// they would overwrite each other's records).
    pub fn flush_start(&mut self) -> Result<bool> {
        if self.heal.is_some() || self.queued.is_empty() || self.queued.len() > BATCH_MAX {
            return Ok(false);
        }
        let calls: Vec<BatchCall> = self.queued.iter().map(|(c, _)| *c).collect();
        let off = self.batch_start(&calls)?;
        self.started = Some(off);
        Ok(true)
    }

    /// The first failed call of a batch of queued calls, as the error
    /// naming it.
    fn first_failure(&self, queued: &[(BatchCall, String)], results: &[i64]) -> Result<()> {
        match results.iter().position(|r| (-4095..0).contains(r)) {
            Some(i) => Err(SysError::new(
                format!("remote {}", queued[i].1),
                Some(self.tid),
                (-results[i]) as i32,
            )),
            None => Ok(()),
        }
    }

    /// Waits for the batch [`Self::flush_start`] started (or runs the
    /// queue, if it started none); the first failure is the error.
    pub fn flush_end(&mut self) -> Result<()> {
        self.flush_end_results().map(drop)
    }

    /// [`Self::flush_end`], returning the results of the calls.
    pub fn flush_end_results(&mut self) -> Result<Vec<i64>> {
        self.staged = 0;
        let queued = std::mem::take(&mut self.queued);
        let results = match self.started.take() {
            Some(off) => {
                let mut out = Vec::with_capacity(queued.len());
                self.batch_end(queued.len(), off, &mut out)?;
                out
            }
            None if queued.is_empty() => Vec::new(),
            None => {
                let calls: Vec<BatchCall> = queued.iter().map(|(c, _)| *c).collect();
                self.run_batch(&calls)?
            }
        };
        self.first_failure(&queued, &results)?;
        Ok(results)
    }

    /// Writes the records of `chunk`, points the thread at the batch loop
    /// and lets it run; returns where the records are.
    fn batch_start(&mut self, chunk: &[BatchCall]) -> Result<u64> {
        let len = chunk.len() * BATCH_RECORD;
        // Records below a page of stack room at the top of the scratch area;
        // the calls' own arguments use its low end.
        let off = self
            .scratch_len
            .checked_sub(4096 + len as u64)
            .filter(|&o| o >= 4096)
            .ok_or_else(|| SysError::other("batch", Some(self.tid), "scratch area too small"))?;
        let mut buf = vec![0u8; len];
        for (rec, c) in buf.chunks_mut(BATCH_RECORD).zip(chunk) {
            rec[..8].copy_from_slice(&(c.nr as u64).to_le_bytes());
            for (k, a) in c.args.iter().enumerate() {
                rec[8 + 8 * k..16 + 8 * k].copy_from_slice(&a.to_le_bytes());
            }
        }
        let at = self.write_scratch(off, &buf)?;
        REMOTE_SYSCALLS.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        log::trace!("tid {}: batch of {} remote syscalls", self.tid, chunk.len());
        let mut regs = self.injected(self.stub + BATCH_OFF, 0, &[]);
        regs.r12 = at;
        regs.r13 = chunk.len() as u64;
        ptrace::set_regs(self.tid, &regs)?;
        ptrace::cont(self.tid, 0)?;
        Ok(off)
    }

    /// Waits for the batch of `n` calls at `off` to trap; appends the
    /// results of the calls run, returns how many ran without failing.
    fn batch_end(&mut self, n: usize, off: u64, out: &mut Vec<i64>) -> Result<usize> {
        self.wait_trap()?;
        let chunk_len = n;
        // r13 counts the calls not yet done: 0 when all went through, else
        // the failed one (which ran) and those after it (which did not).
        let left = ptrace::get_regs(self.tid)?.r13 as usize;
        let ran = if left == 0 {
            chunk_len
        } else {
            chunk_len + 1 - left.min(chunk_len)
        };
        let back = self.read_scratch(off, ran * BATCH_RECORD)?;
        out.extend(back.chunks(BATCH_RECORD).map(|rec| le_u64(rec, 56) as i64));
        Ok(if left == 0 { ran } else { ran - 1 })
    }

    /// Continues the thread until the batch loop's trap.
    fn run_to_trap(&mut self) -> Result<()> {
        ptrace::cont(self.tid, 0)?;
        self.wait_trap()
    }

    /// Waits for the thread (continued) to reach the trap, continuing it
    /// past any other stop.
    fn wait_trap(&mut self) -> Result<()> {
        loop {
            match ptrace::wait(self.tid)? {
                Stop::Signal(libc::SIGTRAP) => return Ok(()),
                Stop::Signal(libc::SIGSTOP) => {
                    self.pending_stop = true;
                    ptrace::cont(self.tid, 0)?;
                }
                Stop::Signal(s @ (libc::SIGILL | libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE)) => {
                    return Err(SysError::other(
                        "batch of remote syscalls",
                        Some(self.tid),
                        format!("injected code faulted with signal {s}"),
                    ))
                }
                Stop::Signal(_) | Stop::Event { .. } | Stop::Syscall => ptrace::cont(self.tid, 0)?,
                Stop::Exited(c) => {
                    return Err(SysError::other(
                        "batch of remote syscalls",
                        Some(self.tid),
                        format!("task exited with status {c}"),
                    ))
                }
                Stop::Killed(s) => {
                    return Err(SysError::other(
                        "batch of remote syscalls",
                        Some(self.tid),
                        format!("task killed by signal {s}"),
                    ))
                }
            }
        }
    }

    /// Queues a call whose result is not needed, run with the others in one
    /// round trip at the next [`Self::flush`], which every other
    /// injection (and [`Self::finish`]) does first: calls keep their order.
    /// A failure is reported there, naming `what`. Healing mode has no
    /// batch loop: the call runs at once.
    pub fn queue(&mut self, nr: libc::c_long, args: &[u64], what: impl Into<String>) -> Result<()> {
        if self.heal.is_some() {
            let what = what.into();
            return self.call(nr, args, &what).map(drop);
        }
        self.queued.push((BatchCall::new(nr, args), what.into()));
        Ok(())
    }

    /// Copies `data` into the scratch area for a queued call to point at
    /// (returned: its address); it stays there until the queue has run.
    /// Healing mode (calls run at once): the start of the scratch area.
    pub fn stage(&mut self, data: &[u8]) -> Result<u64> {
        if self.heal.is_some() {
            return self.write_scratch(0, data);
        }
        let need = (data.len() as u64).div_ceil(16) * 16;
        let limit = self
            .scratch_len
            .saturating_sub(4096 + (BATCH_MAX * BATCH_RECORD) as u64);
        if STAGE_BASE + self.staged + need > limit {
            self.flush()?;
            if STAGE_BASE + need > limit {
                return Err(SysError::other(
                    "stage data",
                    Some(self.tid),
                    "too large for the scratch area",
                ));
            }
        }
        let at = self.write_scratch(STAGE_BASE + self.staged, data)?;
        self.staged += need;
        Ok(at)
    }

    /// Runs the queued calls; the first failure is the error, naming its
    /// call (the calls after it are dropped).
    pub fn flush(&mut self) -> Result<()> {
        if self.queued.is_empty() {
            self.staged = 0;
            return Ok(());
        }
        self.staged = 0;
        let queued = std::mem::take(&mut self.queued);
        let calls: Vec<BatchCall> = queued.iter().map(|(c, _)| *c).collect();
        let results = self.run_batch(&calls)?;
        self.first_failure(&queued, &results)
    }

    /// Runs the queued calls, then `calls`, in one round trip (restore
    /// mode), and returns the results of `calls`: for queries whose
    /// results are needed, batched with the calls before them. A failing
    /// queued call is the error, as in [`Self::flush`]; a failing query is
    /// a result like any other (the queries after it run in another round
    /// trip). Healing mode: one call at a time.
    pub fn queries(&mut self, calls: &[BatchCall]) -> Result<Vec<i64>> {
        if self.heal.is_some() {
            return calls.iter().map(|c| self.syscall(c.nr, &c.args)).collect();
        }
        self.staged = 0;
        let queued = std::mem::take(&mut self.queued);
        let n = queued.len();
        let all: Vec<BatchCall> = queued
            .iter()
            .map(|(c, _)| *c)
            .chain(calls.iter().copied())
            .collect();
        let mut out = Vec::with_capacity(calls.len());
        let mut start = 0;
        while start < all.len() {
            let results = self.run_batch(&all[start..])?;
            for (i, &r) in (start..).zip(&results) {
                if i >= n {
                    out.push(r);
                } else if (-4095..0).contains(&r) {
                    return Err(SysError::new(
                        format!("remote {}", queued[i].1),
                        Some(self.tid),
                        (-r) as i32,
                    ));
                }
            }
            start += results.len().max(1);
        }
        Ok(out)
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
    /// PTRACE_EVENT_STOP with its original registers, mask and scratch
    /// bytes, so that resuming it applies the kernel's own syscall-restart
    /// logic. Plain mode: nothing to undo. The thread stays traced and stopped.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        let Some(h) = self.heal.take() else {
            return Ok(());
        };
        let tid = self.tid;
        // Order matters: until set_regs below the thread still holds an
        // injected register set, whose stub puts the scratch bytes and the
        // mask back anyway (doing it twice is harmless); the original
        // registers never run with the all-blocked injection mask or with
        // the scratch area changed.
        mem::write_bytes(tid, self.scratch, &h.saved)?;
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
        // the next dump recognises (see padding_is_ours): data first, then
        // code, so that data is never left without its code.
        kill_point("finish-regs");
        let zeros = [0u8; HEAL_AREA_LEN as usize];
        let tail = HEAL_CODE_LEN - HEAL_HALF;
        h.fmem.write(h.area + tail as u64, &zeros[tail..])?;
        kill_point("finish-unpatch-half");
        h.fmem.write(h.area, &zeros[..tail])?;
        kill_point("finish-unpatch");
        if self.pending_stop {
            crate::util::kill(tid, libc::SIGSTOP)?;
        }
        Ok(())
    }
}

/// Whether `rip` lies in the healing area of `vdso` (a thread left there
/// by a stasis that was killed).
pub fn in_heal_area(vdso: (u64, u64), rip: u64) -> bool {
    heal_area(vdso).is_some_and(|a| a.contains(&rip))
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
        let n = HEAL_AREA_LEN as usize / 8;
        let code = to_words(&heal_code());
        let k = code.len();
        assert!(padding_is_ours(&vec![0; n]));
        // Code only, whole or half written; code and data; code and half-zeroed data.
        let mut a = vec![0u64; n];
        a[..k].copy_from_slice(&code);
        assert!(padding_is_ours(&a));
        a[..4].fill(0);
        assert!(padding_is_ours(&a));
        let mut b = vec![7u64; n];
        b[..k].copy_from_slice(&code);
        assert!(padding_is_ours(&b));
        b[k + 3..].fill(0);
        assert!(padding_is_ours(&b));
        // Data without the whole code, or code that is not ours.
        let mut c = b.clone();
        c[0] = 0;
        assert!(!padding_is_ours(&c));
        let mut d = a.clone();
        d.swap(5, 6);
        assert!(!padding_is_ours(&d));
        let mut e = vec![0u64; n];
        e[n - 1] = 1;
        assert!(!padding_is_ours(&e));
        assert!(!padding_is_ours(&[0; 2]));
    }

    #[test]
    fn heal_code_addresses_the_context_block() {
        let c = heal_code();
        // Every rip-relative operand lands on its word of the block.
        let target = |at: usize, len: usize| {
            let d = i32::from_le_bytes(c[at + len - 4..at + len].try_into().unwrap());
            (at as i64 + len as i64 + i64::from(d)) as usize
        };
        assert_eq!(&c[0..2], &[0x0f, 0x05]);
        assert_eq!(target(2, 7), HEAL_DATA_OFF + D_SRC * 8);
        assert_eq!(target(9, 7), HEAL_DATA_OFF + D_DST * 8);
        assert_eq!(target(16, 7), HEAL_DATA_OFF + D_LEN * 8);
        assert_eq!(&c[23..25], &[0xf3, 0xa4]);
        assert_eq!(target(30, 7), HEAL_DATA_OFF + D_MASK * 8);
        assert_eq!(&c[53..55], &[0x0f, 0x05]);
        for (i, w) in [D_RAX, D_RDI, D_RSI, D_RDX, D_R10, D_R8, D_R9, D_RCX, D_R11]
            .iter()
            .enumerate()
        {
            assert_eq!(target(55 + i * 7, 7), HEAL_DATA_OFF + w * 8);
        }
        assert_eq!(&c[118..120], &[0xff, 0x25]);
        assert_eq!(target(118, 6), HEAL_DATA_OFF + D_RIP * 8);
        assert!(c[124..].iter().all(|&b| b == 0xcc));
    }
}
