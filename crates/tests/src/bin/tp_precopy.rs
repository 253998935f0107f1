//! tp_precopy: memory written between pre-dumps survives a chain of images.
//!
//! Usage: `tp_precopy WORKDIR [--pages N] [--fork] [--churn N] [--corrupt]`
//!
//! State: an anonymous area of N pages (default 16384, 64 MiB, no huge
//! pages), every page holding a pattern of (page, generation) in each
//! 8-byte word, the generation of each page in a table; an area `C` to be
//! unmapped, an area `D` to be moved with mremap; a "hot" area of 16 pages
//! that the main loop keeps rewriting (generation counter per page) while
//! it waits, so the process is writing memory whenever it is frozen.
//!
//! With `--churn N` the hot area is N pages, written in turn at a steady
//! pace (a pause of 100 us after each page): the program writes all
//! through every brief pre-dump round, while its pages are being copied,
//! and a page written during one round's copy is not written again for
//! about N/8 ms (one turn).
//!
//! Steps, each started by the harness writing `WORK/step` (a number) and
//! answered in `WORK/stepped` as `STEP PAGES` (pages this step wrote):
//! - 1: rewrite every 8th page of the area (generation 1);
//! - 2: rewrite every 64th page (generation 2), unmap `C`, move `D`
//!   (mremap MREMAP_FIXED) and rewrite its first page, map a new area `B`
//!   and fill it.
//!
//! With `--advise`: an area `E` of 16 pages between two PROT_NONE pages
//! (a mapping of its own); on SIGUSR1 a handler applies MADV_DONTFORK to
//! the whole of `E` (its VmFlags change, its extent does not). After go,
//! the signal must have arrived and `E` must be `dc` in /proc/self/smaps
//! (the dump sends the signal between its pre-read of smaps and the
//! freeze: STASIS_TEST_PREREAD_SIGNAL).
//!
//! With `--fork`: a child forked before the first pre-dump rewrites every
//! 4th page of its own area at step 1 and exits at step 2; a second child
//! is forked at step 2 (after every pre-dump). Each child checks its own
//! pages after go; the parent checks their exit statuses.
//!
//! After go it checks every page of the area, `B`, `D` (at its new
//! address) and the hot area, and that `C` is unmapped.

use stasis_tests::{Mapping, Proto, Report};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const HOT_PAGES: usize = 16;
const C_PAGES: usize = 256;
const D_PAGES: usize = 256;
const B_PAGES: usize = 128;

fn pattern(tag: u64, page: usize, gen: u64, word: usize) -> u64 {
    (tag << 56) ^ ((page as u64) << 32) ^ (gen << 16) ^ word as u64 ^ 0x5a5a_0000_0000_0000
}

fn fill(m: &Mapping, tag: u64, page: usize, gen: u64, pg: usize) {
    let words = pg / 8;
    // SAFETY: the page is inside the live, writable mapping `m`.
    let p = unsafe { m.addr.add(page * pg).cast::<u64>() };
    for w in 0..words {
        // SAFETY: w < words: inside the page; volatile so each store happens.
        unsafe { p.add(w).write_volatile(pattern(tag, page, gen, w)) };
    }
}

/// The first word that differs from the pattern, if any.
fn check_page(m: &Mapping, tag: u64, page: usize, gen: u64, pg: usize) -> Option<usize> {
    let words = pg / 8;
    // SAFETY: the page is inside the live, readable mapping `m`.
    let p = unsafe { m.addr.add(page * pg).cast::<u64>() };
    // SAFETY: w < words: inside the page.
    (0..words).find(|&w| unsafe { p.add(w).read_volatile() } != pattern(tag, page, gen, w))
}

/// Exits with status 3 once the work directory is gone (the harness is
/// gone), so an abandoned program never polls forever.
fn harness_alive(proto: &Proto) {
    if !proto.dir().exists() {
        std::process::exit(3);
    }
}

