//! Test program for `stasis run --user --uts --ipc --cgroup --time --net
//! --root DIR`: started as the tree's init in DIR (its work directory is
//! `/`, the rootfs itself).
//!
//! Usage: `tp_runknobs WORKDIR`
//!
//! It checks its namespaces (below), then names its host `knob-box` (domain `knob-dom`) and
//! leaves a SysV message (`knob-msg`) in a queue of key KEY. Before ready
//! and again after go it checks: it is PID 1; its user namespace is not
//! the initial one (its uid_map is not the identity); its UTS, IPC,
//! cgroup, time, network, mount and PID namespaces are each owned by its
//! user namespace (NS_GET_USERNS), so made with it; its network namespace
//! holds only lo; its root holds the marker
//! `/knob-root`. After go also: the host and domain names, and the queue
//! (same id) with its message.

use stasis_tests::{Proto, Report};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

const KEY: libc::key_t = 0x6b6e_6f62;
const MSG: &[u8] = b"knob-msg";
/// ioctl(2) on a namespace file: its owning user namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;
const OWNED: [&str; 7] = ["uts", "ipc", "cgroup", "time", "net", "mnt", "pid"];

#[repr(C)]
struct MsgBuf {
    mtype: libc::c_long,
    text: [u8; 64],
}

fn must(r: i64, what: &str) -> i64 {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

/// The inode of the user namespace owning namespace `ns`, or the error.
fn owner(ns: &str) -> Result<u64, String> {
    let f = std::fs::File::open(format!("/proc/self/ns/{ns}")).map_err(|e| e.to_string())?;
    // SAFETY: ioctl on a namespace descriptor we hold; returns a new fd.
    let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let path = format!("/proc/self/fd/{fd}");
    let ino = std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|e| e.to_string());
    // SAFETY: closing the descriptor the ioctl gave us.
    unsafe { libc::close(fd) };
    ino
}

fn ns_ino(ns: &str) -> u64 {
    std::fs::metadata(format!("/proc/self/ns/{ns}")).map_or(0, |m| m.ino())
}

fn namespaces(report: &mut Report) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    report.check(pid == 1, || format!("PID {pid}, not 1"));
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let fields: Vec<&str> = map.split_whitespace().collect();
    report.check(
        fields != ["0", "0", "4294967295"] && !fields.is_empty(),
        || format!("user namespace: uid_map {map:?} is the initial one"),
    );
    let user = ns_ino("user");
    for ns in OWNED {
        match owner(ns) {
            Ok(o) => report.check(o == user, || {
                format!("{ns} namespace: owned by user namespace {o}, not its own {user}")
            }),
            Err(e) => report.fail(format!(
                "{ns} namespace: owner not its user namespace ({e})"
            )),
        }
    }
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    let links: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    report.check(links == ["lo"], || {
        format!("network namespace: links {links:?}, not only lo")
    });
    report.check(std::path::Path::new("/knob-root").exists(), || {
        "root: no /knob-root (not the given root)".into()
    });
}

fn names() -> (String, String) {
    // SAFETY: utsname is plain bytes; all zeros is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a live out buffer.
    must(unsafe { libc::uname(&mut u) }.into(), "uname");
    let s = |b: &[libc::c_char]| {
        // SAFETY: uname fills NUL-terminated strings.
        unsafe { std::ffi::CStr::from_ptr(b.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (s(&u.nodename), s(&u.domainname))
}

fn main() {
    let (proto, _args) = Proto::from_args();
    let mut report = Report::new();
    // Its stdio (the harness's /dev/null and files) names files outside
    // its root, on mounts not in its namespace, which the dump refuses:
    // the marker and a log of its own instead.
    let files = (
        std::fs::File::open("/knob-root"),
        std::fs::File::create("/tp_runknobs.log"),
    );
    if let (Ok(i), Ok(o)) = files {
        // SAFETY: dup2 of descriptors we hold onto 0, 1, 2.
        unsafe {
            libc::dup2(i.as_raw_fd(), 0);
            libc::dup2(o.as_raw_fd(), 1);
            libc::dup2(o.as_raw_fd(), 2);
        }
    }
    // First: names set in a namespace not its own would fail (or leak).
    namespaces(&mut report);
    if !report.ok() {
        proto.finish(&report);
    }
    // SAFETY: plain syscalls on static buffers.
    let qid = unsafe {
        must(
            libc::sethostname(c"knob-box".as_ptr(), 8).into(),
            "sethostname",
        );
        must(
            libc::setdomainname(c"knob-dom".as_ptr(), 8).into(),
            "setdomainname",
        );
        let q = must(libc::msgget(KEY, libc::IPC_CREAT | 0o600).into(), "msgget") as i32;
        let mut m = MsgBuf {
            mtype: 7,
            text: [0; 64],
        };
        m.text[..MSG.len()].copy_from_slice(MSG);
        must(
            libc::msgsnd(q, std::ptr::addr_of!(m).cast(), MSG.len(), 0).into(),
            "msgsnd",
        );
        q
    };
    proto.ready_and_wait();
    namespaces(&mut report);
    let (host, domain) = names();
    report.eq("host name", "knob-box", host.as_str());
    report.eq("domain name", "knob-dom", domain.as_str());
    // SAFETY: msgget/msgrcv into a live local buffer.
    unsafe {
        let q = libc::msgget(KEY, 0);
        report.eq("message queue id", qid, q);
        let mut m = MsgBuf {
            mtype: 0,
            text: [0; 64],
        };
        let n = libc::msgrcv(q, std::ptr::addr_of_mut!(m).cast(), 64, 0, libc::IPC_NOWAIT);
        report.check(n >= 0, || {
            format!("msgrcv: {}", std::io::Error::last_os_error())
        });
        if n >= 0 {
            report.eq("message type", 7, m.mtype);
            report.eq("message", MSG, &m.text[..n as usize]);
        }
    }
    proto.finish(&report);
}
