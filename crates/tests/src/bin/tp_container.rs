//! tp_container: the workload of a whole container in every namespace
//! (tests/containers_all.rs starts it inside a busybox rootfs, as the
//! child of a busybox shell that is PID 1 of `stasis run --user`, after
//! the shell unshared UTS, IPC, network, cgroup and time namespaces and
//! pivoted into the rootfs).
//!
//! Usage: `tp_container` (no arguments: it runs as a container would).
//!
//! It sets up, in order: a TCP server on 0.0.0.0:7070 (the test's only
//! channel to it, from the container's network namespace) and a second
//! listener on 10.7.7.7:7071 (an address the shell put on lo), its links
//! as its own sysfs shows them (lo, eth0: a veth with its other end on
//! the host); that the superblock of its tmpfs belongs to its user
//! namespace (it may reconfigure it) and its devpts's ptmx to its root;
//! a pty pair
//! from the container's own devpts, with a window size and termios; a
//! SysV shared memory segment (attached, with contents), a semaphore set
//! and a message queue with a message; a POSIX message queue with two
//! messages of different priorities, kept open with O_NONBLOCK; an inotify watch on /tmp; a child
//! in a nested PID namespace (PID 1 there) answering on a pipe; and, last,
//! a seccomp filter (getpriority fails with EDOM). What it saw then is
//! kept in memory.
//!
//! Every connection gets one line: `check` runs every check and answers
//! `PASS` or `FAIL: ...` (one line). The checks see everything again as
//! it was: the host name, maps, time namespace offsets, cgroup, mount
//! table, the user namespace owning every namespace of the container
//! (ioctl NS_GET_USERNS), the sysctl and route the shell set, the second
//! listener (connected to and accepted), the pty (size, termios, its
//! number, and bytes through it), the SysV objects (ids, contents,
//! values, the message taken and put back), the POSIX queue (its
//! descriptor's flags and attributes, the messages in priority order,
//! taken and put back), an inotify event for a new
//! file in /tmp on the same watch, the nested child's PID (1, through the
//! pipe) and NSpid, the seccomp filter acting and /proc's Seccomp: 2.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

const SHM_KEY: libc::key_t = 0x0c0f_f001;
const SEM_KEY: libc::key_t = 0x0c0f_f002;
const MSG_KEY: libc::key_t = 0x0c0f_f003;
const SHM_TEXT: &[u8] = b"shared memory of the container";
const MSG_TEXT: &[u8] = b"a queued message";

fn die(what: &str) -> ! {
    let e = std::io::Error::last_os_error();
    eprintln!("tp_container: {what}: {e}");
    std::process::exit(1)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{path}: {e}>"))
}

/// The inode of the user namespace owning /proc/self/ns/NS.
fn owner(ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    const NS_GET_USERNS: libc::c_ulong = 0xb7 << 8 | 0x1;
    let Ok(f) = std::fs::File::open(format!("/proc/self/ns/{ns}")) else {
        return 0;
    };
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor.
    let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return 0;
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let u = std::fs::File::from(unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    u.metadata().map_or(0, |m| m.ino())
}

/// The namespaces not owned by our user namespace.
fn not_owned() -> Vec<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self/ns/user").map_or(1, |m| m.ino());
    ["pid", "mnt", "net", "ipc", "uts", "cgroup", "time"]
        .into_iter()
        .filter(|k| owner(k) != me)
        .collect()
}

/// Mount points, filesystem types, options and superblock options, in
/// mount point order (a restore keeps the tree, not the mount IDs: the
/// mounts bound to a namespace are made last, by the first process).
fn mounts() -> String {
    let mut v: Vec<String> = read("/proc/self/mountinfo")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dash = f.iter().position(|x| *x == "-").unwrap_or(f.len());
            let tail = f.get(dash + 1..).map(|t| t.join(" ")).unwrap_or_default();
            format!(
                "{} {} {}",
                f.get(4).unwrap_or(&""),
                f.get(5).unwrap_or(&""),
                tail
            )
        })
        .collect();
    v.sort();
    v.join("\n")
}

struct Pty {
    master: i32,
    slave: i32,
}

