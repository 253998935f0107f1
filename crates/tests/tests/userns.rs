//! Nested PID namespaces (and the rest of issue 11) end to end: a
//! `stasis run` tree dumped, killed, restored, and checked by itself.

mod common;

use common::*;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Held by every test that makes a `stasis run` tree and by the one that
/// mounts a tmpfs in our mount namespace: a run tree's private mount
/// namespace is a copy of ours, so a mount made (and later removed) here
/// meanwhile would be in the tree and not here at its dump, which refuses
/// it as a mount of the tree's own.
fn mounts_lock() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `stasis run RUN_EXTRA -- PROGRAM WORK ARGS`, ready: its init.
fn run_tree(work: &Work, program: &str, args: &[&str], run_extra: &[&str]) -> Proc {
    let t = Duration::from_secs(60);
    let dir = work.dir().to_str().expect("utf-8").to_string();
    let prog = bin_path(program);
    ensure_subreaper();
    let pidfile_arg = format!("{dir}/run.pid");
    let mut run = vec!["run", "-d", "--pidfile", &pidfile_arg];
    run.extend_from_slice(run_extra);
    run.extend_from_slice(&["--", prog.to_str().expect("utf-8"), &dir]);
    run.extend_from_slice(args);
    let out = stasis(work, &run, t);
    if !out.success() {
        fail(work, format!("stasis run failed: {}", out.stderr));
    }
    let mut init = Proc::adopt(pidfile(work, "run.pid"));
    step(work, "waiting for ready", wait_ready(work, &mut init, t));
    init
}

/// `stasis run RUN_EXTRA -- PROGRAM WORK ARGS`, dump, restore (-d), go:
/// the restored init's outcome.
fn cr_run_tree(work: &Work, program: &str, args: &[&str], run_extra: &[&str]) -> Outcome {
    let _mounts = mounts_lock();
    let t = Duration::from_secs(60);
    let mut init = run_tree(work, program, args, run_extra);
    let out = dump(work, init.pid, &[], t);
    if !out.success() {
        init.kill();
        fail(work, format!("stasis dump failed: {}", out.stderr));
    }
    step(work, "waiting for the dumped init", init.wait(t));
    let out = restore_detached(work, &[], t);
    if !out.success() {
        fail(work, format!("stasis restore failed: {}", out.stderr));
    }
    let mut r = Proc::adopt(pidfile(work, "pidfile"));
    finish(work, &mut r, t)
}

/// tp_nspid: two nested PID namespaces below the run tree's (one made by
/// unshare then fork, one by clone(CLONE_NEWPID)), with a member whose
/// parent is outside its namespace: every process has its PID at every
/// level again, the inits are inits, pid_for_children is kept.
#[test]
fn cr_nested_pid_namespaces() {
    let work = Work::new("cr_nested_pid_namespaces");
    cr_run_tree(&work, "tp_nspid", &[], &[]).assert_pass(&work);
}

