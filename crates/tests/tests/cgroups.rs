//! End-to-end tests for cgroups (issue 11): memberships in cgroup v2 and
//! v1 hierarchies and the properties of the tree's cgroups, with criu's
//! `--manage-cgroups` modes and `--cgroup-root`.

mod common;

use common::*;
use std::fs;
use std::path::PathBuf;

/// The cgroups `tp_cgroup` made (listed in WORK/cgroups), deepest last.
fn made(work: &Work) -> Vec<PathBuf> {
    fs::read_to_string(work.path("cgroups"))
        .unwrap_or_default()
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// Removes the program's cgroups, deepest first (they must be empty).
fn remove(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        for _ in 0..100 {
            match fs::remove_dir(d) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
}

/// Removes the program's cgroups when the test ends, however it ends.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove(&self.0);
    }
}

/// Starts tp_cgroup, dumps it; returns the process and its cgroups.
fn dumped(work: &Work, args: &[&str]) -> (Proc, Cleanup) {
    let opts = Opts::default();
    let mut p = start(work, Program::Bin("tp_cgroup"), args);
    step(
        work,
        "waiting for ready",
        wait_ready(work, &mut p, opts.ready_timeout),
    );
    let cleanup = Cleanup(made(work));
    dump_and_check_gone(work, &mut p, &opts);
    (p, cleanup)
}

fn restored(work: &Work, pid: i32, extra: &[&'static str]) -> Outcome {
    let opts = Opts {
        restore_extra: extra.to_vec(),
        ..Opts::default()
    };
    let mut r = restore_and_adopt(work, pid, &opts);
    finish(work, &mut r, opts.finish_timeout)
}

/// The cgroups still exist at restore: each process joins its own again
/// (criu's default mode, soft).
#[test]
fn cr_cgroup_memberships() {
    let work = Work::new("cr_cgroup_memberships");
    let (p, _c) = dumped(&work, &[]);
    restored(&work, p.pid, &[]).assert_pass(&work);
}

/// The cgroups were removed after the dump: a soft restore makes them
/// again with their saved properties (pids.max, cpu shares and quota,
/// memory limit, v2 max.descendants/max.depth).
#[test]
fn cr_cgroups_made_again_with_properties() {
    let work = Work::new("cr_cgroups_made_again");
    let (p, c) = dumped(&work, &[]);
    remove(&c.0);
    assert!(!c.0[0].exists(), "the test's cgroups could not be removed");
    restored(&work, p.pid, &["--manage-cgroups"]).assert_pass(&work);
}

/// The check that would catch a lost property fails when the program
/// expects another value.
#[test]
fn negative_cgroups() {
    let work = Work::new("negative_cgroups");
    let (p, c) = dumped(&work, &["--corrupt"]);
    remove(&c.0);
    let out = restored(&work, p.pid, &[]);
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains("pids.max"),
        "the negative control did not fail on pids.max: {out:?}{}",
        work.diagnostics()
    );
}

/// `--manage-cgroups=strict` over existing cgroups and `none` over missing
/// ones are refused by name before anything is created; then a plain
/// restore works.
#[test]
fn cgroup_modes_refused_before_anything_is_created() {
    let work = Work::new("cgroup_modes_refused");
    let (p, c) = dumped(&work, &[]);
    let t = Opts::default().stasis_timeout;
    let out = restore_detached(&work, &["--manage-cgroups=strict"], t);
    assert!(
        out.code == Some(1) && out.stderr.contains("exists") && out.stderr.lines().count() == 1,
        "strict over existing cgroups: {out:?}"
    );
    assert!(!pid_exists(p.pid), "a refused restore left PID {}", p.pid);
    remove(&c.0);
    let out = restore_detached(&work, &["--manage-cgroups=none"], t);
    assert!(
        out.code == Some(1)
            && out.stderr.contains("does not exist")
            && out.stderr.lines().count() == 1,
        "none over missing cgroups: {out:?}"
    );
    assert!(
        !pid_exists(p.pid) && !c.0[0].exists(),
        "a refused restore left a process or a cgroup"
    );
    restored(&work, p.pid, &["--manage-cgroups=strict"]).assert_pass(&work);
}

/// `--manage-cgroups=ignore`: the tree stays in the restorer's cgroups, so
/// the program sees its memberships changed (and says so).
#[test]
fn cgroups_ignored_on_request() {
    let work = Work::new("cgroups_ignored");
    let (p, _c) = dumped(&work, &[]);
    let out = restored(&work, p.pid, &["--manage-cgroups=ignore"]);
    assert!(
        out.result.contains("/proc/self/cgroup"),
        "with ignore the memberships should differ: {out:?}"
    );
}

/// A restore failing at its last stage (every process built and in its
/// cgroups) removes the cgroups it made, then a retry works.
#[test]
fn failed_restore_removes_the_cgroups_it_made() {
    let work = Work::new("failed_restore_cgroups");
    let (p, c) = dumped(&work, &[]);
    remove(&c.0);
    let out = std::process::Command::new(stasis_bin())
        .args(["restore", "-D", work.img().to_str().expect("utf-8"), "-d"])
        .env("STASIS_FAULT", "restore:resume")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run stasis");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("injected fault"),
        "the injected fault did not fail the restore: {out:?}"
    );
    assert!(!pid_exists(p.pid), "a failed restore left PID {}", p.pid);
    let left: Vec<&PathBuf> = c.0.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "a failed restore left cgroups {left:?}");
    restored(&work, p.pid, &[]).assert_pass(&work);
}

/// A thread in a cgroup of its own (v1 `tasks`) is refused by name.
#[test]
fn refuse_thread_in_its_own_cgroup() {
    refused_dump(
        "refuse_thread_cgroup",
        Program::Bin("tp_cgroup"),
        &["--thread"],
        &[],
        &["is in cgroup pids:", "per-thread cgroups"],
        true,
    );
}

/// `--cgroup-root cpu:/NEW`: the root's cpu cgroup (and its child's, the
/// same) becomes NEW, made with the saved one's properties; the program,
/// which expects its old memberships, says they changed.
#[test]
fn cgroup_root_moves_the_tree() {
    let work = Work::new("cgroup_root_moves");
    let (p, _c) = dumped(&work, &[]);
    let new = format!("/stasis-tp-moved-{}", p.pid);
    let dir = PathBuf::from(format!("/sys/fs/cgroup/cpu{new}"));
    let _moved = Cleanup(vec![dir.clone()]);
    let root = format!("cpu:{new}");
    let opts = Opts {
        restore_extra: vec![],
        ..Opts::default()
    };
    let out = restore_detached(&work, &["--cgroup-root", &root], opts.stasis_timeout);
    let mut r = Proc::adopt(p.pid);
    assert!(out.success(), "restore with --cgroup-root failed: {out:?}");
    let cg = fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap_or_default();
    let shares = fs::read_to_string(dir.join("cpu.shares")).unwrap_or_default();
    let result = finish(&work, &mut r, opts.finish_timeout);
    assert!(
        cg.lines().any(|l| l.ends_with(&format!(":cpu:{new}"))),
        "the restored root is not in {new}: {cg}"
    );
    assert_eq!(
        shares.trim(),
        "333",
        "the moved cgroup lacks the saved cpu.shares"
    );
    assert!(
        result.result.contains("/proc/self/cgroup"),
        "the program should see its cpu cgroup changed: {result:?}"
    );
}
