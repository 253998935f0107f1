//! tp_cgroup: cgroup memberships and properties (issue 11).
//!
//! Usage: `tp_cgroup WORKDIR [--thread] [--corrupt]`
//!
//! Makes its own cgroups, named `stasis-tp-PID`, in cgroup v2 and in the
//! v1 `pids`, `cpu` and `memory` hierarchies (under the cgroup it started
//! in), with properties that differ from the defaults: pids.max, cpu.shares,
//! cpu.cfs_period_us/cfs_quota_us, memory.limit_in_bytes, v2
//! cgroup.max.descendants and max.depth. The parent joins `/B/p` (pids),
//! `/B` (cpu), `/B/c` (v2); a forked child joins `/B/q` (pids, another
//! pids.max) and `/B` (memory). Writes every directory it made, one per
//! line, deepest last, to `WORK/cgroups` (the harness removes them to make
//! the restore create them again, and after the test). After restore each
//! process checks that /proc/self/cgroup reads as before and that every
//! property reads as set; the parent then moves both back and removes the
//! cgroups. `--thread` puts a second thread alone into another v1 pids
//! cgroup (`tasks`), which a dump must refuse by name. `--corrupt` expects
//! one pids.max one higher.

use stasis_tests::{Proto, Report};
use std::fs;
use std::path::{Path, PathBuf};

const V2: &str = "/sys/fs/cgroup/unified";
const V1: &str = "/sys/fs/cgroup";

/// /proc/self/cgroup's path for `controllers` ("" for v2).
fn own_path(controllers: &str) -> String {
    let text = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    text.lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, c, path) = (p.next()?, p.next()?, p.next()?);
            (c == controllers).then(|| path.to_owned())
        })
        .next()
        .unwrap_or_else(|| panic!("no {controllers:?} line in /proc/self/cgroup"))
}

fn join(dir: &Path, tid: i32, file: &str) {
    fs::write(dir.join(file), tid.to_string())
        .unwrap_or_else(|e| panic!("join {}: {e}", dir.display()));
}

fn set(dir: &Path, file: &str, value: &str) {
    fs::write(dir.join(file), value)
        .unwrap_or_else(|e| panic!("write {value} to {}/{file}: {e}", dir.display()));
}

fn get(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|e| format!("<{e}>"))
}