fn open_pty() -> Pty {
    // SAFETY: plain calls on descriptors we open; buffers live for the calls.
    unsafe {
        let master = libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if master < 0 {
            die("open /dev/ptmx");
        }
        let unlock: i32 = 0;
        if libc::ioctl(master, libc::TIOCSPTLCK, &unlock) != 0 {
            die("TIOCSPTLCK");
        }
        let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
        if slave < 0 {
            die("TIOCGPTPEER");
        }
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 77,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        libc::ioctl(master, libc::TIOCSWINSZ, &ws);
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(slave, &mut t);
        t.c_lflag &= !(libc::ECHO | libc::ICANON);
        t.c_cc[libc::VMIN] = 1;
        libc::tcsetattr(slave, libc::TCSANOW, &t);
        Pty { master, slave }
    }
}

/// Window size, local flags, pty number, and bytes sent through.
fn pty_state(p: &Pty) -> String {
    // SAFETY: ioctls and reads into locals on our descriptors.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        libc::ioctl(p.master, libc::TIOCGWINSZ, &mut ws);
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(p.slave, &mut t);
        let mut n: u32 = 0;
        libc::ioctl(p.master, libc::TIOCGPTN, &mut n);
        libc::write(p.master, b"through".as_ptr().cast(), 7);
        let mut pfd = libc::pollfd {
            fd: p.slave,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut got = Vec::new();
        while got.len() < 7 && libc::poll(&mut pfd, 1, 2000) == 1 {
            let mut b = [0u8; 16];
            let r = libc::read(p.slave, b.as_mut_ptr().cast(), b.len());
            if r <= 0 {
                break;
            }
            got.extend_from_slice(&b[..r as usize]);
        }
        format!(
            "size {}x{} lflag {:#x} pts {n} got {:?}",
            ws.ws_row,
            ws.ws_col,
            t.c_lflag & (libc::ECHO | libc::ICANON | libc::ISIG),
            String::from_utf8_lossy(&got)
        )
    }
}

struct SysV {
    shm: i32,
    at: *mut u8,
    sem: i32,
    msg: i32,
}

fn make_sysv() -> SysV {
    // SAFETY: SysV calls; the segment is 4096 bytes and stays attached.
    unsafe {
        let shm = libc::shmget(SHM_KEY, 4096, libc::IPC_CREAT | 0o600);
        let at = libc::shmat(shm, std::ptr::null(), 0);
        if shm < 0 || at as isize == -1 {
            die("shmget/shmat");
        }
        std::ptr::copy_nonoverlapping(SHM_TEXT.as_ptr(), at.cast(), SHM_TEXT.len());
        let sem = libc::semget(SEM_KEY, 2, libc::IPC_CREAT | 0o600);
        let vals: [u16; 2] = [7, 9];
        if sem < 0 || libc::semctl(sem, 0, libc::SETALL, vals.as_ptr()) != 0 {
            die("semget/SETALL");
        }
        let msg = libc::msgget(MSG_KEY, libc::IPC_CREAT | 0o600);
        if msg < 0 {
            die("msgget");
        }
        let s = SysV {
            shm,
            at: at.cast(),
            sem,
            msg,
        };
        send(&s);
        s
    }
}

#[repr(C)]
struct Msg {
    mtype: libc::c_long,
    text: [u8; 64],
}

fn send(s: &SysV) {
    let mut m = Msg {
        mtype: 5,
        text: [0; 64],
    };
    m.text[..MSG_TEXT.len()].copy_from_slice(MSG_TEXT);
    // SAFETY: a message of MSG_TEXT.len() bytes from a local.
    if unsafe { libc::msgsnd(s.msg, (&raw const m).cast(), MSG_TEXT.len(), 0) } != 0 {
        die("msgsnd");
    }
}

