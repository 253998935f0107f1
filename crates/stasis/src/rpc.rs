//! criu's RPC: `swrk FD` (the client hands us one end of a SOCK_SEQPACKET
//! socketpair, as go-criu and libcriu do) and `service` (a listening unix
//! SOCK_SEQPACKET socket; each connection is served by a `swrk` worker).
//!
//! One criu_req per record, answered by one criu_resp of the same type;
//! during a dump or restore with `notify_scripts`, each action point is a
//! criu_notify that waits for the client's NOTIFY answer. Options are
//! judged by the command line's table (`rpc_opts`): a field stasis does not
//! implement is refused naming it, a field it does not know is refused by
//! number. Nothing here panics on any input: a request that does not
//! decode gets an error answer and nothing is done.

use crate::criu::{self, CRIU_VERSION};
use crate::criu_cmd::{self, Request};
use crate::rpc_opts;
use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use stasis_rpc::{
    wire, DumpResp, Features, Notify, Opts, PageServerInfo, Req, ReqType, Resp, RestoreResp,
    Version,
};
use stasis_sys::seqpacket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;

/// `criu swrk FD`: serves requests on descriptor FD until the client
/// closes it.
pub fn swrk(r: &Request) -> Result<ExitCode> {
    let arg = r.argument.as_deref().unwrap_or("");
    let fd: i32 = arg
        .parse()
        .map_err(|_| anyhow!("swrk: {arg:?} is not a descriptor number"))?;
    let sock = seqpacket::adopt_socket(fd).with_context(|| format!("swrk: descriptor {fd}"))?;
    serve(&sock)?;
    Ok(ExitCode::SUCCESS)
}

/// Serves one connection until the peer closes it.
fn serve(sock: &OwnedFd) -> Result<()> {
    let peer = seqpacket::peer_pid(sock).context("the client's PID")?.0;
    while let Some(buf) = seqpacket::recv_record(sock).context("receive a request")? {
        let resp = handle(sock, peer, &buf);
        seqpacket::send_record(sock, &resp.encode_to_vec()).context("send the response")?;
    }
    Ok(())
}

/// The answer to one encoded request (never a panic, whatever the bytes).
pub(crate) fn handle(sock: &OwnedFd, peer: i32, buf: &[u8]) -> Resp {
    let req = match Req::decode(buf) {
        Ok(r) => r,
        Err(e) => {
            return Resp::error(
                ReqType::Empty as i32,
                libc::EBADMSG,
                format!("malformed criu_req ({} bytes): {e}", buf.len()),
            )
        }
    };
    let ty = req.r#type;
    let unknown = match wire::unknown_opts_fields(buf) {
        Ok(u) => u,
        Err(e) => return Resp::error(ty, libc::EBADMSG, format!("malformed criu_req: {e}")),
    };
    if !unknown.is_empty() {
        return Resp::error(
            ty,
            libc::EOPNOTSUPP,
            format!(
                "criu_opts field(s) {unknown:?} unknown to stasis (it knows criu {CRIU_VERSION}'s, 1 to {})",
                Opts::KNOWN_FIELDS.end()
            ),
        );
    }
    let Ok(kind) = ReqType::try_from(ty) else {
        return Resp::error(ty, libc::EINVAL, format!("unknown request type {ty}"));
    };
    match dispatch(sock, peer, kind, &req) {
        Ok(resp) => resp,
        Err(e) => {
            let msg = crate::one_line(&e);
            log::error!("request {ty}: {msg}");
            to_client_log(&req, peer, &msg);
            Resp::error(ty, errno_of(&e), msg)
        }
    }
}

/// A failure goes to the request's log file too (runc and podman point
/// their users there), also when it came before the log was set up (a
/// refused option).
fn to_client_log(req: &Req, peer: i32, msg: &str) {
    use std::io::Write;
    let Some(o) = req.opts.as_ref() else { return };
    let Some(file) = o.log_file.as_ref().filter(|f| !f.contains('/')) else {
        return;
    };
    let Ok(dir) = rpc_opts::client_dir(peer, o.work_dir_fd.unwrap_or(o.images_dir_fd), "log")
    else {
        return;
    };
    let path = dir.join(file);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(msg)) {
        return;
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(f, "Error: {msg}");
    }
}

