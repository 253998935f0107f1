//! Time and cgroup namespace test program.
//!
//! Usage: `tp_nsmisc WORKDIR --mode time|time-unentered|cgroup [--corrupt]`
//!
//! - `time`: unshares its children's time namespace, writes offsets
//!   (CLOCK_MONOTONIC +1000 s, CLOCK_BOOTTIME +2000.5 s), enters it
//!   itself (setns) and forks a child there. After go both check that
//!   CLOCK_MONOTONIC and CLOCK_BOOTTIME did not go back and advanced by
//!   less than a bound (no offset was lost: it is far larger), that
//!   /proc/self/timens_offsets reads the same, and that they still share
//!   the namespace.
//! - `time-unentered`: unshares a time namespace for its children and
//!   never forks (refused).
//! - `cgroup`: makes `stasis-tpns-PID` and `stasis-tpns-PID/inner` under
//!   its cgroups in cgroup v2 and v1 pids (listed in WORK/cgroups, deepest
//!   last, for the harness to remove), joins the first in both, unshares
//!   its cgroup namespace there, joins `inner` in v2 and forks a child
//!   that joins `inner` in pids. After go both check that
//!   /proc/self/cgroup (paths relative to the namespace's root) reads as
//!   before, that they share the namespace and that it is not PID 1's.

use stasis_tests::{Proto, Report};

const MONO_OFF: (i64, i64) = (1000, 0);
const BOOT_OFF: (i64, i64) = (2000, 500_000_000);
/// The most the clocks may advance across the test (seconds): far less
/// than the offsets, whose loss would make them jump back.
const BOUND_S: i64 = 600;

fn ok(r: i32, what: &str) -> i32 {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

fn now_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a live out buffer.
    ok(
        unsafe { libc::clock_gettime(clock, &mut ts) },
        "clock_gettime",
    );
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn ns_link(name: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{name}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    match args.get("mode").unwrap_or("time") {
        "time" => time(&proto, &mut report, args.corrupt()),
        "time-unentered" => {
            unshare_time();
            proto.ready_and_wait();
        }
        "cgroup" => cgroup(&proto, &mut report, args.corrupt()),
        m => report.fail(format!("unknown mode {m}")),
    }
    proto.finish(&report);
}

fn unshare_time() {
    // SAFETY: integer-only syscall on ourselves.
    ok(
        unsafe { libc::unshare(libc::CLONE_NEWTIME) },
        "unshare(CLONE_NEWTIME)",
    );
}

fn enter_time_ns() {
    let text = format!(
        "monotonic {} {}\nboottime {} {}\n",
        MONO_OFF.0, MONO_OFF.1, BOOT_OFF.0, BOOT_OFF.1
    );
    std::fs::write("/proc/self/timens_offsets", text).expect("write timens_offsets");
    let f = std::fs::File::open("/proc/self/ns/time_for_children").expect("open ns");
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a descriptor we own; we are single-threaded.
    ok(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWTIME) },
        "setns(time)",
    );
}

/// What one process sees: its clocks, its offsets file and namespace.
struct Clocks {
    mono: i64,
    boot: i64,
    offsets: String,
    ns: String,
}

fn clocks() -> Clocks {
    Clocks {
        mono: now_ns(libc::CLOCK_MONOTONIC),
        boot: now_ns(libc::CLOCK_BOOTTIME),
        offsets: std::fs::read_to_string("/proc/self/timens_offsets").unwrap_or_default(),
        ns: ns_link("time"),
    }
}

/// Every difference between `before` and now, as messages.
fn compare(before: &Clocks, corrupt: bool) -> Vec<String> {
    let after = clocks();
    let mut bad = Vec::new();
    let bound = BOUND_S * 1_000_000_000;
    let mono_before = before.mono + if corrupt { 1 } else { 0 } * 2000 * 1_000_000_000;
    for (what, b, a) in [
        ("CLOCK_MONOTONIC", mono_before, after.mono),
        ("CLOCK_BOOTTIME", before.boot, after.boot),
    ] {
        if a < b || a - b > bound {
            bad.push(format!("{what} went from {b} to {a} ns"));
        }
    }
    if after.offsets != before.offsets {
        bad.push(format!(
            "timens_offsets {:?} became {:?}",
            before.offsets, after.offsets
        ));
    }
    if after.ns != ns_link("time_for_children") {
        bad.push("time_for_children differs from time".into());
    }
    bad
}

