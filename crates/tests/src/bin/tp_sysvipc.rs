//! SysV IPC test program.
//!
//! Usage: `tp_sysvipc WORKDIR --mode own|host|child-ns|mqueue [--corrupt]`
//!
//! - `own`: unshares its IPC namespace, changes the IPC sysctls and
//!   creates shared memory segments (one attached read-write in itself
//!   and in a child, which attaches it a second time and splits that
//!   attachment with mprotect; one detached, locked, with holes; one
//!   attached read-only in both and marked for removal), semaphore sets
//!   and message queues (several types, an empty queue, a raised byte
//!   limit; the detached segment, the second set and the empty queue made
//!   as uid 2345, gid 6789), then forks the child. After go it checks
//!   every id, key, owner, creator (cuid, cgid), mode, size, attachment
//!   count, content, semaphore value and
//!   the PIDs the kernel recorded (segments' creator and last attacher,
//!   each semaphore's last PID, queues' last sender and receiver: from
//!   itself, the child and a process that has exited), each
//!   message (in order), the sysctls, each attachment's address and
//!   protection, and that the segment is shared with the child (a write
//!   in one is seen by the other).
//! - `host`: in stasis's IPC namespace, a private segment attached
//!   read-write (its id in WORKDIR/shmid); checks id, key, mode, size and
//!   contents, then removes it.
//! - `child-ns`: a child in an IPC namespace of its own (refused).
//! - `mqueue`: its own IPC namespace holding a POSIX message queue no
//!   descriptor has open, with one message (checked after go).
//! - `outsider`: its own IPC namespace, shared with a process outside the
//!   tree (a grandchild orphaned by a double fork; refused).
//! - `sem-undo`: its own IPC namespace, a semop with SEM_UNDO: the value
//!   is kept (the adjustment itself is lost: docs/state.md).
//!
//! - `lpid-outside`: its own IPC namespace holding a segment nobody
//!   attaches, last attached (shm_lpid) by a live process outside the
//!   tree (a grandchild orphaned by a double fork, which attached and
//!   detached it and went back to stasis's IPC namespace); after go
//!   shm_lpid must still be that process and nobody attach it (`dump -R`
//!   must refuse it: reading it would change shm_lpid). `--corrupt`
//!   attaches it after go.
//!
//! - `lpid-kept`: its own IPC namespace holding segments nobody attaches
//!   whose last attacher (shm_lpid) is a process that exited (reaped: its
//!   PID is free), itself, and a live child, and one segment it has
//!   attached. After go (a failed dump, `dump -R`, or a restore) it checks
//!   every segment's creator, last attacher, attachment count, size and
//!   contents, and that neither it nor the child has an attachment more
//!   or less; `--times` (no restore: the dump's attachments stamp a
//!   segment nobody attaches) also the attached segment's shm_atime,
//!   shm_dtime and shm_ctime. `--corrupt` attaches the first segment
//!   after go.
//!
//! `--corrupt-pids` (with `own`): the negative control of the PID check.

use stasis_tests::{Proto, Report};
use std::ffi::c_void;

const PAGE: usize = 4096;
const KEY_A: i32 = 0x51a0_0001;
const KEY_C: i32 = 0x51a0_0003;
const KEY_S: i32 = 0x51a0_0010;
const KEY_Q: i32 = 0x51a0_0020;
const SYSCTLS: [(&str, &str); 6] = [
    ("kernel/shmmax", "536870912"),
    ("kernel/shmmni", "2048"),
    ("kernel/msgmax", "9000"),
    ("kernel/msgmnb", "20000"),
    ("kernel/msgmni", "512"),
    ("kernel/sem", "200\t64000\t40\t100"),
];

fn ok(r: i32, what: &str) -> i32 {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

fn shm_ds(id: i32) -> libc::shmid_ds {
    // SAFETY: an all-zero shmid_ds is a valid out buffer.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a live buffer.
    ok(
        unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) },
        "IPC_STAT",
    );
    ds
}

fn attach(id: i32, flags: i32) -> *mut u8 {
    // SAFETY: the kernel picks a free address.
    let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    assert!(p as isize != -1, "shmat {id}");
    p.cast()
}

fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: p maps at least len bytes, writable.
        unsafe { *p.add(i) = seed.wrapping_add((i % 251) as u8) };
    }
}

