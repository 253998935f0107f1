//! Network namespace test program.
//!
//! Usage: `tp_netns WORKDIR --mode own|given|bridge|legacy|routing|macvlan|tun|tunethtool|tunfilter|tunfd|tunq [--corrupt] [--lose-kept]`
//!
//! - `own`: unshares its network namespace, sets lo up, adds 10.77.0.1/32
//!   and fd77::1/128 on lo and a route to 10.78.0.0/16 via lo, sets
//!   net.ipv4.ip_forward = 1 and net.ipv4.conf.all.rp_filter = 2, listens
//!   on TCP 10.77.0.1:7701 and [fd77::1]:7702 and binds UDP
//!   10.77.0.1:7703, makes a unix socket pair with a byte queued, then
//!   forks a child. After go it checks that the
//!   addresses, routes, link flags and sysctls (as `ip` prints them) read as
//!   before, that the child shares its namespace, and connects to both
//!   listeners and sends a datagram to the UDP socket from inside the
//!   namespace, checking each arrives, and reads the queued byte.
//!   It also holds a veth pair with both ends inside (v0 10.79.0.1/24, v1
//!   10.79.0.2/24, MTU 1300, v1 down), an nftables table (a set, two
//!   chains, rules), an iptables (nft backend) rule, and sysctls changed
//!   beyond the few above (per interface, per namespace TCP, core, IPv6):
//!   after go `nft list ruleset`, `iptables -S` and those read as before.
//! - `given`: runs in the namespace it was started in (`stasis run
//!   --net --veth ...`): after go its links, addresses, routes, rules and
//!   sysctls read as before, and it is not in PID 1's namespace. With
//!   `--down inner` it sets eth0 down first; with `--down outer` it waits
//!   for the harness to set the outer end down (see [`outer_down`]).
//! - `bridge`: its namespace holds a bridge (refused by name).
//! - `legacy`: its namespace holds an iptables-legacy rule with state the
//!   save text does not carry (`-m recent`: refused by name).
//! - `macvlan`: macvlan links, one on a device outside, one inside (see
//!   [`macvlan`]): after go `ip -d link`, addresses and routes read as
//!   before.
//! - `tun`: persistent tun/tap devices in its namespace (tap0: owner
//!   1000, group 1001, vnet_hdr, multi_queue, a MAC, an address; tun1:
//!   pi, MTU 1400; both up): after go `ip -d link`, addresses and `ip
//!   tuntap` read as before.
//!   Each also keeps what a process that closed it set (tap0: offloads
//!   csum, TSO4, TSO6, ECN, a 12-byte little-endian vnet header, rx-gro
//!   off through ethtool; tun1: offloads csum, USO), read back after go
//!   by attaching to them (with IFF_NO_CARRIER). `--lose-kept`: tap0 is
//!   given the kernel's defaults after go (the negative control).
//! - `tunethtool`: tap3 with offloads changed through ethtool after
//!   TUNSETOFFLOAD (refused by name): after go as before.
//! - `tunfilter`: tap2 with a socket filter (TUNATTACHFILTER) left by a
//!   queue since closed (refused by name): after go still there.
//! - `tunfd`: a tun queue it holds open, its device in our first
//!   namespace (refused by name); `tunq`: the same in its own namespace
//!   (the device with a queue attached refused by name).
//! - `routing`: policy routing rules, routes of several tables, nexthop
//!   objects and iptables-legacy rules (see [`routing`]): after go they
//!   read as before.

use stasis_tests::{Proto, Report};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unshare_net() {
    // SAFETY: integer-only syscall on ourselves.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert!(
        r == 0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    ip(&["link", "set", "lo", "up"]);
}

/// Sysctls `own` changes (name under /proc/sys/net, value).
const SYSCTLS: &[(&str, &str)] = &[
    ("ipv4/conf/v0/arp_ignore", "2"),
    ("ipv4/conf/default/accept_redirects", "0"),
    ("ipv4/tcp_keepalive_time", "1234"),
    ("ipv4/ip_local_port_range", "20000\t30000"),
    ("core/somaxconn", "777"),
    ("ipv6/conf/all/hop_limit", "33"),
    ("ipv6/conf/v1/disable_ipv6", "1"),
];

