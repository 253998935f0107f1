//! tp_userns: a tree in a user namespace of its own survives
//! checkpoint/restore. Run as PID 1 of `stasis run --user` (root inside,
//! 0..65536 mapped to 100000.. outside).
//!
//! Usage: `tp_userns WORKDIR [--corrupt] [--uts] [--ipc]`
//!
//! The root (uid 0 inside, every capability) forks a child that takes
//! uids 1000/1001/1002, gids 2000/2001/2002 and groups 5, 6 (losing its
//! capabilities but CAP_KILL, kept through keep-caps). Both record
//! before ready, and check after go: uid_map, gid_map, projid_map and
//! setgroups; their ids and groups; every capability set; that a file
//! each creates is owned by its ids inside (the harness checks the host
//! sees 100000 + id). The root also checks the child's credentials as
//! /proc/CHILD/status shows them, and that its user namespace owns its
//! PID and mount namespaces (and with `--uts` the UTS namespace it
//! made, named tp-userns-uts, before forking). `--ipc`: an IPC
//! namespace of its own too (owned by the user namespace, checked), with
//! a SysV shared memory segment whose key, size and contents must come
//! back.

use stasis_tests::{Proto, Report};

/// Everything credential-like /proc/self shows.
fn creds(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut out: Vec<String> = status
        .lines()
        .filter(|l| {
            [
                "Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for f in ["uid_map", "gid_map", "projid_map", "setgroups"] {
        let t = std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        out.push(format!(
            "{f}: {}",
            t.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    out.join("\n")
}

/// Creates WORK/NAME and returns the owner it has inside.
fn make_file(proto: &Proto, name: &str) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let p = proto.path(name);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, "x").ok()?;
    let m = std::fs::metadata(&p).ok()?;
    Some((m.uid(), m.gid()))
}

/// The user namespace owning namespace `ns` of this process
/// (ioctl NS_GET_USERNS), by inode.
fn owner(ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    const NS_GET_USERNS: libc::c_ulong = 0xb7 << 8 | 0x1;
    let Ok(f) = std::fs::File::open(format!("/proc/self/ns/{ns}")) else {
        return 0;
    };
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor.
    let fd = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), NS_GET_USERNS) };
    if fd < 0 {
        return 0;
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let u = std::fs::File::from(unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    u.metadata().map_or(0, |m| m.ino())
}

/// Which of the tree's namespaces its own user namespace does not own.
fn not_owned(with_uts: bool, with_ipc: bool) -> Vec<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self/ns/user").map_or(1, |m| m.ino());
    let mut kinds = vec!["pid", "mnt"];
    if with_uts {
        kinds.push("uts");
    }
    if with_ipc {
        kinds.push("ipc");
    }
    kinds.into_iter().filter(|k| owner(k) != me).collect()
}

const SHM_KEY: libc::key_t = 0x7573_6e73;
const SHM_TEXT: &[u8] = b"tp_userns segment";

/// Makes (if needed) the segment SHM_KEY, writes SHM_TEXT into it the
/// first time, and returns what it holds.
fn shm_write() -> Option<Vec<u8>> {
    // SAFETY: SysV calls on a 4096-byte segment attached for the copy.
    unsafe {
        let id = libc::shmget(SHM_KEY, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
        let (id, fresh) = if id >= 0 {
            (id, true)
        } else {
            (libc::shmget(SHM_KEY, 4096, 0), false)
        };
        if id < 0 {
            return None;
        }
        let p = libc::shmat(id, std::ptr::null(), 0);
        if p as isize == -1 {
            return None;
        }
        if fresh {
            std::ptr::copy_nonoverlapping(SHM_TEXT.as_ptr(), p.cast(), SHM_TEXT.len());
        }
        let v = std::slice::from_raw_parts(p.cast::<u8>(), SHM_TEXT.len()).to_vec();
        libc::shmdt(p);
        Some(v)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default()
}

fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    let mut report = Report::new();
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    if map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"] {
        report.skip("not in a user namespace of its own (run it with `stasis run --user`)");
        proto.finish(&report);
    }
    let uts = args.flag("uts");
    if uts {
        let name = b"tp-userns-uts";
        // SAFETY: a single-threaded process unshares its UTS namespace and names it.
        let ok = unsafe {
            libc::unshare(libc::CLONE_NEWUTS) == 0
                && libc::sethostname(name.as_ptr().cast(), name.len()) == 0
        };
        if !ok {
            stasis_tests::fatal("unshare(CLONE_NEWUTS) + sethostname");
        }
    }
    let ipc = args.flag("ipc");
    // SAFETY: a single-threaded process unshares its IPC namespace.
    if ipc && unsafe { libc::unshare(libc::CLONE_NEWIPC) } != 0 {
        stasis_tests::fatal("unshare(CLONE_NEWIPC)");
    }
    if ipc && shm_write() != Some(SHM_TEXT.to_vec()) {
        stasis_tests::fatal("a SysV segment in the IPC namespace");
    }
    let mut fds = [0i32; 2];
    // SAFETY: valid out array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        stasis_tests::fatal("pipe2");
    }
    // SAFETY: single-threaded; the child leaves through _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: credential calls on ourselves; the pipe write end is ours.
        let code = unsafe {
            let groups = [5u32, 6];
            let ok = libc::setgroups(2, groups.as_ptr()) == 0
                && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0
                && libc::setresgid(2000, 2001, 2002) == 0
                && libc::setresuid(1000, 1001, 1002) == 0;
            // Keep CAP_KILL (5) permitted and effective.
            let hdr = [0x2008_0522u32, 0];
            let data = [1u32 << 5, 1 << 5, 0, 0, 0, 0];
            let ok = ok && libc::syscall(libc::SYS_capset, hdr.as_ptr(), data.as_ptr()) == 0;
            let before = creds("self");
            let file = make_file(&proto, "owned-child");
            libc::close(fds[0]);
            libc::write(fds[1], b"c".as_ptr().cast(), 1);
            libc::close(fds[1]);
            proto.wait_go();
            let after = creds("self");
            let file2 = make_file(&proto, "owned-child");
            if !ok || before != after || file != file2 || file != Some((1001, 2001)) {
                let _ = std::fs::write(
                    proto.path("child-fail"),
                    format!(
                        "set {ok}; before {before:?} after {after:?}; files {file:?} {file2:?}"
                    ),
                );
                1
            } else {
                0
            }
        };
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    let mut b = 0u8;
    // SAFETY: closing our write end, reading one byte into a local.
    unsafe {
        libc::close(fds[1]);
        libc::read(fds[0], (&raw mut b).cast(), 1);
        libc::close(fds[0]);
    }
    let child_s = child.to_string();
    let mut before = creds("self");
    let child_before = creds(&child_s);
    let file = make_file(&proto, "owned-root");
    let host_before = hostname();
    report.eq(
        "namespaces not owned by the user namespace before",
        Vec::<&str>::new(),
        not_owned(uts, ipc),
    );
    if corrupt {
        before = before.replace("uid_map: 0 100000", "uid_map: 0 100001");
    }
    proto.ready();
    proto.wait_go();
    report.eq("credentials and maps", before, creds("self"));
    report.eq("the child's credentials", child_before, creds(&child_s));
    report.eq("owner of a new file", file, make_file(&proto, "owned-root"));
    report.eq("ids", (0, 0), ids());
    report.eq("host name", host_before, hostname());
    if ipc {
        report.eq(
            "the SysV segment of its IPC namespace",
            Some(SHM_TEXT.to_vec()),
            shm_write(),
        );
    }
    report.eq(
        "namespaces not owned by the user namespace",
        Vec::<&str>::new(),
        not_owned(uts, ipc),
    );
    let mut st = 0;
    // SAFETY: our child; valid out pointer.
    let r = unsafe { libc::waitpid(child, &mut st, 0) };
    let why = std::fs::read_to_string(proto.path("child-fail")).unwrap_or_default();
    report.check(
        r == child && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        || format!("the child failed: {why}"),
    );
    proto.finish(&report);
}
