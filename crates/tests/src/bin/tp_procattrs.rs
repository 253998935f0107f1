//! tp_procattrs: per-process and per-thread settings survive
//! checkpoint/restore (issue 9, part 4).
//!
//! Usage: `tp_procattrs WORKDIR [--corrupt] [--droppable] [--mlockall-future]`
//!
//! Process-wide: oom_score_adj 345 (raised: lowering needs CAP_SYS_RESOURCE),
//! THP disabled except where advised (PR_GET_THP_DISABLE 3), KSM merge-any,
//! membarrier GLOBAL_EXPEDITED + PRIVATE_EXPEDITED registrations,
//! coredump_filter 0x7b, audit login uid 4242, child subreaper with an orphan reparented to us
//! (its parent exited), mlockall(MCL_FUTURE | MCL_ONFAULT).
//!
//! Per mapping, each its own area with gaps between: mlock, mlock2(ONFAULT),
//! MADV_RANDOM, MADV_SEQUENTIAL, DONTFORK, WIPEONFORK, DONTDUMP, NOHUGEPAGE,
//! HUGEPAGE, MERGEABLE, UNMERGEABLE (out of merge-any), mseal. Their VmFlags and contents are compared.
//!
//! Per thread (sched_getattr, ioprio, timer slack, io_flusher, speculation
//! controls): the leader SCHED_BATCH nice 7 with RESET_ON_FORK and ioprio
//! BE/6; thread 1 SCHED_FIFO 3; thread 2 SCHED_DEADLINE 2/20/50 ms;
//! thread 3 SCHED_OTHER nice 3, timer slack 654321 ns, ioprio IDLE. The
//! speculation controls and io_flusher cannot be changed on this machine
//! (ENXIO / EPERM); they are compared anyway.
//!
//! After go: every value read again and compared; functional checks:
//! membarrier(PRIVATE_EXPEDITED) works, the sealed area refuses mprotect, a
//! new mapping comes out locked on fault, a fresh orphan is reparented to
//! us. `--corrupt` expects a wrong oom_score_adj. `--mlockall-future`
//! uses MCL_FUTURE without MCL_ONFAULT. `--droppable` adds a
//! MAP_DROPPABLE area (which the dump must refuse).

use stasis_tests::{nap, Proto, Report};
use std::sync::Mutex;

const PAGE: usize = 4096;
const SLOT_PAGES: usize = 4;
const MEMBARRIER_GET_REGISTRATIONS: i32 = 1 << 9;
const MEMBARRIER_REGISTER_GLOBAL_EXPEDITED: i32 = 1 << 2;
const MEMBARRIER_PRIVATE_EXPEDITED: i32 = 1 << 3;
const MEMBARRIER_REGISTER_PRIVATE_EXPEDITED: i32 = 1 << 4;
const PR_SET_MEMORY_MERGE: i32 = 67;
const PR_GET_MEMORY_MERGE: i32 = 68;
const PR_GET_SPECULATION_CTRL: i32 = 52;
const PR_SET_SPECULATION_CTRL: i32 = 53;
const PR_SET_IO_FLUSHER: i32 = 57;
const PR_GET_IO_FLUSHER: i32 = 58;
const SYS_MSEAL: i64 = 462;
const MAP_DROPPABLE: i32 = 0x08;
const IOPRIO_WHO_PROCESS: i32 = 1;
const SCHED_FLAG_RESET_ON_FORK: u64 = 1;

/// (name, what is done to the area)
const SLOTS: [&str; 12] = [
    "mlock",
    "mlock-onfault",
    "random",
    "sequential",
    "dontfork",
    "wipeonfork",
    "dontdump",
    "nohugepage",
    "hugepage",
    "mergeable",
    "unmergeable",
    "mseal",
];

fn prctl(op: i32, a: u64, b: u64) -> i64 {
    // SAFETY: every op used here takes integers (or, for the GET ops that
    // write, a pointer the caller passes as `a` to a live local).
    i64::from(unsafe { libc::prctl(op, a, b, 0u64, 0u64) })
}

fn membarrier(cmd: i32) -> i64 {
    // SAFETY: membarrier takes integers only.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

fn ioprio_get() -> i64 {
    // SAFETY: integers only; who = 0 is the calling thread.
    unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) }
}

fn ioprio_set(v: i32) {
    // SAFETY: integers only.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, v) };
    if r != 0 {
        stasis_tests::fatal("ioprio_set");
    }
}

fn sched_getattr() -> [u32; 14] {
    let mut a = [0u32; 14];
    // SAFETY: a is 56 bytes, the size passed.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, a.as_mut_ptr(), 56u32, 0u32) };
    if r != 0 {
        stasis_tests::fatal("sched_getattr");
    }
    a
}

