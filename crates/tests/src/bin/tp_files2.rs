//! tp_files2: file state that used to come back silently different.
//!
//! * a deleted file owned by another user (1234:5678), mode 0640, with a
//!   hole in the middle and a size beyond its last data: owner, mode,
//!   size, data extents (SEEK_DATA/SEEK_HOLE: holes stay holes, st_blocks
//!   unchanged), contents, atime and mtime;
//! * a memfd with a hole, another owner and set times: the same;
//! * a deleted directory as the working directory and another as an open
//!   descriptor (owner, mode, times): still deleted, still directories,
//!   nothing left in their parent;
//! * /proc: a child's working directory is /proc/GRANDCHILD; the parent
//!   holds /proc/CHILD/status (at an offset), /proc/self/status, the
//!   directory /proc/CHILD and /proc/GRANDCHILD/task/GRANDCHILD/comm: all
//!   name the restored processes;
//! * pidfds: one for the child with PIDFD_NONBLOCK (not close-on-exec) and
//!   a dup of it (one open file description), one for the grandchild:
//!   they signal and wait for the restored processes.
//!
//! `--refuse KIND` sets up one thing the dump must refuse and checks
//! nothing else (the harness checks the refusal): `outside-pidfd`,
//! `outside-proc`, `outside-cwd` (a pidfd, a /proc file or a working
//! directory under /proc of the harness, outside the tree),
//! `reaped-pidfd` (a pidfd of a child that exited and was reaped),
//! `shared-pidfd` (a pidfd inherited by a second child: one open file
//! description in two processes).
//!
//! `--own-stdio`: stdio on files in WORKDIR (in a rootfs).
//!
//! Usage: `tp_files2 WORKDIR [--corrupt] [--refuse KIND] [--own-stdio]`

use stasis_tests::{Mapping, Proto, Report, Rng};
use std::ffi::CString;

const PAGE: u64 = 4096;

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn check(r: i64, what: &str) -> i64 {
    if r < 0 {
        stasis_tests::fatal(what);
    }
    r
}

fn fstat(fd: i32) -> libc::stat {
    // SAFETY: an all-zero stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a live buffer.
    unsafe { libc::fstat(fd, &mut st) };
    st
}

fn link(path: &str) -> String {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn fdlink(fd: i32) -> String {
    link(&format!("/proc/self/fd/{fd}"))
}

fn pwrite(fd: i32, data: &[u8], off: u64) {
    // SAFETY: writing from a live slice.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off as i64) };
    check(n as i64, "pwrite");
}

fn pread_all(fd: i32, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    // SAFETY: reading into a live buffer of len bytes.
    let n = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), b.len(), 0) };
    b.truncate(n.max(0) as usize);
    b
}

fn read_from(fd: i32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    // SAFETY: reading into a live buffer of len bytes.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), len) };
    b.truncate(n.max(0) as usize);
    b
}

fn lseek(fd: i32, off: i64, whence: i32) -> i64 {
    // SAFETY: lseek on our own descriptor.
    unsafe { libc::lseek(fd, off, whence) }
}

/// Data extents by SEEK_DATA/SEEK_HOLE.
fn extents(fd: i32, size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let keep = lseek(fd, 0, libc::SEEK_CUR);
    let mut at = 0i64;
    while (at as u64) < size {
        let s = lseek(fd, at, libc::SEEK_DATA);
        if s < 0 {
            break;
        }
        let e = lseek(fd, s, libc::SEEK_HOLE);
        if e <= s {
            break;
        }
        out.push((s as u64, (e - s) as u64));
        at = e;
    }
    lseek(fd, keep, libc::SEEK_SET);
    out
}

fn set_times(fd: i32, a: (i64, i64), m: (i64, i64)) {
    let ts = [
        libc::timespec {
            tv_sec: a.0,
            tv_nsec: a.1,
        },
        libc::timespec {
            tv_sec: m.0,
            tv_nsec: m.1,
        },
    ];
    // SAFETY: futimens with two live timespecs.
    check(
        i64::from(unsafe { libc::futimens(fd, ts.as_ptr()) }),
        "futimens",
    );
}

