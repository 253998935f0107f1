//! tp_fdkinds: files deleted while open or mapped, O_PATH descriptors and
//! FIFOs survive checkpoint/restore.
//!
//! * deleted files: contents, offsets and flags of two descriptors, a
//!   shared mapping (a write through it is read back through a
//!   descriptor: one object) and a private one with a copied-on-write
//!   page, a file known only through its mapping, and a deleted file whose
//!   name was taken again by a new file; every one stays deleted and
//!   nothing new appears in the directory;
//! * O_PATH: a directory (used with openat), a regular file (fstat works,
//!   read fails), a symlink itself (O_NOFOLLOW: readlinkat);
//! * FIFO: both ends (non-blocking read end, blocking write end) with
//!   waiting bytes and a bigger capacity, still connected after restore.
//!
//! `--tmpfile`: an O_TMPFILE file (mode 0640, 70,000 bytes, offset 5),
//! never linked, opened O_RDWR|O_APPEND and duplicated, with a second
//! description opened read-only through /proc/self/fd (offset 7), and a
//! second O_TMPFILE file opened write-only (a hole, then data): after
//! restore each link still reads `DIR/#N (deleted)`, the contents,
//! offsets, mode and inodes are the same (the duplicate shares its
//! offset), F_GETFL of every descriptor is as before (O_TMPFILE on the
//! descriptions open(O_TMPFILE) made, not on the reopen), and linkat()
//! through /proc/self/fd gives it a name (`--corrupt`: it was linked and
//! unlinked again, which makes it unlinkable, and its descriptor is
//! replaced by a reopen through /proc/self/fd, without O_TMPFILE).
//! `--tmpfile-linked`: an O_TMPFILE file linked with linkat and still
//! open (F_GETFL keeps O_TMPFILE: a dump must refuse it by name);
//! `--tmpfile-gone`: one whose directory was removed (likewise). Both
//! check after go that the descriptor is as it was.
//!
//! Usage: `tp_fdkinds WORKDIR [--corrupt] [--tmpfile|--tmpfile-linked|--tmpfile-gone]`

use stasis_tests::{Mapping, Proto, Report, Rng};
use std::ffi::CString;

const PAGE: usize = 4096;

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn open(path: &str, flags: i32) -> i32 {
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe { libc::open(c(path).as_ptr(), flags, 0o640) };
    if fd < 0 {
        stasis_tests::fatal(&format!("open {path}"));
    }
    fd
}

fn write(fd: i32, data: &[u8]) -> isize {
    // SAFETY: writing from a live slice.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

fn pread(fd: i32, len: usize, off: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    // SAFETY: reading into a live buffer of len bytes.
    let n = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), len, off as i64) };
    b.truncate(n.max(0) as usize);
    b
}

fn read(fd: i32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    // SAFETY: reading into a live buffer of len bytes.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), len) };
    b.truncate(n.max(0) as usize);
    b
}