/// sched_setattr(0, {policy, flags, nice, priority, runtime, deadline, period}).
fn sched_setattr(policy: u32, flags: u64, nice: i32, prio: u32, dl: [u64; 3]) {
    let mut a = [0u32; 14];
    a[0] = 56;
    a[1] = policy;
    a[2] = flags as u32;
    a[3] = (flags >> 32) as u32;
    a[4] = nice as u32;
    a[5] = prio;
    for (i, v) in dl.iter().enumerate() {
        a[6 + 2 * i] = *v as u32;
        a[7 + 2 * i] = (*v >> 32) as u32;
    }
    // SAFETY: a is a valid 56-byte sched_attr.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, a.as_ptr(), 0u32) };
    if r != 0 {
        stasis_tests::fatal(&format!("sched_setattr(policy {policy})"));
    }
}

/// Everything one thread reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ThreadView {
    sched: [u32; 14],
    ioprio: i64,
    slack: i64,
    io_flusher: i64,
    spec: [i64; 3],
}

fn thread_view() -> ThreadView {
    let mut spec = [0; 3];
    for (i, s) in spec.iter_mut().enumerate() {
        *s = prctl(PR_GET_SPECULATION_CTRL, i as u64, 0);
    }
    ThreadView {
        sched: sched_getattr(),
        ioprio: ioprio_get(),
        slack: prctl(libc::PR_GET_TIMERSLACK, 0, 0),
        io_flusher: prctl(PR_GET_IO_FLUSHER, 0, 0),
        spec,
    }
}

/// Tries to change what this machine may not allow: speculation control
/// and io_flusher. Failures are expected here (ENXIO, EPERM).
fn try_unchangeable() {
    let _ = prctl(PR_SET_SPECULATION_CTRL, 0, 4); // store bypass: disable
    let _ = prctl(PR_SET_IO_FLUSHER, 1, 0);
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcView {
    oom: String,
    coredump_filter: String,
    loginuid: String,
    thp: i64,
    merge: i64,
    membarrier: i64,
    subreaper: i32,
    timerslack_proc: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<{e}>"))
        .trim()
        .to_string()
}

fn proc_view() -> ProcView {
    let mut sub = 0i32;
    prctl(libc::PR_GET_CHILD_SUBREAPER, (&raw mut sub) as u64, 0);
    ProcView {
        oom: read("/proc/self/oom_score_adj"),
        coredump_filter: read("/proc/self/coredump_filter"),
        loginuid: read("/proc/self/loginuid"),
        thp: prctl(libc::PR_GET_THP_DISABLE, 0, 0),
        merge: prctl(PR_GET_MEMORY_MERGE, 0, 0),
        membarrier: membarrier(MEMBARRIER_GET_REGISTRATIONS),
        subreaper: sub,
        timerslack_proc: read("/proc/self/timerslack_ns"),
    }
}

/// VmFlags of the mapping starting at `start` (soft-dirty left out).
fn vm_flags(start: usize) -> Vec<String> {
    let smaps = read("/proc/self/smaps");
    let mut found = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((s, _)) = range.split_once('-') {
                if !line.starts_with("VmFlags") && s.chars().all(|c| c.is_ascii_hexdigit()) {
                    found = usize::from_str_radix(s, 16).ok() == Some(start);
                    continue;
                }
            }
        }
        if found {
            if let Some(f) = line.strip_prefix("VmFlags:") {
                let mut v: Vec<String> = f
                    .split_whitespace()
                    .filter(|w| *w != "sd")
                    .map(str::to_string)
                    .collect();
                v.sort();
                return v;
            }
        }
    }
    vec!["<no such mapping>".into()]
}

/// `flags` holds the map type (MAP_PRIVATE or MAP_DROPPABLE) and extras.
fn mmap_at(addr: usize, len: usize, flags: i32) -> usize {
    // SAFETY: a fixed mapping inside our own reservation, which nothing
    // else uses.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        stasis_tests::fatal("mmap slot");
    }
    p as usize
}