fn hash(p: *const u8, len: usize) -> u64 {
    // SAFETY: p maps at least len readable bytes.
    stasis_tests::hash(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The maps line's permissions at `addr`, e.g. "rw-s".
fn perms_at(pid: &str, addr: usize) -> String {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .find(|l| {
            l.split('-')
                .next()
                .and_then(|a| usize::from_str_radix(a, 16).ok())
                == Some(addr)
        })
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .unwrap_or_else(|| "none".into())
}

fn sysctls() -> Vec<String> {
    SYSCTLS
        .iter()
        .map(|(n, _)| std::fs::read_to_string(format!("/proc/sys/{n}")).unwrap_or_default())
        .collect()
}

fn sem_state(id: i32, n: usize) -> (Vec<u16>, i32, u32, u32, u16) {
    let mut v = vec![0u16; n];
    // SAFETY: GETALL writes n values into v.
    ok(
        unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) },
        "GETALL",
    );
    // SAFETY: an all-zero semid_ds is a valid out buffer.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a live semid_ds.
    ok(
        unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) },
        "sem IPC_STAT",
    );
    let p = ds.sem_perm;
    (v, p.__key, p.uid, p.gid, p.mode)
}

fn msq_state(id: i32) -> (i32, u32, u32, u16, u64, u64) {
    // SAFETY: an all-zero msqid_ds is a valid out buffer.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a live buffer.
    ok(
        unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) },
        "msg IPC_STAT",
    );
    let p = ds.msg_perm;
    (p.__key, p.uid, p.gid, p.mode, ds.msg_qbytes, ds.msg_qnum)
}

fn send(q: i32, mtype: i64, text: &[u8]) {
    let mut b = mtype.to_ne_bytes().to_vec();
    b.extend_from_slice(text);
    // SAFETY: b holds the type and the text.
    ok(
        unsafe { libc::msgsnd(q, b.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) },
        "msgsnd",
    );
}

/// Every message of queue `q`, received (type 0: in order).
fn drain(q: i32) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut b = vec![0u8; 8 + 16384];
    loop {
        // SAFETY: b holds the type and 16384 bytes of text.
        let n = unsafe { libc::msgrcv(q, b.as_mut_ptr().cast(), 16384, 0, libc::IPC_NOWAIT) };
        if n < 0 {
            return out;
        }
        let t = i64::from_ne_bytes(b[..8].try_into().unwrap_or_default());
        out.push((t, b[8..8 + n as usize].to_vec()));
    }
}

fn messages() -> Vec<(i64, Vec<u8>)> {
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    vec![
        (1, b"alpha".to_vec()),
        (2, b"beta".to_vec()),
        (1, b"gamma".to_vec()),
        (5, big),
        (3, Vec::new()),
    ]
}

/// Waits (at most 10 s) until the byte at `p` is `v`.
fn await_byte(p: *const u8, v: u8) -> bool {
    for _ in 0..1000 {
        // SAFETY: p points into a live shared mapping written by another process.
        if unsafe { std::ptr::read_volatile(p) } == v {
            return true;
        }
        stasis_tests::nap(10_000_000);
    }
    false
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    match args.get("mode").unwrap_or("own") {
        "own" => own(
            &proto,
            &mut report,
            args.corrupt(),
            args.flag("corrupt-pids"),
        ),
        "host" => host(&proto, &mut report, args.corrupt()),
        "child-ns" => child_ns(&proto, &mut report),
        "mqueue" => mqueue(&proto, &mut report),
        "sem-undo" => sem_undo(&proto, &mut report),
        "outsider" => outsider(&proto, &mut report),
        "lpid-outside" => lpid_outside(&proto, &mut report, args.corrupt()),
        "lpid-kept" => lpid_kept(&proto, &mut report, args.corrupt(), args.flag("times")),
        m => report.fail(format!("unknown mode {m}")),
    }
    proto.finish(&report);
}

fn unshare_ipc() {
    // SAFETY: integer-only syscall on ourselves.
    ok(
        unsafe { libc::unshare(libc::CLONE_NEWIPC) },
        "unshare(CLONE_NEWIPC)",
    );
}