fn sysv_state(s: &SysV) -> String {
    // SAFETY: SysV calls into locals; the attached segment is 4096 bytes.
    unsafe {
        let ids = (
            libc::shmget(SHM_KEY, 0, 0),
            libc::semget(SEM_KEY, 0, 0),
            libc::msgget(MSG_KEY, 0),
        );
        let mem = std::slice::from_raw_parts(s.at, SHM_TEXT.len()).to_vec();
        let fresh = libc::shmat(s.shm, std::ptr::null(), libc::SHM_RDONLY);
        let fresh_text = if fresh as isize == -1 {
            Vec::new()
        } else {
            let v = std::slice::from_raw_parts(fresh.cast::<u8>(), SHM_TEXT.len()).to_vec();
            libc::shmdt(fresh);
            v
        };
        let mut vals = [0u16; 2];
        libc::semctl(s.sem, 0, libc::GETALL, vals.as_mut_ptr());
        let mut m = Msg {
            mtype: 0,
            text: [0; 64],
        };
        let n = libc::msgrcv(s.msg, (&raw mut m).cast(), 64, 0, libc::IPC_NOWAIT);
        let got = if n >= 0 {
            send(s);
            format!(
                "{} {:?}",
                m.mtype,
                String::from_utf8_lossy(&m.text[..n as usize])
            )
        } else {
            "no message".into()
        };
        format!(
            "ids {:?} (ours {} {} {}) memory {:?} attached anew {:?} sem {:?} msg {got}",
            ids,
            s.shm,
            s.sem,
            s.msg,
            String::from_utf8_lossy(&mem),
            String::from_utf8_lossy(&fresh_text),
            vals
        )
    }
}

struct Watch {
    fd: i32,
    wd: i32,
}

/// Creates /tmp/probe-N and reads the event the watch reports.
fn inotify_state(w: &Watch, n: u32) -> String {
    let name = format!("probe-{n}");
    let _ = std::fs::write(format!("/tmp/{name}"), "x");
    let mut buf = [0u8; 4096];
    // SAFETY: a read into a local buffer from our inotify descriptor.
    let r = unsafe { libc::read(w.fd, buf.as_mut_ptr().cast(), buf.len()) };
    if r < 16 {
        return format!("no event for {name}");
    }
    let wd = i32::from_ne_bytes(buf[0..4].try_into().unwrap_or_default());
    let mask = u32::from_ne_bytes(buf[4..8].try_into().unwrap_or_default());
    let len = u32::from_ne_bytes(buf[12..16].try_into().unwrap_or_default()) as usize;
    let got = String::from_utf8_lossy(&buf[16..16 + len.min(r as usize - 16)])
        .trim_end_matches('\0')
        .to_string();
    format!(
        "wd {} (ours {}) create {} name matches {}",
        wd,
        w.wd,
        mask & libc::IN_CREATE != 0,
        got == name
    )
}

struct Nested {
    pid: i32,
    ask: i32,
    answer: i32,
}

/// A child in a PID namespace of its own (its init), answering each byte
/// on its pipe with its PID.
fn nested_child() -> Nested {
    let (mut a, mut b) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipes into locals; the child loops on raw reads and writes.
    unsafe {
        if libc::pipe(a.as_mut_ptr()) != 0 || libc::pipe(b.as_mut_ptr()) != 0 {
            die("pipe");
        }
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            die("unshare(CLONE_NEWPID)");
        }
        let pid = libc::fork();
        if pid == 0 {
            let mut c = 0u8;
            while libc::read(a[0], (&raw mut c).cast(), 1) == 1 {
                let me = libc::getpid();
                libc::write(b[1], (&raw const me).cast(), 4);
            }
            libc::_exit(0);
        }
        if pid < 0 {
            die("fork into the nested PID namespace");
        }
        Nested {
            pid,
            ask: a[1],
            answer: b[0],
        }
    }
}

fn nested_state(n: &Nested) -> String {
    let nspid = read(&format!("/proc/{}/status", n.pid))
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut got = -1i32;
    // SAFETY: a byte out of and four bytes into locals, with a timeout.
    unsafe {
        libc::write(n.ask, b"?".as_ptr().cast(), 1);
        let mut pfd = libc::pollfd {
            fd: n.answer,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut pfd, 1, 2000) == 1 {
            libc::read(n.answer, (&raw mut got).cast(), 4);
        }
    }
    format!("{nspid}; it says it is {got}")
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// getpriority fails with EDOM from now on.
fn seccomp() {
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut p = [
        insn(0x20, 0, 0, 4),
        insn(0x15, 1, 0, AUDIT_ARCH_X86_64),
        insn(0x06, 0, 0, 0x8000_0000),
        insn(0x20, 0, 0, 0),
        insn(0x15, 0, 1, libc::SYS_getpriority as u32),
        insn(0x06, 0, 0, 0x0005_0000 | libc::EDOM as u32),
        insn(0x06, 0, 0, 0x7fff_0000),
    ];
    let prog = libc::sock_fprog {
        len: p.len() as u16,
        filter: p.as_mut_ptr(),
    };
    // SAFETY: seccomp reads the program above.
    if unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1u64,
            0u64,
            &prog as *const libc::sock_fprog,
        )
    } != 0
    {
        die("seccomp");
    }
}

