//! tp_rseq: the restartable-sequences area glibc registers for every
//! thread (rseq(2)) is registered again after restore, at the same
//! address, in the main thread and in a second one.
//!
//! Usage: `tp_rseq WORKDIR [--corrupt]`
//!
//! The check, per thread: its area is at the thread pointer plus glibc's
//! `__rseq_offset`. rseq(2) registering that very area again, with the
//! same length and glibc's signature, fails with EBUSY when it is
//! registered; with EINVAL when another area or length is (each length a
//! multiple of 32 up to 256 is tried); and succeeds when none is. Before
//! the dump it must be registered (else SKIP: glibc registered no area,
//! e.g. `glibc.pthread.rseq=0`); after the restore again, at the same
//! address. `--corrupt` expects it not to be, to fail.

use stasis_tests::{Proto, Report};
use std::sync::mpsc;

extern "C" {
    /// glibc: offset of the rseq area from the thread pointer.
    static __rseq_offset: isize;
    /// glibc: size of the registered area (0: none registered).
    static __rseq_size: u32;
}

/// x86's RSEQ_SIG, as glibc registers it.
const RSEQ_SIG: u32 = 0x5305_3053;

/// This thread's rseq area.
fn area() -> *mut u32 {
    let tp: usize;
    // SAFETY: reads the thread pointer (the TCB's self pointer at fs:0).
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly)) };
    // SAFETY: reads a glibc constant.
    let off = unsafe { __rseq_offset };
    tp.wrapping_add_signed(off) as *mut u32
}

/// Whether this thread's area is the one registered: EBUSY for one of
/// the lengths. Another area or none registered: false (none: the call
/// registers it, which the restore should have done).
fn registered() -> bool {
    for len in (32u32..=256).step_by(32) {
        // SAFETY: rseq on our own thread's area (glibc's, in our TLS
        // block); it fails when one is registered.
        let r = unsafe { libc::syscall(libc::SYS_rseq, area(), len, 0, RSEQ_SIG) };
        let e = std::io::Error::last_os_error().raw_os_error();
        match (r, e) {
            (-1, Some(libc::EBUSY)) => return true,
            (-1, Some(libc::EINVAL)) => continue,
            _ => return false,
        }
    }
    false
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let mut report = Report::new();
    // SAFETY: reads a glibc constant.
    if unsafe { __rseq_size } == 0 || !registered() {
        report.skip("glibc registered no rseq area here");
        proto.finish(&report);
    }
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<(bool, usize)>();
    let worker = std::thread::spawn(move || {
        let before = (registered(), area() as usize);
        ready_tx.send(before).expect("send");
        go_rx.recv().expect("go");
        (registered(), area() as usize)
    });
    let (thread_before, thread_area) = ready_rx.recv().expect("thread ready");
    report.check(thread_before, || {
        "the second thread's area is not registered".into()
    });
    let main_area = area() as usize;
    proto.ready_and_wait();
    go_tx.send(()).expect("go");
    let (thread_after, thread_area_after) = worker.join().expect("join");
    let want = !corrupt;
    report.eq(
        "the main thread's rseq area registered (the kernel updates it)",
        want,
        registered(),
    );
    report.eq(
        "the second thread's rseq area registered",
        want,
        thread_after,
    );
    report.eq(
        "the areas' addresses",
        (main_area, thread_area),
        (area() as usize, thread_area_after),
    );
    proto.finish(&report);
}
