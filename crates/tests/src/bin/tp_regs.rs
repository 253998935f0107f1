//! tp_regs: the register file survives checkpoint/restore.
//!
//! Usage: `tp_regs WORKDIR [--corrupt]`
//!
//! Loads distinct patterns into zmm0-31, k0-7, r8-r10, r12-r15, rbx and rbp,
//! eight x87 stack registers, a non-default x87 control word and MXCSR, then
//! (still in the same asm block) renames `ready.tmp` to `ready` with a raw
//! `rename` syscall and spins on byte 0 of `WORK/go`, mapped MAP_SHARED (the
//! program creates `go` with one zero byte; the harness's usual `pwrite("1")`
//! releases it). After the loop every register is stored and compared with
//! what was loaded. Without AVX-512 (avx512f + avx512bw) it holds ymm0-15
//! instead (no opmask registers); without AVX it reports SKIP.

use stasis_tests::{Proto, Report, Rng};
use std::mem::offset_of;

const GPR_NAMES: [&str; 9] = ["r8", "r9", "r10", "r12", "r13", "r14", "r15", "rbx", "rbp"];
/// x87 control word: all exceptions masked, 64-bit precision, round down
/// (the default is 0x037f, round to nearest).
const FCW: u16 = 0x077f;
/// MXCSR: exceptions masked, round toward zero, flush-to-zero, denormals-are-zero
/// (the default is 0x1f80).
const MXCSR: u32 = 0xffc0;

#[repr(C, align(64))]
struct Ctx {
    zmm_in: [u8; 2048],
    zmm_out: [u8; 2048],
    k_in: [u64; 8],
    k_out: [u64; 8],
    gpr_in: [u64; 9],
    gpr_out: [u64; 9],
    saved: [u64; 2],
    x87_in: [f64; 8],
    x87_out: [f64; 8],
    fcw_in: u16,
    fcw_out: u16,
    fcw_saved: u16,
    mxcsr_in: u32,
    mxcsr_out: u32,
    mxcsr_saved: u32,
    go_ptr: u64,
    tmp_path: u64,
    ready_path: u64,
    rename_ret: i64,
}

