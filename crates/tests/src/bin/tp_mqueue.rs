//! POSIX message queue test program.
//!
//! Usage: `tp_mqueue WORKDIR --mode ns|host|notify|unlinked [--corrupt]`
//!
//! - `ns`: unshares its IPC namespace, changes the mqueue sysctls
//!   (fs/mqueue/*) and makes three queues: one with a raised msgsize
//!   (above the default's ceiling), mode 0640 and owner 2345:6789 holding
//!   six messages of four priorities, one of them empty and one of the
//!   full message size, sent out of priority order; an empty one with the
//!   namespace's default attributes; a full one. It keeps a descriptor of
//!   the first open read-write with O_NONBLOCK and one of the full queue
//!   write-only (blocking), both inherited by a child. After go it checks
//!   that the child's are still the same open file descriptions (kcmp), every sysctl, each queue's
//!   owner, group, mode, mq_maxmsg, mq_msgsize and message count, that
//!   the kept descriptors have their flags and are the very queues (a
//!   message sent through one is received through the name first), then
//!   receives every message and checks its priority, bytes and order, and
//!   that nothing else is queued.
//! - `host`: a queue of stasis's IPC namespace kept open (refused).
//! - `notify`: its own IPC namespace, a queue with an mq_notify
//!   registration (SIGEV_SIGNAL; refused).
//! - `unlinked`: its own IPC namespace, a queue removed with mq_unlink
//!   while open (refused).
//! - `other-ns`: a queue of stasis's namespace kept open, then its own
//!   IPC namespace with a queue of the same name (refused: the descriptor
//!   is not of the tree's namespace).
//! - `blocked-send`: its own IPC namespace, a full queue and a child
//!   blocked sending to it (refused: receiving would let its message in).
//!
//! `--corrupt` (with `ns`): one message is received after go, before the
//! checks (the negative control).

use stasis_tests::{Proto, Report};

const A: &std::ffi::CStr = c"/stasis-mq-a";
const E: &std::ffi::CStr = c"/stasis-mq-empty";
const F: &std::ffi::CStr = c"/stasis-mq-full";
const SYSCTLS: [(&str, &str); 5] = [
    ("fs/mqueue/msg_max", "64"),
    ("fs/mqueue/msgsize_max", "16384"),
    ("fs/mqueue/queues_max", "300"),
    ("fs/mqueue/msg_default", "7"),
    ("fs/mqueue/msgsize_default", "200"),
];
const BIG: usize = 12000;

fn ok(r: i32, what: &str) -> i32 {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

fn big() -> Vec<u8> {
    (0..BIG).map(|i| (i * 7 % 251) as u8).collect()
}

/// The messages of queue A in send order: (priority, text).
fn sent_a() -> Vec<(u32, Vec<u8>)> {
    vec![
        (5, b"a1".to_vec()),
        (1, b"b1".to_vec()),
        (5, b"a2".to_vec()),
        (9, big()),
        (0, Vec::new()),
        (1, b"b2".to_vec()),
    ]
}

/// A queue's name, (owner, group, mode), (maxmsg, msgsize) and messages.
type Expected = (
    &'static std::ffi::CStr,
    (u32, u32, u32),
    (i64, i64),
    Vec<(u32, Vec<u8>)>,
);

/// The same in queue order: by priority, highest first, FIFO within one.
fn queued(mut v: Vec<(u32, Vec<u8>)>) -> Vec<(u32, Vec<u8>)> {
    v.sort_by_key(|m| std::cmp::Reverse(m.0));
    v
}

fn open(name: &std::ffi::CStr, flags: i32, mode: u32, attr: Option<(i64, i64)>) -> i32 {
    // SAFETY: an all-zero mq_attr, then the two fields mq_open reads.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    if let Some((m, s)) = attr {
        a.mq_maxmsg = m;
        a.mq_msgsize = s;
    }
    let p = if attr.is_some() {
        &mut a as *mut libc::mq_attr
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: a NUL-terminated name and a live (or null) attribute buffer.
    ok(
        unsafe { libc::mq_open(name.as_ptr(), flags, mode, p) },
        "mq_open",
    )
}

fn send(q: i32, prio: u32, text: &[u8]) {
    // SAFETY: sends from a live slice.
    ok(
        unsafe { libc::mq_send(q, text.as_ptr().cast(), text.len(), prio) },
        "mq_send",
    );
}

fn attr(q: i32) -> libc::mq_attr {
    // SAFETY: an all-zero mq_attr is a valid out buffer.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: a live out buffer.
    ok(unsafe { libc::mq_getattr(q, &mut a) }, "mq_getattr");
    a
}

/// Every message left in the queue (opened non-blocking).
fn drain(q: i32, size: usize) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; size];
    loop {
        let mut prio = 0u32;
        // SAFETY: receives into a live buffer of the queue's message size.
        let n = unsafe { libc::mq_receive(q, buf.as_mut_ptr().cast(), buf.len(), &mut prio) };
        if n < 0 {
            break;
        }
        out.push((prio, buf[..n as usize].to_vec()));
    }
    out
}

