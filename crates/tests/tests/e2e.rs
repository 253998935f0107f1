//! End-to-end tests: every capability proven on a real process.
//!
//! `selfcheck_*` run the test programs without stasis (start, ready, go) and
//! must PASS; `negative_*` run them with `--corrupt` and must FAIL, proving
//! their checks can fail. All other tests need the `stasis` binary
//! (`cargo build -p stasis`, or `STASIS_BIN=/path/to/stasis`).

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

const MEM_SMALL: &[&str] = &["--size-mib", "16", "--sparse-mib", "64"];
const MEM_UFFD: &[&str] = &["--size-mib", "64", "--sparse-mib", "16"];

// ---------------------------------------------------------------------------
// The programs themselves, without stasis.

macro_rules! selfcheck {
    ($pass:ident, $fail:ident, $prog:expr, [$($arg:expr),*]) => {
        #[test]
        fn $pass() {
            let work = Work::new(stringify!($pass));
            run_plain(&work, $prog, &[$($arg),*]).assert_pass(&work);
        }

        #[test]
        fn $fail() {
            let work = Work::new(stringify!($fail));
            let out = run_plain(&work, $prog, &[$($arg,)* "--corrupt"]);
            assert!(
                out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
                "the negative control did not fail: {out:?}{}",
                work.diagnostics()
            );
        }
    };
}

selfcheck!(
    selfcheck_memory,
    negative_memory,
    Program::Bin("tp_memory"),
    ["--size-mib", "16", "--sparse-mib", "64"]
);
selfcheck!(selfcheck_regs, negative_regs, Program::Bin("tp_regs"), []);
selfcheck!(
    selfcheck_files,
    negative_files,
    Program::Bin("tp_files"),
    []
);
selfcheck!(
    selfcheck_signals,
    negative_signals,
    Program::Bin("tp_signals"),
    []
);
selfcheck!(
    selfcheck_signals_pending,
    negative_signals_pending,
    Program::Bin("tp_signals"),
    ["--pending"]
);
selfcheck!(selfcheck_misc, negative_misc, Program::Bin("tp_misc"), []);
selfcheck!(
    selfcheck_threads,
    negative_threads,
    Program::Bin("tp_threads"),
    []
);
selfcheck!(selfcheck_tree, negative_tree, Program::Bin("tp_tree"), []);
selfcheck!(
    selfcheck_timers,
    negative_timers,
    Program::Bin("tp_timers"),
    []
);
selfcheck!(selfcheck_cow, negative_cow, Program::Bin("tp_cow"), []);
selfcheck!(
    selfcheck_sockets,
    negative_sockets,
    Program::Bin("tp_sockets"),
    []
);
selfcheck!(
    selfcheck_epoll,
    negative_epoll,
    Program::Bin("tp_epoll"),
    []
);
#[test]
fn selfcheck_pty() {
    let _pty = pty_lock();
    let work = Work::new("selfcheck_pty");
    run_plain(&work, Program::Bin("tp_pty"), &[]).assert_pass(&work);
}

#[test]
fn negative_pty() {
    let _pty = pty_lock();
    let work = Work::new("negative_pty");
    let out = run_plain(&work, Program::Bin("tp_pty"), &["--corrupt"]);
    assert!(
        out.result.starts_with("FAIL: ")
            && out.result.contains("termios")
            && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}
selfcheck!(
    selfcheck_inotify,
    negative_inotify,
    Program::Bin("tp_inotify"),
    []
);
selfcheck!(
    selfcheck_shared,
    negative_shared,
    Program::Bin("tp_shared"),
    []
);
selfcheck!(
    selfcheck_shmem,
    negative_shmem,
    Program::Bin("tp_shmem"),
    []
);
selfcheck!(
    selfcheck_sleep_nanosleep,
    negative_sleep_nanosleep,
    Program::Bin("tp_sleep"),
    ["--mode", "nanosleep", "--sleep-ms", "200"]
);
selfcheck!(
    selfcheck_sleep_clock_nanosleep,
    negative_sleep_clock_nanosleep,
    Program::Bin("tp_sleep"),
    ["--mode", "clock_nanosleep", "--sleep-ms", "200"]
);
selfcheck!(
    selfcheck_sleep_poll,
    negative_sleep_poll,
    Program::Bin("tp_sleep"),
    ["--mode", "poll", "--sleep-ms", "200"]
);
selfcheck!(
    selfcheck_memfd,
    negative_memfd,
    Program::Bin("tp_memfd"),
    []
);
selfcheck!(
    selfcheck_fdkinds,
    negative_fdkinds,
    Program::Bin("tp_fdkinds"),
    []
);
selfcheck!(
    selfcheck_locks,
    negative_locks,
    Program::Bin("tp_locks"),
    []
);
selfcheck!(
    selfcheck_procattrs,
    negative_procattrs,
    Program::Bin("tp_procattrs"),
    []
);
selfcheck!(
    selfcheck_chroot,
    negative_chroot,
    Program::Bin("tp_chroot"),
    []
);
selfcheck!(
    selfcheck_procsys,
    negative_procsys,
    Program::Bin("tp_procsys"),
    []
);
selfcheck!(selfcheck_inet, negative_inet, Program::Bin("tp_inet"), []);
selfcheck!(selfcheck_unix, negative_unix, Program::Bin("tp_unix"), []);
selfcheck!(
    selfcheck_httpd,
    negative_httpd,
    Program::Bin("tp_httpd"),
    []
);
selfcheck!(
    selfcheck_files2,
    negative_files2,
    Program::Bin("tp_files2"),
    []
);
selfcheck!(
    selfcheck_seccomp,
    negative_seccomp_plain,
    Program::Bin("tp_seccomp"),
    []
);
selfcheck!(selfcheck_python, negative_python, Program::Python, []);
selfcheck!(selfcheck_shell, negative_shell, Program::Shell, []);

#[test]
fn selfcheck_unsupported_resources_work() {
    // Some resources are ptys.
    let _pty = pty_lock();
    for what in [
        "pipe",
        "thread",
        "child",
        "huge-deleted",
        "uts-ns",
        "uts-ns-child",
        "clone-files",
        "thread-unshare-files",
        "thread-creds",
        "thread-seccomp",
        "gdt-tls",
        "debugreg",
        "ldt",
        "mempolicy",
        "mdwe",
        "mce",
        "sud",
        "ctty",
        "pty-queued",
        "ctty-own",
        "chardev",
        "packet-pipe",
        "thread-child-pdeath",
        "mqueue",
        "detached-mount",
        "keyring",
        "autogroup",
        "thread-pdeath",
        "guard",
        "ptmx",
        "two-ttys",
        "mbind",
        "seccomp-strict",
        "unix-oob",
        "udp-timestamp",
    ] {
        let work = Work::new(&format!("selfcheck_unsupported_{what}"));
        run_plain(&work, Program::Bin("tp_unsupported"), &["--with", what]).assert_pass(&work);
    }
}

#[test]
fn selfcheck_memory_writes_sparse_range() {
    let work = Work::new("selfcheck_memory_sparse");
    run_plain(&work, Program::Bin("tp_memory"), MEM_SMALL).assert_pass(&work);
    let (start, end, touched) = sparse_range(&work);
    assert_eq!(end - start, 64 << 20);
    assert_eq!(touched, 256);
}

// ---------------------------------------------------------------------------
// Checkpoint/restore of each capability.

fn cr(name: &str, program: Program, args: &[&str]) {
    let work = Work::new(name);
    run_case(&work, program, args, &Opts::default()).assert_pass(&work);
}

#[test]
fn cr_memory_small() {
    cr("cr_memory_small", Program::Bin("tp_memory"), MEM_SMALL);
}

/// A swap file for the tests of this binary that need swap: on while any
/// of them holds a [`SwapOn`], then off and removed. One file for all, so
/// that no test's swapoff pulls back the pages another pushed out.
static SWAP: std::sync::Mutex<usize> = std::sync::Mutex::new(0);

/// Where the swap file goes: a disk filesystem (not tmpfs, which cannot
/// hold swap), named after this test binary's PID.
fn swap_path() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/var/tmp/stasis-test-swap-{}", std::process::id()))
}

struct SwapOn;

