//! tp_lazy: memory restored lazily (restore --lazy-pages) is exact, also
//! when the program forks, moves, unmaps, drops and writes its memory
//! while the pages are still arriving.
//!
//! Usage: `tp_lazy WORKDIR [--mib N] [--corrupt]`
//!
//! State: area `A` of N MiB (default 64) and areas `C`, `D`, `E` of 4 MiB
//! each, every 8-byte word holding a pattern of (area, page, word).
//!
//! Right after go (the lazy phase: the harness throttles the daemon), in
//! this order: a child is forked that checks all of `A` and exits 0 or 1;
//! every 7th page of `A` gets a new pattern (written before the daemon
//! streamed it: the daemon must not overwrite it); `D` is moved with
//! mremap; the middle half of `C` is unmapped and mapped again fresh (must
//! read zeros); the second half of `E` is dropped with MADV_DONTNEED
//! (zeros, never refilled). Then it checks everything once, waits for
//! `WORK/resident` (the harness writes it once the daemon has ended),
//! checks everything again, that no area is still registered with a
//! userfaultfd (smaps VmFlags `um`), and the child's exit status.

use stasis_tests::{Mapping, Proto, Report};

const SMALL: usize = 4 << 20;

fn pattern(tag: u64, page: usize, word: usize) -> u64 {
    (tag << 56) ^ ((page as u64) << 24) ^ word as u64 ^ 0x1a2b_0000_0000_0000
}

fn fill(m: &Mapping, tag: u64, pg: usize) {
    let w = m.len / 8;
    // SAFETY: the whole mapping is live and writable, 8-byte aligned.
    let words = unsafe { std::slice::from_raw_parts_mut(m.addr.cast::<u64>(), w) };
    for (i, x) in words.iter_mut().enumerate() {
        *x = pattern(tag, i * 8 / pg, i % (pg / 8));
    }
}

/// First mismatch in [from, to) pages of `addr`, expecting `want(page)`:
/// Some(tag) for a pattern, None for zeros.
fn check_pages(
    addr: usize,
    from: usize,
    to: usize,
    pg: usize,
    want: impl Fn(usize) -> Option<u64>,
) -> Option<String> {
    for p in from..to {
        // SAFETY: the caller names pages of a live, readable mapping.
        let words = unsafe { std::slice::from_raw_parts((addr + p * pg) as *const u64, pg / 8) };
        let tag = want(p);
        for (k, &x) in words.iter().enumerate() {
            let exp = tag.map_or(0, |t| pattern(t, p, k));
            if x != exp {
                return Some(format!(
                    "page {p} word {k} at {:#x}: {x:#x}, expected {exp:#x}",
                    addr + p * pg + k * 8
                ));
            }
        }
    }
    None
}

struct Areas {
    a: Mapping,
    c: Mapping,
    d_addr: usize,
    e: Mapping,
}

fn check_all(r: &mut Report, s: &Areas, pg: usize, when: &str) {
    let n = s.a.len / pg;
    if let Some(e) = check_pages(s.a.start(), 0, n, pg, |p| {
        Some(if p % 7 == 0 { 0xa7 } else { 0xa })
    }) {
        r.fail(format!("{when}: A: {e}"));
    }
    let q = SMALL / pg / 4;
    if let Some(e) = check_pages(s.c.start(), 0, 4 * q, pg, |p| {
        (p < q || p >= 3 * q).then_some(0xc)
    }) {
        r.fail(format!("{when}: C: {e}"));
    }
    if let Some(e) = check_pages(s.d_addr, 0, 4 * q, pg, |_| Some(0xd)) {
        r.fail(format!("{when}: D (moved): {e}"));
    }
    if let Some(e) = check_pages(s.e.start(), 0, 4 * q, pg, |p| (p < 2 * q).then_some(0xe)) {
        r.fail(format!("{when}: E: {e}"));
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let pg = stasis_tests::page_size();
    let size = usize::try_from(args.num("mib", 64)).expect("size") << 20;
    let mut report = Report::new();
    let a = Mapping::anon(size);
    let c = Mapping::anon(SMALL);
    let d = Mapping::anon(SMALL);
    let e = Mapping::anon(SMALL);
    fill(&a, 0xa, pg);
    fill(&c, 0xc, pg);
    fill(&d, 0xd, pg);
    fill(&e, 0xe, pg);
    proto.ready_and_wait();

    // The lazy phase: fork first, so the child sees the image's A.
    // SAFETY: fork in a single-threaded program; the child only reads
    // memory and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let bad = check_pages(a.start(), 0, size / pg, pg, |_| Some(0xa));
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(i32::from(bad.is_some())) };
    }
    if child < 0 {
        report.fail("fork failed");
    }
    for p in (0..size / pg).step_by(7) {
        let words = pg / 8;
        // SAFETY: page p of the live, writable area A.
        let w = unsafe { std::slice::from_raw_parts_mut((a.start() + p * pg) as *mut u64, words) };
        for (k, x) in w.iter_mut().enumerate() {
            *x = pattern(0xa7, p, k);
        }
    }
    // SAFETY: mremap of our own mapping D to a place the kernel picks.
    let moved = unsafe { libc::mremap(d.addr.cast(), SMALL, SMALL, libc::MREMAP_MAYMOVE) };
    if moved == libc::MAP_FAILED {
        stasis_tests::fatal("mremap");
    }
    let q = SMALL / 4;
    // SAFETY: the middle half of our own mapping C, unmapped and mapped anew.
    let fresh = unsafe {
        libc::munmap((c.start() + q) as *mut libc::c_void, 2 * q);
        libc::mmap(
            (c.start() + q) as *mut libc::c_void,
            2 * q,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if fresh == libc::MAP_FAILED {
        stasis_tests::fatal("mmap");
    }
    // SAFETY: drops the second half of our own mapping E.
    if unsafe {
        libc::madvise(
            (e.start() + 2 * q) as *mut libc::c_void,
            2 * q,
            libc::MADV_DONTNEED,
        )
    } != 0
    {
        stasis_tests::fatal("madvise");
    }
    if args.corrupt() {
        // SAFETY: one word of our own writable area A.
        unsafe { *((a.start() + 3 * pg) as *mut u64) ^= 1 };
    }
    let areas = Areas {
        a,
        c,
        d_addr: moved as usize,
        e,
    };
    check_all(&mut report, &areas, pg, "lazy phase");
    // Every page in place: nothing was refilled behind the program's back.
    let resident = proto.path("resident");
    let t0 = std::time::Instant::now();
    while !resident.exists() && t0.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    report.check(resident.exists(), || {
        "the harness never said every page was resident".into()
    });
    check_all(&mut report, &areas, pg, "resident");
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    report.check(
        !smaps
            .lines()
            .any(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "um")),
        || "an area is still registered with a userfaultfd (VmFlags um)".into(),
    );
    if child > 0 {
        let mut st = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(child, &mut st, 0) };
        report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
            format!("the child forked in the lazy phase saw wrong memory (status {st:#x})")
        });
    }
    proto.finish(&report);
}
