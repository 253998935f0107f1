//! The network lock (criu's `--network-lock`): while a tree's TCP
//! connections are dumped and until they are restored, every packet of
//! theirs is dropped both ways, so the peers see neither a reset nor a
//! FIN, only silence (they retransmit). One rule per direction per
//! connection (its 4-tuple, as on the wire: a v4-mapped address is IPv4);
//! packets marked [`MARK`] pass (the restore's own injected segments).
//!
//! nftables: a table `inet NAME` whose input and output chains (priority
//! -300, before conntrack) hold the rules; unlocking deletes the table.
//! iptables: a chain NAME in the filter table of iptables and ip6tables,
//! jumped to first from INPUT and OUTPUT; unlocking removes the jumps and
//! the chain. Both run the `nft`/`iptables` commands.

use crate::tool::run;
use crate::Result;
use std::net::{IpAddr, SocketAddr};

/// Packets with this mark go through the lock.
pub const MARK: u32 = 0xc114;

/// How the lock is made (criu's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Iptables,
    Nftables,
    /// No lock: the caller locks the network itself.
    Skip,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "iptables" => Some(Method::Iptables),
            "nftables" => Some(Method::Nftables),
            "skip" => Some(Method::Skip),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Iptables => "iptables",
            Method::Nftables => "nftables",
            Method::Skip => "skip",
        }
    }
}

/// An address as it appears in packets: a v4-mapped IPv6 address is IPv4.
pub fn on_wire(a: &SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => *a,
        },
        SocketAddr::V4(_) => *a,
    }
}

/// `(saddr, daddr, sport, dport)` of each direction of each connection.
fn directions(conns: &[(SocketAddr, SocketAddr)]) -> Vec<(bool, SocketAddr, SocketAddr)> {
    let mut v = Vec::new();
    for (l, p) in conns {
        let (l, p) = (on_wire(l), on_wire(p));
        v.push((false, l, p)); // output: from us
        v.push((true, p, l)); // input: to us
    }
    v
}

fn nft_rule(s: &SocketAddr, d: &SocketAddr) -> String {
    let f = if s.is_ipv4() { "ip" } else { "ip6" };
    format!(
        "{f} saddr {} {f} daddr {} tcp sport {} tcp dport {} drop",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
}

fn nft_lock(name: &str, conns: &[(SocketAddr, SocketAddr)]) -> Result<()> {
    let mut input = String::new();
    let mut output = String::new();
    for (inbound, s, d) in directions(conns) {
        let chain = if inbound { &mut input } else { &mut output };
        chain.push_str(&format!("\t\t{}\n", nft_rule(&s, &d)));
    }
    let chain = |n: &str, hook: &str, rules: &str| {
        format!(
            "\tchain {n} {{\n\t\ttype filter hook {hook} priority -300; policy accept;\n\
             \t\tmeta mark {MARK:#x} accept\n{rules}\t}}\n"
        )
    };
    let script = format!(
        "table inet {name} {{\n{}{}}}\n",
        chain("input", "input", &input),
        chain("output", "output", &output)
    );
    run("nft", &["-f", "-"], Some(&script))
}

fn ipt_cmd(v6: bool) -> &'static str {
    if v6 {
        "ip6tables"
    } else {
        "iptables"
    }
}

fn ipt_lock(name: &str, conns: &[(SocketAddr, SocketAddr)]) -> Result<()> {
    let mark = format!("{MARK:#x}");
    for v6 in [false, true] {
        let cmd = ipt_cmd(v6);
        run(cmd, &["-w", "-N", name], None)?;
        let accept = [
            "-w", "-A", name, "-m", "mark", "--mark", &mark, "-j", "ACCEPT",
        ];
        run(cmd, &accept, None)?;
        for (_, s, d) in directions(conns).iter().filter(|c| c.1.is_ipv6() == v6) {
            let (sa, da) = (s.ip().to_string(), d.ip().to_string());
            let (sp, dp) = (s.port().to_string(), d.port().to_string());
            let rule = [
                "-w", "-A", name, "-p", "tcp", "-s", &sa, "-d", &da, "--sport", &sp, "--dport",
                &dp, "-j", "DROP",
            ];
            run(cmd, &rule, None)?;
        }
        for hook in ["INPUT", "OUTPUT"] {
            run(cmd, &["-w", "-I", hook, "-j", name], None)?;
        }
    }
    Ok(())
}

/// Locks the connections (local, peer) under `name`. On error whatever
/// was made is removed again.
pub fn lock(method: Method, name: &str, conns: &[(SocketAddr, SocketAddr)]) -> Result<()> {
    let r = match method {
        Method::Skip => return Ok(()),
        Method::Nftables => nft_lock(name, conns),
        Method::Iptables => ipt_lock(name, conns),
    };
    if r.is_err() {
        let _ = unlock(method, name);
    }
    r
}

/// Removes the lock `name`. Every part is tried; the first error is
/// returned (a lock already gone is one).
pub fn unlock(method: Method, name: &str) -> Result<()> {
    match method {
        Method::Skip => Ok(()),
        Method::Nftables => run("nft", &["delete", "table", "inet", name], None),
        Method::Iptables => {
            let mut first = Ok(());
            for v6 in [false, true] {
                let cmd = ipt_cmd(v6);
                for args in [
                    &["-w", "-D", "INPUT", "-j", name][..],
                    &["-w", "-D", "OUTPUT", "-j", name][..],
                    &["-w", "-F", name][..],
                    &["-w", "-X", name][..],
                ] {
                    let r = run(cmd, args, None);
                    if first.is_ok() {
                        first = r;
                    }
                }
            }
            first
        }
    }
}

/// Whether the lock `name` exists (tests, and a restore telling a lock
/// already released from a failure to release it).
pub fn exists(method: Method, name: &str) -> bool {
    match method {
        Method::Skip => false,
        Method::Nftables => run("nft", &["list", "table", "inet", name], None).is_ok(),
        Method::Iptables => run("iptables", &["-w", "-n", "-L", name], None).is_ok(),
    }
}
