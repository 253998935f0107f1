//! tp_shared: what a parent and its child share survives checkpoint/restore
//! as one object: pipes (with the bytes waiting in them and their
//! capacity), open file descriptions (one offset for both processes, and
//! for a dup within one), and MAP_SHARED anonymous memory.
//!
//! Usage: `tp_shared WORKDIR [--corrupt]`

use stasis_tests::{Proto, Report};

fn pos(fd: i32) -> i64 {
    // SAFETY: lseek on our own descriptor.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

fn write_str(fd: i32, s: &[u8]) -> isize {
    // SAFETY: writing from a live slice.
    unsafe { libc::write(fd, s.as_ptr().cast(), s.len()) }
}

fn read_some(fd: i32, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: reading into a live buffer of n bytes.
    let k = unsafe { libc::read(fd, b.as_mut_ptr().cast(), n) };
    b.truncate(k.max(0) as usize);
    b
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();

    // A pipe parent -> child, with bytes waiting in it and a bigger capacity.
    let mut p = [0i32; 2];
    // SAFETY: valid out array.
    unsafe { libc::pipe(p.as_mut_ptr()) };
    // SAFETY: fcntl on our own pipe.
    let cap = unsafe { libc::fcntl(p[1], libc::F_SETPIPE_SZ, 256 * 1024) };
    let waiting: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    write_str(p[1], &waiting);
    // A pipe child -> parent, empty, non-blocking read end in the parent.
    let mut q = [0i32; 2];
    // SAFETY: valid out array.
    unsafe { libc::pipe2(q.as_mut_ptr(), libc::O_NONBLOCK) };

    // A file shared by both (one offset), plus a dup in the parent.
    let path = proto.path("shared.log");
    let cpath = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
    // SAFETY: valid path.
    let f = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC,
            0o644,
        )
    };
    write_str(f, b"0123456789");
    // SAFETY: dup of our own descriptor.
    let fdup = unsafe { libc::dup(f) };

    // Shared anonymous memory.
    // SAFETY: a fresh anonymous shared mapping.
    let shm = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as *mut u64;
    // SAFETY: shm is 1 MiB, writable.
    unsafe { *shm = 0x5eed };

    // SAFETY: single-threaded: fork is safe; the child exits with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // Child: reads the waiting bytes after go, writes to the shared file
        // and the shared memory, answers on q.
        proto.wait_go();
        let mut code = 0;
        let mut got = Vec::new();
        while got.len() < waiting.len() {
            let part = read_some(p[0], waiting.len() - got.len());
            if part.is_empty() {
                break;
            }
            got.extend(part);
        }
        if got != waiting {
            code |= 1;
        }
        if write_str(f, b"child") != 5 {
            code |= 2;
        }
        // SAFETY: the shared mapping is still mapped in the child.
        unsafe {
            if *shm != 0x5eed {
                code |= 4;
            }
            *shm.add(1) = 0xc41d;
        }
        write_str(q[1], b"done");
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    proto.ready_and_wait();

    let mut report = Report::new();
    // SAFETY: fcntl queries on our own descriptors.
    let (cap_now, fl) = unsafe {
        (
            libc::fcntl(p[1], libc::F_GETPIPE_SZ),
            libc::fcntl(q[0], libc::F_GETFL),
        )
    };
    report.eq("pipe capacity", cap, cap_now);
    report.check(fl & libc::O_NONBLOCK != 0, || {
        format!("O_NONBLOCK lost on the read end (flags {fl:#o})")
    });
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child failed: status {st:#x}")
    });
    report.eq(
        "answer from the child",
        b"done".to_vec(),
        read_some(q[0], 16),
    );
    // The child's write moved the shared offset: 10 + 5.
    report.eq("shared file offset", if corrupt { 16 } else { 15 }, pos(f));
    report.eq("offset of the dup", 15, pos(fdup));
    // SAFETY: the shared mapping is ours.
    report.eq("shared memory written by the child", 0xc41d, unsafe {
        *shm.add(1)
    });
    proto.finish(&report);
}
