//! tp_unix: unix sockets beyond empty pairs survive checkpoint/restore:
//! data waiting in a stream pair (read from the peek offset the program
//! set), three datagrams in a datagram pair (boundaries and order kept), a
//! seqpacket pair shut down for writing with two messages queued (then
//! EOF; writing draws EPIPE), a lone stream end with data from its closed
//! peer, and options (SO_PASSCRED, SO_PEEK_OFF, SO_RCVBUF, SO_SNDBUF).
//! Every option and shutdown-visible behaviour is checked after restore.
//!
//! Accepted connections: one of the path listener with data waiting both
//! ways, one of an abstract listener closed since (names on both sides
//! checked).
//! A datagram socket connected to the bound datagram one (a syslog
//! client's way): its peer name and a datagram through it.
//! Named sockets too: a stream listener on a path (backlog 5, mode 0640),
//! a seqpacket listener on an abstract name (backlog 3), a datagram socket
//! bound to a path with two datagrams from an unnamed sender waiting and
//! SO_RCVBUF set, and a socket not bound at all. After restore: names,
//! backlogs (as `ss` shows them), the file's mode, options; then clients
//! connect to both listeners and talk, the datagrams are read and a new one
//! is sent to the path.
//!
//! `--rights`: a descriptor in flight (SCM_RIGHTS, unread) on a stream
//! pair: refused (tp_rights covers datagram and seqpacket queues).
//! `--pending`: two clients waiting in a unix listener's accept queue
//! (one created before the listener, one after): after restore they are
//! accepted in the order they connected. With `--pending-data` the first
//! has sent data: refused (the program then goes on); with
//! `--pending-shared` a child holds them too: refused (which of the two
//! connected cannot be read).
//! `--unlinked`: a listener whose path was unlinked: refused.
//!
//! `--peercred`: SO_PEERCRED (pid, uid, gid) and SO_PEERGROUPS of both
//! ends of three pairs: one the program made, one a child made as uid
//! 1234, gid 5678, groups 77 and 88 and handed over before exiting (its
//! PID free again), one a child still running (in the tree) made and
//! shares; a listener a child listened on as 2222 (exited) with a client
//! of a child as 4321 (exited): the client and the accepted end read the
//! same after restore, a new client reads the listener's creator; a
//! connection a running child made as 4444:4444 (group 99) waits in that
//! listener's accept queue: accepted after restore, it reports the child
//! (`--corrupt-waiting`: expects another PID there, to fail).
//!
//! `--peercred-listen`: what PID-namespace restores keep (run also as
//! PID 1 of its own namespace and with `--new-pid-ns`): SO_PEERCRED and
//! SO_PEERGROUPS of two pairs (the program's, an end nonblocking, a
//! message waiting each way, SO_RCVBUF set; a seqpacket one a child made
//! as 1234:5678, groups 77 and 88, and exited, two records waiting, then
//! EOF), of a connection a child made as 4321 (exited) to the first
//! listener below and the program accepted (data waiting), of a
//! listener a child listened on as 2222 (exited) and of one of the
//! program's own, a connection a running child made as 4444:4444 (group
//! 99) waiting in the first, one of the program's own waiting in the
//! second; after restore both listeners read the same, each waiting
//! connection, accepted, reports its maker, a new client the child's
//! listener's maker (`--corrupt`: expects another PID, to fail).
//! `--lone-accepted`: SO_PEERCRED of two accepted connections whose
//! listeners a restore does not open before them: one a child listened
//! on as 2323 and that was closed (a path in WORKDIR/socks with `--path`,
//! else abstract) and a child connected to as 4343; one connected to by
//! a child as 4545, whose listener (ours, abstract) was moved to a number
//! above it. After restore: both ends of both, what waited, a byte each
//! way, a new client of the moved listener (`--corrupt`: expects another
//! PID, to fail). `--keep-listener`: also a listener bound to
//! WORKDIR/kept.sock with a connection of the program's waiting, and a
//! datagram socket bound to WORKDIR/dgram.sock with a datagram waiting:
//! after restore their names, the waiting connection accepted (its
//! SO_PEERCRED, a byte through it), a new client, the datagram and a new
//! one sent to the path.
//! `--own-stdio`: stdio on files in WORKDIR (in a rootfs, where the
//! harness's files are out of reach: `Proto::stdio_in_workdir`).
//! `--pair-in-flight`: an end of a stream pair in flight in a seqpacket
//! pair (and kept): its SO_PEERCRED, then a byte through the end received
//! (`--corrupt`: expects another PID, to fail).
//! `--in-flight`: also a pipe's read end in flight in another pair of
//! the program's (its SO_PEERCRED kept too), received after the restore
//! and read through.
//!
//! Usage: `tp_unix WORKDIR [--corrupt] [--rights|--pending [--pending-data|--pending-shared]|--unlinked|--peercred [--corrupt-waiting]|--peercred-listen [--in-flight]|--pair-in-flight|--lone-accepted [--path] [--keep-listener]] [--own-stdio]`

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

