//! tp_files: open files, fd flags and offsets, cwd and umask survive
//! checkpoint/restore.
//!
//! Usage: `tp_files WORKDIR [--corrupt]`
//!
//! State: `data.txt` open O_RDONLY and read halfway; `log.txt` open
//! O_WRONLY|O_APPEND with one line written (a second is written after go:
//! the file must then hold exactly both lines); `rw.bin` open O_RDWR at offset
//! 5000; `data.txt` again with O_NONBLOCK; an fd with FD_CLOEXEC and one
//! without, plus dups of them at fds 100 (no cloexec) and 101 (cloexec);
//! /dev/null (write) and /dev/zero (read); a directory fd; cwd `WORK/sub`;
//! umask 027. After go it compares for every fd: F_GETFL, F_GETFD, offset,
//! fstat dev/ino/rdev/mode, the /proc/self/fd link, and that the set of open
//! fds is unchanged; then getcwd, umask, and that the files still work.

use stasis_tests::{make_data_file, Proto, Report};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const DATA_LEN: usize = 64 * 1024;
const LOG_BEFORE: &[u8] = b"line written before the checkpoint\n";
const LOG_AFTER: &[u8] = b"line written after the restore\n";

#[derive(Debug, PartialEq, Eq, Clone)]
struct FdState {
    fl: i32,
    fd_flags: i32,
    pos: i64,
    dev: u64,
    ino: u64,
    rdev: u64,
    mode: u32,
    link: String,
}

fn open(path: &Path, flags: i32) -> i32 {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: valid path; the fd is owned by this program until exit.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644) };
    if fd < 0 {
        stasis_tests::fatal(&format!("open {}", path.display()));
    }
    fd
}

fn fd_state(fd: i32) -> Result<FdState, String> {
    // SAFETY: fcntl/lseek on an integer fd have no memory preconditions.
    let (fl, fd_flags, pos) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
            libc::lseek(fd, 0, libc::SEEK_CUR),
        )
    };
    if fl < 0 || fd_flags < 0 {
        return Err(format!(
            "fd {fd}: fcntl: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: an all-zero stat is a valid value; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(format!(
            "fd {fd}: fstat: {}",
            std::io::Error::last_os_error()
        ));
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<{e}>"));
    Ok(FdState {
        fl,
        fd_flags,
        pos,
        dev: st.st_dev,
        ino: st.st_ino,
        rdev: st.st_rdev,
        mode: st.st_mode,
        link,
    })
}

fn open_fds() -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    // The last one is read_dir's own directory fd, which is closed by now.
    fds.into_iter()
        .filter(|&fd| {
            // SAFETY: F_GETFD only queries.
            unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
        })
        .collect()
}

fn pread_exact(fd: i32, len: usize, off: i64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: buf has len writable bytes.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, off) };
    buf.truncate(usize::try_from(n).unwrap_or(0));
    buf
}

fn read(fd: i32, len: usize) -> Result<Vec<u8>, std::io::Error> {
    let mut buf = vec![0u8; len];
    // SAFETY: buf has len writable bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n.unsigned_abs());
    Ok(buf)
}