/// The negative control through a real dump and restore.
#[test]
fn negative_cr_nested_pid_namespaces() {
    let work = Work::new("negative_cr_nested_pid_namespaces");
    let out = cr_run_tree(&work, "tp_nspid", &["--corrupt"], &[]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// The host owner of WORK/name.
fn host_owner(work: &Work, name: &str) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(work.path(name))
        .ok()
        .map(|m| (m.uid(), m.gid()))
}

/// A `stasis run --user` tree (root inside mapped to 100000): the work
/// directory opened to the namespace's ids.
fn cr_user_tree(name: &str, args: &[&str]) -> (Work, Outcome) {
    cr_user_tree_of(name, "tp_userns", args)
}

fn cr_user_tree_of(name: &str, program: &str, args: &[&str]) -> (Work, Outcome) {
    use std::os::unix::fs::PermissionsExt;
    let work = Work::new(name);
    std::fs::set_permissions(work.dir(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod work dir");
    let out = cr_run_tree(&work, program, args, &["--user"]);
    (work, out)
}

/// tp_landlock in `stasis run --user` (its own user and PID namespaces,
/// root mapped to 100000): the Landlock witness joins the user namespace
/// and takes the ids it numbers; the domain is refused by name, and the
/// tree runs on, still restricted.
#[test]
fn refuse_landlock_domain_in_user_namespace() {
    use std::os::unix::fs::PermissionsExt;
    let _mounts = mounts_lock();
    let work = Work::new("refuse_landlock_domain_in_user_namespace");
    std::fs::set_permissions(work.dir(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod work dir");
    let t = Duration::from_secs(60);
    let mut init = run_tree(&work, "tp_landlock", &[], &["--user"]);
    let out = dump(&work, init.pid, &[], t);
    let refused = !out.success() && out.stderr.contains("Landlock domain");
    if !refused {
        init.kill();
    }
    assert!(refused, "the dump did not refuse the domain: {out:?}");
    finish(&work, &mut init, t).assert_pass(&work);
}

/// tp_userns in `stasis run --user`: maps, setgroups, ids, groups and
/// capabilities of the root and of a child with other ids, as the
/// namespace sees them; files they create after the restore are owned by
/// the mapped ids on the host.
#[test]
fn cr_user_namespace() {
    let (work, out) = cr_user_tree("cr_user_namespace", &[]);
    out.assert_pass(&work);
    assert_eq!(host_owner(&work, "owned-root"), Some((100_000, 100_000)));
    assert_eq!(host_owner(&work, "owned-child"), Some((101_001, 102_001)));
}

/// The same with a UTS namespace of the tree's own: made again inside
/// the restored user namespace, owned by it, with its host name.
#[test]
fn cr_user_namespace_with_uts() {
    let (work, out) = cr_user_tree("cr_user_namespace_with_uts", &["--uts"]);
    out.assert_pass(&work);
}

/// tp_nspid in `stasis run --user`: the nested PID namespaces are made
/// by processes that hold their capabilities in the tree's user
/// namespace only.
#[test]
fn cr_nested_pid_namespaces_in_user_namespace() {
    let (work, out) = cr_user_tree_of("cr_nested_pid_in_user_namespace", "tp_nspid", &[]);
    out.assert_pass(&work);
}

/// tp_nsmisc's time namespace (made by the tree's root, so owned by its
/// user namespace) in `stasis run --user`: made again by the restored
/// root inside the restored user namespace, with its offsets.
#[test]
fn cr_time_namespace_in_user_namespace() {
    let (work, out) = cr_user_tree_of(
        "cr_timens_in_user_namespace",
        "tp_nsmisc",
        &["--mode", "time"],
    );
    out.assert_pass(&work);
}

/// The negative control through a real dump and restore.
#[test]
fn negative_cr_user_namespace() {
    let (_work, out) = cr_user_tree("negative_cr_user_namespace", &["--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// tp_fanotify without stasis: its checks pass.
#[test]
fn selfcheck_fanotify() {
    let work = Work::new("selfcheck_fanotify");
    run_plain(&work, Program::Bin("tp_fanotify"), &[]).assert_pass(&work);
}

/// tp_fanotify's negative control fails without stasis.
#[test]
fn negative_fanotify() {
    let work = Work::new("negative_fanotify");
    let out = run_plain(&work, Program::Bin("tp_fanotify"), &["--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// Two fanotify groups (a notification group with an inode mark and an
/// ignore mask, a FID-reporting group with a directory mark): the same
/// fdinfo after restore, and the marks deliver events.
#[test]
fn cr_fanotify() {
    let work = Work::new("cr_fanotify");
    run_case(&work, Program::Bin("tp_fanotify"), &[], &Opts::default()).assert_pass(&work);
}

/// The negative control through a real dump and restore.
#[test]
fn negative_cr_fanotify() {
    let work = Work::new("negative_cr_fanotify");
    let out = run_case(
        &work,
        Program::Bin("tp_fanotify"),
        &["--corrupt"],
        &Opts::default(),
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

#[test]
fn refuse_fanotify_unread_events() {
    refused_dump(
        "refuse_fanotify_unread_events",
        Program::Bin("tp_fanotify"),
        &["--refuse", "queued"],
        &[],
        &["fanotify group with unread events"],
        true,
    );
}

#[test]
fn refuse_fanotify_permission_class() {
    refused_dump(
        "refuse_fanotify_permission_class",
        Program::Bin("tp_fanotify"),
        &["--refuse", "perm"],
        &[],
        &["fanotify group of a permission class"],
        true,
    );
}

/// Unmounts a program's tmpfs at WORK/mnt (lazily) when the test ends.
struct Umount(std::path::PathBuf);

impl Drop for Umount {
    fn drop(&mut self) {
        let Ok(c) = std::ffi::CString::new(self.0.to_str().unwrap_or_default()) else {
            return;
        };
        // SAFETY: umount2 of a path; failure (nothing mounted) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A mount mark and a filesystem mark on a tmpfs the program mounted:
/// restored on the same mount and filesystem, events delivered.
#[test]
fn cr_fanotify_mount_and_filesystem_marks() {
    let _mounts = mounts_lock();
    let work = Work::new("cr_fanotify_mount_marks");
    let _umount = Umount(work.path("mnt"));
    run_case(
        &work,
        Program::Bin("tp_fanotify"),
        &["--mounts"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

/// A `stasis run --user` tree started by `unshare --net` (util-linux):
/// its network namespace is made before the user namespace, so it
/// belongs to ours, not to the tree's; a restore makes every namespace inside the tree's user
/// namespace. The dump refuses it by name in one line, leaves no image,
/// and the tree runs on and passes.
#[test]
fn refuse_user_namespace_with_network_namespace_of_ours() {
    use std::os::unix::fs::PermissionsExt;
    let _mounts = mounts_lock();
    let work = Work::new("refuse_userns_foreign_netns");
    std::fs::set_permissions(work.dir(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod work dir");
    let t = Duration::from_secs(60);
    let dir = work.dir().to_str().expect("utf-8").to_string();
    let prog = bin_path("tp_userns");
    ensure_subreaper();
    let pidfile_arg = format!("{dir}/run.pid");
    let out = std::process::Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(stasis_bin())
        .args(["run", "-d", "--pidfile", &pidfile_arg, "--user", "--"])
        .arg(&prog)
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("unshare --net stasis run");
    assert!(out.success(), "unshare --net stasis run failed: {out:?}");
    let mut init = Proc::adopt(pidfile(&work, "run.pid"));
    step(&work, "waiting for ready", wait_ready(&work, &mut init, t));
    let out = dump(&work, init.pid, &[], t);
    let refused = out.code == Some(1)
        && out.stderr.trim_end().lines().count() == 1
        && out
            .stderr
            .contains("belongs to another user namespace than the tree's");
    if !refused {
        init.kill();
        fail(&work, format!("dump not refused by name: {out:?}"));
    }
    assert!(!work.img().join("inventory.img").exists());
    finish(&work, &mut init, t).assert_pass(&work);
}

/// A `stasis run --user` tree with an IPC namespace of its own (made by
/// its root, so owned by its user namespace): made again inside the
/// restored user namespace (by the holder of it), with its objects.
#[test]
fn cr_user_namespace_with_ipc() {
    let (work, out) = cr_user_tree("cr_user_namespace_with_ipc", &["--ipc"]);
    out.assert_pass(&work);
}

/// tp_unix `--peercred-listen` in `stasis run --user` (its own user and
/// PID namespaces): listeners, accepted and waiting connections and
/// pairs report the PIDs, ids and groups of their makers as the
/// namespaces number them, made again inside them with the ids the user
/// namespace maps.
#[test]
fn cr_unix_peercred_in_user_namespace() {
    let (work, out) = cr_user_tree_of(
        "cr_unix_peercred_in_user_namespace",
        "tp_unix",
        &["--peercred-listen"],
    );
    out.assert_pass(&work);
}

/// The negative control through a real dump and restore.
#[test]
fn negative_cr_unix_peercred_in_user_namespace() {
    let (_work, out) = cr_user_tree_of(
        "negative_cr_unix_peercred_in_user_namespace",
        "tp_unix",
        &["--peercred-listen", "--corrupt"],
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// tp_unix `--pair-in-flight` as PID 1 of its own PID namespace (`stasis
/// run`): the pair in flight reports PIDs there that only a pair made
/// again in the namespace could give back: the dump refuses it by name,
/// and the tree runs on with its state intact.
#[test]
fn refuse_unix_pair_in_flight_own_pid_ns() {
    let _mounts = mounts_lock();
    let work = Work::new("refuse_unix_pair_in_flight_own_pid_ns");
    let t = Duration::from_secs(60);
    let mut init = run_tree(&work, "tp_unix", &["--pair-in-flight"], &[]);
    let out = dump(&work, init.pid, &[], t);
    let refused = !out.success()
        && out
            .stderr
            .contains("pair in flight (SCM_RIGHTS) whose SO_PEERCRED");
    if !refused {
        init.kill();
    }
    assert!(refused, "the dump did not refuse the pair: {out:?}");
    finish(&work, &mut init, t).assert_pass(&work);
}

/// tp_sysvipc `--mode own` in `stasis run --user` (its own user, PID and
/// IPC namespaces): every object back with its id, owner and creator as
/// the user namespace maps them, and the PIDs SysV IPC recorded as the
/// PID namespace numbers them, PID 1's included.
#[test]
fn cr_sysvipc_in_user_namespace() {
    let (work, out) = cr_user_tree_of(
        "cr_sysvipc_in_user_namespace",
        "tp_sysvipc",
        &["--mode", "own"],
    );
    out.assert_pass(&work);
}

/// Its negative control: the PIDs it expects are off by one.
#[test]
fn negative_cr_sysvipc_pids_in_user_namespace() {
    let (_work, out) = cr_user_tree_of(
        "negative_cr_sysvipc_pids_in_user_namespace",
        "tp_sysvipc",
        &["--mode", "own", "--corrupt-pids"],
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains("PIDs"),
        "{out:?}"
    );
}
