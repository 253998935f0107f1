//! tp_sockets: unix socket pairs survive checkpoint/restore: a stream and
//! a datagram pair between a parent and its child (still connected,
//! message boundaries kept), and a lone stream end whose peer was closed
//! (as Java's NIO keeps one): it still reads EOF and writes EPIPE.
//!
//! Usage: `tp_sockets WORKDIR [--corrupt]`

use stasis_tests::{Proto, Report};

fn pair(ty: i32) -> [i32; 2] {
    let mut f = [0i32; 2];
    // SAFETY: valid out array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, f.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair");
    f
}

fn send(fd: i32, b: &[u8]) -> isize {
    // SAFETY: sending from a live slice; no SIGPIPE.
    unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) }
}

fn recv(fd: i32) -> (isize, Vec<u8>) {
    let mut b = vec![0u8; 256];
    // SAFETY: receiving into a live buffer.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), 0) };
    b.truncate(n.max(0) as usize);
    (n, b)
}

fn main() {
    let (proto, args) = Proto::from_args();
    let stream = pair(libc::SOCK_STREAM);
    let dgram = pair(libc::SOCK_DGRAM);
    let lone = pair(libc::SOCK_STREAM);
    // SAFETY: closing our own descriptor: lone[0] keeps a closed peer.
    unsafe { libc::close(lone[1]) };
    // SAFETY: single-threaded; the child leaves with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // Child: echo one stream message and two datagrams back, reversed.
        let (_, m) = recv(stream[1]);
        let back: Vec<u8> = m.iter().rev().copied().collect();
        send(stream[1], &back);
        let (_, d1) = recv(dgram[1]);
        let (_, d2) = recv(dgram[1]);
        send(dgram[1], &d2);
        send(dgram[1], &d1);
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
    proto.ready_and_wait();
    let mut report = Report::new();
    let msg: &[u8] = if args.corrupt() { b"broken" } else { b"hello" };
    send(stream[0], b"hello");
    report.eq("stream echo", b"olleh".to_vec(), recv(stream[0]).1);
    send(dgram[0], b"one");
    send(dgram[0], msg);
    report.eq("first datagram back", b"hello".to_vec(), recv(dgram[0]).1);
    report.eq("second datagram back", b"one".to_vec(), recv(dgram[0]).1);
    report.eq("lone end reads EOF", 0, recv(lone[0]).0);
    let w = send(lone[0], b"x");
    report.check(w == -1 && stasis_tests::errno() == libc::EPIPE, || {
        format!("lone end write: {w}, errno {}", stasis_tests::errno())
    });
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child: status {st:#x}")
    });
    proto.finish(&report);
}
