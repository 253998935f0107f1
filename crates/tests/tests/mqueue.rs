//! POSIX message queues end to end: the queues of a tree's own IPC
//! namespace (attributes, owner, mode, every message in order, the
//! mqueue sysctls) and descriptors of them, and the refusals.

mod common;

use common::*;

#[test]
fn selfcheck_mqueue_ns() {
    let work = Work::new("selfcheck_mqueue_ns");
    run_plain(&work, Program::Bin("tp_mqueue"), &["--mode", "ns"]).assert_pass(&work);
}

#[test]
fn negative_mqueue_ns() {
    let work = Work::new("negative_mqueue_ns");
    let out = run_plain(
        &work,
        Program::Bin("tp_mqueue"),
        &["--mode", "ns", "--corrupt"],
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

#[test]
fn cr_mqueue_ns() {
    let work = Work::new("cr_mqueue_ns");
    run_case(
        &work,
        Program::Bin("tp_mqueue"),
        &["--mode", "ns"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

/// The same with compressed page files (the IPC pages, `mq_end`'s
/// among them, go through zstd).
#[test]
fn cr_mqueue_ns_compressed() {
    let work = Work::new("cr_mqueue_ns_compressed");
    let opts = Opts {
        dump_extra: vec!["--compress=zstd:1"],
        ..Opts::default()
    };
    run_case(&work, Program::Bin("tp_mqueue"), &["--mode", "ns"], &opts).assert_pass(&work);
}

/// The negative control through a real dump and restore: a message
/// removed after the restore is caught by the program's own check.
#[test]
fn negative_cr_mqueue_ns() {
    let work = Work::new("negative_cr_mqueue_ns");
    let out = run_case(
        &work,
        Program::Bin("tp_mqueue"),
        &["--mode", "ns", "--corrupt"],
        &Opts::default(),
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

#[test]
fn refuse_mqueue_host_namespace() {
    refused_dump(
        "refuse_mqueue_host",
        Program::Bin("tp_mqueue"),
        &["--mode", "host"],
        &[],
        &[
            "posix message queue /stasis-mq-host",
            "stasis's ipc namespace",
        ],
        true,
    );
}

#[test]
fn refuse_mqueue_notify() {
    refused_dump(
        "refuse_mqueue_notify",
        Program::Bin("tp_mqueue"),
        &["--mode", "notify"],
        &[],
        &["posix message queue /stasis-mq-a", "mq_notify"],
        true,
    );
}

#[test]
fn refuse_mqueue_full_with_blocked_sender() {
    refused_dump(
        "refuse_mqueue_blocked_send",
        Program::Bin("tp_mqueue"),
        &["--mode", "blocked-send"],
        &[],
        &["posix message queue /stasis-mq-full", "mq_timedsend"],
        true,
    );
}

/// A descriptor of a queue of stasis's namespace in a tree with its own,
/// which holds a queue of the same name: refused (st_dev tells them apart).
#[test]
fn refuse_mqueue_of_another_namespace() {
    let unlink = || {
        // SAFETY: removes the test program's queue of this namespace, if any.
        unsafe { libc::mq_unlink(c"/stasis-mq-other".as_ptr()) };
    };
    unlink();
    refused_dump(
        "refuse_mqueue_other_ns",
        Program::Bin("tp_mqueue"),
        &["--mode", "other-ns"],
        &[],
        &["posix message queue /stasis-mq-other", "not the tree's"],
        true,
    );
    unlink();
}

#[test]
fn refuse_mqueue_unlinked() {
    refused_dump(
        "refuse_mqueue_unlinked",
        Program::Bin("tp_mqueue"),
        &["--mode", "unlinked"],
        &[],
        &["mq_unlink"],
        true,
    );
}

/// `dump -R`: every message was received and sent back in order, so the
/// program finds each queue as it made it.
#[test]
fn dump_leave_running_mqueue_ns() {
    leave_running(
        "dump_leave_running_mqueue_ns",
        Program::Bin("tp_mqueue"),
        &["--mode", "ns"],
    );
}

/// A dump killed (`STASIS_KILL_AT=mqueue-read`: the dumper SIGKILLs
/// itself while its reader child holds the messages) or failing after
/// the queues were read (`STASIS_FAULT=dump:collect`) leaves every queue
/// exactly as it was: the program's own checks after go.
fn interrupted_mqueue_dump(name: &str, env: (&str, &str), killed: bool) {
    let work = Work::new(name);
    let opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_mqueue"), &["--mode", "ns"], &opts);
    // The reader child puts the messages back within microseconds.
    interrupted_dump(&work, &mut p, env, killed);
    std::thread::sleep(std::time::Duration::from_millis(100));
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

#[test]
fn kill_dumper_mid_mqueue_read() {
    interrupted_mqueue_dump(
        "kill_dumper_mid_mqueue_read",
        ("STASIS_KILL_AT", "mqueue-read"),
        true,
    );
}

#[test]
fn failed_dump_keeps_mqueue_messages() {
    interrupted_mqueue_dump(
        "failed_dump_keeps_mqueue",
        ("STASIS_FAULT", "dump:collect"),
        false,
    );
}
