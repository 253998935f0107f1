//! tp_extunix: a unix socket whose other end is outside the dumped tree
//! (criu's `--ext-unix-sk`).
//!
//! A server outside the tree (a double fork into a new session: nobody's
//! descendant here) binds a datagram socket at `WORK/ext.sock` (a syslog's
//! /dev/log) and appends every datagram it receives to `WORK/ext.log`,
//! until one reads `END`. The program connects an unnamed datagram socket
//! to it and sends `before`. After go its peer must still be
//! `WORK/ext.sock`, and `after` then `END` must reach the server through
//! it: the log must read `before`, `after`, `END`.
//!
//! `--stream`: a stream socket whose other end is held outside the tree
//! (a service's stdout connected to journald, a D-Bus connection): a
//! socket pair whose other end a holder outside the tree keeps. The
//! program's end is descriptor 42, close-on-exec, O_NONBLOCK, with
//! SO_SNDBUF set. After go it must still be so (SO_TYPE a stream), and
//! the program sends `ping` and must read `pong` back: from the holder
//! when not dumped, from the harness (which hands a socket in with
//! `--inherit-fd fd[N]:socket:[INO]`) after a restore. `--queued`: the
//! holder sends `early` first, left unread in the program's end (the dump
//! must refuse it by name).
//!
//! Usage: `tp_extunix WORKDIR [--stream [--queued]] [--corrupt]`

use stasis_tests::{Proto, Report};
use std::io::Read;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

/// The server: logs each datagram, ends at `END` (or after 5 minutes, or
/// when the work directory goes).
fn serve(proto: &Proto, sock: UnixDatagram) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while start.elapsed() < Duration::from_secs(300) && proto.dir().exists() {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(proto.path("ext.log"))
        {
            let _ = writeln!(f, "{line}");
        }
        if line == "END" {
            break;
        }
    }
    std::process::exit(0)
}

/// Runs `f` in a grandchild in a new session; returns once its parent
/// exited.
fn outside(f: impl FnOnce()) {
    // SAFETY: fork in a single-threaded program.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain calls in the child.
        unsafe { libc::setsid() };
        // SAFETY: as above.
        if unsafe { libc::fork() } == 0 {
            f();
        }
        // SAFETY: leave at once.
        unsafe { libc::_exit(0) };
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
}

/// The program's end of the stream.
const FD: i32 = 42;
const SNDBUF: i32 = 100_000;

/// The holder outside the tree: (`early` first,) answers `ping` with
/// `pong`, then keeps its end until the program's closes or the work
/// directory goes.
fn hold(proto: &Proto, mut b: UnixStream, queued: bool) {
    if queued {
        let _ = b.write_all(b"early");
    }
    let _ = b.set_read_timeout(Some(Duration::from_millis(200)));
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while start.elapsed() < Duration::from_secs(300) && proto.dir().exists() {
        match b.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
        if got.ends_with(b"ping") {
            let _ = b.write_all(b"pong");
        }
    }
    std::process::exit(0)
}

fn int_opt(fd: i32, opt: i32) -> i32 {
    let mut v = 0i32;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: an int-sized out value for a socket option.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut len) };
    if r == 0 {
        v
    } else {
        -1
    }
}

/// `--stream` (see the module doc).
fn stream(proto: &Proto, queued: bool, corrupt: bool) -> ! {
    let mut report = Report::new();
    let (a, b) = UnixStream::pair().expect("socketpair");
    outside(move || hold(proto, b, queued));
    // SAFETY: dup3 onto a number this program does not use otherwise.
    let r = unsafe { libc::dup3(a.as_raw_fd(), FD, libc::O_CLOEXEC) };
    assert_eq!(r, FD, "dup3");
    drop(a);
    // SAFETY: FD was just made and is ours alone.
    let s = unsafe { OwnedFd::from_raw_fd(FD) };
    let mut s = UnixStream::from(s);
    s.set_nonblocking(true).expect("O_NONBLOCK");
    let v = SNDBUF;
    // SAFETY: an int option on our socket.
    let r = unsafe {
        libc::setsockopt(
            FD,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const v).cast(),
            4,
        )
    };
    assert_eq!(r, 0, "SO_SNDBUF");
    let sndbuf = int_opt(FD, libc::SO_SNDBUF);
    if queued {
        // The holder's `early` is in our end before the dump.
        let mut p = libc::pollfd {
            fd: FD,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 10_000) };
    }
    proto.ready_and_wait();
    // SAFETY: fcntl queries of FD.
    let (fdfl, fl) = unsafe {
        (
            libc::fcntl(FD, libc::F_GETFD),
            libc::fcntl(FD, libc::F_GETFL),
        )
    };
    report.eq(
        "close-on-exec",
        true,
        fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0,
    );
    report.eq("O_NONBLOCK", true, fl >= 0 && fl & libc::O_NONBLOCK != 0);
    report.eq("SO_TYPE", libc::SOCK_STREAM, int_opt(FD, libc::SO_TYPE));
    report.eq("SO_DOMAIN", libc::AF_UNIX, int_opt(FD, libc::SO_DOMAIN));
    report.eq("SO_SNDBUF", sndbuf, int_opt(FD, libc::SO_SNDBUF));
    if let Err(e) = s.write_all(b"ping") {
        report.fail(format!("send ping: {e}"));
    }
    let want: &[u8] = match (queued, corrupt) {
        (_, true) => b"pang",
        (true, false) => b"earlypong",
        (false, false) => b"pong",
    };
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < want.len() && t.elapsed() < Duration::from_secs(10) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stasis_tests::nap(stasis_tests::POLL_NS);
            }
            Err(e) => {
                report.fail(format!("read: {e}"));
                break;
            }
        }
    }
    report.eq(
        "reply",
        String::from_utf8_lossy(want),
        String::from_utf8_lossy(&got),
    );
    proto.finish(&report)
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let path = proto.path("ext.sock");
    if args.flag("stream") {
        stream(&proto, args.flag("queued"), args.corrupt());
    }
    let server = UnixDatagram::bind(&path).expect("bind dgram");
    outside(|| serve(&proto, server));
    let c = UnixDatagram::unbound().expect("socket");
    c.connect(&path).expect("connect");
    c.send(b"before").expect("send before");
    proto.ready_and_wait();
    let mut want = path.clone();
    if args.corrupt() {
        want.set_extension("other");
    }
    let peer = c
        .peer_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
    report.eq("peer", Some(want), peer);
    for m in [&b"after"[..], b"END"] {
        if let Err(e) = c.send(m) {
            report.fail(format!("send {}: {e}", String::from_utf8_lossy(m)));
        }
    }
    let t = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(proto.path("ext.log")).unwrap_or_default();
        if log.ends_with("END\n") || t.elapsed() > Duration::from_secs(10) {
            break log;
        }
        stasis_tests::nap(stasis_tests::POLL_NS);
    };
    report.eq(
        "what the server received",
        "before\nafter\nEND\n",
        log.as_str(),
    );
    proto.finish(&report);
}
