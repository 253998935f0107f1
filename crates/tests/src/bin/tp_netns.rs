//! Network namespace test program.
//!
//! Usage: `tp_netns WORKDIR --mode own|veth|nft [--corrupt]`
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
//! - `veth`: its namespace holds a veth pair (refused by name).
//! - `nft`: its namespace holds an nftables table (refused by name).

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

/// What `ip` and /proc/sys show of the namespace.
fn state() -> Vec<String> {
    let mut v = vec![
        ip(&["-o", "link", "show"]),
        ip(&["-o", "-4", "addr", "show"]),
        ip(&["-o", "-6", "addr", "show"]),
        ip(&["-4", "route", "show"]),
        ip(&["-6", "route", "show"]),
    ];
    for s in ["ipv4/ip_forward", "ipv4/conf/all/rp_filter"] {
        v.push(std::fs::read_to_string(format!("/proc/sys/net/{s}")).unwrap_or_default());
    }
    v
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
        "veth" => {
            unshare_net();
            ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
            proto.ready_and_wait();
        }
        "nft" => {
            unshare_net();
            let ok = Command::new("nft")
                .args(["add", "table", "inet", "stasis_tp_netns"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "nft add table");
            proto.ready_and_wait();
        }
        m => report.fail(format!("unknown mode {m}")),
    }
    proto.finish(&report);
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

fn own(proto: &Proto, report: &mut Report, corrupt: bool) {
    unshare_net();
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