/// recv after waiting up to 5 s for data.
fn recv_wait(fd: i32) -> Vec<u8> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, 5000) };
    recv(fd, 0).1
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

fn recv_fd(sock: i32) -> i32 {
    let mut cbuf = [0u64; 8];
    let mut data = [0u8; 1];
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
        mh.msg_controllen = std::mem::size_of_val(&cbuf);
        assert_eq!(libc::recvmsg(sock, &mut mh, 0), 1, "recvmsg SCM_RIGHTS");
        let c = libc::CMSG_FIRSTHDR(&mh);
        assert!(!c.is_null(), "no descriptor received");
        libc::CMSG_DATA(c).cast::<i32>().read_unaligned()
    }
}

/// SO_PEERCRED (pid, uid, gid) and SO_PEERGROUPS of a unix socket.
fn peer(fd: i32) -> (i32, u32, u32, Vec<u32>) {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as u32;
    let mut g = [0u32; 64];
    let mut glen = std::mem::size_of_val(&g) as u32;
    // SAFETY: live out-parameters of the sizes passed.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(c).cast(),
            &mut len,
        );
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            g.as_mut_ptr().cast(),
            &mut glen,
        );
    }
    (c.pid, c.uid, c.gid, g[..glen as usize / 4].to_vec())
}

/// A pair of type `ty` a child made as uid 1234, gid 5678, groups 77 and
/// 88, handed over through `via` before exiting: its ends and the child's
/// PID (free again).
fn pair_of_exited_child(via: [i32; 2], ty: i32) -> ([i32; 2], i32) {
    // SAFETY: fork in a single-threaded program.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: plain calls in the child, which ends with _exit.
        unsafe {
            let groups = [77u32, 88];
            if libc::setgroups(2, groups.as_ptr()) != 0
                || libc::setresgid(5678, 5678, 5678) != 0
                || libc::setresuid(1234, 1234, 1234) != 0
            {
                libc::_exit(1);
            }
            let p = pair(ty);
            send_fd(via[1], p[0]);
            send_fd(via[1], p[1]);
            libc::_exit(0);
        }
    }
    let handed = [recv_fd(via[0]), recv_fd(via[0])];
    // SAFETY: reaps our child.
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    (handed, child)
}

/// The descriptor `act` makes in a child as uid and gid `uid` (no
/// groups), handed over through `via` before it exits; and its PID.
fn fd_of_child(via: [i32; 2], uid: u32, act: &dyn Fn() -> i32) -> (i32, i32) {
    // SAFETY: fork in a single-threaded program; the child ends with _exit.
    unsafe {
        let c = libc::fork();
        if c == 0 {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(1);
            }
            send_fd(via[1], act());
            libc::_exit(0);
        }
        let fd = recv_fd(via[0]);
        libc::waitpid(c, std::ptr::null_mut(), 0);
        (fd, c)
    }
}

