//! tp_shmem: shared anonymous memory whose pages no page table of the tree
//! shows survives checkpoint/restore. A 4 MiB MAP_SHARED|MAP_ANONYMOUS
//! object is shared by the parent and two children:
//!
//! * page 0: written by the parent (in its page table);
//! * pages 10..20 and 41: written by child A, which then exits (reaped):
//!   in the object only;
//! * page 30: written by the parent, then dropped from its page table with
//!   MADV_DONTNEED (a shared page stays in the object);
//! * page 50: written by child B, alive (in B's page table only);
//! * pages 40..42 made read-only by the parent (the mapping is split: a
//!   window at an offset of the object);
//! * every other page never written: must read as zeros.
//!
//! Both the parent and B check every page after go. The object's address
//! goes to `WORK/shm.addr` (the harness counts the pages saved: each once).
//!
//! Usage: `tp_shmem WORKDIR [--corrupt]`

use stasis_tests::{Mapping, Proto, Report};

const PAGES: usize = 1024;
const WRITTEN: [usize; 14] = [0, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 30, 41, 50];

/// The word `w` of page `p` as written.
fn word(p: usize, w: usize) -> u64 {
    ((p as u64) << 32) ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed
}

fn fill(m: &Mapping, pages: &[usize]) {
    let ps = stasis_tests::page_size();
    for &p in pages {
        let words = m.bytes_mut()[p * ps..(p + 1) * ps].chunks_exact_mut(8);
        for (w, c) in words.enumerate() {
            c.copy_from_slice(&word(p, w).to_ne_bytes());
        }
    }
}

/// The first page whose content is not as expected (written pages hold
/// their words, the others zeros), and what it holds at its first word.
fn first_wrong(m: &Mapping, corrupt: bool) -> Option<(usize, u64)> {
    let ps = stasis_tests::page_size();
    (0..PAGES).find_map(|p| {
        let page = &m.bytes()[p * ps..(p + 1) * ps];
        let written = WRITTEN.contains(&p) != (corrupt && p == 30);
        let ok = page.chunks_exact(8).enumerate().all(|(w, c)| {
            let v = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
            v == if written { word(p, w) } else { 0 }
        });
        (!ok).then(|| {
            (
                p,
                u64::from_ne_bytes(page[..8].try_into().expect("8 bytes")),
            )
        })
    })
}

fn fork_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: single-threaded: fork is safe; the child ends with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        stasis_tests::fatal("fork");
    }
    pid
}

fn main() {
    let (proto, args) = Proto::from_args();
    let ps = stasis_tests::page_size();
    let m = Mapping::new(
        PAGES * ps,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    fill(&m, &[0]);
    let a = fork_child(|| {
        fill(&m, &[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 41]);
        0
    });
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(a, &mut st, 0) };
    if st != 0 {
        stasis_tests::fatal("child A failed");
    }
    fill(&m, &[30]);
    // SAFETY: our own mapping; a shared page stays in the object.
    let r = unsafe { libc::madvise(m.addr.add(30 * ps).cast(), ps, libc::MADV_DONTNEED) };
    // SAFETY: our own mapping, made read-only in its middle.
    let r2 = unsafe { libc::mprotect(m.addr.add(40 * ps).cast(), 2 * ps, libc::PROT_READ) };
    if r != 0 || r2 != 0 {
        stasis_tests::fatal("madvise/mprotect");
    }
    let (go_proto, mm) = (&proto, &m);
    let b = fork_child(|| {
        fill(mm, &[50]);
        go_proto.wait_go();
        i32::from(first_wrong(mm, false).is_some())
    });
    std::fs::write(proto.path("shm.addr"), format!("{}\n", m.start()))
        .unwrap_or_else(|e| stasis_tests::fatal(&format!("shm.addr: {e}")));
    // B has written its page before the dump (reading no other page: a
    // read would allocate it in the object).
    while m.bytes()[50 * ps..50 * ps + 8] != word(50, 0).to_ne_bytes() {
        stasis_tests::nap(1_000_000);
    }
    proto.ready_and_wait();
    let mut report = Report::new();
    report.eq(
        "first wrong page, value",
        None,
        first_wrong(&m, args.corrupt()),
    );
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(b, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child B found a wrong page: status {st:#x}")
    });
    proto.finish(&report);
}