fn seccomp_state() -> String {
    // SAFETY: getpriority has no pointer arguments.
    let r = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mode = read("/proc/self/status")
        .lines()
        .find(|l| l.starts_with("Seccomp:"))
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    format!("getpriority {r} errno {e}; {mode}")
}

/// The links its sysfs shows (its network namespace's), eth0's MTU and
/// MAC, and whether eth0's address is ours (a bind to it).
fn links() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let bound = std::net::UdpSocket::bind("10.9.0.2:0").is_ok();
    format!(
        "{names:?} mtu {} mac {} 10.9.0.2 bound {bound}",
        read("/sys/class/net/eth0/mtu").trim(),
        read("/sys/class/net/eth0/address").trim()
    )
}

/// Whether the superblock of /tmp belongs to our user namespace:
/// reconfiguring it (fspick, FSCONFIG_CMD_RECONFIGURE, no change: a
/// tmpfs keeps what is not given) needs CAP_SYS_ADMIN in the user
/// namespace that owns it; and the owner of the devpts's ptmx (its
/// creator's; a devpts reconfigured without options would take its
/// defaults).
fn superblocks() -> String {
    use std::os::unix::fs::MetadataExt;
    let reconf = |path: &std::ffi::CStr| -> String {
        // SAFETY: fspick on a static path; fsconfig on the descriptor it gave.
        unsafe {
            let fd = libc::syscall(libc::SYS_fspick, libc::AT_FDCWD, path.as_ptr(), 1u32);
            if fd < 0 {
                return format!("fspick {}", std::io::Error::last_os_error());
            }
            let r = libc::syscall(libc::SYS_fsconfig, fd as i32, 7u32, 0usize, 0usize, 0);
            let e = std::io::Error::last_os_error();
            libc::close(fd as i32);
            if r == 0 {
                "ours".into()
            } else {
                format!("reconfigure: {e}")
            }
        }
    };
    let ptmx = std::fs::metadata("/dev/pts/ptmx").map_or((9, 9), |m| (m.uid(), m.gid()));
    format!("/tmp {} ptmx owner {ptmx:?}", reconf(c"/tmp"))
}

/// Connects to 10.7.7.7:7071 and accepts it on `l`.
fn second_listener(l: &TcpListener) -> String {
    match TcpStream::connect("10.7.7.7:7071") {
        Ok(_c) => match l.accept() {
            Ok((_, peer)) => format!("accepted from {}", peer.ip()),
            Err(e) => format!("accept: {e}"),
        },
        Err(e) => format!("connect: {e}"),
    }
}

/// A POSIX message queue of the container's IPC namespace, kept open
/// read-write with O_NONBLOCK; its messages in send order.
const MQ_NAME: &std::ffi::CStr = c"/container-q";
const MQ_SENT: [(u32, &[u8]); 3] = [(2, b"low"), (7, b"high"), (2, b"low again")];

fn make_mqueue() -> i32 {
    // SAFETY: an all-zero mq_attr, then the two fields mq_open reads.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    a.mq_maxmsg = 4;
    a.mq_msgsize = 64;
    // SAFETY: a NUL-terminated name and a live attribute buffer.
    let q = unsafe {
        libc::mq_open(
            MQ_NAME.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_NONBLOCK,
            0o640,
            &mut a as *mut libc::mq_attr,
        )
    };
    if q < 0 {
        die("mq_open");
    }
    for (prio, text) in MQ_SENT {
        mq_send(q, prio, text);
    }
    q
}

fn mq_send(q: i32, prio: u32, text: &[u8]) {
    // SAFETY: sends from a live slice.
    if unsafe { libc::mq_send(q, text.as_ptr().cast(), text.len(), prio) } != 0 {
        die("mq_send");
    }
}

