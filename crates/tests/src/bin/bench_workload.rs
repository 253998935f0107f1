//! bench_workload: the memory a `stasis bench` case checkpoints.
//!
//! Usage: `bench_workload WORKDIR --shape dense|sparse|small|tiny|tree|threads
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
//! * `tree`: `--count` (default 100) processes in all, process k forked by
//!   process (k-1)/4; each fills 64 KiB of its own, waits for go, checks
//!   its memory, pid and parent, and reports through its exit status; each
//!   waits for its children.
//! * `threads`: one process with `--count` (default 64) threads in all;
//!   each worker fills 64 KiB of its own and checks it and its TID after go.
//!
//! * `conns`: a server listening on 127.0.0.1 (port in `WORK/port`) that
//!   accepts `--count` (default 10000) connections, each with the byte the
//!   client sent left unread, before it is ready; after go it reads that
//!   byte from each and answers one.
//!
//! `--huge` asks for transparent huge pages (MADV_HUGEPAGE) on the dense area.
//! `--write-mib-s N` (dense): once ready, a thread keeps writing N MiB/s of
//! the dense area (every 10 ms the next pages in turn, each page's first
//! word rewritten with its own value: dirty to the kernel, same content),
//! until go. Each stall of that loop longer than 30 ms (its start and
//! length, CLOCK_MONOTONIC ns: a freeze, or the time from a freeze until
//! the restored copy runs) is written to `WORK/gaps` after go, one
//! `START LEN` per line.
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
    let mut children: Vec<(usize, i32)> = Vec::new();
    let mut workers: Vec<std::thread::JoinHandle<Result<(), String>>> = Vec::new();
    let mut conns: Vec<std::net::TcpStream> = Vec::new();
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
        "conns" => conns = accept_all(&proto, count),
        "tree" => {
            let kids = tree_children(&proto, count.max(1), 0, seed);
            let m = Mapping::anon(PER_TASK);
            Rng::new(seed).fill(m.bytes_mut());
            let h = hash(m.bytes());
            filled += PER_TASK * count.max(1);
            areas.push((m, h));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while (1..count).any(|k| !proto.path(&format!("ready.{k}")).exists())
                && std::time::Instant::now() < deadline
            {
                stasis_tests::nap(2_000_000);
            }
            children = kids;
        }
        "threads" => {
            let (tx, rx) = std::sync::mpsc::channel();
            for w in 1..count.max(1) {
                let tx = tx.clone();
                let go = proto.go_cpath().to_owned();
                workers.push(std::thread::spawn(move || {
                    let tid = gettid();
                    let m = Mapping::anon(PER_TASK);
                    Rng::new(seed + w as u64).fill(m.bytes_mut());
                    let h = hash(m.bytes());
                    tx.send(()).ok();
                    while !go_released(&go) {
                        stasis_tests::nap(stasis_tests::POLL_NS);
                    }
                    (gettid() == tid && hash(m.bytes()) == h)
                        .then_some(())
                        .ok_or_else(|| format!("worker {w} (tid {tid}): memory or tid differs"))
                }));
                filled += PER_TASK;
            }
            drop(tx);
            for _ in 1..count.max(1) {
                rx.recv().expect("worker started");
            }
        }
        other => {
            eprintln!("unknown --shape {other}");
            std::process::exit(2);
        }
    }
    std::fs::write(proto.path("filled"), format!("{filled}\n")).expect("write filled");

    let rate = args.num("write-mib-s", 0) as usize;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = match (rate, areas.first()) {
        (r, Some((m, _))) if r > 0 && shape == "dense" => {
            let (addr, len, stop) = (m.start(), m.len, stop.clone());
            Some(std::thread::spawn(move || rewrite(addr, len, r, pg, &stop)))
        }
        _ => None,
    };
    proto.ready_and_wait();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(w) = writer {
        let gaps = w.join().expect("writer");
        let text: String = gaps.iter().map(|(s, l)| format!("{s} {l}\n")).collect();
        std::fs::write(proto.path("gaps"), text).expect("write gaps");
    }

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
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => report.fail(e),
            Err(_) => report.fail("a worker panicked"),
        }
    }
    wait_children(&proto, children, &mut report);
    answer_all(&conns, &mut report);
    proto.finish(&report);
}

/// Listens on 127.0.0.1, writes the port to `WORK/port` and accepts
/// `count` connections.
fn accept_all(proto: &Proto, count: usize) -> Vec<std::net::TcpStream> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = l.local_addr().expect("port").port();
    std::fs::write(proto.path("port"), format!("{port}\n")).expect("write port");
    (0..count).map(|_| l.accept().expect("accept").0).collect()
}

