//! tp_load: many mappings, many open files, and optionally many processes
//! and threads survive checkpoint/restore.
//!
//! Usage: `tp_load WORKDIR [--maps N] [--files N] [--procs N] [--threads N]
//! [--corrupt]`
//!
//! State: N (default 5000) separate anonymous mappings of two pages each,
//! alternately read-write and read-only (so the kernel cannot merge
//! neighbours), each filled with its own pattern; and N (default 1000)
//! regular files `WORK/files/pK-fI`, each open at its own offset.
//!
//! With `--procs P` (default 1) the mappings and files are split over a
//! tree of P processes (process k is forked by process (k-1)/7, so the tree
//! is three levels deep for 50); with `--threads T` (default 1) every
//! process runs T threads in all, each worker holding its own heap buffer
//! with its own pattern and waiting for go by polling.
//!
//! After go every process checks its own mappings' addresses, protection
//! (via /proc/self/maps) and contents, every descriptor's offset and inode,
//! the number of its descriptors, its pid and parent, and every worker
//! checks its TID and buffer. Children report through their exit status
//! (and `WORK/fail.K` for the reason); each process waits for its own
//! children; the root writes the result. `--corrupt` changes one byte of
//! the last process's first mapping.

use stasis_tests::{Mapping, Proto, Report};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

const PAGE: usize = 4096;
/// Children per process in the tree.
const FANOUT: usize = 7;

fn pattern(k: usize, i: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    stasis_tests::Rng::new(0x10ad_0000 + (k as u64) * 1_000_003 + i as u64).fill(&mut v);
    v
}

/// (start, end, perms) of every mapping, sorted.
fn read_maps() -> Vec<(usize, usize, String)> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
                rest.get(..4)?.to_string(),
            ))
        })
        .collect()
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn gettid() -> i32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Share `total` among `procs`: process k's count (the root takes the rest).
fn share(total: usize, procs: usize, k: usize) -> usize {
    total / procs + usize::from(k == 0) * (total % procs)
}

struct Opts {
    maps: usize,
    files: usize,
    procs: usize,
    threads: usize,
    corrupt: bool,
}

/// Forks process `k`'s children (k*FANOUT+1 ..), each running `process`.
/// Returns (k, pid) of every direct child.
fn fork_children(proto: &Proto, o: &Opts, k: usize) -> Vec<(usize, i32)> {
    let mut kids = Vec::new();
    for c in (k * FANOUT + 1)..((k + 1) * FANOUT + 1).min(o.procs) {
        // SAFETY: called before this process starts any thread, so fork is safe.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            stasis_tests::fatal("fork");
        }
        if pid == 0 {
            let report = process(proto, o, c);
            let (line, code) = report.verdict();
            if code != 0 {
                std::fs::write(proto.path(&format!("fail.{c}")), line).ok();
            }
            // SAFETY: ends this child without the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        kids.push((c, pid));
    }
    kids
}

