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

/// A link other than lo and veth (a bridge) in the namespace: refused by
/// name.
#[test]
fn refuse_netns_bridge() {
    refused_dump(
        "refuse_netns_bridge",
        Program::Bin("tp_netns"),
        &["--mode", "bridge"],
        &[],
        &["link b0", "bridge"],
        false,
    );
}

/// An iptables-legacy rule whose state lives in the kernel (`-m
/// recent`) inside the namespace: refused by name.
#[test]
fn refuse_netns_iptables_legacy_stateful() {
    refused_dump(
        "refuse_netns_iptables_legacy_stateful",
        Program::Bin("tp_netns"),
        &["--mode", "legacy"],
        &[],
        &["iptables-legacy rule in its network namespace", "-m recent"],
        false,
    );
}

#[test]
fn selfcheck_netns_routing() {
    let work = Work::new("selfcheck_netns_routing");
    run_plain(&work, Program::Bin("tp_netns"), &["--mode", "routing"]).assert_pass(&work);
}

/// Policy routing rules (IPv4 and IPv6, every selector and action, a
/// default one deleted), routes of tables main, local, 100, 200 and 300
/// (nexthop objects and a group, multipath, metrics, blackhole,
/// unreachable, prohibit, a kernel route deleted) and iptables-legacy
/// tables with counters: `ip rule`, `ip route show table all`, `ip
/// nexthop` and `iptables-legacy-save -c` read as before inside the
/// restored namespace.
#[test]
fn cr_netns_routing() {
    let work = Work::new("cr_netns_routing");
    run_case(
        &work,
        Program::Bin("tp_netns"),
        &["--mode", "routing"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

#[test]
fn negative_cr_netns_routing() {
    let work = Work::new("negative_cr_netns_routing");
    let out = run_case(
        &work,
        Program::Bin("tp_netns"),
        &["--mode", "routing", "--corrupt"],
        &Opts::default(),
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// tp_netns `macvlan` dumped and restored with `restore` (given the
/// program's PID); mv0's lower device must then be our `stbLPID` (`l`:
/// `m` or `n`), read from outside (`ip -o link` in the restored
/// namespace).
fn macvlan_case(
    name: &str,
    corrupt: bool,
    lower: char,
    restore: fn(i32) -> Vec<String>,
) -> (Work, Outcome) {
    let work = Work::new(name);
    let _clean = NetCleanup(work.path("net-names"));
    let mut args = vec!["--mode", "macvlan"];
    if corrupt {
        args.push("--corrupt");
    }
    let mut p = start_ready(&work, Program::Bin("tp_netns"), &args, &Opts::default());
    dump_and_check_gone(&work, &mut p, &Opts::default());
    let ropts = Opts {
        restore_extra: restore(p.pid)
            .into_iter()
            .map(|s| &*Box::leak(s.into_boxed_str()))
            .collect(),
        ..Opts::default()
    };
    let mut r = restore_and_adopt(&work, p.pid, &ropts);
    let index = std::fs::read_to_string(format!("/sys/class/net/stb{lower}{}/ifindex", p.pid))
        .unwrap_or_default();
    let o = std::process::Command::new("nsenter")
        .args([
            "-t",
            &r.pid.to_string(),
            "-n",
            "ip",
            "-o",
            "link",
            "show",
            "mv0",
        ])
        .output()
        .expect("nsenter");
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    if !shown.contains(&format!("mv0@if{}:", index.trim())) {
        fail(
            &work,
            format!("mv0 is not on stb{lower}{} (index {index}): {shown}", p.pid),
        );
    }
    let out = finish(&work, &mut r, ropts.finish_timeout);
    (work, out)
}

/// macvlan links: one on a device outside (the saved lower device, by
/// name), one on a veth inside; `ip -d link`, addresses and routes read as
/// before inside.
#[test]
fn cr_netns_macvlan() {
    let (work, out) = macvlan_case("cr_netns_macvlan", false, 'm', |_| vec![]);
    out.assert_pass(&work);
}

/// criu's `--external macvlan[mv0]:OUTER`: mv0 made on another device
/// (the other end of the lower's veth pair).
#[test]
fn cr_netns_macvlan_external() {
    let (work, out) = macvlan_case("cr_netns_macvlan_external", false, 'n', |pid| {
        vec!["--external".into(), format!("macvlan[mv0]:stbn{pid}")]
    });
    out.assert_pass(&work);
}

/// `--external macvlan[mv0]:NAME` naming no device: the restore fails
/// naming the macvlan and the option, leaving no process; the same image
/// then restores without it.
#[test]
fn netns_macvlan_missing_lower_fails_restore() {
    let work = Work::new("netns_macvlan_missing_lower_fails_restore");
    let _clean = NetCleanup(work.path("net-names"));
    let mut p = start_ready(
        &work,
        Program::Bin("tp_netns"),
        &["--mode", "macvlan"],
        &Opts::default(),
    );
    dump_and_check_gone(&work, &mut p, &Opts::default());
    let t = Opts::default().stasis_timeout;
    let out = restore_detached(&work, &["--external", "macvlan[mv0]:stnosuch0"], t);
    if out.success()
        || !out.stderr.contains("macvlan mv0")
        || !out.stderr.contains("--external macvlan[mv0]:OUTER")
        || pid_exists(p.pid)
    {
        fail(
            &work,
            format!("the restore did not fail naming mv0: {out:?}"),
        );
    }
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, Opts::default().finish_timeout).assert_pass(&work);
}

#[test]
fn negative_cr_netns_macvlan() {
    let (_work, out) = macvlan_case("negative_cr_netns_macvlan", true, 'm', |_| vec![]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// Persistent tun/tap devices in the namespace (type, owner, group,
/// flags, MAC, MTU, an address, and what a process that closed them set:
/// offloads, vnet header size and byte order, an ethtool feature turned
/// off): `ip -d link`, addresses, `ip tuntap` and what they keep (read by
/// attaching) read as before inside.
#[test]
fn cr_netns_tun() {
    let work = Work::new("cr_netns_tun");
    run_case(
        &work,
        Program::Bin("tp_netns"),
        &["--mode", "tun"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

#[test]
fn negative_cr_netns_tun() {
    let work = Work::new("negative_cr_netns_tun");
    let out = run_case(
        &work,
        Program::Bin("tp_netns"),
        &["--mode", "tun", "--corrupt"],
        &Opts::default(),
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// `dump -R` of the same: the dump attaches a queue to each device to read
/// what it keeps (without a carrier) and closes it, which leaves the
/// running original's devices as they were: its own checks after the dump
/// pass on them (links, addresses, what they keep, ethtool features).
#[test]
fn dump_leave_running_netns_tun() {
    leave_running(
        "dump_leave_running_netns_tun",
        Program::Bin("tp_netns"),
        &["--mode", "tun"],
    );
}

/// Offloads changed through ethtool after TUNSETOFFLOAD (tap3: csum and
/// TSO4 allowed, then tx-checksum-ip-generic turned off, which turns TSO
/// off too): which offloads TUNSETOFFLOAD allowed is not shown, so the
/// dump refuses it by name, and the device is as it was afterwards.
#[test]
fn refuse_netns_tun_offloads_changed_through_ethtool() {
    refused_dump(
        "refuse_netns_tun_offloads_changed_through_ethtool",
        Program::Bin("tp_netns"),
        &["--mode", "tunethtool"],
        &[],
        &[
            "tun/tap device tap3",
            "offloads changed through ethtool after TUNSETOFFLOAD",
        ],
        true,
    );
}

/// The negative control of what the devices keep: tap0 given the
/// kernel's defaults after go, as a restore that lost them would.
#[test]
fn negative_cr_netns_tun_kept() {
    let work = Work::new("negative_cr_netns_tun_kept");
    let out = run_case(
        &work,
        Program::Bin("tp_netns"),
        &["--mode", "tun", "--lose-kept"],
        &Opts::default(),
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// A socket filter (TUNATTACHFILTER) left on a persistent tap by a
/// process that closed it: its program cannot be read back, so the dump
/// refuses it by name, and the filter is still there afterwards.
#[test]
fn refuse_netns_tun_filter() {
    refused_dump(
        "refuse_netns_tun_filter",
        Program::Bin("tp_netns"),
        &["--mode", "tunfilter"],
        &[],
        &["tun/tap device tap2", "socket filter", "TUNATTACHFILTER"],
        true,
    );
}

/// A tun device in the namespace with a queue attached (the process holds
/// /dev/net/tun): refused by name.
#[test]
fn refuse_netns_tun_attached() {
    refused_dump(
        "refuse_netns_tun_attached",
        Program::Bin("tp_netns"),
        &["--mode", "tunq"],
        &[],
        &["tun/tap device stbt", "queue(s) attached"],
        false,
    );
}

/// A tun queue held open (/dev/net/tun after TUNSETIFF): refused by name.
#[test]
fn refuse_netns_tun_fd() {
    refused_dump(
        "refuse_netns_tun_fd",
        Program::Bin("tp_netns"),
        &["--mode", "tunfd"],
        &[],
        &["tun/tap queue", "device stbt"],
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
            let args: &[&str] = if n.starts_with("stb") {
                &["link", "del", n]
            } else {
                &["netns", "del", n]
            };
            let _ = std::process::Command::new("ip").args(args).output();
        }
    }
}

/// tp_tcp in a namespace of its own behind a veth on a bridge, dumped
/// with `--tcp-established` (and `dump`) and restored with the options
/// `restore` gives for its PID; the outer veth end (the name `restore`
/// gives) must be on the bridge, and the lock (inside the namespace) must
/// leave nothing in ours. Returns the work directory, its cleanup and the
/// outcome.
fn tcp_netns_case(
    name: &str,
    args: &[&str],
    dump: &[&'static str],
    restore: impl Fn(i32) -> (Vec<String>, String),
) -> (Work, NetCleanup, Outcome) {
    let (work, clean, pid) = dumped_tcp_netns(name, args, dump);
    let (restore, outer) = restore(pid);
    let restore: Vec<&'static str> = restore
        .into_iter()
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect();
    let v = show(&work, &work.img());
    if v["inventory"]["net_lock"]["in_netns"] != serde_json::Value::Bool(true) {
        fail(
            &work,
            "the image's network lock is not in the tree's namespace",
        );
    }
    let ropts = Opts {
        restore_extra: [&["--tcp-established"][..], &restore].concat(),
        ..Opts::default()
    };
    let mut r = restore_and_adopt(&work, pid, &ropts);
    on_bridge(&work, &outer, &format!("stbr{pid}"));
    let out = finish(&work, &mut r, ropts.finish_timeout);
    let nft = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if nft.contains("stasis_") {
        fail(&work, format!("a lock table left in our namespace:\n{nft}"));
    }
    (work, clean, out)
}

/// tp_tcp `args` started and dumped with `--tcp-established` and `dump`
/// (gone): its work directory, cleanup and PID.
fn dumped_tcp_netns(name: &str, args: &[&str], dump: &[&'static str]) -> (Work, NetCleanup, i32) {
    let work = Work::new(name);
    let clean = NetCleanup(work.path("net-names"));
    let opts = Opts {
        dump_extra: [&["--tcp-established"][..], dump].concat(),
        ..Opts::default()
    };
    let mut p = start_ready(&work, Program::Bin("tp_tcp"), args, &opts);
    dump_and_check_gone(&work, &mut p, &opts);
    (work, clean, p.pid)
}

/// The interface `outer` of our namespace is a port of `bridge`.
fn on_bridge(work: &Work, outer: &str, bridge: &str) {
    let master = std::fs::read_link(format!("/sys/class/net/{outer}/master"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if !master.ends_with(&format!("/{bridge}")) {
        fail(
            work,
            format!("{outer} is not a port of {bridge}: {master:?}"),
        );
    }
}

#[test]
fn selfcheck_tcp_netns() {
    let work = Work::new("selfcheck_tcp_netns");
    let _clean = NetCleanup(work.path("net-names"));
    run_plain(&work, Program::Bin("tp_tcp"), &["--netns", "peer-ns"]).assert_pass(&work);
}

/// Established connections of a tree in its own namespace, the peer in
/// ours across a veth and a bridge, one pair inside; nftables lock. The
/// outer end is named by criu's `--external veth[IN]:OUT@BRIDGE`.
#[test]
fn cr_tcp_netns_host_peer() {
    let (work, _clean, out) = tcp_netns_case(
        "cr_tcp_netns_host_peer",
        &["--netns", "host"],
        &["--network-lock", "nftables"],
        |pid| {
            (
                vec![
                    "--external".into(),
                    format!("veth[stvi{pid}]:stvy{pid}@stbr{pid}"),
                ],
                format!("stvy{pid}"),
            )
        },
    );
    out.assert_pass(&work);
}

/// Migration between two namespaces as a client in a third sees it: the
/// server's namespace dies with the dump, a new one with the same address,
/// MAC and routes is made at restore, the outer veth end named by
/// `--veth-pair` and put on the bridge; the client's connection carries
/// on (no reset). iptables lock (criu's default).
#[test]
fn cr_tcp_netns_migrate() {
    let (work, _clean, pid) =
        dumped_tcp_netns("cr_tcp_netns_migrate", &["--netns", "peer-ns"], &[]);
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
    on_bridge(&work, &format!("stvx{pid}"), &format!("stbr{pid}"));
    finish(&work, &mut r, ropts.finish_timeout).assert_pass(&work);
}

/// The same move in one command: `stasis migrate --tcp-established
/// --veth-pair ...` pre-copies the server while its client in a third
/// namespace keeps talking to it, freezes it, sends the rest and restores
/// it here in a new namespace; the client's connections carry on (no
/// reset), and the restored server checks every byte.
#[test]
fn migrate_tcp_netns() {
    let work = Work::new("migrate_tcp_netns");
    let _clean = NetCleanup(work.path("net-names"));
    let opts = Opts::default();
    let p = start_ready(
        &work,
        Program::Bin("tp_tcp"),
        &["--netns", "peer-ns"],
        &opts,
    );
    let pid = p.pid;
    let reaper = reap_when_killed(p, opts.finish_timeout);
    let pair = format!("stvi{pid}=stvx{pid}@stbr{pid}");
    let (pid_s, img, pidf) = (
        pid.to_string(),
        work.img().display().to_string(),
        work.path("pidfile").display().to_string(),
    );
    let out = stasis(
        &work,
        &[
            "migrate",
            "-t",
            &pid_s,
            "-D",
            &img,
            "-o",
            "migrate.log",
            "-v4",
            "--pidfile",
            &pidf,
            "--tcp-established",
            "--veth-pair",
            &pair,
        ],
        opts.stasis_timeout,
    );
    killed_by(&work, pid, reaper, &out, "stasis migrate");
    let figures: serde_json::Value = out
        .stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| fail(&work, format!("no figures: {:?}", out.stdout)));
    assert_eq!(figures["restored_pid"].as_i64(), Some(i64::from(pid)));
    assert!(
        figures["rounds"].as_array().map_or(0, Vec::len) >= 1,
        "no pre-copy round: {figures}"
    );
    let mut r = Proc::adopt(pid);
    step(&work, "restored process state", r.check_running_untraced());
    on_bridge(&work, &format!("stvx{pid}"), &format!("stbr{pid}"));
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// A restore that fails after its namespace was made (the outer veth
/// name is taken) leaves nothing: no veth, no lock; the same image then
/// restores once the name is free.
#[test]
fn tcp_netns_failed_restore_leaves_nothing() {
    let (work, _clean, pid) = dumped_tcp_netns(
        "tcp_netns_failed_restore_leaves_nothing",
        &["--netns", "peer-ns"],
        &[],
    );
    let (vo, br) = (format!("stvo{pid}"), format!("stbr{pid}"));
    let taken = |add: bool| {
        let args: &[&str] = if add {
            &["link", "add", &vo, "type", "bridge"]
        } else {
            &["link", "del", &vo]
        };
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        if !o.status.success() {
            fail(&work, format!("ip {args:?}: {o:?}"));
        }
    };
    taken(true);
    let t = Opts::default().stasis_timeout;
    let out = restore_detached(&work, &["--tcp-established"], t);
    let links = |w: &Work| {
        std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains(&pid.to_string()))
                    .count()
            })
            .unwrap_or_else(|e| fail(w, format!("/sys/class/net: {e}")))
    };
    // The bridge, the peer's veth end and the taken name: nothing more.
    let left = links(&work);
    taken(false);
    if out.success() || !out.stderr.contains(&vo) || !out.stderr.contains("--veth-pair") {
        fail(
            &work,
            format!("the restore did not fail naming {vo}: {out:?}"),
        );
    }
    if pid_exists(pid) || left != 3 {
        fail(
            &work,
            format!(
                "after the failed restore: process {}, {left} links of ours",
                pid_exists(pid)
            ),
        );
    }
    let ropts = Opts {
        restore_extra: vec!["--tcp-established"],
        ..Opts::default()
    };
    let mut r = restore_and_adopt(&work, pid, &ropts);
    on_bridge(&work, &vo, &br);
    finish(&work, &mut r, ropts.finish_timeout).assert_pass(&work);
}

/// The negative control through a real dump and restore in a namespace.
#[test]
fn negative_cr_tcp_netns() {
    let (_work, _clean, out) = tcp_netns_case(
        "negative_cr_tcp_netns",
        &["--netns", "host", "--corrupt"],
        &[],
        |pid| (vec![], format!("stvo{pid}")),
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// criu's `--join-ns net:PATH`: the server's namespace dies with the dump;
/// the test makes a new one by hand (`ip netns add`) holding the same
/// veth (name, MAC, MTU), addresses and route, its outer end not yet on the
/// bridge (unreachable); the restore joins it, makes the lock there, and
/// an action script (post-restore) puts the outer end on the bridge
/// before the lock goes. The client (in a third namespace) carries on.
#[test]
fn cr_tcp_netns_join() {
    let (work, clean, pid) = dumped_tcp_netns("cr_tcp_netns_join", &["--netns", "peer-ns"], &[]);
    let x = pid % 250 + 1;
    let ns = format!("stj{pid}");
    let (vo, vi) = (format!("stvo{pid}"), format!("stvi{pid}"));
    let mut names = std::fs::read_to_string(&clean.0).unwrap_or_default();
    names.push_str(&format!("{ns}\n"));
    std::fs::write(&clean.0, names).expect("net-names");
    let sh = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        if !o.status.success() {
            fail(
                &work,
                format!("ip {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
            );
        }
    };
    let mac = format!("02:93:00:00:{x:02x}:02");
    sh(&["netns", "add", &ns]);
    sh(&["-n", &ns, "link", "set", "lo", "up"]);
    sh(&[
        "link", "add", &vo, "mtu", "1400", "type", "veth", "peer", "name", &vi, "mtu", "1400",
        "address", &mac, "netns", &ns,
    ]);
    sh(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("10.93.{x}.2/24"),
        "dev",
        &vi,
    ]);
    let a6 = format!("fd93:{x:x}::2/64");
    sh(&["-n", &ns, "addr", "add", &a6, "dev", &vi, "nodad"]);
    sh(&["-n", &ns, "link", "set", &vi, "up"]);
    sh(&[
        "-n",
        &ns,
        "route",
        "add",
        "10.94.0.0/16",
        "via",
        &format!("10.93.{x}.1"),
    ]);
    let script = work.path("attach.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = post-restore ] || exit 0\n\
             ip link set {vo} master stbr{pid} up || exit 1\n\
             for i in $(seq 100); do\n\
             [ \"$(ip netns exec {ns} cat /sys/class/net/{vi}/operstate)\" = up ] && exit 0\n\
             sleep 0.05\ndone\nexit 1\n"
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let join = format!("net:/run/netns/{ns}");
    let ropts = Opts {
        restore_extra: vec![
            "--tcp-established",
            "--join-ns",
            Box::leak(join.into_boxed_str()),
            "--action-script",
            Box::leak(script.display().to_string().into_boxed_str()),
        ],
        ..Opts::default()
    };
    let mut r = restore_and_adopt(&work, pid, &ropts);
    let inode = |p: &str| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
    };
    if inode(&format!("/proc/{}/ns/net", r.pid)) != inode(&format!("/run/netns/{ns}")) {
        fail(&work, "the restored tree is not in the joined namespace");
    }
    finish(&work, &mut r, ropts.finish_timeout).assert_pass(&work);
}

/// `stasis run --net --veth OUTER@BRIDGE --net-addr CIDR`: tp_netns
/// (`given`) as init of a new PID and network namespace with a veth to a
/// bridge; dumped, restored without naming the outer end (it comes back
/// under its saved name, on its saved bridge); the program finds its
/// namespace as it was. `corrupt` runs the negative control. `down`
/// ("inner" or "outer") sets that end of the veth down before the dump
/// (the outer end after the program saw its link-local address made);
/// the outer end's flags (up or not, carrier) must read after the restore
/// as before the dump, else [`OUTER_DIFFERS`]. `flip` sets the outer end
/// up after the restore (the negative control of that check).
fn run_net_case(name: &str, corrupt: bool, down: &str, flip: bool) -> Exit {
    let work = Work::new(name);
    let clean = NetCleanup(work.path("net-names"));
    let t = std::time::Duration::from_secs(60);
    // The cases run in one test process: names and subnet apart.
    static CASE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let me = std::process::id() * 8 + CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
    let x = me % 250 + 1;
    let (br, vo) = (format!("stbq{me}"), format!("stvq{me}"));
    std::fs::write(&clean.0, format!("{br}\n")).expect("net-names");
    for args in [
        &["link", "add", &br, "type", "bridge"][..],
        &["addr", "add", &format!("10.96.{x}.1/24"), "dev", &br],
        &["link", "set", &br, "up"],
    ] {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        assert!(o.status.success(), "ip {args:?}: {o:?}");
    }
    let dir = work.dir().to_str().expect("utf-8").to_string();
    let prog = bin_path("tp_netns");
    ensure_subreaper();
    let (pidf, veth, addr) = (
        format!("{dir}/run.pid"),
        format!("{vo}@{br}"),
        format!("10.96.{x}.2/24"),
    );
    let mut run = vec![
        "run",
        "-d",
        "--pidfile",
        &pidf,
        "--net",
        "--veth",
        &veth,
        "--net-addr",
        &addr,
        "--",
        prog.to_str().expect("utf-8"),
        &dir,
        "--mode",
        "given",
    ];
    if corrupt {
        run.push("--corrupt");
    }
    if !down.is_empty() {
        run.extend(["--down", down]);
    }
    let out = stasis(&work, &run, t);
    assert_eq!(out.code, Some(0), "stasis run: {out:?}");
    let mut init = Proc::adopt(pidfile(&work, "run.pid"));
    if down == "outer" {
        step(
            &work,
            "waiting for dad-done",
            wait_file(&work, &mut init, "dad-done", t),
        );
        let o = std::process::Command::new("ip")
            .args(["link", "set", &vo, "down"])
            .output()
            .expect("ip");
        assert!(o.status.success(), "ip link set {vo} down: {o:?}");
        std::fs::write(work.path("outer-down"), "").expect("outer-down");
    }
    step(&work, "waiting for ready", wait_ready(&work, &mut init, t));
    let before = outer_flags(&vo);
    let img = format!("{dir}/img");
    let pid = init.pid.to_string();
    let out = stasis(
        &work,
        &["dump", "-t", &pid, "-D", &img, "-o", "dump.log", "-v4"],
        t,
    );
    assert_eq!(out.code, Some(0), "dump: {out:?}{}", work.diagnostics());
    step(
        &work,
        "waiting for the dumped init",
        init.wait(std::time::Duration::from_secs(10)),
    );
    // The kernel takes the dead namespace's veth pair down a little
    // later: the restore makes the outer end again under its name.
    let gone = (0..1000).any(|_| {
        let there = std::path::Path::new(&format!("/sys/class/net/{vo}")).exists();
        if there {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        !there
    });
    if !gone {
        fail(
            &work,
            format!("the dumped tree's outer end {vo} is still there after 10 s"),
        );
    }
    let rpid = format!("{dir}/r.pid");
    let out = stasis(
        &work,
        &[
            "restore",
            "-D",
            &img,
            "-d",
            "--pidfile",
            &rpid,
            "-o",
            "restore.log",
            "-v4",
        ],
        t,
    );
    assert_eq!(out.code, Some(0), "restore: {out:?}{}", work.diagnostics());
    let mut r = Proc::adopt(pidfile(&work, "r.pid"));
    let ns = |p: &str| std::fs::read_link(p).map(|l| l.display().to_string()).ok();
    if ns(&format!("/proc/{}/ns/net", r.pid)) == ns("/proc/self/ns/net") {
        fail(&work, "the restored tree is in our network namespace");
    }
    let master = std::fs::read_link(format!("/sys/class/net/{vo}/master"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if !master.ends_with(&br) {
        fail(
            &work,
            format!("the outer end {vo} is not on {br}: {master:?}"),
        );
    }
    if flip {
        let o = std::process::Command::new("ip")
            .args(["link", "set", &vo, "up"])
            .output()
            .expect("ip");
        assert!(o.status.success(), "ip link set {vo} up: {o:?}");
    }
    let after = outer_flags(&vo);
    if after != before {
        eprintln!("the outer end {vo}: <{before}> before the dump, <{after}> after the restore");
        r.kill();
        return OUTER_DIFFERS;
    }
    work.release_go();
    let exit = step(&work, "waiting for the restored init", r.wait(t));
    if exit != Exit::Code(0) {
        eprintln!("{name}: {exit:?}{}", work.diagnostics());
    }
    exit
}

/// [`run_net_case`]'s result when the outer end's flags differ.
const OUTER_DIFFERS: Exit = Exit::Code(200);

/// The flags `ip link` shows of `dev` (UP, NO-CARRIER, ...).
fn outer_flags(dev: &str) -> String {
    let o = std::process::Command::new("ip")
        .args(["-o", "link", "show", "dev", dev])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&o.stdout);
    text.split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map_or(String::new(), |(f, _)| f.to_string())
}

/// Waits for `WORK/name`, which `proc` makes.
fn wait_file(
    work: &Work,
    proc: &mut Proc,
    name: &str,
    t: std::time::Duration,
) -> Result<(), String> {
    let end = std::time::Instant::now() + t;
    while !work.path(name).exists() {
        if !matches!(proc.poll(), Ok(None)) || std::time::Instant::now() > end {
            return Err(format!("no {name} (the program exited or {t:?} passed)"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

#[test]
fn cr_run_net_veth() {
    assert_eq!(
        run_net_case("cr_run_net_veth", false, "", false),
        Exit::Code(0)
    );
}

#[test]
fn negative_cr_run_net_veth() {
    assert_ne!(
        run_net_case("negative_cr_run_net_veth", true, "", false),
        Exit::Code(0)
    );
}

/// The outer end down at dump (the inner end without carrier, its
/// routes linkdown, its link-local address kept): restored down, the
/// namespace reads as before (tp_netns) and so does the outer end.
#[test]
fn cr_run_net_veth_outer_down() {
    assert_eq!(
        run_net_case("cr_run_net_veth_outer_down", false, "outer", false),
        Exit::Code(0)
    );
}

#[test]
fn negative_cr_run_net_veth_outer_down() {
    assert_ne!(
        run_net_case("negative_cr_run_net_veth_outer_down", true, "outer", false),
        Exit::Code(0)
    );
}

/// The outer end set up after the restore: the outer end's check fails.
#[test]
fn negative_cr_run_net_veth_outer_flipped() {
    assert_eq!(
        run_net_case(
            "negative_cr_run_net_veth_outer_flipped",
            false,
            "outer",
            true
        ),
        OUTER_DIFFERS
    );
}

/// The inner end down at dump (the outer end up without carrier).
#[test]
fn cr_run_net_veth_inner_down() {
    assert_eq!(
        run_net_case("cr_run_net_veth_inner_down", false, "inner", false),
        Exit::Code(0)
    );
}