/// Loads the patterns, announces readiness, spins until go, stores the registers.
///
/// # Safety
/// The CPU must support avx512f and avx512bw; `ctx.go_ptr`, `ctx.tmp_path` and
/// `ctx.ready_path` must point to a readable byte and two NUL-terminated paths.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn hold_registers(ctx: *mut Ctx) {
    // SAFETY: the caller guarantees the CPU features and the pointers. The asm
    // only touches *ctx and the go byte, saves and restores rbx, rbp, the x87
    // control word and MXCSR itself, leaves the x87 stack empty, does not use
    // the stack, and declares every other register it changes as clobbered.
    unsafe {
        core::arch::asm!(
        "mov [rdx + {saved}], rbx",
        "mov [rdx + {saved} + 8], rbp",
        "fnstcw [rdx + {fcw_saved}]",
        "stmxcsr [rdx + {mxcsr_saved}]",
        "vmovdqu64 zmm0, [rdx + {zmm_in} + 0]",
        "vmovdqu64 zmm1, [rdx + {zmm_in} + 64]",
        "vmovdqu64 zmm2, [rdx + {zmm_in} + 128]",
        "vmovdqu64 zmm3, [rdx + {zmm_in} + 192]",
        "vmovdqu64 zmm4, [rdx + {zmm_in} + 256]",
        "vmovdqu64 zmm5, [rdx + {zmm_in} + 320]",
        "vmovdqu64 zmm6, [rdx + {zmm_in} + 384]",
        "vmovdqu64 zmm7, [rdx + {zmm_in} + 448]",
        "vmovdqu64 zmm8, [rdx + {zmm_in} + 512]",
        "vmovdqu64 zmm9, [rdx + {zmm_in} + 576]",
        "vmovdqu64 zmm10, [rdx + {zmm_in} + 640]",
        "vmovdqu64 zmm11, [rdx + {zmm_in} + 704]",
        "vmovdqu64 zmm12, [rdx + {zmm_in} + 768]",
        "vmovdqu64 zmm13, [rdx + {zmm_in} + 832]",
        "vmovdqu64 zmm14, [rdx + {zmm_in} + 896]",
        "vmovdqu64 zmm15, [rdx + {zmm_in} + 960]",
        "vmovdqu64 zmm16, [rdx + {zmm_in} + 1024]",
        "vmovdqu64 zmm17, [rdx + {zmm_in} + 1088]",
        "vmovdqu64 zmm18, [rdx + {zmm_in} + 1152]",
        "vmovdqu64 zmm19, [rdx + {zmm_in} + 1216]",
        "vmovdqu64 zmm20, [rdx + {zmm_in} + 1280]",
        "vmovdqu64 zmm21, [rdx + {zmm_in} + 1344]",
        "vmovdqu64 zmm22, [rdx + {zmm_in} + 1408]",
        "vmovdqu64 zmm23, [rdx + {zmm_in} + 1472]",
        "vmovdqu64 zmm24, [rdx + {zmm_in} + 1536]",
        "vmovdqu64 zmm25, [rdx + {zmm_in} + 1600]",
        "vmovdqu64 zmm26, [rdx + {zmm_in} + 1664]",
        "vmovdqu64 zmm27, [rdx + {zmm_in} + 1728]",
        "vmovdqu64 zmm28, [rdx + {zmm_in} + 1792]",
        "vmovdqu64 zmm29, [rdx + {zmm_in} + 1856]",
        "vmovdqu64 zmm30, [rdx + {zmm_in} + 1920]",
        "vmovdqu64 zmm31, [rdx + {zmm_in} + 1984]",
        "kmovq k0, [rdx + {k_in} + 0]",
        "kmovq k1, [rdx + {k_in} + 8]",
        "kmovq k2, [rdx + {k_in} + 16]",
        "kmovq k3, [rdx + {k_in} + 24]",
        "kmovq k4, [rdx + {k_in} + 32]",
        "kmovq k5, [rdx + {k_in} + 40]",
        "kmovq k6, [rdx + {k_in} + 48]",
        "kmovq k7, [rdx + {k_in} + 56]",
        "mov r8, [rdx + {gpr_in} + 0]",
        "mov r9, [rdx + {gpr_in} + 8]",
        "mov r10, [rdx + {gpr_in} + 16]",
        "mov r12, [rdx + {gpr_in} + 24]",
        "mov r13, [rdx + {gpr_in} + 32]",
        "mov r14, [rdx + {gpr_in} + 40]",
        "mov r15, [rdx + {gpr_in} + 48]",
        "mov rbx, [rdx + {gpr_in} + 56]",
        "mov rbp, [rdx + {gpr_in} + 64]",
        "fldcw [rdx + {fcw_in}]",
        "ldmxcsr [rdx + {mxcsr_in}]",
        "fld qword ptr [rdx + {x87_in} + 0]",
        "fld qword ptr [rdx + {x87_in} + 8]",
        "fld qword ptr [rdx + {x87_in} + 16]",
        "fld qword ptr [rdx + {x87_in} + 24]",
        "fld qword ptr [rdx + {x87_in} + 32]",
        "fld qword ptr [rdx + {x87_in} + 40]",
        "fld qword ptr [rdx + {x87_in} + 48]",
        "fld qword ptr [rdx + {x87_in} + 56]",
        "mov rdi, [rdx + {tmp_path}]",
        "mov rsi, [rdx + {ready_path}]",
        "mov eax, {sys_rename}",
        "syscall",
        "mov [rdx + {rename_ret}], rax",
        "mov rdi, [rdx + {go_ptr}]",
        "2:",
        "pause",
        "cmp byte ptr [rdi], 0x31",
        "jne 2b",
        "vmovdqu64 [rdx + {zmm_out} + 0], zmm0",
        "vmovdqu64 [rdx + {zmm_out} + 64], zmm1",
        "vmovdqu64 [rdx + {zmm_out} + 128], zmm2",
        "vmovdqu64 [rdx + {zmm_out} + 192], zmm3",
        "vmovdqu64 [rdx + {zmm_out} + 256], zmm4",
        "vmovdqu64 [rdx + {zmm_out} + 320], zmm5",
        "vmovdqu64 [rdx + {zmm_out} + 384], zmm6",
        "vmovdqu64 [rdx + {zmm_out} + 448], zmm7",
        "vmovdqu64 [rdx + {zmm_out} + 512], zmm8",
        "vmovdqu64 [rdx + {zmm_out} + 576], zmm9",
        "vmovdqu64 [rdx + {zmm_out} + 640], zmm10",
        "vmovdqu64 [rdx + {zmm_out} + 704], zmm11",
        "vmovdqu64 [rdx + {zmm_out} + 768], zmm12",
        "vmovdqu64 [rdx + {zmm_out} + 832], zmm13",
        "vmovdqu64 [rdx + {zmm_out} + 896], zmm14",
        "vmovdqu64 [rdx + {zmm_out} + 960], zmm15",
        "vmovdqu64 [rdx + {zmm_out} + 1024], zmm16",
        "vmovdqu64 [rdx + {zmm_out} + 1088], zmm17",
        "vmovdqu64 [rdx + {zmm_out} + 1152], zmm18",
        "vmovdqu64 [rdx + {zmm_out} + 1216], zmm19",
        "vmovdqu64 [rdx + {zmm_out} + 1280], zmm20",
        "vmovdqu64 [rdx + {zmm_out} + 1344], zmm21",
        "vmovdqu64 [rdx + {zmm_out} + 1408], zmm22",
        "vmovdqu64 [rdx + {zmm_out} + 1472], zmm23",
        "vmovdqu64 [rdx + {zmm_out} + 1536], zmm24",
        "vmovdqu64 [rdx + {zmm_out} + 1600], zmm25",
        "vmovdqu64 [rdx + {zmm_out} + 1664], zmm26",
        "vmovdqu64 [rdx + {zmm_out} + 1728], zmm27",
        "vmovdqu64 [rdx + {zmm_out} + 1792], zmm28",
        "vmovdqu64 [rdx + {zmm_out} + 1856], zmm29",
        "vmovdqu64 [rdx + {zmm_out} + 1920], zmm30",
        "vmovdqu64 [rdx + {zmm_out} + 1984], zmm31",
        "kmovq [rdx + {k_out} + 0], k0",
        "kmovq [rdx + {k_out} + 8], k1",
        "kmovq [rdx + {k_out} + 16], k2",
        "kmovq [rdx + {k_out} + 24], k3",
        "kmovq [rdx + {k_out} + 32], k4",
        "kmovq [rdx + {k_out} + 40], k5",
        "kmovq [rdx + {k_out} + 48], k6",
        "kmovq [rdx + {k_out} + 56], k7",
        "mov [rdx + {gpr_out} + 0], r8",
        "mov [rdx + {gpr_out} + 8], r9",
        "mov [rdx + {gpr_out} + 16], r10",
        "mov [rdx + {gpr_out} + 24], r12",
        "mov [rdx + {gpr_out} + 32], r13",
        "mov [rdx + {gpr_out} + 40], r14",
        "mov [rdx + {gpr_out} + 48], r15",
        "mov [rdx + {gpr_out} + 56], rbx",
        "mov [rdx + {gpr_out} + 64], rbp",
        "fnstcw [rdx + {fcw_out}]",
        "stmxcsr [rdx + {mxcsr_out}]",
        "fstp qword ptr [rdx + {x87_out} + 0]",
        "fstp qword ptr [rdx + {x87_out} + 8]",
        "fstp qword ptr [rdx + {x87_out} + 16]",
        "fstp qword ptr [rdx + {x87_out} + 24]",
        "fstp qword ptr [rdx + {x87_out} + 32]",
        "fstp qword ptr [rdx + {x87_out} + 40]",
        "fstp qword ptr [rdx + {x87_out} + 48]",
        "fstp qword ptr [rdx + {x87_out} + 56]",
        "fldcw [rdx + {fcw_saved}]",
        "ldmxcsr [rdx + {mxcsr_saved}]",
        "mov rbx, [rdx + {saved}]",
        "mov rbp, [rdx + {saved} + 8]",
        saved = const offset_of!(Ctx, saved),
        fcw_saved = const offset_of!(Ctx, fcw_saved),
        mxcsr_saved = const offset_of!(Ctx, mxcsr_saved),
        zmm_in = const offset_of!(Ctx, zmm_in),
        zmm_out = const offset_of!(Ctx, zmm_out),
        k_in = const offset_of!(Ctx, k_in),
        k_out = const offset_of!(Ctx, k_out),
        gpr_in = const offset_of!(Ctx, gpr_in),
        gpr_out = const offset_of!(Ctx, gpr_out),
        fcw_in = const offset_of!(Ctx, fcw_in),
        fcw_out = const offset_of!(Ctx, fcw_out),
        mxcsr_in = const offset_of!(Ctx, mxcsr_in),
        mxcsr_out = const offset_of!(Ctx, mxcsr_out),
        x87_in = const offset_of!(Ctx, x87_in),
        x87_out = const offset_of!(Ctx, x87_out),
        tmp_path = const offset_of!(Ctx, tmp_path),
        ready_path = const offset_of!(Ctx, ready_path),
        rename_ret = const offset_of!(Ctx, rename_ret),
        go_ptr = const offset_of!(Ctx, go_ptr),
        sys_rename = const libc::SYS_rename,
        inout("rdx") ctx => _,
        out("rax") _, out("rcx") _, out("rdi") _, out("rsi") _,
        out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        out("r12") _, out("r13") _, out("r14") _, out("r15") _,
        out("zmm0") _,
        out("zmm1") _,
        out("zmm2") _,
        out("zmm3") _,
        out("zmm4") _,
        out("zmm5") _,
        out("zmm6") _,
        out("zmm7") _,
        out("zmm8") _,
        out("zmm9") _,
        out("zmm10") _,
        out("zmm11") _,
        out("zmm12") _,
        out("zmm13") _,
        out("zmm14") _,
        out("zmm15") _,
        out("zmm16") _,
        out("zmm17") _,
        out("zmm18") _,
        out("zmm19") _,
        out("zmm20") _,
        out("zmm21") _,
        out("zmm22") _,
        out("zmm23") _,
        out("zmm24") _,
        out("zmm25") _,
        out("zmm26") _,
        out("zmm27") _,
        out("zmm28") _,
        out("zmm29") _,
        out("zmm30") _,
        out("zmm31") _,
        out("k0") _,
        out("k1") _,
        out("k2") _,
        out("k3") _,
        out("k4") _,
        out("k5") _,
        out("k6") _,
        out("k7") _,
        out("st(0)") _,
        out("st(1)") _,
        out("st(2)") _,
        out("st(3)") _,
        out("st(4)") _,
        out("st(5)") _,
        out("st(6)") _,
        out("st(7)") _,
        options(nostack),
        );
    }
}