/// Maps every slot with a one-slot gap before it; fills and treats each.
fn setup_slots(droppable: bool) -> Vec<usize> {
    let step = 2 * SLOT_PAGES * PAGE;
    let n = SLOTS.len() + 1;
    // SAFETY: a fresh PROT_NONE reservation, given back at once: its
    // range is then used with MAP_FIXED only by us.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            step * (n + 1),
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        stasis_tests::fatal("mmap reservation");
    }
    // SAFETY: the reservation just made.
    unsafe { libc::munmap(base, step * (n + 1)) };
    let len = SLOT_PAGES * PAGE;
    let mut out = Vec::new();
    for (i, name) in SLOTS.iter().enumerate() {
        let a = mmap_at(
            base as usize + step * (i + 1),
            len,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
        );
        // SAFETY: the slot is ours, read-write, `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(a as *mut u8, len) };
        for (j, b) in bytes.iter_mut().enumerate() {
            *b = (j as u8) ^ (i as u8).wrapping_mul(37);
        }
        let p = a as *mut libc::c_void;
        // SAFETY: advice, locks and seals on our own slot.
        let r = unsafe {
            match *name {
                "mlock" => libc::mlock(p, len) as i64,
                "mlock-onfault" => libc::syscall(libc::SYS_mlock2, p, len, 1),
                "random" => libc::madvise(p, len, libc::MADV_RANDOM) as i64,
                "sequential" => libc::madvise(p, len, libc::MADV_SEQUENTIAL) as i64,
                "dontfork" => libc::madvise(p, len, libc::MADV_DONTFORK) as i64,
                "wipeonfork" => libc::madvise(p, len, libc::MADV_WIPEONFORK) as i64,
                "dontdump" => libc::madvise(p, len, libc::MADV_DONTDUMP) as i64,
                "nohugepage" => libc::madvise(p, len, libc::MADV_NOHUGEPAGE) as i64,
                "hugepage" => libc::madvise(p, len, libc::MADV_HUGEPAGE) as i64,
                "mergeable" => libc::madvise(p, len, libc::MADV_MERGEABLE) as i64,
                // Opted out of KSM merge-any (set before): no `mg`.
                "unmergeable" => libc::madvise(p, len, libc::MADV_UNMERGEABLE) as i64,
                _ => libc::syscall(SYS_MSEAL, p, len, 0),
            }
        };
        if r != 0 {
            stasis_tests::fatal(&format!("setting up slot {name}"));
        }
        out.push(a);
    }
    if droppable {
        mmap_at(
            base as usize + step * n,
            len,
            libc::MAP_FIXED | MAP_DROPPABLE,
        );
    }
    out
}

fn slot_sum(a: usize) -> u64 {
    // SAFETY: a slot of ours, readable.
    let bytes = unsafe { std::slice::from_raw_parts(a as *const u8, SLOT_PAGES * PAGE) };
    stasis_tests::hash(bytes)
}

fn fork(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: called before any thread exists, or (after go) only to run
    // async-signal-safe code in the child before _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        stasis_tests::fatal("fork");
    }
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child without running our exit handlers.
        unsafe { libc::_exit(code) };
    }
    pid
}

fn wait_exit(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &mut st, 0) } != pid {
        return -1;
    }
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        -1
    }
}