fn unshare_ipc() {
    // SAFETY: integer-only syscall on ourselves.
    ok(
        unsafe { libc::unshare(libc::CLONE_NEWIPC) },
        "unshare(CLONE_NEWIPC)",
    );
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    match args.get("mode").unwrap_or("ns") {
        "ns" => ns(&proto, &mut report, args.corrupt()),
        "host" => host(&proto, &mut report),
        "notify" => notify(&proto, &mut report),
        "unlinked" => unlinked(&proto, &mut report),
        "blocked-send" => blocked_send(&proto, &mut report),
        "other-ns" => other_ns(&proto, &mut report),
        m => report.fail(format!("unknown mode {m}")),
    }
    proto.finish(&report);
}

fn ns(proto: &Proto, report: &mut Report, corrupt: bool) {
    unshare_ipc();
    for (k, v) in SYSCTLS {
        std::fs::write(format!("/proc/sys/{k}"), v).expect("write an mqueue sysctl");
    }
    let rw = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
    let a = open(A, rw | libc::O_NONBLOCK, 0o640, Some((12, BIG as i64)));
    // SAFETY: integer-only calls on our descriptor.
    ok(unsafe { libc::fchown(a, 2345, 6789) }, "fchown");
    for (p, t) in sent_a() {
        send(a, p, &t);
    }
    let e = open(E, rw, 0o600, None);
    // SAFETY: closes our descriptor.
    unsafe { libc::close(e) };
    let f = open(F, rw, 0o604, Some((2, 8)));
    send(f, 3, b"x");
    send(f, 3, b"yy");
    // SAFETY: as above.
    unsafe { libc::close(f) };
    let f = open(F, libc::O_WRONLY, 0, None);
    // A child inherits both descriptors (the same open file descriptions).
    // It stays until the parent closes the pipe, after its checks.
    let mut pipe = [0i32; 2];
    // SAFETY: a live two-int buffer.
    ok(unsafe { libc::pipe(pipe.as_mut_ptr()) }, "pipe");
    // SAFETY: the child only reads the pipe and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let mut b = [0u8; 1];
        // SAFETY: closes our write end, reads into a live byte.
        unsafe {
            libc::close(pipe[1]);
            libc::read(pipe[0], b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: closes our read end.
    unsafe { libc::close(pipe[0]) };
    proto.ready_and_wait();
    // SAFETY: kcmp compares two descriptors of ours and the child's.
    let same = |fd: i32| unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::getpid(),
            child,
            0, /* KCMP_FILE */
            fd,
            fd,
        )
    };
    report.eq("fd A shared with the child", 0, same(a));
    report.eq("fd F shared with the child", 0, same(f));
    // SAFETY: closes our write end: the child leaves.
    unsafe { libc::close(pipe[1]) };
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    report.check(libc::WIFEXITED(st), || format!("child: {st:#x}"));
    if corrupt {
        let r = open(A, libc::O_RDONLY | libc::O_NONBLOCK, 0, None);
        drain_one(r);
    }
    for (k, v) in SYSCTLS {
        let now = std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default();
        report.eq(k, v, now.trim());
    }
    // The kept descriptors: flags, attributes, the same queues.
    // SAFETY: integer-only fcntl calls.
    let (fa, ff) = unsafe { (libc::fcntl(a, libc::F_GETFL), libc::fcntl(f, libc::F_GETFL)) };
    report.eq("fd A access mode", libc::O_RDWR, fa & libc::O_ACCMODE);
    report.eq("fd A O_NONBLOCK", libc::O_NONBLOCK, fa & libc::O_NONBLOCK);
    report.eq("fd F access mode", libc::O_WRONLY, ff & libc::O_ACCMODE);
    report.eq("fd F O_NONBLOCK", 0, ff & libc::O_NONBLOCK);
    let at = attr(a);
    report.eq("fd A mq_flags", libc::O_NONBLOCK as i64, at.mq_flags);
    report.eq("fd F mq_flags", 0, attr(f).mq_flags);
    let expect: [Expected; 3] = [
        (A, (2345, 6789, 0o640), (12, BIG as i64), queued(sent_a())),
        (E, (0, 0, 0o600), (7, 200), Vec::new()),
        (
            F,
            (0, 0, 0o604),
            (2, 8),
            vec![(3, b"x".to_vec()), (3, b"yy".to_vec())],
        ),
    ];
    for (name, owner, (maxmsg, msgsize), msgs) in expect {
        let n = name.to_string_lossy();
        let q = open(name, libc::O_RDONLY | libc::O_NONBLOCK, 0, None);
        // SAFETY: an all-zero stat is a valid out buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat into a live buffer.
        ok(unsafe { libc::fstat(q, &mut st) }, "fstat");
        report.eq(
            &format!("{n} owner, group, mode"),
            owner,
            (st.st_uid, st.st_gid, st.st_mode & 0o7777),
        );
        let at = attr(q);
        report.eq(
            &format!("{n} maxmsg, msgsize"),
            (maxmsg, msgsize),
            (at.mq_maxmsg, at.mq_msgsize),
        );
        report.eq(
            &format!("{n} messages queued"),
            msgs.len() as i64,
            at.mq_curmsgs,
        );
        if name == A {
            // A message through the kept descriptor comes first by name.
            send(a, 31, b"probe");
            let got = drain(q, BIG);
            let mut want = vec![(31, b"probe".to_vec())];
            want.extend(msgs);
            report.eq(&format!("{n} messages, in order"), want, got);
        } else if name == F {
            let got = drain(q, 8);
            report.eq(&format!("{n} messages, in order"), msgs, got);
            // Room again: a message through the kept write-only descriptor.
            send(f, 2, b"w");
            report.eq(
                &format!("{n} through fd F"),
                vec![(2, b"w".to_vec())],
                drain(q, 8),
            );
        } else {
            report.eq(&format!("{n} messages"), msgs, drain(q, 200));
        }
    }
}

