//! tp_cow: private memory that a parent and its descendants still share
//! copy-on-write stays shared after checkpoint/restore (memory is not
//! doubled), and every process still sees exactly its own contents.
//!
//! Usage: `tp_cow WORKDIR [--corrupt]`
//!
//! The parent fills 32 MiB of private anonymous memory, then forks:
//! child 1 changes a few pages and forks a grandchild that changes
//! nothing; child 2 drops 1 MiB (MADV_DONTNEED: it must read as zero) and
//! changes one page. Each process checks its contents by hash after go,
//! and that the region's Shared_Dirty (smaps) kept at least 90% of its
//! size before the dump.

use stasis_tests::{Proto, Rng};

const LEN: usize = 32 << 20;
const PAGE: usize = 4096;

fn shared_dirty_kb(start: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{start:x}-");
    let mut in_region = false;
    for line in smaps.lines() {
        if line.contains(" rw-p ")
            || line.contains(" ---p ")
            || line.contains(" r--p ")
            || line.contains(" r-xp ")
        {
            in_region = line.starts_with(&head);
        } else if in_region {
            if let Some(v) = line.strip_prefix("Shared_Dirty:") {
                return v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            }
        }
    }
    0
}

/// One process's checks after go; returns an exit code (0 = pass).
fn verify(
    proto: &Proto,
    mem: &[u8],
    expect: u64,
    shared_before: u64,
    zero: Option<(usize, usize)>,
) -> i32 {
    proto.wait_go();
    let mut code = 0;
    if stasis_tests::hash(mem) != expect {
        code |= 1;
    }
    if let Some((s, e)) = zero {
        if mem[s..e].iter().any(|&b| b != 0) {
            code |= 2;
        }
    }
    let shared_after = shared_dirty_kb(mem.as_ptr() as usize);
    if shared_after * 10 < shared_before * 9 {
        eprintln!(
            "pid {}: Shared_Dirty {shared_before} kB before, {shared_after} kB after",
            std::process::id()
        );
        code |= 4;
    }
    // Sharing needs the others alive: stay until all four have measured.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(proto.path("measured"))
    {
        use std::io::Write;
        let _ = f.write_all(b"x");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(proto.path("measured"))
        .map(|m| m.len())
        .unwrap_or(0)
        < 4
        && std::time::Instant::now() < deadline
    {
        stasis_tests::nap(1_000_000);
    }
    code
}

fn wait_ok(pid: i32) -> bool {
    let mut st = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    r == pid && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0
}

fn fork(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: single-threaded; the child leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let c = f();
        // SAFETY: ends the child.
        unsafe { libc::_exit(c) };
    }
    pid
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let map = stasis_tests::Mapping::anon(LEN);
    let mem = map.bytes_mut();
    Rng::new(0xc0ffee).fill(mem);
    let barrier = proto.path("forked");

    let c1 = fork(|| {
        for i in 0..10 {
            mem[i * 97 * PAGE] ^= 0x5a;
        }
        let expect = stasis_tests::hash(mem);
        let gc = fork(|| {
            let expect = stasis_tests::hash(mem);
            while !barrier.exists() {
                stasis_tests::nap(5_000_000);
            }
            verify(
                &proto,
                mem,
                expect,
                shared_dirty_kb(mem.as_ptr() as usize),
                None,
            )
        });
        while !barrier.exists() {
            stasis_tests::nap(5_000_000);
        }
        let code = verify(
            &proto,
            mem,
            expect,
            shared_dirty_kb(mem.as_ptr() as usize),
            None,
        );
        if wait_ok(gc) {
            code
        } else {
            code | 8
        }
    });
    let c2 = fork(|| {
        let (s, e) = (8 << 20, 9 << 20);
        // SAFETY: dropping pages of our own private mapping.
        unsafe { libc::madvise(mem[s..].as_mut_ptr().cast(), e - s, libc::MADV_DONTNEED) };
        mem[20 << 20] ^= 1;
        let expect = stasis_tests::hash(mem);
        while !barrier.exists() {
            stasis_tests::nap(5_000_000);
        }
        verify(
            &proto,
            mem,
            expect,
            shared_dirty_kb(mem.as_ptr() as usize),
            Some((s, e)),
        )
    });
    // Everyone has forked and written; now sharing is as it will be dumped.
    stasis_tests::nap(100_000_000);
    std::fs::write(&barrier, b"1").expect("barrier");
    stasis_tests::nap(100_000_000);
    let expect = stasis_tests::hash(mem);
    let shared = shared_dirty_kb(mem.as_ptr() as usize);
    std::fs::write(proto.path("shared_kb"), format!("{shared}\n")).ok();
    proto.ready_and_wait();
    let mut report = stasis_tests::Report::new();
    if corrupt {
        mem[0] ^= 1;
    }
    let code = verify(&proto, mem, expect, shared, None);
    report.check(code == 0, || {
        format!("parent: check failed with code {code:#x}")
    });
    report.check(wait_ok(c1), || "child 1 (or its child) failed".into());
    report.check(wait_ok(c2), || "child 2 failed".into());
    proto.finish(&report);
}
