//! `stasis run --net [--veth OUTER[@BRIDGE]] [--net-addr CIDR]...`: the
//! command runs in a new network namespace as well, made and filled by a
//! short-lived thread (unshare, lo up, the veth pair, addresses) that then
//! forks it, so the command starts in a namespace already set up.

use anyhow::{anyhow, Context, Result};
use stasis_sys::{nsenter, tool, Pid};
use std::ffi::CString;
use std::os::fd::AsRawFd;

fn ip(args: &[&str]) -> Result<()> {
    tool::run("ip", args, None).map_err(|e| anyhow!("{e}"))
}

/// Runs in the new namespace (the calling thread's); `back` is ours.
fn fill(back: &std::os::fd::OwnedFd, veth: Option<&str>, addrs: &[String]) -> Result<()> {
    ip(&["link", "set", "lo", "up"])?;
    let Some(spec) = veth else { return Ok(()) };
    let (outer, bridge) = match spec.split_once('@') {
        Some((o, b)) => (o.to_string(), Some(b.to_string())),
        None => (spec.to_string(), None),
    };
    let host = format!("/proc/{}/fd/{}", std::process::id(), back.as_raw_fd());
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", &outer, "netns", &host,
    ])?;
    for a in addrs {
        // nodad: usable at once (IPv6), ignored for IPv4.
        let v6 = a.contains(':');
        let mut args = vec!["addr", "add", a.as_str(), "dev", "eth0"];
        if v6 {
            args.push("nodad");
        }
        ip(&args)?;
    }
    ip(&["link", "set", "eth0", "up"])?;
    let mut set = vec!["link".to_string(), "set".into(), outer.clone()];
    if let Some(b) = bridge {
        set.extend(["master".into(), b]);
    }
    set.push("up".into());
    let h = back.try_clone().context("dup of our network namespace")?;
    nsenter::in_ns(h, libc::CLONE_NEWNET, None, move || {
        let a: Vec<&str> = set.iter().map(String::as_str).collect();
        tool::run("ip", &a, None)
    })
    .map_err(|e| anyhow!("{e}"))?
    .map_err(|e| anyhow!("{e}"))
}

/// Forks `argv` as init of a new PID namespace, in a new network
/// namespace set up as asked. With a user namespace (`opts.user`) the
/// network namespace is made in the same clone, so the user namespace
/// owns it (as it must for a dump), and filled from here before the
/// command starts; without, a thread of ours makes it first.
pub(crate) fn spawn(
    argv: Vec<CString>,
    veth: Option<String>,
    addrs: Vec<String>,
    mut opts: stasis_sys::spawn::RunNs,
) -> Result<Pid> {
    if opts.user.is_some() {
        opts.flags |= libc::CLONE_NEWNET as u64;
        let back = stasis_sys::util::open("/proc/self/ns/net", libc::O_RDONLY | libc::O_CLOEXEC)?;
        opts.setup = Some(Box::new(move |pid: Pid| {
            nsenter::in_ns_of(pid, "net", libc::CLONE_NEWNET, move || {
                fill(&back, veth.as_deref(), &addrs)
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("setting up its network namespace: {e:#}"))
        }));
        return Ok(stasis_sys::spawn::run_in_pid_ns(&argv, opts)?);
    }
    std::thread::spawn(move || -> Result<Pid> {
        let back = nsenter::unshare_thread("net", libc::CLONE_NEWNET)?;
        fill(&back, veth.as_deref(), &addrs).context("setting up its network namespace")?;
        Ok(stasis_sys::spawn::run_in_pid_ns(&argv, opts)?)
    })
    .join()
    .map_err(|_| anyhow!("the network namespace thread panicked"))?
}