/// The same with AVX only (no AVX-512): ymm0-15, each in the first 32 bytes of
/// its 64-byte slot in `zmm_in` / `zmm_out`; no opmask registers.
///
/// # Safety
/// The CPU must support avx; `ctx.go_ptr`, `ctx.tmp_path` and
/// `ctx.ready_path` must point to a readable byte and two NUL-terminated paths.
#[target_feature(enable = "avx")]
unsafe fn hold_registers_avx(ctx: *mut Ctx) {
    // SAFETY: the caller guarantees the CPU features and the pointers. The asm
    // only touches *ctx and the go byte, saves and restores rbx, rbp, the x87
    // control word and MXCSR itself, leaves the x87 stack empty, does not use
    // the stack, and declares every other register it changes as clobbered.
    unsafe {
        core::arch::asm!(
        "mov [rdx + {saved}], rbx",
        "mov [rdx + {saved} + 8], rbp",
        "fnstcw [rdx + {fcw_saved}]",
        "stmxcsr [rdx + {mxcsr_saved}]",
        "vmovdqu ymm0, [rdx + {zmm_in} + 0]",
        "vmovdqu ymm1, [rdx + {zmm_in} + 64]",
        "vmovdqu ymm2, [rdx + {zmm_in} + 128]",
        "vmovdqu ymm3, [rdx + {zmm_in} + 192]",
        "vmovdqu ymm4, [rdx + {zmm_in} + 256]",
        "vmovdqu ymm5, [rdx + {zmm_in} + 320]",
        "vmovdqu ymm6, [rdx + {zmm_in} + 384]",
        "vmovdqu ymm7, [rdx + {zmm_in} + 448]",
        "vmovdqu ymm8, [rdx + {zmm_in} + 512]",
        "vmovdqu ymm9, [rdx + {zmm_in} + 576]",
        "vmovdqu ymm10, [rdx + {zmm_in} + 640]",
        "vmovdqu ymm11, [rdx + {zmm_in} + 704]",
        "vmovdqu ymm12, [rdx + {zmm_in} + 768]",
        "vmovdqu ymm13, [rdx + {zmm_in} + 832]",
        "vmovdqu ymm14, [rdx + {zmm_in} + 896]",
        "vmovdqu ymm15, [rdx + {zmm_in} + 960]",
        "mov r8, [rdx + {gpr_in} + 0]",
        "mov r9, [rdx + {gpr_in} + 8]",
        "mov r10, [rdx + {gpr_in} + 16]",
        "mov r12, [rdx + {gpr_in} + 24]",
        "mov r13, [rdx + {gpr_in} + 32]",
        "mov r14, [rdx + {gpr_in} + 40]",
        "mov r15, [rdx + {gpr_in} + 48]",
        "mov rbx, [rdx + {gpr_in} + 56]",
        "mov rbp, [rdx + {gpr_in} + 64]",
        "fldcw [rdx + {fcw_in}]",
        "ldmxcsr [rdx + {mxcsr_in}]",
        "fld qword ptr [rdx + {x87_in} + 0]",
        "fld qword ptr [rdx + {x87_in} + 8]",
        "fld qword ptr [rdx + {x87_in} + 16]",
        "fld qword ptr [rdx + {x87_in} + 24]",
        "fld qword ptr [rdx + {x87_in} + 32]",
        "fld qword ptr [rdx + {x87_in} + 40]",
        "fld qword ptr [rdx + {x87_in} + 48]",
        "fld qword ptr [rdx + {x87_in} + 56]",
        "mov rdi, [rdx + {tmp_path}]",
        "mov rsi, [rdx + {ready_path}]",
        "mov eax, {sys_rename}",
        "syscall",
        "mov [rdx + {rename_ret}], rax",
        "mov rdi, [rdx + {go_ptr}]",
        "2:",
        "pause",
        "cmp byte ptr [rdi], 0x31",
        "jne 2b",
        "vmovdqu [rdx + {zmm_out} + 0], ymm0",
        "vmovdqu [rdx + {zmm_out} + 64], ymm1",
        "vmovdqu [rdx + {zmm_out} + 128], ymm2",
        "vmovdqu [rdx + {zmm_out} + 192], ymm3",
        "vmovdqu [rdx + {zmm_out} + 256], ymm4",
        "vmovdqu [rdx + {zmm_out} + 320], ymm5",
        "vmovdqu [rdx + {zmm_out} + 384], ymm6",
        "vmovdqu [rdx + {zmm_out} + 448], ymm7",
        "vmovdqu [rdx + {zmm_out} + 512], ymm8",
        "vmovdqu [rdx + {zmm_out} + 576], ymm9",
        "vmovdqu [rdx + {zmm_out} + 640], ymm10",
        "vmovdqu [rdx + {zmm_out} + 704], ymm11",
        "vmovdqu [rdx + {zmm_out} + 768], ymm12",
        "vmovdqu [rdx + {zmm_out} + 832], ymm13",
        "vmovdqu [rdx + {zmm_out} + 896], ymm14",
        "vmovdqu [rdx + {zmm_out} + 960], ymm15",
        "mov [rdx + {gpr_out} + 0], r8",
        "mov [rdx + {gpr_out} + 8], r9",
        "mov [rdx + {gpr_out} + 16], r10",
        "mov [rdx + {gpr_out} + 24], r12",
        "mov [rdx + {gpr_out} + 32], r13",
        "mov [rdx + {gpr_out} + 40], r14",
        "mov [rdx + {gpr_out} + 48], r15",
        "mov [rdx + {gpr_out} + 56], rbx",
        "mov [rdx + {gpr_out} + 64], rbp",
        "fnstcw [rdx + {fcw_out}]",
        "stmxcsr [rdx + {mxcsr_out}]",
        "fstp qword ptr [rdx + {x87_out} + 0]",
        "fstp qword ptr [rdx + {x87_out} + 8]",
        "fstp qword ptr [rdx + {x87_out} + 16]",
        "fstp qword ptr [rdx + {x87_out} + 24]",
        "fstp qword ptr [rdx + {x87_out} + 32]",
        "fstp qword ptr [rdx + {x87_out} + 40]",
        "fstp qword ptr [rdx + {x87_out} + 48]",
        "fstp qword ptr [rdx + {x87_out} + 56]",
        "fldcw [rdx + {fcw_saved}]",
        "ldmxcsr [rdx + {mxcsr_saved}]",
        "mov rbx, [rdx + {saved}]",
        "mov rbp, [rdx + {saved} + 8]",
        saved = const offset_of!(Ctx, saved),
        fcw_saved = const offset_of!(Ctx, fcw_saved),
        mxcsr_saved = const offset_of!(Ctx, mxcsr_saved),
        zmm_in = const offset_of!(Ctx, zmm_in),
        zmm_out = const offset_of!(Ctx, zmm_out),
                gpr_in = const offset_of!(Ctx, gpr_in),
        gpr_out = const offset_of!(Ctx, gpr_out),
        fcw_in = const offset_of!(Ctx, fcw_in),
        fcw_out = const offset_of!(Ctx, fcw_out),
        mxcsr_in = const offset_of!(Ctx, mxcsr_in),
        mxcsr_out = const offset_of!(Ctx, mxcsr_out),
        x87_in = const offset_of!(Ctx, x87_in),
        x87_out = const offset_of!(Ctx, x87_out),
        tmp_path = const offset_of!(Ctx, tmp_path),
        ready_path = const offset_of!(Ctx, ready_path),
        rename_ret = const offset_of!(Ctx, rename_ret),
        go_ptr = const offset_of!(Ctx, go_ptr),
        sys_rename = const libc::SYS_rename,
        inout("rdx") ctx => _,
        out("rax") _, out("rcx") _, out("rdi") _, out("rsi") _,
        out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        out("r12") _, out("r13") _, out("r14") _, out("r15") _,
        out("ymm0") _,
        out("ymm1") _,
        out("ymm2") _,
        out("ymm3") _,
        out("ymm4") _,
        out("ymm5") _,
        out("ymm6") _,
        out("ymm7") _,
        out("ymm8") _,
        out("ymm9") _,
        out("ymm10") _,
        out("ymm11") _,
        out("ymm12") _,
        out("ymm13") _,
        out("ymm14") _,
        out("ymm15") _,
        out("st(0)") _,
        out("st(1)") _,
        out("st(2)") _,
        out("st(3)") _,
        out("st(4)") _,
        out("st(5)") _,
        out("st(6)") _,
        out("st(7)") _,
        options(nostack),
        );
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    // zmm0-31 and k0-7 with AVX-512, ymm0-15 with AVX only: the register file
    // this CPU has, whichever it is (the XSAVE layout is the kernel's).
    let avx512 = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw");
    if !avx512 && !std::arch::is_x86_feature_detected!("avx") {
        proto.ready_and_wait();
        report.skip("no avx");
        proto.finish(&report);
    }
    let (nregs, width, name) = if avx512 {
        (32, 64, "zmm")
    } else {
        (16, 32, "ymm")
    };

    // The go byte, watched through a shared mapping of the go file.
    let go_path = proto.path(stasis_tests::GO_FILE);
    std::fs::write(&go_path, [0u8]).expect("create go");
    let go_file = std::fs::File::open(&go_path).expect("open go");
    let go = stasis_tests::Mapping::new(
        stasis_tests::page_size(),
        libc::PROT_READ,
        libc::MAP_SHARED,
        std::os::fd::AsRawFd::as_raw_fd(&go_file),
        0,
    );
    drop(go_file);

    let mut rng = Rng::new(0x7e65);
    let mut ctx = Box::new(Ctx {
        zmm_in: [0; 2048],
        zmm_out: [0; 2048],
        k_in: [0; 8],
        k_out: [0; 8],
        gpr_in: [0; 9],
        gpr_out: [0; 9],
        saved: [0; 2],
        x87_in: [0.0; 8],
        x87_out: [0.0; 8],
        fcw_in: FCW,
        fcw_out: 0,
        fcw_saved: 0,
        mxcsr_in: MXCSR,
        mxcsr_out: 0,
        mxcsr_saved: 0,
        go_ptr: go.addr as u64,
        tmp_path: proto.ready_tmp_cpath().as_ptr() as u64,
        ready_path: proto.ready_cpath().as_ptr() as u64,
        rename_ret: -1,
    });
    rng.fill(&mut ctx.zmm_in);
    for k in &mut ctx.k_in {
        *k = rng.next_u64();
    }
    for g in &mut ctx.gpr_in {
        *g = rng.next_u64();
    }
    for (i, x) in ctx.x87_in.iter_mut().enumerate() {
        // Exactly representable, distinct, normal values.
        let i = i32::try_from(i).expect("small");
        *x = f64::from(i * 3 + 1) * 1.25e10 + f64::from(i) / 1024.0;
        if i % 2 == 1 {
            *x = -*x;
        }
    }
    proto.write_ready_tmp();

    let p: *mut Ctx = &raw mut *ctx;
    // SAFETY: the features were detected above; go_ptr and both paths point to
    // live memory (the mapping and proto's CStrings) for the whole call.
    unsafe {
        if avx512 {
            hold_registers(p);
        } else {
            hold_registers_avx(p);
        }
    }

    if args.corrupt() {
        ctx.zmm_out[64 * (nregs - 1) + 5] ^= 1;
    }

    report.eq("rename(ready.tmp, ready) in asm", 0, ctx.rename_ret);
    for i in 0..nregs {
        let (want, got) = (
            &ctx.zmm_in[i * 64..i * 64 + width],
            &ctx.zmm_out[i * 64..i * 64 + width],
        );
        if want != got {
            let bytes: Vec<usize> = (0..width).filter(|&b| want[b] != got[b]).collect();
            report.fail(format!(
                "{name}{i}: {} bytes differ (first byte {})",
                bytes.len(),
                bytes[0]
            ));
        }
    }
    for i in (0..8).filter(|_| avx512) {
        report.check(ctx.k_in[i] == ctx.k_out[i], || {
            format!("k{i}: {:#x} != {:#x}", ctx.k_out[i], ctx.k_in[i])
        });
    }
    for (i, name) in GPR_NAMES.iter().enumerate() {
        report.check(ctx.gpr_in[i] == ctx.gpr_out[i], || {
            format!("{name}: {:#x} != {:#x}", ctx.gpr_out[i], ctx.gpr_in[i])
        });
    }
    for i in 0..8 {
        let (want, got) = (ctx.x87_in[7 - i], ctx.x87_out[i]);
        report.check(want.to_bits() == got.to_bits(), || {
            format!("x87 st({i}): {got} != {want}")
        });
    }
    report.check(ctx.fcw_out == FCW, || {
        format!("x87 control word: {:#06x} != {FCW:#06x}", ctx.fcw_out)
    });
    report.check(ctx.mxcsr_out == MXCSR, || {
        format!("MXCSR: {:#x} != {MXCSR:#x}", ctx.mxcsr_out)
    });
    proto.finish(&report);
}