const NFT: &str = "table inet tpf {
    set blocked {
        type ipv4_addr
        elements = { 10.1.2.3, 10.1.2.4 }
    }
    chain input {
        type filter hook input priority 10; policy accept;
        ip saddr @blocked drop
        tcp dport 7798 counter drop
    }
    chain out {
        type filter hook output priority 5; policy accept;
        udp dport 7797 reject
    }
}
";

/// What `ip` and /proc/sys show of the namespace.
fn state() -> Vec<String> {
    let mut v = vec![
        ip(&["-o", "link", "show"]),
        ip(&["-o", "-4", "addr", "show"]),
        ip(&["-o", "-6", "addr", "show"]),
        ip(&["-4", "route", "show"]),
        ip(&["-6", "route", "show"]),
    ];
    for (cmd, args) in [
        ("nft", &["list", "ruleset"][..]),
        ("iptables", &["-w", "-S"][..]),
    ] {
        let out = Command::new(cmd).args(args).output().expect("run");
        v.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    for (s, _) in SYSCTLS {
        v.push(std::fs::read_to_string(format!("/proc/sys/net/{s}")).unwrap_or_default());
    }
    for s in ["ipv4/ip_forward", "ipv4/conf/all/rp_filter"] {
        v.push(std::fs::read_to_string(format!("/proc/sys/net/{s}")).unwrap_or_default());
    }
    v
}

/// [`state`] less the outer veth end's index (`@ifN`), which a restore
/// changes.
fn given_state() -> Vec<String> {
    let mut v = state();
    v[0] = v[0]
        .split(' ')
        .map(|w| w.split("@if").next().unwrap_or(w))
        .collect::<Vec<_>>()
        .join(" ");
    v
}

/// `given --down outer`: tells the harness its link-local address is
/// usable (file `dad-done`), waits until the harness brought the outer
/// end down (file `outer-down`), then until the kernel marked eth0's
/// routes linkdown (it does so shortly after the carrier went).
fn outer_down(proto: &Proto) {
    std::fs::write(proto.path("dad-done"), "").expect("write dad-done");
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        for _ in 0..6000 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        stasis_tests::fatal(&format!("waited 60 s for {what}"));
    };
    wait("the harness (outer-down)", &|| {
        proto.path("outer-down").exists()
    });
    wait("eth0's routes to be linkdown", &|| {
        ip(&["-4", "route", "show", "dev", "eth0"]).contains("linkdown")
            && ip(&["-6", "route", "show", "dev", "eth0"]).contains("linkdown")
    });
}

