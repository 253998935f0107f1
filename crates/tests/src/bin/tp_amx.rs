//! tp_amx: live AMX tile state survives checkpoint/restore.
//!
//! Usage: `tp_amx WORKDIR [--corrupt]`
//!
//! Asks the kernel for AMX (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA), then
//! in one asm block loads a tile configuration (palette 1, eight tiles of
//! 16 rows x 64 bytes), distinct patterns into tmm0-7, zmm0, zmm15, zmm16,
//! zmm31 and k1, k7, renames `ready.tmp` to `ready` with a raw syscall and
//! spins on byte 0 of `WORK/go` (a shared mapping), with the tiles live the
//! whole time. After the loop it stores the configuration, every tile and
//! the vector registers and compares them with what was loaded. It also
//! checks that the permission is still granted (ARCH_GET_XCOMP_PERM), and
//! the one it asked for KVM guests (ARCH_GET_XCOMP_GUEST_PERM).
//! Without AMX (no `amx_tile` flag, or the kernel refuses the permission)
//! or AVX-512 it reports SKIP, naming what is missing.

use stasis_tests::{Proto, Report, Rng};
use std::mem::offset_of;

const ARCH_GET_XCOMP_PERM: i64 = 0x1022;
const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
const ARCH_GET_XCOMP_GUEST_PERM: i64 = 0x1024;
const ARCH_REQ_XCOMP_GUEST_PERM: i64 = 0x1025;
const XFEATURE_XTILEDATA: i64 = 18;
const TILE_BYTES: usize = 1024;
const ZMM: [usize; 4] = [0, 15, 16, 31];

#[repr(C, align(64))]
struct Ctx {
    cfg_in: [u8; 64],
    cfg_out: [u8; 64],
    tiles_in: [u8; 8 * TILE_BYTES],
    tiles_out: [u8; 8 * TILE_BYTES],
    zmm_in: [u8; 4 * 64],
    zmm_out: [u8; 4 * 64],
    k_in: [u64; 2],
    k_out: [u64; 2],
    go_ptr: u64,
    tmp_path: u64,
    ready_path: u64,
    rename_ret: i64,
}

/// Loads tiles and vectors, announces readiness, spins until go, stores them.
///
/// # Safety
/// The CPU must support AMX-TILE and AVX-512 (F, BW), the process must hold
/// the XTILEDATA permission, and the pointers in `ctx` must be valid.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn hold_tiles(ctx: *mut Ctx) {
    // SAFETY: the caller guarantees the features, the permission and the
    // pointers. The asm only touches *ctx and the go byte, does not use the
    // stack, releases the tiles at the end, and declares every register it
    // changes as clobbered (tiles are not allocatable, so they need no
    // declaration).
    unsafe {
        core::arch::asm!(
        "mov r8, 64",
        "ldtilecfg [rdx + {cfg_in}]",
        "lea rsi, [rdx + {tiles_in}]",
        "tileloadd tmm0, [rsi + r8 + 0]",
        "tileloadd tmm1, [rsi + r8 + 1024]",
        "tileloadd tmm2, [rsi + r8 + 2048]",
        "tileloadd tmm3, [rsi + r8 + 3072]",
        "tileloadd tmm4, [rsi + r8 + 4096]",
        "tileloadd tmm5, [rsi + r8 + 5120]",
        "tileloadd tmm6, [rsi + r8 + 6144]",
        "tileloadd tmm7, [rsi + r8 + 7168]",
        "vmovdqu64 zmm0, [rdx + {zmm_in} + 0]",
        "vmovdqu64 zmm15, [rdx + {zmm_in} + 64]",
        "vmovdqu64 zmm16, [rdx + {zmm_in} + 128]",
        "vmovdqu64 zmm31, [rdx + {zmm_in} + 192]",
        "kmovq k1, [rdx + {k_in} + 0]",
        "kmovq k7, [rdx + {k_in} + 8]",
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
        "mov r8, 64",
        "sttilecfg [rdx + {cfg_out}]",
        "lea rsi, [rdx + {tiles_out}]",
        "tilestored [rsi + r8 + 0], tmm0",
        "tilestored [rsi + r8 + 1024], tmm1",
        "tilestored [rsi + r8 + 2048], tmm2",
        "tilestored [rsi + r8 + 3072], tmm3",
        "tilestored [rsi + r8 + 4096], tmm4",
        "tilestored [rsi + r8 + 5120], tmm5",
        "tilestored [rsi + r8 + 6144], tmm6",
        "tilestored [rsi + r8 + 7168], tmm7",
        "tilerelease",
        "vmovdqu64 [rdx + {zmm_out} + 0], zmm0",
        "vmovdqu64 [rdx + {zmm_out} + 64], zmm15",
        "vmovdqu64 [rdx + {zmm_out} + 128], zmm16",
        "vmovdqu64 [rdx + {zmm_out} + 192], zmm31",
        "kmovq [rdx + {k_out} + 0], k1",
        "kmovq [rdx + {k_out} + 8], k7",
        cfg_in = const offset_of!(Ctx, cfg_in),
        cfg_out = const offset_of!(Ctx, cfg_out),
        tiles_in = const offset_of!(Ctx, tiles_in),
        tiles_out = const offset_of!(Ctx, tiles_out),
        zmm_in = const offset_of!(Ctx, zmm_in),
        zmm_out = const offset_of!(Ctx, zmm_out),
        k_in = const offset_of!(Ctx, k_in),
        k_out = const offset_of!(Ctx, k_out),
        tmp_path = const offset_of!(Ctx, tmp_path),
        ready_path = const offset_of!(Ctx, ready_path),
        rename_ret = const offset_of!(Ctx, rename_ret),
        go_ptr = const offset_of!(Ctx, go_ptr),
        sys_rename = const libc::SYS_rename,
        inout("rdx") ctx => _,
        out("rax") _, out("rcx") _, out("rdi") _, out("rsi") _,
        out("r8") _, out("r11") _,
        out("zmm0") _, out("zmm15") _, out("zmm16") _, out("zmm31") _,
        out("k1") _, out("k7") _,
        options(nostack),
        );
    }
}

