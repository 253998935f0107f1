//! tp_unsupported: holds one resource stasis does not support yet, for the
//! "dump refuses cleanly and leaves the process unharmed" tests.
//!
//! Usage: `tp_unsupported WORKDIR --with pipe|socket|tcp|thread|child|huge-deleted`
//!
//! - `pipe`: holds both ends of a pipe with 5 bytes buffered in it;
//! - `thread`: a second thread waits for go and returns a value;
//! - `child`: a forked child waits for go and exits with status 0;
//! - `huge-deleted`: an open, deleted, sparse file of 1 GiB + 4 KiB (above
//!   the size an image may hold).
//!
//! After go it checks that the resource still works: the pipe yields the
//! buffered bytes and carries new ones, the thread joins with its value, the
//! child exits 0.

use stasis_tests::{Proto, Report};

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let what = args.get("with").unwrap_or("pipe").to_string();
    match what.as_str() {
        "pipe" => {
            let mut fds = [0i32; 2];
            // SAFETY: fds is a valid array of two ints.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
            // SAFETY: writes 5 bytes from a literal into our pipe.
            let w = unsafe { libc::write(fds[1], b"hello".as_ptr().cast(), 5) };
            assert_eq!(w, 5);
            proto.ready_and_wait();
            // SAFETY: writes 6 bytes from a literal into our pipe.
            let w = unsafe { libc::write(fds[1], b" world".as_ptr().cast(), 6) };
            report.eq("write to pipe", 6, w);
            let mut buf = [0u8; 32];
            // SAFETY: buf is a valid 32-byte buffer.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            report.eq(
                "pipe content",
                &b"hello world"[..],
                &buf[..usize::try_from(n).unwrap_or(0)],
            );
        }
        "socket" => {
            let mut fds = [0i32; 2];
            // SAFETY: fds is a valid array of two ints.
            let r =
                unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
            assert_eq!(r, 0, "socketpair");
            proto.ready_and_wait();
            // SAFETY: writes 2 bytes from a literal into our socket.
            let w = unsafe { libc::write(fds[0], b"hi".as_ptr().cast(), 2) };
            let mut buf = [0u8; 8];
            // SAFETY: buf is a valid 8-byte buffer.
            let n = unsafe { libc::read(fds[1], buf.as_mut_ptr().cast(), buf.len()) };
            report.eq("socket round trip", (2, 2), (w, n));
        }
        "tcp" => {
            // A listening TCP socket on loopback (port chosen by the kernel).
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            let addr = l.local_addr().expect("local_addr");
            proto.ready_and_wait();
            let c = std::net::TcpStream::connect(addr);
            report.check(c.is_ok(), || format!("connect to {addr}: {c:?}"));
        }
        "huge-deleted" => {
            // A sparse deleted file larger than an image may hold (1 GiB).
            let path = proto.path("huge.dat");
            let f = std::fs::File::create(&path).expect("create");
            f.set_len((1 << 30) + 4096).expect("ftruncate");
            std::fs::remove_file(&path).expect("unlink");
            proto.ready_and_wait();
            use std::os::unix::fs::FileExt;
            report.eq(
                "write to the deleted file",
                2,
                f.write_at(b"ok", 7).unwrap_or(0),
            );
        }
        "thread" => {
            let dir = proto.dir().to_path_buf();
            let t = std::thread::spawn(move || {
                let p = Proto::new(&dir);
                p.wait_go();
                42u32
            });
            proto.ready_and_wait();
            match t.join() {
                Ok(v) => report.eq("thread result", 42, v),
                Err(_) => report.fail("thread panicked"),
            }
        }
        "child" => {
            // SAFETY: the program is single-threaded here; the child only
            // polls the go file and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: integer-only prctl: die with the parent.
                unsafe {
                    libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as u64,
                        0u64,
                        0u64,
                        0u64,
                    )
                };
                proto.wait_go();
                // SAFETY: leaves the child without running the parent's exit handlers.
                unsafe { libc::_exit(0) };
            }
            assert!(pid > 0, "fork");
            proto.ready_and_wait();
            let mut status = 0;
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            report.eq("waitpid(child)", pid, r);
            report.check(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                || format!("child status {status:#x}"),
            );
        }
        other => panic!("unknown --with {other}"),
    }
    proto.finish(&report);
}
