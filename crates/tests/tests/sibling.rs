//! criu's `--restore-sibling` (`-S`; RPC `rst_sibling`, which runc sets on
//! every restore): the restored root is created as a child of the
//! restorer's parent (CLONE_PARENT), so the caller waits for it itself.
//!
//! The test process is the caller. It is also a child subreaper (so that a
//! tree restored with plain `-d` comes to it once stasis exits), so the
//! root's parent is read by an action script at post-restore, while stasis
//! still runs: the caller with `-S`, stasis without. The go-criu half is in
//! `rpc.rs`.

mod common;

use common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An action script writing, at post-restore, "ROOT'S-PARENT STASIS" to
/// WORK/parents (the script's parent is stasis).
fn parents_script(work: &Work) -> &'static str {
    let script = format!(
        "[ \"$CRTOOLS_SCRIPT_ACTION\" = post-restore ] || exit 0; \
         echo \"$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$CRTOOLS_INIT_PID/status) $PPID\" > {}",
        work.path("parents").display()
    );
    Box::leak(script.into_boxed_str())
}

/// (the root's parent, stasis's PID) as the script saw them.
fn parents(work: &Work) -> (u32, u32) {
    let s = fs::read_to_string(work.path("parents")).unwrap_or_default();
    let v: Vec<u32> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [root_parent, stasis] => (root_parent, stasis),
        _ => fail(work, format!("action script wrote {s:?}")),
    }
}