/// What the own-namespace case compares before and after.
#[derive(Debug, PartialEq)]
struct Seen {
    ids: Vec<i32>,
    shm: Vec<(i32, u32, u32, u16, usize, u64)>,
    contents: Vec<u64>,
    sems: Vec<(Vec<u16>, i32, u32, u32, u16)>,
    queues: Vec<(i32, u32, u32, u16, u64, u64)>,
    sysctls: Vec<String>,
    perms: Vec<String>,
    own_ns: bool,
    /// cuid, cgid of every object (segments, sets, queues).
    creators: Vec<(u32, u32)>,
    /// Whether a semop ran on each set (sem_otime not 0).
    operated: Vec<bool>,
}

fn operated(id: i32) -> bool {
    // SAFETY: an all-zero semid_ds is a valid out buffer.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a live semid_ds.
    unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) };
    ds.sem_otime != 0
}

/// (cuid, cgid) of a segment, a semaphore set and a queue.
fn creators(shm: &[i32], sem: &[i32], msg: &[i32]) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = shm
        .iter()
        .map(|&id| {
            let p = shm_ds(id).shm_perm;
            (p.cuid, p.cgid)
        })
        .collect();
    for &id in sem {
        // SAFETY: an all-zero semid_ds is a valid out buffer.
        let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: ds is a live semid_ds.
        unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) };
        v.push((ds.sem_perm.cuid, ds.sem_perm.cgid));
    }
    for &id in msg {
        // SAFETY: an all-zero msqid_ds is a valid out buffer.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: ds is a live buffer.
        unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) };
        v.push((ds.msg_perm.cuid, ds.msg_perm.cgid));
    }
    v
}

/// Runs `f` with effective ids 2345:6789 (the creator the kernel records).
fn as_other<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: id changes in this single-threaded program, undone after.
    unsafe {
        ok(libc::setresgid(u32::MAX, 6789, u32::MAX), "setresgid");
        ok(libc::setresuid(u32::MAX, 2345, u32::MAX), "setresuid");
        let r = f();
        ok(libc::setresuid(u32::MAX, 0, u32::MAX), "setresuid back");
        ok(libc::setresgid(u32::MAX, 0, u32::MAX), "setresgid back");
        r
    }
}

struct Objects {
    a: i32,
    b: i32,
    c: i32,
    s1: i32,
    s2: i32,
    q1: i32,
    q2: i32,
    pa: *mut u8,
    pc: *mut u8,
}

const A_LEN: usize = 3 * PAGE + 100;

fn seen(o: &Objects) -> Seen {
    let ns = |p: &str| std::fs::read_link(p).ok();
    let b = attach(o.b, libc::SHM_RDONLY);
    let contents = vec![hash(o.pa, A_LEN), hash(b, 8 * PAGE), hash(o.pc, PAGE)];
    // SAFETY: b was attached above and is not used after.
    unsafe { libc::shmdt(b as *const c_void) };
    Seen {
        ids: vec![o.a, o.b, o.c, o.s1, o.s2, o.q1, o.q2],
        shm: [o.a, o.b, o.c]
            .iter()
            .map(|&id| {
                let d = shm_ds(id);
                let p = d.shm_perm;
                (p.__key, p.uid, p.gid, p.mode, d.shm_segsz, d.shm_nattch)
            })
            .collect(),
        contents,
        sems: vec![sem_state(o.s1, 4), sem_state(o.s2, 1)],
        queues: vec![msq_state(o.q1), msq_state(o.q2)],
        sysctls: sysctls(),
        perms: vec![
            perms_at("self", o.pa as usize),
            perms_at("self", o.pc as usize),
        ],
        // Compared with the namespace it started in (PID 1 may be a new
        // PID namespace's helper init, in the tree's IPC namespace).
        own_ns: ns("/proc/self/ns/ipc") != OUTER.get().cloned().flatten(),
        creators: creators(&[o.a, o.b, o.c], &[o.s1, o.s2], &[o.q1, o.q2]),
        operated: vec![operated(o.s1), operated(o.s2)],
    }
}

/// The PIDs SysV IPC recorded: (shm_cpid, shm_lpid) of each segment,
/// every semaphore's sempid, (msg_lspid, msg_lrpid) of each queue. Read
/// only (IPC_STAT, GETPID): reading them changes none.
/// Segments' (cpid, lpid), semaphores' sempid, queues' (lspid, lrpid).
type Pids = (Vec<(i32, i32)>, Vec<i32>, Vec<(i32, i32)>);

