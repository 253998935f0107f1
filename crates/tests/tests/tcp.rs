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

/// The connection inside the tree signs with a TCP_MD5SIG key: the keys
/// come back (read through inet sock_diag), the streams carry on.
#[test]
fn cr_tcp_established_md5() {
    let dump = ["--tcp-established", "--network-lock", "nftables"];
    tcp_case(
        "cr_tcp_established_md5",
        &["--md5"],
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

/// `stasis ARGS` with extra environment (a fault to inject); (success,
/// stderr).
fn stasis_env(work: &Work, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(stasis_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| fail(work, format!("spawn stasis: {e}")));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn started(work: &Work, args: &[&str]) -> Proc {
    let mut p = start(work, Program::Bin("tp_tcp"), args);
    step(
        work,
        "waiting for ready",
        wait_ready(work, &mut p, Opts::default().ready_timeout),
    );
    p
}

/// Whether a lock of the tree rooted at `pid` exists.
fn locked(pid: i32) -> bool {
    lock_rules().contains(&format!("stasis_{pid}_"))
}

/// A dump failing after the lock and repair mode: the lock is released,
/// repair is off, the program carries on with every connection intact and
/// the peer saw nothing.
#[test]
fn tcp_failed_dump_unlocks() {
    let work = Work::new("tcp_failed_dump_unlocks");
    let mut p = started(&work, &[]);
    std::fs::create_dir_all(work.img()).expect("img dir");
    let pid = p.pid.to_string();
    let img = work.img().display().to_string();
    let args = [
        "dump",
        "-t",
        &pid,
        "-D",
        &img,
        "--tcp-established",
        "--network-lock",
        "nftables",
    ];
    let (ok, err) = stasis_env(&work, &args, &[("STASIS_FAULT", "dump:collect")]);
    assert!(!ok && err.contains("injected"), "dump did not fail: {err}");
    assert!(
        !locked(p.pid),
        "lock left after a failed dump: {}",
        lock_rules()
    );
    finish(&work, &mut p, Opts::default().finish_timeout).assert_pass(&work);
}

/// A restore failing at its last step leaves the lock (the peers wait);
/// a second restore of the same image succeeds and releases it.
#[test]
fn tcp_failed_restore_keeps_lock() {
    let work = Work::new("tcp_failed_restore_keeps_lock");
    let opts = Opts {
        dump_extra: vec!["--tcp-established", "--network-lock", "nftables"],
        ..Opts::default()
    };
    let mut p = started(&work, &[]);
    dump_and_check_gone(&work, &mut p, &opts);
    let img = work.img().display().to_string();
    let (ok, err) = stasis_env(
        &work,
        &["restore", "-D", &img, "-d"],
        &[("STASIS_FAULT", "restore:resume")],
    );
    assert!(
        !ok && err.contains("injected"),
        "restore did not fail: {err}"
    );
    assert!(!pid_exists(p.pid), "a failed restore left PID {}", p.pid);
    assert!(locked(p.pid), "the lock went with a failed restore");
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
    no_leak(&work);
}

/// dump -R --tcp-established: the connections keep working (repair off,
/// lock released) and nothing is left locked.
#[test]
fn tcp_leave_running() {
    let work = Work::new("tcp_leave_running");
    let mut p = started(&work, &["--mapped"]);
    let out = dump(
        &work,
        p.pid,
        &["-R", "--tcp-established"],
        Opts::default().stasis_timeout,
    );
    assert!(out.success(), "dump -R failed: {}", out.stderr);
    assert!(!locked(p.pid), "lock left after dump -R: {}", lock_rules());
    finish(&work, &mut p, Opts::default().finish_timeout).assert_pass(&work);
}

/// Half-closed connections in every state (FIN_WAIT1, FIN_WAIT2, CLOSING,
/// CLOSE_WAIT, LAST_ACK; each checked before the dump): restored; both
/// sides read everything to end of file, the open directions carry on.
#[test]
fn cr_tcp_half_closed() {
    tcp_case(
        "cr_tcp_half_closed",
        &["--half-closed"],
        &["--tcp-established", "--network-lock", "nftables"],
        &[],
    );
}

#[test]
fn selfcheck_tcp_half_closed() {
    let work = Work::new("selfcheck_tcp_half_closed");
    run_plain(&work, Program::Bin("tp_tcp"), &["--half-closed"]).assert_pass(&work);
}