/// Reads the client's byte from each connection and answers `y`.
fn answer_all(conns: &[std::net::TcpStream], report: &mut Report) {
    use std::io::{Read, Write};
    let bad = conns
        .iter()
        .filter(|c| {
            let mut c: &std::net::TcpStream = c;
            let mut b = [0u8; 1];
            let ok = c
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .and_then(|()| c.read_exact(&mut b))
                .and_then(|()| c.write_all(b"y"));
            !(ok.is_ok() && b == *b"x")
        })
        .count();
    report.check(bad == 0, || {
        format!("{bad} of {} connections did not carry on", conns.len())
    });
}

/// Loop stalls at least this long are recorded.
const GAP_NS: u64 = 30_000_000;

/// Dirties `mib_s` MiB/s of [addr, addr + len) without changing it, until
/// `stop`; returns the loop's stalls (start, length in ns).
fn rewrite(
    addr: usize,
    len: usize,
    mib_s: usize,
    pg: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(u64, u64)> {
    let per_tick = ((mib_s << 20) / 100 / pg).max(1);
    let pages = len / pg;
    let mut next = 0usize;
    let mut gaps = Vec::new();
    let mut last = stasis_tests::monotonic_ns();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let now = stasis_tests::monotonic_ns();
        if now - last >= GAP_NS {
            gaps.push((last, now - last));
        }
        last = now;
        for _ in 0..per_tick {
            let p = (addr + next * pg) as *mut u64;
            // SAFETY: inside the live dense mapping; same value written back.
            unsafe { p.write_volatile(p.read_volatile()) };
            next = (next + 1) % pages;
        }
        stasis_tests::nap(10_000_000);
    }
    gaps
}

/// Memory of each process or thread in the `tree` and `threads` shapes.
const PER_TASK: usize = 64 << 10;

fn gettid() -> i32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn go_released(go: &std::ffi::CStr) -> bool {
    // SAFETY: valid path; the fd is closed below.
    let fd = unsafe { libc::open(go.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    let mut b = 0u8;
    // SAFETY: reads one byte into a local.
    let n = unsafe { libc::pread(fd, (&raw mut b).cast(), 1, 0) };
    // SAFETY: fd was opened above and is not used afterwards.
    unsafe { libc::close(fd) };
    n == 1 && b == b'1'
}

/// Forks the children of tree process `k` (4k+1 .. 4k+4 below `count`);
/// each runs [`tree_process`]. Returns (k, pid) of each.
fn tree_children(proto: &Proto, count: usize, k: usize, seed: u64) -> Vec<(usize, i32)> {
    let mut kids = Vec::new();
    for c in (4 * k + 1)..(4 * k + 5).min(count) {
        // SAFETY: the program is single-threaded here, so fork is safe.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            stasis_tests::fatal("fork");
        }
        if pid == 0 {
            let code = tree_process(proto, count, c, seed);
            // SAFETY: ends the child without the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        kids.push((c, pid));
    }
    kids
}

/// A non-root process of the tree: 0 if everything verified.
fn tree_process(proto: &Proto, count: usize, k: usize, seed: u64) -> i32 {
    // SAFETY: these cannot fail.
    let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
    let kids = tree_children(proto, count, k, seed);
    let m = Mapping::anon(PER_TASK);
    Rng::new(seed + k as u64).fill(m.bytes_mut());
    let h = hash(m.bytes());
    std::fs::write(proto.path(&format!("ready.{k}")), b"").expect("ready.k");
    proto.wait_go();
    let mut report = Report::new();
    // SAFETY: these cannot fail.
    let (pid1, ppid1) = unsafe { (libc::getpid(), libc::getppid()) };
    report.eq("pid", pid, pid1);
    report.eq("parent", ppid, ppid1);
    report.check(hash(m.bytes()) == h, || "memory differs".into());
    wait_children(proto, kids, &mut report);
    let (line, code) = report.verdict();
    if code != 0 {
        std::fs::write(proto.path(&format!("fail.{k}")), line).ok();
    }
    code
}

fn wait_children(proto: &Proto, kids: Vec<(usize, i32)>, report: &mut Report) {
    for (c, pid) in kids {
        let mut st = 0;
        // SAFETY: valid out pointer; pid is our child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r != pid || !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
            let why = std::fs::read_to_string(proto.path(&format!("fail.{c}")))
                .unwrap_or_else(|_| format!("wait status {st:#x}"));
            report.fail(format!("process {c} (pid {pid}): {}", why.trim()));
        }
    }
}
