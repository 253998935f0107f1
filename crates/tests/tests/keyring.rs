//! A session keyring of its own (runc's per-container one), with
//! tp_keyring: joined anew at restore with its name, owner, permissions
//! and user keys, and shared by the same processes; a key whose payload
//! cannot be read, or one that expires, is refused by name.

mod common;

use common::*;

#[test]
fn selfcheck_keyring() {
    let work = Work::new("selfcheck_keyring");
    run_plain(&work, Program::Bin("tp_keyring"), &[]).assert_pass(&work);
}

#[test]
fn negative_keyring() {
    let work = Work::new("negative_keyring");
    let out = run_plain(&work, Program::Bin("tp_keyring"), &["--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

fn keyring_case(name: &str, args: &[&str]) -> Outcome {
    let work = Work::new(name);
    let out = run_case(&work, Program::Bin("tp_keyring"), args, &Opts::default());
    if !out.result.starts_with("FAIL") {
        out.assert_pass(&work);
    }
    out
}

#[test]
fn cr_session_keyring() {
    let out = keyring_case("cr_session_keyring", &[]);
    assert!(out.result.starts_with("PASS"), "{out:?}");
}

#[test]
fn negative_cr_session_keyring() {
    let out = keyring_case("negative_cr_session_keyring", &["--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

#[test]
fn cr_session_keyring_empty() {
    let out = keyring_case("cr_session_keyring_empty", &["--empty"]);
    assert!(out.result.starts_with("PASS"), "{out:?}");
}

/// A key its possessor may not read: refused by name, the program runs on.
#[test]
fn refuse_unreadable_key() {
    refused_dump(
        "refuse_unreadable_key",
        Program::Bin("tp_keyring"),
        &["--unreadable"],
        &[],
        &["tp-secret", "payload cannot be read"],
        true,
    );
}

/// A key with a timeout: refused by name, the program runs on.
#[test]
fn refuse_expiring_key() {
    refused_dump(
        "refuse_expiring_key",
        Program::Bin("tp_keyring"),
        &["--timeout"],
        &[],
        &["tp-a", "expires"],
        true,
    );
}

/// Another keyring of the same name outside the tree, which only its
/// owner may search (a dead container's, still held by a zombie): the
/// restored root does not find it, and joins a new one.
#[test]
fn cr_session_keyring_name_held_by_owner() {
    let out = keyring_case("cr_session_keyring_name_held", &["--holder", "owner"]);
    assert!(out.result.starts_with("PASS"), "{out:?}");
}

/// Another keyring of the same name which anybody may search: the join
/// finds it; the restore is refused by name and leaves nothing.
#[test]
fn refuse_session_keyring_name_taken() {
    let work = Work::new("refuse_session_keyring_name_taken");
    let opts = Opts::default();
    let mut p = start_ready(
        &work,
        Program::Bin("tp_keyring"),
        &["--holder", "anybody"],
        &opts,
    );
    dump_and_check_gone(&work, &mut p, &opts);
    let out = restore_detached(&work, &[], opts.stasis_timeout);
    assert!(
        !out.success()
            && out.stderr.trim_end().lines().count() == 1
            && out.stderr.contains("session keyring")
            && out.stderr.contains("not a new keyring"),
        "restore beside a keyring of the same name anybody may search: {out:?}"
    );
    assert!(!pid_exists(p.pid), "a refused restore left {}", p.pid);
}

/// A child with a session keyring of its own, not the root's: the dump
/// refuses it by name (a restored tree shares the root's), and the tree
/// runs on.
#[test]
fn refuse_child_own_session_keyring() {
    refused_dump(
        "refuse_child_own_session_keyring",
        Program::Bin("tp_keyring"),
        &["--child-own"],
        &[],
        &["stasis-tp-child", "is not the tree root's"],
        true,
    );
}
