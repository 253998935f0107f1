//! Probe the kernel once for the interfaces stasis relies on.

use std::path::Path;

/// One probed feature: its name, whether it works, and a note.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    pub ok: bool,
    pub note: String,
}

fn file_exists(p: &str) -> bool {
    Path::new(p).exists()
}

fn caps_effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapEff:"))
                .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn cpu_has(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == flag))
        })
        .unwrap_or(false)
}

/// Probes every feature. Cheap: a few /proc reads and harmless syscalls.
pub fn probe() -> Vec<Feature> {
    let caps = caps_effective();
    let cap = |n: u32| caps & (1u64 << n) != 0;
    let mut v = Vec::new();
    let mut add = |name, ok: bool, note: &str| {
        v.push(Feature {
            name,
            ok,
            note: note.to_string(),
        })
    };
    add(
        "ptrace",
        cap(19),
        "CAP_SYS_PTRACE: seize and inspect any process",
    );
    add(
        "checkpoint_restore",
        cap(40) || cap(21),
        "CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN): clone3 set_tid, exe link",
    );
    add(
        "map_files",
        file_exists("/proc/self/map_files"),
        "/proc/PID/map_files",
    );
    add(
        "pagemap",
        file_exists("/proc/self/pagemap"),
        "/proc/PID/pagemap",
    );
    add(
        "timers",
        file_exists("/proc/self/timers"),
        "/proc/PID/timers (CONFIG_CHECKPOINT_RESTORE)",
    );
    add(
        "children",
        file_exists(&format!(
            "/proc/self/task/{}/children",
            crate::util::gettid()
        )),
        "/proc/PID/task/TID/children",
    );
    // SAFETY: pidfd_open on ourselves; the fd is closed right away.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if pidfd >= 0 {
        // SAFETY: closing the fd we just opened.
        unsafe { libc::close(pidfd as i32) };
    }
    add("pidfd", pidfd >= 0, "pidfd_open / pidfd_getfd");
    // clone3 with a bad size returns E2BIG/EINVAL when it exists, ENOSYS otherwise.
    // SAFETY: a null args pointer with size 0 is rejected before anything happens.
    let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
    let e = crate::last_errno();
    add(
        "clone3_set_tid",
        r == -1 && e != libc::ENOSYS,
        "clone3(2) with set_tid",
    );
    let mut rs = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    let _ = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rs) };
    add(
        "cap_sys_resource",
        cap(24),
        "CAP_SYS_RESOURCE: raising hard rlimits (not needed otherwise)",
    );
    add(
        "avx512",
        cpu_has("avx512f"),
        "AVX-512 register state (saved through XSAVE)",
    );
    add(
        "xsave",
        cpu_has("xsave"),
        "XSAVE area via PTRACE_GETREGSET(NT_X86_XSTATE); layout from CPUID leaf 0xD",
    );
    add(
        "amx",
        cpu_has("amx_tile"),
        "AMX tile state (TILECFG, TILEDATA) and its ARCH_REQ_XCOMP_PERM permission",
    );
    // rseq(NULL, 0, 0, 0) is refused with EINVAL where the call exists.
    // SAFETY: invalid arguments are rejected before anything happens.
    let r = unsafe { libc::syscall(libc::SYS_rseq, 0usize, 0u32, 0i32, 0u32) };
    let rseq_ok = r == -1 && crate::last_errno() != libc::ENOSYS;
    add(
        "rseq",
        rseq_ok,
        "rseq(2), saved and re-registered per thread",
    );
    // The kernel marks new VMAs VM_SOFTDIRTY ("sd") only when soft-dirty
    // tracking is built in.
    let sd = std::fs::read_to_string("/proc/self/smaps")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|w| w == "sd"))
        })
        .unwrap_or(false);
    add(
        "soft_dirty",
        sd,
        "soft-dirty tracking (incremental pre-dump; not used yet)",
    );
    let probe = 0u64;
    let page = std::ptr::addr_of!(probe) as u64 & !4095;
    let scan_ok = crate::pagemap::Pagemap::open(crate::util::getpid())
        .and_then(|pm| {
            let q = crate::pagemap::Query {
                inverted: 0,
                mask: 0,
                anyof: crate::pagemap::PAGE_IS_PRESENT,
            };
            pm.scan(page, page + 4096, q, &mut Vec::new())
        })
        .is_ok();
    add(
        "pagemap_scan",
        scan_ok,
        "ioctl(PAGEMAP_SCAN): runs of present pages (Linux 6.7)",
    );
    // SAFETY: PR_TIMER_CREATE_RESTORE_IDS_GET only reads a flag.
    let t = unsafe { libc::prctl(77, 2u64, 0u64, 0u64, 0u64) };
    add(
        "timer_restore_ids",
        t >= 0,
        "prctl(PR_TIMER_CREATE_RESTORE_IDS): POSIX timers keep their ids (Linux 6.15)",
    );
    add(
        "userfaultfd",
        file_exists("/proc/sys/vm/unprivileged_userfaultfd") || file_exists("/dev/userfaultfd"),
        "pre-copy write tracking and lazy restore (restore --lazy-pages)",
    );
    add(
        "cgroup2",
        file_exists("/sys/fs/cgroup/unified/cgroup.controllers")
            || file_exists("/sys/fs/cgroup/cgroup.controllers"),
        "cgroup v2",
    );
    v
}
