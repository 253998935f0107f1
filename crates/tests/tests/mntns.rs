//! End-to-end tests for a tree in a mount namespace of its own (issue 11):
//! tmpfs contents, a read-only bind of a host directory, a fresh proc, an
//! open file and a mapping on the tmpfs, with a child in the same
//! namespace; the restored namespace is not the host's. Needs root.

mod common;

use common::*;
use std::path::PathBuf;

/// Whether the test must be skipped (it needs root); says so.
fn not_root() -> bool {
    // SAFETY: geteuid has no arguments.
    let root = unsafe { libc::geteuid() == 0 };
    if !root {
        eprintln!("skipped: needs root");
    }
    !root
}

/// `tp_mntns` started, ready, dumped and gone.
fn dumped(work: &Work, opts: &Opts) -> Proc {
    let mut p = start(work, Program::Bin("tp_mntns"), &[]);
    step(
        work,
        "waiting for ready",
        wait_ready(work, &mut p, opts.ready_timeout),
    );
    dump_and_check_gone(work, &mut p, opts);
    p
}

/// Whether the host (this test) sees a mount on `dir`.
fn host_sees_mount(dir: &std::path::Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let d = dir.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4) == Some(&d))
}

/// Dump, restore, and while the restored tree runs: the host sees none of
/// its mounts and none of its tmpfs files; then each process checks itself.
#[test]
fn cr_own_mount_namespace() {
    if not_root() {
        return;
    }
    let work = Work::new("cr_own_mount_namespace");
    let opts = Opts::default();
    let p = dumped(&work, &opts);
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    for d in ["t", "ro", "p"] {
        assert!(
            !host_sees_mount(&work.path(d)),
            "the host sees the tree's mount on {d}"
        );
    }
    assert!(
        !work.path("t/a").exists(),
        "the host sees the tree's tmpfs contents"
    );
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

#[test]
fn negative_own_mount_namespace() {
    if not_root() {
        return;
    }
    negative("negative_own_mount_namespace", &[]);
}

/// `tp_mntns --case CASE` dumped, restored and passing its checks.
fn cr_case(name: &str, case: &str) {
    let work = Work::new(name);
    run_case(
        &work,
        Program::Bin("tp_mntns"),
        &["--case", case],
        &Opts::default(),
    )
    .assert_pass(&work);
}

/// `tp_mntns ARGS --corrupt` run without a dump must fail its checks.
fn negative(name: &str, args: &[&str]) {
    let work = Work::new(name);
    let mut args = args.to_vec();
    args.push("--corrupt");
    let out = run_plain(&work, Program::Bin("tp_mntns"), &args);
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

/// An overlayfs in the tree's namespace is refused by name; the tree runs on.
#[test]
fn refuse_overlay_in_mount_namespace() {
    if not_root() {
        return;
    }
    refused_dump(
        "refuse_overlay_mntns",
        Program::Bin("tp_mntns"),
        &["--case", "overlay"],
        &[],
        &["overlay"],
        false,
    );
}

/// WORK/src (bound in the dumped tree) moved to WORK/src-moved: a restore
/// fails naming `key` (its external mount), leaving no process and no
/// mount. Returns the new path.
fn source_moved_restore_refused(work: &Work, p: &Proc, opts: &Opts, key: &str) -> PathBuf {
    let moved = work.path("src-moved");
    std::fs::rename(work.path("src"), &moved).expect("move src");
    let out = restore_detached(work, &[], opts.stasis_timeout);
    assert!(
        !out.success() && out.stderr.contains(key) && out.stderr.contains("mount"),
        "restore without the moved source: no refusal naming {key}: {out:?}"
    );
    assert!(
        !pid_exists(p.pid),
        "a failed restore left process {}",
        p.pid
    );
    assert!(
        !host_sees_mount(&work.path("t")),
        "a failed restore left a mount"
    );
    moved
}

/// An external mount whose host path is gone: the restore fails naming
/// its key and `--ext-mount-map`, and leaves nothing; with
/// `--ext-mount-map KEY:NEWPATH` (criu's restore form) it is bound from
/// there (and the root mount from `--root /`) and the tree passes its
/// checks.
#[test]
fn cr_mount_namespace_ext_mount_map() {
    if not_root() {
        return;
    }
    let work = Work::new("cr_mntns_ext_mount_map");
    let mut opts = Opts::default();
    let p = dumped(&work, &opts);
    let key = work.path("src").to_string_lossy().into_owned();
    let moved = source_moved_restore_refused(&work, &p, &opts, &key);
    let map: &'static str = Box::leak(format!("{key}:{}", moved.display()).into_boxed_str());
    opts.restore_extra = vec!["--ext-mount-map", map, "--root", "/"];
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// criu's `--external mnt[MOUNTPOINT]:KEY` at dump names the read-only
/// bind's key; its source moved, a restore without `mnt[KEY]:PATH` fails
/// naming the key and leaves nothing; with `--external mnt[KEY]:NEWPATH`
/// it is bound from there and the tree passes its checks.
#[test]
fn cr_mount_namespace_external_mnt() {
    if not_root() {
        return;
    }
    let work = Work::new("cr_mntns_external_mnt");
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    // The three binds of WORK/src: ro, and s1 and s2 (one peer group).
    let names = ["ro", "s1", "s2"];
    let mut opts = Opts::default();
    for n in names {
        let at = work.path(n);
        opts.dump_extra.push("--external");
        opts.dump_extra
            .push(leak(format!("mnt[{}]:ext{n}", at.display())));
    }
    let p = dumped(&work, &opts);
    let moved = source_moved_restore_refused(&work, &p, &opts, "external mount ext");
    opts.restore_extra = vec!["--root", "/"];
    for n in names {
        opts.restore_extra.push("--external");
        opts.restore_extra
            .push(leak(format!("mnt[ext{n}]:{}", moved.display())));
    }
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// A container's shape: the tree pivoted into a tmpfs root (its contents
/// saved) holding a bind of the host's / and a proc; the same tmpfs, bind
/// and proc checks inside.
#[test]
fn cr_container_shaped_mount_namespace() {
    if not_root() {
        return;
    }
    cr_case("cr_container_mntns", "pivot");
}

/// A slave mount, and a tmpfs file with two hard links, are refused by
/// name; the tree runs on.
#[test]
fn refuse_slave_mount_and_tmpfs_hard_link() {
    if not_root() {
        return;
    }
    for (case, word) in [("slave", "slave"), ("hardlink", "hard links")] {
        refused_dump(
            &format!("refuse_mntns_{case}"),
            Program::Bin("tp_mntns"),
            &["--case", case],
            &[],
            &[word],
            false,
        );
    }
}

/// A restore failing at its last stage (the namespace built, every process
/// in it) leaves no process, no mount the host sees and no staging
/// directory; a retry works.
#[test]
fn failed_restore_leaves_no_mount_namespace() {
    if not_root() {
        return;
    }
    let work = Work::new("failed_restore_mntns");
    let opts = Opts::default();
    let p = dumped(&work, &opts);
    let child = std::process::Command::new(stasis_bin())
        .args(["restore", "-D", work.img().to_str().expect("utf-8"), "-d"])
        .env("STASIS_FAULT", "restore:resume")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run stasis");
    let staging = std::env::temp_dir().join(format!(".stasis-mntns-{}", child.id()));
    let out = child.wait_with_output().expect("wait for stasis");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("injected fault"),
        "the injected fault did not fail the restore: {out:?}"
    );
    assert!(!pid_exists(p.pid), "a failed restore left PID {}", p.pid);
    assert!(
        !host_sees_mount(&work.path("t")),
        "a failed restore left a mount"
    );
    assert!(
        !staging.exists(),
        "a failed restore left {}",
        staging.display()
    );
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// A loop device with an ext4 filesystem, detached on drop.
struct Loop {
    dev: String,
    rdev: (u32, u32),
}

impl Loop {
    fn new(work: &Work) -> Loop {
        use std::os::unix::fs::MetadataExt;
        let file = work.path("blk.img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(16 << 20))
            .expect("blk.img");
        let ok = |c: &mut std::process::Command| {
            let o = c.output().expect("run");
            assert!(o.status.success(), "{c:?}: {o:?}");
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        ok(std::process::Command::new("mkfs.ext4")
            .arg("-q")
            .arg("-F")
            .arg(&file));
        let dev = ok(std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file));
        let rdev = std::fs::metadata(&dev).expect("loop device").rdev();
        Loop {
            dev,
            rdev: (libc::major(rdev), libc::minor(rdev)),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

/// A block device's filesystem mounted in the tree's namespace: refused
/// by name without criu's `--external dev[MAJOR/MINOR]:NAME`; with it
/// dumped, a restore without `--external dev[NAME]:DEVPATH` refused
/// naming it (nothing left), then mounted anew from the device: the held
/// file is the one on it, writable.
fn blockdev_case(name: &str, corrupt: bool) -> Option<Outcome> {
    if not_root() {
        return None;
    }
    let work = Work::new(name);
    let lo = Loop::new(&work);
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let dev = leak(lo.dev.clone());
    let mut args = vec!["--case", "blockdev", "--dev", dev];
    if corrupt {
        args.push("--corrupt");
    }
    let mut opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_mntns"), &args, &opts);
    let out = dump(&work, p.pid, &[], opts.stasis_timeout);
    assert!(
        !out.success() && out.stderr.contains("ext4") && out.stderr.trim_end().lines().count() == 1,
        "dump without --external dev[...]: {out:?}"
    );
    step(&work, "after the refused dump", p.check_running_untraced());
    let ext = leak(format!("dev[{}/{}]:blk", lo.rdev.0, lo.rdev.1));
    opts.dump_extra = vec!["--external", ext];
    dump_and_check_gone(&work, &mut p, &opts);
    let out = restore_detached(&work, &[], opts.stasis_timeout);
    assert!(
        !out.success() && out.stderr.contains("dev[blk]"),
        "restore without dev[blk]:DEVPATH: {out:?}"
    );
    assert!(
        !pid_exists(p.pid),
        "a failed restore left process {}",
        p.pid
    );
    opts.restore_extra = vec!["--external", leak(format!("dev[blk]:{dev}")), "--root", "/"];
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    let out = finish(&work, &mut r, opts.finish_timeout);
    drop(lo);
    Some(out)
}

#[test]
fn cr_mount_namespace_external_dev() {
    if let Some(out) = blockdev_case("cr_mntns_external_dev", false) {
        assert!(out.result.starts_with("PASS"), "{out:?}");
    }
}

#[test]
fn negative_cr_mount_namespace_external_dev() {
    if let Some(out) = blockdev_case("negative_cr_mntns_external_dev", true) {
        assert!(out.result.starts_with("FAIL: "), "{out:?}");
    }
}

/// inotify watches and a fanotify mark on objects (not the root) of a
/// tmpfs the restore makes anew: found again by the paths the dump saved
/// (their handles are stale there); each still reports its events.
#[test]
fn cr_mount_namespace_notify_marks() {
    if not_root() {
        return;
    }
    cr_case("cr_mount_namespace_notify_marks", "notify");
}

#[test]
fn selfcheck_mount_namespace_notify_marks() {
    if not_root() {
        return;
    }
    let work = Work::new("selfcheck_mount_namespace_notify_marks");
    run_plain(&work, Program::Bin("tp_mntns"), &["--case", "notify"]).assert_pass(&work);
}

#[test]
fn negative_mount_namespace_notify_marks() {
    if not_root() {
        return;
    }
    negative(
        "negative_mount_namespace_notify_marks",
        &["--case", "notify"],
    );
}

/// A watch on a file of such a tmpfs that was unlinked while open has no
/// path to be found by: refused by name; the tree runs on.
#[test]
fn refuse_mount_namespace_notify_deleted() {
    if not_root() {
        return;
    }
    refused_dump(
        "refuse_mntns_notify_deleted",
        Program::Bin("tp_mntns"),
        &["--case", "notify-deleted"],
        &[],
        &["inotify watch", "makes anew", "no name"],
        true,
    );
}

/// A tmpfs made unbindable (MS_UNBINDABLE) in the tree's namespace: after
/// a restore mountinfo shows it `unbindable` and a bind of it fails.
#[test]
fn cr_mount_namespace_unbindable() {
    if not_root() {
        return;
    }
    cr_case("cr_mount_namespace_unbindable", "unbindable");
}

/// The same mount left private: the program's checks must fail.
#[test]
fn negative_mount_namespace_unbindable() {
    if not_root() {
        return;
    }
    negative(
        "negative_mount_namespace_unbindable",
        &["--case", "unbindable"],
    );
}
