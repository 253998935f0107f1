//! tp_threads: a multi-threaded process survives checkpoint/restore with
//! every thread's identity and state.
//!
//! Usage: `tp_threads WORKDIR [--corrupt]`
//!
//! Four workers, each in a different kind of wait when the dump happens:
//! a futex (condition variable), nanosleep, a busy loop, sigtimedwait.
//! Every worker has its own TID, name, thread-local value (fs base),
//! blocked mask, sigaltstack, robust-futex list and a per-thread pending
//! signal for one of them. After go, each worker checks all of it; main
//! checks the set of TIDs.

use stasis_tests::{Proto, Report};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};

thread_local! {
    static TLS: Cell<u64> = const { Cell::new(0) };
}

fn gettid() -> i32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn blocked_mask() -> u64 {
    let mut cur = 0u64;
    // SAFETY: query only; cur is an 8-byte out buffer.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            0usize,
            &mut cur as *mut u64,
            8usize,
        )
    };
    cur
}

fn pending_mask() -> u64 {
    let mut set = 0u64;
    // SAFETY: set is an 8-byte out buffer.
    unsafe { libc::syscall(libc::SYS_rt_sigpending, &mut set as *mut u64, 8usize) };
    set
}

fn altstack() -> (usize, i32, usize) {
    // SAFETY: stack_t is plain data.
    let mut ss: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: query only.
    unsafe { libc::sigaltstack(std::ptr::null(), &mut ss) };
    (ss.ss_sp as usize, ss.ss_flags, ss.ss_size)
}

fn robust_list() -> (u64, usize) {
    let mut head = 0u64;
    let mut len = 0usize;
    // SAFETY: valid out pointers; pid 0 is the calling thread.
    unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    (head, len)
}

fn comm() -> String {
    std::fs::read_to_string(format!("/proc/self/task/{}/comm", gettid()))
        .unwrap_or_default()
        .trim()
        .to_string()
}

struct Shared {
    go: AtomicBool,
    lock: Mutex<bool>,
    cv: Condvar,
    errors: Mutex<Vec<String>>,
    spins: AtomicU64,
}

fn worker(
    i: usize,
    sh: Arc<Shared>,
    ready: Arc<Barrier>,
    tids: Arc<Mutex<Vec<i32>>>,
    corrupt: bool,
) {
    let tid = gettid();
    tids.lock().expect("tids")[i] = tid;
    let tls_val = 0x5151_0000_0000 + i as u64 * 0x1111;
    TLS.with(|t| t.set(tls_val));
    // Own blocked mask: SIGRTMIN+i and SIGUSR1 for worker 3.
    let mut block = 1u64 << (libc::SIGRTMIN() as u64 + i as u64 - 1);
    if i == 3 {
        block |= 1 << (libc::SIGUSR1 - 1);
    }
    // SAFETY: setting our own mask from a valid 8-byte set.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &block as *const u64,
            0usize,
            8usize,
        )
    };
    let stack = vec![0u8; 64 * 1024 + i * 4096].leak();
    let ss = libc::stack_t {
        ss_sp: stack.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: stack.len(),
    };
    // SAFETY: the leaked buffer lives forever.
    unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) };
    let before = (blocked_mask(), altstack(), robust_list(), comm());
    ready.wait();
    ready.wait(); // main has queued the per-thread signal

    match i {
        0 => {
            let mut g = sh.lock.lock().expect("lock");
            while !*g {
                g = sh.cv.wait(g).expect("wait");
            }
        }
        1 => {
            while !sh.go.load(Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        2 => {
            let mut x = 0u64;
            while !sh.go.load(Ordering::Acquire) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                sh.spins.store(x, Ordering::Relaxed);
            }
        }
        _ => {
            let set = 1u64 << (libc::SIGUSR2 - 1);
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 300_000_000,
            };
            while !sh.go.load(Ordering::Acquire) {
                // SAFETY: valid set and timeout; no siginfo wanted. SIGUSR2 never arrives: times out.
                unsafe {
                    libc::syscall(
                        libc::SYS_rt_sigtimedwait,
                        &set as *const u64,
                        0usize,
                        &ts as *const libc::timespec,
                        8usize,
                    )
                };
            }
        }
    }

    let mut errs = Vec::new();
    let after = (blocked_mask(), altstack(), robust_list(), comm());
    if gettid() != tid {
        errs.push(format!("worker {i}: tid {tid} -> {}", gettid()));
    }
    let tls_now = TLS.with(|t| t.get());
    if tls_now != tls_val || (corrupt && i == 2) {
        errs.push(format!(
            "worker {i}: thread-local {tls_val:#x} -> {tls_now:#x}"
        ));
    }
    if before != after {
        errs.push(format!(
            "worker {i}: (mask, altstack, robust list, name) {before:?} -> {after:?}"
        ));
    }
    if i == 3 && pending_mask() & (1 << (libc::SIGUSR1 - 1)) == 0 {
        errs.push(format!(
            "worker {i}: per-thread pending SIGUSR1 lost (pending {:#x})",
            pending_mask()
        ));
    }
    sh.errors.lock().expect("errors").extend(errs);
}

fn task_list() -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let sh = Arc::new(Shared {
        go: AtomicBool::new(false),
        lock: Mutex::new(false),
        cv: Condvar::new(),
        errors: Mutex::new(Vec::new()),
        spins: AtomicU64::new(0),
    });
    let ready = Arc::new(Barrier::new(5));
    let tids = Arc::new(Mutex::new(vec![0i32; 4]));
    let mut handles = Vec::new();
    for i in 0..4 {
        let (sh, ready, tids) = (sh.clone(), ready.clone(), tids.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(i, sh, ready, tids, corrupt))
                .expect("spawn"),
        );
    }
    ready.wait();
    let worker3 = tids.lock().expect("tids")[3];
    // SAFETY: signalling one of our own threads, which blocks SIGUSR1.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), worker3, libc::SIGUSR1) };
    ready.wait();
    let before = task_list();
    proto.ready_and_wait();

    let mut report = Report::new();
    report.eq("task list", before, task_list());
    sh.go.store(true, Ordering::Release);
    *sh.lock.lock().expect("lock") = true;
    sh.cv.notify_all();
    for h in handles {
        if h.join().is_err() {
            report.fail("a worker panicked");
        }
    }
    for e in sh.errors.lock().expect("errors").iter() {
        report.fail(e.clone());
    }
    proto.finish(&report);
}
