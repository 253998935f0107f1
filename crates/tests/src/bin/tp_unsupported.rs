//! tp_unsupported: holds one resource stasis does not support yet, for the
//! "dump refuses cleanly and leaves the process unharmed" tests.
//!
//! Usage: `tp_unsupported WORKDIR --with pipe|socket|tcp|thread|child|huge-deleted|
//! deleted-2m|aio|io-uring|hugetlb-anon|hugetlb-shared|hugetlb-memfd|hugetlb-memfd-fd|hugetlb-file|
//! uts-ns|uts-ns-child|clone-files|thread-unshare-files|thread-creds|thread-seccomp|gdt-tls|debugreg|
//! ldt|mempolicy|mbind|seccomp-strict|unix-oob|own-tmpfs|mdwe|mce|sud|ctty|chardev|packet-pipe|thread-child-pdeath|
//! mqueue|detached-mount|keyring|autogroup|thread-pdeath|guard|ptmx|two-ttys|pty-queued|
//! ctty-own`
//!
//! - `pipe`: holds both ends of a pipe with 5 bytes buffered in it;
//! - `thread`: a second thread waits for go and returns a value;
//! - `child`: a forked child waits for go and exits with status 0;
//! - `huge-deleted`: an open, deleted, sparse file of 1 GiB + 4 KiB (above
//!   the size an image may hold);
//! - `deleted-2m`: an open, deleted file of 2 MiB of known bytes (above a
//!   `--ghost-limit 1M`, below the default);
//! - `aio`: an AIO context (io_setup) with its ring mapped;
//! - `io-uring`: an io_uring instance with its rings mapped; a NOP goes
//!   through it after go;
//! - `hugetlb-*`: one touched huge page of MAP_HUGETLB private or shared
//!   anonymous memory, of an MFD_HUGETLB memfd, or of a file on a hugetlbfs
//!   mounted by the harness at `--mnt DIR` (deleted); exits 4 if no huge page could
//!   be had (the harness reserves them);
//! - `uts-ns`: a UTS namespace of its own with its own host and domain name
//!   (supported since: `--corrupt` makes the check fail); `uts-ns-child`: a
//!   child in a UTS namespace of its own (refused);
//! - `clone-files`: a child sharing the descriptor table (CLONE_FILES);
//! - `thread-unshare-files`: a thread that unshared its descriptor table;
//! - `thread-creds`: a thread whose effective gid differs (raw setresgid);
//! - `thread-seccomp`: a thread under an allow-all seccomp filter;
//! - `gdt-tls`: a GDT TLS entry set with set_thread_area;
//! - `debugreg`: a hardware breakpoint (DR0/DR7) a debugger set and left
//!   behind when it detached;
//! - `ldt`: a local descriptor table entry (modify_ldt);
//! - `mempolicy`: a NUMA memory policy (MPOL_BIND to node 0) on a thread;
//! - `mbind`: a NUMA memory policy (MPOL_PREFERRED, node 0) on one
//!   mapping only (mbind);
//! - `seccomp-strict`: a child in strict seccomp mode (mode 1), waiting
//!   in read on a pipe; after go it reads a byte and leaves with exit(2);
//! - `unix-oob`: a unix stream pair with "abc" and an out-of-band "Z"
//!   (MSG_OOB) queued; after go both read back;
//! - `own-tmpfs`: (run by `stasis run`, in its private mount namespace) a
//!   tmpfs mounted at WORK/mnt with a file in it; after go the file reads
//!   back and the tmpfs is unmounted;
//! - `mdwe`: memory-deny-write-execute (PR_SET_MDWE);
//! - `mce`: an early machine-check kill policy (PR_MCE_KILL);
//! - `sud`: syscall user dispatch on, selector allowing every call;
//! - `ctty`: a controlling terminal (a pseudo-terminal it made its own)
//!   whose master is held outside the tree;
//! - `ctty-own`: the same with the master held in the tree (now supported);
//! - `chardev`: /dev/kmsg open (a device with a read position in the log);
//! - `packet-pipe`: a pipe in packet mode (O_DIRECT) with two packets queued;
//! - `thread-child-pdeath`: a child forked by a non-leader thread, with a
//!   parent-death signal (which that thread's exit would send);
//! - `mqueue`: a POSIX message queue descriptor with a message in it;
//! - `detached-mount`: a detached mount (open_tree OPEN_TREE_CLONE);
//! - `keyring`: a process keyring (KEY_SPEC_PROCESS_KEYRING, created; a
//!   session keyring of its own is restored: tp_keyring);
//! - `autogroup`: its session's autogroup at nice 5;
//! - `thread-pdeath`: a thread with a parent-death signal of its own;
//! - `guard`: a guard region (MADV_GUARD_INSTALL) in an anonymous mapping;
//! - `ptmx`: a pseudo-terminal master, its slave closed (now supported);
//! - `pty-queued`: a pseudo-terminal pair with input written to the master
//!   and not yet read from the slave;
//! - `two-ttys`: the slaves of two pseudo-terminals (dumped with `-j`).
//! - `udp-timestamp`: a UDP socket with SO_TIMESTAMP on and a datagram
//!   waiting (its receive time cannot be given back); after go it reads
//!   the datagram with its timestamp.
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
        "xdp" => {
            // SAFETY: plain socket creation; closed when the program exits.
            let s = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) };
            report.check(s >= 0, || "socket(AF_XDP)".into());
            proto.ready_and_wait();
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
        "deleted-2m" => {
            let path = proto.path("ghost.dat");
            let data: Vec<u8> = (0..2u32 << 20)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            std::fs::write(&path, &data).expect("write ghost.dat");
            let f = std::fs::File::options()
                .read(true)
                .write(true)
                .open(&path)
                .expect("open");
            std::fs::remove_file(&path).expect("unlink");
            proto.ready_and_wait();
            use std::os::unix::fs::FileExt;
            let mut back = vec![0u8; data.len()];
            let n = f.read_at(&mut back, 0).unwrap_or(0);
            report.eq("bytes read from the deleted file", data.len(), n);
            report.check(back == data, || {
                "contents of the deleted file differ".into()
            });
        }
        "aio" => {
            let mut ctx: u64 = 0;
            // SAFETY: io_setup writes the context id into a live u64.
            let r = unsafe { libc::syscall(libc::SYS_io_setup, 8i64, &raw mut ctx) };
            assert_eq!(r, 0, "io_setup: {}", std::io::Error::last_os_error());
            proto.ready_and_wait();
            // The context still exists: io_getevents with no events waits 0.
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let mut ev = [0u64; 4];
            // SAFETY: io_getevents into a live buffer big enough for one event.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    ctx,
                    0i64,
                    1i64,
                    ev.as_mut_ptr(),
                    &raw const ts,
                )
            };
            report.eq("io_getevents on the context", 0, n);
        }
        "io-uring" => {
            // struct io_uring_params: 120 bytes; sq_off at 40, cq_off at 80.
            let mut params = [0u32; 30];
            if args.flag("sqpoll") {
                params[2] = 2; // IORING_SETUP_SQPOLL: a kernel thread polls the ring
            }
            // SAFETY: io_uring_setup fills a live, zeroed io_uring_params.
            let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
            assert!(
                fd >= 0,
                "io_uring_setup: {}",
                std::io::Error::last_os_error()
            );
            let fd = fd as i32;
            let sq_entries = params[0] as usize;
            let sq_array = params[10 + 6] as usize; // sq_off.array
            let sq_len = sq_array + sq_entries * 4;
            // SAFETY: maps the submission ring of our own io_uring (offset 0).
            let sq = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    sq_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd,
                    0,
                )
            };
            assert!(sq != libc::MAP_FAILED, "mmap sq ring");
            proto.ready_and_wait();
            // A NOP is not needed to prove the instance lives: register probe.
            let mut probe = vec![0u8; 16 + 256 * 8];
            // SAFETY: IORING_REGISTER_PROBE (8) fills a live buffer for 256 ops.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_register,
                    fd,
                    8u32,
                    probe.as_mut_ptr(),
                    256u32,
                )
            };
            report.eq("io_uring_register(PROBE)", 0, r);
        }
        "hugetlb-anon" | "hugetlb-shared" | "hugetlb-memfd" | "hugetlb-file" => {
            const HUGE: usize = 2 << 20;
            let (flags, fd) = match what.as_str() {
                "hugetlb-anon" => (
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                    -1,
                ),
                "hugetlb-shared" => (
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                    -1,
                ),
                "hugetlb-memfd" => {
                    let name = std::ffi::CString::new("stasis-huge").expect("name");
                    // SAFETY: valid NUL-terminated name.
                    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_HUGETLB) };
                    assert!(fd >= 0, "memfd_create(MFD_HUGETLB)");
                    // SAFETY: ftruncate of our own memfd.
                    unsafe { libc::ftruncate(fd, HUGE as i64) };
                    (libc::MAP_SHARED, fd)
                }
                _ => {
                    let dir = args.get("mnt").expect("--mnt DIR");
                    let f = std::fs::File::options()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(format!("{dir}/huge"))
                        .expect("create on hugetlbfs");
                    // Deleted: its contents would have to go into the image.
                    std::fs::remove_file(format!("{dir}/huge")).expect("unlink");
                    f.set_len(HUGE as u64).expect("ftruncate");
                    use std::os::fd::IntoRawFd;
                    (libc::MAP_SHARED, f.into_raw_fd())
                }
            };
            // SAFETY: a fresh mapping at a kernel-chosen address.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    HUGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    fd,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                std::process::exit(4);
            }
            let m = p.cast::<u8>();
            // SAFETY: writes one byte into the huge page just mapped (a
            // fault without a huge page kills us with SIGBUS: the harness
            // reserved them).
            unsafe { m.add(12345).write_volatile(0x5a) };
            proto.ready_and_wait();
            // SAFETY: reads the byte written above.
            report.eq("byte in the huge page", 0x5a, unsafe {
                m.add(12345).read_volatile()
            });
        }
        "hugetlb-memfd-fd" => {
            // An MFD_HUGETLB memfd held as a descriptor only (no mapping).
            let name = std::ffi::CString::new("stasis-huge-fd").expect("name");
            // SAFETY: valid NUL-terminated name.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_HUGETLB) };
            if fd < 0 {
                std::process::exit(4);
            }
            // SAFETY: ftruncate of our own memfd (2 MiB: one huge page).
            let r = unsafe { libc::ftruncate(fd, 2 << 20) };
            report.eq("ftruncate", 0, r);
            proto.ready_and_wait();
            // SAFETY: fstat of our own descriptor into a zeroed buffer.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let r = unsafe { libc::fstat(fd, &mut st) };
            report.eq("fstat and size", (0, 2 << 20), (r, st.st_size));
        }
        "uts-ns" | "uts-ns-child" => {
            // Our own UTS namespace (supported: the whole tree shares the
            // root's), or a child's own one (refused).
            let own = || {
                // SAFETY: integer-only syscalls on our own process; the names are literals.
                unsafe {
                    assert_eq!(
                        libc::unshare(libc::CLONE_NEWUTS),
                        0,
                        "unshare(CLONE_NEWUTS)"
                    );
                    assert_eq!(libc::sethostname(b"stasis-uts".as_ptr().cast(), 10), 0);
                    assert_eq!(libc::setdomainname(b"stasis-dom".as_ptr().cast(), 10), 0);
                }
            };
            let uts = || {
                // SAFETY: an all-zero utsname is a valid out buffer.
                let mut u: libc::utsname = unsafe { std::mem::zeroed() };
                // SAFETY: u is a live buffer.
                unsafe { libc::uname(&mut u) };
                let text = |f: &[libc::c_char]| -> String {
                    f.iter()
                        .take_while(|&&c| c != 0)
                        .map(|&c| c as u8 as char)
                        .collect()
                };
                (text(&u.nodename), text(&u.domainname))
            };
            let ns = |p: &str| std::fs::read_link(p).map(|l| l.display().to_string()).ok();
            if what == "uts-ns" {
                own();
                let before = (uts(), ns("/proc/self/ns/uts") == ns("/proc/1/ns/uts"));
                proto.ready_and_wait();
                let mut after = (uts(), ns("/proc/self/ns/uts") == ns("/proc/1/ns/uts"));
                if args.corrupt() {
                    after.0 .0.push('x');
                }
                report.eq(
                    "host and domain name, and whether the namespace is init's",
                    before,
                    after,
                );
            } else {
                // SAFETY: single-threaded; the child polls go and _exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    own();
                    proto.wait_go();
                    // SAFETY: ends the child.
                    unsafe { libc::_exit(i32::from(uts().0 != "stasis-uts")) };
                }
                assert!(
                    stasis_tests::await_other_ns(pid, "uts"),
                    "child unshare(uts)"
                );
                proto.ready_and_wait();
                let mut st = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(pid, &mut st, 0) };
                report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
                    format!("child in its own UTS namespace: status {st:#x}")
                });
            }
        }
        "clone-files" => {
            // SAFETY: a fork-like clone (no CLONE_VM, no new stack) that
            // shares the descriptor table; the program is single-threaded.
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_FILES | libc::SIGCHLD) as u64,
                    0u64,
                    0u64,
                    0u64,
                    0u64,
                )
            } as i32;
            if pid == 0 {
                proto.wait_go();
                // SAFETY: leaves the child without running the parent's exit handlers.
                unsafe { libc::_exit(0) };
            }
            assert!(pid > 0, "clone(CLONE_FILES)");
            proto.ready_and_wait();
            let mut status = 0;
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            report.eq("waitpid(child)", pid, r);
        }
        "thread-unshare-files" | "thread-creds" | "thread-seccomp" => {
            let dir = proto.dir().to_path_buf();
            let kind = what.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let t = std::thread::spawn(move || {
                let ok = match kind.as_str() {
                    // SAFETY: integer-only syscall affecting this thread only.
                    "thread-unshare-files" => unsafe { libc::unshare(libc::CLONE_FILES) == 0 },
                    // SAFETY: the raw syscall changes this thread's gids only.
                    "thread-creds" => unsafe {
                        libc::syscall(libc::SYS_setresgid, -1i64, 4321i64, -1i64) == 0
                    },
                    _ => allow_all_seccomp(),
                };
                tx.send(ok).expect("send");
                Proto::new(&dir).wait_go();
                // SAFETY: raw getegid of this thread.
                unsafe { libc::syscall(libc::SYS_getegid) }
            });
            assert!(rx.recv().expect("recv"), "thread setup for {what}");
            proto.ready_and_wait();
            match t.join() {
                Ok(egid) if what == "thread-creds" => report.eq("thread egid", 4321, egid),
                Ok(_) => {}
                Err(_) => report.fail("thread panicked"),
            }
        }
        "gdt-tls" => {
            // Only the 32-bit entry point has set_thread_area (243 there):
            // int 0x80 from 64-bit code, with the user_desc below 4 GiB.
            let page = stasis_tests::Mapping::new(
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            );
            // struct user_desc: entry (-1: any free), base, limit, flags
            // (seg_32bit, limit_in_pages, useable).
            let desc: [u32; 4] = [u32::MAX, 0x1000, 0xfffff, 0b101_0001];
            let d = page.addr.cast::<[u32; 4]>();
            // SAFETY: the page is ours, writable and big enough.
            unsafe { d.write(desc) };
            let r = int80(243, page.start() as u64);
            assert_eq!(r, 0, "set_thread_area (int 0x80)");
            // SAFETY: the kernel wrote the chosen entry back into the page.
            let entry = unsafe { d.read() }[0];
            proto.ready_and_wait();
            // SAFETY: as above.
            unsafe { d.write([entry, 0, 0, 0]) };
            let r = int80(244, page.start() as u64);
            // SAFETY: the kernel wrote one struct user_desc.
            let got = unsafe { d.read() };
            report.eq("get_thread_area", (0, 0x1000), (r, got[1]));
        }
        "debugreg" => {
            // A child plays debugger: seizes us, sets an execute breakpoint
            // at an address never executed, detaches, exits.
            // SAFETY: integer-only prctl: any process may trace us.
            unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0) };
            let me = std::process::id() as i32;
            // SAFETY: the program is single-threaded here; the child only
            // makes ptrace calls and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let ok = set_breakpoint(me);
                // SAFETY: leaves the child without running the parent's exit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "the debugger child failed"
            );
            proto.ready_and_wait();
        }
        "ldt" => {
            // struct user_desc for entry 0: base 0, limit 0xfff, 32-bit data.
            let desc: [u32; 4] = [0, 0, 0xfff, 0b1];
            // SAFETY: modify_ldt(1) reads one struct user_desc.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_modify_ldt,
                    1,
                    desc.as_ptr(),
                    std::mem::size_of_val(&desc),
                )
            };
            assert_eq!(r, 0, "modify_ldt(write)");
            proto.ready_and_wait();
            let mut buf = [0u8; 16];
            // SAFETY: modify_ldt(0) writes at most buf.len() bytes.
            let n = unsafe { libc::syscall(libc::SYS_modify_ldt, 0, buf.as_mut_ptr(), buf.len()) };
            report.eq("LDT bytes read back", 16, n);
        }
        "mempolicy" => {
            const MPOL_BIND: i64 = 2;
            let nodes: u64 = 1;
            // SAFETY: set_mempolicy reads one word of node mask.
            let r = unsafe { libc::syscall(libc::SYS_set_mempolicy, MPOL_BIND, &nodes, 64u64) };
            assert_eq!(r, 0, "set_mempolicy(MPOL_BIND, node 0)");
            proto.ready_and_wait();
            let mut mode = -1i32;
            // SAFETY: get_mempolicy writes one int.
            unsafe { libc::syscall(libc::SYS_get_mempolicy, &mut mode, 0usize, 0u64, 0u64, 0u64) };
            report.eq("memory policy mode", 2, mode);
        }
        "seccomp-strict" => {
            let (mut up, mut down) = ([0i32; 2], [0i32; 2]);
            // SAFETY: valid out arrays.
            unsafe {
                libc::pipe(up.as_mut_ptr());
                libc::pipe(down.as_mut_ptr());
            }
            // SAFETY: the child makes only raw read/write/exit calls.
            let child = unsafe { libc::fork() };
            if child == 0 {
                // SAFETY: strict mode allows read, write, exit, sigreturn:
                // the calls below are exactly those.
                unsafe {
                    libc::prctl(libc::PR_SET_SECCOMP, 1u64, 0u64, 0u64, 0u64);
                    libc::syscall(libc::SYS_write, up[1], b"s".as_ptr(), 1usize);
                    let mut b = 0u8;
                    libc::syscall(libc::SYS_read, down[0], &raw mut b, 1usize);
                    libc::syscall(libc::SYS_exit, 0);
                }
            }
            let mut b = 0u8;
            // SAFETY: one byte into a live variable: the child is in strict mode.
            unsafe { libc::read(up[0], (&raw mut b).cast(), 1) };
            proto.ready_and_wait();
            // SAFETY: one byte into our pipe, then wait for our own child.
            let st = unsafe {
                libc::write(down[1], b"g".as_ptr().cast(), 1);
                let mut st = 0;
                libc::waitpid(child, &mut st, 0);
                st
            };
            report.eq("strict child's exit status", 0, st);
        }
        "udp-timestamp" => {
            // SAFETY: plain socket calls on live buffers of their sizes.
            unsafe {
                let u = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                let on: i32 = 1;
                libc::setsockopt(
                    u,
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMP,
                    std::ptr::addr_of!(on).cast(),
                    4,
                );
                let mut a: libc::sockaddr_in = std::mem::zeroed();
                a.sin_family = libc::AF_INET as u16;
                a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
                let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
                libc::bind(u, std::ptr::addr_of!(a).cast(), len);
                let mut got = len;
                libc::getsockname(u, std::ptr::addr_of_mut!(a).cast(), &mut got);
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                libc::sendto(
                    s,
                    b"tick".as_ptr().cast(),
                    4,
                    0,
                    std::ptr::addr_of!(a).cast(),
                    len,
                );
                proto.ready_and_wait();
                let mut data = [0u8; 8];
                let mut ctl = [0u64; 16];
                let mut iov = libc::iovec {
                    iov_base: data.as_mut_ptr().cast(),
                    iov_len: data.len(),
                };
                let mut m: libc::msghdr = std::mem::zeroed();
                m.msg_iov = &mut iov;
                m.msg_iovlen = 1;
                m.msg_control = ctl.as_mut_ptr().cast();
                m.msg_controllen = std::mem::size_of_val(&ctl);
                let n = libc::recvmsg(u, &mut m, libc::MSG_DONTWAIT);
                let c = libc::CMSG_FIRSTHDR(&m);
                let stamped = !c.is_null()
                    && (*c).cmsg_level == libc::SOL_SOCKET
                    && (*c).cmsg_type == libc::SO_TIMESTAMP;
                report.eq("datagram and its timestamp", (4, true), (n, stamped));
            }
        }
        "unix-oob" => {
            let mut sv = [0i32; 2];
            // SAFETY: valid out array; sends from literals.
            unsafe {
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr());
                libc::send(sv[0], b"abc".as_ptr().cast(), 3, 0);
                libc::send(sv[0], b"Z".as_ptr().cast(), 1, libc::MSG_OOB);
            }
            proto.ready_and_wait();
            let (mut oob, mut data) = ([0u8; 1], [0u8; 8]);
            // SAFETY: reads into live buffers of their lengths.
            let (o, n) = unsafe {
                (
                    libc::recv(
                        sv[1],
                        oob.as_mut_ptr().cast(),
                        1,
                        libc::MSG_OOB | libc::MSG_DONTWAIT,
                    ),
                    libc::recv(sv[1], data.as_mut_ptr().cast(), 8, libc::MSG_DONTWAIT),
                )
            };
            report.eq("out-of-band byte", (1, b'Z'), (o, oob[0]));
            report.eq(
                "in-band data",
                b"abc".to_vec(),
                data[..n.max(0) as usize].to_vec(),
            );
        }
        "own-tmpfs" => {
            let mnt = proto.path("mnt");
            std::fs::create_dir_all(&mnt).expect("mkdir mnt");
            let c = std::ffi::CString::new(mnt.to_str().expect("utf-8")).expect("path");
            // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
            let r = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    c.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
            std::fs::write(mnt.join("f"), b"inside").expect("write");
            proto.ready_and_wait();
            report.eq(
                "file on the tmpfs",
                b"inside".to_vec(),
                std::fs::read(mnt.join("f")).unwrap_or_default(),
            );
            // SAFETY: umount of the mount made above.
            unsafe { libc::umount(c.as_ptr()) };
        }
        "mbind" => {
            const MPOL_PREFERRED: i64 = 1;
            let nodes: u64 = 1;
            let pg = stasis_tests::page_size();
            let m = stasis_tests::Mapping::anon(4 * pg);
            // SAFETY: mbind reads one word of node mask; our own mapping.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mbind,
                    m.addr,
                    4 * pg,
                    MPOL_PREFERRED,
                    &nodes,
                    64u64,
                    0u64,
                )
            };
            assert_eq!(r, 0, "mbind(MPOL_PREFERRED, node 0)");
            m.bytes_mut()[0] = 7;
            proto.ready_and_wait();
            let mut mode = -1i32;
            const MPOL_F_ADDR: u64 = 2;
            // SAFETY: get_mempolicy writes one int; the address is mapped.
            unsafe {
                libc::syscall(
                    libc::SYS_get_mempolicy,
                    &mut mode,
                    0usize,
                    0u64,
                    m.addr,
                    MPOL_F_ADDR,
                )
            };
            report.eq("mapping's memory policy mode", MPOL_PREFERRED as i32, mode);
        }
        "mdwe" | "mce" => {
            let (set, get, args): (i32, i32, [u64; 2]) = if what == "mdwe" {
                (65, 66, [1, 0]) // PR_SET_MDWE REFUSE_EXEC_GAIN
            } else {
                (33, 34, [1, 1]) // PR_MCE_KILL SET EARLY
            };
            // SAFETY: integer-only prctl on our own process.
            let r = unsafe { libc::prctl(set, args[0], args[1], 0u64, 0u64) };
            assert_eq!(r, 0, "prctl({set})");
            // SAFETY: as above.
            let before = unsafe { libc::prctl(get, 0u64, 0u64, 0u64, 0u64) };
            proto.ready_and_wait();
            // SAFETY: as above.
            let after = unsafe { libc::prctl(get, 0u64, 0u64, 0u64, 0u64) };
            report.eq(&format!("prctl({get})"), before, after);
        }
        "sud" => {
            // SYSCALL_DISPATCH_FILTER_ALLOW: every syscall goes through.
            let selector: &'static u8 = Box::leak(Box::new(0u8));
            // SAFETY: the kernel keeps a pointer to the leaked selector byte.
            let r = unsafe { libc::prctl(59, 1u64, 0u64, 0u64, selector as *const u8 as u64) };
            assert_eq!(r, 0, "PR_SET_SYSCALL_USER_DISPATCH");
            proto.ready_and_wait();
            report.eq("a syscall still works", std::process::id() > 0, true);
        }
        "ctty" | "ctty-own" => {
            // A session of our own, and a new pseudo-terminal as its
            // controlling terminal; the slave descriptor is closed again.
            // `ctty` leaves the master to a grandchild outside the tree
            // (reparented away), which holds it until the work directory
            // is gone; `ctty-own` keeps it.
            // SAFETY: plain calls on our own process and descriptors.
            unsafe {
                libc::setsid();
                let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
                assert!(m >= 0, "posix_openpt");
                assert_eq!(libc::grantpt(m), 0);
                assert_eq!(libc::unlockpt(m), 0);
                let name = libc::ptsname(m);
                let sl = libc::open(name, libc::O_RDWR);
                assert!(sl >= 0, "open slave");
                assert_eq!(libc::ioctl(sl, libc::TIOCSCTTY, 0), 0, "TIOCSCTTY");
                libc::close(sl);
                if what == "ctty" {
                    let dir = std::ffi::CString::new(proto.dir().as_os_str().as_encoded_bytes())
                        .expect("dir");
                    let c = libc::fork();
                    if c == 0 {
                        if libc::fork() == 0 {
                            while libc::access(dir.as_ptr(), libc::F_OK) == 0 {
                                stasis_tests::nap(50_000_000);
                            }
                            libc::_exit(0);
                        }
                        libc::_exit(0);
                    }
                    libc::waitpid(c, std::ptr::null_mut(), 0);
                    libc::close(m);
                }
            }
            let tty = |s: String| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(4).map(str::to_string))
            };
            let before = tty(std::fs::read_to_string("/proc/self/stat").unwrap_or_default());
            proto.ready_and_wait();
            let after = tty(std::fs::read_to_string("/proc/self/stat").unwrap_or_default());
            report.eq("controlling terminal (stat tty_nr)", before, after);
        }
        "chardev" => {
            let f = std::fs::File::open("/dev/kmsg").expect("open /dev/kmsg");
            proto.ready_and_wait();
            use std::io::Read;
            let mut buf = vec![0u8; 8192];
            let n = (&f).read(&mut buf).unwrap_or(0);
            report.check(n > 0, || "read from /dev/kmsg".into());
        }
        "packet-pipe" => {
            let mut fds = [0i32; 2];
            // SAFETY: fds is a valid array of two ints.
            let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_DIRECT) };
            assert_eq!(r, 0, "pipe2");
            for m in [&b"one"[..], &b"second"[..]] {
                // SAFETY: writes a literal into our pipe.
                let w = unsafe { libc::write(fds[1], m.as_ptr().cast(), m.len()) };
                assert_eq!(w, m.len() as isize);
            }
            proto.ready_and_wait();
            let mut sizes = Vec::new();
            for _ in 0..2 {
                let mut buf = [0u8; 64];
                // SAFETY: buf is valid for its length.
                sizes.push(unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) });
            }
            report.eq("packet sizes", vec![3, 6], sizes);
        }
        "thread-child-pdeath" => {
            let dir = proto.dir().to_path_buf();
            let (tx, rx) = std::sync::mpsc::channel();
            let t = std::thread::spawn(move || {
                // SAFETY: the child only makes raw calls, polls the go
                // file and leaves with _exit.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // SAFETY: integer-only prctl.
                    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR2 as u64, 0, 0, 0) };
                    Proto::new(&dir).wait_go();
                    // SAFETY: ends the child.
                    unsafe { libc::_exit(0) };
                }
                tx.send(pid).expect("send");
                let mut st = 0;
                // SAFETY: waits for the child this thread forked.
                let r = unsafe { libc::waitpid(pid, &mut st, 0) };
                (r == pid, st)
            });
            let _child = rx.recv().expect("recv");
            proto.ready_and_wait();
            match t.join() {
                Ok((waited, st)) => report.check(waited && libc::WIFEXITED(st), || {
                    format!("child of the thread: status {st:#x}")
                }),
                Err(_) => report.fail("thread panicked"),
            }
        }
        "mqueue" => {
            let name = format!("/stasis-tp-{}\0", std::process::id());
            // SAFETY: a NUL-terminated name; default attributes.
            let q = unsafe {
                libc::mq_open(
                    name.as_ptr().cast(),
                    libc::O_RDWR | libc::O_CREAT,
                    0o600,
                    std::ptr::null_mut::<libc::mq_attr>(),
                )
            };
            assert!(q >= 0, "mq_open");
            // SAFETY: the name is ours; the queue stays open through q.
            unsafe {
                libc::mq_unlink(name.as_ptr().cast());
                assert_eq!(libc::mq_send(q, b"hi".as_ptr().cast(), 2, 0), 0, "mq_send");
            }
            proto.ready_and_wait();
            let mut buf = [0u8; 8192];
            // SAFETY: buf is big enough for the default message size.
            let n = unsafe {
                libc::mq_receive(q, buf.as_mut_ptr().cast(), buf.len(), std::ptr::null_mut())
            };
            report.eq("queued message", 2, n);
        }
        "detached-mount" => {
            const OPEN_TREE_CLONE: u64 = 1;
            // SAFETY: open_tree with a NUL-terminated path returns a new descriptor.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    c"/tmp".as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as u64,
                )
            };
            assert!(fd >= 0, "open_tree");
            proto.ready_and_wait();
            // SAFETY: fstat into a zeroed buffer of the right type.
            let r = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstat(fd as i32, &mut st)
            };
            report.eq("fstat of the detached mount", 0, r);
        }
        "keyring" => {
            // KEYCTL_GET_KEYRING_ID of KEY_SPEC_PROCESS_KEYRING, created.
            // SAFETY: integer-only keyctl.
            let key = unsafe { libc::syscall(libc::SYS_keyctl, 0i64, -2i64, 1i64) };
            assert!(key > 0, "process keyring");
            proto.ready_and_wait();
            // SAFETY: integer-only keyctl.
            let now = unsafe { libc::syscall(libc::SYS_keyctl, 0i64, -2i64, 0i64) };
            report.eq("process keyring", key, now);
        }
        "autogroup" => {
            std::fs::write("/proc/self/autogroup", "5").expect("write autogroup");
            let nice = || std::fs::read_to_string("/proc/self/autogroup").unwrap_or_default();
            let before = nice();
            proto.ready_and_wait();
            report.eq("autogroup", before, nice());
        }
        "thread-pdeath" => {
            let dir = proto.dir().to_path_buf();
            let t = std::thread::spawn(move || {
                // SAFETY: integer-only prctl for this thread.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1 as u64, 0, 0, 0) };
                Proto::new(&dir).wait_go();
                let mut sig = 0i32;
                // SAFETY: PR_GET_PDEATHSIG writes an int.
                unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &raw mut sig) };
                sig
            });
            proto.ready_and_wait();
            match t.join() {
                Ok(sig) => report.eq("thread's parent-death signal", libc::SIGUSR1, sig),
                Err(_) => report.fail("thread panicked"),
            }
        }
        "guard" => {
            const MADV_GUARD_INSTALL: i32 = 102;
            let pg = stasis_tests::page_size();
            let m = stasis_tests::Mapping::anon(4 * pg);
            m.bytes_mut()[0] = 7;
            // SAFETY: advice on the second page of our own mapping.
            let r = unsafe { libc::madvise(m.addr.add(pg).cast(), pg, MADV_GUARD_INSTALL) };
            if r != 0 {
                proto.ready_and_wait();
                report.skip("MADV_GUARD_INSTALL not supported by this kernel");
                proto.finish(&report);
            }
            proto.ready_and_wait();
            report.eq("first page", 7, m.bytes()[0]);
        }
        "pty-queued" => {
            // SAFETY: plain calls on descriptors we own.
            unsafe {
                let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
                assert!(m >= 0 && libc::unlockpt(m) == 0, "posix_openpt");
                let sl = libc::open(libc::ptsname(m), libc::O_RDWR | libc::O_NOCTTY);
                assert!(sl >= 0, "open slave");
                let msg = b"typed ahead\n";
                assert_eq!(
                    libc::write(m, msg.as_ptr().cast(), msg.len()),
                    msg.len() as isize
                );
            }
            proto.ready_and_wait();
        }
        "ptmx" | "two-ttys" => {
            // A new pseudo-terminal: (master, slave).
            let pty = || {
                // SAFETY: plain calls on descriptors we own; ptsname's
                // buffer is read before the next call.
                unsafe {
                    let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
                    assert!(m >= 0, "posix_openpt");
                    assert_eq!(libc::grantpt(m), 0);
                    assert_eq!(libc::unlockpt(m), 0);
                    let sl = libc::open(libc::ptsname(m), libc::O_RDWR | libc::O_NOCTTY);
                    assert!(sl >= 0, "open slave");
                    (m, sl)
                }
            };
            let (m1, s1) = pty();
            let (m2, s2) = pty();
            // `two-ttys` keeps both slaves (its masters closed: the slaves
            // stay valid, hung-up terminal descriptors); `ptmx` keeps one
            // master only.
            if what == "two-ttys" {
                // SAFETY: closing our own descriptors.
                unsafe {
                    libc::close(m1);
                    libc::close(m2);
                }
            } else {
                // SAFETY: closing our own descriptors.
                unsafe {
                    libc::close(s1);
                    libc::close(m2);
                    libc::close(s2);
                }
            }
            let hup = |fd: i32| {
                let mut p = libc::pollfd {
                    fd,
                    events: 0,
                    revents: 0,
                };
                // SAFETY: one pollfd, no wait.
                unsafe { libc::poll(&mut p, 1, 0) };
                p.revents & libc::POLLHUP != 0
            };
            let hup_before = hup(m1);
            proto.ready_and_wait();
            let alive = |fd: i32| {
                // SAFETY: fcntl query on a descriptor number.
                unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
            };
            if what == "two-ttys" {
                report.check(alive(s1) && alive(s2), || {
                    "a slave descriptor is gone".into()
                });
            } else {
                report.check(alive(m1), || "the master descriptor is gone".into());
                report.eq(
                    "master polls POLLHUP (its slave closed)",
                    (hup_before, true),
                    (hup(m1), true),
                );
            }
        }
        other => panic!("unknown --with {other}"),
    }
    proto.finish(&report);
}