fn write(fd: i32, data: &[u8]) -> isize {
    // SAFETY: data is a valid readable buffer.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let dir = std::fs::canonicalize(proto.dir()).expect("canonical work dir");

    let data = make_data_file(&dir.join("data.txt"), DATA_LEN, 0xf11e);
    let rw_init = make_data_file(&dir.join("rw.bin"), 8192, 0x0b1e);
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).expect("mkdir sub");

    let data_fd = open(&dir.join("data.txt"), libc::O_RDONLY);
    let first = read(data_fd, DATA_LEN / 2).expect("read data");
    assert_eq!(first.as_slice(), &data[..DATA_LEN / 2]);
    let log_fd = open(
        &dir.join("log.txt"),
        libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
    );
    assert_eq!(
        write(log_fd, LOG_BEFORE),
        isize::try_from(LOG_BEFORE.len()).expect("len")
    );
    let rw_fd = open(&dir.join("rw.bin"), libc::O_RDWR);
    // SAFETY: lseek on our fd.
    assert_eq!(unsafe { libc::lseek(rw_fd, 5000, libc::SEEK_SET) }, 5000);
    let nb_fd = open(&dir.join("data.txt"), libc::O_RDONLY | libc::O_NONBLOCK);
    let cloexec_fd = open(&dir.join("data.txt"), libc::O_RDONLY | libc::O_CLOEXEC);
    let plain_fd = open(&dir.join("rw.bin"), libc::O_RDONLY);
    // SAFETY: dup2/dup3 onto fds this program does not use otherwise.
    unsafe {
        assert_eq!(libc::dup2(plain_fd, 100), 100);
        assert_eq!(libc::dup3(cloexec_fd, 101, libc::O_CLOEXEC), 101);
    }
    let null_fd = open(Path::new("/dev/null"), libc::O_WRONLY);
    let zero_fd = open(Path::new("/dev/zero"), libc::O_RDONLY);
    let dir_fd = open(&dir, libc::O_RDONLY | libc::O_DIRECTORY);
    std::env::set_current_dir(&sub).expect("chdir sub");
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o027) };

    let fds = open_fds();
    let before: Vec<(i32, Result<FdState, String>)> =
        fds.iter().map(|&fd| (fd, fd_state(fd))).collect();

    proto.ready_and_wait();

    if args.corrupt() {
        // SAFETY: lseek on our fd.
        unsafe { libc::lseek(data_fd, 1, libc::SEEK_CUR) };
    }

    // Per-fd state.
    report.eq("open fds", fds.clone(), open_fds());
    for (fd, b) in &before {
        let a = fd_state(*fd);
        report.check(*b == a, || format!("fd {fd}: before {b:?}, after {a:?}"));
    }
    // Explicit expectations, so a restore that reproduces wrong state at
    // setup time is caught too.
    let st = |fd| fd_state(fd).unwrap_or_else(|e| panic!("{e}"));
    report.eq(
        "data fd offset",
        i64::try_from(DATA_LEN / 2).expect("len"),
        st(data_fd).pos,
    );
    report.check(st(log_fd).fl & libc::O_APPEND != 0, || {
        "log fd lost O_APPEND".into()
    });
    report.check(st(log_fd).fl & libc::O_ACCMODE == libc::O_WRONLY, || {
        "log fd not O_WRONLY".into()
    });
    report.check(st(rw_fd).fl & libc::O_ACCMODE == libc::O_RDWR, || {
        "rw fd not O_RDWR".into()
    });
    report.eq("rw fd offset", 5000, st(rw_fd).pos);
    report.check(st(nb_fd).fl & libc::O_NONBLOCK != 0, || {
        "O_NONBLOCK lost".into()
    });
    report.eq(
        "FD_CLOEXEC of cloexec fd",
        libc::FD_CLOEXEC,
        st(cloexec_fd).fd_flags,
    );
    report.eq("FD_CLOEXEC of plain fd", 0, st(plain_fd).fd_flags);
    report.eq("FD_CLOEXEC of fd 100", 0, st(100).fd_flags);
    report.eq("FD_CLOEXEC of fd 101", libc::FD_CLOEXEC, st(101).fd_flags);
    report.eq(
        "fd 100 link",
        format!("{}", dir.join("rw.bin").display()),
        st(100).link,
    );
    report.eq("/dev/zero rdev", libc::makedev(1, 5), st(zero_fd).rdev);
    report.eq("/dev/null rdev", libc::makedev(1, 3), st(null_fd).rdev);

    // The files still work from where they were.
    match read(data_fd, 4096) {
        Ok(next) => {
            let off = DATA_LEN / 2 + usize::from(args.corrupt());
            report.check(next.as_slice() == &data[off..off + 4096], || {
                "data fd: next read returns wrong bytes".into()
            });
        }
        Err(e) => report.fail(format!("read data fd: {e}")),
    }
    report.check(
        write(log_fd, LOG_AFTER) == isize::try_from(LOG_AFTER.len()).expect("len"),
        || "write log fd failed".into(),
    );
    let log = std::fs::read(dir.join("log.txt")).expect("read log.txt");
    report.check(log == [LOG_BEFORE, LOG_AFTER].concat(), || {
        format!("log.txt content: {:?}", String::from_utf8_lossy(&log))
    });
    report.eq(
        "rw.bin via pread",
        rw_init.clone(),
        pread_exact(rw_fd, 8192, 0),
    );
    report.check(write(rw_fd, b"XYZ") == 3, || "write rw fd failed".into());
    report.eq(
        "rw.bin after write at 5000",
        b"XYZ".to_vec(),
        pread_exact(plain_fd, 3, 5000),
    );
    report.eq("rw fd offset after write", 5003, st(rw_fd).pos);
    match read(zero_fd, 16) {
        Ok(z) => report.eq("/dev/zero read", vec![0u8; 16], z),
        Err(e) => report.fail(format!("read /dev/zero: {e}")),
    }
    report.eq("/dev/null write", 5, write(null_fd, b"hello"));
    let mut ents: Vec<String> = std::fs::read_dir(format!("/proc/self/fd/{dir_fd}"))
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    ents.sort();
    report.check(
        ents.iter().any(|e| e == "data.txt") && ents.iter().any(|e| e == "sub"),
        || format!("dir fd lists {ents:?}"),
    );

    // Process-wide file state.
    report.eq("cwd", Some(sub.clone()), std::env::current_dir().ok());
    // SAFETY: umask has no preconditions; the old value is put back.
    let mask = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(mask) };
    report.eq("umask", 0o027, mask);
    let created = open(
        Path::new("created-after-restore"),
        libc::O_WRONLY | libc::O_CREAT,
    );
    report.eq(
        "mode of a new file (umask applied, relative to cwd)",
        0o100_640,
        st(created).mode,
    );
    report.check(sub.join("created-after-restore").exists(), || {
        "relative create did not land in cwd".into()
    });

    proto.finish(&report);
}
