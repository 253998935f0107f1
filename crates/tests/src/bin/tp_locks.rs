//! tp_locks: file locks and descriptor signal settings survive
//! checkpoint/restore (with `--file-locks`).
//!
//! * POSIX record locks (fcntl F_SETLK): several ranges of one file, write
//!   and read, one to end of file; a whole-file read lock through a
//!   read-only descriptor;
//! * flock: a shared one and an exclusive one (the latter also through a
//!   dup: one open file description);
//! * OFD locks (F_OFD_SETLK): a write range and a read range to EOF;
//! * a read lease (F_SETLEASE) on a file opened read-only;
//! * F_SETOWN_EX owners (process, process group, thread) and F_SETSIG on a
//!   pipe, an O_DIRECT (packet) pipe, an eventfd, a FIFO and a regular
//!   file; O_ASYNC and O_NONBLOCK on pipes and a FIFO: writing into them
//!   after restore raises the signal.
//!
//! After go a checker child (a new process with new open file
//! descriptions) probes every lock with F_GETLK / flock(LOCK_NB) /
//! F_OFD_GETLK and must see the same conflicts as before the dump; the
//! /proc/locks lines of our files, F_GETLEASE, F_GETOWN_EX, F_GETSIG and
//! F_GETFL of every descriptor must be as before.
//! `--corrupt` releases one POSIX range after go. `--waiter` adds a child
//! blocked in F_SETLKW on a range we hold (a dump must refuse it); it is
//! killed after go. `--extra-fds N` also opens an unlocked file N times
//! (a dump then reads /proc/locks first).
//!
//! Usage: `tp_locks WORKDIR [--corrupt] [--waiter] [--extra-fds N]`

use stasis_tests::{Proto, Report};
use std::ffi::CString;

const F_OFD_GETLK: i32 = 36;
const F_OFD_SETLK: i32 = 37;
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PID: i32 = 1;
const F_OWNER_PGRP: i32 = 2;

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn open(path: &str, flags: i32) -> i32 {
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe { libc::open(c(path).as_ptr(), flags, 0o644) };
    if fd < 0 {
        stasis_tests::fatal(&format!("open {path}"));
    }
    fd
}

fn flock_of(t: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: all-zero is a valid struct flock.
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = t as i16;
    f.l_whence = libc::SEEK_SET as i16;
    f.l_start = start;
    f.l_len = len;
    f
}

fn setlk(fd: i32, cmd: i32, t: i32, start: i64, len: i64) {
    let f = flock_of(t, start, len);
    // SAFETY: f lives for the call.
    if unsafe { libc::fcntl(fd, cmd, &f) } != 0 {
        stasis_tests::fatal(&format!("fcntl({cmd}) lock on fd {fd}"));
    }
}

/// F_GETLK / F_OFD_GETLK for a `t` lock on a range: what conflicts.
fn getlk(fd: i32, cmd: i32, t: i32, start: i64, len: i64) -> String {
    let mut f = flock_of(t, start, len);
    // SAFETY: f lives for the call.
    let r = unsafe { libc::fcntl(fd, cmd, &mut f) };
    if r != 0 {
        return format!("error {}", stasis_tests::errno());
    }
    let ty = match i32::from(f.l_type) {
        libc::F_UNLCK => return "free".into(),
        libc::F_RDLCK => "READ",
        libc::F_WRLCK => "WRITE",
        _ => "?",
    };
    format!("{ty} by {} at {}+{}", f.l_pid, f.l_start, f.l_len)
}

fn try_flock(path: &str, op: i32) -> String {
    let fd = open(path, libc::O_RDONLY);
    // SAFETY: flock on our own new descriptor.
    let r = unsafe { libc::flock(fd, op | libc::LOCK_NB) };
    let e = stasis_tests::errno();
    // SAFETY: closing our descriptor (releases what we got).
    unsafe { libc::close(fd) };
    if r == 0 {
        "granted".into()
    } else {
        format!("refused (errno {e})")
    }
}

