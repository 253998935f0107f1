//! tp_seccomp: seccomp filters survive checkpoint/restore (issue 11).
//!
//! Usage: `tp_seccomp WORKDIR [--corrupt]`
//!
//! As root without no_new_privs the process installs three filters (each
//! checks the architecture first): `getpriority` fails with EDOM, `uname`
//! with EXDEV (this one with SECCOMP_FILTER_FLAG_LOG), and `get_mempolicy`
//! and `membarrier` KILL the process (calls the dumper makes in a process
//! to query it: a dump that let the filters act on its own calls would
//! kill it). Then a thread starts (it inherits the filters) and a child is
//! forked that sets no_new_privs and adds a fourth filter: `sysinfo`
//! fails with ENOTUNIQ. After restore each of them checks that the
//! filtered calls fail with their errno, that other calls work
//! (`sysinfo` in the parent), and /proc's `Seccomp: 2`, `Seccomp_filters`
//! (3, or 4 in the child) and `NoNewPrivs`. `--corrupt` expects one filter
//! more in the parent.

use stasis_tests::{Proto, Report};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const FLAG_LOG: u64 = 2;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A filter: other architectures killed; each (syscall, action) pair
/// applied; everything else allowed.
fn install(rules: &[(i64, u32)], flags: u64) {
    let mut p = vec![
        insn(0x20, 0, 0, 4), // ld [4]: arch
        insn(0x15, 1, 0, AUDIT_ARCH_X86_64),
        insn(0x06, 0, 0, RET_KILL_PROCESS),
        insn(0x20, 0, 0, 0), // ld [0]: nr
    ];
    for &(nr, action) in rules {
        p.push(insn(0x15, 0, 1, nr as u32));
        p.push(insn(0x06, 0, 0, action));
    }
    p.push(insn(0x06, 0, 0, RET_ALLOW));
    let prog = libc::sock_fprog {
        len: p.len() as u16,
        filter: p.as_mut_ptr(),
    };
    // SAFETY: seccomp reads the valid program above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1u64,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    assert_eq!(
        r,
        0,
        "seccomp(SET_MODE_FILTER): {}",
        std::io::Error::last_os_error()
    );
}

/// `Key:` of this thread's /proc status.
fn status(key: &str) -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

/// errno of a failed call, 0 if it worked.
fn errno_of(r: i64) -> i32 {
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

fn check(report: &mut Report, who: &str, filters: u32, nnp: u32, sysinfo_errno: i32) {
    // SAFETY: plain calls with valid out-pointers.
    let (prio, uts, info) = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        let mut i: libc::sysinfo = std::mem::zeroed();
        (
            errno_of(libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0)),
            errno_of(libc::syscall(libc::SYS_uname, &mut u)),
            errno_of(libc::syscall(libc::SYS_sysinfo, &mut i)),
        )
    };
    report.eq(&format!("{who}: getpriority errno"), libc::EDOM, prio);
    report.eq(&format!("{who}: uname errno"), libc::EXDEV, uts);
    report.eq(&format!("{who}: sysinfo errno"), sysinfo_errno, info);
    report.eq(
        &format!("{who}: Seccomp"),
        "2".to_owned(),
        status("Seccomp:"),
    );
    report.eq(
        &format!("{who}: Seccomp_filters"),
        filters.to_string(),
        status("Seccomp_filters:"),
    );
    report.eq(
        &format!("{who}: NoNewPrivs"),
        nnp.to_string(),
        status("NoNewPrivs:"),
    );
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    install(&[(libc::SYS_getpriority, RET_ERRNO | libc::EDOM as u32)], 0);
    install(
        &[(libc::SYS_uname, RET_ERRNO | libc::EXDEV as u32)],
        FLAG_LOG,
    );
    install(
        &[
            (libc::SYS_get_mempolicy, RET_KILL_PROCESS),
            (libc::SYS_membarrier, RET_KILL_PROCESS),
        ],
        0,
    );
    let dir = proto.dir().to_path_buf();
    let thread = std::thread::spawn(move || {
        Proto::new(&dir).wait_go();
        let mut r = Report::new();
        check(&mut r, "thread", 3, 0, 0);
        r
    });
    let mut ready = [0i32; 2];
    // SAFETY: valid out array.
    unsafe { libc::pipe(ready.as_mut_ptr()) };
    // SAFETY: the child only makes plain calls and ends with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: integer-only prctl on this (single-threaded) process.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1u64, 0u64, 0u64, 0u64) };
        install(&[(libc::SYS_sysinfo, RET_ERRNO | libc::ENOTUNIQ as u32)], 0);
        // SAFETY: one byte into our pipe.
        unsafe { libc::write(ready[1], b"r".as_ptr().cast(), 1) };
        proto.wait_go();
        let mut r = Report::new();
        check(&mut r, "child", 4, 1, libc::ENOTUNIQ);
        if !r.ok() {
            eprintln!("child: {}", r.verdict().0);
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(i32::from(!r.ok())) };
    }
    let mut b = 0u8;
    // SAFETY: one byte into a live variable: the child is set up.
    unsafe { libc::read(ready[0], (&raw mut b).cast(), 1) };
    proto.ready_and_wait();
    check(
        &mut report,
        "parent",
        if args.corrupt() { 4 } else { 3 },
        0,
        0,
    );
    match thread.join() {
        Ok(r) if r.ok() => {}
        Ok(r) => report.fail(r.verdict().0),
        Err(_) => report.fail("thread panicked"),
    }
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child's check failed: status {st:#x}")
    });
    proto.finish(&report);
}