/// What a file or directory is, besides its bytes (read by fstat only).
#[derive(Debug, PartialEq)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    size: i64,
    blocks: i64,
    nlink: u64,
    atime: (i64, i64),
    mtime: (i64, i64),
}

fn meta(fd: i32) -> Meta {
    let st = fstat(fd);
    Meta {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
        size: st.st_size,
        blocks: st.st_blocks,
        nlink: st.st_nlink,
        atime: (st.st_atime, st.st_atime_nsec),
        mtime: (st.st_mtime, st.st_mtime_nsec),
    }
}

fn pidfd_open(pid: i32, flags: i32) -> i32 {
    // SAFETY: pidfd_open takes a PID and flags, no memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    check(fd, &format!("pidfd_open({pid})")) as i32
}

fn pidfd_signal(fd: i32, sig: i32) -> i64 {
    // SAFETY: pidfd_send_signal without a siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            sig,
            std::ptr::null::<u8>(),
            0,
        )
    }
}

/// waitid(P_PIDFD, fd, WEXITED | extra): (return, errno, si_pid).
fn waitid_pidfd(fd: i32, extra: i32) -> (i32, i32, i32) {
    // SAFETY: an all-zero siginfo is a valid out buffer.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid into a live siginfo.
    let r = unsafe { libc::waitid(libc::P_PIDFD, fd as u32, &mut si, libc::WEXITED | extra) };
    // SAFETY: si_pid is valid to read for a SIGCHLD siginfo (zero otherwise).
    let pid = unsafe { si.si_pid() };
    (r, stasis_tests::errno(), pid)
}

fn getfd(fd: i32) -> i32 {
    // SAFETY: fcntl query on our own descriptor.
    unsafe { libc::fcntl(fd, libc::F_GETFD) }
}

fn getfl(fd: i32) -> i32 {
    // SAFETY: fcntl query on our own descriptor.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn fdinfo_pid(fd: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pid:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn listing(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Forks a process that runs `f` and never returns from it.
fn fork(f: impl FnOnce()) -> i32 {
    // SAFETY: single-threaded; the child only runs `f` and then pauses.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        f();
        loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }
    check(i64::from(pid), "fork") as i32
}

fn proc_text(fd: i32) -> String {
    lseek(fd, 0, libc::SEEK_SET);
    let mut v = Vec::new();
    loop {
        let part = read_from(fd, 4096);
        if part.is_empty() {
            break;
        }
        v.extend(part);
    }
    String::from_utf8_lossy(&v).into_owned()
}

fn has_pid(text: &str, pid: i32) -> bool {
    text.lines().any(|l| l == format!("Pid:\t{pid}"))
}

fn refuse_mode(proto: &Proto, kind: &str) -> ! {
    // SAFETY: getppid has no preconditions.
    let outside = unsafe { libc::getppid() };
    let mut report = Report::new();
    let mut reaped = 0;
    match kind {
        "outside-pidfd" => {
            let fd = pidfd_open(outside, 0);
            proto.ready_and_wait();
            report.eq(
                "pidfd still names the harness",
                outside.to_string(),
                fdinfo_pid(fd),
            );
        }
        "reaped-pidfd" => {
            // SAFETY: the child exits at once.
            let child = fork(|| unsafe { libc::_exit(3) });
            let fd = pidfd_open(child, 0);
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            reaped = fd;
            proto.ready_and_wait();
            report.eq(
                "pidfd of a reaped child",
                "-1".to_string(),
                fdinfo_pid(reaped),
            );
        }
        "shared-pidfd" => {
            // A pidfd for one child, inherited by a second child.
            let a = fork(|| {});
            let fd = pidfd_open(a, 0);
            let b = fork(|| {});
            proto.ready_and_wait();
            report.eq("pidfd names the child", a.to_string(), fdinfo_pid(fd));
            for p in [a, b] {
                // SAFETY: killing and reaping our own children.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                    libc::waitpid(p, std::ptr::null_mut(), 0);
                }
            }
        }
        "outside-proc" => {
            let p = format!("/proc/{outside}/status");
            // SAFETY: valid path.
            let fd = unsafe { libc::open(c(&p).as_ptr(), libc::O_RDONLY) };
            check(i64::from(fd), "open /proc/PPID/status");
            proto.ready_and_wait();
            report.check(has_pid(&proc_text(fd), outside), || {
                "status of the harness".into()
            });
        }
        "outside-cwd" => {
            let p = format!("/proc/{outside}");
            // SAFETY: valid path.
            check(i64::from(unsafe { libc::chdir(c(&p).as_ptr()) }), "chdir");
            proto.ready_and_wait();
            report.eq("cwd", p, link("/proc/self/cwd"));
        }
        _ => report.fail(format!("unknown --refuse {kind}")),
    }
    let _ = reaped;
    proto.finish(&report);
}

