//! tp_swap: private anonymous pages that are swapped out when the tree
//! is dumped come back with their contents.
//!
//! Usage: `tp_swap WORKDIR [--corrupt]` (swap must be on: the harness
//! turns a swap file on for the test)
//!
//! Fills 8 MiB with a pattern, pushes it out with MADV_PAGEOUT, and
//! checks in /proc/self/pagemap that at least 90% of its pages are
//! swapped out and not present (else FAIL: the test would prove
//! nothing). After go, every byte must be as written.

use stasis_tests::{Proto, Rng};
use std::os::unix::fs::FileExt;

const LEN: usize = 8 << 20;
const PAGE: usize = 4096;
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;

/// How many pages of `mem` are swapped out and not present.
fn swapped_pages(mem: &[u8]) -> usize {
    let Ok(f) = std::fs::File::open("/proc/self/pagemap") else {
        return 0;
    };
    let n = mem.len() / PAGE;
    let mut buf = vec![0u8; n * 8];
    if f.read_exact_at(&mut buf, (mem.as_ptr() as usize / PAGE * 8) as u64)
        .is_err()
    {
        return 0;
    }
    buf.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .filter(|&e| e & SWAPPED != 0 && e & PRESENT == 0)
        .count()
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let map = stasis_tests::Mapping::anon(LEN);
    let mem = map.bytes_mut();
    Rng::new(0x5eed_5a4b).fill(mem);
    let expect = stasis_tests::hash(mem);
    let mut report = stasis_tests::Report::new();
    // SAFETY: advice on our own private mapping; its contents stay.
    let r = unsafe { libc::madvise(mem.as_mut_ptr().cast(), LEN, libc::MADV_PAGEOUT) };
    let swapped = swapped_pages(mem);
    std::fs::write(proto.path("swapped"), format!("{swapped}\n")).ok();
    report.check(r == 0, || {
        format!("MADV_PAGEOUT: {}", std::io::Error::last_os_error())
    });
    report.check(swapped * 10 >= LEN / PAGE * 9, || {
        format!(
            "only {swapped} of {} pages swapped out before the dump (is swap on?)",
            LEN / PAGE
        )
    });
    proto.ready_and_wait();
    if corrupt {
        mem[LEN / 2] ^= 1;
    }
    report.check(stasis_tests::hash(mem) == expect, || {
        "the swapped-out pages changed".into()
    });
    proto.finish(&report);
}
