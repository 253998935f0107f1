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

/// A dummy link in the namespace: refused by name.
#[test]
fn refuse_netns_dummy() {
    refused_dump(
        "refuse_netns_dummy",
        Program::Bin("tp_netns"),
        &["--mode", "dummy"],
        &[],
        &["link d0", "dummy"],
        false,
    );
}

/// iptables-legacy rules inside the namespace: refused by name.
#[test]
fn refuse_netns_iptables_legacy() {
    refused_dump(
        "refuse_netns_iptables_legacy",
        Program::Bin("tp_netns"),
        &["--mode", "legacy"],
        &[],
        &["iptables-legacy rules in its network namespace"],
        false,
    );
}

/// Removes what a `--netns` program made outside its own namespace (its
/// bridge, the peer's named namespace), listed in `WORK/net-names`.
struct NetCleanup(std::path::PathBuf);

impl Drop for NetCleanup {
    fn drop(&mut self) {
        let Ok(names) = std::fs::read_to_string(&self.0) else {
            return;
        };
        for n in names.lines() {
            let args: &[&str] = if n.starts_with("stbr") {
                &["link", "del", n]
            } else {
                &["netns", "del", n]
            };
            let _ = std::process::Command::new("ip").args(args).output();
        }
    }
}

/// tp_tcp in a namespace of its own behind a veth on a bridge, dumped
/// with `--tcp-established` and restored; the lock (inside the namespace)
/// must leave nothing in ours.
fn tcp_netns_case(name: &str, args: &[&str], dump: &[&'static str], restore: &[String]) -> Outcome {
    let work = Work::new(name);
    let _clean = NetCleanup(work.path("net-names"));
    let opts = Opts {
        dump_extra: dump.to_vec(),
        restore_extra: vec![],
        ..Opts::default()
    };
    let mut p = start_ready(&work, Program::Bin("tp_tcp"), args, &opts);
    dump_and_check_gone(&work, &mut p, &opts);
    let v = show(&work, &work.img());
    if v["inventory"]["net_lock"]["in_netns"] != serde_json::Value::Bool(true)
        && !dump.contains(&"skip")
    {
        fail(
            &work,
            "the image's network lock is not in the tree's namespace",
        );
    }
    let ropts = Opts {
        restore_extra: restore
            .iter()
            .map(|s| &*Box::leak(s.clone().into_boxed_str()))
            .collect(),
        ..Opts::default()
    };
    let mut r = restore_and_adopt(&work, p.pid, &ropts);
    let out = finish(&work, &mut r, opts.finish_timeout);
    let nft = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if nft.contains("stasis_") {
        fail(&work, format!("a lock table left in our namespace:\n{nft}"));
    }
    out
}

#[test]
fn selfcheck_tcp_netns() {
    let work = Work::new("selfcheck_tcp_netns");
    let _clean = NetCleanup(work.path("net-names"));
    run_plain(&work, Program::Bin("tp_tcp"), &["--netns", "peer-ns"]).assert_pass(&work);
}

/// Established connections of a tree in its own namespace, the peer in
/// ours across a veth and a bridge, one pair inside; nftables lock.
#[test]
fn cr_tcp_netns_host_peer() {
    let dump = ["--tcp-established", "--network-lock", "nftables"];
    let work = Work::new("cr_tcp_netns_host_peer");
    tcp_netns_case(
        "cr_tcp_netns_host_peer",
        &["--netns", "host"],
        &dump,
        &["--tcp-established".into()],
    )
    .assert_pass(&work);
}

/// Migration between two namespaces as a client in a third sees it: the
/// server's namespace dies with the dump, a new one with the same address,
/// MAC and routes is made at restore, the outer veth end named by
/// `--veth-pair` and put on the bridge; the client's connection carries
/// on (no reset). iptables lock (criu's default).
#[test]
fn cr_tcp_netns_migrate() {
    let work = Work::new("cr_tcp_netns_migrate");
    let _clean = NetCleanup(work.path("net-names"));
    let opts = Opts {
        dump_extra: vec!["--tcp-established"],
        ..Opts::default()
    };
    let mut p = start_ready(
        &work,
        Program::Bin("tp_tcp"),
        &["--netns", "peer-ns"],
        &opts,
    );
    dump_and_check_gone(&work, &mut p, &opts);
    let pid = p.pid;
    let pair = format!("stvi{pid}=stvx{pid}@stbr{pid}");
    let ropts = Opts {
        restore_extra: vec![
            "--tcp-established",
            "--veth-pair",
            Box::leak(pair.into_boxed_str()),
        ],
        ..Opts::default()
    };
    let mut r = restore_and_adopt(&work, pid, &ropts);
    let master = std::fs::read_link(format!("/sys/class/net/stvx{pid}/master"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if !master.ends_with(&format!("stbr{pid}")) {
        fail(
            &work,
            format!("the outer end stvx{pid} is not on the bridge: {master:?}"),
        );
    }
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// The negative control through a real dump and restore in a namespace.
#[test]
fn negative_cr_tcp_netns() {
    let out = tcp_netns_case(
        "negative_cr_tcp_netns",
        &["--netns", "host", "--corrupt"],
        &["--tcp-established"],
        &["--tcp-established".into()],
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}
