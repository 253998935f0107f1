//! tp_rights: descriptors in flight (SCM_RIGHTS) in unix datagram and
//! seqpacket queues survive checkpoint/restore. A datagram pair holds
//! three messages, the middle one carrying three descriptors the program
//! also holds (a pipe's read end with bytes waiting, a regular file at
//! offset 3, one end of a stream pair); a seqpacket pair holds one
//! message carrying the pipe's write end. After restore the messages come
//! in order with their boundaries, and each descriptor received is the
//! very open file description: the pipe carries what was written before
//! and after, the file's offset is shared (an lseek on the program's own
//! descriptor moves it), the socket receives what its peer sends.
//!
//! `--closed`: the descriptor in flight is a pipe end nobody holds any
//! more (the sender closed it): refused by name.
//!
//! Usage: `tp_rights WORKDIR [--corrupt] [--closed]`

use stasis_tests::{errno, Proto, Report};

fn pair(ty: i32) -> [i32; 2] {
    let mut f = [0i32; 2];
    // SAFETY: valid out array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, f.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair");
    f
}

/// One message `data` with descriptors `fds` (none: no control message).
fn send_msg(sock: i32, data: &[u8], fds: &[i32]) -> isize {
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; the CMSG macros stay inside cbuf.
    unsafe {
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        if !fds.is_empty() {
            let len = (fds.len() * 4) as u32;
            mh.msg_control = cbuf.as_mut_ptr().cast();
            mh.msg_controllen = libc::CMSG_SPACE(len) as usize;
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
            for (i, fd) in fds.iter().enumerate() {
                libc::CMSG_DATA(c).cast::<i32>().add(i).write_unaligned(*fd);
            }
        }
        libc::sendmsg(sock, &mh, libc::MSG_DONTWAIT)
    }
}

/// One message and the descriptors that came with it.
fn recv_msg(sock: i32) -> (Vec<u8>, Vec<i32>) {
    let mut buf = vec![0u8; 256];
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: msghdr is plain data; buffers live; CMSG walks within cbuf.
    unsafe {
        let mut mh: libc::msghdr = std::mem::zeroed();
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast();
        mh.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = libc::recvmsg(sock, &mut mh, libc::MSG_DONTWAIT);
        buf.truncate(n.max(0) as usize);
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_type == libc::SCM_RIGHTS {
                let k = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..k {
                    fds.push(libc::CMSG_DATA(c).cast::<i32>().add(i).read_unaligned());
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    (buf, fds)
}

fn write(fd: i32, b: &[u8]) -> isize {
    // SAFETY: writing from a live slice.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) }
}

fn read(fd: i32) -> Vec<u8> {
    let mut b = vec![0u8; 256];
    // SAFETY: reading into a live buffer.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
    b.truncate(n.max(0) as usize);
    b
}

fn offset(fd: i32) -> i64 {
    // SAFETY: plain call.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

fn pipe() -> [i32; 2] {
    let mut p = [0i32; 2];
    // SAFETY: valid out array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
    p
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let d = pair(libc::SOCK_DGRAM);
    let p = pipe();
    if args.flag("closed") {
        report.eq("send", 1, send_msg(d[1], b"x", &[p[0]]));
        // SAFETY: our own descriptor; the copy in flight stays.
        unsafe { libc::close(p[0]) };
        proto.ready_and_wait();
        report.eq("descriptor still in flight", 1, recv_msg(d[0]).1.len());
        proto.finish(&report);
    }
    let path = proto.path("file");
    std::fs::write(&path, b"0123456789").expect("file");
    let cpath = std::ffi::CString::new(path.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: a valid C string.
    let f = unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR) };
    assert!(f >= 0, "open: errno {}", errno());
    // SAFETY: plain call.
    unsafe { libc::lseek(f, 3, libc::SEEK_SET) };
    let s = pair(libc::SOCK_STREAM);
    let q = pair(libc::SOCK_SEQPACKET);
    report.eq("pipe write", 5, write(p[1], b"piped"));
    report.eq("m1", 2, send_msg(d[1], b"m1", &[]));
    report.eq("m2", 2, send_msg(d[1], b"m2", &[p[0], f, s[0]]));
    report.eq("m3", 3, send_msg(d[1], b"m33", &[]));
    report.eq("sp", 2, send_msg(q[1], b"sp", &[p[1]]));
    proto.ready_and_wait();
    report.eq("first message", (b"m1".to_vec(), 0), {
        let (m, fds) = recv_msg(d[0]);
        (m, fds.len())
    });
    let (m2, fds) = recv_msg(d[0]);
    report.eq("second message", b"m2".to_vec(), m2);
    report.eq("descriptors in the second", 3, fds.len());
    let third: &[u8] = if args.corrupt() { b"m3" } else { b"m33" };
    report.eq("third message", (third.to_vec(), 0), {
        let (m, fds) = recv_msg(d[0]);
        (m, fds.len())
    });
    if fds.len() == 3 {
        report.eq("write to the pipe", 5, write(p[1], b"after"));
        report.eq("pipe received", b"pipedafter".to_vec(), read(fds[0]));
        report.eq("file offset received", 3, offset(fds[1]));
        // SAFETY: plain call.
        unsafe { libc::lseek(f, 7, libc::SEEK_SET) };
        report.eq("file offset shared", 7, offset(fds[1]));
        report.eq("file bytes", b"789".to_vec(), read(fds[1]));
        report.eq("socket peer send", 3, write(s[1], b"sss"));
        report.eq("socket received", b"sss".to_vec(), read(fds[2]));
    }
    let (sp, wfds) = recv_msg(q[0]);
    report.eq("seqpacket message", (b"sp".to_vec(), 1), (sp, wfds.len()));
    if let Some(&w) = wfds.first() {
        report.eq("write through the pipe end received", 1, write(w, b"z"));
        report.eq("pipe", b"z".to_vec(), read(p[0]));
    }
    report.eq("queue empty", (Vec::new(), 0), {
        let (m, fds) = recv_msg(d[0]);
        (m, fds.len())
    });
    proto.finish(&report);
}