fn pids(o: &Objects) -> Pids {
    let shm = [o.a, o.b, o.c]
        .iter()
        .map(|&id| {
            let d = shm_ds(id);
            (d.shm_cpid, d.shm_lpid)
        })
        .collect();
    let mut sem = Vec::new();
    for (id, n) in [(o.s1, 4), (o.s2, 1)] {
        for i in 0..n {
            // SAFETY: GETPID takes integer arguments.
            sem.push(unsafe { libc::semctl(id, i, libc::GETPID) });
        }
    }
    let msg = [o.q1, o.q2]
        .iter()
        .map(|&id| {
            // SAFETY: an all-zero msqid_ds is a valid out buffer.
            let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
            // SAFETY: ds is a live buffer.
            unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) };
            (ds.msg_lspid, ds.msg_lrpid)
        })
        .collect();
    (shm, sem, msg)
}

/// A process that exits at once: it inherits the attachments of A and C
/// (its exit detaches them: their shm_lpid becomes its PID) and waits for
/// zero on semaphore 0 of s1 (its sempid and s1's sem_otime).
fn short_lived(o: &Objects) {
    // SAFETY: single-threaded; the child makes raw calls and _exits.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let mut op = libc::sembuf {
                sem_num: 0,
                sem_op: 0,
                sem_flg: libc::IPC_NOWAIT as i16,
            };
            libc::_exit(i32::from(libc::semop(o.s1, &mut op, 1) != 0));
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "short-lived process"
        );
    }
}

fn create_objects() -> Objects {
    for (n, v) in SYSCTLS {
        std::fs::write(format!("/proc/sys/{n}"), v).expect("write IPC sysctl");
    }
    // SAFETY: SysV calls with integer arguments and live buffers; the
    // attachments are used within their lengths.
    unsafe {
        // Ids past the first ones: a segment made and removed first.
        let gone = ok(libc::shmget(libc::IPC_PRIVATE, PAGE, 0o600), "shmget");
        libc::shmctl(gone, libc::IPC_RMID, std::ptr::null_mut());
        let a = ok(
            libc::shmget(KEY_A, A_LEN, libc::IPC_CREAT | 0o640),
            "shmget A",
        );
        let b = ok(
            as_other(|| libc::shmget(libc::IPC_PRIVATE, 8 * PAGE, 0o600)),
            "shmget B",
        );
        let c = ok(
            libc::shmget(KEY_C, PAGE, libc::IPC_CREAT | 0o644),
            "shmget C",
        );
        let pa = attach(a, 0);
        fill(pa, A_LEN, 1);
        let pb = attach(b, 0);
        fill(pb, PAGE, 2);
        fill(pb.add(5 * PAGE), PAGE, 3);
        libc::shmdt(pb as *const c_void);
        ok(
            libc::shmctl(b, libc::SHM_LOCK, std::ptr::null_mut()),
            "SHM_LOCK",
        );
        let w = attach(c, 0);
        fill(w, PAGE, 4);
        libc::shmdt(w as *const c_void);
        let pc = attach(c, libc::SHM_RDONLY);
        let s1 = ok(libc::semget(KEY_S, 4, libc::IPC_CREAT | 0o600), "semget");
        let vals: [u16; 4] = [0, 1, 500, 32767];
        ok(libc::semctl(s1, 0, libc::SETALL, vals.as_ptr()), "SETALL");
        let mut ds: libc::semid_ds = std::mem::zeroed();
        libc::semctl(s1, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds);
        ds.sem_perm.uid = 1234;
        ds.sem_perm.gid = 4321;
        ds.sem_perm.mode = 0o660;
        ok(
            libc::semctl(s1, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds),
            "sem IPC_SET",
        );
        let s2 = ok(
            as_other(|| libc::semget(libc::IPC_PRIVATE, 1, 0o600)),
            "semget 2",
        );
        ok(libc::semctl(s2, 0, libc::SETVAL, 7), "SETVAL");
        // A semop on s2 (its sem_otime set), none on s1.
        let mut op = [libc::sembuf {
            sem_num: 0,
            sem_op: -1,
            sem_flg: 0,
        }];
        ok(libc::semop(s2, op.as_mut_ptr(), 1), "semop");
        op[0].sem_op = 1;
        ok(libc::semop(s2, op.as_mut_ptr(), 1), "semop");
        let q1 = ok(libc::msgget(KEY_Q, libc::IPC_CREAT | 0o620), "msgget");
        let mut md: libc::msqid_ds = std::mem::zeroed();
        libc::msgctl(q1, libc::IPC_STAT, &mut md);
        md.msg_qbytes = 20000;
        ok(libc::msgctl(q1, libc::IPC_SET, &mut md), "msg IPC_SET");
        for (t, m) in messages() {
            send(q1, t, &m);
        }
        let q2 = ok(
            as_other(|| libc::msgget(libc::IPC_PRIVATE, 0o600)),
            "msgget 2",
        );
        Objects {
            a,
            b,
            c,
            s1,
            s2,
            q1,
            q2,
            pa,
            pc,
        }
    }
}

