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
//! `--stream`: the server listens on a stream socket instead and the
//! program is connected to it (the dump must refuse it by name).
//!
//! Usage: `tp_extunix WORKDIR [--stream] [--corrupt]`

use stasis_tests::{Proto, Report};
use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
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

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let path = proto.path("ext.sock");
    if args.flag("stream") {
        let l = UnixListener::bind(&path).expect("bind stream");
        outside(move || {
            // Until the program's end closes.
            if let Ok((mut c, _)) = l.accept() {
                let _ = std::io::copy(&mut c, &mut std::io::sink());
            }
            std::process::exit(0)
        });
        let _c = UnixStream::connect(&path).expect("connect stream");
        proto.ready_and_wait();
        proto.finish(&report);
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