fn ns_link(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    match args.get("mode").unwrap_or("own") {
        "own" => own(&proto, &mut report, args.corrupt()),
        "given" => {
            // The link-local address (made once the kernel saw eth0's
            // carrier) and its duplicate detection first.
            for _ in 0..500 {
                let a = ip(&["-6", "addr", "show", "dev", "eth0"]);
                if a.contains("fe80") && !a.contains("tentative") {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            match args.get("down") {
                Some("inner") => {
                    ip(&["link", "set", "eth0", "down"]);
                }
                Some("outer") => outer_down(&proto),
                _ => {}
            }
            let mut before = given_state();
            proto.ready_and_wait();
            if args.corrupt() {
                before[0].push('x');
            }
            report.eq(
                "links, addresses, routes, rules, sysctls",
                before,
                given_state(),
            );
        }
        "bridge" => {
            unshare_net();
            ip(&["link", "add", "b0", "type", "bridge"]);
            proto.ready_and_wait();
        }
        "legacy" => {
            unshare_net();
            run(
                "iptables-legacy",
                &[
                    "-A", "INPUT", "-p", "tcp", "--dport", "7796", "-m", "recent", "--set", "-j",
                    "DROP",
                ],
                None,
            );
            proto.ready_and_wait();
        }
        "macvlan" => {
            macvlan(&proto);
            let mut before = macvlan_state();
            proto.ready_and_wait();
            if args.corrupt() {
                before[0].push('x');
            }
            report.eq("links and addresses", before, macvlan_state());
        }
        "tun" => {
            unshare_net();
            ips(&[
                &[
                    "tuntap",
                    "add",
                    "dev",
                    "tap0",
                    "mode",
                    "tap",
                    "user",
                    "1000",
                    "group",
                    "1001",
                    "vnet_hdr",
                    "multi_queue",
                ],
                &["tuntap", "add", "dev", "tun1", "mode", "tun", "pi"],
            ]);
            // What they keep once the process that set it closed them:
            // tap0 offloads (csum, TSO4,
            // TSO6, ECN), a 12-byte little-endian vnet header, rx-gro
            // turned off through ethtool; tun1 offloads (csum, USO).
            tun_keep("tap0", TAP0, 0x01 | 0x02 | 0x04 | 0x08, 12, true);
            ethtool_off("tap0", "rx-gro");
            tun_keep("tun1", TUN1, 0x01 | 0x20 | 0x40, 10, false);
            ips(&[
                &["link", "set", "tap0", "address", "02:98:00:00:00:01"],
                &["link", "set", "tun1", "mtu", "1400"],
                &["addr", "add", "10.98.0.1/24", "dev", "tap0"],
                &["link", "set", "tap0", "up"],
                &["link", "set", "tun1", "up"],
            ]);
            let state = || {
                vec![
                    ip(&["-d", "-o", "link", "show"]),
                    ip(&["-o", "addr", "show"]),
                    ip(&["tuntap", "show"]),
                    tun_kept("tap0", TAP0),
                    tun_kept("tun1", TUN1),
                ]
            };
            let mut before = state();
            proto.ready_and_wait();
            if args.corrupt() {
                before[0].push('x');
            }
            if args.flag("lose-kept") {
                // As a restore that made tap0 with the kernel's defaults.
                tun_keep("tap0", TAP0, 0, 10, false);
            }
            report.eq(
                "tun/tap links, addresses and what they keep",
                before,
                state(),
            );
        }
        "tunethtool" => {
            // tap3: csum and TSO4 allowed by TUNSETOFFLOAD, then
            // tx-checksum-ip-generic turned off through ethtool (refused
            // by name); after go as before.
            unshare_net();
            ip(&["tuntap", "add", "dev", "tap3", "mode", "tap"]);
            tun_keep("tap3", IFF_TAP | IFF_NO_PI, 0x01 | 0x02, 10, false);
            ethtool_off("tap3", "tx-checksum-ip-generic");
            let state = || {
                vec![
                    ip(&["-d", "-o", "link", "show"]),
                    tun_kept("tap3", IFF_TAP | IFF_NO_PI),
                ]
            };
            let before = state();
            proto.ready_and_wait();
            report.eq("tap3 and its features", before, state());
        }
        "tunfilter" => {
            // A socket filter left on tap2 by a queue since closed
            // (refused by name: its program cannot be read back); after
            // go it is still there, the rest as before.
            unshare_net();
            ip(&["tuntap", "add", "dev", "tap2", "mode", "tap"]);
            tun_filter("tap2", IFF_TAP | IFF_NO_PI);
            let state = || {
                vec![
                    ip(&["-d", "-o", "link", "show"]),
                    tun_kept("tap2", IFF_TAP | IFF_NO_PI),
                ]
            };
            let before = state();
            proto.ready_and_wait();
            report.eq("tap2 and its filter", before, state());
        }
        "tunfd" | "tunq" => {
            // tunfd: in our first namespace (its own would be refused for
            // the device first); the device goes with the descriptor.
            if args.get("mode") == Some("tunq") {
                unshare_net();
            }
            let f = tun_queue(&format!("stbt{}", std::process::id()), IFF_TUN | IFF_NO_PI);
            proto.ready_and_wait();
            drop(f);
        }
        "routing" => {
            unshare_net();
            routing();
            let mut before = routing_state();
            proto.ready_and_wait();
            if args.corrupt() {
                before[0].push('x');
            }
            let names = [
                "ip rule",
                "ip -6 rule",
                "ip route",
                "ip -6 route",
                "ip nexthop",
                "iptables-legacy",
                "ip6tables-legacy",
            ];
            for ((b, a), n) in before.into_iter().zip(routing_state()).zip(names) {
                report.eq(n, b, a);
            }
        }
        m => report.fail(format!("unknown mode {m}")),
    }
    proto.finish(&report);
}

/// `macvlan`: a macvlan on a device outside (`stbmPID`, one end of a veth
/// pair made in our first namespace, named in WORKDIR/net-names for the
/// harness to remove): private mode, MAC, MTU 1400, broadcast queue 333,
/// IPv4 and IPv6 addresses, up; and one on a veth inside (vepa).
fn macvlan(proto: &Proto) {
    use std::os::unix::process::CommandExt;
    let me = std::process::id();
    let (lower, peer) = (format!("stbm{me}"), format!("stbn{me}"));
    ip(&["link", "add", &lower, "type", "veth", "peer", "name", &peer]);
    std::fs::write(proto.dir().join("net-names"), format!("{lower}\n")).expect("net-names");
    ip(&["link", "set", &lower, "up"]);
    ip(&["link", "set", &peer, "up"]);
    let host = std::fs::File::open("/proc/self/ns/net").expect("our namespace");
    unshare_net();
    let inside = format!("/proc/{me}/ns/net");
    let hostfd = std::os::fd::AsRawFd::as_raw_fd(&host);
    let mut c = Command::new("ip");
    c.args([
        "link",
        "add",
        "link",
        &lower,
        "name",
        "mv0",
        "address",
        "02:97:00:00:00:01",
        "mtu",
        "1400",
        "netns",
        &inside,
        "type",
        "macvlan",
        "mode",
        "private",
        "bcqueuelen",
        "333",
    ]);
    // SAFETY: setns in the child before exec; async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(hostfd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let st = c.status().expect("ip link add macvlan");
    assert!(st.success(), "ip link add macvlan: {st}");
    drop(host);
    ips(&[
        &["link", "add", "i0", "type", "veth", "peer", "name", "i1"],
        &[
            "link", "add", "link", "i0", "name", "mv1", "type", "macvlan", "mode", "vepa",
        ],
        &["addr", "add", "10.97.0.1/24", "dev", "mv0"],
        &["addr", "add", "fd97::1/64", "dev", "mv0", "nodad"],
        &["link", "set", "mv0", "up"],
        &["link", "set", "i0", "up"],
        &["link", "set", "mv1", "up"],
    ]);
}

/// What `ip -d` shows of the namespace's links and addresses.
fn macvlan_state() -> Vec<String> {
    for _ in 0..500 {
        if !ip(&["-6", "addr", "show"]).contains("tentative") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Less the outer lower device's index (`@ifN`): the harness checks it.
    let links = ip(&["-d", "-o", "link", "show"])
        .split(' ')
        .map(|w| w.split("@if").next().unwrap_or(w))
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        links,
        ip(&["-o", "addr", "show"]),
        ip(&["route", "show", "table", "all"]),
    ]
}

/// Every line of `ip ARGS...` for each argument list.
fn ips(lists: &[&[&str]]) {
    for a in lists {
        ip(a);
    }
}

/// `routing`: a veth pair inside (r0 up with addresses, r1 up), nexthop
/// objects (two gateways, a group of them, a blackhole), routes in tables
/// main, 100, 200 and 300 (a nexthop group, blackhole, unreachable,
/// prohibit, metrics, IPv4 and IPv6 multipath), rules with every
/// selector and action (from/to, fwmark/mask, iif/oif, tos, uidrange,
/// ipproto and ports, suppress_prefixlength, goto, prohibit, not), the
/// default rule 32767 deleted, a kernel broadcast route deleted, and
/// iptables-legacy rules with counters (IPv4 and IPv6, a chain of its
/// own, a policy).
fn routing() {
    ips(&[
        &["link", "add", "r0", "type", "veth", "peer", "name", "r1"],
        &["link", "set", "r0", "up"],
        &["link", "set", "r1", "up"],
        &["addr", "add", "10.85.0.1/24", "dev", "r0"],
        &["addr", "add", "fd85::1/64", "dev", "r0", "nodad"],
        &[
            "nexthop",
            "add",
            "id",
            "11",
            "via",
            "10.85.0.2",
            "dev",
            "r0",
        ],
        &[
            "nexthop",
            "add",
            "id",
            "12",
            "via",
            "10.85.0.3",
            "dev",
            "r0",
        ],
        &["nexthop", "add", "id", "13", "group", "11,3/12,1"],
        &["nexthop", "add", "id", "14", "blackhole"],
        &["route", "add", "10.86.0.0/16", "nhid", "13", "table", "100"],
        &["route", "add", "10.87.0.0/16", "nhid", "14", "table", "100"],
        &["route", "add", "blackhole", "10.88.0.0/16", "table", "100"],
        &[
            "route",
            "add",
            "10.89.0.0/16",
            "via",
            "10.85.0.2",
            "table",
            "200",
            "metric",
            "50",
            "mtu",
            "1200",
            "advmss",
            "1000",
            "src",
            "10.85.0.1",
        ],
        &[
            "route",
            "add",
            "10.90.0.0/16",
            "nexthop",
            "via",
            "10.85.0.2",
            "weight",
            "2",
            "nexthop",
            "via",
            "10.85.0.3",
            "weight",
            "1",
        ],
        &["route", "add", "prohibit", "10.91.0.0/16", "metric", "7"],
        &[
            "route",
            "add",
            "unreachable",
            "10.92.0.0/16",
            "table",
            "200",
        ],
        &[
            "-6",
            "route",
            "add",
            "table",
            "300",
            "fd86::/64",
            "nexthop",
            "via",
            "fd85::2",
            "dev",
            "r0",
            "nexthop",
            "via",
            "fd85::3",
            "dev",
            "r0",
        ],
        &[
            "-6",
            "route",
            "add",
            "unreachable",
            "fd87::/64",
            "table",
            "300",
        ],
        &[
            "-6",
            "route",
            "add",
            "fd88::/64",
            "via",
            "fd85::2",
            "metric",
            "300",
            "hoplimit",
            "9",
        ],
        &[
            "rule",
            "add",
            "from",
            "10.85.0.0/24",
            "to",
            "10.86.0.0/16",
            "fwmark",
            "0x10/0xff",
            "iif",
            "r0",
            "table",
            "100",
            "pref",
            "100",
        ],
        &[
            "rule",
            "add",
            "uidrange",
            "1000-2000",
            "ipproto",
            "tcp",
            "dport",
            "80-90",
            "sport",
            "1000",
            "table",
            "200",
            "pref",
            "200",
            "suppress_prefixlength",
            "8",
        ],
        &["rule", "add", "pref", "300", "tos", "0x10", "goto", "400"],
        &["rule", "add", "pref", "400", "oif", "r1", "prohibit"],
        &[
            "rule",
            "add",
            "not",
            "to",
            "10.0.0.0/8",
            "pref",
            "450",
            "unreachable",
        ],
        &["rule", "add", "pref", "500", "fwmark", "7", "blackhole"],
        &[
            "-6",
            "rule",
            "add",
            "from",
            "fd85::/64",
            "table",
            "300",
            "pref",
            "500",
        ],
        &["rule", "del", "pref", "32767"],
        &[
            "route",
            "del",
            "broadcast",
            "10.85.0.255",
            "dev",
            "r0",
            "table",
            "local",
            "proto",
            "kernel",
        ],
    ]);
    for (cmd, args) in [
        ("iptables-legacy", &["-P", "FORWARD", "DROP"][..]),
        ("iptables-legacy", &["-N", "tpchain"]),
        (
            "iptables-legacy",
            &[
                "-A", "INPUT", "-p", "tcp", "--dport", "7795", "-c", "5", "300", "-j", "tpchain",
            ],
        ),
        (
            "iptables-legacy",
            &["-A", "tpchain", "-s", "10.1.0.0/16", "-j", "DROP"],
        ),
        (
            "iptables-legacy",
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "udp",
                "--dport",
                "7794",
                "-j",
                "DNAT",
                "--to-destination",
                "10.85.0.2:53",
            ],
        ),
        (
            "ip6tables-legacy",
            &[
                "-A", "OUTPUT", "-p", "tcp", "--dport", "7793", "-c", "9", "900", "-j", "REJECT",
            ],
        ),
    ] {
        run(cmd, args, None);
    }
}

/// What the namespace shows of its rules, routes (every table), nexthops
/// and legacy tables (counters included).
fn routing_state() -> Vec<String> {
    // Routes in a sorted order (a route's nexthop lines kept with it):
    // the kernel lists routes of one prefix and metric in the order they
    // were made, and it makes the link-local ones as links get a carrier.
    let sorted = |t: String| {
        let mut routes: Vec<String> = Vec::new();
        for l in t.lines() {
            match routes.last_mut() {
                Some(r) if l.starts_with('\t') => r.push_str(l),
                _ => routes.push(l.to_string()),
            }
        }
        routes.sort();
        routes.join("\n")
    };
    let mut v = vec![
        ip(&["rule", "show"]),
        ip(&["-6", "rule", "show"]),
        sorted(ip(&["-d", "-4", "route", "show", "table", "all"])),
        sorted(ip(&["-d", "-6", "route", "show", "table", "all"])),
        ip(&["nexthop", "show"]),
    ];
    for cmd in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        let out = Command::new(cmd).arg("-c").output().expect("run");
        // Table by table in name order (the save lists them in the order
        // they were loaded), counters included.
        // The IPv6 chains' own counters count the kernel's neighbour
        // discovery and MLD packets, live: those are left out there.
        let text = String::from_utf8_lossy(&out.stdout);
        let line = |l: &str| match l.rsplit_once(" [") {
            Some((a, _)) if cmd.starts_with("ip6") && l.starts_with(':') => a.to_string(),
            _ => l.to_string(),
        };
        let mut tables: Vec<String> = text
            .split('*')
            .map(|t| {
                t.lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(line)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        tables.sort();
        v.push(tables.join("\n*"));
    }
    v
}

fn echo_tcp(l: &TcpListener, addr: &str, report: &mut Report) {
    let c = TcpStream::connect(addr);
    let Ok(mut c) = c else {
        report.fail(format!("connect {addr}: {c:?}"));
        return;
    };
    let (mut s, _) = match l.accept() {
        Ok(a) => a,
        Err(e) => return report.fail(format!("accept on {addr}: {e}")),
    };
    let _ = c.write_all(b"ping");
    let mut buf = [0u8; 4];
    let got = s.read_exact(&mut buf).map(|_| buf);
    report.check(got.as_ref().is_ok_and(|b| b == b"ping"), || {
        format!("data through {addr}: {got:?}")
    });
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write as _;
    let mut c = Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    if let (Some(t), Some(mut i)) = (stdin, c.stdin.take()) {
        i.write_all(t.as_bytes()).expect("stdin");
    }
    let st = c.wait().expect("wait");
    assert!(st.success(), "{cmd} {args:?}: {st}");
}

fn own(proto: &Proto, report: &mut Report, corrupt: bool) {
    unshare_net();
    ip(&[
        "link", "add", "v0", "mtu", "1300", "type", "veth", "peer", "name", "v1", "mtu", "1300",
    ]);
    ip(&["addr", "add", "10.79.0.1/24", "dev", "v0"]);
    ip(&["addr", "add", "10.79.0.2/24", "dev", "v1"]);
    ip(&["link", "set", "v0", "up"]);
    run("nft", &["-f", "-"], Some(NFT));
    run(
        "iptables",
        &[
            "-w", "-A", "INPUT", "-p", "tcp", "--dport", "7799", "-j", "DROP",
        ],
        None,
    );
    for (s, v) in SYSCTLS {
        std::fs::write(format!("/proc/sys/net/{s}"), v).expect(s);
    }
    ip(&["addr", "add", "10.77.0.1/32", "dev", "lo"]);
    // nodad: usable at once (no tentative period), and restored so.
    ip(&["addr", "add", "fd77::1/128", "dev", "lo", "nodad"]);
    ip(&["route", "add", "10.78.0.0/16", "dev", "lo"]);
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward");
    std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "2").expect("rp_filter");
    let l4 = TcpListener::bind("10.77.0.1:7701").expect("listen v4");
    let l6 = TcpListener::bind("[fd77::1]:7702").expect("listen v6");
    let udp = UdpSocket::bind("10.77.0.1:7703").expect("bind udp");
    // A unix socket pair with a byte queued (sock_diag finds it only
    // when asked from the namespace).
    let (mut ua, mut ub) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    ua.write_all(b"u").expect("queue a byte");
    // SAFETY: single-threaded; the child waits for go and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        proto.wait_go();
        let parent = std::os::unix::process::parent_id().to_string();
        let same = ns_link("self") == ns_link(&parent);
        // SAFETY: ends the child.
        unsafe { libc::_exit(i32::from(!same)) }
    }
    let mut before = state();
    proto.ready_and_wait();
    if corrupt {
        before[1].push('x');
    }
    report.eq("links, addresses, routes, sysctls", before, state());
    report.check(ns_link("self") != ns_link("1"), || {
        "in PID 1's network namespace".into()
    });
    echo_tcp(&l4, "10.77.0.1:7701", report);
    echo_tcp(&l6, "[fd77::1]:7702", report);
    let c = UdpSocket::bind("10.77.0.1:0").expect("udp client");
    let _ = c.send_to(b"dgram", "10.77.0.1:7703");
    let mut buf = [0u8; 16];
    let _ = udp.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let got = udp.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
    report.check(got.as_ref().is_ok_and(|b| b == b"dgram"), || {
        format!("udp: {got:?}")
    });
    let mut one = [0u8; 1];
    let got = ub.read_exact(&mut one).map(|_| one);
    report.check(got.as_ref().is_ok_and(|b| b == b"u"), || {
        format!("unix pair: {got:?}")
    });
    let _ = ua.write_all(b"v");
    let got = ub.read_exact(&mut one).map(|_| one);
    report.check(got.as_ref().is_ok_and(|b| b == b"v"), || {
        format!("unix pair after: {got:?}")
    });
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child (same namespace as its parent): status {st:#x}")
    });
}

