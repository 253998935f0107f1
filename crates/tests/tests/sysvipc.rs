//! SysV IPC end to end: a tree in its own IPC namespace (every kind of
//! object, sysctls, attachments shared between processes), a segment of
//! stasis's own namespace kept, recreated, or refused when its id is
//! taken, and the refusals.

mod common;

use common::*;

macro_rules! selfcheck {
    ($pass:ident, $fail:ident, [$($arg:expr),*]) => {
        #[test]
        fn $pass() {
            let work = Work::new(stringify!($pass));
            run_plain(&work, Program::Bin("tp_sysvipc"), &[$($arg),*]).assert_pass(&work);
        }

        #[test]
        fn $fail() {
            let work = Work::new(stringify!($fail));
            let out = run_plain(&work, Program::Bin("tp_sysvipc"), &[$($arg,)* "--corrupt"]);
            assert!(
                out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
                "the negative control did not fail: {out:?}{}",
                work.diagnostics()
            );
        }
    };
}

selfcheck!(
    selfcheck_sysvipc_own,
    negative_sysvipc_own,
    ["--mode", "own"]
);
selfcheck!(
    selfcheck_sysvipc_host,
    negative_sysvipc_host,
    ["--mode", "host"]
);
selfcheck!(
    selfcheck_sysvipc_lpid_outside,
    negative_sysvipc_lpid_outside,
    ["--mode", "lpid-outside"]
);

