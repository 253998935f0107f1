//! Network namespaces end to end: a tree in its own namespace (lo,
//! addresses, routes, sysctls, listening TCP and bound UDP sockets in it)
//! restored into a new one, and the refusals.

mod common;

use common::*;

#[test]
fn selfcheck_netns() {
    let work = Work::new("selfcheck_netns");
    run_plain(&work, Program::Bin("tp_netns"), &["--mode", "own"]).assert_pass(&work);
}

#[test]
fn negative_netns() {
    let work = Work::new("negative_netns");
    let out = run_plain(
        &work,
        Program::Bin("tp_netns"),
        &["--mode", "own", "--corrupt"],
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

#[test]
fn cr_netns_own() {
    let work = Work::new("cr_netns_own");
    run_case(
        &work,
        Program::Bin("tp_netns"),
        &["--mode", "own"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

/// The negative control through a real dump and restore.
#[test]
fn negative_cr_netns_own() {
    let work = Work::new("negative_cr_netns_own");
    let out = run_case(
        &work,
        Program::Bin("tp_netns"),
        &["--mode", "own", "--corrupt"],
        &Opts::default(),
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// A veth pair in the namespace, no outside name given: refused by name.
#[test]
fn refuse_netns_veth() {
    refused_dump(
        "refuse_netns_veth",
        Program::Bin("tp_netns"),
        &["--mode", "veth"],
        &[],
        &["link v", "veth"],
        false,
    );
}

/// nftables rules inside the namespace: refused by name.
#[test]
fn refuse_netns_nft() {
    refused_dump(
        "refuse_netns_nft",
        Program::Bin("tp_netns"),
        &["--mode", "nft"],
        &[],
        &["nftables rules in its network namespace"],
        false,
    );
}