/// A child that connects to `name` as uid and gid 4444 with group 99
/// and holds its client (closing `close` first) until killed or we exit:
/// its connection waits in the listener's accept queue. Its PID.
fn waiting_client_of_child(name: &str, close: &[i32]) -> i32 {
    let mut conn = [0i32; 2];
    // SAFETY: valid out array.
    assert_eq!(unsafe { libc::pipe(conn.as_mut_ptr()) }, 0);
    // SAFETY: fork in a single-threaded program; the child ends with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: plain calls in the child.
        unsafe {
            for &fd in close {
                libc::close(fd);
            }
            let groups = [99u32];
            let ok = libc::setgroups(1, groups.as_ptr()) == 0
                && libc::setresgid(4444, 4444, 4444) == 0
                && libc::setresuid(4444, 4444, 4444) == 0;
            // It goes with us (set after the ids, which reset it).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let c = sock(libc::SOCK_STREAM);
            let ok = ok && connect(c, name.as_bytes()) == 0;
            libc::write(conn[1], if ok { b"c" } else { b"x" }.as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    let mut b = [0u8; 1];
    // SAFETY: waits for the child's byte (it has connected); the pipe goes.
    unsafe {
        libc::read(conn[0], b.as_mut_ptr().cast(), 1);
        libc::close(conn[0]);
        libc::close(conn[1]);
    }
    assert_eq!(b[0], b'c', "the child did not connect");
    child
}

/// `--peercred`: see the module comment.
fn peercred(proto: &Proto, corrupt: bool, corrupt_waiting: bool) -> ! {
    let mut report = Report::new();
    let own = pair(libc::SOCK_STREAM);
    // A child as another user makes a pair, hands both ends over, exits.
    let via = pair(libc::SOCK_DGRAM);
    let (handed, child) = pair_of_exited_child(via, libc::SOCK_DGRAM);
    // A child that stays (in the tree) makes a pair and shares one end.
    let mut hold = [0i32; 2];
    // SAFETY: valid out array.
    assert_eq!(unsafe { libc::pipe(hold.as_mut_ptr()) }, 0);
    // SAFETY: fork in a single-threaded program.
    let stays = unsafe { libc::fork() };
    if stays == 0 {
        let p = pair(libc::SOCK_SEQPACKET);
        send_fd(via[1], p[0]);
        let mut b = [0u8; 1];
        // SAFETY: blocks until the parent is done; then exits.
        unsafe {
            libc::read(hold[0], b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    let shared = recv_fd(via[0]);
    // A listener a child listened on as 2222:2222 (then exited), and a
    // connection to it from a child as 4321:4321 (exited too).
    // SAFETY: getpid cannot fail.
    let name = format!("\0tp_unix-peercred-{}", unsafe { libc::getpid() });
    let as_child = |uid: u32, act: &dyn Fn() -> i32| fd_of_child(via, uid, act).0;
    let listener = as_child(2222, &|| {
        let l = sock(libc::SOCK_STREAM);
        bind(l, name.as_bytes());
        listen(l, 4);
        l
    });
    let client = as_child(4321, &|| {
        let c = sock(libc::SOCK_STREAM);
        connect(c, name.as_bytes());
        c
    });
    // SAFETY: plain accept on our listener.
    let server = unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) };
    assert!(server >= 0, "accept: errno {}", errno());
    // A child that stays (in the tree) connects as 4444:4444 with group
    // 99 and holds its client: the connection waits in the accept queue.
    let waits = waiting_client_of_child(&name, &[]);
    let ends = [
        ("own pair, end 0", own[0]),
        ("own pair, end 1", own[1]),
        ("pair of an exited child as 1234:5678, end 0", handed[0]),
        ("pair of an exited child as 1234:5678, end 1", handed[1]),
        ("pair of a running child", shared),
        ("client of a listener that listened as 2222", client),
        ("accepted end of a client that connected as 4321", server),
    ];
    let mut before: Vec<_> = ends.iter().map(|&(_, fd)| peer(fd)).collect();
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let want_pids = [me, me, child, child, stays];
    for (i, b) in before.iter().enumerate().take(want_pids.len()) {
        report.eq(&format!("{}: pid before", ends[i].0), want_pids[i], b.0);
    }
    report.eq("ids before", (2222, 4321), (before[5].1, before[6].1));
    report.eq(
        "ids of the exited child's pair",
        (1234, 5678, vec![77, 88]),
        {
            let b = &before[2];
            (b.1, b.2, b.3.clone())
        },
    );
    proto.ready_and_wait();
    if corrupt {
        before[2].0 += 1;
    }
    for (i, &(what, fd)) in ends.iter().enumerate() {
        report.eq(what, &before[i], &peer(fd));
    }
    // A new client of the listener sees who listened.
    let again = sock(libc::SOCK_STREAM);
    report.eq(
        "connect to the listener",
        0,
        connect(again, name.as_bytes()),
    );
    report.eq("a new client of the listener", &before[5], &peer(again));
    // The connection that waited in the accept queue reports the child
    // that connected.
    // SAFETY: plain accept on our listener (the waiting connection first).
    let waited = unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) };
    report.eq(
        "accepted end of a connection that waited (made as 4444 by a running child)",
        (waits + i32::from(corrupt_waiting), 4444, 4444, vec![99]),
        peer(waited),
    );
    // SAFETY: ends the running children, then reaps them.
    unsafe {
        for c in [stays, waits] {
            libc::kill(c, libc::SIGKILL);
            libc::waitpid(c, std::ptr::null_mut(), 0);
        }
    }
    proto.finish(&report);
}

/// `--peercred-listen`: see the module comment.
fn peercred_listen(proto: &Proto, corrupt: bool, in_flight: bool) -> ! {
    let mut report = Report::new();
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let via = pair(libc::SOCK_DGRAM);
    // `--in-flight`: a pipe's read end waits in a pair of ours (SCM_RIGHTS).
    let carrier = in_flight.then(|| {
        let c = pair(libc::SOCK_SEQPACKET);
        let mut p = [0i32; 2];
        // SAFETY: pipe into a local array.
        report.eq("pipe", 0, unsafe { libc::pipe(p.as_mut_ptr()) });
        // Sent and kept (in flight, a descriptor must be held too).
        send_fd(c[1], p[0]);
        (c, p[1], [peer(c[0]), peer(c[1])])
    });
    // Unique across tests (as PID 1 of a namespace every copy is PID 1).
    let name = format!("\0tp_unix-pcl-{}", proto.path("l").display());
    let own_name = format!("\0tp_unix-pcl-own-{}", proto.path("l").display());
    // A listener a child listened on as 2222 (then exited), and a
    // connection to it a child made as 4321 (exited too), accepted.
    let (listener, maker) = fd_of_child(via, 2222, &|| {
        let l = sock(libc::SOCK_STREAM);
        bind(l, name.as_bytes());
        listen(l, 4);
        l
    });
    let (client, connector) = fd_of_child(via, 4321, &|| {
        let c = sock(libc::SOCK_STREAM);
        connect(c, name.as_bytes());
        c
    });
    // SAFETY: plain accept on our listener.
    let server = unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) };
    send(client, b"hello");
    let conn_before = (peer(client), peer(server));
    report.eq(
        "the accepted connection's PIDs before (listener, connector)",
        (maker, connector),
        (conn_before.0 .0, conn_before.1 .0),
    );
    // Idle pairs: one of ours (an end nonblocking), one a child made as
    // 1234:5678 with groups 77 and 88 and handed over before exiting.
    let own_pair = pair(libc::SOCK_STREAM);
    // SAFETY: fcntl on our descriptor.
    unsafe { libc::fcntl(own_pair[1], libc::F_SETFL, libc::O_NONBLOCK) };
    let (handed, pair_maker) = pair_of_exited_child(via, libc::SOCK_SEQPACKET);
    // What waits in them: a message each way in ours (and a receive
    // buffer set), two records and then EOF in the child's.
    send(own_pair[0], b"to-1");
    send(own_pair[1], b"to-0");
    set(own_pair[0], libc::SO_RCVBUF, 70_000);
    let rcvbuf = get(own_pair[0], libc::SO_RCVBUF);
    send(handed[0], b"m1");
    send(handed[0], b"m2");
    // SAFETY: shutdown of our descriptor.
    unsafe { libc::shutdown(handed[0], libc::SHUT_WR) };
    let pairs = [own_pair[0], own_pair[1], handed[0], handed[1]];
    let pairs_before: Vec<_> = pairs.iter().map(|&fd| peer(fd)).collect();
    report.eq(
        "the pairs' PIDs before",
        vec![me, me, pair_maker, pair_maker],
        pairs_before.iter().map(|p| p.0).collect::<Vec<_>>(),
    );
    // A listener of our own, and a connection of ours waiting in it.
    let own = sock(libc::SOCK_STREAM);
    bind(own, own_name.as_bytes());
    listen(own, 4);
    let mine = sock(libc::SOCK_STREAM);
    report.eq(
        "connect to our own listener",
        0,
        connect(mine, own_name.as_bytes()),
    );
    // A child that stays connects to the child's listener as 4444 (group
    // 99) and holds its client (only): that connection waits.
    let waits = waiting_client_of_child(&name, &[mine, own, listener]);
    let listeners_before = (peer(listener), peer(own));
    report.eq(
        "the child's listener's pid before",
        maker,
        listeners_before.0 .0,
    );
    report.eq("our listener's pid before", me, listeners_before.1 .0);
    // What a connection of ours reports: our PID and ids.
    let ours = {
        let p = pair(libc::SOCK_STREAM);
        peer(p[0])
    };
    proto.ready_and_wait();
    report.eq(
        "the accepted connection's SO_PEERCRED (client, server)",
        conn_before,
        (peer(client), peer(server)),
    );
    report.eq(
        "what waited in the server",
        b"hello".to_vec(),
        recv_wait(server),
    );
    report.eq("a byte through it", 1, send(client, b"a"));
    report.eq("read by the server", b"a".to_vec(), recv_wait(server));
    report.eq(
        "the pairs' SO_PEERCRED and SO_PEERGROUPS",
        pairs_before,
        pairs.iter().map(|&fd| peer(fd)).collect::<Vec<_>>(),
    );
    // SAFETY: fcntl on our descriptors.
    let nonblock = unsafe {
        (
            libc::fcntl(own_pair[0], libc::F_GETFL) & libc::O_NONBLOCK,
            libc::fcntl(own_pair[1], libc::F_GETFL) & libc::O_NONBLOCK,
        )
    };
    report.eq("the pair's O_NONBLOCK", (0, libc::O_NONBLOCK), nonblock);
    report.eq(
        "what waited in our pair's end 1",
        b"to-1".to_vec(),
        recv_wait(own_pair[1]),
    );
    report.eq(
        "what waited in our pair's end 0",
        b"to-0".to_vec(),
        recv_wait(own_pair[0]),
    );
    report.eq("SO_RCVBUF", rcvbuf, get(own_pair[0], libc::SO_RCVBUF));
    let records: Vec<_> = (0..3)
        .map(|_| recv(handed[1], libc::MSG_DONTWAIT))
        .collect();
    report.eq(
        "the child's pair: two records, then EOF",
        vec![(2, b"m1".to_vec()), (2, b"m2".to_vec()), (0, Vec::new())],
        records,
    );
    report.eq("a byte through the own pair", 1, send(own_pair[0], b"p"));
    report.eq("read back", b"p".to_vec(), recv_wait(own_pair[1]));
    report.eq(
        "the listeners' SO_PEERCRED",
        listeners_before.clone(),
        (peer(listener), peer(own)),
    );
    let accept = |l: i32| {
        // SAFETY: plain accept on our listener.
        unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) }
    };
    let want = (waits + i32::from(corrupt), 4444, 4444, vec![99]);
    report.eq(
        "accepted end of a connection that waited (a running child as 4444)",
        want,
        peer(accept(listener)),
    );
    report.eq(
        "accepted end of our own connection that waited",
        ours,
        peer(accept(own)),
    );
    let again = sock(libc::SOCK_STREAM);
    report.eq("connect again", 0, connect(again, name.as_bytes()));
    report.eq(
        "a new client of the child's listener",
        listeners_before.0,
        peer(again),
    );
    if let Some((c, w, before)) = carrier {
        report.eq(
            "SO_PEERCRED of the pair a descriptor is in flight in",
            before,
            [peer(c[0]), peer(c[1])],
        );
        let r = recv_fd(c[0]);
        report.eq("a byte into the pipe", 1, send_pipe(w, b"f"));
        let mut b = [0u8; 1];
        // SAFETY: one byte into a local buffer.
        let n = unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) };
        report.eq(
            "read through the end that was in flight",
            (1, *b"f"),
            (n, b),
        );
    }
    // SAFETY: ends the running child, then reaps it.
    unsafe {
        libc::kill(waits, libc::SIGKILL);
        libc::waitpid(waits, std::ptr::null_mut(), 0);
    }
    proto.finish(&report);
}