/// The child: its inherited attachments plus a second one of A, split by
/// mprotect. After go it answers the parent's write through A and checks C.
fn child(proto: &Proto, o: &Objects) -> ! {
    // Semaphore 2 of s1 (its sempid), a message into q2 (msg_lspid).
    let mut ops = [
        libc::sembuf {
            sem_num: 2,
            sem_op: 1,
            sem_flg: 0,
        },
        libc::sembuf {
            sem_num: 2,
            sem_op: -1,
            sem_flg: 0,
        },
    ];
    // SAFETY: ops is a live array of two.
    ok(
        unsafe { libc::semop(o.s1, ops.as_mut_ptr(), 2) },
        "child semop",
    );
    send(o.q2, 9, b"from the child");
    let a2 = attach(o.a, 0);
    // SAFETY: a2 maps A (4 pages); the first page is made read-only.
    unsafe { libc::mprotect(a2.cast(), PAGE, libc::PROT_READ) };
    let split = (
        perms_at("self", a2 as usize),
        perms_at("self", a2 as usize + PAGE),
    );
    let c_hash = hash(o.pc, PAGE);
    proto.wait_go();
    let after = (
        perms_at("self", a2 as usize),
        perms_at("self", a2 as usize + PAGE),
    );
    // The parent writes 0xab at 2*PAGE+8 of A; we answer at +9 through a2.
    let ok = await_byte(o.pa.wrapping_add(2 * PAGE + 8), 0xab)
        && {
            // SAFETY: a2 + 2 pages is writable (the rw part of the split).
            unsafe { std::ptr::write_volatile(a2.add(2 * PAGE + 9), 0xcd) };
            true
        }
        && split == after
        && split.0 == "r--s"
        && hash(o.pc, PAGE) == c_hash;
    // SAFETY: ends the child.
    unsafe { libc::_exit(i32::from(!ok)) }
}

/// The IPC namespace the program started in (before `own` unshared).
static OUTER: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