/// A request stasis refuses (an option or a request type it does not
/// implement): answered with EOPNOTSUPP.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(msg: String) -> anyhow::Error {
    anyhow::Error::new(Refused(msg))
}

/// The errno of an error: EOPNOTSUPP for a refusal, else the first in its
/// chain (0 if none).
fn errno_of(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| {
            if c.is::<Refused>() {
                return Some(libc::EOPNOTSUPP);
            }
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.raw_os_error())
                .or_else(|| {
                    c.downcast_ref::<stasis_sys::SysError>()
                        .and_then(|s| s.errno())
                })
        })
        .unwrap_or(0)
}

fn dispatch(sock: &OwnedFd, peer: i32, kind: ReqType, req: &Req) -> Result<Resp> {
    match kind {
        ReqType::Version => Ok(version()),
        ReqType::Check => check(),
        ReqType::FeatureCheck => Ok(features(req.features.as_ref())),
        ReqType::Dump => dump(sock, peer, req),
        ReqType::PreDump | ReqType::SinglePreDump => pre_dump(sock, peer, kind, req),
        ReqType::Restore => restore(sock, peer, req),
        ReqType::PageServer | ReqType::PageServerChld => page_server(peer, kind, req),
        ReqType::CpuinfoDump | ReqType::CpuinfoCheck => cpuinfo(peer, kind, req),
        ReqType::WaitPid => wait_pid(req),
        ReqType::Notify => bail!("a NOTIFY answer outside a dump or restore"),
        ReqType::Empty => bail!("an EMPTY request"),
    }
}

fn version() -> Resp {
    let mut parts = CRIU_VERSION.split('.').map(|p| p.parse().unwrap_or(0));
    Resp {
        version: Some(Version {
            major_number: parts.next().unwrap_or(0),
            minor_number: parts.next().unwrap_or(0),
            // No gitid: criu's release builds send none (with one, go-criu
            // and runc count the version as the next minor).
            name: Some(format!("stasis {}", env!("CARGO_PKG_VERSION"))),
            ..Version::default()
        }),
        ..Resp::ok(ReqType::Version)
    }
}

fn check() -> Result<Resp> {
    let features = stasis_sys::features::probe();
    if !criu_cmd::needed_features_ok(&features) {
        let missing: Vec<_> = features
            .iter()
            .filter(|f| !f.ok && criu_cmd::NEEDED.contains(&f.name))
            .map(|f| f.name)
            .collect();
        bail!("kernel features missing: {}", missing.join(", "));
    }
    Ok(Resp::ok(ReqType::Check))
}

/// Each feature asked about, answered: memory tracking (PRE_DUMP,
/// parent_img: userfaultfd write-protect and PAGEMAP_SCAN, as `check
/// --feature mem_dirty_track` says), lazy pages (lazy_pages: userfaultfd
/// with its non-cooperative events, as `check --feature uffd-noncoop`
/// says), no pidfd store.
fn features(asked: Option<&Features>) -> Resp {
    let asked = asked.cloned().unwrap_or_default();
    Resp {
        features: Some(Features {
            mem_track: asked
                .mem_track
                .map(|_| crate::criu_check::mem_track_ok(&stasis_sys::features::probe())),
            lazy_pages: asked.lazy_pages.map(|_| {
                let f = stasis_sys::features::probe();
                crate::criu_check::feature("uffd-noncoop", &f) == Some(Ok(()))
            }),
            pidfd_store: asked.pidfd_store.map(|_| false),
        }),
        ..Resp::ok(ReqType::FeatureCheck)
    }
}