const IFF_TUN: u16 = 0x0001;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_CARRIER: u16 = 0x0040;
const IFF_MULTI_QUEUE: u16 = 0x0100;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNATTACHFILTER: libc::c_ulong = 0x4010_54d5;
const TUNGETFILTER: libc::c_ulong = 0x8010_54db;
const TUNSETVNETLE: libc::c_ulong = 0x4004_54dc;
const TUNGETVNETLE: libc::c_ulong = 0x8004_54dd;

/// A queue of tun/tap device `name` (TUNSETIFF with `flags`).
fn tun_queue(name: &str, flags: u16) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&flags.to_le_bytes());
    tun_call(
        &f,
        0x4004_54ca,
        ifr.as_mut_ptr() as libc::c_ulong,
        "TUNSETIFF",
    );
    f
}

fn tun_call(f: &std::fs::File, req: libc::c_ulong, arg: libc::c_ulong, op: &str) {
    // SAFETY: a tun ioctl; pointer arguments point at live locals of the
    // size the request reads or writes.
    let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(f), req, arg) };
    assert!(r >= 0, "{op}: {}", std::io::Error::last_os_error());
}

fn tun_int(f: &std::fs::File, req: libc::c_ulong, v: Option<i32>, op: &str) -> i32 {
    let mut x: libc::c_int = v.unwrap_or(0);
    tun_call(f, req, std::ptr::addr_of_mut!(x) as libc::c_ulong, op);
    x
}