/// `--lone-accepted`: see the module comment.
fn lone_accepted(proto: &Proto, corrupt: bool, (path, keep): (bool, bool)) -> ! {
    let mut report = Report::new();
    // `--keep-listener`: also a listener of ours on WORKDIR/kept.sock,
    // with a connection of ours waiting, and a datagram socket on
    // WORKDIR/dgram.sock with a datagram waiting.
    let kept_name = proto.path("kept.sock").display().to_string();
    let dgram_name = proto.path("dgram.sock").display().to_string();
    let kept = keep.then(|| {
        let l = sock(libc::SOCK_STREAM);
        bind(l, kept_name.as_bytes());
        listen(l, 2);
        let waiting = sock(libc::SOCK_STREAM);
        report.eq(
            "connect to the kept listener",
            0,
            connect(waiting, kept_name.as_bytes()),
        );
        let d = sock(libc::SOCK_DGRAM);
        bind(d, dgram_name.as_bytes());
        let from = sock(libc::SOCK_DGRAM);
        report.eq(
            "a datagram to the path",
            2,
            sendto(from, dgram_name.as_bytes(), b"d1"),
        );
        // SAFETY: our descriptor.
        unsafe { libc::close(from) };
        (l, waiting, d, peer(waiting))
    });
    let via = pair(libc::SOCK_DGRAM);
    // Unique abstract names: copies in rootfs all see WORKDIR as "/".
    let mut r = [0u8; 8];
    // SAFETY: fills a local buffer.
    unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    let tag = format!("{}-{:x}", proto.path("l").display(), u64::from_le_bytes(r));
    // 1. A listener a child listened on as 2323 and that is gone: a
    // connection to it a child made as 4343 (exited), accepted.
    let name1 = if path {
        let dir = proto.path("socks");
        std::fs::create_dir_all(&dir).expect("mkdir socks");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod socks");
        dir.join("gone.sock").display().to_string()
    } else {
        format!("\0tp_unix-gone-{tag}")
    };
    let (l1, _) = fd_of_child(via, 2323, &|| {
        let l = sock(libc::SOCK_STREAM);
        bind(l, name1.as_bytes());
        if path {
            let _ = std::fs::set_permissions(
                &name1,
                std::os::unix::fs::PermissionsExt::from_mode(0o777),
            );
        }
        listen(l, 4);
        l
    });
    let (c1, _) = fd_of_child(via, 4343, &|| {
        let c = sock(libc::SOCK_STREAM);
        connect(c, name1.as_bytes());
        c
    });
    let accept = |l: i32| {
        // SAFETY: plain accept on our listener.
        unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) }
    };
    let s1 = accept(l1);
    // SAFETY: our descriptor.
    unsafe { libc::close(l1) };
    // 2. A listener of ours on a number above the connection it accepted
    // (a child made as 4545, exited), which restores open first.
    let name2 = format!("\0tp_unix-after-{tag}");
    let l2 = sock(libc::SOCK_STREAM);
    bind(l2, name2.as_bytes());
    listen(l2, 4);
    let (c2, _) = fd_of_child(via, 4545, &|| {
        let c = sock(libc::SOCK_STREAM);
        connect(c, name2.as_bytes());
        c
    });
    let s2 = accept(l2);
    // SAFETY: our descriptors: the listener moved to 200.
    let l2 = unsafe {
        let n = libc::dup2(l2, 200);
        libc::close(l2);
        n
    };
    report.check(l2 == 200 && s2 < l2, || {
        format!("listener at {l2}, connection at {s2}")
    });
    send(c1, b"one");
    let before = [peer(s1), peer(c1), peer(s2), peer(c2)];
    report.check(before.iter().all(|p| p.0 > 0), || {
        format!("PIDs before: {before:?}")
    });
    proto.ready_and_wait();
    let mut want = before.clone();
    if corrupt {
        want[0].0 += 1;
    }
    report.eq(
        "SO_PEERCRED of the accepted connections (server, client; twice)",
        want,
        [peer(s1), peer(c1), peer(s2), peer(c2)],
    );
    report.eq("what waited", b"one".to_vec(), recv_wait(s1));
    report.eq("a byte back", 1, send(s2, b"2"));
    report.eq("read by the client", b"2".to_vec(), recv_wait(c2));
    let again = sock(libc::SOCK_STREAM);
    report.eq(
        "connect to the moved listener",
        0,
        connect(again, name2.as_bytes()),
    );
    report.eq(
        "a new client of it: the listener's SO_PEERCRED",
        before[3].clone(),
        peer(again),
    );
    if let Some((l, waiting, d, waiting_peer)) = kept {
        report.eq(
            "the kept listener's name",
            path_name(&kept_name),
            local_name(l),
        );
        let a = accept(l);
        report.eq(
            "its waiting connection's SO_PEERCRED",
            waiting_peer,
            peer(waiting),
        );
        report.eq(
            "the accepted end's SO_PEERCRED PID (ours)",
            // SAFETY: getpid cannot fail.
            unsafe { libc::getpid() },
            peer(a).0,
        );
        report.eq("a byte through it", 1, send(waiting, b"w"));
        report.eq("read by the accepted end", b"w".to_vec(), recv_wait(a));
        let c = sock(libc::SOCK_STREAM);
        report.eq(
            "a new client of the kept listener",
            0,
            connect(c, kept_name.as_bytes()),
        );
        report.eq(
            "the datagram socket's name",
            path_name(&dgram_name),
            local_name(d),
        );
        report.eq("the datagram that waited", b"d1".to_vec(), recv_wait(d));
        let from = sock(libc::SOCK_DGRAM);
        report.eq(
            "a datagram to the path after",
            2,
            sendto(from, dgram_name.as_bytes(), b"d2"),
        );
        report.eq("read", b"d2".to_vec(), recv_wait(d));
    }
    proto.finish(&report);
}