/// Sets up, waits for go and verifies the state of process `k`.
fn process(proto: &Proto, o: &Opts, k: usize) -> Report {
    let mut report = Report::new();
    // SAFETY: these cannot fail for the calling process.
    let (pid0, ppid0) = unsafe { (libc::getpid(), libc::getppid()) };
    let kids = fork_children(proto, o, k);
    let n_maps = share(o.maps, o.procs, k);
    let n_files = share(o.files, o.procs, k);

    let mut maps = Vec::with_capacity(n_maps);
    for i in 0..n_maps {
        let m = Mapping::anon(2 * PAGE);
        m.bytes_mut().copy_from_slice(&pattern(k, i, 2 * PAGE));
        if i % 2 == 1 {
            // SAFETY: changing protection of our own fresh mapping.
            unsafe { libc::mprotect(m.addr.cast(), m.len, libc::PROT_READ) };
        }
        maps.push(m);
    }

    let dir = proto.path("files");
    std::fs::create_dir_all(&dir).expect("files dir");
    let mut fds = Vec::with_capacity(n_files);
    for i in 0..n_files {
        let p = dir.join(format!("p{k}-f{i}"));
        std::fs::write(&p, vec![b'x'; 100 + i % 50]).expect("write file");
        let c = CString::new(p.as_os_str().as_bytes()).expect("path");
        // SAFETY: valid path; the fd stays open until exit.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            stasis_tests::fatal("open");
        }
        // SAFETY: integer-only call.
        unsafe { libc::lseek(fd, ((i + k) % 97) as i64, libc::SEEK_SET) };
        fds.push(fd);
    }
    let ino = |fd: i32| {
        // SAFETY: st is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::fstat(fd, &mut st) };
        st.st_ino
    };
    let inos: Vec<u64> = fds.iter().map(|&fd| ino(fd)).collect();
    let fds_before = count_fds();

    // Workers: each fills its own buffer, reports its TID, polls for go,
    // then checks both.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut workers = Vec::new();
    for w in 1..o.threads {
        let tx = tx.clone();
        let go = proto.go_cpath().to_owned();
        workers.push(std::thread::spawn(move || {
            let tid = gettid();
            let buf = pattern(k, 1_000_000 + w, 3 * PAGE);
            tx.send(()).ok();
            while !go_released(&go) {
                stasis_tests::nap(stasis_tests::POLL_NS);
            }
            let mut errs = Vec::new();
            if gettid() != tid {
                errs.push(format!(
                    "process {k} worker {w}: tid {tid} became {}",
                    gettid()
                ));
            }
            if buf != pattern(k, 1_000_000 + w, 3 * PAGE) {
                errs.push(format!("process {k} worker {w}: buffer differs"));
            }
            errs
        }));
    }
    drop(tx);
    for _ in 1..o.threads {
        rx.recv().expect("worker started");
    }

    if k == 0 {
        // Ready once every process of the tree is set up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while (1..o.procs).any(|c| !proto.path(&format!("ready.{c}")).exists())
            && std::time::Instant::now() < deadline
        {
            stasis_tests::nap(5_000_000);
        }
        proto.ready_and_wait();
    } else {
        std::fs::write(proto.path(&format!("ready.{k}")), b"").expect("ready.k");
        proto.wait_go();
    }

    if o.corrupt && k == o.procs - 1 {
        if let Some(m) = maps.first() {
            // SAFETY: mapping 0 is read-write.
            unsafe { *m.addr ^= 1 };
        }
    }
    // SAFETY: these cannot fail for the calling process.
    let (pid1, ppid1) = unsafe { (libc::getpid(), libc::getppid()) };
    report.eq(&format!("process {k}: pid"), pid0, pid1);
    // The root's parent is whoever restored it; the others keep theirs.
    if k != 0 {
        report.eq(&format!("process {k}: parent"), ppid0, ppid1);
    }
    let now = read_maps();
    let perm_at = |addr: usize| {
        let i = now.partition_point(|m| m.1 <= addr);
        now.get(i).filter(|m| m.0 <= addr).map(|m| m.2.as_str())
    };
    for (i, m) in maps.iter().enumerate() {
        if !report.ok() {
            break;
        }
        let want = if i % 2 == 1 { "r--p" } else { "rw-p" };
        report.eq(
            &format!("process {k} mapping {i} at {:#x}: protection", m.start()),
            Some(want),
            perm_at(m.start()),
        );
        report.check(m.bytes() == pattern(k, i, 2 * PAGE).as_slice(), || {
            format!(
                "process {k} mapping {i} at {:#x}: contents differ",
                m.start()
            )
        });
    }
    for (i, &fd) in fds.iter().enumerate() {
        if !report.ok() {
            break;
        }
        // SAFETY: integer-only call.
        let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        report.eq(
            &format!("process {k} fd {fd} offset"),
            ((i + k) % 97) as i64,
            pos,
        );
        report.eq(&format!("process {k} fd {fd} inode"), inos[i], ino(fd));
    }
    for w in workers {
        match w.join() {
            Ok(errs) => errs.into_iter().for_each(|e| report.fail(e)),
            Err(_) => report.fail(format!("process {k}: a worker panicked")),
        }
    }
    // Counted with every worker gone: a polling worker holds `go` open
    // for an instant.
    report.eq(
        &format!("process {k}: number of descriptors"),
        fds_before,
        count_fds(),
    );
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
    report
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

fn main() {
    let (proto, args) = Proto::from_args();
    let o = Opts {
        maps: args.num("maps", 5000) as usize,
        files: args.num("files", 1000) as usize,
        procs: (args.num("procs", 1) as usize).max(1),
        threads: (args.num("threads", 1) as usize).max(1),
        corrupt: args.corrupt(),
    };

    // Enough descriptors for the files (inherited by every child).
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid out-pointer; raising soft to hard needs no privilege.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
    let report = process(&proto, &o, 0);
    proto.finish(&report);
}
