//! Established TCP connections (`--tcp-established`, `--tcp-close`,
//! `--network-lock`), with tp_tcp: connections to a peer outside the tree
//! and with both ends inside, queues full both ways, IPv4, IPv6 and
//! v4-mapped. Every test checks that no lock rule is left behind.

mod common;

use common::*;
use std::process::Command;

/// Rules of ours (nftables tables, iptables chains) present now.
fn lock_rules() -> String {
    let mut out = String::new();
    for (cmd, args) in [
        ("nft", &["list", "tables"][..]),
        ("iptables", &["-w", "-S"][..]),
        ("ip6tables", &["-w", "-S"][..]),
    ] {
        if let Ok(o) = Command::new(cmd).args(args).output() {
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                if l.contains("stasis_") {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// The lock the dump recorded in the image (if any) is gone.
fn no_leak(work: &Work) {
    let v = show(work, &work.img());
    let Some(name) = v["inventory"]["net_lock"]["name"].as_str() else {
        return;
    };
    let left = lock_rules();
    if left.contains(name) {
        fail(work, format!("network lock {name} left behind:\n{left}"));
    }
}

fn tcp_case(name: &str, args: &[&str], dump: &[&'static str], restore: &[&'static str]) -> Outcome {
    let work = Work::new(name);
    let opts = Opts {
        dump_extra: dump.to_vec(),
        restore_extra: restore.to_vec(),
        ..Opts::default()
    };
    let out = run_case(&work, Program::Bin("tp_tcp"), args, &opts);
    no_leak(&work);
    if !out.result.starts_with("FAIL") {
        out.assert_pass(&work);
    }
    out
}

#[test]
fn selfcheck_tcp() {
    let work = Work::new("selfcheck_tcp");
    run_plain(&work, Program::Bin("tp_tcp"), &["--mapped"]).assert_pass(&work);
}

#[test]
fn negative_tcp() {
    let work = Work::new("negative_tcp");
    let out = run_plain(&work, Program::Bin("tp_tcp"), &["--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// Outside peer (IPv4, IPv6) and both ends inside, nftables lock.
#[test]
fn cr_tcp_established_nftables() {
    let dump = ["--tcp-established", "--network-lock", "nftables"];
    tcp_case(
        "cr_tcp_established_nftables",
        &[],
        &dump,
        &["--tcp-established"],
    );
}

/// The same with criu's default lock (iptables), and a dual-stack socket
/// connected to an IPv4 peer (v4-mapped addresses).
#[test]
fn cr_tcp_established_iptables_mapped() {
    tcp_case(
        "cr_tcp_established_iptables_mapped",
        &["--mapped"],
        &["--tcp-established"],
        &[],
    );
}

/// The negative control after a real dump and restore: a wrong expected
/// stream fails.
#[test]
fn negative_tcp_established() {
    let out = tcp_case(
        "negative_tcp_established",
        &["--corrupt"],
        &["--tcp-established", "--network-lock", "nftables"],
        &[],
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// Without --tcp-established a connection is refused by name.
#[test]
fn refuse_tcp_without_option() {
    refused_dump(
        "refuse_tcp_without_option",
        Program::Bin("tp_tcp"),
        &[],
        &[],
        &["--tcp-established"],
        false,
    );
}

/// Restored with --tcp-close: every end is closed (end of file, EPIPE).
#[test]
fn cr_tcp_close_on_restore() {
    tcp_case(
        "cr_tcp_close_on_restore",
        &["--close"],
        &["--tcp-established", "--network-lock", "nftables"],
        &["--tcp-close"],
    );
}

/// Dumped with --tcp-close: no repair, no lock, restored closed.
#[test]
fn cr_tcp_close_on_dump() {
    tcp_case("cr_tcp_close_on_dump", &["--close"], &["--tcp-close"], &[]);
}