fn send_pipe(fd: i32, b: &[u8]) -> isize {
    // SAFETY: a live buffer.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) }
}

fn sock(ty: i32) -> i32 {
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty, 0) };
    assert!(fd >= 0, "socket: errno {}", errno());
    fd
}

fn addr(name: &[u8]) -> (libc::sockaddr_un, u32) {
    // SAFETY: zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as u16;
    for (d, &c) in sa.sun_path.iter_mut().zip(name) {
        *d = c as libc::c_char;
    }
    // Paths with their NUL; abstract names exactly.
    let extra = usize::from(name.first() != Some(&0));
    (sa, (2 + name.len() + extra) as u32)
}

fn bind(fd: i32, name: &[u8]) {
    let (sa, len) = addr(name);
    // SAFETY: sa holds a valid address.
    let r = unsafe { libc::bind(fd, std::ptr::addr_of!(sa).cast(), len) };
    assert_eq!(r, 0, "bind: errno {}", errno());
}

fn connect(fd: i32, name: &[u8]) -> i32 {
    let (sa, len) = addr(name);
    // SAFETY: sa holds a valid address.
    unsafe { libc::connect(fd, std::ptr::addr_of!(sa).cast(), len) }
}

fn listen(fd: i32, n: i32) {
    // SAFETY: plain call.
    let r = unsafe { libc::listen(fd, n) };
    assert_eq!(r, 0, "listen: errno {}", errno());
}