/// Attaches to `name` (without a carrier: an up link would get an IPv6
/// link-local address), allows `offload` (TUNSETOFFLOAD), sets the vnet
/// header size and little-endian header, and closes it again.
fn tun_keep(name: &str, flags: u16, offload: u32, hdr_sz: i32, le: bool) {
    let f = tun_queue(name, flags | IFF_NO_CARRIER);
    tun_call(&f, TUNSETOFFLOAD, offload.into(), "TUNSETOFFLOAD");
    tun_int(&f, TUNSETVNETHDRSZ, Some(hdr_sz), "TUNSETVNETHDRSZ");
    tun_int(&f, TUNSETVNETLE, Some(le.into()), "TUNSETVNETLE");
}

/// A socket filter (TUNATTACHFILTER: accept everything) left on tap
/// `name` by a queue that then closes.
fn tun_filter(name: &str, flags: u16) {
    let f = tun_queue(name, flags);
    // struct sock_filter { code: BPF_RET|BPF_K, jt, jf, k: accept all }.
    let prog: [u64; 1] = [0x06 | (0xffff_ffffu64 << 32)];
    let fprog: [u64; 2] = [1, prog.as_ptr() as u64];
    tun_call(
        &f,
        TUNATTACHFILTER,
        fprog.as_ptr() as libc::c_ulong,
        "TUNATTACHFILTER",
    );
}