fn pos(fd: i32) -> i64 {
    // SAFETY: lseek on our own descriptor.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

fn getfl(fd: i32) -> i32 {
    // SAFETY: fcntl query on our own descriptor.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn fstat(fd: i32) -> libc::stat {
    // SAFETY: an all-zero stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a live buffer.
    unsafe { libc::fstat(fd, &mut st) };
    st
}

fn link(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn listing(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    v.retain(|n| {
        !matches!(
            n.as_str(),
            "go" | "ready" | "result" | "out.log" | "pidfile"
        )
    });
    v.retain(|n| !n.starts_with("stasis-") && !n.starts_with(".ready") && n != "img");
    v.sort();
    v
}

/// `--tmpfile`: see the module comment.
fn tmpfile(proto: &Proto, dir: &str, corrupt: bool) -> ! {
    let mut report = Report::new();
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let fd = open(dir, libc::O_TMPFILE | libc::O_RDWR | libc::O_APPEND);
    write(fd, &data);
    // SAFETY: plain calls on our descriptors.
    let (fd_dup, fd_ro, wfd) = unsafe {
        libc::fchmod(fd, 0o640);
        libc::lseek(fd, 5, libc::SEEK_SET);
        (
            libc::dup(fd),
            open(&format!("/proc/self/fd/{fd}"), libc::O_RDONLY),
            open(dir, libc::O_TMPFILE | libc::O_WRONLY),
        )
    };
    // SAFETY: lseek and pwrite on our descriptors, from a live buffer.
    unsafe {
        libc::lseek(fd_ro, 7, libc::SEEK_SET);
        libc::pwrite(wfd, data.as_ptr().cast(), 5000, 3 * PAGE as i64);
    }
    let flags = || [getfl(fd), getfl(fd_dup), getfl(fd_ro), getfl(wfd)];
    let inodes = || [fd, fd_dup, fd_ro, wfd].map(|f| fstat(f).st_ino);
    let (flags_before, inodes_before) = (flags(), inodes());
    let tmp_bit = libc::O_TMPFILE & !libc::O_DIRECTORY;
    report.check(
        flags_before[0] & tmp_bit != 0 && flags_before[2] & tmp_bit == 0,
        || format!("before: flags {flags_before:?}"),
    );
    let link_of = || {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let is_tmp = |l: &str| {
        l.strip_prefix(&format!("{dir}/#"))
            .and_then(|r| r.strip_suffix(" (deleted)"))
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
    };
    report.check(is_tmp(&link_of()), || format!("before: link {}", link_of()));
    proto.ready_and_wait();
    let linked = format!("{dir}/linked");
    let src = c(&format!("/proc/self/fd/{fd}"));
    let at = |p: &str| {
        // SAFETY: valid NUL-terminated paths.
        unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                src.as_ptr(),
                libc::AT_FDCWD,
                c(p).as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        }
    };
    if corrupt {
        at(&format!("{dir}/gone"));
        let _ = std::fs::remove_file(format!("{dir}/gone"));
        let again = open(
            &format!("/proc/self/fd/{fd}"),
            libc::O_RDWR | libc::O_APPEND,
        );
        // SAFETY: moves our own descriptor over fd, at fd's offset.
        unsafe {
            libc::lseek(again, 5, libc::SEEK_SET);
            libc::dup2(again, fd);
            libc::close(again);
        }
    }
    report.eq("F_GETFL of each descriptor", flags_before, flags());
    // One file behind the first three descriptors, another behind the
    // last (a restore makes new inodes).
    let same = |i: [u64; 4]| [i[0] == i[1], i[1] == i[2], i[2] != i[3]];
    report.eq(
        "inodes (same, same, other)",
        same(inodes_before),
        same(inodes()),
    );
    report.check(is_tmp(&link(wfd)), || format!("after: link {}", link(wfd)));
    report.eq("offset of the read-only reopen", 7, pos(fd_ro));
    let wdata = std::fs::read(format!("/proc/self/fd/{wfd}")).unwrap_or_default();
    report.eq("size of the write-only file", 3 * PAGE + 5000, wdata.len());
    report.check(
        wdata[..wdata.len().min(3 * PAGE)].iter().all(|&b| b == 0)
            && wdata.get(3 * PAGE..) == Some(&data[..5000]),
        || "contents of the write-only file differ".into(),
    );
    let l = link_of();
    report.check(is_tmp(&l), || format!("after: link {l}"));
    // SAFETY: zero is a valid stat; plain calls on our descriptor.
    let (pos, st) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st);
        (libc::lseek(fd, 0, libc::SEEK_CUR), st)
    };
    report.eq("offset", 5, pos);
    // SAFETY: lseek on our descriptor: the duplicate shares its offset.
    let shared = unsafe { libc::lseek(fd_dup, 9, libc::SEEK_SET) } == 9 && self::pos(fd) == 9;
    report.check(shared, || "the duplicate does not share the offset".into());
    report.eq("mode", 0o100640, st.st_mode);
    report.eq("links", 0, st.st_nlink);
    let r = at(&linked);
    report.check(r == 0, || {
        format!("linkat from /proc/self/fd: errno {}", stasis_tests::errno())
    });
    report.check(
        std::fs::read(&linked).ok().as_deref() == Some(&data[..]),
        || format!("contents of {linked} differ"),
    );
    let _ = std::fs::remove_file(&linked);
    proto.finish(&report);
}

