//! Netlink, packet and raw IP sockets end to end (tp_netsk: each kind in
//! the program's own network namespace), and their refusals.

mod common;

use common::*;

fn cr_kind(name: &str, kind: &str) {
    let work = Work::new(name);
    run_case(
        &work,
        Program::Bin("tp_netsk"),
        &["--kind", kind],
        &Opts::default(),
    )
    .assert_pass(&work);
}

/// The negative control through a real dump and restore: it fails, on
/// the value the program expects wrongly (`what`).
fn negative_kind(name: &str, kind: &str, what: &str) {
    let work = Work::new(name);
    let out = run_case(
        &work,
        Program::Bin("tp_netsk"),
        &["--kind", kind, "--corrupt"],
        &Opts::default(),
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains(what),
        "{out:?}"
    );
}

fn selfcheck(name: &str, kind: &str) {
    let work = Work::new(name);
    run_plain(&work, Program::Bin("tp_netsk"), &["--kind", kind]).assert_pass(&work);
}

#[test]
fn selfcheck_netlink_sockets() {
    selfcheck("selfcheck_netlink_sockets", "netlink");
}

#[test]
fn cr_netlink_sockets() {
    cr_kind("cr_netlink_sockets", "netlink");
}

#[test]
fn negative_cr_netlink_sockets() {
    negative_kind(
        "negative_cr_netlink_sockets",
        "netlink",
        "route after restore",
    );
}

/// A notification waiting in a route socket: refused by name.
#[test]
fn refuse_netlink_queued() {
    refused_dump(
        "refuse_netlink_queued",
        Program::Bin("tp_netsk"),
        &["--kind", "netlink", "--queued"],
        &[],
        &["netlink socket", "messages waiting"],
        true,
    );
}

#[test]
fn selfcheck_packet_sockets() {
    selfcheck("selfcheck_packet_sockets", "packet");
}

#[test]
fn cr_packet_sockets() {
    cr_kind("cr_packet_sockets", "packet");
}

#[test]
fn negative_cr_packet_sockets() {
    negative_kind(
        "negative_cr_packet_sockets",
        "packet",
        "packet socket after",
    );
}

/// A packet socket with a mapped ring: refused by name.
#[test]
fn refuse_packet_ring() {
    refused_dump(
        "refuse_packet_ring",
        Program::Bin("tp_netsk"),
        &["--kind", "packet", "--ring"],
        &[],
        &["packet socket", "PACKET_RX_RING"],
        true,
    );
}

/// A packet socket in a fanout group: refused by name.
#[test]
fn refuse_packet_fanout() {
    refused_dump(
        "refuse_packet_fanout",
        Program::Bin("tp_netsk"),
        &["--kind", "packet", "--fanout"],
        &[],
        &["packet socket", "fanout group 77"],
        true,
    );
}

/// A packet waiting in a packet socket, and in a raw one: refused by name.
#[test]
fn refuse_packet_queued() {
    refused_dump(
        "refuse_packet_queued",
        Program::Bin("tp_netsk"),
        &["--kind", "packet", "--queued"],
        &[],
        &["packet socket", "packets waiting"],
        true,
    );
}

#[test]
fn refuse_raw_queued() {
    refused_dump(
        "refuse_raw_queued",
        Program::Bin("tp_netsk"),
        &["--kind", "raw", "--queued"],
        &[],
        &["raw IP socket", "packets waiting"],
        true,
    );
}

#[test]
fn selfcheck_raw_sockets() {
    selfcheck("selfcheck_raw_sockets", "raw");
}

#[test]
fn cr_raw_sockets() {
    cr_kind("cr_raw_sockets", "raw");
}

#[test]
fn negative_cr_raw_sockets() {
    negative_kind(
        "negative_cr_raw_sockets",
        "raw",
        "raw socket 0 after restore",
    );
}