/// The negative control through a real dump and restore: the program's
/// own check must catch the change.
#[test]
fn negative_cr_sysvipc_own() {
    let work = Work::new("negative_cr_sysvipc_own");
    let out = run_case(
        &work,
        Program::Bin("tp_sysvipc"),
        &["--mode", "own", "--corrupt"],
        &Opts::default(),
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// The PID check's negative control through a real dump and restore.
#[test]
fn negative_cr_sysvipc_pids() {
    let work = Work::new("negative_cr_sysvipc_pids");
    let out = run_case(
        &work,
        Program::Bin("tp_sysvipc"),
        &["--mode", "own", "--corrupt-pids"],
        &Opts::default(),
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains("PIDs"),
        "{out:?}"
    );
}

#[test]
fn cr_sysvipc_own_namespace() {
    let work = Work::new("cr_sysvipc_own_namespace");
    run_case(
        &work,
        Program::Bin("tp_sysvipc"),
        &["--mode", "own"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

/// The same tree restored into a new PID namespace (`--new-pid-ns`):
/// the PIDs SysV IPC recorded come back inside it (the objects are made
/// by helpers forked there once its init exists).
#[test]
fn cr_sysvipc_own_namespace_new_pid_ns() {
    let work = Work::new("cr_sysvipc_new_pid_ns");
    cr_new_pid_ns(&work, Program::Bin("tp_sysvipc"), &["--mode", "own"]).assert_pass(&work);
}

/// The PID check's negative control through `cr` (a PID namespace
/// driver): another PID expected must fail.
fn negative_pids(name: &str, cr: fn(&Work, Program, &[&str]) -> Outcome) {
    let work = Work::new(name);
    let out = cr(
        &work,
        Program::Bin("tp_sysvipc"),
        &["--mode", "own", "--corrupt-pids"],
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains("PIDs"),
        "{out:?}"
    );
}

/// Its negative control.
#[test]
fn negative_cr_sysvipc_pids_new_pid_ns() {
    negative_pids("negative_cr_sysvipc_pids_new_pid_ns", cr_new_pid_ns);
}

/// The tree as PID 1 of a PID namespace of its own (a container's way):
/// the PIDs SysV IPC recorded as the namespace numbers them, PID 1's
/// included (the init makes its segments, SETVALs, messages by remote
/// calls once seized; the others by helpers forked into the namespace
/// before the init forks its children).
#[test]
fn cr_sysvipc_own_namespace_own_pid_ns() {
    let work = Work::new("cr_sysvipc_own_pid_ns");
    cr_own_pid_ns(&work, Program::Bin("tp_sysvipc"), &["--mode", "own"]).assert_pass(&work);
}

/// Its negative control.
#[test]
fn negative_cr_sysvipc_pids_own_pid_ns() {
    negative_pids("negative_cr_sysvipc_pids_own_pid_ns", cr_own_pid_ns);
}

fn shmid(work: &Work) -> i32 {
    pidfile(work, "shmid")
}

fn rmid(id: i32) {
    // SAFETY: IPC_RMID ignores the buffer.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

/// A segment of stasis's namespace a test made: removed when the test
/// ends, passed or failed (nothing else would ever remove it).
struct Segment(i32);

impl Drop for Segment {
    fn drop(&mut self) {
        rmid(self.0);
    }
}

/// Starts and dumps a `--mode host` program; returns its work directory,
/// PID and segment.
fn host_dumped(name: &str) -> (Work, i32, Segment) {
    let work = Work::new(name);
    let opts = Opts::default();
    let mut p = start(&work, Program::Bin("tp_sysvipc"), &["--mode", "host"]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    let seg = Segment(shmid(&work));
    dump_and_check_gone(&work, &mut p, &opts);
    (work, p.pid, seg)
}

/// The segment outlives the dumped process (nobody removed it): the
/// restore attaches that very segment again, with the saved contents.
#[test]
fn cr_sysvipc_host_segment_kept() {
    let (work, pid, _seg) = host_dumped("cr_sysvipc_host_segment_kept");
    let opts = Opts::default();
    let mut r = restore_and_adopt(&work, pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// The segment was removed after the dump: recreated with its id.
#[test]
fn cr_sysvipc_host_segment_recreated() {
    let (work, pid, seg) = host_dumped("cr_sysvipc_host_segment_recreated");
    let id = seg.0;
    rmid(id);
    let opts = Opts::default();
    let mut r = restore_and_adopt(&work, pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// Another segment holds the id now: the restore refuses by name and
/// leaves nothing behind.
#[test]
fn refuse_sysvipc_host_id_taken() {
    let (work, pid, seg) = host_dumped("refuse_sysvipc_host_id_taken");
    let id = seg.0;
    rmid(id);
    std::fs::write("/proc/sys/kernel/shm_next_id", id.to_string()).expect("shm_next_id");
    // SAFETY: integer-only syscall.
    let other = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, 0o600) };
    let out = restore_detached(&work, &[], Opts::default().stasis_timeout);
    rmid(other);
    assert_eq!(other, id, "could not take the id for the test");
    assert!(
        !out.success()
            && out.stderr.trim_end().lines().count() == 1
            && out.stderr.contains("taken by another segment")
            && out.stderr.contains(&format!("segment {id}")),
        "restore did not refuse the taken id by name: {out:?}{}",
        work.diagnostics()
    );
    assert!(!pid_exists(pid), "PID {pid} left behind");
    // SAFETY: an all-zero shmid_ds is a valid out buffer.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a live buffer.
    let r = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
    assert!(r < 0, "the refused restore left segment {id} behind");
}

/// A child in an IPC namespace its root does not share: refused naming
/// the child (one line), no image, the tree runs on.
#[test]
fn refuse_sysvipc_child_in_other_ipc_namespace() {
    refused_child_dump(
        "refuse_sysvipc_child_ns",
        Program::Bin("tp_sysvipc"),
        &["--mode", "child-ns"],
        "ipc namespace of its own",
    );
}

/// A POSIX message queue no descriptor has open, in the tree's
/// namespace: kept with its message (tests/mqueue.rs has the rest).
#[test]
fn cr_sysvipc_posix_mqueue_in_namespace() {
    let work = Work::new("cr_sysvipc_posix_mqueue_in_namespace");
    run_case(
        &work,
        Program::Bin("tp_sysvipc"),
        &["--mode", "mqueue"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

/// SEM_UNDO adjustments cannot be read: the dump succeeds and the
/// restored process has none (LOST, docs/state.md); the semaphore's value
/// is the one it had, as the program checks.
#[test]
fn cr_sysvipc_sem_undo_value_kept() {
    let work = Work::new("cr_sysvipc_sem_undo_value_kept");
    run_case(
        &work,
        Program::Bin("tp_sysvipc"),
        &["--mode", "sem-undo"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

fn segment_exists(id: i32) -> bool {
    // SAFETY: an all-zero shmid_ds is a valid out buffer.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a live buffer.
    unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) >= 0 }
}

/// A restore failing at any stage after the segments were created leaves
/// neither a process nor a segment it created behind; then the image
/// still restores.
#[test]
fn failed_restore_removes_created_segments() {
    let (work, pid, seg) = host_dumped("failed_restore_removes_created_segments");
    let id = seg.0;
    rmid(id);
    let img = work.img();
    for stage in ["fork", "memory", "registers", "resume"] {
        let out = std::process::Command::new(stasis_bin())
            .args(["restore", "-D", img.to_str().expect("utf-8"), "-d"])
            .env("STASIS_FAULT", format!("restore:{stage}"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run stasis");
        assert!(!out.status.success(), "restore:{stage} did not fail");
        assert!(!pid_exists(pid), "restore:{stage} left PID {pid}");
        assert!(
            !segment_exists(id),
            "restore:{stage} left segment {id} behind"
        );
    }
    let opts = Opts::default();
    let mut r = restore_and_adopt(&work, pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

#[test]
fn refuse_sysvipc_namespace_shared_outside_the_tree() {
    refused_dump(
        "refuse_sysvipc_outsider",
        Program::Bin("tp_sysvipc"),
        &["--mode", "outsider"],
        &[],
        &["outside the tree shares"],
        false,
    );
}

/// `dump -R` reads every object without changing it: the program then
/// finds every message still queued, the semaphores and segments (and
/// their attachment counts) as they were.
#[test]
fn dump_leave_running_sysvipc_own() {
    leave_running(
        "dump_leave_running_sysvipc_own",
        Program::Bin("tp_sysvipc"),
        &["--mode", "own"],
    );
}

/// A dump of a tree whose own namespace holds segments nobody attaches,
/// last attached by a reaped process, the root and a live child, that
/// fails after everything was read and written (`STASIS_FAULT=dump:commit`)
/// or is killed (`STASIS_KILL_AT`: right after a helper with the exited
/// process's PID read its segment, or after the collect stage) leaves
/// every segment's shm_lpid, shm_nattch, the attached segment's times and
/// each process's attachments as they were: the program's own checks
/// after go. `corrupt`: the negative control (the program attaches a
/// segment itself after go) must fail.
fn interrupted_lpid_dump(name: &str, env: (&str, &str), killed: bool, corrupt: bool) {
    let work = Work::new(name);
    let opts = Opts::default();
    let mut args = vec!["--mode", "lpid-kept", "--times"];
    if corrupt {
        args.push("--corrupt");
    }
    let mut p = start_ready(&work, Program::Bin("tp_sysvipc"), &args, &opts);
    let out = interrupted_dump(&work, &mut p, env, killed);
    assert!(
        killed || String::from_utf8_lossy(&out.stderr).contains("injected"),
        "{out:?}"
    );
    let o = finish(&work, &mut p, opts.finish_timeout);
    if corrupt {
        assert!(
            o.result.starts_with("FAIL: ") && o.result.contains("shm_lpid"),
            "the negative control did not fail: {o:?}{}",
            work.diagnostics()
        );
    } else {
        o.assert_pass(&work);
    }
}

#[test]
fn failed_dump_keeps_sysvipc_lpid() {
    interrupted_lpid_dump(
        "failed_dump_keeps_sysvipc_lpid",
        ("STASIS_FAULT", "dump:commit"),
        false,
        false,
    );
}

#[test]
fn negative_failed_dump_sysvipc_lpid() {
    interrupted_lpid_dump(
        "negative_failed_dump_sysvipc_lpid",
        ("STASIS_FAULT", "dump:commit"),
        false,
        true,
    );
}

#[test]
fn kill_dumper_after_sysvipc_lpid_read() {
    for (i, point) in ["sysv-read", "dump:collect"].into_iter().enumerate() {
        interrupted_lpid_dump(
            &format!("kill_dumper_after_sysvipc_lpid_read_{i}"),
            ("STASIS_KILL_AT", point),
            true,
            false,
        );
    }
}

/// `dump -R` of the same tree: every shm_lpid, attachment count and the
/// attached segment's times as they were, with a complete image.
#[test]
fn dump_leave_running_sysvipc_lpid_kept() {
    leave_running(
        "dump_leave_running_sysvipc_lpid_kept",
        Program::Bin("tp_sysvipc"),
        &["--mode", "lpid-kept", "--times"],
    );
}

/// The same tree dumped and restored: every segment's creator, last
/// attacher (the reaped process, the root, the child), attachment count
/// and contents come back.
#[test]
fn cr_sysvipc_lpid_kept() {
    let work = Work::new("cr_sysvipc_lpid_kept");
    run_case(
        &work,
        Program::Bin("tp_sysvipc"),
        &["--mode", "lpid-kept"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

/// A plain dump (no `-R`) of a segment nobody attaches whose last
/// attacher is alive outside the tree: refused before anything is read,
/// since a dump failing after the read would hand the tree back with
/// shm_lpid changed; the program then finds shm_lpid unchanged.
#[test]
fn refuse_sysvipc_lpid_outside() {
    refused_dump(
        "refuse_sysvipc_lpid_outside",
        Program::Bin("tp_sysvipc"),
        &["--mode", "lpid-outside"],
        &[],
        &["shm_lpid", "alive outside the tree", "failed dump"],
        true,
    );
}

/// `dump -R` of a tree whose own namespace holds a segment nobody
/// attaches, last attached by a live process outside the tree: refused by
/// name before the tree is touched (reading the segment would make its
/// shm_lpid stasis's); the program then finds shm_lpid unchanged.
#[test]
fn refuse_leave_running_sysvipc_lpid_outside() {
    refused_dump(
        "refuse_leave_running_sysvipc_lpid_outside",
        Program::Bin("tp_sysvipc"),
        &["--mode", "lpid-outside"],
        &["-R"],
        &["shm_lpid", "alive outside the tree", "--leave-running"],
        true,
    );
}
