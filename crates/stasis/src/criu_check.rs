//! `check`: criu's kernel feature names, answered for stasis.
//!
//! A feature is "supported" only where stasis uses it and the kernel has
//! it; a name for something stasis does not do (userns, TCP,
//! ...) is answered "not supported" whatever the kernel offers, so a caller
//! that gates a feature on `check --feature` never relies on it.

use stasis_sys::features::Feature;
use std::io::Read;
use std::os::fd::AsRawFd;

/// criu's category: 2 is checked by `--extra`/`--all`, 3 by
/// `--experimental`/`--all`; 0 is checked only by name.
struct CriuFeature {
    name: &'static str,
    category: u8,
    /// None: stasis does not do it.
    why_not: Option<&'static str>,
}

const fn f(name: &'static str, category: u8, why_not: Option<&'static str>) -> CriuFeature {
    CriuFeature {
        name,
        category,
        why_not,
    }
}

/// criu 4.1's feature names (`criu check --feature list`).
static CRIU_FEATURES: &[CriuFeature] = &[
    f("mnt_id", 2, None),
    // stasis tracks writes with userfaultfd write-protection (async) and
    // PAGEMAP_SCAN, both required anyway: no soft-dirty needed.
    f("mem_dirty_track", 2, None),
    f("aio_remap", 2, Some("AIO rings are refused")),
    f("timerfd", 2, None),
    f("tun", 0, None),
    f("tun_ns", 0, None),
    f("userns", 2, None),
    f("fdinfo_lock", 2, None),
    f("seccomp_suspend", 2, None),
    f("seccomp_filters", 2, None),
    f("loginuid", 2, None),
    f("cgroupns", 2, None),
    f("autofs", 3, Some("autofs mounts are not restored")),
    f("tcp_half_closed", 2, None),
    f("compat_cr", 3, Some("32-bit code is refused")),
    // Lazy restore (restore --lazy-pages): missing-mode userfaultfd with
    // the fork/remap/remove/unmap events.
    f("uffd", 2, None),
    f("uffd-noncoop", 2, None),
    f(
        "can_map_vdso",
        2,
        Some("the vDSO is moved with mremap, not mapped with arch_prctl"),
    ),
    f("sk_ns", 2, None),
    f("sk_unix_file", 0, None),
    f("net_diag_raw", 2, None),
    f("nsid", 0, None),
    f("link_nsid", 0, None),
    f(
        "kcmp_epoll",
        2,
        Some("epoll targets are found through fdinfo, not kcmp"),
    ),
    f("timens", 2, None),
    f("external_net_ns", 0, None),
    f("clone3_set_tid", 2, None),
    f("newifindex", 2, None),
    f("nftables", 0, None),
    f("has_ipt_legacy", 0, None),
    f(
        "pidfd_store",
        2,
        Some("the RPC pidfd_store_sk option is refused"),
    ),
    f("ns_pid", 2, None),
    f(
        "apparmor_stacking",
        2,
        Some("LSM profiles are not restored"),
    ),
    f("network_lock_nftables", 2, None),
    f(
        "sockopt_buf_lock",
        2,
        Some("SO_BUF_LOCK is not read (buffer sizes the program set are restored)"),
    ),
    f("memfd_hugetlb", 2, Some("hugetlb memfds are refused")),
    f("move_mount_set_group", 2, None),
    f("openat2", 2, Some("stasis does not use openat2")),
    f("get_rseq_conf", 2, None),
];

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    v >= (major, minor)
}

fn exists(path: &str) -> bool {
    std::path::Path::new(path).exists()
}

/// Whether a program is in PATH (or /usr/sbin, /sbin).
fn on_path(prog: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| std::path::Path::new(d).join(prog).is_file());
    found
}

fn fdinfo_has(file: &std::fs::File, key: &str) -> bool {
    let mut s = String::new();
    std::fs::File::open(format!("/proc/self/fdinfo/{}", file.as_raw_fd()))
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_ok()
        && s.lines().any(|l| l.starts_with(key))
}

/// Whether stasis can track a tree's writes between dumps (pre-dump,
/// `--track-mem`): userfaultfd write-protect in asynchronous mode
/// (Linux 6.7, with PAGEMAP_SCAN) and PAGEMAP_SCAN. `check --feature
/// mem_dirty_track` and the RPC's FEATURE_CHECK mem_track both ask this.
pub fn mem_track_ok(stasis: &[Feature]) -> bool {
    let probed = |n: &str| stasis.iter().any(|f| f.name == n && f.ok);
    probed("userfaultfd") && probed("pagemap_scan")
}

