//! tp_memfd: memfds survive checkpoint/restore with their name, seals,
//! mode and contents, used as descriptors (offset, flags) and as mappings
//! (MAP_SHARED read-write, MAP_SHARED read-only of a write-sealed memfd,
//! MAP_PRIVATE with copy-on-write-modified pages, a mapping whose
//! descriptor was closed), and shared with a child: after restore a write
//! through one process is seen by the other (the same object).
//!
//! Usage: `tp_memfd WORKDIR [--corrupt]`

use stasis_tests::{Mapping, Proto, Report, Rng};
use std::ffi::CString;

const PAGE: usize = 4096;

fn memfd(name: &str, flags: u32) -> i32 {
    let c = CString::new(name).expect("name");
    // SAFETY: valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), flags) };
    if fd < 0 {
        stasis_tests::fatal("memfd_create");
    }
    fd
}

fn pwrite(fd: i32, data: &[u8], off: usize) -> isize {
    // SAFETY: writing from a live slice.
    unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off as i64) }
}

fn pread(fd: i32, len: usize, off: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    // SAFETY: reading into a live buffer of len bytes.
    let n = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), len, off as i64) };
    b.truncate(n.max(0) as usize);
    b
}

fn fcntl(fd: i32, cmd: i32, arg: i32) -> i32 {
    // SAFETY: integer-only fcntl on our own descriptor.
    unsafe { libc::fcntl(fd, cmd, arg) }
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

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let mut rng = Rng::new(0x3e3f_d00d);

    // A: shared with the child, fd + MAP_SHARED read-write; grow/shrink sealed.
    let a_len = 3 * PAGE + 100;
    let a = memfd("stasis-shared", libc::MFD_ALLOW_SEALING);
    let mut a_data = vec![0u8; a_len];
    rng.fill(&mut a_data);
    pwrite(a, &a_data, 0);
    let a_map = Mapping::new(
        4 * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        a,
        0,
    );
    fcntl(
        a,
        libc::F_ADD_SEALS,
        libc::F_SEAL_GROW | libc::F_SEAL_SHRINK,
    );
    // SAFETY: lseek on our own descriptor.
    unsafe { libc::lseek(a, 1234, libc::SEEK_SET) };

    // B: write-sealed; a private mapping with copy-on-write-modified pages
    // and a read-only shared one, both of the second and third pages.
    let b_len = 4 * PAGE;
    let b = memfd("stasis-sealed", libc::MFD_ALLOW_SEALING);
    let mut b_data = vec![0u8; b_len];
    rng.fill(&mut b_data);
    pwrite(b, &b_data, 0);
    // SAFETY: fchmod of our own descriptor.
    unsafe { libc::fchmod(b, 0o640) };
    let b_seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    fcntl(b, libc::F_ADD_SEALS, b_seals);
    let b_priv = Mapping::new(
        2 * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
        b,
        PAGE as i64,
    );
    b_priv.bytes_mut()[PAGE + 7] ^= 0xff; // copy-on-write of one page
    let b_priv_expect = b_priv.bytes().to_vec();
    let b_ro = Mapping::new(2 * PAGE, libc::PROT_READ, libc::MAP_SHARED, b, PAGE as i64);
    // B as a read-only descriptor too.
    // SAFETY: valid path.
    let b_rd = unsafe {
        libc::open(
            CString::new(format!("/proc/self/fd/{b}"))
                .expect("p")
                .as_ptr(),
            libc::O_RDONLY,
        )
    };

    // C: created without MFD_ALLOW_SEALING, descriptor only, O_RDWR at an offset.
    let c = memfd("stasis-plain", 0);
    pwrite(c, b"plain memfd contents", 0);
    // SAFETY: lseek on our own descriptor.
    unsafe { libc::lseek(c, 6, libc::SEEK_SET) };

    // D: mapped shared, descriptor closed: known only through the mapping.
    let d = memfd("stasis-maponly", 0);
    // SAFETY: ftruncate of our own memfd.
    unsafe { libc::ftruncate(d, (2 * PAGE) as i64) };
    let d_map = Mapping::new(
        2 * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        d,
        0,
    );
    d_map.bytes_mut()[PAGE] = 0x42;
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(d) };

    // A pipe child -> parent for "done".
    let mut q = [0i32; 2];
    // SAFETY: valid out array.
    unsafe { libc::pipe(q.as_mut_ptr()) };

    // SAFETY: single-threaded: fork is safe; the child exits with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        proto.wait_go();
        let mut code = 0;
        // Same object: what the child sees equals what the parent wrote.
        if a_map.bytes()[..a_len] != a_data[..] {
            code |= 1;
        }
        a_map.bytes_mut()[2 * PAGE + 5] = 0xc4; // through the mapping
        if pwrite(a, b"from-child", 100) != 10 {
            code |= 2; // through the descriptor
        }
        if d_map.bytes()[PAGE] != 0x42 {
            code |= 4;
        }
        d_map.bytes_mut()[PAGE + 1] = 0x43;
        // SAFETY: writing one byte from a live array.
        unsafe { libc::write(q[1], b"d".as_ptr().cast(), 1) };
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }

    let a_link = link(a);
    let maps_before = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    proto.ready_and_wait();

    let mut report = Report::new();
    if corrupt {
        a_data[0] ^= 1;
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child failed: status {st:#x}")
    });
    let mut one = [0u8; 1];
    // SAFETY: reading one byte into a live array.
    let n = unsafe { libc::read(q[0], one.as_mut_ptr().cast(), 1) };
    report.eq("child's answer", 1, n);

    // A: names, identity, seals, offset, contents, the child's writes.
    report.eq(
        "link of A",
        "/memfd:stasis-shared (deleted)",
        a_link.as_str(),
    );
    report.eq("link of A after restore", a_link.clone(), link(a));
    report.eq("size of A", a_len as i64, fstat(a).st_size);
    report.eq(
        "seals of A",
        libc::F_SEAL_GROW | libc::F_SEAL_SHRINK,
        fcntl(a, libc::F_GET_SEALS, 0),
    );
    // SAFETY: lseek on our own descriptor.
    report.eq("offset of A", 1234, unsafe {
        libc::lseek(a, 0, libc::SEEK_CUR)
    });
    let mut want = a_data.clone();
    want[100..110].copy_from_slice(b"from-child");
    want[2 * PAGE + 5] = 0xc4;
    report.check(pread(a, a_len, 0) == want, || {
        "contents of A (read) differ from the expected".into()
    });
    report.check(a_map.bytes()[..a_len] == want[..], || {
        "contents of A (mapping) differ from the expected".into()
    });
    // The mapping and the descriptor are one object.
    a_map.bytes_mut()[3] = 0x77;
    report.eq(
        "write through A's mapping seen by read",
        vec![0x77],
        pread(a, 1, 3),
    );

    // B: seals, mode, contents, mappings.
    report.eq("seals of B", b_seals, fcntl(b, libc::F_GET_SEALS, 0));
    report.eq("mode of B", 0o640, fstat(b).st_mode & 0o7777);
    report.check(pread(b, b_len, 0) == b_data, || {
        "contents of B differ".into()
    });
    report.check(pwrite(b, b"x", 0) < 0, || {
        "write to write-sealed B succeeded".into()
    });
    report.check(b_priv.bytes() == b_priv_expect, || {
        "private mapping of B (with its copied-on-write page) differs".into()
    });
    report.check(b_ro.bytes() == &b_data[PAGE..3 * PAGE], || {
        "read-only shared mapping of B differs".into()
    });
    // SAFETY: mprotect of our own mapping; must be refused (sealed).
    let r = unsafe {
        libc::mprotect(
            b_ro.addr.cast(),
            b_ro.len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    report.check(r != 0, || {
        "read-only mapping of write-sealed B became writable".into()
    });
    report.eq(
        "flags of B's read-only descriptor",
        libc::O_RDONLY,
        fcntl(b_rd, libc::F_GETFL, 0) & libc::O_ACCMODE,
    );
    report.eq(
        "B through its read-only fd",
        b_data[..8].to_vec(),
        pread(b_rd, 8, 0),
    );

    // C: no sealing allowed, offset, contents.
    report.eq(
        "link of C",
        "/memfd:stasis-plain (deleted)",
        link(c).as_str(),
    );
    report.eq(
        "seals of C",
        libc::F_SEAL_SEAL,
        fcntl(c, libc::F_GET_SEALS, 0),
    );
    // SAFETY: lseek on our own descriptor.
    report.eq("offset of C", 6, unsafe {
        libc::lseek(c, 0, libc::SEEK_CUR)
    });
    report.eq(
        "contents of C",
        b"plain memfd contents".to_vec(),
        pread(c, 64, 0),
    );

    // D: the child's write through the shared mapping.
    report.eq("D written by the child", 0x43, d_map.bytes()[PAGE + 1]);
    report.eq("D's own byte", 0x42, d_map.bytes()[PAGE]);

    // The maps look the same.
    let maps_after = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let memfd_lines = |m: &str| -> Vec<String> {
        m.lines()
            .filter(|l| l.contains("/memfd:"))
            .map(|l| {
                // address, perms, offset and name (not device/inode)
                let f: Vec<&str> = l.split_whitespace().collect();
                format!("{} {} {} {}", f[0], f[1], f[2], f[5..].join(" "))
            })
            .collect()
    };
    report.eq(
        "memfd lines of /proc/self/maps",
        memfd_lines(&maps_before),
        memfd_lines(&maps_after),
    );
    report.check(
        maps_after.contains("/memfd:stasis-maponly (deleted)"),
        || "the map-only memfd lost its name".into(),
    );
    proto.finish(&report);
}
