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
        "XSAVE area via PTRACE_GETREGSET(NT_X86_XSTATE)",
    );
    add(
        "rseq",
        file_exists("/proc/self/status"),
        "PTRACE_GET_RSEQ_CONFIGURATION",
    );
    add(
        "soft_dirty",
        false,
        "not built into this kernel: no incremental pre-dump by soft-dirty",
    );
    add(
        "userfaultfd",
        file_exists("/proc/sys/vm/unprivileged_userfaultfd") || file_exists("/dev/userfaultfd"),
        "lazy restore (not used yet)",
    );
    add(
        "cgroup2",
        file_exists("/sys/fs/cgroup/unified/cgroup.controllers")
            || file_exists("/sys/fs/cgroup/cgroup.controllers"),
        "cgroup v2",
    );
    v
}
