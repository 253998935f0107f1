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

/// A dump refused in one line naming every one of `words`.
fn refuse_kind(name: &str, args: &[&str], words: &[&str]) {
    refused_dump(name, Program::Bin("tp_netsk"), args, &[], words, true);
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
    refuse_kind(
        "refuse_netlink_queued",
        &["--kind", "netlink", "--queued"],
        &["netlink socket", "messages waiting"],
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
    refuse_kind(
        "refuse_packet_ring",
        &["--kind", "packet", "--ring"],
        &["packet socket", "PACKET_RX_RING"],
    );
}

/// A fanout group of two packet sockets: refused by name.
#[test]
fn refuse_packet_fanout() {
    refuse_kind(
        "refuse_packet_fanout",
        &["--kind", "packet", "--fanout"],
        &["packet socket", "fanout group 77 with 2 members"],
    );
}

/// A packet waiting in a packet socket, and in a raw one: refused by name.
#[test]
fn refuse_packet_queued() {
    refuse_kind(
        "refuse_packet_queued",
        &["--kind", "packet", "--queued"],
        &["packet socket", "packets waiting"],
    );
}

#[test]
fn refuse_raw_queued() {
    refuse_kind(
        "refuse_raw_queued",
        &["--kind", "raw", "--queued"],
        &["raw IP socket", "packets waiting"],
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