impl SwapOn {
    fn new() -> SwapOn {
        let mut users = SWAP.lock().unwrap_or_else(|e| e.into_inner());
        if *users == 0 {
            let path = swap_path();
            let _ = fs::remove_file(&path);
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .expect("create the swap file");
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..32 {
                    f.write_all(&zeros).expect("write the swap file");
                }
                f.sync_all().expect("sync the swap file");
            }
            let out = std::process::Command::new("mkswap")
                .arg(&path)
                .output()
                .expect("run mkswap");
            assert!(out.status.success(), "mkswap: {out:?}");
            let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
            // SAFETY: swapon with a NUL-terminated path we own.
            let r = unsafe { libc::swapon(c.as_ptr(), 0) };
            assert!(
                r == 0,
                "swapon {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        *users += 1;
        SwapOn
    }
}

impl Drop for SwapOn {
    fn drop(&mut self) {
        let mut users = SWAP.lock().unwrap_or_else(|e| e.into_inner());
        *users -= 1;
        if *users == 0 {
            let path = swap_path();
            if let Ok(c) = std::ffi::CString::new(path.to_str().unwrap_or_default()) {
                // SAFETY: swapoff with a NUL-terminated path we own.
                unsafe { libc::swapoff(c.as_ptr()) };
            }
            let _ = fs::remove_file(&path);
        }
    }
}

/// Private pages swapped out (MADV_PAGEOUT, checked in pagemap by the
/// program) when the tree is dumped come back as they were.
#[test]
fn cr_swapped_pages() {
    let _swap = SwapOn::new();
    cr("cr_swapped_pages", Program::Bin("tp_swap"), &[]);
}

/// Negative control: the same, with the program changing one byte after
/// the restore, must fail its check.
#[test]
fn negative_cr_swapped_pages() {
    let _swap = SwapOn::new();
    negative_cr(
        "negative_cr_swapped_pages",
        Program::Bin("tp_swap"),
        &[],
        "the swapped-out pages changed",
    );
}

/// A negative control through checkpoint/restore: the program, run with
/// `args` and `--corrupt`, must report FAIL naming `what` (any failure
/// when `what` is empty).
fn negative_cr(name: &str, program: Program, args: &[&str], what: &str) {
    let work = Work::new(name);
    let mut args = args.to_vec();
    args.push("--corrupt");
    let out = run_case(&work, program, &args, &Opts::default());
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains(what),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

#[test]
fn cr_memory_256mib() {
    let opts = Opts {
        ready_timeout: Duration::from_secs(120),
        finish_timeout: Duration::from_secs(120),
        ..Opts::default()
    };
    let work = Work::new("cr_memory_256mib");
    run_case(
        &work,
        Program::Bin("tp_memory"),
        &["--size-mib", "256"],
        &opts,
    )
    .assert_pass(&work);
}

/// The big anonymous area (64 MiB) is filled by UFFDIO_COPY from both
/// of the restorer's threads (restore/fill_uffd.rs): the restore log says
/// so, and the process finds every page, /proc/self/maps, its VmFlags (no
/// `um` left behind) and the area's page counts (Rss, Anonymous,
/// Private_Dirty, AnonHugePages, Swap) as before.
#[test]
fn cr_memory_uffd_fill() {
    let work = Work::new("cr_memory_uffd_fill");
    run_case(&work, Program::Bin("tp_memory"), MEM_UFFD, &Opts::default()).assert_pass(&work);
    let log = fs::read_to_string(work.img().join("restore.log")).unwrap_or_default();
    if uffd_fill_off(&log) {
        return;
    }
    assert!(
        log.contains("filled by UFFDIO_COPY"),
        "the restore did not fill by UFFDIO_COPY{}",
        work.diagnostics()
    );
}

/// Where a fault may allocate a transparent huge page (a THP size set to
/// `always`), the UFFDIO_COPY fill is off (restore/fill_uffd.rs): skipped.
fn uffd_fill_off(log: &str) -> bool {
    let off = log.contains("huge pages on fault true");
    if off {
        eprintln!("skipped: THP on fault here, the UFFDIO_COPY fill is off");
    }
    off
}

/// Negative control of the above: the same restore with one page of the
/// UFFDIO_COPY fill left out (`STASIS_FAULT=sys:uffd-fill-hole`) must
/// make the process fail (the page reads as zeros; which area it falls
/// in depends on which thread takes the first piece).
#[test]
fn negative_memory_uffd_fill_hole() {
    let work = Work::new("negative_memory_uffd_fill_hole");
    let opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_memory"), MEM_UFFD, &opts);
    dump_and_check_gone(&work, &mut p, &opts);
    let out = restore_detached_env(
        &work,
        &[("STASIS_FAULT", "sys:uffd-fill-hole")],
        opts.stasis_timeout,
    );
    let mut r = Proc::adopt(p.pid);
    assert!(
        out.success(),
        "restore failed: {out:?}{}",
        work.diagnostics()
    );
    let got = finish(&work, &mut r, opts.finish_timeout);
    let log = fs::read_to_string(work.img().join("restore.log")).unwrap_or_default();
    if uffd_fill_off(&log) {
        return;
    }
    assert!(
        log.contains("uffd-fill-hole") && got.result.starts_with("FAIL: "),
        "the negative control did not fail: {got:?}{}",
        work.diagnostics()
    );
}

/// The same on tmpfs (/dev/shm), where the restore fills memory with
/// UFFDIO_COPY from both of its threads; the restore verifies the page
/// file's checksum and the process every page.
#[test]
fn cr_memory_256mib_tmpfs() {
    let opts = Opts {
        ready_timeout: Duration::from_secs(120),
        finish_timeout: Duration::from_secs(120),
        ..Opts::default()
    };
    let work = Work::under("cr_memory_256mib_tmpfs", Path::new("/dev/shm"));
    run_case(
        &work,
        Program::Bin("tp_memory"),
        &["--size-mib", "256"],
        &opts,
    )
    .assert_pass(&work);
}

/// tp_amx reports SKIP on CPUs without AMX; where it runs, its negative
/// control must fail.
#[test]
fn selfcheck_amx() {
    let work = Work::new("selfcheck_amx");
    run_plain(&work, Program::Bin("tp_amx"), &[]).assert_pass(&work);
}

#[test]
fn negative_amx() {
    let work = Work::new("negative_amx");
    let out = run_plain(&work, Program::Bin("tp_amx"), &["--corrupt"]);
    if out.result.starts_with("SKIP") {
        eprintln!("negative_amx: {}", out.result.trim());
        return;
    }
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

#[test]
fn cr_amx_live_tiles() {
    cr("cr_amx_live_tiles", Program::Bin("tp_amx"), &[]);
}

#[test]
fn cr_regs_vector() {
    cr("cr_regs_vector", Program::Bin("tp_regs"), &[]);
}

#[test]
fn cr_files() {
    cr("cr_files", Program::Bin("tp_files"), &[]);
}

#[test]
fn cr_signals() {
    cr("cr_signals", Program::Bin("tp_signals"), &[]);
}

#[test]
fn cr_signals_pending_across_dump() {
    cr(
        "cr_signals_pending",
        Program::Bin("tp_signals"),
        &["--pending"],
    );
}

#[test]
fn cr_misc() {
    cr("cr_misc", Program::Bin("tp_misc"), &[]);
}

#[test]
fn cr_sleep_nanosleep() {
    cr(
        "cr_sleep_nanosleep",
        Program::Bin("tp_sleep"),
        &["--mode", "nanosleep"],
    );
}

#[test]
fn cr_sleep_clock_nanosleep() {
    cr(
        "cr_sleep_clock_nanosleep",
        Program::Bin("tp_sleep"),
        &["--mode", "clock_nanosleep"],
    );
}

#[test]
fn cr_sleep_poll() {
    cr(
        "cr_sleep_poll",
        Program::Bin("tp_sleep"),
        &["--mode", "poll"],
    );
}

#[test]
fn cr_python() {
    cr("cr_python", Program::Python, &[]);
}

#[test]
fn cr_shell() {
    cr("cr_shell", Program::Shell, &[]);
}

// ---------------------------------------------------------------------------
// Dump and restore behaviour.

/// `dump -R` of tp_pty: the dump asks the pair through duplicates only,
/// and the program's own checks after it pass on the original pair.
#[test]
fn dump_leave_running_pty() {
    let _pty = pty_lock();
    leave_running("dump_leave_running_pty", Program::Bin("tp_pty"), &[]);
}

/// `dump -R` of a master whose slave was closed: the dump opens a slave to
/// ask it and closes it again, which leaves the master as it was (POLLHUP).
#[test]
fn dump_leave_running_ptmx() {
    let _pty = pty_lock();
    leave_running(
        "dump_leave_running_ptmx",
        Program::Bin("tp_unsupported"),
        &["--with", "ptmx"],
    );
}

#[test]
fn dump_leave_running() {
    leave_running("dump_leave_running", Program::Bin("tp_memory"), MEM_SMALL);
}

#[test]
fn dump_leave_running_regs() {
    leave_running("dump_leave_running_regs", Program::Bin("tp_regs"), &[]);
}

#[test]
fn dump_leave_running_signals() {
    leave_running(
        "dump_leave_running_signals",
        Program::Bin("tp_signals"),
        &[],
    );
}

#[test]
fn restore_pid_in_use_fails() {
    let work = Work::new("restore_pid_in_use_fails");
    let opts = Opts::default();
    let mut p = start(&work, Program::Bin("tp_files"), &[]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    let out = dump(&work, p.pid, &["-R"], opts.stasis_timeout);
    if !out.success() {
        fail(
            &work,
            format!("stasis dump -R failed ({:?}): {}", out.code, out.stderr),
        );
    }
    let out = restore_detached(&work, &[], opts.stasis_timeout);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "restore over a live PID did not fail: {out:?}{}",
        work.diagnostics()
    );
    assert!(
        out.stderr.contains(&p.pid.to_string()),
        "restore error does not name PID {}: {:?}",
        p.pid,
        out.stderr
    );
    assert!(
        out.stderr.trim_end().lines().count() >= 1,
        "restore failed without a message on stderr{}",
        work.diagnostics()
    );
    step(
        &work,
        "original after the failed restore",
        p.check_running_untraced(),
    );
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

#[test]
fn restore_twice_sequentially() {
    let work = Work::new("restore_twice_sequentially");
    let opts = Opts::default();
    let mut p = start(&work, Program::Bin("tp_memory"), MEM_SMALL);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    dump_and_check_gone(&work, &mut p, &opts);
    for round in 1..=2 {
        work.reset_go();
        let mut r = restore_and_adopt(&work, p.pid, &opts);
        let out = finish(&work, &mut r, opts.finish_timeout);
        eprintln!("round {round}: {:?}", out.result);
        out.assert_pass(&work);
        assert!(
            !pid_exists(p.pid),
            "PID {} still exists after round {round}",
            p.pid
        );
    }
}

/// Restore without -d: stasis stays the parent, waits, and exits with the
/// process's status.
#[test]
fn restore_attached() {
    let work = Work::new("restore_attached");
    let opts = Opts::default();
    let mut p = start(&work, Program::Bin("tp_signals"), &[]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    dump_and_check_gone(&work, &mut p, &opts);
    let pid = p.pid;
    let pidfile = work.path("pidfile");
    let img = work.img();
    let mut child = std::process::Command::new(stasis_bin())
        .args([
            "restore",
            "-D",
            img.to_str().expect("utf-8"),
            "-o",
            "restore.log",
            "-v4",
        ])
        .args(["--pidfile", pidfile.to_str().expect("utf-8")])
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(work.path("attached.stdout")).expect("stdout file"))
        .stderr(fs::File::create(work.path("attached.stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn stasis restore");
    // If anything below fails, the restored process ends up our child (we
    // are its subreaper once stasis is gone) and is killed by this guard.
    let _restored = Proc::adopt(pid);
    let deadline = std::time::Instant::now() + opts.stasis_timeout + opts.finish_timeout;
    let mut released = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if !released
            && fs::read_to_string(&pidfile).is_ok_and(|s| s.trim() == pid.to_string())
            && pid_exists(pid)
        {
            work.release_go();
            released = true;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = work.tail("attached.stderr");
    assert!(
        released,
        "the restored process never appeared (pidfile/PID {pid}); stasis: {status:?} {stderr}{}",
        work.diagnostics()
    );
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "stasis restore (attached) ended with {status:?}: {stderr}{}",
        work.diagnostics()
    );
    assert_eq!(
        work.result().as_deref(),
        Some("PASS\n"),
        "{}",
        work.diagnostics()
    );
}

/// Attached restore must report the process's own failure as its exit status.
#[test]
fn restore_attached_propagates_failure() {
    let work = Work::new("restore_attached_propagates_failure");
    let opts = Opts::default();
    // --corrupt makes the restored program FAIL and exit 1.
    let mut p = start(&work, Program::Bin("tp_misc"), &["--corrupt"]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    dump_and_check_gone(&work, &mut p, &opts);
    work.release_go();
    let img = work.img();
    let _restored = Proc::adopt(p.pid);
    let out = stasis(
        &work,
        &[
            "restore",
            "-D",
            img.to_str().expect("utf-8"),
            "-o",
            "restore.log",
            "-v4",
        ],
        opts.stasis_timeout,
    );
    assert_eq!(
        out.code,
        Some(1),
        "attached restore of a failing program: {out:?}{}",
        work.diagnostics()
    );
    assert!(
        work.result().is_some_and(|r| r.starts_with("FAIL: nice")),
        "{}",
        work.diagnostics()
    );
}

fn sparse_range(work: &Work) -> (u64, u64, u64) {
    let s = work.tail("sparse");
    let f: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(f.len(), 3, "bad sparse file {s:?}");
    let hex = |x: &str| u64::from_str_radix(x, 16).expect("hex");
    (hex(f[0]), hex(f[1]), f[2].parse().expect("count"))
}

/// Only touched pages are saved: inside the 64 MiB sparse area the image's
/// page runs cover exactly the touched pages, and the page file is small.
#[test]
fn sparse_image_is_small() {
    let work = Work::new("sparse_image_is_small");
    let opts = Opts::default();
    let mut p = start(
        &work,
        Program::Bin("tp_memory"),
        &["--size-mib", "4", "--sparse-mib", "64"],
    );
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    dump_and_check_gone(&work, &mut p, &opts);
    let (start_addr, end_addr, touched) = sparse_range(&work);
    let json = show(&work, &work.img());
    let runs = page_runs(&json);
    assert!(!runs.is_empty(), "no page runs in `stasis show` output");
    let saved = pages_in(&runs, start_addr, end_addr, 4096);
    assert_eq!(
        saved, touched,
        "pages saved inside the sparse area {start_addr:#x}-{end_addr:#x}"
    );
    let page_bytes: u64 = fs::read_dir(work.img())
        .expect("read img")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(page_bytes > 0, "no pages-*.img files in the image");
    assert!(
        page_bytes < (end_addr - start_addr) / 4,
        "page files hold {page_bytes} bytes, not small against the {} byte sparse area",
        end_addr - start_addr
    );
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// A process with an unsupported resource: dump fails, naming the PID and
/// the resource, leaves no image, and the process runs on unharmed.
fn refuse(what: &str, words: &[&str]) {
    let name = format!("refuse_unsupported_{what}");
    refused_dump(
        &name,
        Program::Bin("tp_unsupported"),
        &["--with", what],
        &[],
        words,
        false,
    );
}

/// A tree whose root has a UTS namespace of its own comes back in a new
/// one with the same host and domain names (not in init's).
#[test]
fn cr_own_uts_namespace() {
    cr(
        "cr_own_uts_namespace",
        Program::Bin("tp_unsupported"),
        &["--with", "uts-ns"],
    );
}

#[test]
fn negative_own_uts_namespace() {
    let work = Work::new("negative_own_uts_namespace");
    let out = run_plain(
        &work,
        Program::Bin("tp_unsupported"),
        &["--with", "uts-ns", "--corrupt"],
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

/// A child in a UTS namespace the root does not share is refused, naming
/// the child; the tree runs on.
#[test]
fn refuse_child_with_own_uts_namespace() {
    refuse_child(
        "refuse_child_uts",
        "uts-ns-child",
        "uts namespace of its own",
    );
}

/// A child of `tp_unsupported --with WHAT` holds what is refused: the
/// one-line error names it (and `word`), not the root, and the tree runs on.
fn refuse_child(name: &str, what: &str, word: &str) {
    refused_child_dump(
        name,
        Program::Bin("tp_unsupported"),
        &["--with", what],
        word,
    );
}

#[test]
fn refuse_shared_descriptor_table() {
    refuse("clone-files", &["descriptor table (clone_files)"]);
}

#[test]
fn refuse_thread_with_own_descriptor_table() {
    refuse("thread-unshare-files", &["unshared its descriptor table"]);
}

#[test]
fn refuse_thread_with_own_credentials() {
    refuse("thread-creds", &["credentials of its own"]);
}

#[test]
fn refuse_thread_under_seccomp() {
    refuse("thread-seccomp", &["seccomp filters of its own"]);
}

#[test]
fn refuse_hardware_breakpoint() {
    refuse("debugreg", &["hardware breakpoints"]);
}

#[test]
fn refuse_local_descriptor_table() {
    refuse("ldt", &["local descriptor table"]);
}

#[test]
fn refuse_numa_memory_policy() {
    refuse("mempolicy", &["numa memory policy"]);
}

#[test]
fn refuse_unix_out_of_band_byte() {
    refuse("unix-oob", &["out-of-band byte"]);
}

/// A UDP datagram waiting on a socket that reports receive metadata
/// (SO_TIMESTAMP): requeued at restore, it would carry a new time.
#[test]
fn refuse_udp_datagram_metadata() {
    refuse("udp-timestamp", &["SO_TIMESTAMP"]);
}

#[test]
fn refuse_strict_seccomp() {
    refuse_child(
        "refuse_strict_seccomp",
        "seccomp-strict",
        "seccomp mode 1 (strict)",
    );
}

/// Seccomp filters (errno and kill actions, the LOG flag, a thread that
/// inherited them, a child with one more and no_new_privs) act exactly as
/// before; the dump's own remote calls, which two filters would punish by
/// killing the process, are not filtered.
#[test]
fn cr_seccomp_filters() {
    cr("cr_seccomp_filters", Program::Bin("tp_seccomp"), &[]);
}

#[test]
fn negative_seccomp() {
    negative_cr(
        "negative_seccomp",
        Program::Bin("tp_seccomp"),
        &[],
        "Seccomp_filters",
    );
}

#[test]
fn refuse_numa_policy_of_a_mapping() {
    refuse("mbind", &["numa memory policy preferred", "mapping at"]);
}

#[test]
fn refuse_memory_deny_write_execute() {
    refuse("mdwe", &["memory-deny-write-execute"]);
}

#[test]
fn refuse_machine_check_kill_policy() {
    refuse("mce", &["machine-check kill policy"]);
}

#[test]
fn refuse_syscall_user_dispatch() {
    refuse("sud", &["syscall user dispatch"]);
}

#[test]
fn refuse_controlling_terminal_without_shell_job() {
    let _pty = pty_lock();
    refuse("ctty", &["controlling terminal"]);
}

#[test]
fn refuse_stateful_character_device() {
    refuse("chardev", &["driver state cannot be saved"]);
}

#[test]
fn refuse_packet_pipe_with_queued_packets() {
    refuse("packet-pipe", &["packet-mode pipe"]);
}

#[test]
fn refuse_pdeath_child_of_a_non_leader_thread() {
    refuse("thread-child-pdeath", &["parent-death signal"]);
}

#[test]
fn refuse_posix_message_queue() {
    refuse("mqueue", &["posix message queue"]);
}

#[test]
fn refuse_detached_mount() {
    refuse("detached-mount", &["detached mount"]);
}

#[test]
fn refuse_process_keyring() {
    refuse("keyring", &["process keyring of its own"]);
}

#[test]
fn refuse_autogroup_nice() {
    refuse("autogroup", &["autogroup nice"]);
}

#[test]
fn refuse_thread_with_own_pdeath_signal() {
    refuse("thread-pdeath", &["parent-death signal of its own"]);
}

#[test]
fn refuse_guard_region() {
    refuse("guard", &["guard region"]);
}

/// A pty master held in the tree (its slave closed) is a pair of the tree
/// now: restored with its index, the slave's closed state kept.
#[test]
fn cr_unsupported_ptmx_now_supported() {
    cr_tp_unsupported_pty("cr_unsupported_ptmx", "ptmx");
}

/// `cr` of tp_unsupported `--with what`, a case with ptys (serialized).
fn cr_tp_unsupported_pty(name: &str, what: &str) {
    let _pty = pty_lock();
    cr(name, Program::Bin("tp_unsupported"), &["--with", what]);
}

/// A session leader whose controlling terminal is a pty of the tree.
#[test]
fn cr_unsupported_ctty_now_supported() {
    cr_tp_unsupported_pty("cr_unsupported_ctty", "ctty-own");
}

/// Input written to a pty and not yet read cannot be read without
/// consuming it: refused by name.
#[test]
fn refuse_pty_with_queued_input() {
    let _pty = pty_lock();
    refuse("pty-queued", &["not yet read"]);
}

/// Shell jobs get the restorer's terminal for every terminal descriptor:
/// descriptors of a second terminal are refused by name even with `-j`.
#[test]
fn refuse_two_terminals_with_shell_job() {
    let _pty = pty_lock();
    refused_dump(
        "refuse_two_ttys",
        Program::Bin("tp_unsupported"),
        &["--with", "two-ttys"],
        &["-j"],
        &["a second terminal"],
        false,
    );
}

#[test]
fn refuse_gdt_tls_entry() {
    refuse("gdt-tls", &["gdt tls entry"]);
}

/// The program that used to be refused for its TCP listener now checkpoints.
#[test]
fn cr_unsupported_tcp_now_supported() {
    cr(
        "cr_unsupported_tcp",
        Program::Bin("tp_unsupported"),
        &["--with", "tcp"],
    );
}

/// Other socket families stay refused by name.
#[test]
fn refuse_unsupported_xdp_socket() {
    refuse("xdp", &["AF_XDP socket"]);
}

/// The program that used to be refused for its socket pair now checkpoints.
#[test]
fn cr_unsupported_socket_now_supported() {
    cr(
        "cr_unsupported_socket",
        Program::Bin("tp_unsupported"),
        &["--with", "socket"],
    );
}

#[test]
fn cr_epoll_eventfd() {
    cr("cr_epoll", Program::Bin("tp_epoll"), &[]);
}

#[test]
fn cr_inotify() {
    cr("cr_inotify", Program::Bin("tp_inotify"), &[]);
}

/// A pty pair inside the tree: master, slaves, a session with it as its
/// controlling terminal, a foreground group, non-default settings.
#[test]
fn cr_pty() {
    let _pty = pty_lock();
    cr("cr_pty", Program::Bin("tp_pty"), &[]);
}

/// A pty pair whose output was stopped with IXON on, by a typed ^S or by
/// tcflow(TCOOFF): the two look the same (the kernel does not show which;
/// typing ^Q to find out would restart a ^S stop of the running
/// original), so the dump refuses both by name, and the program then
/// finds its stop as it was (^Q restarts the first, only TCOON the
/// second).
#[test]
fn refuse_pty_output_stopped_by_stop_char() {
    let _pty = pty_lock();
    refused_dump(
        "refuse_pty_output_stopped_by_stop_char",
        Program::Bin("tp_ptystop"),
        &["--how", "stop-char"],
        &[],
        &["output stopped while IXON is on", "cannot be told apart"],
        true,
    );
}

#[test]
fn refuse_pty_output_stopped_by_tcooff_with_ixon() {
    let _pty = pty_lock();
    refused_dump(
        "refuse_pty_output_stopped_by_tcooff_with_ixon",
        Program::Bin("tp_ptystop"),
        &["--how", "tcooff-ixon"],
        &[],
        &["output stopped while IXON is on", "cannot be told apart"],
        true,
    );
}

/// Stopped by tcflow(TCOOFF) (IXON off): still stopped, and only TCOON
/// restarts it.
#[test]
fn cr_pty_output_stopped_by_tcooff() {
    let _pty = pty_lock();
    cr(
        "cr_pty_output_stopped_by_tcooff",
        Program::Bin("tp_ptystop"),
        &["--how", "tcooff"],
    );
}

/// The same with the master in packet mode: the status byte the stop
/// queued had been read before the dump, and none waits after restore.
#[test]
fn cr_pty_output_stopped_by_tcooff_packet_mode() {
    let _pty = pty_lock();
    cr(
        "cr_pty_output_stopped_by_tcooff_packet_mode",
        Program::Bin("tp_ptystop"),
        &["--how", "tcooff", "--packet"],
    );
}

/// The master's output stopped by tcflow(TCOOFF) on the master: still
/// stopped (the slave's not), and TCOON on the master restarts it.
#[test]
fn cr_pty_master_output_stopped_by_tcooff() {
    let _pty = pty_lock();
    cr(
        "cr_pty_master_output_stopped_by_tcooff",
        Program::Bin("tp_ptystop"),
        &["--how", "master"],
    );
}

/// The negative controls: never stopped, the program's after-check fails.
#[test]
fn negative_cr_pty_output_stopped() {
    let _pty = pty_lock();
    for how in ["tcooff", "master"] {
        let work = Work::new(&format!("negative_cr_pty_output_stopped_{how}"));
        let out = run_case(
            &work,
            Program::Bin("tp_ptystop"),
            &["--how", how, "--corrupt"],
            &Opts::default(),
        );
        assert!(out.result.starts_with("FAIL: "), "{how}: {out:?}");
    }
}

/// An inotify instance with events waiting is refused by name (they
/// cannot be saved), and the events are still there afterwards.
#[test]
fn refuse_inotify_with_queued_events() {
    refused_dump(
        "refuse_inotify_queued",
        Program::Bin("tp_inotify"),
        &["--queued"],
        &[],
        &["inotify", "unread events"],
        false,
    );
}

#[test]
fn cr_unix_sockets() {
    cr("cr_unix_sockets", Program::Bin("tp_sockets"), &[]);
}

/// Unix socket pairs with data queued (stream, datagram, seqpacket),
/// shutdown state and options.
#[test]
fn cr_unix_queued() {
    cr("cr_unix_queued", Program::Bin("tp_unix"), &[]);
}

/// SO_PEERCRED and SO_PEERGROUPS of socket pairs: made again by their
/// creator's PID and ids (a process of the tree, or one that exited);
/// of a connection waiting in an accept queue: connected again by the
/// process holding the client, with its PID and ids.
#[test]
fn cr_unix_peercred() {
    cr("cr_unix_peercred", Program::Bin("tp_unix"), &["--peercred"]);
}

/// SO_PEERCRED of listeners and of connections waiting in their accept
/// queues, in the restorer's PID namespace.
#[test]
fn cr_unix_peercred_listen() {
    cr(
        "cr_unix_peercred_listen",
        Program::Bin("tp_unix"),
        &["--peercred-listen"],
    );
}

/// The same as PID 1 of a PID namespace of its own: listened on again
/// and connected by the root and its helpers with the namespace's PIDs.
#[test]
fn cr_unix_peercred_listen_own_pid_ns() {
    let work = Work::new("cr_unix_peercred_listen_own_pid_ns");
    cr_own_pid_ns(&work, Program::Bin("tp_unix"), &["--peercred-listen"]).assert_pass(&work);
}

/// The same restored with `--new-pid-ns`.
#[test]
fn cr_unix_peercred_listen_new_pid_ns() {
    let work = Work::new("cr_unix_peercred_listen_new_pid_ns");
    cr_new_pid_ns(&work, Program::Bin("tp_unix"), &["--peercred-listen"]).assert_pass(&work);
}

/// Its negative control in a PID namespace: another PID expected fails.
#[test]
fn negative_cr_unix_peercred_listen_own_pid_ns() {
    let work = Work::new("negative_cr_unix_peercred_listen_own_pid_ns");
    let out = cr_own_pid_ns(
        &work,
        Program::Bin("tp_unix"),
        &["--peercred-listen", "--corrupt"],
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains("waited"),
        "{out:?}"
    );
}

/// The negative control of the waiting connection's SO_PEERCRED, through
/// a real dump and restore: another PID expected there must fail.
#[test]
fn negative_cr_unix_peercred_waiting() {
    let work = Work::new("negative_cr_unix_peercred_waiting");
    let out = run_case(
        &work,
        Program::Bin("tp_unix"),
        &["--peercred", "--corrupt-waiting"],
        &Opts::default(),
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains("waited"),
        "{out:?}"
    );
}

selfcheck!(
    selfcheck_unix_peercred,
    negative_unix_peercred,
    Program::Bin("tp_unix"),
    ["--peercred"]
);

/// Descriptors in flight (SCM_RIGHTS) in datagram and seqpacket queues:
/// a pipe's ends, a regular file, a socket, each the very description
/// the program holds, with the message boundaries.
#[test]
fn cr_unix_rights_in_flight() {
    cr("cr_unix_rights", Program::Bin("tp_rights"), &[]);
}

#[test]
fn selfcheck_unix_rights_in_flight() {
    let work = Work::new("selfcheck_unix_rights");
    run_plain(&work, Program::Bin("tp_rights"), &[]).assert_pass(&work);
}

/// The negative control after a real dump and restore.
#[test]
fn negative_unix_rights_in_flight() {
    negative_cr("negative_unix_rights", Program::Bin("tp_rights"), &[], "");
}

/// A descriptor in flight that no process of the tree holds any more is
/// refused by name.
#[test]
fn refuse_unix_rights_not_held() {
    refused_dump(
        "refuse_unix_rights_not_held",
        Program::Bin("tp_rights"),
        &["--closed"],
        &[],
        &["scm_rights", "pipe:[", "no process of the tree holds"],
        true,
    );
}

/// Multicast memberships of UDP sockets (IPv4 any-source, include and
/// exclude source filters; IPv6) on lo.
#[test]
fn cr_udp_multicast() {
    cr("cr_udp_multicast", Program::Bin("tp_mcast"), &[]);
}

#[test]
fn selfcheck_udp_multicast() {
    let work = Work::new("selfcheck_udp_multicast");
    run_plain(&work, Program::Bin("tp_mcast"), &[]).assert_pass(&work);
}

/// The negative control after a real dump and restore.
#[test]
fn negative_udp_multicast() {
    negative_cr("negative_udp_multicast", Program::Bin("tp_mcast"), &[], "");
}

/// A descriptor in flight on a stream socket is refused by name.
#[test]
fn refuse_unix_rights_in_flight() {
    refused_dump(
        "refuse_unix_rights",
        Program::Bin("tp_unix"),
        &["--rights"],
        &[],
        &["scm_rights"],
        false,
    );
}

/// Clients waiting in a unix listener's accept queue are connected again,
/// in order.
#[test]
fn cr_unix_pending_connections() {
    cr("cr_unix_pending", Program::Bin("tp_unix"), &["--pending"]);
}

/// The negative control: the other order fails.
#[test]
fn negative_unix_pending_connections() {
    negative_cr(
        "negative_unix_pending",
        Program::Bin("tp_unix"),
        &["--pending"],
        "",
    );
}

/// A waiting client that already sent data is refused.
#[test]
fn refuse_unix_pending_with_data() {
    refused_dump(
        "refuse_unix_pending_data",
        Program::Bin("tp_unix"),
        &["--pending", "--pending-data"],
        &[],
        &["data sent"],
        false,
    );
}

/// A waiting client held by two processes is refused: which one
/// connected (what the accepted end reports as SO_PEERCRED) is unknown.
#[test]
fn refuse_unix_pending_held_by_two() {
    refused_dump(
        "refuse_unix_pending_two",
        Program::Bin("tp_unix"),
        &["--pending", "--pending-shared"],
        &[],
        &["held by processes"],
        false,
    );
}

/// A unix listener whose path was unlinked is refused.
#[test]
fn refuse_unix_unlinked_path() {
    refused_dump(
        "refuse_unix_unlinked",
        Program::Bin("tp_unix"),
        &["--unlinked"],
        &[],
        &["unlinked or replaced"],
        false,
    );
}

/// TCP listeners (IPv4, IPv6-only, dual-stack) with their options and
/// backlog, UDP sockets bound and connected.
#[test]
fn cr_inet_sockets() {
    cr("cr_inet_sockets", Program::Bin("tp_inet"), &[]);
}

/// A half-open connection (SYN_RECV) of a listener is refused by name...
#[test]
fn refuse_tcp_syn_recv() {
    refused_dump(
        "refuse_tcp_syn_recv",
        Program::Bin("tp_inet"),
        &["--syn-recv"],
        &[],
        &["half-open", "--skip-in-flight"],
        true,
    );
}

/// ...and dropped with --skip-in-flight (the client's data then finds no
/// connection to complete).
#[test]
fn cr_tcp_skip_syn_recv() {
    skip_in_flight_case("cr_tcp_skip_syn_recv", "--syn-recv");
}

/// Options that are not ints (SO_LINGER, TCP_CONGESTION, IP_OPTIONS), the
/// multicast interface, TTL/TOS and IPv6 hop and class options, and 24
/// plain int options of the socket, TCP, UDP, IP and IPv6 levels set to
/// values a new socket does not have.
#[test]
fn cr_inet_socket_options() {
    cr(
        "cr_inet_socket_options",
        Program::Bin("tp_inet"),
        &["--opts"],
    );
}

selfcheck!(
    selfcheck_inet_socket_options,
    negative_inet_socket_options,
    Program::Bin("tp_inet"),
    ["--opts"]
);

/// A connection waiting in a listener's accept queue is refused by name...
#[test]
fn refuse_tcp_in_flight() {
    refused_dump(
        "refuse_tcp_in_flight",
        Program::Bin("tp_inet"),
        &["--in-flight"],
        &[],
        &["--skip-in-flight"],
        false,
    );
}

/// ...and dropped with --skip-in-flight: the listener accepts new ones.
#[test]
fn cr_tcp_skip_in_flight() {
    skip_in_flight_case("cr_tcp_skip_in_flight", "--in-flight");
}

/// tp_inet in `mode`, dumped with --skip-in-flight: what was in flight is
/// dropped, the listener works on.
fn skip_in_flight_case(name: &str, mode: &str) {
    let work = Work::new(name);
    let opts = Opts {
        dump_extra: vec!["--skip-in-flight"],
        ..Opts::default()
    };
    run_case(
        &work,
        Program::Bin("tp_inet"),
        &[mode, "--expect-dropped"],
        &opts,
    )
    .assert_pass(&work);
}

/// The negative control of --skip-in-flight: the same check fails.
#[test]
fn negative_tcp_skip_in_flight() {
    let work = Work::new("negative_tcp_skip_in_flight");
    let opts = Opts {
        dump_extra: vec!["--skip-in-flight"],
        ..Opts::default()
    };
    let out = run_case(
        &work,
        Program::Bin("tp_inet"),
        &["--in-flight", "--expect-dropped", "--corrupt"],
        &opts,
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

#[test]
fn refuse_tcp_established() {
    refused_dump(
        "refuse_tcp_established",
        Program::Bin("tp_inet"),
        &["--established"],
        &[],
        &["--tcp-established"],
        false,
    );
}

/// Datagrams waiting in UDP sockets come back with their sources.
#[test]
fn cr_udp_queued() {
    cr("cr_udp_queued", Program::Bin("tp_inet"), &["--udp-queued"]);
}

#[test]
fn negative_udp_queued() {
    negative_cr(
        "negative_udp_queued",
        Program::Bin("tp_inet"),
        &["--udp-queued"],
        "",
    );
}

/// python3 -m http.server dumped while listening answers curl after restore.
#[test]
fn cr_http_server() {
    cr("cr_http_server", Program::Bin("tp_httpd"), &[]);
}

/// A deleted file above the size an image may hold is refused by name.
#[test]
fn refuse_unsupported_huge_deleted() {
    refuse("huge-deleted", &["huge.dat (deleted)"]);
}

/// The program that used to be refused for its pipe now checkpoints.
#[test]
fn cr_unsupported_pipe_now_supported() {
    cr(
        "cr_unsupported_pipe",
        Program::Bin("tp_unsupported"),
        &["--with", "pipe"],
    );
}

#[test]
fn cr_threads() {
    cr("cr_threads", Program::Bin("tp_threads"), &[]);
}

/// The program that used to be refused for its thread now checkpoints.
#[test]
fn cr_unsupported_thread_now_supported() {
    cr(
        "cr_unsupported_thread",
        Program::Bin("tp_unsupported"),
        &["--with", "thread"],
    );
}

#[test]
fn cr_shared() {
    cr("cr_shared", Program::Bin("tp_shared"), &[]);
}

/// Shared anonymous memory whose pages are in the object but in no page
/// table (written by a child since exited, dropped by MADV_DONTNEED), in a
/// mapping split at an offset: every page comes back, and the image holds
/// each written page of the object once, not once per process.
#[test]
fn cr_shmem() {
    let work = Work::new("cr_shmem");
    run_case(&work, Program::Bin("tp_shmem"), &[], &Opts::default()).assert_pass(&work);
    let addr: u64 = fs::read_to_string(work.path("shm.addr"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| fail(&work, "no shm.addr"));
    let runs = page_runs(&show(&work, &work.img()));
    let saved = pages_in(&runs, addr, addr + 1024 * 4096, 4096);
    assert_eq!(
        saved,
        14,
        "pages of the object saved (14 written){}",
        work.diagnostics()
    );
}

#[test]
fn cr_memfd() {
    cr("cr_memfd", Program::Bin("tp_memfd"), &[]);
}

#[test]
fn cr_fdkinds() {
    cr("cr_fdkinds", Program::Bin("tp_fdkinds"), &[]);
}

/// An O_TMPFILE file never linked comes back linkable, made by
/// open(O_TMPFILE) with its description's flags (F_GETFL).
#[test]
fn cr_tmpfile() {
    cr("cr_tmpfile", Program::Bin("tp_fdkinds"), &["--tmpfile"]);
}

/// A description open(O_TMPFILE) made, of a file since linked (F_GETFL
/// keeps O_TMPFILE), is refused by name; the process runs on unchanged.
#[test]
fn refuse_tmpfile_linked() {
    refused_dump(
        "refuse_tmpfile_linked",
        Program::Bin("tp_fdkinds"),
        &["--tmpfile-linked"],
        &[],
        &["O_TMPFILE", "since linked"],
        true,
    );
}

/// An O_TMPFILE file whose directory is gone is refused by name (it can
/// only be made again in that directory).
#[test]
fn refuse_tmpfile_directory_gone() {
    refused_dump(
        "refuse_tmpfile_directory_gone",
        Program::Bin("tp_fdkinds"),
        &["--tmpfile-gone"],
        &[],
        &["O_TMPFILE", "is gone"],
        true,
    );
}

selfcheck!(
    selfcheck_tmpfile,
    negative_tmpfile,
    Program::Bin("tp_fdkinds"),
    ["--tmpfile"]
);

/// Deleted files (owner, mode, holes, times), memfd times, deleted
/// directories as cwd and fd, /proc entries and pidfds of the tree.
#[test]
fn cr_files2() {
    cr("cr_files2", Program::Bin("tp_files2"), &[]);
}

/// Starts test program `name` with `stasis run -d` as the init of a new
/// PID namespace and waits until it is ready; returns it (its PID here).
fn run_in_pid_ns(work: &Work, name: &str) -> Proc {
    run_in_pid_ns_with(work, name, &[])
}

/// The same with arguments after the work directory.
fn run_in_pid_ns_with(work: &Work, name: &str, args: &[&str]) -> Proc {
    let dir = work.dir().to_str().expect("utf-8").to_string();
    let prog = bin_path(name);
    ensure_subreaper();
    let pidfile_arg = format!("{dir}/run.pid");
    let mut run = vec![
        "run",
        "-d",
        "--pidfile",
        &pidfile_arg,
        "--",
        prog.to_str().expect("utf-8"),
        &dir,
    ];
    run.extend_from_slice(args);
    ok(
        work,
        "stasis run",
        &stasis(work, &run, Duration::from_secs(60)),
    );
    let mut init = Proc::adopt(pidfile(work, "run.pid"));
    step(
        work,
        "waiting for ready",
        wait_ready(work, &mut init, Duration::from_secs(30)),
    );
    init
}

/// A `stasis run` tree that mounted a tmpfs in its private mount namespace:
/// the restore's copy would lack it, so the dump refuses it by name, and
/// the tree runs on with its mount.
#[test]
fn refuse_mount_made_in_a_run_tree() {
    let work = Work::new("refuse_run_tree_mount");
    let t = Duration::from_secs(60);
    let mut init = run_in_pid_ns_with(&work, "tp_unsupported", &["--with", "own-tmpfs"]);
    let out = dump(&work, init.pid, &[], t);
    assert!(
        out.code == Some(1)
            && out.stderr.contains("tmpfs on")
            && out.stderr.contains("mount of its own")
            && out.stderr.lines().count() == 1,
        "the run tree's own tmpfs was not refused by name: {out:?}"
    );
    assert!(!work.img().join("inventory.img").exists());
    step(
        &work,
        "tree after the refused dump",
        init.check_running_untraced(),
    );
    finish(&work, &mut init, t).assert_pass(&work);
}

/// The same inside a PID namespace (`stasis run`): /proc paths and pidfds
/// use the namespace's PIDs and its own /proc, before and after.
#[test]
fn cr_files2_in_pid_ns() {
    cr_in_pid_ns("cr_files2_pidns", "tp_files2");
}

/// tp_pty as PID 1 of a PID namespace (`stasis run`): the pty's session
/// and foreground group are the namespace's PIDs in the image.
#[test]
fn cr_pty_in_pid_ns() {
    let _pty = pty_lock();
    cr_in_pid_ns("cr_pty_pidns", "tp_pty");
}

/// `program` as PID 1 of a PID namespace (`stasis run`): dump, restore
/// (-d), go, and it must pass.
fn cr_in_pid_ns(name: &str, program: &str) {
    let work = Work::new(name);
    let t = Duration::from_secs(60);
    let dir = work.dir().to_str().expect("utf-8").to_string();
    let mut init = run_in_pid_ns(&work, program);
    let img = format!("{dir}/img");
    let pid = init.pid.to_string();
    let dump_args = ["dump", "-t", &pid, "-D", &img, "-o", "dump.log", "-v4"];
    ok(&work, "dump", &stasis(&work, &dump_args, t));
    step(
        &work,
        "waiting for the dumped init",
        init.wait(Duration::from_secs(10)),
    );
    let restore_args = [
        "restore",
        "-D",
        &img,
        "-d",
        "--pidfile",
        &format!("{dir}/r.pid"),
        "-o",
        "restore.log",
        "-v4",
    ];
    ok(&work, "restore", &stasis(&work, &restore_args, t));
    let mut r = Proc::adopt(pidfile(&work, "r.pid"));
    work.release_go();
    let exit = step(&work, "waiting for the restored init", r.wait(t));
    assert_eq!(
        exit,
        Exit::Code(0),
        "restored program did not pass: {exit:?}{}",
        work.diagnostics()
    );
}

/// `dump -R` reads saved files without moving their access times
/// (O_NOATIME) and leaves every descriptor of tp_files2 as it was.
#[test]
fn dump_leave_running_files2() {
    leave_running("dump_leave_running_files2", Program::Bin("tp_files2"), &[]);
}

#[test]
fn refuse_pidfd_outside_tree() {
    refused_dump(
        "refuse_pidfd_outside",
        Program::Bin("tp_files2"),
        &["--refuse", "outside-pidfd"],
        &[],
        &["pidfd of a process outside the dumped tree"],
        false,
    );
}

#[test]
fn refuse_pidfd_of_reaped_process() {
    refused_dump(
        "refuse_pidfd_reaped",
        Program::Bin("tp_files2"),
        &["--refuse", "reaped-pidfd"],
        &[],
        &["pidfd of a process that has exited and was reaped"],
        false,
    );
}

#[test]
fn refuse_pidfd_shared_with_another_process() {
    refused_dump(
        "refuse_pidfd_shared",
        Program::Bin("tp_files2"),
        &["--refuse", "shared-pidfd"],
        &[],
        &["shared with another process"],
        false,
    );
}

#[test]
fn refuse_proc_file_outside_tree() {
    refused_dump(
        "refuse_proc_outside",
        Program::Bin("tp_files2"),
        &["--refuse", "outside-proc"],
        &[],
        &["/status): a /proc entry of process"],
        false,
    );
}

#[test]
fn refuse_proc_cwd_outside_tree() {
    refused_dump(
        "refuse_proc_cwd_outside",
        Program::Bin("tp_files2"),
        &["--refuse", "outside-cwd"],
        &[],
        &["working directory /proc/"],
        false,
    );
}

#[test]
fn cr_cow_memory_stays_shared() {
    cr("cr_cow", Program::Bin("tp_cow"), &[]);
}

#[test]
fn cr_timers() {
    cr("cr_timers", Program::Bin("tp_timers"), &[]);
}

#[test]
fn cr_tree() {
    cr("cr_tree", Program::Bin("tp_tree"), &[]);
}

/// The program that used to be refused for its child now checkpoints.
#[test]
fn cr_unsupported_child_now_supported() {
    cr(
        "cr_unsupported_child",
        Program::Bin("tp_unsupported"),
        &["--with", "child"],
    );
}

#[test]
fn check_succeeds() {
    let work = Work::new("check_succeeds");
    let out = stasis(&work, &["check"], Duration::from_secs(60));
    assert!(
        out.success(),
        "stasis check failed ({:?}): {}",
        out.code,
        out.stderr
    );
    assert!(
        !(out.stdout.trim().is_empty() && out.stderr.trim().is_empty()),
        "stasis check printed nothing"
    );
}

#[test]
fn dump_of_missing_pid_fails() {
    let work = Work::new("dump_of_missing_pid_fails");
    // A PID above any pid_max cannot exist.
    let out = dump(&work, 99_999_999, &[], Duration::from_secs(60));
    assert!(
        out.code.is_some_and(|c| c != 0),
        "dump of a missing PID succeeded: {out:?}"
    );
    assert!(
        out.stderr.contains("99999999"),
        "error does not name the PID: {:?}",
        out.stderr
    );
}

fn ok(work: &Work, what: &str, out: &CmdOut) {
    if !out.success() {
        fail(
            work,
            format!("{what} failed ({:?}): {}", out.code, out.stderr),
        );
    }
}

/// `stasis run` puts a tree in its own PID namespace; it is checkpointed,
/// restored, checkpointed again (a restored tree dumps like any other),
/// and that image restored twice at once: two copies with the same PIDs
/// inside, side by side. Both must pass.
#[test]
fn pidns_tree_twice_and_side_by_side() {
    let work = Work::new("pidns_tree");
    let t = Duration::from_secs(60);
    let dir = work.dir().to_str().expect("utf-8").to_string();
    let mut init = run_in_pid_ns(&work, "tp_tree");
    let ready = fs::read_to_string(work.path("ready")).unwrap_or_default();
    assert!(
        ready.starts_with("READY 1"),
        "the program is not PID 1 of its namespace: {ready:?}"
    );

    let img1 = format!("{dir}/img1");
    ok(
        &work,
        "dump",
        &stasis(
            &work,
            &[
                "dump",
                "-t",
                &init.pid.to_string(),
                "-D",
                &img1,
                "-o",
                "dump.log",
                "-v4",
            ],
            t,
        ),
    );
    let exit = step(
        &work,
        "waiting for the dumped init",
        init.wait(Duration::from_secs(10)),
    );
    assert_eq!(
        exit,
        Exit::Signal(libc::SIGKILL),
        "dumped init ended with {exit:?}"
    );

    ok(
        &work,
        "restore 1",
        &stasis(
            &work,
            &[
                "restore",
                "-D",
                &img1,
                "-d",
                "--pidfile",
                &format!("{dir}/r1.pid"),
                "-o",
                "restore.log",
                "-v4",
            ],
            t,
        ),
    );
    let mut r1 = Proc::adopt(pidfile(&work, "r1.pid"));
    let img2 = format!("{dir}/img2");
    ok(
        &work,
        "second dump",
        &stasis(
            &work,
            &[
                "dump",
                "-t",
                &r1.pid.to_string(),
                "-D",
                &img2,
                "-o",
                "dump.log",
                "-v4",
            ],
            t,
        ),
    );
    let exit = step(
        &work,
        "waiting for the restored init",
        r1.wait(Duration::from_secs(10)),
    );
    assert_eq!(
        exit,
        Exit::Signal(libc::SIGKILL),
        "re-dumped init ended with {exit:?}"
    );

    let mut copies = Vec::new();
    for n in ["a", "b"] {
        let pf = format!("{dir}/copy-{n}.pid");
        ok(
            &work,
            "restore copy",
            &stasis(
                &work,
                &[
                    "restore",
                    "-D",
                    &img2,
                    "-d",
                    "--pidfile",
                    &pf,
                    "-o",
                    &format!("restore-{n}.log"),
                    "-v4",
                ],
                t,
            ),
        );
        copies.push(Proc::adopt(pidfile(&work, &format!("copy-{n}.pid"))));
    }
    assert_ne!(copies[0].pid, copies[1].pid);
    for c in &copies {
        let ns = fs::read_to_string(format!("/proc/{}/status", c.pid)).unwrap_or_default();
        let nspid = ns
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .unwrap_or("")
            .to_string();
        assert!(
            nspid.trim_end().ends_with("\t1"),
            "copy {} is not PID 1 of its namespace: {nspid:?}",
            c.pid
        );
    }
    work.release_go();
    for c in &mut copies {
        let exit = step(&work, "waiting for a copy", c.wait(Duration::from_secs(30)));
        assert_eq!(
            exit,
            Exit::Code(0),
            "copy {} did not pass: {exit:?}{}",
            c.pid,
            work.diagnostics()
        );
    }
}

/// A plain tree restored into a fresh PID namespace while its PIDs are
/// still taken here (the original keeps running after `dump -R`): a helper
/// init becomes PID 1 there, the tree keeps its own PIDs, and the helper
/// exits with the root's status. Original and copy both pass.
#[test]
fn restore_into_new_pid_ns_while_pids_taken() {
    let work = Work::new("new_pid_ns");
    let t = Duration::from_secs(60);
    let dir = work.dir().to_str().expect("utf-8").to_string();
    let mut orig = start(&work, Program::Bin("tp_shared"), &[]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut orig, Duration::from_secs(30)),
    );
    ok(&work, "dump -R", &dump(&work, orig.pid, &["-R"], t));
    let taken = restore_detached(&work, &[], t);
    assert!(
        !taken.success(),
        "restore over taken PIDs succeeded: {taken:?}"
    );
    let out = stasis(
        &work,
        &[
            "restore",
            "-D",
            work.img().to_str().expect("utf-8"),
            "--new-pid-ns",
            "-d",
            "--pidfile",
            &format!("{dir}/copy.pid"),
        ],
        t,
    );
    ok(&work, "restore --new-pid-ns", &out);
    let copy_root = pidfile(&work, "copy.pid");
    assert_ne!(copy_root, orig.pid, "the copy got the original's host PID");
    let status = fs::read_to_string(format!("/proc/{copy_root}/status")).unwrap_or_default();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or("")
        .to_string();
    assert!(
        nspid.trim_end().ends_with(&format!("\t{}", orig.pid)),
        "the copy does not have PID {} in its namespace: {nspid:?}",
        orig.pid
    );
    // The helper init (PID 1 there) is the copy's parent; it is ours to wait for.
    let helper = fs::read_to_string(format!("/proc/{copy_root}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
        })
        .unwrap_or_else(|| fail(&work, "no parent of the copy"));
    let mut helper = Proc::adopt(helper);
    work.release_go();
    let e = step(&work, "original", orig.wait(Duration::from_secs(30)));
    assert_eq!(
        e,
        Exit::Code(0),
        "original did not pass: {e:?}{}",
        work.diagnostics()
    );
    let e = step(&work, "copy", helper.wait(Duration::from_secs(30)));
    assert_eq!(
        e,
        Exit::Code(0),
        "copy did not pass: {e:?}{}",
        work.diagnostics()
    );
}

/// A daemon after a double fork: its session leader has exited, and a
/// process group of its has lost its leader too. Restore recreates both
/// through helper processes (which then go), so the daemon and its child
/// keep their session and group.
#[test]
fn cr_daemon_with_leaderless_session_and_group() {
    let work = Work::new("cr_daemon");
    let opts = Opts::default();
    let mut starter = start(&work, Program::Bin("tp_daemon"), &[]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut starter, opts.ready_timeout),
    );
    let mut daemon = Proc::adopt(pidfile(&work, "daemon.pid"));
    dump_and_check_gone(&work, &mut daemon, &opts);
    let mut restored = restore_and_adopt(&work, daemon.pid, &opts);
    let outcome = finish(&work, &mut restored, opts.finish_timeout);
    outcome.assert_pass(&work);
    let e = step(&work, "starter", starter.wait(Duration::from_secs(10)));
    assert_eq!(e, Exit::Code(0), "starter: {e:?}");
}

/// A new pseudo-terminal: (master, slave path).
fn open_pty() -> (std::fs::File, String) {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt returns a fresh descriptor we then own.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(m >= 0, "posix_openpt");
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes into buf.
    unsafe {
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
    }
    // SAFETY: buf holds a NUL-terminated path now.
    let path = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: m is ours.
    (unsafe { std::fs::File::from_raw_fd(m) }, path)
}

/// A shell job: a program whose stdio is a terminal is dumped with `-j`
/// and restored with `-j` by a stasis whose stdio is a terminal; the
/// program gets that terminal and writes to it.
#[test]
fn cr_shell_job_on_a_terminal() {
    let _pty = pty_lock();
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let work = Work::new("cr_shell_job");
    let t = Duration::from_secs(60);
    let (mut master, slave) = open_pty();
    let tty = |p: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .expect("open pty slave")
    };
    let mut cmd = std::process::Command::new(bin_path("tp_tty"));
    cmd.arg(work.dir())
        .stdin(tty(&slave))
        .stdout(tty(&slave))
        .stderr(tty(&slave));
    // SAFETY: close_range in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    ensure_subreaper();
    let child = cmd.spawn().expect("spawn tp_tty");
    let mut p = Proc::adopt(child.id() as i32);
    drop(child);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, Duration::from_secs(30)),
    );
    let refused = dump(&work, p.pid, &[], t);
    assert!(
        !refused.success() && refused.stderr.contains("shell-job"),
        "a terminal without -j: {refused:?}"
    );
    ok(&work, "dump -j", &dump(&work, p.pid, &["-j"], t));
    let e = step(&work, "dumped process", p.wait(Duration::from_secs(10)));
    assert_eq!(e, Exit::Signal(libc::SIGKILL));
    let img = work.img().to_str().expect("utf-8").to_string();
    let pidfile = work.path("pidfile").to_str().expect("utf-8").to_string();
    let mut restore = std::process::Command::new(
        std::env::var("STASIS_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| {
                bin_path("tp_tty")
                    .parent()
                    .expect("target dir")
                    .join("stasis")
            }),
    );
    restore.args([
        "restore",
        "-j",
        "-d",
        "-D",
        &img,
        "--pidfile",
        &pidfile,
        "-o",
        "restore.log",
        "-v4",
    ]);
    restore
        .stdin(tty(&slave))
        .stdout(tty(&slave))
        .stderr(tty(&slave));
    let st = restore.status().expect("run stasis restore");
    assert!(
        st.success(),
        "restore -j failed: {st:?}{}",
        work.diagnostics()
    );
    let mut r = Proc::adopt(pidfile_pid(&work));
    work.release_go();
    let e = step(&work, "restored process", r.wait(Duration::from_secs(30)));
    assert_eq!(
        e,
        Exit::Code(0),
        "restored shell job did not pass: {e:?}{}",
        work.diagnostics()
    );
    // What it wrote arrived on the terminal.
    // SAFETY: make the master non-blocking for the read below.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            libc::F_SETFL,
            libc::O_NONBLOCK,
        )
    };
    let mut out = vec![0u8; 4096];
    let n = master.read(&mut out).unwrap_or(0);
    let text = String::from_utf8_lossy(&out[..n]);
    assert!(text.contains("TTY-OK"), "the terminal got {text:?}");
}

fn pidfile_pid(work: &Work) -> i32 {
    pidfile(work, "pidfile")
}

/// A JVM (about 20 threads, signal handlers, NIO's socket pair, its
/// perf-data file mapped shared) with a warmed-up heap carries on.
#[test]
fn cr_java() {
    if !have_java() {
        eprintln!("SKIP cr_java: no `java` on PATH (needs a JDK, e.g. openjdk-17-jdk-headless)");
        return;
    }
    let opts = Opts {
        ready_timeout: Duration::from_secs(120),
        ..Opts::default()
    };
    let work = Work::new("cr_java");
    run_case(&work, Program::Java, &[], &opts).assert_pass(&work);
}

#[test]
fn negative_java() {
    if !have_java() {
        eprintln!("SKIP negative_java: no `java` on PATH");
        return;
    }
    let work = Work::new("negative_java");
    let out = run_plain(&work, Program::Java, &["--corrupt"]);
    assert!(
        out.result.starts_with("FAIL"),
        "the negative control did not fail: {out:?}"
    );
}

// ---------------------------------------------------------------------------
// File locks and descriptor owners (criu's --file-locks).

fn locks_opts() -> Opts {
    Opts {
        dump_extra: vec!["--file-locks"],
        restore_extra: vec!["--file-locks"],
        ..Opts::default()
    }
}

/// POSIX, flock, OFD locks, a lease, F_SETOWN_EX/F_SETSIG and O_ASYNC
/// survive a dump with --file-locks.
#[test]
fn cr_file_locks() {
    let work = Work::new("cr_file_locks");
    run_case(&work, Program::Bin("tp_locks"), &[], &locks_opts()).assert_pass(&work);
}

/// The same with 600 more descriptors: the dump reads /proc/locks first
/// and the fdinfo of locked files' descriptors only.
#[test]
fn cr_file_locks_many_fds() {
    let work = Work::new("cr_file_locks_many");
    run_case(
        &work,
        Program::Bin("tp_locks"),
        &["--extra-fds", "600"],
        &locks_opts(),
    )
    .assert_pass(&work);
}

/// Without --file-locks the dump refuses by name, and the process keeps
/// running with every lock (its own checks after go prove it).
#[test]
fn refuse_file_locks_without_option() {
    let work = Work::new("refuse_file_locks");
    let opts = Opts::default();
    let mut p = start(&work, Program::Bin("tp_locks"), &[]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    let out = dump(&work, p.pid, &[], opts.stasis_timeout);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "dump of a process holding locks did not fail: {out:?}{}",
        work.diagnostics()
    );
    assert!(
        out.stderr.contains(&p.pid.to_string())
            && out.stderr.contains("lock on ")
            && out.stderr.contains("pass --file-locks"),
        "dump error does not name the PID, the lock and the option: {:?}",
        out.stderr
    );
    assert!(
        !work.img().join("inventory.img").exists(),
        "a failed dump left an inventory.img"
    );
    step(
        &work,
        "process after the refused dump",
        p.check_running_untraced(),
    );
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

/// A lock taken by someone else between dump and restore: the restore
/// fails naming the lock, and leaves no process behind.
#[test]
fn restore_fails_when_a_lock_was_taken_meanwhile() {
    let work = Work::new("restore_lock_taken");
    let opts = locks_opts();
    let mut p = start(&work, Program::Bin("tp_locks"), &[]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    dump_and_check_gone(&work, &mut p, &opts);
    let f = fs::File::open(work.path("flock_ex.dat")).expect("open flock_ex.dat");
    // SAFETY: flock on our own descriptor.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_SH | libc::LOCK_NB,
        )
    };
    assert_eq!(r, 0, "the contender could not take the free lock");
    let out = restore_detached(&work, &opts.restore_extra, opts.stasis_timeout);
    assert!(
        !out.success() && out.stderr.contains("flock_ex.dat") && out.stderr.contains("flock"),
        "restore did not fail naming the lock: {out:?}{}",
        work.diagnostics()
    );
    assert!(
        !pid_exists(p.pid),
        "the failed restore left process {}",
        p.pid
    );
    drop(f);
}

/// A process blocked in F_SETLKW is refused by name, even with
/// --file-locks, and the tree runs on unharmed.
#[test]
fn refuse_blocked_lock_waiter() {
    let work = Work::new("refuse_lock_waiter");
    let opts = Opts::default();
    let mut p = start(&work, Program::Bin("tp_locks"), &["--waiter"]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    let out = dump(&work, p.pid, &["--file-locks"], opts.stasis_timeout);
    assert!(
        out.code.is_some_and(|c| c != 0)
            && out.stderr.contains("blocked waiting for a file lock")
            && out.stderr.contains("F_SETLKW")
            && out.stderr.contains("posix.dat"),
        "dump of a blocked lock waiter did not fail naming it: {out:?}{}",
        work.diagnostics()
    );
    assert!(
        !work.img().join("inventory.img").exists(),
        "a failed dump left an inventory.img"
    );
    step(
        &work,
        "process after the refused dump",
        p.check_running_untraced(),
    );
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

/// The same inside a PID namespace (`stasis run`): owners and lock PIDs
/// are saved and restored in the namespace's numbering.
#[test]
fn cr_file_locks_in_pid_ns() {
    let work = Work::new("cr_file_locks_pidns");
    let t = Duration::from_secs(60);
    let dir = work.dir().to_str().expect("utf-8").to_string();
    let mut init = run_in_pid_ns(&work, "tp_locks");
    let img = format!("{dir}/img");
    let args = ["-D", &img, "-o", "log", "-v4", "--file-locks"];
    let pid_s = init.pid.to_string();
    let mut dump_args = vec!["dump", "-t", &pid_s];
    dump_args.extend_from_slice(&args);
    ok(&work, "dump", &stasis(&work, &dump_args, t));
    let exit = step(
        &work,
        "waiting for the dumped init",
        init.wait(Duration::from_secs(10)),
    );
    assert_eq!(exit, Exit::Signal(libc::SIGKILL), "dumped init: {exit:?}");
    let pf = format!("{dir}/r.pid");
    let mut restore_args = vec!["restore", "-d", "--pidfile", &pf];
    restore_args.extend_from_slice(&args);
    ok(&work, "restore", &stasis(&work, &restore_args, t));
    let mut r = Proc::adopt(pidfile(&work, "r.pid"));
    work.release_go();
    let exit = step(&work, "waiting for the restored init", r.wait(t));
    assert_eq!(
        exit,
        Exit::Code(0),
        "restored tp_locks did not pass: {exit:?}{}",
        work.diagnostics()
    );
}

// ---------------------------------------------------------------------------
// Per-process and per-thread settings (issue 9, part 4): tp_procattrs.

/// OOM score, THP/KSM modes, membarrier, mlockall, subreaper with an
/// orphan, coredump filter, per-mapping advice/locks/seals and per-thread
/// sched attributes (FIFO, DEADLINE, BATCH with RESET_ON_FORK), ioprio,
/// timer slack: all back after a restore.
#[test]
fn cr_procattrs() {
    cr("cr_procattrs", Program::Bin("tp_procattrs"), &[]);
}

/// mlockall(MCL_FUTURE) without MCL_ONFAULT: found by the probe and
/// given back (a new mapping comes out locked and populated).
#[test]
fn cr_procattrs_mlockall_future() {
    cr(
        "cr_procattrs_mlockall_future",
        Program::Bin("tp_procattrs"),
        &["--mlockall-future"],
    );
}

/// A process chroot()ed into WORK with its cwd in WORK/sub: restored with
/// that root (the harness reads /proc/PID/root; the program checks /,
/// /.., a file inside and its cwd).
#[test]
fn cr_chroot() {
    let work = Work::new("cr_chroot");
    let opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_chroot"), &[], &opts);
    dump_and_check_gone(&work, &mut p, &opts);
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    let root = fs::read_link(format!("/proc/{}/root", p.pid)).ok();
    assert_eq!(root.as_deref(), Some(work.dir()), "restored root");
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// Descriptors on /proc/meminfo and a sysfs file: link targets, offsets
/// and reads after a restore.
#[test]
fn cr_procsys_files() {
    cr("cr_procsys_files", Program::Bin("tp_procsys"), &[]);
}

/// Re-encodes the core file of `pid` in the image after `edit` changed
/// its JSON (valid header and checksum).
fn edit_core(work: &Work, pid: i32, edit: &dyn Fn(&mut serde_json::Value)) {
    let path = work.img().join(format!("core-{pid}.img"));
    let bytes = fs::read(&path).expect("read core");
    let mut v: serde_json::Value = serde_json::from_slice(&bytes[32..]).expect("core json");
    edit(&mut v);
    let payload = serde_json::to_vec(&v).expect("encode");
    let out = stasis_image::encode_metadata(stasis_image::FileKind::Core, &payload);
    fs::write(&path, out).expect("write core");
}

/// Starts tp_procattrs, dumps it and returns it (dead, PID free).
fn dumped_procattrs(work: &Work, opts: &Opts) -> Proc {
    let mut p = start(work, Program::Bin("tp_procattrs"), &[]);
    step(
        work,
        "waiting for ready",
        wait_ready(work, &mut p, opts.ready_timeout),
    );
    dump_and_check_gone(work, &mut p, opts);
    let v = show(work, &work.img());
    let attrs = &v["processes"][0]["proc_attrs"];
    assert_eq!(attrs["oom_score_adj"], 345, "image: {attrs}");
    assert_eq!(attrs["thp_disable"], 3, "image: {attrs}");
    assert_eq!(attrs["mlockall"], 6, "image: {attrs}");
    assert_eq!(attrs["child_subreaper"], true, "image: {attrs}");
    p
}

/// An OOM score below the restorer's cannot be given without
/// CAP_SYS_RESOURCE: the restore refuses it by name before creating
/// anything, and no process is left.
#[test]
fn refuse_procattrs_oom_score_lowered() {
    let work = Work::new("refuse_procattrs_oom_score_lowered");
    let opts = Opts::default();
    let p = dumped_procattrs(&work, &opts);
    edit_core(&work, p.pid, &|v| {
        v["proc_attrs"]["oom_score_adj"] = serde_json::json!(-500);
    });
    let out = restore_detached(&work, &[], opts.stasis_timeout);
    assert!(
        !out.success() && out.stderr.contains("oom_score_adj -500"),
        "restore with a lowered oom_score_adj did not refuse it by name: {out:?}{}",
        work.diagnostics()
    );
    assert!(
        out.stderr.contains("preflight"),
        "refused late: {}",
        out.stderr
    );
    assert!(!pid_exists(p.pid), "a process was left behind");
}

/// An image without `proc_attrs` (as older stasis wrote) still loads and
/// restores, and the program sees its settings lost: proof that its checks
/// would catch a restore that drops them.
#[test]
fn cr_procattrs_old_image_loses_settings() {
    let work = Work::new("cr_procattrs_old_image");
    let opts = Opts::default();
    let p = dumped_procattrs(&work, &opts);
    edit_core(&work, p.pid, &|v| {
        v.as_object_mut().expect("object").remove("proc_attrs");
    });
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    let out = finish(&work, &mut r, opts.finish_timeout);
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains("process settings"),
        "settings not in the image, yet the program saw none lost: {out:?}{}",
        work.diagnostics()
    );
}

/// A MAP_DROPPABLE mapping cannot be recreated by the restorer: the dump
/// refuses it by name and the process runs on unharmed.
#[test]
fn refuse_procattrs_droppable_mapping() {
    let work = Work::new("refuse_procattrs_droppable");
    let opts = Opts::default();
    let mut p = start(&work, Program::Bin("tp_procattrs"), &["--droppable"]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    let out = dump(&work, p.pid, &[], opts.stasis_timeout);
    assert!(
        !out.success()
            && out.stderr.contains("MAP_DROPPABLE")
            && out.stderr.contains(&p.pid.to_string()),
        "dump of a MAP_DROPPABLE mapping was not refused by name: {out:?}{}",
        work.diagnostics()
    );
    assert!(!work.img().join("inventory.img").exists());
    step(
        &work,
        "process after the refused dump",
        p.check_running_untraced(),
    );
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

/// Settings this machine cannot give back, put into a real image: each
/// restore refuses by name and leaves none of the image's processes.
/// (No task here can set them itself: speculation controls are not
/// per-task on this CPU, io_flusher needs CAP_SYS_RESOURCE, util clamp is
/// not built.)
#[test]
fn refuse_procattrs_unrestorable_settings() {
    let work = Work::new("refuse_procattrs_unrestorable");
    let opts = Opts::default();
    let p = dumped_procattrs(&work, &opts);
    let pids: Vec<i32> = show(&work, &work.img())["inventory"]["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|x| x["pid"].as_i64().and_then(|v| i32::try_from(v).ok()))
        .collect();
    let core = work.img().join(format!("core-{}.img", p.pid));
    let original = fs::read(&core).expect("read core");
    // Store bypass as the image would hold it from a machine where this one
    // cannot give it: disabled by prctl where this kernel offers no prctl
    // (mitigation always on or off, or not affected), else disabled with no
    // prctl control (a mitigation fixed at boot elsewhere).
    // SAFETY: PR_GET_SPECULATION_CTRL reads a value, no pointers.
    let here = unsafe { libc::prctl(libc::PR_GET_SPECULATION_CTRL, 0, 0, 0, 0) };
    let ssb = if here >= 0 && here & 1 != 0 { 4 } else { 1 | 4 };
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "a speculation control this kernel cannot give",
            Box::new(move |v| v["proc_attrs"]["threads"][1]["spec"][0] = serde_json::json!(ssb)),
            "PR_SPEC_STORE_BYPASS",
        ),
        (
            "a speculation control no task can change",
            Box::new(|v| v["proc_attrs"]["threads"][0]["spec"][1] = serde_json::json!(4)),
            "PR_SPEC_INDIRECT_BRANCH",
        ),
        (
            "io_flusher",
            Box::new(|v| v["proc_attrs"]["threads"][2]["io_flusher"] = serde_json::json!(true)),
            "io_flusher",
        ),
        (
            "util clamp",
            Box::new(|v| {
                v["proc_attrs"]["threads"][0]["sched"]["util_min"] = serde_json::json!(100);
                v["proc_attrs"]["threads"][0]["sched"]["util_max"] = serde_json::json!(512);
            }),
            "scheduling attributes",
        ),
    ];
    for (what, edit, word) in cases {
        fs::write(&core, &original).expect("restore core");
        edit_core(&work, p.pid, &*edit);
        let out = restore_detached(&work, &[], opts.stasis_timeout);
        if out.success() {
            // Not refused: end what was restored before failing.
            for &pid in &pids {
                // SAFETY: kill(2) on a PID of the restored tree we made.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        assert!(
            !out.success() && out.stderr.contains(word),
            "{what}: restore did not refuse it naming {word:?}: {out:?}{}",
            work.diagnostics()
        );
        eprintln!("{what}: {}", out.stderr.trim());
        for &pid in &pids {
            assert!(!pid_exists(pid), "{what}: PID {pid} left behind");
        }
    }
    // The untouched image still restores.
    fs::write(&core, &original).expect("restore core");
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// A pty pair comes back with its index or not at all: with /dev/pts/N
/// held by someone else, the restore refuses it by name before any
/// process exists.
#[test]
fn refuse_restore_pty_index_taken() {
    let _pty = pty_lock();
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let work = Work::new("refuse_pty_taken");
    let opts = Opts::default();
    let mut p = start(&work, Program::Bin("tp_pty"), &[]);
    step(
        &work,
        "ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    dump_and_check_gone(&work, &mut p, &opts);
    let v = show(&work, &work.img());
    let index = v.to_string();
    let index: u32 = index
        .split("\"pty_master\"")
        .nth(1)
        .and_then(|r| r.split("\"index\":").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| fail(&work, "no pty_master index in the image"));
    // Hold every index up to N (the kernel hands out the lowest free one).
    let mut held = Vec::new();
    loop {
        // SAFETY: opening a new pty master, owned below.
        let fd = unsafe {
            libc::open(
                c"/dev/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0, "open /dev/ptmx");
        // SAFETY: fd is a fresh descriptor of ours.
        let m = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut n = 0u32;
        // SAFETY: TIOCGPTN writes one int.
        let r = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCGPTN, &mut n) };
        assert_eq!(r, 0, "TIOCGPTN");
        held.push(m);
        if n >= index {
            break;
        }
    }
    let out = restore_detached(&work, &[], opts.stasis_timeout);
    drop(held);
    assert!(
        !out.success() && out.stderr.contains(&format!("pts {index} is taken")),
        "restore did not refuse the taken index: {out:?}{}",
        work.diagnostics()
    );
    assert!(
        !pid_exists(p.pid),
        "a process of the image exists after a refused restore"
    );
}

/// The same as PID 1 of its own namespace with a descriptor in flight in
/// another pair: only that pair keeps the sockets it was sent with.
#[test]
fn cr_unix_peercred_listen_own_pid_ns_in_flight() {
    let work = Work::new("cr_unix_peercred_listen_own_pid_ns_in_flight");
    cr_own_pid_ns(
        &work,
        Program::Bin("tp_unix"),
        &["--peercred-listen", "--in-flight"],
    )
    .assert_pass(&work);
}

/// An end of a stream pair in flight in another pair (SCM_RIGHTS) and
/// kept: without a PID namespace the pair keeps its SO_PEERCRED and works.
#[test]
fn cr_unix_pair_in_flight() {
    cr(
        "cr_unix_pair_in_flight",
        Program::Bin("tp_unix"),
        &["--pair-in-flight"],
    );
}

/// The control: the program expects another PID on the end it kept, and
/// must say so after the restore.
#[test]
fn negative_cr_unix_pair_in_flight() {
    negative_cr(
        "negative_cr_unix_pair_in_flight",
        Program::Bin("tp_unix"),
        &["--pair-in-flight"],
        "SO_PEERCRED of the pair in flight",
    );
}

/// The same restored with `--new-pid-ns`: the pair would have to be made
/// again there to report its PIDs, which its message in flight prevents:
/// refused by name before any process is made.
#[test]
fn refuse_unix_pair_in_flight_new_pid_ns() {
    let work = Work::new("refuse_unix_pair_in_flight_new_pid_ns");
    let opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_unix"), &["--pair-in-flight"], &opts);
    dump_and_check_gone(&work, &mut p, &opts);
    let out = restore_detached(&work, &["--new-pid-ns"], opts.stasis_timeout);
    assert!(
        !out.success()
            && out
                .stderr
                .contains("pair in flight (SCM_RIGHTS) whose SO_PEERCRED")
            && out.stderr.lines().count() == 1,
        "{out:?}"
    );
    assert!(!pid_exists(p.pid), "a process was made");
}

/// tp_unix `--lone-accepted` as PID 1 of its own namespace: accepted
/// connections whose listener is closed, or opened after them, report
/// their makers' PIDs there.
#[test]
fn cr_unix_peercred_lone_accepted_own_pid_ns() {
    let work = Work::new("cr_unix_peercred_lone_accepted_own_pid_ns");
    cr_own_pid_ns(&work, Program::Bin("tp_unix"), &["--lone-accepted"]).assert_pass(&work);
}

/// The same with the closed listener's name a path, restored with
/// `--new-pid-ns` (the listener made for the connection is removed again).
#[test]
fn cr_unix_peercred_lone_accepted_new_pid_ns() {
    let work = Work::new("cr_unix_peercred_lone_accepted_new_pid_ns");
    cr_new_pid_ns(
        &work,
        Program::Bin("tp_unix"),
        &["--lone-accepted", "--path"],
    )
    .assert_pass(&work);
    let left = work.path("socks").join("gone.sock");
    assert!(!left.exists(), "{} left behind", left.display());
}

/// Its negative control.
#[test]
fn negative_cr_unix_peercred_lone_accepted() {
    let work = Work::new("negative_cr_unix_peercred_lone_accepted");
    let out = cr_own_pid_ns(
        &work,
        Program::Bin("tp_unix"),
        &["--lone-accepted", "--corrupt"],
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// The same without a PID namespace: the listener made for the
/// connection to the closed path listener lets only its connector (a
/// child's uid 4343) connect, and is removed again.
#[test]
fn cr_unix_lone_accepted_path() {
    let work = Work::new("cr_unix_lone_accepted_path");
    run_case(
        &work,
        Program::Bin("tp_unix"),
        &["--lone-accepted", "--path"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

selfcheck!(selfcheck_rseq, negative_rseq, Program::Bin("tp_rseq"), []);

/// tp_rseq: the rseq area glibc registered in each of two threads is
/// registered again after restore, at the same address, with the same
/// length and signature.
#[test]
fn cr_rseq() {
    cr("cr_rseq", Program::Bin("tp_rseq"), &[]);
}

/// Its negative control through a real dump and restore.
#[test]
fn negative_cr_rseq() {
    negative_cr("negative_cr_rseq", Program::Bin("tp_rseq"), &[], "");
}

/// `--lone-accepted --path` as PID 1 of `stasis run` (its own PID and
/// mount namespaces, the latter rebuilt by the restore): the listener
/// made for the accepted connection is bound where the tree will see its
/// path (from a thread rooted in the rebuilt tree), and gone after.
#[test]
fn cr_unix_peercred_lone_accepted_own_pid_ns_path() {
    let work = Work::new("cr_unix_peercred_lone_accepted_own_pid_ns_path");
    cr_own_pid_ns(
        &work,
        Program::Bin("tp_unix"),
        &["--lone-accepted", "--path"],
    )
    .assert_pass(&work);
    let left = work.path("socks").join("gone.sock");
    assert!(!left.exists(), "{} left behind", left.display());
}