/// `--tmpfile-linked`, `--tmpfile-gone`: see the module comment.
fn tmpfile_refused(proto: &Proto, dir: &str, linked: bool) -> ! {
    let mut report = Report::new();
    let sub = format!("{dir}/tdir");
    std::fs::create_dir_all(&sub).expect("mkdir");
    let fd = open(&sub, libc::O_TMPFILE | libc::O_RDWR);
    write(fd, b"tmpfile");
    if linked {
        let src = c(&format!("/proc/self/fd/{fd}"));
        // SAFETY: valid NUL-terminated paths.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                src.as_ptr(),
                libc::AT_FDCWD,
                c(&format!("{sub}/named")).as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        report.eq("linkat", 0, r);
    } else {
        std::fs::remove_dir(&sub).expect("rmdir");
    }
    let seen = || {
        (
            getfl(fd),
            fstat(fd).st_ino,
            fstat(fd).st_nlink,
            pos(fd),
            link(fd),
        )
    };
    let before = seen();
    proto.ready_and_wait();
    report.eq("(F_GETFL, inode, links, offset, link)", before, seen());
    if linked {
        let _ = std::fs::remove_file(format!("{sub}/named"));
        let _ = std::fs::remove_dir(&sub);
    }
    proto.finish(&report);
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let dir = proto.dir().to_str().expect("utf-8").to_string();
    if args.flag("tmpfile") {
        tmpfile(&proto, &dir, corrupt);
    }
    if args.flag("tmpfile-linked") || args.flag("tmpfile-gone") {
        tmpfile_refused(&proto, &dir, args.flag("tmpfile-linked"));
    }
    let sub = format!("{dir}/files");
    std::fs::create_dir_all(&sub).expect("mkdir");
    let mut rng = Rng::new(0xde1e7ed);

    // --- deleted files ---
    let p1 = format!("{sub}/deleted.dat");
    let mut d1 = vec![0u8; 5 * PAGE + 123];
    rng.fill(&mut d1);
    let f1 = open(&p1, libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC);
    write(f1, &d1);
    // SAFETY: lseek on our own descriptor.
    unsafe { libc::lseek(f1, 777, libc::SEEK_SET) };
    let f1r = open(&p1, libc::O_RDONLY | libc::O_NOATIME);
    // SAFETY: lseek on our own descriptor.
    unsafe { libc::lseek(f1r, 5, libc::SEEK_SET) };
    let f1a = open(&p1, libc::O_WRONLY | libc::O_APPEND);
    let m1 = Mapping::new(
        2 * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        f1,
        PAGE as i64,
    );
    let m1p = Mapping::new(
        2 * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
        f1,
        3 * PAGE as i64,
    );
    m1p.bytes_mut()[10] ^= 0x5a; // copy-on-write, not in the file
    let m1p_expect = m1p.bytes().to_vec();
    std::fs::remove_file(&p1).expect("unlink");

    // Known only through a mapping.
    let p2 = format!("{sub}/maponly.dat");
    let mut d2 = vec![0u8; 3 * PAGE];
    rng.fill(&mut d2);
    let f2 = open(&p2, libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC);
    write(f2, &d2);
    let m2 = Mapping::new(3 * PAGE, libc::PROT_READ, libc::MAP_SHARED, f2, 0);
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(f2) };
    std::fs::remove_file(&p2).expect("unlink");

    // Deleted, then its name taken by a new file.
    let p3 = format!("{sub}/reused.dat");
    let f3 = open(&p3, libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC);
    write(f3, b"the old, deleted contents");
    std::fs::remove_file(&p3).expect("unlink");
    std::fs::write(&p3, b"the new file").expect("write");

    // --- O_PATH ---
    let target = format!("{sub}/target");
    std::fs::write(&target, b"target file").expect("write");
    let sym = format!("{sub}/symlink");
    std::os::unix::fs::symlink("target", &sym).expect("symlink");
    let o_dir = open(&sub, libc::O_PATH | libc::O_DIRECTORY);
    let o_file = open(&target, libc::O_PATH);
    let o_sym = open(&sym, libc::O_PATH | libc::O_NOFOLLOW);

    // --- FIFO ---
    let fifo = format!("{sub}/fifo");
    // SAFETY: valid path.
    unsafe { libc::mkfifo(c(&fifo).as_ptr(), 0o600) };
    let fr = open(&fifo, libc::O_RDONLY | libc::O_NONBLOCK);
    let fw = open(&fifo, libc::O_WRONLY);
    // SAFETY: fcntl on our own FIFO.
    let cap = unsafe { libc::fcntl(fw, libc::F_SETPIPE_SZ, 128 * 1024) };
    let mut waiting = vec![0u8; 70_000];
    rng.fill(&mut waiting);
    write(fw, &waiting);
    let o_fifo = open(&fifo, libc::O_PATH);

    let links = [f1, f1r, f1a, f3].map(link);
    let flags = [f1, f1r, f1a, f3, o_dir, o_file, o_sym, fr, fw].map(getfl);
    let before = listing(&sub);
    proto.ready_and_wait();

    let mut report = Report::new();
    if corrupt {
        d1[PAGE + 1] ^= 1;
    }
    // Deleted files: links, flags, offsets, contents, still deleted.
    let now = [f1, f1r, f1a, f3].map(link);
    report.eq("links of deleted files", &links[..3], &now[..3]);
    // The name was taken: the restored object has another name in the
    // same directory (still deleted).
    report.check(
        now[3].starts_with(&format!("{sub}/")) && now[3].ends_with(" (deleted)"),
        || format!("link of the deleted file whose name was reused: {}", now[3]),
    );
    report.check(links.iter().all(|l| l.ends_with(" (deleted)")), || {
        format!("links {links:?} do not all end with (deleted)")
    });
    report.eq(
        "flags",
        flags,
        [f1, f1r, f1a, f3, o_dir, o_file, o_sym, fr, fw].map(getfl),
    );
    report.eq("offset of f1", 777, pos(f1));
    report.eq("offset of f1r", 5, pos(f1r));
    report.eq("links of f1 (nlink)", 0, fstat(f1).st_nlink);
    report.check(pread(f1, d1.len() + 10, 0) == d1, || {
        "contents of the deleted file differ".into()
    });
    report.check(m1.bytes() == &d1[PAGE..3 * PAGE], || {
        "shared mapping of the deleted file differs".into()
    });
    report.check(m1p.bytes() == m1p_expect, || {
        "private mapping of the deleted file (with its COW page) differs".into()
    });
    m1.bytes_mut()[0] = 0xab;
    report.eq(
        "write through the mapping, read through another fd",
        vec![0xab],
        pread(f1r, 1, PAGE),
    );
    write(f1a, b"appended");
    report.eq(
        "O_APPEND write landed at the end",
        b"appended".to_vec(),
        pread(f1r, 8, d1.len()),
    );
    report.check(m2.bytes() == d2, || "map-only deleted file differs".into());
    report.eq(
        "reused name: the deleted file",
        b"the old, deleted contents".to_vec(),
        pread(f3, 64, 0),
    );
    report.eq(
        "reused name: the new file",
        b"the new file".to_vec(),
        std::fs::read(&p3).unwrap_or_default(),
    );
    report.eq("directory listing", before, listing(&sub));

    // O_PATH.
    // SAFETY: openat relative to our O_PATH directory descriptor.
    let t = unsafe { libc::openat(o_dir, c("target").as_ptr(), libc::O_RDONLY) };
    report.eq(
        "openat through O_PATH dir",
        b"target file".to_vec(),
        read(t, 64),
    );
    report.eq("fstat of O_PATH file", 11, fstat(o_file).st_size);
    report.check(read(o_file, 4).is_empty(), || {
        "read from O_PATH fd worked".into()
    });
    let mut buf = [0u8; 64];
    // SAFETY: readlinkat of the symlink our O_PATH fd refers to, into buf.
    let n = unsafe { libc::readlinkat(o_sym, c("").as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    report.eq(
        "readlinkat O_PATH symlink",
        b"target".to_vec(),
        buf[..n.max(0) as usize].to_vec(),
    );
    report.eq(
        "O_PATH fifo is a fifo",
        libc::S_IFIFO,
        fstat(o_fifo).st_mode & libc::S_IFMT,
    );

    // FIFO: capacity, waiting bytes, still connected.
    // SAFETY: fcntl query on our own FIFO.
    report.eq("fifo capacity", cap, unsafe {
        libc::fcntl(fw, libc::F_GETPIPE_SZ)
    });
    let mut got = Vec::new();
    loop {
        let part = read(fr, 65536);
        if part.is_empty() {
            break;
        }
        got.extend(part);
    }
    report.check(got == waiting, || {
        format!("fifo held {} bytes, expected {}", got.len(), waiting.len())
    });
    write(fw, b"after");
    report.eq("fifo still connected", b"after".to_vec(), read(fr, 64));
    proto.finish(&report);
}
