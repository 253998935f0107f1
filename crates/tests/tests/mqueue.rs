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
    let out = run_plain(&work, Program::Bin("tp_mqueue"), &["--mode", "ns", "--corrupt"]);
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

#[test]
fn cr_mqueue_ns() {
    let work = Work::new("cr_mqueue_ns");
    run_case(&work, Program::Bin("tp_mqueue"), &["--mode", "ns"], &Opts::default())
        .assert_pass(&work);
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
        &["posix message queue /stasis-mq-host", "stasis's ipc namespace"],
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