fn main() {
    let (proto, args) = Proto::from_args();
    if args.flag("own-stdio") {
        proto.stdio_in_workdir("tp_files2");
    }
    if let Some(kind) = args.get("refuse") {
        let kind = kind.to_string();
        refuse_mode(&proto, &kind);
    }
    let corrupt = args.corrupt();
    let dir = proto.dir().to_str().expect("utf-8").to_string();
    let sub = format!("{}/files2", dir.trim_end_matches('/'));
    std::fs::create_dir_all(&sub).expect("mkdir");
    let mut rng = Rng::new(0xf11e5);

    // --- processes first (they inherit no descriptor of the rest) ---
    // The child's working directory is /proc/GRANDCHILD.
    let child = fork(|| {
        // Its child (the grandchild) is reaped by the kernel when it dies.
        // SAFETY: setting a disposition, no handler.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        let g = fork(|| {});
        // SAFETY: valid path.
        unsafe { libc::chdir(c(&format!("/proc/{g}")).as_ptr()) };
    });
    let children = format!("/proc/{child}/task/{child}/children");
    let grandchild: i32 = loop {
        let s = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(g) = s.split_whitespace().next().and_then(|g| g.parse().ok()) {
            if link(&format!("/proc/{child}/cwd")) == format!("/proc/{g}") {
                break g;
            }
        }
        stasis_tests::nap(1_000_000);
    };

    // --- a sparse deleted file of another owner ---
    let p1 = format!("{sub}/sparse.dat");
    // SAFETY: valid path.
    let f1 = unsafe {
        libc::open(
            c(&p1).as_ptr(),
            libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC,
            0o600,
        )
    };
    check(i64::from(f1), "open sparse.dat");
    let mut a = vec![0u8; 2 * PAGE as usize];
    rng.fill(&mut a);
    let mut b = vec![0u8; 5000];
    rng.fill(&mut b);
    pwrite(f1, &a, 0);
    pwrite(f1, &b, 1 << 20);
    let size1 = (1u64 << 20) + 5000 + 100_000;
    // SAFETY: ftruncate on our own descriptor.
    check(
        i64::from(unsafe { libc::ftruncate(f1, size1 as i64) }),
        "ftruncate",
    );
    // SAFETY: fchown/fchmod on our own descriptor.
    check(i64::from(unsafe { libc::fchown(f1, 1234, 5678) }), "fchown");
    // SAFETY: as above.
    check(i64::from(unsafe { libc::fchmod(f1, 0o640) }), "fchmod");
    // Mapped too (a restore maps it again, and mmap touches the access
    // time); then the times.
    let map1 = Mapping::new(
        PAGE as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        f1,
        0,
    );
    set_times(
        f1,
        (1_000_000_000, 123_456_789),
        (1_100_000_000, 987_654_321),
    );
    std::fs::remove_file(&p1).expect("unlink");
    lseek(f1, 4321, libc::SEEK_SET);

    // --- a memfd with a hole, another owner and times ---
    // SAFETY: valid name.
    let m = unsafe { libc::memfd_create(c("tp_files2").as_ptr(), 0) };
    check(i64::from(m), "memfd_create");
    let mut mdata = vec![0u8; 3 * PAGE as usize];
    rng.fill(&mut mdata);
    pwrite(m, &mdata, 0);
    pwrite(m, &mdata[..100], 64 * PAGE);
    // SAFETY: fchown/fchmod on our own descriptor.
    check(
        i64::from(unsafe { libc::fchown(m, 4321, 8765) }),
        "fchown memfd",
    );
    // SAFETY: as above.
    check(i64::from(unsafe { libc::fchmod(m, 0o604) }), "fchmod memfd");
    set_times(m, (1_200_000_000, 1), (1_300_000_000, 999_999_999));

    // --- deleted directories: one as cwd, one open ---
    let dcwd = format!("{sub}/gone-cwd");
    let dfd = format!("{sub}/gone-fd");
    std::fs::create_dir(&dcwd).expect("mkdir");
    std::fs::create_dir(&dfd).expect("mkdir");
    // SAFETY: valid path.
    let fdir = unsafe { libc::open(c(&dfd).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    check(i64::from(fdir), "open gone-fd");
    // SAFETY: fchown/fchmod on our own descriptor.
    check(
        i64::from(unsafe { libc::fchown(fdir, 1234, 5678) }),
        "fchown dir",
    );
    // SAFETY: as above.
    check(
        i64::from(unsafe { libc::fchmod(fdir, 0o750) }),
        "fchmod dir",
    );
    set_times(fdir, (1_400_000_000, 5), (1_500_000_000, 6));
    // SAFETY: valid path.
    check(
        i64::from(unsafe { libc::chdir(c(&dcwd).as_ptr()) }),
        "chdir",
    );
    std::fs::remove_dir(&dcwd).expect("rmdir");
    std::fs::remove_dir(&dfd).expect("rmdir");
    // A deleted directory whose name was taken again by a new one.
    let dreused = format!("{sub}/reused-dir");
    std::fs::create_dir(&dreused).expect("mkdir");
    // SAFETY: valid path.
    let freused = unsafe { libc::open(c(&dreused).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    check(i64::from(freused), "open reused-dir");
    std::fs::remove_dir(&dreused).expect("rmdir");
    std::fs::create_dir(&dreused).expect("mkdir again");
    std::fs::write(format!("{dreused}/inside"), b"new").expect("write");
    // SAFETY: valid path.
    let fcwd = unsafe { libc::open(c(".").as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
    let cwd_meta = meta(fcwd);
    // SAFETY: closing our own descriptor (O_PATH of a deleted directory is refused).
    unsafe { libc::close(fcwd) };

    // --- /proc descriptors ---
    let open_ro = |p: &str, extra: i32| -> i32 {
        // SAFETY: valid path.
        let fd = unsafe { libc::open(c(p).as_ptr(), libc::O_RDONLY | extra) };
        check(i64::from(fd), p) as i32
    };
    let pst = open_ro(&format!("/proc/{child}/status"), 0);
    let head = read_from(pst, 10);
    let pself = open_ro("/proc/self/status", libc::O_CLOEXEC);
    let pdir = open_ro(&format!("/proc/{child}"), libc::O_DIRECTORY);
    let pcomm = open_ro(&format!("/proc/{grandchild}/task/{grandchild}/comm"), 0);

    // --- pidfds ---
    let pf_child = pidfd_open(child, libc::O_NONBLOCK);
    // SAFETY: clearing FD_CLOEXEC on our own descriptor.
    unsafe { libc::fcntl(pf_child, libc::F_SETFD, 0) };
    // SAFETY: dup of our own descriptor (same open file description).
    let pf_dup = unsafe { libc::fcntl(pf_child, libc::F_DUPFD_CLOEXEC, 0) };
    let pf_grand = pidfd_open(grandchild, 0);
    // A child that has exited and is not reaped yet (a zombie), and its pidfd.
    // SAFETY: the child exits at once.
    let zombie = fork(|| unsafe { libc::_exit(7) });
    let pf_zombie = pidfd_open(zombie, 0);
    let mut zp = libc::pollfd {
        fd: pf_zombie,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one live pollfd: readable once the child has exited.
    unsafe { libc::poll(&mut zp, 1, 5000) };

    let fds = [
        f1, m, fdir, pst, pself, pdir, pcomm, pf_child, pf_dup, pf_grand, pf_zombie,
    ];
    let links: Vec<String> = fds.iter().map(|&f| fdlink(f)).collect();
    let fdflags: Vec<(i32, i32)> = fds.iter().map(|&f| (getfd(f), getfl(f))).collect();
    let metas = [meta(f1), meta(m), meta(fdir)];
    let ext = [extents(f1, size1), extents(m, 64 * PAGE + 100)];
    let cwd = link("/proc/self/cwd");
    let child_cwd = link(&format!("/proc/{child}/cwd"));
    let before = listing(&sub);
    proto.ready_and_wait();

    let mut report = Report::new();
    if corrupt {
        // SAFETY: fchown on our own descriptor.
        unsafe { libc::fchown(f1, 1235, 5678) };
    }
    // Metadata first: reading the contents moves access times.
    report.eq(
        "owner, mode, size, blocks, links, times of the deleted file, the memfd, the deleted directory",
        &metas[..],
        &[meta(f1), meta(m), meta(fdir)][..],
    );
    report.eq(
        "data extents (holes stay holes)",
        &ext[..],
        &[extents(f1, size1), extents(m, 64 * PAGE + 100)][..],
    );
    report.eq(
        "links",
        &links,
        &fds.iter().map(|&f| fdlink(f)).collect::<Vec<_>>(),
    );
    report.eq(
        "fd flags and status flags",
        &fdflags,
        &fds.iter()
            .map(|&f| (getfd(f), getfl(f)))
            .collect::<Vec<_>>(),
    );
    report.eq(
        "offset of the deleted file",
        4321,
        lseek(f1, 0, libc::SEEK_CUR),
    );
    let got = pread_all(f1, size1 + 10);
    let mut want = vec![0u8; size1 as usize];
    want[..a.len()].copy_from_slice(&a);
    want[1 << 20..(1 << 20) + b.len()].copy_from_slice(&b);
    report.check(map1.bytes() == &a[..PAGE as usize], || {
        "shared mapping of the deleted file differs".into()
    });
    report.check(got == want, || {
        format!(
            "contents of the deleted file differ ({} bytes read)",
            got.len()
        )
    });
    let mut mwant = vec![0u8; (64 * PAGE + 100) as usize];
    mwant[..mdata.len()].copy_from_slice(&mdata);
    mwant[(64 * PAGE) as usize..].copy_from_slice(&mdata[..100]);
    report.check(pread_all(m, 64 * PAGE + 200) == mwant, || {
        "contents of the memfd differ".into()
    });

    // Deleted directories.
    report.eq("cwd link", cwd.clone(), link("/proc/self/cwd"));
    report.check(cwd.ends_with(" (deleted)") && cwd.starts_with(&sub), || {
        format!("cwd {cwd}")
    });
    // SAFETY: valid path.
    let fcwd = unsafe { libc::open(c(".").as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
    report.eq("cwd: owner, mode, links, times", cwd_meta, meta(fcwd));
    // SAFETY: creating a file in the deleted cwd must fail.
    let r = unsafe { libc::open(c("new").as_ptr(), libc::O_CREAT | libc::O_RDWR, 0o600) };
    report.eq(
        "create in the deleted cwd",
        (-1, libc::ENOENT),
        (r, stasis_tests::errno()),
    );
    report.eq("nothing left in the parent", before, listing(&sub));
    let l = fdlink(freused);
    report.check(
        l.starts_with(&format!("{sub}/"))
            && l.ends_with(" (deleted)")
            && fstat(freused).st_nlink == 0,
        || format!("deleted directory whose name was reused: {l}"),
    );
    report.eq(
        "the new directory under the reused name",
        b"new".to_vec(),
        std::fs::read(format!("{dreused}/inside")).unwrap_or_default(),
    );

    // /proc.
    report.eq("child's cwd", format!("/proc/{grandchild}"), child_cwd);
    report.eq(
        "child's cwd still /proc/GRANDCHILD",
        format!("/proc/{grandchild}"),
        link(&format!("/proc/{child}/cwd")),
    );
    let through = std::fs::read_to_string(format!("/proc/{child}/cwd/status")).unwrap_or_default();
    report.check(has_pid(&through, grandchild), || {
        format!("status through the child's cwd does not name {grandchild}: {through:?}")
    });
    report.eq(
        "offset of /proc/CHILD/status",
        10,
        lseek(pst, 0, libc::SEEK_CUR),
    );
    let _ = head;
    report.check(has_pid(&proc_text(pst), child), || {
        "/proc/CHILD/status".into()
    });
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    report.check(has_pid(&proc_text(pself), me), || {
        "/proc/self/status".into()
    });
    // SAFETY: openat relative to our /proc/CHILD directory descriptor.
    let st = unsafe { libc::openat(pdir, c("status").as_ptr(), libc::O_RDONLY) };
    report.check(st >= 0 && has_pid(&proc_text(st), child), || {
        "status under the /proc/CHILD fd".into()
    });
    report.eq("comm of the grandchild", b"tp_files2\n".to_vec(), {
        lseek(pcomm, 0, libc::SEEK_SET);
        read_from(pcomm, 64)
    });

    // pidfds.
    report.eq(
        "pidfd targets",
        (child.to_string(), child.to_string(), grandchild.to_string()),
        (
            fdinfo_pid(pf_child),
            fdinfo_pid(pf_dup),
            fdinfo_pid(pf_grand),
        ),
    );
    report.eq("signal 0 through the pidfd", 0, pidfd_signal(pf_grand, 0));
    let (r, e, _) = waitid_pidfd(pf_child, 0);
    report.eq(
        "PIDFD_NONBLOCK: waitid on a live child",
        (-1, libc::EAGAIN),
        (r, e),
    );
    // One open file description: a flag set on one shows on the dup.
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(pf_dup, libc::F_SETFL, 0) };
    report.eq(
        "dup shares the description",
        0,
        getfl(pf_child) & libc::O_NONBLOCK,
    );
    report.eq(
        "pidfd of the zombie",
        zombie.to_string(),
        fdinfo_pid(pf_zombie),
    );
    // SAFETY: an all-zero siginfo is a valid out buffer.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid into a live siginfo, reaping the zombie through its pidfd.
    let r = unsafe { libc::waitid(libc::P_PIDFD, pf_zombie as u32, &mut si, libc::WEXITED) };
    // SAFETY: a SIGCHLD siginfo after a successful waitid.
    let (who, status) = unsafe { (si.si_pid(), si.si_status()) };
    report.eq(
        "zombie reaped through its pidfd",
        (0, zombie, 7),
        (r, who, status),
    );
    // The grandchild first (its parent lets the kernel reap it), then the child.
    report.eq(
        "kill the grandchild through its pidfd",
        0,
        pidfd_signal(pf_grand, libc::SIGKILL),
    );
    let mut pfd = libc::pollfd {
        fd: pf_grand,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one live pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    report.eq("the grandchild's pidfd reports its exit", 1, n);
    report.eq(
        "kill the child through its pidfd",
        0,
        pidfd_signal(pf_child, libc::SIGKILL),
    );
    let (r, _, who) = waitid_pidfd(pf_child, 0);
    report.eq(
        "waitid through the pidfd reaps the restored child",
        (0, child),
        (r, who),
    );
    proto.finish(&report);
}
