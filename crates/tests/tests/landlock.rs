//! Landlock domains: refused by name (a restored thread would run
//! unrestricted; no interface reads a domain's rules), for a whole
//! process and for one thread of it. The negative control: the program's
//! own check fails when it has no domain, which is what a restore that
//! dropped it would give.

mod common;

use common::*;

#[test]
fn refuse_landlock_domain() {
    refused_dump(
        "refuse_landlock_domain",
        Program::Bin("tp_landlock"),
        &[],
        &[],
        &["Landlock domain"],
        false,
    );
}

#[test]
fn refuse_landlock_domain_of_one_thread() {
    refused_dump(
        "refuse_landlock_domain_of_one_thread",
        Program::Bin("tp_landlock"),
        &["--thread"],
        &[],
        &["Landlock domain"],
        false,
    );
}

#[test]
fn negative_landlock_no_domain() {
    let work = Work::new("negative_landlock_no_domain");
    let out = run_plain(&work, Program::Bin("tp_landlock"), &["--corrupt"]);
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

#[test]
fn selfcheck_landlock() {
    let work = Work::new("selfcheck_landlock");
    run_plain(&work, Program::Bin("tp_landlock"), &["--thread"]).assert_pass(&work);
}