/// An orphan: a child forks `body` and exits at once, so `body` runs
/// reparented to us (the subreaper). Returns the orphan's PID.
fn make_orphan(body: impl FnOnce() -> i32) -> i32 {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a two-int array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        stasis_tests::fatal("pipe");
    }
    let [rd, wr] = fds;
    let middle = fork(|| {
        let o = fork(body);
        // SAFETY: writes 4 bytes from a local into our pipe.
        unsafe { libc::write(wr, (&raw const o).cast(), 4) };
        0
    });
    wait_exit(middle);
    let mut o = 0i32;
    // SAFETY: reads 4 bytes into a local; then both ends go.
    unsafe {
        libc::read(rd, (&raw mut o).cast(), 4);
        libc::close(rd);
        libc::close(wr);
    }
    o
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let plain_future = args.flag("mlockall-future");
    let me = std::process::id() as i32;

    // ---- process-wide ----
    std::fs::write("/proc/self/oom_score_adj", "345").expect("raise oom_score_adj");
    std::fs::write("/proc/self/coredump_filter", "0x7b").expect("coredump_filter");
    // The audit login uid (root may set it; the restorer's is usually unset).
    std::fs::write("/proc/self/loginuid", "4242").expect("loginuid");
    if prctl(libc::PR_SET_THP_DISABLE, 1, 1 << 1) != 0 {
        stasis_tests::fatal("PR_SET_THP_DISABLE except advised");
    }
    if prctl(PR_SET_MEMORY_MERGE, 1, 0) != 0 {
        stasis_tests::fatal("PR_SET_MEMORY_MERGE");
    }
    for cmd in [
        MEMBARRIER_REGISTER_GLOBAL_EXPEDITED,
        MEMBARRIER_REGISTER_PRIVATE_EXPEDITED,
    ] {
        if membarrier(cmd) != 0 {
            stasis_tests::fatal("membarrier register");
        }
    }
    if prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0) != 0 {
        stasis_tests::fatal("PR_SET_CHILD_SUBREAPER");
    }
    // An orphan that checks, after go, that we are still its parent.
    let go = proto.go_cpath().to_owned();
    let orphan = make_orphan(move || {
        loop {
            // SAFETY: valid path; raw calls only in a forked child.
            let fd = unsafe { libc::open(go.as_ptr(), libc::O_RDONLY) };
            if fd >= 0 {
                let mut b = 0u8;
                // SAFETY: one byte into a local; fd closed right after.
                let n = unsafe { libc::pread(fd, (&raw mut b).cast(), 1, 0) };
                // SAFETY: as above.
                unsafe { libc::close(fd) };
                if n == 1 && b == b'1' {
                    break;
                }
            }
            nap(10_000_000);
        }
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } == me {
            0
        } else {
            9
        }
    });

    let slots = setup_slots(args.flag("droppable"));
    let sums: Vec<u64> = slots.iter().map(|&a| slot_sum(a)).collect();

    // ---- threads ----
    let views: Mutex<Vec<(usize, ThreadView, ThreadView)>> = Mutex::new(Vec::new());
    let ready_threads = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for k in 1..=3usize {
            let (views, ready_threads, proto) = (&views, &ready_threads, &proto);
            s.spawn(move || {
                match k {
                    1 => sched_setattr(libc::SCHED_FIFO as u32, 0, 0, 3, [0; 3]),
                    2 => sched_setattr(6, 0, 0, 0, [2_000_000, 20_000_000, 50_000_000]),
                    _ => {
                        prctl(libc::PR_SET_TIMERSLACK, 654_321, 0);
                        sched_setattr(libc::SCHED_OTHER as u32, 0, 3, 0, [0; 3]);
                        ioprio_set(3 << 13);
                    }
                }
                try_unchangeable();
                let before = thread_view();
                ready_threads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                while !proto.go_released() {
                    nap(10_000_000);
                }
                let after = thread_view();
                views.lock().expect("lock").push((k, before, after));
            });
        }
        while ready_threads.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            nap(1_000_000);
        }
        // The leader last: RESET_ON_FORK would not let threads inherit.
        prctl(libc::PR_SET_TIMERSLACK, 123_456, 0);
        ioprio_set((2 << 13) | 6);
        sched_setattr(
            libc::SCHED_BATCH as u32,
            SCHED_FLAG_RESET_ON_FORK,
            7,
            0,
            [0; 3],
        );
        try_unchangeable();
        let mcl = if plain_future {
            libc::MCL_FUTURE
        } else {
            libc::MCL_FUTURE | libc::MCL_ONFAULT
        };
        // SAFETY: mlockall has no memory-safety preconditions.
        if unsafe { libc::mlockall(mcl) } != 0 {
            stasis_tests::fatal("mlockall");
        }
        let before = (proc_view(), thread_view());
        let flags_before: Vec<Vec<String>> = slots.iter().map(|&a| vm_flags(a)).collect();

        proto.ready_and_wait();

        let mut report = Report::new();
        let (mut pv, tv) = (proc_view(), thread_view());
        if corrupt {
            pv.oom = "346".into();
        }
        report.eq("process settings", before.0, pv);
        report.eq("leader thread settings", before.1, tv);
        for ((i, &a), fb) in slots.iter().enumerate().zip(flags_before) {
            report.eq(
                &format!("VmFlags of the {} area", SLOTS[i]),
                fb,
                vm_flags(a),
            );
            report.eq(
                &format!("contents of the {} area", SLOTS[i]),
                sums[i],
                slot_sum(a),
            );
        }
        // Functional checks.
        report.check(membarrier(MEMBARRIER_PRIVATE_EXPEDITED) == 0, || {
            "membarrier(PRIVATE_EXPEDITED) refused: not registered".into()
        });
        let sealed = slots[SLOTS.len() - 1] as *mut libc::c_void;
        // SAFETY: an mprotect the seal must refuse (it changes nothing if
        // it fails; if it succeeds, the area becomes read-only, which the
        // rest of the checks do not write to).
        let r = unsafe { libc::mprotect(sealed, PAGE, libc::PROT_READ) };
        report.check(r != 0 && stasis_tests::errno() == libc::EPERM, || {
            format!(
                "mprotect of the sealed area: {r}, errno {}",
                stasis_tests::errno()
            )
        });
        let fresh = stasis_tests::Mapping::anon(PAGE);
        let f = vm_flags(fresh.start());
        report.check(
            f.iter().any(|x| x == "lo") && f.iter().any(|x| x == "lf") != plain_future,
            || format!("a new mapping is not locked as mlockall({mcl:#x}) asks: {f:?}"),
        );
        report.eq("the orphan's status (parent kept)", 0, wait_exit(orphan));
        let o2 = make_orphan(|| {
            nap(50_000_000);
            // SAFETY: getppid cannot fail.
            i32::from(unsafe { libc::getppid() } != me)
        });
        report.eq("a new orphan's parent is us (subreaper)", 0, wait_exit(o2));
        // Threads report after go.
        while views.lock().expect("lock").len() < 3 {
            nap(1_000_000);
        }
        for (k, b, a) in views.lock().expect("lock").iter() {
            report.eq(&format!("thread {k} settings"), b, a);
        }
        proto.finish(&report);
    });
}