struct Layout {
    made: Vec<PathBuf>,
    /// (directory, file, value) to check after restore.
    props: Vec<(PathBuf, &'static str, String)>,
    pids_p: PathBuf,
    pids_q: PathBuf,
    cpu: PathBuf,
    v2_c: PathBuf,
    memory: PathBuf,
    /// Where the process started, per hierarchy (to move back to).
    start: Vec<(PathBuf, String)>,
}

fn mkdir(made: &mut Vec<PathBuf>, p: PathBuf) -> PathBuf {
    fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    made.push(p.clone());
    p
}

fn layout(base: &str) -> Layout {
    let mut made = Vec::new();
    let mut props = Vec::new();
    let pids = mkdir(&mut made, Path::new(V1).join("pids").join(base));
    let pids_p = mkdir(&mut made, pids.join("p"));
    let pids_q = mkdir(&mut made, pids.join("q"));
    for (d, v) in [(&pids, "200"), (&pids_p, "77"), (&pids_q, "55")] {
        set(d, "pids.max", v);
        props.push((d.clone(), "pids.max", v.to_owned()));
    }
    let cpu = mkdir(&mut made, Path::new(V1).join("cpu").join(base));
    for (f, v) in [
        ("cpu.shares", "333"),
        ("cpu.cfs_period_us", "200000"),
        ("cpu.cfs_quota_us", "150000"),
    ] {
        set(&cpu, f, v);
        props.push((cpu.clone(), f, v.to_owned()));
    }
    let mem_start = own_path("memory");
    let memory = mkdir(
        &mut made,
        Path::new(V1)
            .join("memory")
            .join(mem_start.trim_start_matches('/'))
            .join(base),
    );
    set(&memory, "memory.limit_in_bytes", "805306368");
    props.push((memory.clone(), "memory.limit_in_bytes", "805306368".into()));
    let v2 = mkdir(&mut made, Path::new(V2).join(base));
    let v2_c = mkdir(&mut made, v2.join("c"));
    set(&v2, "cgroup.max.descendants", "7");
    set(&v2_c, "cgroup.max.depth", "3");
    props.push((v2.clone(), "cgroup.max.descendants", "7".into()));
    props.push((v2_c.clone(), "cgroup.max.depth", "3".into()));
    let start = vec![
        (Path::new(V1).join("pids"), own_path("pids")),
        (Path::new(V1).join("cpu"), own_path("cpu")),
        (Path::new(V1).join("memory"), mem_start),
        (PathBuf::from(V2), own_path("")),
    ];
    Layout {
        made,
        props,
        pids_p,
        pids_q,
        cpu,
        v2_c,
        memory,
        start,
    }
}

fn move_back(l: &Layout, pid: i32) {
    for (mount, path) in &l.start {
        let _ = fs::write(
            mount
                .join(path.trim_start_matches('/'))
                .join("cgroup.procs"),
            pid.to_string(),
        );
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    if !Path::new(V2).join("cgroup.procs").exists() || !Path::new(V1).join("pids/tasks").exists() {
        proto.ready_and_wait();
        report.skip("needs cgroup v2 at /sys/fs/cgroup/unified and v1 pids, cpu, memory");
        proto.finish(&report);
    }
    let me = std::process::id() as i32;
    let base = format!("stasis-tp-{me}");
    let l = layout(&base);
    let list: Vec<String> = l.made.iter().map(|p| p.display().to_string()).collect();
    fs::write(proto.path("cgroups"), list.join("\n") + "\n").expect("write cgroups list");
    join(&l.pids_p, me, "cgroup.procs");
    join(&l.cpu, me, "cgroup.procs");
    join(&l.v2_c, me, "cgroup.procs");
    let (mut rd, mut wr) = ([0i32; 2], [0i32; 2]);
    // SAFETY: valid out arrays.
    unsafe {
        libc::pipe(rd.as_mut_ptr());
        libc::pipe(wr.as_mut_ptr());
    }
    // SAFETY: single-threaded here; the child ends with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let c = std::process::id() as i32;
        join(&l.pids_q, c, "cgroup.procs");
        join(&l.memory, c, "cgroup.procs");
        let before = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        // SAFETY: one byte into our pipe.
        unsafe { libc::write(rd[1], b"r".as_ptr().cast(), 1) };
        proto.wait_go();
        let after = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let ok = before == after;
        if !ok {
            eprintln!("child: /proc/self/cgroup before:\n{before}after:\n{after}");
        }
        // SAFETY: one byte into our pipe, then wait for the parent's word.
        unsafe {
            libc::write(rd[1], if ok { b"y" } else { b"n" }.as_ptr().cast(), 1);
            let mut b = 0u8;
            libc::read(wr[0], (&raw mut b).cast(), 1);
            libc::_exit(i32::from(!ok));
        }
    }
    let mut b = 0u8;
    // SAFETY: reads one byte: the child has joined its cgroups.
    unsafe { libc::read(rd[0], (&raw mut b).cast(), 1) };
    let thread = args.flag("thread").then(|| {
        let pids_t = l.pids_q.clone();
        let (joined, in_cgroup) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no arguments.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
            join(&pids_t, tid, "tasks");
            let _ = joined.send(());
            std::thread::park();
        });
        // Ready only once the thread is in its cgroup (else a dump that
        // comes first finds nothing to refuse).
        in_cgroup.recv().expect("the thread joined its cgroup");
        t
    });
    let before = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    proto.ready_and_wait();
    let after = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    report.eq("parent's /proc/self/cgroup", before, after);
    for (dir, file, value) in &l.props {
        let mut want = value.clone();
        if args.corrupt() && dir == &l.pids_q && *file == "pids.max" {
            want = "56".into();
        }
        report.eq(&format!("{}/{file}", dir.display()), want, get(dir, file));
    }
    // SAFETY: reads the child's verdict, then lets it go.
    unsafe {
        libc::read(rd[0], (&raw mut b).cast(), 1);
        report.check(b == b'y', || "child's cgroups differ after restore".into());
        libc::write(wr[1], b"d".as_ptr().cast(), 1);
        let mut st = 0;
        libc::waitpid(child, &mut st, 0);
        report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
            format!("child status {st:#x}")
        });
    }
    drop(thread);
    move_back(&l, me);
    for d in l.made.iter().rev() {
        let _ = fs::remove_dir(d);
    }
    proto.finish(&report);
}