/// Probes the kernel for a feature stasis uses.
fn kernel_has(name: &str, stasis: &[Feature]) -> Result<(), String> {
    let probed = |n: &str| stasis.iter().any(|f| f.name == n && f.ok);
    let ok = match name {
        "mnt_id" => std::fs::File::open("/proc/self/status")
            .map(|f| fdinfo_has(&f, "mnt_id:"))
            .unwrap_or(false),
        "timerfd" => kernel_at_least(3, 17),
        "fdinfo_lock" => {
            let path = std::env::temp_dir().join(format!(".stasis-check-{}", std::process::id()));
            let r = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map(|f| f.lock().is_ok() && fdinfo_has(&f, "lock:"));
            let _ = std::fs::remove_file(&path);
            r.unwrap_or(false)
        }
        "clone3_set_tid" => probed("clone3_set_tid"),
        "ns_pid" => std::fs::read_to_string("/proc/self/status")
            .map(|s| s.lines().any(|l| l.starts_with("NSpid:")))
            .unwrap_or(false),
        "get_rseq_conf" => probed("rseq") && kernel_at_least(5, 13),
        "mem_dirty_track" => mem_track_ok(stasis),
        // UFFD_FEATURE_EVENT_UNMAP and the others arrived in 4.11.
        "uffd" | "uffd-noncoop" => probed("userfaultfd") && kernel_at_least(4, 11),
        // Persistent tun/tap devices in the tree's network namespace.
        "tun" | "tun_ns" => std::path::Path::new("/dev/net/tun").exists(),
        // The namespaces stasis dumps and makes again (docs/state.md).
        "userns" => exists("/proc/self/ns/user"),
        "cgroupns" => exists("/proc/self/ns/cgroup"),
        "timens" => exists("/proc/self/ns/time"),
        "nsid" | "link_nsid" | "external_net_ns" | "sk_ns" | "newifindex" => {
            exists("/proc/self/ns/net") && kernel_at_least(4, 19)
        }
        // PTRACE_O_SUSPEND_SECCOMP (4.3), PTRACE_SECCOMP_GET_FILTER (4.4).
        "seccomp_suspend" => kernel_at_least(4, 3),
        "seccomp_filters" => kernel_at_least(4, 4),
        "loginuid" => exists("/proc/self/loginuid"),
        // TCP repair of FIN_WAIT/CLOSE_WAIT/LAST_ACK/CLOSING connections.
        "tcp_half_closed" => kernel_at_least(4, 11),
        "sk_unix_file" => kernel_at_least(4, 10),
        "net_diag_raw" => kernel_at_least(4, 14),
        // The network lock and the namespace's ruleset use nft(8);
        // iptables-legacy tables are saved with iptables-legacy-save.
        "nftables" | "network_lock_nftables" => on_path("nft"),
        "has_ipt_legacy" => on_path("iptables-legacy-save"),
        "move_mount_set_group" => kernel_at_least(5, 15),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("the kernel does not provide it".into())
    }
}

/// Whether `name` (a criu or a stasis feature name) is supported: Ok, or
/// the reason. None: an unknown name.
pub fn feature(name: &str, stasis: &[Feature]) -> Option<Result<(), String>> {
    if let Some(cf) = CRIU_FEATURES.iter().find(|f| f.name == name) {
        return Some(match cf.why_not {
            Some(w) => Err(w.to_string()),
            None => kernel_has(name, stasis),
        });
    }
    stasis
        .iter()
        .find(|f| f.name == name)
        .map(|f| if f.ok { Ok(()) } else { Err(f.note.clone()) })
}

/// Every criu feature name.
pub fn names() -> impl Iterator<Item = &'static str> {
    CRIU_FEATURES.iter().map(|f| f.name)
}

/// criu's category-2/3 features (`--extra`, `--experimental`), answered:
/// (name, result).
pub fn categories(
    extra: bool,
    experimental: bool,
    stasis: &[Feature],
) -> Vec<(&'static str, Result<(), String>)> {
    CRIU_FEATURES
        .iter()
        .filter(|f| (extra && f.category == 2) || (experimental && f.category == 3))
        .map(|f| (f.name, feature(f.name, stasis).unwrap_or(Ok(()))))
        .collect()
}