/// What another process sees of our locks.
fn probe(dir: &str) -> Vec<String> {
    let p = format!("{dir}/posix.dat");
    let rw = open(&p, libc::O_RDWR);
    let ro = open(&format!("{dir}/posix_ro.dat"), libc::O_RDWR);
    let ofd = open(&format!("{dir}/ofd.dat"), libc::O_RDWR);
    let (w, r) = (libc::F_WRLCK, libc::F_RDLCK);
    let out = vec![
        format!("posix W 0+100: {}", getlk(rw, libc::F_GETLK, w, 0, 100)),
        format!("posix W 150+10: {}", getlk(rw, libc::F_GETLK, w, 150, 10)),
        format!("posix W 200+100: {}", getlk(rw, libc::F_GETLK, w, 200, 100)),
        format!("posix R 200+100: {}", getlk(rw, libc::F_GETLK, r, 200, 100)),
        format!("posix W 5000+1: {}", getlk(rw, libc::F_GETLK, w, 5000, 1)),
        format!("posix_ro W all: {}", getlk(ro, libc::F_GETLK, w, 0, 0)),
        format!("ofd W 10+10: {}", getlk(ofd, F_OFD_GETLK, w, 10, 10)),
        format!("ofd W 30+5: {}", getlk(ofd, F_OFD_GETLK, w, 30, 5)),
        format!("ofd W 60+5: {}", getlk(ofd, F_OFD_GETLK, w, 60, 5)),
        format!("ofd R 60+5: {}", getlk(ofd, F_OFD_GETLK, r, 60, 5)),
        format!(
            "flock_sh SH: {}",
            try_flock(&format!("{dir}/flock_sh.dat"), libc::LOCK_SH)
        ),
        format!(
            "flock_sh EX: {}",
            try_flock(&format!("{dir}/flock_sh.dat"), libc::LOCK_EX)
        ),
        format!(
            "flock_ex SH: {}",
            try_flock(&format!("{dir}/flock_ex.dat"), libc::LOCK_SH)
        ),
    ];
    out
}