fn read_step(proto: &Proto) -> u64 {
    std::fs::read_to_string(proto.path("step"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

struct Hot {
    m: Mapping,
    pages: usize,
    gens: Vec<u64>,
    /// The page being written and its new generation (set before writing).
    cur: usize,
    next: u64,
}

impl Hot {
    fn step(&mut self, pg: usize) {
        self.next += 1;
        self.cur = (self.next as usize) % self.pages;
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        fill(&self.m, 3, self.cur, self.next, pg);
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        self.gens[self.cur] = self.next;
    }

    /// Every page matches its generation; the page being written when the
    /// process stopped may hold a prefix of the new pattern.
    fn verify(&self, pg: usize, report: &mut Report) {
        let mut bad = 0;
        for p in 0..self.pages {
            let Some(w) = check_page(&self.m, 3, p, self.gens[p], pg) else {
                continue;
            };
            let partial = p == self.cur
                && (0..w).all(|x| {
                    // SAFETY: x < w < words of the page.
                    let v = unsafe { self.m.addr.add(p * pg).cast::<u64>().add(x).read() };
                    v == pattern(3, p, self.next, x)
                })
                && check_page_from(&self.m, p, self.gens[p], pg, w);
            if !partial {
                bad += 1;
                if bad <= 5 {
                    report.fail(format!(
                        "hot page {p} (generation {}): word {w} differs",
                        self.gens[p]
                    ));
                }
            }
        }
        report.check(bad == 0, || format!("{bad} hot pages differ"));
    }
}

fn check_page_from(m: &Mapping, page: usize, gen: u64, pg: usize, from: usize) -> bool {
    // SAFETY: inside the live mapping.
    let p = unsafe { m.addr.add(page * pg).cast::<u64>() };
    (from..pg / 8).all(|w| {
        // SAFETY: w < words of the page.
        let v = unsafe { p.add(w).read() };
        v == pattern(3, page, gen, w)
    })
}

const CHILD_PAGES: usize = 512;

/// A child's life: its own area, rewritten at step 1; it exits at step
/// `exit_at` if given, else checks its pages after go (exit 0 or 1).
fn child(proto: &Proto, tag: u64, exit_at: Option<u64>, corrupt: bool) -> ! {
    let pg = stasis_tests::page_size();
    let m = Mapping::anon(CHILD_PAGES * pg);
    let mut gens = vec![0u64; CHILD_PAGES];
    for i in 0..CHILD_PAGES {
        fill(&m, tag, i, 0, pg);
    }
    let mut done = read_step(proto);
    while !proto.go_released() {
        harness_alive(proto);
        let want = read_step(proto);
        if want > done {
            if want == 1 {
                for i in (0..CHILD_PAGES).step_by(4) {
                    fill(&m, tag, i, 1, pg);
                    gens[i] = 1;
                }
            }
            if Some(want) == exit_at {
                std::process::exit(0);
            }
            done = want;
        }
        stasis_tests::nap(1_000_000);
    }
    if corrupt {
        m.bytes_mut()[pg + 3] ^= 1;
    }
    let ok = (0..CHILD_PAGES).all(|i| check_page(&m, tag, i, gens[i], pg).is_none());
    std::process::exit(if ok { 0 } else { 1 });
}

fn fork_child(proto: &Proto, tag: u64, exit_at: Option<u64>, corrupt: bool) -> i32 {
    // SAFETY: the program is single-threaded; the child runs `child` only.
    match unsafe { libc::fork() } {
        -1 => stasis_tests::fatal("fork"),
        0 => child(proto, tag, exit_at, corrupt),
        pid => pid,
    }
}

fn wait_child(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &mut st, 0) } != pid {
        stasis_tests::fatal("waitpid");
    }
    st
}

const E_PAGES: usize = 16;
static E_ADDR: AtomicUsize = AtomicUsize::new(0);
static ADVISED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    let pg = 4096;
    let addr = E_ADDR.load(Ordering::SeqCst);
    // SAFETY: advice on our own area E (async-signal-safe system call).
    if unsafe { libc::madvise(addr as *mut libc::c_void, E_PAGES * pg, libc::MADV_DONTFORK) } == 0 {
        ADVISED.store(true, Ordering::SeqCst);
    }
}

/// Area E between two PROT_NONE pages, and the SIGUSR1 handler.
fn advise_setup(pg: usize) -> Mapping {
    let m = Mapping::new(
        (E_PAGES + 2) * pg,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    // SAFETY: the middle of our own reservation.
    let e = unsafe { m.addr.add(pg) };
    // SAFETY: likewise.
    if unsafe { libc::mprotect(e.cast(), E_PAGES * pg, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
        stasis_tests::fatal("mprotect E");
    }
    E_ADDR.store(e as usize, Ordering::SeqCst);
    // SAFETY: a plain handler for SIGUSR1; the struct is zeroed then filled.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) != 0 {
            stasis_tests::fatal("sigaction SIGUSR1");
        }
    }
    m
}

/// Checks that E was advised and is `dc` in smaps.
fn advise_verify(report: &mut Report) {
    report.check(ADVISED.load(Ordering::SeqCst), || {
        "SIGUSR1 never arrived (E not advised)".into()
    });
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{:x}-", E_ADDR.load(Ordering::SeqCst));
    let flags = smaps
        .lines()
        .skip_while(|l| !l.starts_with(&head))
        .find(|l| l.starts_with("VmFlags:"))
        .unwrap_or("");
    report.check(flags.split_whitespace().any(|f| f == "dc"), || {
        format!("area E lost MADV_DONTFORK: {flags:?}")
    });
}