/// Why AMX cannot be tested here, if it cannot.
fn missing_feature() -> Option<String> {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |f: &str| {
        flags
            .lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|w| w == f))
    };
    for f in ["amx_tile", "avx512f", "avx512bw"] {
        if !has(f) {
            return Some(format!("this CPU has no {f}"));
        }
    }
    // SAFETY: arch_prctl with an integer argument changes only our own permission.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if r != 0 {
        return Some(format!(
            "the kernel refuses AMX (ARCH_REQ_XCOMP_PERM): {}",
            std::io::Error::last_os_error()
        ));
    }
    // The permission for KVM guests too, where the kernel grants it (it
    // comes back only if the restore asks for it again).
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_GUEST_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    None
}

fn xcomp_perm(code: i64) -> u64 {
    let mut perm = 0u64;
    // SAFETY: the kernel writes one u64 to the valid pointer.
    unsafe { libc::syscall(libc::SYS_arch_prctl, code, &raw mut perm) };
    perm
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    if let Some(why) = missing_feature() {
        proto.ready_and_wait();
        report.skip(why);
        proto.finish(&report);
    }
    let perm_before = xcomp_perm(ARCH_GET_XCOMP_PERM);
    let guest_perm_before = xcomp_perm(ARCH_GET_XCOMP_GUEST_PERM);

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

    let mut ctx = Box::new(Ctx {
        cfg_in: [0; 64],
        cfg_out: [0; 64],
        tiles_in: [0; 8 * TILE_BYTES],
        tiles_out: [0; 8 * TILE_BYTES],
        zmm_in: [0; 4 * 64],
        zmm_out: [0; 4 * 64],
        k_in: [0; 2],
        k_out: [0; 2],
        go_ptr: go.addr as u64,
        tmp_path: proto.ready_tmp_cpath().as_ptr() as u64,
        ready_path: proto.ready_cpath().as_ptr() as u64,
        rename_ret: -1,
    });
    // Palette 1; tiles 0-7: 16 rows of 64 bytes.
    ctx.cfg_in[0] = 1;
    for t in 0..8 {
        ctx.cfg_in[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
        ctx.cfg_in[48 + t] = 16;
    }
    let mut rng = Rng::new(0xa3c5);
    rng.fill(&mut ctx.tiles_in);
    rng.fill(&mut ctx.zmm_in);
    for k in &mut ctx.k_in {
        *k = rng.next_u64();
    }
    proto.write_ready_tmp();

    let p: *mut Ctx = &raw mut *ctx;
    // SAFETY: the features and the permission were checked above; go_ptr and
    // both paths point to live memory for the whole call.
    unsafe { hold_tiles(p) };

    if args.corrupt() {
        ctx.tiles_out[3 * TILE_BYTES + 100] ^= 1;
    }
    report.eq("rename(ready.tmp, ready) in asm", 0, ctx.rename_ret);
    report.eq(
        "tile configuration",
        ctx.cfg_in.to_vec(),
        ctx.cfg_out.to_vec(),
    );
    for t in 0..8 {
        let r = t * TILE_BYTES..(t + 1) * TILE_BYTES;
        let (want, got) = (&ctx.tiles_in[r.clone()], &ctx.tiles_out[r]);
        if want != got {
            let n = want.iter().zip(got).filter(|(a, b)| a != b).count();
            report.fail(format!("tmm{t}: {n} of {TILE_BYTES} bytes differ"));
        }
    }
    for (i, z) in ZMM.iter().enumerate() {
        let r = i * 64..(i + 1) * 64;
        report.check(ctx.zmm_in[r.clone()] == ctx.zmm_out[r], || {
            format!("zmm{z} differs")
        });
    }
    report.eq("k1, k7", ctx.k_in, ctx.k_out);
    report.eq(
        "ARCH_GET_XCOMP_PERM",
        perm_before,
        xcomp_perm(ARCH_GET_XCOMP_PERM),
    );
    report.eq(
        "ARCH_GET_XCOMP_GUEST_PERM",
        guest_perm_before,
        xcomp_perm(ARCH_GET_XCOMP_GUEST_PERM),
    );
    proto.finish(&report);
}