/// Installs an allow-all seccomp filter on the calling thread.
fn allow_all_seccomp() -> bool {
    // One instruction: BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
    let insn = libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    };
    let prog = libc::sock_fprog {
        len: 1,
        filter: &insn as *const libc::sock_filter as *mut libc::sock_filter,
    };
    // Root: CAP_SYS_ADMIN allows it without no_new_privs (which is per
    // thread, and would make the thread's credentials differ too).
    // SAFETY: seccomp reads the valid program above.
    unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1u64,
            0u64,
            &prog as *const libc::sock_fprog,
        ) == 0
    }
}

/// A 32-bit system call through `int 0x80` with one argument (in ebx,
/// which LLVM reserves, hence the exchanges).
fn int80(nr: u32, arg: u64) -> i64 {
    let ret: u64;
    // SAFETY: the 32-bit syscall entry clobbers nothing but eax (and the
    // flags); the callers pass a pointer below 4 GiB to memory they own.
    unsafe {
        core::arch::asm!(
            "xchg rbx, {a}",
            "int 0x80",
            "xchg rbx, {a}",
            a = inout(reg) arg => _,
            inlateout("rax") u64::from(nr) => ret,
        );
    }
    i64::from(ret as u32 as i32)
}

/// Seizes `pid`, sets DR0 = 0x1000 and DR7 = L0 (an execute breakpoint),
/// detaches. Offsets are those of `u_debugreg` in the x86-64 `struct user`.
fn set_breakpoint(pid: i32) -> bool {
    const DEBUGREG: usize = 848;
    // SAFETY: ptrace requests on the given process, with integer arguments.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) != 0
            || libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0usize, 0usize) != 0
        {
            return false;
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, libc::__WALL);
        let ok = libc::ptrace(libc::PTRACE_POKEUSER, pid, DEBUGREG, 0x1000usize) == 0
            && libc::ptrace(libc::PTRACE_POKEUSER, pid, DEBUGREG + 7 * 8, 1usize) == 0;
        libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize);
        ok
    }
}
