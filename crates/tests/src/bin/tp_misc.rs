//! tp_misc: per-process attributes survive checkpoint/restore.
//!
//! Usage: `tp_misc WORKDIR [--corrupt]`
//!
//! State (only lowering limits and dropping capabilities, so it works as root
//! without CAP_SYS_RESOURCE): lowered RLIMIT_NOFILE soft, RLIMIT_CORE soft and
//! hard, RLIMIT_STACK soft, RLIMIT_MSGQUEUE hard; comm "tp-misc-name";
//! personality | UNAME26; groups [1234, 5678]; resgid (1000, 1001, 1002);
//! resuid (0, 0, 0); CAP_NET_RAW dropped from the effective set,
//! CAP_SYS_BOOT from the bounding set, CAP_NET_BIND_SERVICE inheritable and
//! ambient; securebits KEEP_CAPS; no_new_privs; SCHED_BATCH at nice 5;
//! pdeathsig SIGUSR1 (handled, so a parent's death does not kill us);
//! dumpable 0; a GS base, an SS_AUTODISARM sigaltstack, a file open with
//! O_NOATIME|O_SYNC|O_DSYNC, and its command line, environment and auxv
//! as /proc shows them; bound to the last CPU (sched_setaffinity) when there are
//! several. After go every one is read back and compared, and
//! /proc/self/exe still names the same file.

use stasis_tests::{status_field, Proto, Report};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_BOOT: i32 = 22;
const SECBIT_KEEP_CAPS: i32 = 1 << 4;
const UNAME26: u32 = 0x0020000;
const NAME: &str = "tp-misc-name";
const STATUS_KEYS: [&str; 12] = [
    "Name",
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Cpus_allowed_list",
];

static PDEATH_COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_pdeath(_sig: i32) {
    PDEATH_COUNT.fetch_add(1, SeqCst);
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

const CAP_V3: u32 = 0x2008_0522;

fn capget() -> [CapData; 2] {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array as the v3 ABI requires.
    let r = unsafe { libc::syscall(libc::SYS_capget, &raw mut hdr, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget");
    data
}

fn capset(data: &[CapData; 2]) {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: as for capget.
    let r = unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) };
    if r != 0 {
        stasis_tests::fatal("capset");
    }
}

fn prctl(op: i32, arg: u64) -> i32 {
    // SAFETY: the ops used here take integer arguments only.
    unsafe { libc::prctl(op, arg, 0u64, 0u64, 0u64) }
}

fn rlimits() -> Vec<(u64, u64)> {
    (0..16)
        .map(|r| {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: l is a valid out buffer.
            assert_eq!(unsafe { libc::getrlimit(r, &mut l) }, 0);
            (l.rlim_cur, l.rlim_max)
        })
        .collect()
}

fn lower(resource: u32, cur: Option<u64>, max: Option<u64>) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: l is a valid in/out buffer.
    unsafe {
        assert_eq!(libc::getrlimit(resource, &mut l), 0);
        if let Some(m) = max {
            l.rlim_max = l.rlim_max.min(m);
        }
        if let Some(c) = cur {
            l.rlim_cur = c.min(l.rlim_max);
        }
        l.rlim_cur = l.rlim_cur.min(l.rlim_max);
        if libc::setrlimit(resource, &l) != 0 {
            stasis_tests::fatal(&format!("setrlimit({resource})"));
        }
    }
}

