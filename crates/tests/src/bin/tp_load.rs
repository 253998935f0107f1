//! tp_load: many mappings and many open files survive checkpoint/restore.
//!
//! Usage: `tp_load WORKDIR [--maps N] [--files N] [--corrupt]`
//!
//! State: N (default 5000) separate anonymous mappings of two pages each,
//! alternately read-write and read-only (so the kernel cannot merge
//! neighbours), each filled with its own pattern; and N (default 1000)
//! regular files `WORK/files/fI`, each open at its own offset. After go it
//! checks every mapping's address, protection (via /proc/self/maps) and
//! contents, every descriptor's offset and inode, and that the number of
//! mappings and descriptors is unchanged. `--corrupt` changes one byte.

use stasis_tests::{Mapping, Proto, Report};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

const PAGE: usize = 4096;

fn pattern(i: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    stasis_tests::Rng::new(0x10ad_0000 + i as u64).fill(&mut v);
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

fn main() {
    let (proto, args) = Proto::from_args();
    let n_maps = args.num("maps", 5000) as usize;
    let n_files = args.num("files", 1000) as usize;
    let mut report = Report::new();

    // Enough descriptors for the files.
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

    let mut maps = Vec::with_capacity(n_maps);
    for i in 0..n_maps {
        let m = Mapping::anon(2 * PAGE);
        m.bytes_mut().copy_from_slice(&pattern(i, 2 * PAGE));
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
        let p = dir.join(format!("f{i}"));
        std::fs::write(&p, vec![b'x'; 100 + i % 50]).expect("write file");
        let c = CString::new(p.as_os_str().as_bytes()).expect("path");
        // SAFETY: valid path; the fd stays open until exit.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            stasis_tests::fatal("open");
        }
        // SAFETY: integer-only call.
        unsafe { libc::lseek(fd, (i % 97) as i64, libc::SEEK_SET) };
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

    proto.ready_and_wait();

    if args.corrupt() {
        // SAFETY: mapping 0 is read-write.
        unsafe { *maps[0].addr ^= 1 };
    }
    report.eq("number of descriptors", fds_before, count_fds());
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
            &format!("mapping {i} at {:#x}: protection", m.start()),
            Some(want),
            perm_at(m.start()),
        );
        report.check(m.bytes() == pattern(i, 2 * PAGE).as_slice(), || {
            format!("mapping {i} at {:#x}: contents differ", m.start())
        });
    }
    for (i, &fd) in fds.iter().enumerate() {
        if !report.ok() {
            break;
        }
        // SAFETY: integer-only call.
        let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        report.eq(&format!("fd {fd} offset"), (i % 97) as i64, pos);
        report.eq(&format!("fd {fd} inode"), inos[i], ino(fd));
    }
    proto.finish(&report);
}