fn drain_one(q: i32) {
    let mut buf = vec![0u8; BIG];
    // SAFETY: receives into a live buffer.
    unsafe { libc::mq_receive(q, buf.as_mut_ptr().cast(), buf.len(), std::ptr::null_mut()) };
}

fn host(proto: &Proto, report: &mut Report) {
    let name = format!("/stasis-mq-host-{}", std::process::id());
    let c = std::ffi::CString::new(name).expect("name");
    let q = open(&c, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600, None);
    // SAFETY: removes the queue we made (the descriptor keeps it).
    unsafe { libc::mq_unlink(c.as_ptr()) };
    // The name again, so that the descriptor is of a named queue.
    let q2 = open(&c, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600, None);
    // SAFETY: closes our descriptor.
    unsafe { libc::close(q) };
    proto.ready_and_wait();
    report.eq("queue attributes", 0, attr(q2).mq_curmsgs);
    // SAFETY: removes the queue we made.
    unsafe { libc::mq_unlink(c.as_ptr()) };
}

fn notify(proto: &Proto, report: &mut Report) {
    unshare_ipc();
    let q = open(A, libc::O_RDWR | libc::O_CREAT, 0o600, None);
    // SAFETY: an all-zero sigevent, then SIGEV_SIGNAL with SIGUSR1.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_SIGNAL;
    ev.sigev_signo = libc::SIGUSR1;
    // SAFETY: ignore SIGUSR1 (the refused dump leaves us running).
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    // SAFETY: a live sigevent.
    ok(unsafe { libc::mq_notify(q, &ev) }, "mq_notify");
    proto.ready_and_wait();
    report.eq("queue attributes", 0, attr(q).mq_curmsgs);
}

fn unlinked(proto: &Proto, report: &mut Report) {
    unshare_ipc();
    let q = open(A, libc::O_RDWR | libc::O_CREAT, 0o600, None);
    // SAFETY: removes the name; the descriptor keeps the queue.
    unsafe { libc::mq_unlink(A.as_ptr()) };
    send(q, 1, b"kept");
    proto.ready_and_wait();
    report.eq("queue attributes", 1, attr(q).mq_curmsgs);
}

fn blocked_send(proto: &Proto, report: &mut Report) {
    unshare_ipc();
    let q = open(
        F,
        libc::O_RDWR | libc::O_CREAT | libc::O_NONBLOCK,
        0o600,
        Some((1, 8)),
    );
    send(q, 1, b"full");
    // SAFETY: the child only sends (blocking) and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let w = open(F, libc::O_WRONLY, 0, None);
        send(w, 2, b"late");
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
    // Until the child sleeps in mq_timedsend.
    let state = format!("/proc/{pid}/syscall");
    let nr = libc::SYS_mq_timedsend.to_string();
    while !std::fs::read_to_string(&state)
        .is_ok_and(|s| s.split_whitespace().next() == Some(nr.as_str()))
    {
        stasis_tests::nap(1_000_000);
    }
    proto.ready_and_wait();
    let got = drain(q, 8);
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    let got = [got, drain(q, 8)].concat();
    report.eq(
        "messages",
        vec![(1, b"full".to_vec()), (2, b"late".to_vec())],
        got,
    );
}

fn other_ns(proto: &Proto, report: &mut Report) {
    // The test removes it from stasis's namespace (its name is not
    // visible in ours once we unshared).
    let c = c"/stasis-mq-other";
    let outer = open(c, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600, None);
    unshare_ipc();
    let inner = open(c, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600, None);
    send(inner, 1, b"inner");
    proto.ready_and_wait();
    report.eq("outer queue empty", 0, attr(outer).mq_curmsgs);
    report.eq("inner queue", 1, attr(inner).mq_curmsgs);
}