fn own(proto: &Proto, report: &mut Report, corrupt: bool, corrupt_pids: bool) {
    let _ = OUTER.set(std::fs::read_link("/proc/self/ns/ipc").ok());
    unshare_ipc();
    let o = create_objects();
    // SAFETY: single-threaded; the child runs `child` and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child(proto, &o);
    }
    short_lived(&o);
    // Marked for removal while attached (here and in the child).
    // SAFETY: IPC_RMID ignores the buffer.
    ok(
        unsafe { libc::shmctl(o.c, libc::IPC_RMID, std::ptr::null_mut()) },
        "IPC_RMID C",
    );
    // Wait until the child has attached A a second time and split it.
    for _ in 0..1000 {
        if shm_ds(o.a).shm_nattch == 4 {
            break;
        }
        stasis_tests::nap(10_000_000);
    }
    // The child's message, received here (q2's msg_lrpid).
    report.eq(
        "the child's message",
        vec![(9i64, b"from the child".to_vec())],
        drain(o.q2),
    );
    // A's last attacher: this process, while the child attaches it too.
    // SAFETY: A is attached and detached again at once.
    unsafe { libc::shmdt(attach(o.a, libc::SHM_RDONLY) as *const c_void) };
    let mut before = seen(&o);
    // After seen(), which attaches B: every PID as the dump finds it.
    let mut pids_before = pids(&o);
    proto.ready_and_wait();
    let pids_after = pids(&o);
    let after = seen(&o);
    if corrupt {
        before.sems[0].0[3] ^= 1;
    }
    if corrupt_pids {
        pids_before.0[2].1 += 1;
    }
    let me = std::process::id() as i32;
    report.check(
        pids_before.0[0].1 == me
            && pids_before.0[2].1 != me
            && pids_before.0[2].1 != pid
            && pids_before.1[2] == pid
            && pids_before.1[0] != me
            && pids_before.2[1] == (pid, me)
            || corrupt_pids,
        || format!("the set-up's PIDs are not as planned: {pids_before:?} (me {me}, child {pid})"),
    );
    report.eq(
        "PIDs: shm (cpid, lpid), sempid, msg (lspid, lrpid)",
        pids_before,
        pids_after,
    );
    report.eq(
        "ids, segments, contents, semaphores, queues, sysctls, attachments",
        before,
        after,
    );
    report.eq("messages in order", messages(), drain(o.q1));
    report.eq("empty queue", Vec::<(i64, Vec<u8>)>::new(), drain(o.q2));
    report.check(shm_ds(o.c).shm_perm.mode & 0o1000 != 0, || {
        "C is no longer marked for removal".into()
    });
    report.check(shm_ds(o.b).shm_perm.mode & 0o2000 != 0, || {
        "B is no longer locked".into()
    });
    // Shared with the child: we write, it answers.
    // SAFETY: pa maps A read-write.
    unsafe { std::ptr::write_volatile(o.pa.add(2 * PAGE + 8), 0xab) };
    report.check(await_byte(o.pa.wrapping_add(2 * PAGE + 9), 0xcd), || {
        "the child's write through its own attachment did not arrive".into()
    });
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child checks (split attachment, C, answer): status {st:#x}")
    });
}

fn host(proto: &Proto, report: &mut Report, corrupt: bool) {
    let len = 2 * PAGE + 10;
    // SAFETY: integer-only syscall.
    let id = ok(
        unsafe { libc::shmget(libc::IPC_PRIVATE, len, 0o640) },
        "shmget",
    );
    std::fs::write(proto.path("shmid"), id.to_string()).expect("write shmid");
    let p = attach(id, 0);
    fill(p, len, 9);
    let snap = || {
        let d = shm_ds(id);
        (
            d.shm_perm.__key,
            d.shm_perm.mode,
            d.shm_segsz,
            d.shm_nattch,
            hash(p, len),
            perms_at("self", p as usize),
        )
    };
    let mut before = snap();
    proto.ready_and_wait();
    let after = snap();
    if corrupt {
        before.4 ^= 1;
    }
    report.eq(
        "segment (key, mode, size, attachments, contents, protection)",
        before,
        after,
    );
    // SAFETY: removes our own segment (it goes when we detach or exit).
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

fn child_ns(proto: &Proto, report: &mut Report) {
    // SAFETY: single-threaded; the child waits for go and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unshare_ipc();
        proto.wait_go();
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
    assert!(
        stasis_tests::await_other_ns(pid, "ipc"),
        "child unshare(ipc)"
    );
    proto.ready_and_wait();
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    report.check(libc::WIFEXITED(st), || format!("child: {st:#x}"));
}

fn mqueue(proto: &Proto, report: &mut Report) {
    unshare_ipc();
    let name = c"/stasis-sysvipc";
    // SAFETY: a NUL-terminated name, default attributes; the descriptor is closed.
    unsafe {
        let q = libc::mq_open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_CREAT,
            0o600,
            std::ptr::null_mut::<libc::mq_attr>(),
        );
        assert!(q >= 0, "mq_open");
        libc::mq_send(q, b"hi".as_ptr().cast(), 2, 3);
        libc::mq_close(q);
    }
    proto.ready_and_wait();
    // SAFETY: as above.
    let q = unsafe { libc::mq_open(name.as_ptr(), libc::O_RDWR) };
    let mut buf = [0u8; 8192];
    // SAFETY: buf is big enough for the default message size.
    let n =
        unsafe { libc::mq_receive(q, buf.as_mut_ptr().cast(), buf.len(), std::ptr::null_mut()) };
    report.eq("queued message", 2, n);
}