fn comm() -> String {
    let mut buf = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn resuid() -> [u32; 3] {
    let mut r = [0u32; 3];
    // SAFETY: three valid out pointers.
    unsafe { libc::getresuid(&mut r[0], &mut r[1], &mut r[2]) };
    r
}

fn resgid() -> [u32; 3] {
    let mut r = [0u32; 3];
    // SAFETY: three valid out pointers.
    unsafe { libc::getresgid(&mut r[0], &mut r[1], &mut r[2]) };
    r
}

fn groups() -> Vec<u32> {
    let mut g = vec![0u32; 64];
    // SAFETY: g has 64 entries.
    let n = unsafe { libc::getgroups(64, g.as_mut_ptr()) };
    g.truncate(usize::try_from(n).expect("getgroups"));
    g
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    rlimits: Vec<(u64, u64)>,
    comm: String,
    proc_comm: String,
    personality: i32,
    exe: String,
    exe_id: (u64, u64),
    resuid: [u32; 3],
    resgid: [u32; 3],
    groups: Vec<u32>,
    caps: [CapData; 2],
    securebits: i32,
    no_new_privs: i32,
    policy: i32,
    nice: i32,
    pdeathsig: i32,
    dumpable: i32,
    status: Vec<Option<String>>,
}

fn snapshot() -> Snapshot {
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let meta = std::fs::metadata("/proc/self/exe").expect("stat /proc/self/exe");
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    let mut pdeathsig = 0i32;
    // SAFETY: PR_GET_PDEATHSIG writes an int.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &raw mut pdeathsig) };
    // SAFETY: errno is cleared so a -1 return of getpriority is unambiguous.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    Snapshot {
        rlimits: rlimits(),
        comm: comm(),
        proc_comm: std::fs::read_to_string("/proc/self/comm")
            .unwrap_or_default()
            .trim_end()
            .to_string(),
        // SAFETY: 0xffffffff only queries.
        personality: unsafe { libc::personality(0xffff_ffff) },
        exe,
        exe_id: (meta.dev(), meta.ino()),
        resuid: resuid(),
        resgid: resgid(),
        groups: groups(),
        caps: capget(),
        securebits: prctl(libc::PR_GET_SECUREBITS, 0),
        no_new_privs: prctl(libc::PR_GET_NO_NEW_PRIVS, 0),
        // SAFETY: queries our own policy.
        policy: unsafe { libc::sched_getscheduler(0) },
        nice,
        pdeathsig,
        dumpable: prctl(libc::PR_GET_DUMPABLE, 0),
        status: STATUS_KEYS
            .iter()
            .map(|k| status_field(&status, k))
            .collect(),
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();

    lower(libc::RLIMIT_NOFILE, Some(512), None);
    lower(libc::RLIMIT_CORE, Some(0), Some(1 << 20));
    lower(libc::RLIMIT_STACK, Some(6 << 20), None);
    lower(libc::RLIMIT_MSGQUEUE, None, Some(400_000));
    // SAFETY: NAME is a NUL-terminated literal of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"tp-misc-name".as_ptr()) };
    // SAFETY: querying and setting the personality has no memory effects.
    let pers0 = unsafe { libc::personality(0xffff_ffff) };
    // SAFETY: as above.
    unsafe { libc::personality(u64::from(pers0.unsigned_abs() | UNAME26)) };
    let grps = [1234u32, 5678];
    // SAFETY: grps is a valid array of two gids.
    unsafe {
        assert_eq!(libc::setgroups(2, grps.as_ptr()), 0, "setgroups");
        assert_eq!(libc::setresgid(1000, 1001, 1002), 0, "setresgid");
        assert_eq!(libc::setresuid(0, 0, 0), 0, "setresuid");
    }
    let mut caps = capget();
    caps[0].inheritable |= 1 << CAP_NET_BIND_SERVICE;
    caps[0].effective &= !(1 << CAP_NET_RAW);
    capset(&caps);
    // SAFETY: integer arguments only.
    let amb = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as u64,
            u64::from(CAP_NET_BIND_SERVICE),
            0u64,
            0u64,
        )
    };
    assert_eq!(amb, 0, "PR_CAP_AMBIENT_RAISE");
    assert_eq!(
        prctl(libc::PR_CAPBSET_DROP, CAP_SYS_BOOT as u64),
        0,
        "PR_CAPBSET_DROP"
    );
    assert_eq!(
        prctl(libc::PR_SET_SECUREBITS, SECBIT_KEEP_CAPS as u64),
        0,
        "PR_SET_SECUREBITS"
    );
    assert_eq!(
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1),
        0,
        "PR_SET_NO_NEW_PRIVS"
    );
    // SAFETY: cpu_set_t is a plain bitmask; CPU_SET stays inside it.
    unsafe {
        let n = libc::sysconf(libc::_SC_NPROCESSORS_ONLN);
        if n > 1 {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(usize::try_from(n - 1).expect("cpu"), &mut set);
            let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            assert_eq!(r, 0, "sched_setaffinity");
        }
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is valid; only our own scheduling changes.
    unsafe {
        assert_eq!(
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param),
            0,
            "sched_setscheduler"
        );
        assert_eq!(
            libc::setpriority(libc::PRIO_PROCESS, 0, 5),
            0,
            "setpriority"
        );
        libc::signal(
            libc::SIGUSR1,
            on_pdeath as extern "C" fn(i32) as libc::sighandler_t,
        );
    }
    assert_eq!(
        prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1 as u64),
        0,
        "PR_SET_PDEATHSIG"
    );
    assert_eq!(prctl(libc::PR_SET_DUMPABLE, 0), 0, "PR_SET_DUMPABLE");

    // Views of the process's own memory and registers: command line,
    // environment and auxiliary vector (from /proc), a GS base, an
    // SS_AUTODISARM altstack, and status flags of a regular file.
    const ARCH_SET_GS: i32 = 0x1001;
    const ARCH_GET_GS: i32 = 0x1004;
    const SS_AUTODISARM: i32 = 1 << 31;
    let gs_value: u64 = 0x7e57_0000_1234;
    let altstack: &'static mut [u8] = Box::leak(vec![0u8; 64 << 10].into_boxed_slice());
    let flag_path = proto.path("flags.bin");
    std::fs::write(&flag_path, b"x").expect("flags.bin");
    // SAFETY: arch_prctl and sigaltstack on our own thread with valid
    // arguments (the leaked buffer lives for the rest of the program);
    // open of a NUL-terminated path.
    let flag_fd = unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_arch_prctl, ARCH_SET_GS, gs_value),
            0
        );
        let ss = libc::stack_t {
            ss_sp: altstack.as_mut_ptr().cast(),
            ss_flags: SS_AUTODISARM,
            ss_size: altstack.len(),
        };
        assert_eq!(
            libc::sigaltstack(&ss, std::ptr::null_mut()),
            0,
            "sigaltstack"
        );
        let c = std::ffi::CString::new(flag_path.as_os_str().as_encoded_bytes()).expect("path");
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_NOATIME | libc::O_SYNC | libc::O_DSYNC,
        )
    };
    assert!(flag_fd >= 0, "open flags.bin");
    let views = || {
        let mut gs = 0u64;
        let mut ss: libc::stack_t = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: 0,
            ss_size: 0,
        };
        // SAFETY: out pointers to live locals; fcntl query on our descriptor.
        let fl = unsafe {
            libc::syscall(libc::SYS_arch_prctl, ARCH_GET_GS, &raw mut gs);
            libc::sigaltstack(std::ptr::null(), &mut ss);
            libc::fcntl(flag_fd, libc::F_GETFL)
        };
        (
            std::fs::read("/proc/self/cmdline").unwrap_or_default(),
            std::fs::read("/proc/self/environ").unwrap_or_default(),
            std::fs::read("/proc/self/auxv").unwrap_or_default(),
            gs,
            (ss.ss_sp as usize, ss.ss_flags, ss.ss_size),
            fl,
        )
    };
    let views_before = views();
    let before = snapshot();
    // The setup took effect (so the comparison below is not vacuous).
    assert_eq!(before.comm, NAME);
    assert_eq!(before.groups, grps);
    assert_eq!(before.resgid, [1000, 1001, 1002]);
    assert_eq!(before.nice, 5);
    assert_eq!(before.policy, libc::SCHED_BATCH);
    assert_eq!(before.dumpable, 0);
    assert_eq!(before.pdeathsig, libc::SIGUSR1);
    assert_eq!(before.caps[0].effective & (1 << CAP_NET_RAW), 0);

    proto.ready_and_wait();

    if args.corrupt() {
        // SAFETY: only changes our own nice value.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 6) };
    }
    let after = snapshot();
    let views_after = views();
    report.eq("/proc/self/cmdline", &views_before.0, &views_after.0);
    report.eq("/proc/self/environ", &views_before.1, &views_after.1);
    report.eq("/proc/self/auxv", &views_before.2, &views_after.2);
    report.eq("GS base", views_before.3, views_after.3);
    report.eq("sigaltstack (SS_AUTODISARM)", views_before.4, views_after.4);
    report.eq(
        "O_NOATIME|O_SYNC|O_DSYNC file flags",
        views_before.5,
        views_after.5,
    );
    report.eq("rlimits", &before.rlimits, &after.rlimits);
    report.eq("comm (PR_GET_NAME)", &before.comm, &after.comm);
    report.eq("/proc/self/comm", &before.proc_comm, &after.proc_comm);
    report.eq("personality", before.personality, after.personality);
    // SAFETY: all-zero utsname is valid; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid out buffer.
    unsafe { libc::uname(&mut uts) };
    // SAFETY: the kernel NUL-terminates release.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    report.check(release.starts_with("2.6."), || {
        format!("UNAME26 not in effect: uname release {release}")
    });
    report.eq("/proc/self/exe", &before.exe, &after.exe);
    report.eq("/proc/self/exe dev/ino", before.exe_id, after.exe_id);
    report.eq("resuid", before.resuid, after.resuid);
    report.eq("resgid", before.resgid, after.resgid);
    report.eq("groups", &before.groups, &after.groups);
    report.eq("capabilities (capget)", before.caps, after.caps);
    report.eq("securebits", before.securebits, after.securebits);
    report.eq("no_new_privs", before.no_new_privs, after.no_new_privs);
    report.eq("scheduling policy", before.policy, after.policy);
    report.eq("nice", before.nice, after.nice);
    report.eq("pdeathsig", before.pdeathsig, after.pdeathsig);
    report.eq("dumpable", before.dumpable, after.dumpable);
    for (i, key) in STATUS_KEYS.iter().enumerate() {
        report.eq(
            &format!("/proc/self/status {key}"),
            &before.status[i],
            &after.status[i],
        );
    }
    if PDEATH_COUNT.load(SeqCst) != 0 {
        // Allowed: a restore's helper parent may exit and fire pdeathsig.
        eprintln!(
            "note: pdeathsig delivered {} times",
            PDEATH_COUNT.load(SeqCst)
        );
    }
    proto.finish(&report);
}