/// The request's options judged as `command`'s command line would be.
fn request(command: &str, o: &Opts, peer: i32) -> Result<Request> {
    let scope = criu::COMMANDS
        .iter()
        .find(|c| c.0 == command)
        .map_or(0, |c| c.1);
    let mut r = Request {
        command: command.into(),
        scope,
        ..Request::default()
    };
    if let Some(name) = rpc_opts::refused_rpc_only(o) {
        return Err(refused(format!("criu_opts.{name} is not supported yet")));
    }
    let fields = rpc_opts::fields(o)?;
    let given: Vec<_> = fields.iter().map(|f| f.given.clone()).collect();
    r.notes.extend(rpc_opts::notes_rpc_only(o));
    r.notes.push(format!(
        "criu_opts as options: {}",
        given
            .iter()
            .map(|g| g.spelled())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    if let Some(g) = criu_cmd::judge_all(&mut r, &given)? {
        let name = fields
            .iter()
            .find(|f| f.given.opt.long == g.opt.long && f.given.value == g.value)
            .map_or("?", |f| f.rpc);
        return Err(refused(format!(
            "criu_opts.{name} is not supported yet (criu's {}: {})",
            g.spelled(),
            criu_cmd::refusal(&g)
        )));
    }
    r.images_dir = Some(rpc_opts::client_dir(
        peer,
        o.images_dir_fd,
        "images_dir_fd",
    )?);
    if let Some(fd) = o.work_dir_fd {
        r.work_dir = Some(rpc_opts::client_dir(peer, fd, "work_dir_fd")?);
    }
    if let Some(f) = &o.log_file {
        if f.contains('/') {
            bail!(
                "criu_opts.log_file {f:?}: no directories allowed (criu's rule): use work_dir_fd"
            );
        }
        r.log_file = Some(f.into());
    }
    r.verbosity = Some(o.log_level.unwrap_or(2).clamp(0, 4) as u8);
    Ok(r)
}

/// The hook sending criu_notify at each action point and waiting for the
/// client's answer; without `notify_scripts`, a hook that does nothing.
fn notifier(
    sock: &OwnedFd,
    on: bool,
) -> impl FnMut(&'static str, i32) -> std::result::Result<(), String> + '_ {
    move |script, pid| {
        if !on {
            return Ok(());
        }
        // criu names the root's PID at these two points only.
        let pid = matches!(script, "setup-namespaces" | "post-restore").then_some(pid);
        let n = Resp {
            notify: Some(Notify {
                script: Some(script.into()),
                pid,
            }),
            ..Resp::ok(ReqType::Notify)
        };
        seqpacket::send_record(sock, &n.encode_to_vec())
            .map_err(|e| format!("send the notification: {e}"))?;
        let b = seqpacket::recv_record(sock)
            .map_err(|e| format!("receive the client's answer: {e}"))?
            .ok_or("the client closed the connection")?;
        let ack = Req::decode(b.as_slice())
            .map_err(|e| format!("malformed answer to the notification: {e}"))?;
        if ack.r#type != ReqType::Notify as i32 {
            return Err(format!(
                "the client answered the notification with request type {}",
                ack.r#type
            ));
        }
        if ack.notify_success != Some(true) {
            return Err("the client's notify callback failed".into());
        }
        Ok(())
    }
}

fn dump(sock: &OwnedFd, peer: i32, req: &Req) -> Result<Resp> {
    let o = req.opts.as_ref().context("dump: criu_opts missing")?;
    let mut r = request("dump", o, peer)?;
    let pid = o
        .pid
        .context("criu_opts.pid unset (dump the requesting process): not supported")?;
    if pid <= 0 {
        bail!("criu_opts.pid {pid}: not a process");
    }
    r.tree = Some(pid as u32);
    criu_cmd::dump(&r, &mut notifier(sock, o.notify_scripts == Some(true)))?;
    Ok(Resp {
        dump: Some(DumpResp {
            restored: Some(false),
        }),
        ..Resp::ok(ReqType::Dump)
    })
}

/// PRE_DUMP and SINGLE_PRE_DUMP: criu's pre-dump (memory saved, the tree
/// left running with its writes tracked for the next round, parent_img
/// naming the previous round). criu answers both with their own type and
/// nothing more; a PRE_DUMP connection goes on with more PRE_DUMPs and a
/// DUMP, which this loop serves as they come.
fn pre_dump(sock: &OwnedFd, peer: i32, kind: ReqType, req: &Req) -> Result<Resp> {
    let o = req.opts.as_ref().context("pre-dump: criu_opts missing")?;
    let mut r = request("pre-dump", o, peer)?;
    let pid = o
        .pid
        .context("criu_opts.pid unset (pre-dump the requesting process): not supported")?;
    if pid <= 0 {
        bail!("criu_opts.pid {pid}: not a process");
    }
    if o.ps.is_some() {
        return Err(refused(
            "criu_opts.ps with a pre-dump is not supported yet: stasis sends a chain's images with the final dump (`stasis migrate`)"
                .into(),
        ));
    }
    r.tree = Some(pid as u32);
    criu_cmd::dump(&r, &mut notifier(sock, o.notify_scripts == Some(true)))?;
    Ok(Resp::ok(kind))
}

/// PAGE_SERVER and PAGE_SERVER_CHLD: a `page-server` receiving one image
/// into images_dir_fd, listening at ps.address (default any) and ps.port
/// (0 or unset: a free port, answered). It runs as our child, its own
/// process group for PAGE_SERVER (criu daemonizes it), ours for
/// PAGE_SERVER_CHLD (WAIT_PID on this connection reaps it); we answer
/// once it listens, with its PID and port.
fn page_server(peer: i32, kind: ReqType, req: &Req) -> Result<Resp> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let o = req
        .opts
        .as_ref()
        .context("page-server: criu_opts missing")?;
    let ps =
        o.ps.as_ref()
            .context("page-server: criu_opts.ps missing (criu: no page server info in message)")?;
    let port = ps.port.unwrap_or(0);
    let Ok(port) = u16::try_from(port) else {
        bail!("criu_opts.ps.port {port}: not a port");
    };
    let r = request("page-server", o, peer)?;
    let exe = std::env::current_exe().context("find the stasis binary")?;
    let mut c = std::process::Command::new(exe);
    c.arg("page-server")
        .arg("-D")
        .arg(r.images_dir())
        .arg("--port")
        .arg(port.to_string())
        .arg(format!("-v{}", r.verbosity.unwrap_or(2)));
    if let Some(a) = &ps.address {
        c.arg("--address").arg(a);
    }
    if let Some(w) = &r.work_dir {
        c.arg("-W").arg(w);
    }
    if let Some(f) = &r.log_file {
        c.arg("-o").arg(f);
    }
    if kind == ReqType::PageServer {
        c.process_group(0);
    }
    let mut child = c
        .env(criu_cmd::PS_ANNOUNCE, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("start the page server")?;
    let pid = child.id() as i32;
    let mut line = String::new();
    let read = child
        .stdout
        .take()
        .map(|out| std::io::BufReader::new(out).read_line(&mut line));
    let Ok(port) = line.trim().parse::<u16>() else {
        let status = child.wait().ok();
        bail!(
            "page-server: it did not start listening (read {read:?}, exit {status:?}; see its log)"
        );
    };
    log::info!("page server {pid} listening on port {port}");
    // Not waited for here: it runs on after this answer (criu's too).
    drop(child);
    Ok(Resp {
        ps: Some(PageServerInfo {
            address: ps.address.clone(),
            port: Some(i32::from(port)),
            pid: Some(pid),
            fd: None,
        }),
        ..Resp::ok(kind)
    })
}

/// CPUINFO_DUMP and CPUINFO_CHECK: `cpuinfo dump|check` in
/// images_dir_fd; cpu_cap is criu's bit mask (default fpu and ins). A
/// mismatch is a failed answer naming it.
fn cpuinfo(peer: i32, kind: ReqType, req: &Req) -> Result<Resp> {
    let o = req.opts.as_ref().context("cpuinfo: criu_opts missing")?;
    let mut r = request("cpuinfo", o, peer)?;
    r.argument = Some(
        if kind == ReqType::CpuinfoDump {
            "dump"
        } else {
            "check"
        }
        .into(),
    );
    r.cpu_cap = o.cpu_cap;
    criu_cmd::cpuinfo(&r)?;
    Ok(Resp::ok(kind))
}

fn restore(sock: &OwnedFd, peer: i32, req: &Req) -> Result<Resp> {
    let o = req.opts.as_ref().context("restore: criu_opts missing")?;
    let mut r = request("restore", o, peer)?;
    // criu's RPC restore is always detached: the answer carries the PID.
    r.detached = true;
    let restored = criu_cmd::restore_tree(&r, &mut notifier(sock, o.notify_scripts == Some(true)))?;
    Ok(Resp {
        restore: Some(RestoreResp {
            pid: restored.pid.0,
        }),
        ..Resp::ok(ReqType::Restore)
    })
}

/// WAIT_PID: waits for a child of ours (a tree restored on this
/// connection) and answers its wait status.
fn wait_pid(req: &Req) -> Result<Resp> {
    let pid = req.pid.context("wait_pid: pid missing")?;
    let status = stasis_sys::util::waitpid(stasis_sys::Pid(pid as i32), 0)
        .with_context(|| format!("wait for pid {pid}"))?;
    Ok(Resp {
        status,
        ..Resp::ok(ReqType::WaitPid)
    })
}

/// `criu service`: listens at `--address` (default criu's
/// `criu_service.socket` in the working directory); each connection is
/// served by a `swrk` worker of its own, as criu forks one. `-d` returns
/// once the socket listens, leaving the service running (`--pidfile`
/// names it).
pub fn service(r: &Request) -> Result<ExitCode> {
    let addr = std::path::PathBuf::from(
        r.address
            .clone()
            .unwrap_or_else(|| "criu_service.socket".into()),
    );
    let exe = std::env::current_exe().context("find the stasis binary")?;
    let listener = match std::env::var("STASIS_SERVICE_FD") {
        // The daemon's half: the listener comes from the parent.
        Ok(fd) => seqpacket::adopt_listener(fd.parse().unwrap_or(-1))?,
        Err(_) => seqpacket::listen_at(&addr.to_string_lossy())
            .with_context(|| format!("listen at {}", addr.display()))?,
    };
    if r.detached && std::env::var_os("STASIS_SERVICE_FD").is_none() {
        return daemonize(r, &exe, &listener);
    }
    if let Some(p) = &r.pidfile {
        if std::env::var_os("STASIS_SERVICE_FD").is_none() {
            std::fs::write(p, format!("{}\n", std::process::id()))
                .with_context(|| format!("write pidfile {}", p.display()))?;
        }
    }
    let mut workers: Vec<std::process::Child> = Vec::new();
    loop {
        let conn = stasis_sys::sock::accept(&listener).context("accept")?;
        workers.retain_mut(|w| !matches!(w.try_wait(), Ok(Some(_))));
        seqpacket::set_cloexec(&conn, false)?;
        let w = std::process::Command::new(&exe)
            .arg("swrk")
            .arg(conn.as_raw_fd().to_string())
            .env_remove("STASIS_SERVICE_FD")
            .spawn()
            .context("start a swrk worker")?;
        workers.push(w);
    }
}

/// `service -d`: the listener (already bound) goes to a copy of us in a
/// process group of its own; we write its PID and return.
fn daemonize(r: &Request, exe: &std::path::Path, listener: &OwnedFd) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    seqpacket::set_cloexec(listener, false)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let child = std::process::Command::new(exe)
        .args(&args)
        .env("STASIS_SERVICE_FD", listener.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("start the service")?;
    if let Some(p) = &r.pidfile {
        std::fs::write(p, format!("{}\n", child.id()))
            .with_context(|| format!("write pidfile {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