fn no_huge(m: &Mapping) {
    // SAFETY: advice on our own mapping.
    if unsafe { libc::madvise(m.addr.cast(), m.len, libc::MADV_NOHUGEPAGE) } != 0 {
        stasis_tests::fatal("madvise(MADV_NOHUGEPAGE)");
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let pg = stasis_tests::page_size();
    let n = usize::try_from(args.num("pages", 16384)).expect("pages");
    let mut report = Report::new();

    let area = Mapping::anon(n * pg);
    no_huge(&area);
    let mut gens = vec![0u64; n];
    for i in 0..n {
        fill(&area, 1, i, 0, pg);
    }
    let c = Mapping::anon(C_PAGES * pg);
    let d = Mapping::anon(D_PAGES * pg);
    for i in 0..C_PAGES {
        fill(&c, 4, i, 0, pg);
    }
    for i in 0..D_PAGES {
        fill(&d, 5, i, 0, pg);
    }
    // Where D goes: reserved now, so that the move is to a known place.
    let d_new = Mapping::new(
        D_PAGES * pg,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    let churn = usize::try_from(args.num("churn", 0)).expect("churn");
    let hot_pages = if churn > 0 { churn } else { HOT_PAGES };
    let mut hot = Hot {
        m: Mapping::anon(hot_pages * pg),
        pages: hot_pages,
        gens: vec![0; hot_pages],
        cur: 0,
        next: 0,
    };
    no_huge(&hot.m);
    for p in 0..hot_pages {
        fill(&hot.m, 3, p, 0, pg);
    }
    let advise = args.flag("advise");
    let _e = advise.then(|| advise_setup(pg));
    let mut b: Option<Mapping> = None;
    let mut done = 0u64;
    let forks = args.flag("fork");
    let first = forks.then(|| fork_child(&proto, 7, Some(2), false));
    let mut second = None;
    proto.ready();

    let mut iter = 0u64;
    while !proto.go_released() {
        hot.step(pg);
        if churn > 0 {
            stasis_tests::nap(100_000);
        }
        iter += 1;
        if !iter.is_multiple_of(256) {
            continue;
        }
        // Leave the CPUs to the dumper now and then.
        stasis_tests::nap(1_000_000);
        harness_alive(&proto);
        let want = read_step(&proto);
        if want <= done {
            continue;
        }
        let written = match want {
            1 => {
                let mut k = 0;
                for i in (1..n).step_by(8) {
                    fill(&area, 1, i, 1, pg);
                    gens[i] = 1;
                    k += 1;
                }
                k
            }
            2 => {
                let mut k = 0;
                for i in (2..n).step_by(64) {
                    fill(&area, 1, i, 2, pg);
                    gens[i] = 2;
                    k += 1;
                }
                // SAFETY: C is ours and never touched again.
                if unsafe { libc::munmap(c.addr.cast(), c.len) } != 0 {
                    stasis_tests::fatal("munmap C");
                }
                // SAFETY: moves D onto the reserved area, both ours.
                let moved = unsafe {
                    libc::mremap(
                        d.addr.cast(),
                        d.len,
                        d.len,
                        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                        d_new.addr.cast::<libc::c_void>(),
                    )
                };
                if moved != d_new.addr.cast() {
                    stasis_tests::fatal("mremap D");
                }
                fill(&d_new, 5, 0, 1, pg);
                let nb = Mapping::anon(B_PAGES * pg);
                for i in 0..B_PAGES {
                    fill(&nb, 6, i, 2, pg);
                }
                b = Some(nb);
                if let Some(c) = first {
                    let st = wait_child(c);
                    report.check(st == 0, || format!("first child: wait status {st:#x}"));
                }
                if forks {
                    second = Some(fork_child(&proto, 8, None, args.corrupt()));
                }
                k + 1 + B_PAGES
            }
            _ => 0,
        };
        done = want;
        std::fs::write(proto.path("stepped"), format!("{want} {written}\n")).expect("stepped");
    }

    if args.corrupt() {
        area.bytes_mut()[(n / 2) * pg + 8] ^= 0x40;
    }
    let mut bad = 0;
    for (i, &g) in gens.iter().enumerate() {
        if let Some(w) = check_page(&area, 1, i, g, pg) {
            if bad < 5 {
                report.fail(format!("area page {i} (generation {g}): word {w} differs"));
            }
            bad += 1;
        }
    }
    report.check(bad == 0, || format!("{bad} area pages differ"));
    if done >= 2 {
        for i in 0..D_PAGES {
            let g = u64::from(i == 0);
            report.check(check_page(&d_new, 5, i, g, pg).is_none(), || {
                format!("moved area page {i} differs")
            });
        }
        if let Some(nb) = &b {
            for i in 0..B_PAGES {
                report.check(check_page(nb, 6, i, 2, pg).is_none(), || {
                    format!("new area page {i} differs")
                });
            }
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let c_start = format!("{:x}-", c.start());
        report.check(!maps.lines().any(|l| l.starts_with(&c_start)), || {
            "the unmapped area C is mapped again".into()
        });
    }
    hot.verify(pg, &mut report);
    if advise {
        advise_verify(&mut report);
    }
    if let Some(c) = second {
        let st = wait_child(c);
        report.check(st == 0, || {
            format!("second child: wait status {st:#x} (it checks its pages)")
        });
    }
    proto.finish(&report);
}