fn sem_undo(proto: &Proto, report: &mut Report) {
    unshare_ipc();
    // SAFETY: SysV calls with integer arguments and a live sembuf.
    let id = unsafe {
        let id = ok(libc::semget(libc::IPC_PRIVATE, 1, 0o600), "semget");
        let mut op = libc::sembuf {
            sem_num: 0,
            sem_op: 3,
            sem_flg: libc::SEM_UNDO as i16,
        };
        ok(libc::semop(id, &mut op, 1), "semop(SEM_UNDO)");
        id
    };
    proto.ready_and_wait();
    // SAFETY: GETVAL with integer arguments.
    report.eq("semaphore value", 3, unsafe {
        libc::semctl(id, 0, libc::GETVAL)
    });
}

fn outsider(proto: &Proto, report: &mut Report) {
    unshare_ipc();
    // SAFETY: single-threaded; the child forks the grandchild and _exits at
    // once, the grandchild polls go and _exits.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            if libc::fork() == 0 {
                proto.wait_go();
                libc::_exit(0);
            }
            libc::_exit(0);
        }
        let mut st = 0;
        libc::waitpid(child, &mut st, 0);
    }
    proto.ready_and_wait();
    report.check(true, String::new);
}

fn lpid_outside(proto: &Proto, report: &mut Report, corrupt: bool) {
    let host = std::fs::File::open("/proc/self/ns/ipc").expect("open /proc/self/ns/ipc");
    unshare_ipc();
    // SAFETY: integer-only syscall.
    let id = ok(
        unsafe { libc::shmget(libc::IPC_PRIVATE, PAGE, 0o600) },
        "shmget",
    );
    let mut p = [0i32; 2];
    // SAFETY: p is a live array of two descriptors.
    ok(unsafe { libc::pipe(p.as_mut_ptr()) }, "pipe");
    // SAFETY: single-threaded; the child forks the grandchild and _exits
    // at once; the grandchild attaches, writes and detaches the segment,
    // leaves the namespace, reports its PID, polls go and _exits.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            if libc::fork() == 0 {
                let a = attach(id, 0);
                fill(a, PAGE, 5);
                libc::shmdt(a.cast());
                use std::os::fd::AsRawFd;
                ok(libc::setns(host.as_raw_fd(), libc::CLONE_NEWIPC), "setns");
                let me = libc::getpid();
                libc::write(p[1], (&me as *const i32).cast(), 4);
                proto.wait_go();
                libc::_exit(0);
            }
            libc::_exit(0);
        }
        let mut st = 0;
        libc::waitpid(child, &mut st, 0);
    }
    drop(host); // the grandchild's; a namespace descriptor is not dumped
    let mut g = 0i32;
    // SAFETY: reads 4 bytes into g.
    let n = unsafe { libc::read(p[0], (&mut g as *mut i32).cast(), 4) };
    report.eq("grandchild's PID read", 4, n);
    let seen = || {
        let d = shm_ds(id);
        (d.shm_lpid, d.shm_nattch)
    };
    report.eq("before: (shm_lpid, shm_nattch)", (g, 0), seen());
    proto.ready_and_wait();
    if corrupt {
        // SAFETY: a read-only attachment of our own segment, detached at once.
        unsafe { libc::shmdt(attach(id, libc::SHM_RDONLY).cast()) };
    }
    report.eq("after: (shm_lpid, shm_nattch)", (g, 0), seen());
}

/// The SysV attachments in /proc/PID/maps (address, flags, inode).
fn sysv_maps(pid: i32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains("SYSV"))
        .map(str::to_string)
        .collect()
}

/// A segment as `lpid-kept` compares it: (cpid, lpid, nattch, size).
fn lpid_kept_state(id: i32) -> (i32, i32, u64, usize) {
    let d = shm_ds(id);
    (d.shm_cpid, d.shm_lpid, d.shm_nattch, d.shm_segsz)
}

fn shm_times(id: i32) -> (i64, i64, i64) {
    let d = shm_ds(id);
    (d.shm_atime, d.shm_dtime, d.shm_ctime)
}