/// The parent of `pid` now, from /proc/PID/stat.
fn ppid_of(pid: i32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Starts `program`, dumps it; returns its PID.
fn dumped(work: &Work, program: &'static str, args: &[&str]) -> i32 {
    let opts = Opts::default();
    let mut p = start(work, Program::Bin(program), args);
    step(work, "ready", wait_ready(work, &mut p, opts.ready_timeout));
    let pid = p.pid;
    dump_and_check_gone(work, &mut p, &opts);
    pid
}

/// `restore -d -S`: the tree (processes, a zombie, a stopped process,
/// sessions and groups) runs as the caller's child from the start; the
/// caller waits for it and gets its PASS. `-S` without `-d` is refused as
/// criu refuses it.
#[test]
fn restore_sibling_cli() {
    let work = Work::new("restore_sibling_cli");
    let opts = Opts::default();
    let pid = dumped(&work, "tp_tree", &[]);

    let img = work.img();
    let out = stasis(
        &work,
        &["restore", "-D", img.to_str().expect("utf-8"), "-S"],
        opts.stasis_timeout,
    );
    assert!(
        !out.success()
            && out
                .stderr
                .contains("only makes sense with --restore-detached"),
        "-S without -d: {out:?}"
    );
    assert!(!pid_exists(pid), "a refused restore left PID {pid}");

    let script = parents_script(&work);
    let o = Opts {
        restore_extra: vec!["-S", "--action-script", script],
        ..opts.clone()
    };
    let mut r = restore_and_adopt(&work, pid, &o);
    let (root_parent, stasis_pid) = parents(&work);
    assert_eq!(
        root_parent,
        std::process::id(),
        "root's parent during restore"
    );
    assert_ne!(stasis_pid, std::process::id());
    assert_eq!(
        ppid_of(pid),
        Some(std::process::id()),
        "root's parent after"
    );
    step(&work, "restored tree state", r.check_running_untraced());
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// Negative control: without `-S` the root's parent is stasis while it
/// restores (the tree comes to the caller only once stasis exits).
#[test]
fn restore_without_sibling_parent_is_restorer() {
    let work = Work::new("restore_not_sibling");
    let opts = Opts::default();
    let pid = dumped(
        &work,
        "tp_memory",
        &["--size-mib", "8", "--sparse-mib", "16"],
    );
    let o = Opts {
        restore_extra: vec!["--action-script", parents_script(&work)],
        ..opts.clone()
    };
    let mut r = restore_and_adopt(&work, pid, &o);
    let (root_parent, stasis_pid) = parents(&work);
    assert_eq!(root_parent, stasis_pid, "root's parent during restore");
    assert_ne!(root_parent, std::process::id());
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// `-S --new-pid-ns`: the helper init (PID 1 of the new namespace, the
/// root's parent, which exits with the root's status) is the caller's
/// child from the start; the caller waits for it and gets the PASS.
#[test]
fn restore_sibling_new_pid_ns() {
    let work = Work::new("restore_sibling_pidns");
    let opts = Opts::default();
    dumped(
        &work,
        "tp_memory",
        &["--size-mib", "8", "--sparse-mib", "16"],
    );
    let ppid = "sed -n 's/^PPid:[[:space:]]*//p'";
    let script = format!(
        "[ \"$CRTOOLS_SCRIPT_ACTION\" = post-restore ] || exit 0; \
         h=$({ppid} /proc/$CRTOOLS_INIT_PID/status); \
         echo \"$({ppid} /proc/$h/status) $PPID $h\" > {}",
        work.path("parents").display()
    );
    let script: &'static str = Box::leak(script.into_boxed_str());
    let out = restore_detached(
        &work,
        &["-S", "--new-pid-ns", "--action-script", script],
        opts.stasis_timeout,
    );
    if !out.success() {
        fail(&work, format!("restore -S --new-pid-ns: {out:?}"));
    }
    let s = fs::read_to_string(work.path("parents")).unwrap_or_default();
    let v: Vec<i32> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let [helper_parent, _stasis, helper] = v[..] else {
        fail(&work, format!("action script wrote {s:?}"));
    };
    assert_eq!(helper_parent as u32, std::process::id(), "helper's parent");
    let root: i32 = fs::read_to_string(work.path("pidfile"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or_else(|_| fail(&work, "no pidfile"));
    assert_ne!(root, helper);
    assert_eq!(ppid_of(root), Some(helper as u32), "the root's parent");
    let mut h = Proc::adopt(helper);
    finish(&work, &mut h, opts.finish_timeout).assert_pass(&work);
}

/// Every PID of the image (processes and zombies).
fn image_pids(work: &Work) -> Vec<i32> {
    let v = show(work, &work.img());
    let inv = &v["inventory"];
    ["processes", "zombies"]
        .iter()
        .flat_map(|k| inv[*k].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["pid"].as_i64().and_then(|p| i32::try_from(p).ok()))
        .collect()
}

/// The state letter of `pid` (None: no such process).
fn state_of(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// A restore with `-S` failing before the seize (`fork`: no process
/// traced yet) or at its last stage (`resume`: every process built and
/// traced, none yet ours to wait for) leaves no live process: the root is
/// a zombie of the caller (as criu leaves it), reaped here; then a retry
/// works.
#[test]
fn failed_sibling_restore_leaves_no_process() {
    let work = Work::new("failed_sibling_restore");
    let opts = Opts::default();
    let pid = dumped(&work, "tp_tree", &[]);
    for fault in ["restore:fork", "restore:resume"] {
        failed_sibling_restore(&work, pid, fault);
    }
    let o = Opts {
        restore_extra: vec!["-S"],
        ..opts.clone()
    };
    let mut r = restore_and_adopt(&work, pid, &o);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// One `restore -d -S` failing at `fault`; checks and reaps what is left.
fn failed_sibling_restore(work: &Work, pid: i32, fault: &str) {
    let pids = image_pids(work);
    let out = Command::new(stasis_bin())
        .args([
            "restore",
            "-D",
            work.img().to_str().expect("utf-8"),
            "-d",
            "-S",
        ])
        .env("STASIS_FAULT", fault)
        .stdin(Stdio::null())
        .output()
        .expect("run stasis");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("injected fault")
            && err.contains("killing the partly restored tree")
            && !err.contains("still exist"),
        "{fault}: the restore did not fail, or the tree was not killed: {out:?}"
    );
    let alive: Vec<(i32, char)> = pids
        .iter()
        .filter_map(|&p| state_of(p).map(|s| (p, s)))
        .filter(|&(_, s)| s != 'Z' && s != 'X')
        .collect();
    assert!(
        alive.is_empty(),
        "{fault}: a failed restore left {alive:?} alive"
    );
    assert_eq!(
        state_of(pid),
        Some('Z'),
        "{fault}: the root, a zombie of ours"
    );
    // Reap what came to us (the root; its orphans, as we are a subreaper).
    let deadline = Instant::now() + Duration::from_secs(10);
    for &p in &pids {
        while pid_exists(p) {
            let mut st = 0;
            // SAFETY: WNOHANG wait for one PID of the failed tree.
            unsafe { libc::waitpid(p, &mut st, libc::WNOHANG | libc::__WALL) };
            assert!(
                Instant::now() < deadline,
                "{fault}: PID {p} is never reaped"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