/// A path as getsockname gives it back: with its NUL.
fn path_name(p: &str) -> Vec<u8> {
    let mut v = p.as_bytes().to_vec();
    v.push(0);
    v
}

fn local_name(fd: i32) -> Vec<u8> {
    sock_name(fd, false)
}

fn sock_name(fd: i32, peer: bool) -> Vec<u8> {
    // SAFETY: zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as u32;
    let p = std::ptr::addr_of_mut!(sa).cast();
    // SAFETY: live out-parameters.
    unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    sa.sun_path[..(len as usize).saturating_sub(2)]
        .iter()
        .map(|&c| c as u8)
        .collect()
}

/// Send-Q of a unix listener as `ss` shows it: its backlog.
fn backlog(name: &str) -> Option<u32> {
    let out = std::process::Command::new("ss")
        .args(["-Hxl", "src", name])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn sendto(fd: i32, name: &[u8], b: &[u8]) -> isize {
    let (sa, len) = addr(name);
    // SAFETY: live buffers.
    unsafe {
        libc::sendto(
            fd,
            b.as_ptr().cast(),
            b.len(),
            0,
            std::ptr::addr_of!(sa).cast(),
            len,
        )
    }
}

/// A client talks to a listener: connect, send, accept, receive.
fn talk(report: &mut Report, what: &str, listener: i32, name: &[u8], ty: i32) {
    let c = sock(ty);
    report.eq(&format!("{what}: connect"), 0, connect(c, name));
    send(c, b"hi");
    // SAFETY: no address wanted; the listener is blocking and has a client.
    let a = unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) };
    report.check(a >= 0, || format!("{what}: accept: errno {}", errno()));
    report.eq(&format!("{what}: bytes"), b"hi".to_vec(), recv(a, 0).1);
    // SAFETY: our own descriptors.
    unsafe {
        libc::close(a);
        libc::close(c);
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    if args.flag("own-stdio") {
        proto.stdio_in_workdir("tp_unix");
    }
    if args.flag("peercred-listen") {
        peercred_listen(&proto, args.corrupt(), args.flag("in-flight"));
    }
    if args.flag("peercred") {
        peercred(&proto, args.corrupt(), args.flag("corrupt-waiting"));
    }
    if args.flag("lone-accepted") {
        lone_accepted(
            &proto,
            args.corrupt(),
            (args.flag("path"), args.flag("keep-listener")),
        );
    }
    if args.flag("pair-in-flight") {
        // A stream pair one end of which is in flight (and kept).
        let a = pair(libc::SOCK_STREAM);
        let carrier = pair(libc::SOCK_SEQPACKET);
        send_fd(carrier[1], a[1]);
        let mut before = [peer(a[0]), peer(a[1])];
        if args.corrupt() {
            // The negative control expects another PID on the end kept.
            before[0].0 += 1;
        }
        proto.ready_and_wait();
        report.eq(
            "SO_PEERCRED of the pair in flight",
            before,
            [peer(a[0]), peer(a[1])],
        );
        let got = recv_fd(carrier[0]);
        report.eq("a byte into the pair", 1, send(a[0], b"q"));
        report.eq(
            "read through the end that was in flight",
            b"q".to_vec(),
            recv_wait(got),
        );
        proto.finish(&report);
    }
    if args.flag("rights") {
        let p = pair(libc::SOCK_STREAM);
        send_fd(p[1], 0);
        proto.ready_and_wait();
        report.eq("descriptor still in flight", 1, recv(p[0], 0).0);
        proto.finish(&report);
    }
    if args.flag("unlinked") {
        let path = proto.path("unlinked.sock");
        let l = sock(libc::SOCK_STREAM);
        bind(l, path.to_string_lossy().as_bytes());
        listen(l, 4);
        let _ = std::fs::remove_file(&path);
        proto.ready_and_wait();
        proto.finish(&report);
    }
    if args.flag("pending") {
        // Two clients wait in the accept queue, the first created before
        // the listener (a lower descriptor), the second after it.
        let name = proto.path("pending.sock").to_string_lossy().into_owned();
        let c1 = sock(libc::SOCK_STREAM);
        let l = sock(libc::SOCK_STREAM);
        bind(l, name.as_bytes());
        listen(l, 4);
        let c2 = sock(libc::SOCK_STREAM);
        connect(c1, name.as_bytes());
        connect(c2, name.as_bytes());
        if args.flag("pending-data") {
            send(c1, b"early");
        }
        if args.flag("pending-shared") {
            // A child holds the waiting clients too (until we exit).
            let mut p = [0i32; 2];
            // SAFETY: valid out array; fork in a single-threaded program,
            // the child blocks until the pipe closes, then _exits.
            unsafe {
                assert_eq!(libc::pipe(p.as_mut_ptr()), 0);
                if libc::fork() == 0 {
                    libc::close(p[1]);
                    let mut b = [0u8; 1];
                    libc::read(p[0], b.as_mut_ptr().cast(), 1);
                    libc::_exit(0);
                }
                libc::close(p[0]);
            }
        }
        proto.ready_and_wait();
        let mut path_name = name.into_bytes();
        path_name.push(0);
        report.eq("client 1's peer", path_name.clone(), sock_name(c1, true));
        report.eq("client 2's peer", path_name, sock_name(c2, true));
        let order: [(i32, &[u8]); 2] = if args.corrupt() {
            [(c2, b"first"), (c1, b"second")]
        } else {
            [(c1, b"first"), (c2, b"second")]
        };
        for (c, msg) in order {
            // SAFETY: a client is waiting.
            let a = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
            report.check(a >= 0, || format!("accept: errno {}", errno()));
            send(a, msg);
            report.eq(
                "accepted in the order of connection",
                msg.to_vec(),
                recv_wait(c),
            );
        }
        proto.finish(&report);
    }
    let srv_path = proto.path("srv.sock").to_string_lossy().into_owned();
    let dg_path = proto.path("dg.sock").to_string_lossy().into_owned();
    let abs = format!("\0stasis-tp-unix-{}", std::process::id()).into_bytes();
    let srv = sock(libc::SOCK_STREAM);
    bind(srv, srv_path.as_bytes());
    listen(srv, 5);
    std::fs::set_permissions(
        &srv_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .expect("chmod srv.sock");
    let seq = sock(libc::SOCK_SEQPACKET);
    bind(seq, &abs);
    listen(seq, 3);
    let dg = sock(libc::SOCK_DGRAM);
    set(dg, libc::SO_RCVBUF, 70_000);
    bind(dg, dg_path.as_bytes());
    let sender = sock(libc::SOCK_DGRAM);
    sendto(sender, dg_path.as_bytes(), b"q-one");
    sendto(sender, dg_path.as_bytes(), b"q-two");
    let unbound = sock(libc::SOCK_STREAM);
    // A datagram socket connected to the bound one (as a syslog client).
    let dc = sock(libc::SOCK_DGRAM);
    report.eq("datagram connect", 0, connect(dc, dg_path.as_bytes()));
    // An accepted connection of the path listener, data waiting both ways,
    // and one of an abstract listener that was closed since.
    let cli = sock(libc::SOCK_STREAM);
    connect(cli, srv_path.as_bytes());
    // SAFETY: a client is waiting.
    let acc = unsafe { libc::accept(srv, std::ptr::null_mut(), std::ptr::null_mut()) };
    send(cli, b"to-server");
    send(acc, b"to-client");
    let gone = format!("\0stasis-tp-unix-gone-{}", std::process::id()).into_bytes();
    let gl = sock(libc::SOCK_SEQPACKET);
    bind(gl, &gone);
    listen(gl, 1);
    let gcli = sock(libc::SOCK_SEQPACKET);
    connect(gcli, &gone);
    // SAFETY: a client is waiting; then the listener goes.
    let gacc = unsafe {
        let a = libc::accept(gl, std::ptr::null_mut(), std::ptr::null_mut());
        libc::close(gl);
        a
    };
    let conns = [cli, acc, gcli, gacc];
    let conn_names = |_: ()| -> Vec<(Vec<u8>, Vec<u8>)> {
        conns
            .iter()
            .map(|&fd| (sock_name(fd, false), sock_name(fd, true)))
            .collect()
    };
    let conn_names_before = conn_names(());
    let named = [srv, seq, dg, unbound];
    let names_before: Vec<Vec<u8>> = named.iter().map(|&fd| local_name(fd)).collect();
    let named_opts: Vec<[i32; 4]> = named.iter().map(|&fd| opts(fd)).collect();
    let mode = |p: &str| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .ok()
    };
    let modes_before = (mode(&srv_path), mode(&dg_path));
    let abs_ss = format!("@{}", String::from_utf8_lossy(&abs[1..]));
    let backlogs_before = (backlog(&srv_path), backlog(&abs_ss));

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
    report.eq(
        "names",
        names_before,
        named.iter().map(|&fd| local_name(fd)).collect::<Vec<_>>(),
    );
    report.eq(
        "named sockets' options",
        named_opts,
        named.iter().map(|&fd| opts(fd)).collect::<Vec<_>>(),
    );
    report.eq(
        "socket files' modes",
        modes_before,
        (mode(&srv_path), mode(&dg_path)),
    );
    let mut bl = (backlog(&srv_path), backlog(&abs_ss));
    if args.corrupt() {
        bl.0 = bl.0.map(|n| n + 1);
    }
    report.eq(
        "backlogs (path, abstract)",
        (Some(5), Some(3)),
        backlogs_before,
    );
    report.eq("backlogs (path, abstract)", backlogs_before, bl);
    report.eq("mode set before the dump", Some(0o640), modes_before.0);
    report.eq(
        "accepted connections' names (local, peer)",
        conn_names_before,
        conn_names(()),
    );
    report.eq(
        "accepted: data from the client",
        b"to-server".to_vec(),
        recv(acc, 0).1,
    );
    report.eq(
        "client: data from the server",
        b"to-client".to_vec(),
        recv(cli, 0).1,
    );
    report.eq("gone listener's connection", 4, send(gcli, b"ping"));
    report.eq(
        "gone listener's connection: message",
        b"ping".to_vec(),
        recv(gacc, 0).1,
    );
    talk(
        &mut report,
        "path listener",
        srv,
        srv_path.as_bytes(),
        libc::SOCK_STREAM,
    );
    talk(
        &mut report,
        "abstract listener",
        seq,
        &abs,
        libc::SOCK_SEQPACKET,
    );
    report.eq("queued datagram 1", b"q-one".to_vec(), recv(dg, 0).1);
    report.eq("queued datagram 2", b"q-two".to_vec(), recv(dg, 0).1);
    report.eq(
        "new datagram sent",
        3,
        sendto(sender, dg_path.as_bytes(), b"new"),
    );
    report.eq("new datagram", b"new".to_vec(), recv(dg, 0).1);
    let mut dg_name = dg_path.clone().into_bytes();
    dg_name.push(0);
    report.eq(
        "connected datagram socket's peer",
        dg_name,
        sock_name(dc, true),
    );
    report.eq(
        "send on the connected datagram socket",
        4,
        send(dc, b"conn"),
    );
    report.eq("its datagram", b"conn".to_vec(), recv(dg, 0).1);
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