/// Attaches segment `id`, fills `len` bytes with `seed`, detaches it.
fn fill_detached(id: i32, len: usize, seed: u8) {
    let a = attach(id, 0);
    fill(a, len, seed);
    // SAFETY: a was attached above and is not used after.
    unsafe { libc::shmdt(a.cast()) };
}

/// The hash of `len` bytes of segment `id` (a read-only attachment:
/// shm_lpid becomes ours; read after the PIDs were checked).
fn contents(id: i32, len: usize) -> u64 {
    let a = attach(id, libc::SHM_RDONLY);
    let h = hash(a, len);
    // SAFETY: a was attached above and is not used after.
    unsafe { libc::shmdt(a.cast()) };
    h
}

fn lpid_kept(proto: &Proto, report: &mut Report, corrupt: bool, times: bool) {
    unshare_ipc();
    let get = |n: usize| {
        // SAFETY: integer-only syscall.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, n * PAGE, 0o600) };
        ok(id, "shmget")
    };
    // D: last attached by a process that exited; E: by itself; G: by the
    // live child; F: attached here.
    let (d, e, g, f) = (get(2), get(3), get(1), get(1));
    // SAFETY: single-threaded; the child fills D, detaches and _exits.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            fill_detached(d, 2 * PAGE, 6);
            libc::_exit(0);
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
    fill_detached(e, PAGE, 7);
    let pf = attach(f, 0);
    fill(pf, PAGE, 8);
    let (mut ready, mut release) = ([0i32; 2], [0i32; 2]);
    // SAFETY: live arrays of two descriptors.
    ok(unsafe { libc::pipe(ready.as_mut_ptr()) }, "pipe");
    // SAFETY: as above.
    ok(unsafe { libc::pipe(release.as_mut_ptr()) }, "pipe");
    // SAFETY: single-threaded; the child fills G, detaches it, reports,
    // and waits (a blocking read) until the parent is done checking.
    let child = unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::close(release[1]);
            fill_detached(g, PAGE, 9);
            libc::write(ready[1], b"r".as_ptr().cast(), 1);
            let mut b = [0u8; 1];
            libc::read(release[0], b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
        libc::close(release[0]);
        let mut b = [0u8; 1];
        libc::read(ready[0], b.as_mut_ptr().cast(), 1);
        pid
    };
    let segs = [d, e, g, f];
    let state = || segs.map(lpid_kept_state);
    let maps = || (sysv_maps(std::process::id() as i32), sysv_maps(child));
    let before = (state(), maps(), shm_times(f));
    let me = std::process::id() as i32;
    report.check(
        before.0[0].1 > 0 && before.0[0].1 != me && before.0[1].1 == me,
        || format!("setup: shm_lpid of D, E: {:?}", before.0),
    );
    report.eq("setup: shm_lpid of G", child, before.0[2].1);
    proto.ready_and_wait();
    if corrupt {
        // SAFETY: a read-only attachment of our own segment, detached at once.
        unsafe { libc::shmdt(attach(d, libc::SHM_RDONLY).cast()) };
    }
    report.eq(
        "(shm_cpid, shm_lpid, shm_nattch, size) of D (lpid exited), E (itself), G (child), F (attached)",
        before.0,
        state(),
    );
    report.eq("SysV attachments of itself and the child", before.1, maps());
    if times {
        report.eq(
            "F's (shm_atime, shm_dtime, shm_ctime)",
            before.2,
            shm_times(f),
        );
    }
    report.eq(
        "contents",
        vec![
            hash_filled(2 * PAGE, 6),
            hash_filled(PAGE, 7),
            hash_filled(PAGE, 9),
            hash_filled(PAGE, 8),
        ],
        vec![
            contents(d, 2 * PAGE),
            contents(e, PAGE),
            contents(g, PAGE),
            hash(pf, PAGE),
        ],
    );
    // SAFETY: releases and reaps our own child.
    unsafe {
        libc::close(release[1]);
        let mut st = 0;
        libc::waitpid(child, &mut st, 0);
        report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
            format!("child status {st:#x}")
        });
    }
}

/// The hash of `len` bytes as [`fill`] writes them with `seed`.
fn hash_filled(len: usize, seed: u8) -> u64 {
    let mut v = vec![0u8; len];
    fill(v.as_mut_ptr(), len, seed);
    hash(v.as_ptr(), len)
}
