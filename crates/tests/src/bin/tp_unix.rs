//! tp_unix: unix sockets beyond empty pairs survive checkpoint/restore:
//! data waiting in a stream pair (read from the peek offset the program
//! set), three datagrams in a datagram pair (boundaries and order kept), a
//! seqpacket pair shut down for writing with two messages queued (then
//! EOF; writing draws EPIPE), a lone stream end with data from its closed
//! peer, and options (SO_PASSCRED, SO_PEEK_OFF, SO_RCVBUF, SO_SNDBUF).
//! Every option and shutdown-visible behaviour is checked after restore.
//!
//! `--rights`: a descriptor in flight (SCM_RIGHTS, unread): refused.
//!
//! Usage: `tp_unix WORKDIR [--corrupt] [--rights]`

use stasis_tests::{errno, Proto, Report};

fn pair(ty: i32) -> [i32; 2] {
    let mut f = [0i32; 2];
    // SAFETY: valid out array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, f.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair");
    f
}

fn send(fd: i32, b: &[u8]) -> isize {
    // SAFETY: sending from a live slice; no SIGPIPE.
    unsafe {
        libc::send(
            fd,
            b.as_ptr().cast(),
            b.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    }
}

fn recv(fd: i32, flags: i32) -> (isize, Vec<u8>) {
    let mut b = vec![0u8; 256];
    // SAFETY: receiving into a live buffer.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            b.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    b.truncate(n.max(0) as usize);
    (n, b)
}

fn set(fd: i32, opt: i32, v: i32) {
    // SAFETY: v lives for the call.
    let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, std::ptr::addr_of!(v).cast(), 4) };
    assert_eq!(r, 0, "setsockopt {opt}: errno {}", errno());
}

fn get(fd: i32, opt: i32) -> i32 {
    let (mut v, mut len) = (0i32, 4u32);
    // SAFETY: live out-parameters.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            std::ptr::addr_of_mut!(v).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return -1000 - errno();
    }
    v
}

fn opts(fd: i32) -> [i32; 4] {
    [
        get(fd, libc::SO_PASSCRED),
        get(fd, libc::SO_PEEK_OFF),
        get(fd, libc::SO_RCVBUF),
        get(fd, libc::SO_SNDBUF),
    ]
}

fn send_fd(sock: i32, fd: i32) {
    let mut cbuf = [0u64; 8];
    let mut data = *b"x";
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: msghdr is plain data; the CMSG macros stay inside cbuf.
    unsafe {
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        libc::CMSG_DATA(c).cast::<i32>().write_unaligned(fd);
        assert_eq!(libc::sendmsg(sock, &mh, 0), 1, "sendmsg SCM_RIGHTS");
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    if args.flag("rights") {
        let p = pair(libc::SOCK_STREAM);
        send_fd(p[1], 0);
        proto.ready_and_wait();
        report.eq("descriptor still in flight", 1, recv(p[0], 0).0);
        proto.finish(&report);
    }
    let s = pair(libc::SOCK_STREAM);
    send(s[1], b"stream-bytes-1");
    send(s[1], b"-2");
    set(s[0], libc::SO_PEEK_OFF, 3);
    set(s[1], libc::SO_PASSCRED, 1);
    let d = pair(libc::SOCK_DGRAM);
    set(d[0], libc::SO_RCVBUF, 50_000);
    set(d[1], libc::SO_SNDBUF, 60_000);
    for m in [&b"m1"[..], b"m22", b"m333"] {
        send(d[1], m);
    }
    let q = pair(libc::SOCK_SEQPACKET);
    send(q[0], b"p1");
    send(q[0], b"p22");
    // SAFETY: plain call on our socket.
    unsafe { libc::shutdown(q[0], libc::SHUT_WR) };
    let l = pair(libc::SOCK_STREAM);
    send(l[1], b"bye");
    // SAFETY: closing our own descriptor: l[0] keeps data from a closed peer.
    unsafe { libc::close(l[1]) };
    let ends = [s[0], s[1], d[0], d[1], q[0], q[1], l[0]];
    let before: Vec<[i32; 4]> = ends.iter().map(|&fd| opts(fd)).collect();

    proto.ready_and_wait();
    let after: Vec<[i32; 4]> = ends.iter().map(|&fd| opts(fd)).collect();
    report.eq(
        "options (PASSCRED, PEEK_OFF, RCVBUF, SNDBUF) of every end",
        before,
        after,
    );
    // The peek offset 3 skips "str".
    report.eq(
        "stream peek from offset 3",
        b"eam-bytes-1-2".to_vec(),
        recv(s[0], libc::MSG_PEEK).1,
    );
    set(s[0], libc::SO_PEEK_OFF, -1);
    report.eq(
        "stream bytes",
        b"stream-bytes-1-2".to_vec(),
        recv(s[0], 0).1,
    );
    report.eq("stream still open both ways", 2, send(s[0], b"ok"));
    let third: &[u8] = if args.corrupt() { b"m33" } else { b"m333" };
    for m in [&b"m1"[..], b"m22", third] {
        report.eq("datagram", m.to_vec(), recv(d[0], 0).1);
    }
    report.eq("datagram queue empty", -1, recv(d[0], 0).0);
    report.eq("seqpacket 1", b"p1".to_vec(), recv(q[1], 0).1);
    report.eq("seqpacket 2", b"p22".to_vec(), recv(q[1], 0).1);
    report.eq("seqpacket EOF after shutdown", 0, recv(q[1], 0).0);
    let w = send(q[0], b"late");
    report.check(w == -1 && errno() == libc::EPIPE, || {
        format!("write after SHUT_WR: {w}, errno {}", errno())
    });
    report.eq("seqpacket other way still open", 2, send(q[1], b"up"));
    report.eq("seqpacket other way", b"up".to_vec(), recv(q[0], 0).1);
    report.eq("lone end data", b"bye".to_vec(), recv(l[0], 0).1);
    report.eq("lone end EOF", 0, recv(l[0], 0).0);
    proto.finish(&report);
}