/// The descriptor's attributes and the queue's messages (received, then
/// sent back in the same order, which rebuilds the queue).
fn mqueue_state(q: i32) -> String {
    // SAFETY: an all-zero mq_attr is a valid out buffer.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: a live out buffer.
    unsafe { libc::mq_getattr(q, &mut a) };
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let mut prio = 0u32;
        // SAFETY: receives into a live buffer of the queue's message size.
        let n = unsafe { libc::mq_receive(q, buf.as_mut_ptr().cast(), buf.len(), &mut prio) };
        if n < 0 {
            break;
        }
        got.push((prio, buf[..n as usize].to_vec()));
    }
    for (prio, text) in &got {
        mq_send(q, *prio, text);
    }
    let msgs: Vec<String> = got
        .iter()
        .map(|(p, t)| format!("{p} {:?}", String::from_utf8_lossy(t)))
        .collect();
    format!(
        "flags {:#o} maxmsg {} msgsize {} curmsgs {} messages {msgs:?}",
        a.mq_flags, a.mq_maxmsg, a.mq_msgsize, a.mq_curmsgs
    )
}

struct World {
    second: TcpListener,
    pty: Pty,
    sysv: SysV,
    mq: i32,
    watch: Watch,
    nested: Nested,
    probes: u32,
}

impl World {
    /// Everything that must be the same, by name.
    fn state(&mut self) -> Vec<(&'static str, String)> {
        self.probes += 1;
        vec![
            ("host name", read("/proc/sys/kernel/hostname")),
            ("uid map", read("/proc/self/uid_map")),
            ("gid map", read("/proc/self/gid_map")),
            ("time offsets", read("/proc/self/timens_offsets")),
            ("cgroup", read("/proc/self/cgroup")),
            ("mounts", mounts()),
            ("not owned", format!("{:?}", not_owned())),
            ("ttl", read("/proc/sys/net/ipv4/ip_default_ttl")),
            (
                "route",
                format!("{}", read("/proc/net/route").contains("0000080A")),
            ),
            ("second listener", second_listener(&self.second)),
            ("links", links()),
            ("superblocks", superblocks()),
            ("pty", pty_state(&self.pty)),
            ("sysv", sysv_state(&self.sysv)),
            ("mqueue", mqueue_state(self.mq)),
            ("inotify", inotify_state(&self.watch, self.probes)),
            ("nested", nested_state(&self.nested)),
            ("seccomp", seccomp_state()),
        ]
    }
}

fn main() {
    let server = TcpListener::bind("0.0.0.0:7070").unwrap_or_else(|_| die("listen on 7070"));
    let second = TcpListener::bind("10.7.7.7:7071").unwrap_or_else(|_| die("listen on 10.7.7.7"));
    let pty = open_pty();
    let sysv = make_sysv();
    let mq = make_mqueue();
    // SAFETY: inotify calls with a static path.
    let watch = unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK);
        let wd = libc::inotify_add_watch(fd, c"/tmp".as_ptr(), libc::IN_CREATE);
        if fd < 0 || wd < 0 {
            die("inotify");
        }
        Watch { fd, wd }
    };
    let nested = nested_child();
    let mut world = World {
        second,
        pty,
        sysv,
        mq,
        watch,
        nested,
        probes: 0,
    };
    seccomp();
    let mut expected = world.state();
    for (k, v) in &mut expected {
        // The probe file differs each round, not what is reported.
        if *k == "inotify" {
            *v = v.replace("probe-1", "probe-N");
        }
    }
    for conn in server.incoming() {
        let Ok(mut c) = conn else { continue };
        let mut line = [0u8; 64];
        let n = c.read(&mut line).unwrap_or(0);
        let req = String::from_utf8_lossy(&line[..n]).trim().to_string();
        let answer = if req == "check" {
            let now = world.state();
            let bad: Vec<String> = expected
                .iter()
                .zip(&now)
                .filter(|((_, a), (_, b))| a != b)
                .map(|((k, a), (_, b))| format!("{k}: {a:?} -> {b:?}"))
                .collect();
            if bad.is_empty() {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", bad.join("; ").replace('\n', "|"))
            }
        } else {
            format!("FAIL: unknown request {req:?}")
        };
        let _ = c.write_all(format!("{answer}\n").as_bytes());
    }
}
