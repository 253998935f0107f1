//! bench_workload: the memory a `stasis bench` case checkpoints.
//!
//! Usage: `bench_workload WORKDIR --shape dense|sparse|small|tiny
//! [--size-mib N] [--stride N] [--count N] [--huge] [--seed N] [--corrupt]`
//!
//! * `dense`: N MiB (default 1024) of private anonymous memory, every page
//!   filled with pseudo-random data.
//! * `sparse`: N MiB of private anonymous memory with one page in
//!   `--stride` (default 16) filled, the rest never touched (no huge pages).
//! * `small`: `--count` (default 10000) separate one-page private anonymous
//!   mappings (one page apart, so the kernel cannot merge them), each filled.
//! * `tiny`: nothing beyond what every Rust program has: the fixed cost of a
//!   process.
//!
//! `--huge` asks for transparent huge pages (MADV_HUGEPAGE) on the dense area.
//! It writes `WORK/ready` (`READY <pid>`) and the number of bytes it filled
//! to `WORK/filled`, waits for go, re-hashes everything it filled and writes
//! PASS or FAIL to `WORK/result` (protocol in `stasis_tests`).

use stasis_tests::{hash, Mapping, Proto, Report, Rng};

fn main() {
    // Descriptors inherited from whoever started the bench (pipes, ...)
    // are not ours to keep, and stasis cannot dump every kind yet.
    // SAFETY: closes descriptors above stderr; none is used by this program.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let (proto, args) = Proto::from_args();
    let pg = stasis_tests::page_size();
    let shape = args.get("shape").unwrap_or("dense").to_string();
    let size = usize::try_from(args.num("size-mib", 1024)).expect("size") << 20;
    let stride = usize::try_from(args.num("stride", 16))
        .expect("stride")
        .max(1);
    let count = usize::try_from(args.num("count", 10_000)).expect("count");
    let seed = args.num("seed", 0x5eed_0b5e);
    let mut report = Report::new();

    // (area, hash of its filled pages, page indices filled or all)
    let mut areas: Vec<(Mapping, u64)> = Vec::new();
    let mut sparse: Option<(Mapping, Vec<u64>)> = None;
    let mut filled = 0usize;
    match shape.as_str() {
        "dense" => {
            let m = Mapping::anon(size);
            if args.flag("huge") {
                // SAFETY: advice on our own fresh mapping.
                unsafe { libc::madvise(m.addr.cast(), size, libc::MADV_HUGEPAGE) };
            }
            Rng::new(seed).fill(m.bytes_mut());
            let h = hash(m.bytes());
            filled += size;
            areas.push((m, h));
        }
        "sparse" => {
            let m = Mapping::anon(size);
            // SAFETY: advice on our own fresh mapping.
            if unsafe { libc::madvise(m.addr.cast(), size, libc::MADV_NOHUGEPAGE) } != 0 {
                stasis_tests::fatal("madvise(MADV_NOHUGEPAGE)");
            }
            let mut hashes = Vec::with_capacity(size / pg / stride + 1);
            let mut rng = Rng::new(seed);
            for i in (0..size / pg).step_by(stride) {
                let page = &mut m.bytes_mut()[i * pg..(i + 1) * pg];
                rng.fill(page);
                hashes.push(hash(page));
                filled += pg;
            }
            sparse = Some((m, hashes));
        }
        "small" => {
            // One reservation, then every second page unmapped: `count`
            // separate one-page areas that cannot merge.
            let all = Mapping::anon(2 * count * pg);
            for i in 0..count {
                // SAFETY: unmaps a page of our own reservation that nothing references.
                let r = unsafe { libc::munmap(all.addr.add((2 * i + 1) * pg).cast(), pg) };
                if r != 0 {
                    stasis_tests::fatal("munmap");
                }
            }
            let mut rng = Rng::new(seed);
            for i in 0..count {
                let m = Mapping {
                    // SAFETY: inside the reservation made above.
                    addr: unsafe { all.addr.add(2 * i * pg) },
                    len: pg,
                };
                rng.fill(m.bytes_mut());
                let h = hash(m.bytes());
                filled += pg;
                areas.push((m, h));
            }
        }
        "tiny" => {}
        other => {
            eprintln!("unknown --shape {other}");
            std::process::exit(2);
        }
    }
    std::fs::write(proto.path("filled"), format!("{filled}\n")).expect("write filled");

    proto.ready_and_wait();

    if args.corrupt() {
        if let Some((m, _)) = areas.first() {
            m.bytes_mut()[0] ^= 1;
        }
        if let Some((m, _)) = &sparse {
            m.bytes_mut()[0] ^= 1;
        }
    }
    for (i, (m, h)) in areas.iter().enumerate() {
        let now = hash(m.bytes());
        if now != *h {
            report.fail(format!("area {i} at {:#x}: content differs", m.start()));
            break;
        }
    }
    if let Some((m, hashes)) = &sparse {
        let mut bad_touched = 0usize;
        let mut bad_zero = 0usize;
        for i in 0..size / pg {
            let page = &m.bytes()[i * pg..(i + 1) * pg];
            if i % stride == 0 {
                if hash(page) != hashes[i / stride] {
                    bad_touched += 1;
                }
            } else if page.iter().any(|b| *b != 0) {
                bad_zero += 1;
            }
        }
        report.check(bad_touched == 0 && bad_zero == 0, || {
            format!(
                "sparse: {bad_touched} filled pages differ, {bad_zero} untouched pages not zero"
            )
        });
    }
    proto.finish(&report);
}