/// SIOCETHTOOL on `name` with `buf` as the command.
fn ethtool(name: &str, buf: &mut [u32]) {
    let s = UdpSocket::bind("0.0.0.0:0").expect("socket for SIOCETHTOOL");
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..24].copy_from_slice(&(buf.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: the ifreq names a live buffer as large as the command says.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            0x8946,
            ifr.as_mut_ptr(),
        )
    };
    assert!(
        r >= 0,
        "SIOCETHTOOL {:#x} on {name}: {}",
        buf[0],
        std::io::Error::last_os_error()
    );
}

/// `ethtool -K name feature off`: the feature's bit found by name in the
/// ETH_SS_FEATURES strings.
fn ethtool_off(name: &str, feature: &str) {
    let mut info = [0x37, 0, 1 << 4, 0, 0];
    ethtool(name, &mut info);
    let n = info[4] as usize;
    let mut strings = vec![0u32; 3 + 8 * n];
    strings[..3].copy_from_slice(&[0x1b, 4, n as u32]);
    ethtool(name, &mut strings);
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let bit = bytes
        .chunks(32)
        .position(|c| c.starts_with(feature.as_bytes()) && c[feature.len()] == 0)
        .expect("feature name");
    let mut set = [0x3b, 2, 0, 0, 0, 0];
    set[2 + 2 * (bit / 32)] = 1 << (bit % 32);
    ethtool(name, &mut set);
}