/// Runs `probe` in a child process and returns its lines.
fn probe_in_child(dir: &str) -> Vec<String> {
    let mut p = [0i32; 2];
    // SAFETY: valid out array.
    unsafe { libc::pipe(p.as_mut_ptr()) };
    // SAFETY: single-threaded program; the child only probes and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let text = probe(dir).join("\n");
        // SAFETY: writing our own buffer into our pipe, then leaving.
        unsafe {
            libc::write(p[1], text.as_ptr().cast(), text.len());
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end; reading; reaping the child.
    unsafe { libc::close(p[1]) };
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    loop {
        // SAFETY: buf is a live buffer of that length.
        let n = unsafe { libc::read(p[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: reaping our child, closing our descriptor.
    unsafe {
        libc::waitpid(child, std::ptr::null_mut(), 0);
        libc::close(p[0]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .map(str::to_string)
        .collect()
}

fn inode(fd: i32) -> u64 {
    // SAFETY: all-zero is a valid stat buffer; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::fstat(fd, &mut st) };
    st.st_ino
}

/// The /proc/locks lines about our files (without their ordinal).
fn proc_locks(inodes: &[u64]) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Blocked requests ("N: -> POSIX ...") are not locks held.
            f.len() >= 8
                && f[1] != "->"
                && f[5]
                    .rsplit(':')
                    .next()
                    .and_then(|i| i.parse::<u64>().ok())
                    .is_some_and(|i| inodes.contains(&i))
        })
        .map(|l| {
            l.split_once(':')
                .map(|x| x.1)
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    v.sort();
    v
}

fn owner(fd: i32) -> (i32, i32) {
    let mut o = [0i32; 2];
    // SAFETY: o is 8 writable bytes (struct f_owner_ex).
    unsafe { libc::fcntl(fd, F_GETOWN_EX, o.as_mut_ptr()) };
    (o[0], o[1])
}

fn set_owner(fd: i32, t: i32, id: i32) {
    let o = [t, id];
    // SAFETY: o is a struct f_owner_ex.
    if unsafe { libc::fcntl(fd, F_SETOWN_EX, o.as_ptr()) } != 0 {
        stasis_tests::fatal(&format!("F_SETOWN_EX on fd {fd}"));
    }
}

fn fcntl2(fd: i32, cmd: i32, arg: i32) -> i32 {
    // SAFETY: integer fcntl on our own descriptor.
    unsafe { libc::fcntl(fd, cmd, arg) }
}

/// Writes a byte into `wfd` and waits up to 1 s for `sig` (blocked):
/// Some(si_fd) if it came.
fn signal_on_write(wfd: i32, sig: i32) -> Option<i32> {
    // SAFETY: writing one byte into our own pipe/FIFO.
    unsafe { libc::write(wfd, b"x".as_ptr().cast(), 1) };
    // SAFETY: set and info are valid; a timed wait for a blocked signal.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let ts = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        let r = libc::sigtimedwait(&set, &mut info, &ts);
        if r != sig {
            return None;
        }
        // si_fd follows si_band (a long) in the SIGPOLL part of siginfo.
        let raw = std::slice::from_raw_parts((&info as *const libc::siginfo_t).cast::<u8>(), 128);
        Some(i32::from_le_bytes([raw[24], raw[25], raw[26], raw[27]]))
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let dir = proto.dir().to_string_lossy().into_owned();
    let path = |n: &str| format!("{dir}/{n}");
    // SAFETY: blocking SIGUSR1 and SIGIO for ourselves (taken by sigtimedwait).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    for n in [
        "posix.dat",
        "posix_ro.dat",
        "flock_sh.dat",
        "flock_ex.dat",
        "ofd.dat",
        "lease.dat",
    ] {
        std::fs::write(path(n), vec![b'.'; 4096]).unwrap_or_else(|_| stasis_tests::fatal(n));
    }
    let filler = path("filler.dat");
    std::fs::write(&filler, b"unlocked").unwrap_or_else(|_| stasis_tests::fatal("filler"));
    for _ in 0..args.num("extra-fds", 0) {
        open(&filler, libc::O_RDONLY);
    }
    // POSIX: write 0+100, read 200+100, write 1000..EOF; whole-file read
    // lock through a read-only descriptor.
    let posix = open(&path("posix.dat"), libc::O_RDWR);
    setlk(posix, libc::F_SETLK, libc::F_WRLCK, 0, 100);
    setlk(posix, libc::F_SETLK, libc::F_RDLCK, 200, 100);
    setlk(posix, libc::F_SETLK, libc::F_WRLCK, 1000, 0);
    let posix_ro = open(&path("posix_ro.dat"), libc::O_RDONLY);
    setlk(posix_ro, libc::F_SETLK, libc::F_RDLCK, 0, 0);
    // flock: shared and exclusive (the exclusive one also through a dup).
    let fsh = open(&path("flock_sh.dat"), libc::O_RDONLY);
    let fex = open(&path("flock_ex.dat"), libc::O_RDWR);
    // SAFETY: flock and dup on our own descriptors.
    let fex_dup = unsafe {
        libc::flock(fsh, libc::LOCK_SH);
        libc::flock(fex, libc::LOCK_EX);
        libc::dup2(fex, 40)
    };
    // OFD: write 10+10, read 50..EOF.
    let ofd = open(&path("ofd.dat"), libc::O_RDWR);
    setlk(ofd, F_OFD_SETLK, libc::F_WRLCK, 10, 10);
    setlk(ofd, F_OFD_SETLK, libc::F_RDLCK, 50, 0);
    // A read lease: on a file of ours with no writer.
    let lease = open(&path("lease.dat"), libc::O_RDONLY);
    if fcntl2(lease, libc::F_SETLEASE, libc::F_RDLCK) != 0 {
        stasis_tests::fatal("F_SETLEASE");
    }
    // Owners and signals.
    // SAFETY: getpid/getpgrp/gettid have no preconditions.
    let (me, group, tid) = unsafe {
        (
            libc::getpid(),
            libc::getpgrp(),
            libc::syscall(libc::SYS_gettid) as i32,
        )
    };
    let mut p = [0i32; 2];
    let mut pd = [0i32; 2];
    // SAFETY: valid out arrays.
    unsafe {
        libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK);
        libc::pipe2(pd.as_mut_ptr(), libc::O_DIRECT);
    }
    fcntl2(p[0], libc::F_SETFL, libc::O_NONBLOCK | libc::O_ASYNC);
    set_owner(p[0], F_OWNER_PID, me);
    fcntl2(p[0], F_SETSIG, libc::SIGUSR1);
    set_owner(pd[1], F_OWNER_PGRP, group);
    fcntl2(pd[1], F_SETSIG, libc::SIGUSR2);
    // SAFETY: creating our own eventfd.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    set_owner(efd, F_OWNER_TID, tid);
    set_owner(posix, F_OWNER_PID, me);
    // A FIFO: O_ASYNC read end owned by us, default signal (SIGIO).
    let fifo = path("fifo");
    let cf = c(&fifo);
    // SAFETY: valid path.
    unsafe { libc::mkfifo(cf.as_ptr(), 0o600) };
    let fr = open(&fifo, libc::O_RDONLY | libc::O_NONBLOCK);
    let fw = open(&fifo, libc::O_WRONLY | libc::O_NONBLOCK);
    fcntl2(fr, libc::F_SETFL, libc::O_NONBLOCK | libc::O_ASYNC);
    set_owner(fr, F_OWNER_PID, me);

    let fds = [
        posix, posix_ro, fsh, fex, fex_dup, ofd, lease, p[0], p[1], pd[0], pd[1], efd, fr, fw,
    ];
    let inodes: Vec<u64> = [posix, posix_ro, fsh, fex, ofd, lease]
        .iter()
        .map(|&f| inode(f))
        .collect();
    let state = |fds: &[i32]| -> Vec<(i32, i32, (i32, i32), i32)> {
        fds.iter()
            .map(|&f| {
                // Our own process group, whatever its number (a restore may
                // put us in the restorer's).
                // SAFETY: getpgrp has no preconditions.
                let g = unsafe { libc::getpgrp() };
                let o = match owner(f) {
                    (F_OWNER_PGRP, id) if id == g => (F_OWNER_PGRP, -1),
                    o => o,
                };
                (f, fcntl2(f, libc::F_GETFL, 0), o, fcntl2(f, F_GETSIG, 0))
            })
            .collect()
    };
    let probed = probe_in_child(&dir);
    let waiter = args.flag("waiter").then(|| {
        // SAFETY: single-threaded; the child only blocks on a lock, then dies.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let fd = open(&path("posix.dat"), libc::O_RDWR);
            setlk(fd, libc::F_SETLKW, libc::F_WRLCK, 0, 10);
            // SAFETY: leaving the child.
            unsafe { libc::_exit(0) };
        }
        // Until it is queued behind our lock.
        for _ in 0..500 {
            let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            if text.contains(&format!("-> POSIX  ADVISORY  WRITE {child} ")) {
                break;
            }
            stasis_tests::nap(2_000_000);
        }
        child
    });
    let locks = proc_locks(&inodes);
    let fd_state = state(&fds);
    // The setup is what we think it is: the probe sees conflicts.
    let mut report = Report::new();
    report.check(
        probed
            .iter()
            .filter(|l| l.contains(&format!("by {me}")))
            .count()
            == 4
            && probed.iter().filter(|l| l.contains("by -1")).count() == 2
            && probed.iter().filter(|l| l.contains("refused")).count() == 2,
        || format!("before the dump, the probe saw {probed:?}"),
    );
    report.check(locks.len() == 9, || {
        format!("/proc/locks before: {locks:?}")
    });
    proto.ready_and_wait();

    if let Some(child) = waiter {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }
    if args.corrupt() {
        setlk(posix, libc::F_SETLK, libc::F_UNLCK, 200, 100);
    }
    report.eq(
        "locks as another process sees them",
        probed,
        probe_in_child(&dir),
    );
    report.eq("/proc/locks lines of our files", locks, proc_locks(&inodes));
    report.eq(
        "F_GETLEASE",
        libc::F_RDLCK,
        fcntl2(lease, libc::F_GETLEASE, 0),
    );
    report.eq("F_GETFL, F_GETOWN_EX, F_GETSIG", fd_state, state(&fds));
    // SAFETY: getpgrp has no preconditions.
    let group_now = unsafe { libc::getpgrp() };
    report.eq(
        "owner of the packet pipe is our process group",
        (F_OWNER_PGRP, group_now),
        owner(pd[1]),
    );
    // O_ASYNC works: a write raises the owner's signal with the fd.
    report.eq(
        "SIGUSR1 for the O_ASYNC pipe",
        Some(p[0]),
        signal_on_write(p[1], libc::SIGUSR1),
    );
    // Plain SIGIO (no F_SETSIG) carries no siginfo details: only its arrival.
    report.eq(
        "SIGIO for the O_ASYNC FIFO",
        true,
        signal_on_write(fw, libc::SIGIO).is_some(),
    );
    proto.finish(&report);
}