fn time(proto: &Proto, report: &mut Report, corrupt: bool) {
    unshare_time();
    enter_time_ns();
    let before = clocks();
    report.check(before.mono >= MONO_OFF.0 * 1_000_000_000, || {
        format!("the offset does not show: monotonic {}", before.mono)
    });
    // SAFETY: single-threaded; the child runs its checks and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mine = clocks();
        let same = mine.ns == before.ns;
        proto.wait_go();
        let bad = compare(&mine, false);
        if !bad.is_empty() {
            eprintln!("child: {bad:?}");
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(i32::from(!bad.is_empty() || !same)) }
    }
    proto.ready_and_wait();
    for m in compare(&before, corrupt) {
        report.fail(m);
    }
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child (same namespace, clocks, offsets): status {st:#x}")
    });
}

const V2: &str = "/sys/fs/cgroup/unified";
const PIDS: &str = "/sys/fs/cgroup/pids";

/// /proc/self/cgroup's path for `controllers` ("" for v2).
fn own_path(controllers: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, c, path) = (p.next()?, p.next()?, p.next()?);
        (c == controllers).then(|| path.to_owned())
    })
}

fn join(dir: &str) {
    std::fs::write(format!("{dir}/cgroup.procs"), "0")
        .unwrap_or_else(|e| panic!("join {dir}: {e}"));
}

/// Makes the cgroups (outer, inner) in the hierarchy mounted at `mnt`.
fn make(proto: &Proto, made: &mut Vec<String>, mnt: &str, controllers: &str) -> (String, String) {
    let base = own_path(controllers).expect("own cgroup");
    let outer = format!(
        "{mnt}{}/stasis-tpns-{}",
        base.trim_end_matches('/'),
        std::process::id()
    );
    let inner = format!("{outer}/inner");
    for d in [&outer, &inner] {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
        made.push(d.clone());
    }
    std::fs::write(proto.path("cgroups"), made.join("\n")).expect("write WORK/cgroups");
    (outer, inner)
}

fn cgroup_view() -> (String, String) {
    (
        std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        ns_link("cgroup"),
    )
}

fn cgroup(proto: &Proto, report: &mut Report, corrupt: bool) {
    if !std::path::Path::new(V2).join("cgroup.procs").exists()
        || !std::path::Path::new(PIDS).join("cgroup.procs").exists()
    {
        report.skip("needs cgroup v2 at /sys/fs/cgroup/unified and v1 pids");
        return;
    }
    let mut made = Vec::new();
    let (v2_outer, v2_inner) = make(proto, &mut made, V2, "");
    let (pids_outer, pids_inner) = make(proto, &mut made, PIDS, "pids");
    join(&v2_outer);
    join(&pids_outer);
    // SAFETY: integer-only syscall on ourselves.
    ok(
        unsafe { libc::unshare(libc::CLONE_NEWCGROUP) },
        "unshare(CLONE_NEWCGROUP)",
    );
    join(&v2_inner);
    let host_ns = std::fs::read_link("/proc/1/ns/cgroup").map(|p| p.display().to_string());
    // SAFETY: single-threaded; the child runs its checks and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        join(&pids_inner);
        let before = cgroup_view();
        proto.wait_go();
        let after = cgroup_view();
        let parent = std::fs::read_link(format!(
            "/proc/{}/ns/cgroup",
            std::os::unix::process::parent_id()
        ))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
        // The namespace is a new one after a restore (its inode number
        // may or may not be reused): the view must be the same, and the
        // namespace the parent's.
        let good = before.0 == after.0 && parent == after.1;
        if !good {
            eprintln!("child: {before:?} became {after:?}, parent's {parent}");
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(i32::from(!good)) }
    }
    let mut before = cgroup_view();
    report.check(before.0.contains("0::/inner\n"), || {
        format!("unexpected view before: {:?}", before.0)
    });
    proto.ready_and_wait();
    let after = cgroup_view();
    if corrupt {
        before.0.push('x');
    }
    report.eq("/proc/self/cgroup", before.0, after.0.clone());
    report.check(host_ns.map_or(true, |h| h != after.1), || {
        "in PID 1's cgroup namespace".into()
    });
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child (same view, same namespace): status {st:#x}")
    });
}