/// What device `name` (TUNSETIFF `flags`) keeps, as a process attaching
/// to it reads it (with IFF_NO_CARRIER, changing nothing): vnet header
/// size and byte order, the socket filter's length (a tap's), and its
/// ethtool features requested and on (ETHTOOL_GFEATURES, by bit).
fn tun_kept(name: &str, flags: u16) -> String {
    let f = tun_queue(name, flags | IFF_NO_CARRIER);
    let hdr = tun_int(&f, TUNGETVNETHDRSZ, None, "TUNGETVNETHDRSZ");
    let le = tun_int(&f, TUNGETVNETLE, None, "TUNGETVNETLE");
    let mut fprog = [0u64; 2];
    if flags & IFF_TAP != 0 {
        tun_call(
            &f,
            TUNGETFILTER,
            fprog.as_mut_ptr() as libc::c_ulong,
            "TUNGETFILTER",
        );
    }
    drop(f);
    let mut feats = [0x3a, 2, 0, 0, 0, 0, 0, 0, 0, 0];
    ethtool(name, &mut feats);
    format!(
        "{name}: vnet header {hdr} bytes, le {le}, filter length {}, features asked for \
         {:#x} {:#x}, on {:#x} {:#x}",
        fprog[0], feats[3], feats[7], feats[4], feats[8]
    )
}

const TAP0: u16 = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
const TUN1: u16 = IFF_TUN;
