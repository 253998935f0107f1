//! criu's RPC, driven by real clients:
//!
//! * Debian's go-criu (the library runc and podman use), built into
//!   `go/criu_client` and run with a `criu` link to stasis first in PATH:
//!   go-criu starts `criu swrk FD` itself. Version, features, a dump and a
//!   restore with every notification recorded, refused options named, and
//!   a failing notify callback that must leave the target running.
//! * stasis-rpc's client, for what go-criu cannot send: malformed and
//!   truncated requests, unknown fields, and `criu service`.
//! * `--action-script` on the command line, at the same points.
//!
//! The go-criu tests skip, saying so, only without `go` or without the
//! go-criu package (.ci/run installs both).

mod common;

use common::*;
use prost::Message;
use stasis_rpc::{Client, Opts as CriuOpts, Req, ReqType};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const GO_CRIU: &str = "/usr/share/gocode/src/github.com/checkpoint-restore/go-criu";
const MEM_SMALL: &[&str] = &["--size-mib", "8", "--sparse-mib", "16"];

/// A directory whose `criu` is a link to the stasis under test.
fn criu_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("criu-link");
        fs::create_dir_all(&dir).expect("criu link dir");
        let link = dir.join("criu");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(stasis_bin(), &link).expect("criu link");
        dir
    })
    .clone()
}

/// Builds `go/criu_client` against Debian's go-criu (GOPATH mode: a
/// private GOPATH maps go-criu's `/v5` import path onto the package).
fn build_client() -> Result<PathBuf, String> {
    if Command::new("go").arg("version").output().is_err() {
        return Err(NO_GO.into());
    }
    if !Path::new(GO_CRIU).join("rpc").is_dir() {
        return Err(format!(
            "no go-criu at {GO_CRIU} (Debian: apt-get install golang-github-checkpoint-restore-go-criu-dev)"
        ));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("criu-client");
    let gopath = dir.join(format!("gopath.{}", std::process::id()));
    let pkg = gopath.join("src/criuclient");
    let v5 = gopath.join("src/github.com/checkpoint-restore/go-criu");
    fs::create_dir_all(&pkg).map_err(|e| e.to_string())?;
    fs::create_dir_all(&v5).map_err(|e| e.to_string())?;
    let _ = std::os::unix::fs::symlink(GO_CRIU, v5.join("v5"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/criu_client/main.go");
    fs::copy(&src, pkg.join("main.go")).map_err(|e| e.to_string())?;
    let out = dir.join(format!("criu_client.{}", std::process::id()));
    let gopath_env = format!("{}:/usr/share/gocode", gopath.display());
    let mut cmd = go_build(&dir, gopath_env.as_ref(), &out);
    cmd.arg(".").current_dir(&pkg);
    let o = cmd.output().map_err(|e| format!("run go build: {e}"))?;
    let _ = fs::remove_dir_all(&gopath);
    if !o.status.success() {
        return Err(format!(
            "go build {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let exe = dir.join("criu_client");
    fs::rename(&out, &exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    Ok(exe)
}

/// The client, or `None` (the test is skipped, saying why).
fn client(test: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_client) {
        Ok(p) => Some(p.clone()),
        Err(e) if e == NO_GO || e.starts_with("no go-criu") => {
            eprintln!("SKIP {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Runs the go-criu client with `args` (the `criu` link first in PATH);
/// its stdout, through a file (a restored process must hold no pipe of
/// ours).
fn go_criu(work: &Work, exe: &Path, args: &[&str]) -> String {
    let out_p = work.path("client.out");
    let path = format!(
        "{}:{}",
        criu_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new(exe)
        .args(args)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_p).expect("client.out"))
        .stderr(fs::File::create(work.path("client.err")).expect("client.err"))
        .spawn()
        .expect("start criu_client");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait criu_client").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            fail(work, format!("criu_client {args:?} did not finish"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = fs::read_to_string(&out_p).unwrap_or_default();
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.path("stasis-commands.log"))
        .expect("log");
    use std::io::Write;
    let _ = writeln!(log, "criu_client {} ->\n{out}", args.join(" "));
    out
}

fn line<'a>(out: &'a str, tag: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(tag))
        .unwrap_or_else(|| panic!("no {tag:?} line in {out:?}"))
        .trim()
}

/// The program checkpointed by every test here, started and ready.
fn target(work: &Work) -> Proc {
    let mut p = start(work, Program::Bin("tp_memory"), MEM_SMALL);
    step(
        work,
        "ready",
        wait_ready(work, &mut p, Opts::default().ready_timeout),
    );
    p
}

fn img(work: &Work) -> String {
    fs::create_dir_all(work.img()).expect("img");
    work.img().to_string_lossy().into_owned()
}

#[test]
fn gocriu_version_and_features() {
    let Some(exe) = client("gocriu_version_and_features") else {
        return;
    };
    let work = Work::new("gocriu_version");
    let out = go_criu(&work, &exe, &["version"]);
    // criu 4.1 as go-criu counts it; runc asks for at least 3.x.
    assert_eq!(line(&out, "VERSION"), "40100 atleast3=true", "{out}");
    let out = go_criu(&work, &exe, &["features"]);
    // Asked about mem_track and lazy_pages: both answered, both absent.
    assert_eq!(
        line(&out, "FEATURES"),
        "mem_track=true/false lazy_pages=true/false pidfd_store_set=false",
        "{out}"
    );
}

#[test]
fn gocriu_dump_restore_notify() {
    let Some(exe) = client("gocriu_dump_restore_notify") else {
        return;
    };
    let work = Work::new("gocriu_dump_restore");
    let opts = Opts::default();
    let mut p = target(&work);
    let pid = p.pid.to_string();
    let out = go_criu(&work, &exe, &["dump", &img(&work), &pid]);
    if !out.contains("DUMPED") {
        fail(&work, format!("go-criu dump failed: {out}"));
    }
    assert_eq!(line(&out, "NOTIFY"), "pre-dump,post-dump", "{out}");
    let exit = step(
        &work,
        "dumped process dies",
        p.wait(Duration::from_secs(10)),
    );
    assert_eq!(exit, Exit::Signal(libc::SIGKILL));
    assert!(work.img().join("inventory.img").exists());
    assert!(
        work.img().join("dump.log").exists(),
        "log_file in the images dir"
    );

    let out = go_criu(&work, &exe, &["restore", &img(&work)]);
    let mut r = Proc::adopt(p.pid);
    if !out.contains("RESTORED") {
        fail(&work, format!("go-criu restore failed: {out}"));
    }
    assert_eq!(
        line(&out, "NOTIFY"),
        format!(
            "pre-restore,setup-namespaces:{pid},post-setup-namespaces,post-restore:{pid},post-resume"
        ),
        "{out}"
    );
    step(&work, "restored process state", r.check_running_untraced());
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// rst_sibling, as runc sets it on every restore: the restored process is
/// the go-criu client's own child (a sibling of `criu swrk`); the client
/// releases it, waits for it, and gets its exit.
#[test]
fn gocriu_restore_sibling() {
    let Some(exe) = client("gocriu_restore_sibling") else {
        return;
    };
    let work = Work::new("gocriu_restore_sibling");
    let mut p = target(&work);
    let pid = p.pid;
    let out = go_criu(&work, &exe, &["dump", &img(&work), &pid.to_string()]);
    if !out.contains("DUMPED") {
        fail(&work, format!("go-criu dump failed: {out}"));
    }
    check_gone(&work, &mut p);
    let go = work.path("go").to_string_lossy().into_owned();
    let out = go_criu(&work, &exe, &["restore-sibling", &img(&work), &go]);
    assert_eq!(
        line(&out, "RESTORED"),
        format!("{pid} parent-is-me=true"),
        "{out}"
    );
    assert_eq!(line(&out, "EXIT"), "0 signaled=false", "{out}");
    assert_eq!(work.result().as_deref(), Some("PASS\n"), "{out}");
    assert!(!pid_exists(pid), "the client reaped {pid}");
}

/// A refused option comes back as go-criu's error naming the field; the
/// target is not touched. A notify callback that fails (post-dump) fails
/// the dump: the target runs on and the image is withdrawn.
#[test]
fn gocriu_refusals_leave_target_running() {
    let Some(exe) = client("gocriu_refusals_leave_target_running") else {
        return;
    };
    let work = Work::new("gocriu_refusals");
    let opts = Opts::default();
    let mut p = target(&work);
    let pid = p.pid.to_string();
    let out = go_criu(&work, &exe, &["refused", &img(&work), &pid]);
    let d = line(&out, "DUMP-REFUSED");
    assert!(
        d.contains("criu_opts.lazy_pages") && d.contains("not supported") && d.contains("err:95"),
        "{out}"
    );
    let r = line(&out, "RESTORE-REFUSED");
    assert!(r.contains("criu_opts.pidfd_store_sk"), "{out}");
    step(&work, "after refusals", p.check_running_untraced());

    let out = go_criu(
        &work,
        &exe,
        &["dump", &img(&work), &pid, "--fail-post-dump"],
    );
    assert_eq!(line(&out, "NOTIFY"), "pre-dump,post-dump", "{out}");
    let e = line(&out, "ERROR");
    assert!(e.contains("post-dump"), "{out}");
    assert!(
        !work.img().join("inventory.img").exists(),
        "a failed post-dump left an image"
    );
    step(
        &work,
        "after a failed post-dump",
        p.check_running_untraced(),
    );
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

/// An swrk worker on a socketpair (stasis-rpc's client).
fn swrk() -> Client {
    Client::swrk(&stasis_bin()).expect("start swrk")
}

fn resp_of(c: &Client) -> stasis_rpc::Resp {
    c.recv().expect("recv").expect("a response")
}

/// Garbage, truncated requests and unknown fields get an error answer and
/// nothing is done: the worker answers the next request and exits 0 (a
/// panic would be 101), the target runs on, no image is written.
#[test]
fn rpc_malformed_requests() {
    let work = Work::new("rpc_malformed");
    let opts = Opts::default();
    let mut p = target(&work);
    fs::create_dir_all(work.img()).expect("img");
    let dir = fs::File::open(work.img()).expect("open img");
    let dump = Req {
        r#type: ReqType::Dump as i32,
        opts: Some(CriuOpts {
            images_dir_fd: dir.as_raw_fd(),
            pid: Some(p.pid),
            ..CriuOpts::default()
        }),
        ..Req::default()
    }
    .encode_to_vec();
    let c = swrk();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\xff\xff\xff\xff garbage".to_vec()),
        ("truncated", dump[..dump.len() - 3].to_vec()),
        ("cut in a varint", vec![0x08, 0x81]),
    ];
    // An unknown criu_opts field (number 99) inside an otherwise good dump.
    let mut opts_b = CriuOpts {
        images_dir_fd: dir.as_raw_fd(),
        pid: Some(p.pid),
        ..CriuOpts::default()
    }
    .encode_to_vec();
    opts_b.extend_from_slice(&[0x98, 0x06, 0x01]);
    let mut unknown = vec![0x08, 0x01, 0x12, opts_b.len() as u8];
    unknown.extend_from_slice(&opts_b);
    cases.push(("unknown field", unknown));
    // A request type criu does not have.
    cases.push(("unknown type", vec![0x08, 0x63]));
    for (what, bytes) in &cases {
        c.send_raw(bytes).expect("send");
        let r = resp_of(&c);
        assert!(!r.success, "{what}: answered success: {r:?}");
        let msg = r.cr_errmsg.clone().unwrap_or_default();
        assert!(!msg.is_empty() && !msg.contains('\n'), "{what}: {msg:?}");
        if *what == "unknown field" {
            assert!(msg.contains("[99]"), "{what}: {msg}");
        }
    }
    // Still serving.
    let v = c
        .call(
            &Req {
                r#type: ReqType::Version as i32,
                ..Req::default()
            },
            |_| true,
        )
        .expect("version");
    assert!(v.success && v.version.is_some(), "{v:?}");
    assert_eq!(
        v.version.as_ref().map(|v| (v.major_number, v.minor_number)),
        Some((4, 1))
    );
    let ask = |ty: ReqType| {
        c.call(
            &Req {
                r#type: ty as i32,
                ..Req::default()
            },
            |_| true,
        )
        .expect("call")
    };
    let check = ask(ReqType::Check);
    assert!(
        check.success && check.r#type == ReqType::Check as i32,
        "{check:?}"
    );
    // Requests stasis does not serve are refused by name (EOPNOTSUPP).
    for (ty, name) in [
        (ReqType::PreDump, "PRE_DUMP"),
        (ReqType::PageServer, "PAGE_SERVER"),
        (ReqType::CpuinfoDump, "CPUINFO_DUMP"),
    ] {
        let r = ask(ty);
        assert!(!r.success && r.cr_errno == Some(libc::EOPNOTSUPP), "{r:?}");
        assert!(r.cr_errmsg.as_deref().unwrap_or("").contains(name), "{r:?}");
    }
    // A dump without criu_opts is an error, not a panic.
    let r = ask(ReqType::Dump);
    assert!(!r.success, "{r:?}");
    // A zero-length record reads as the end of the connection on a
    // SOCK_SEQPACKET socket: the worker ends cleanly.
    c.send_raw(&[]).expect("send empty");
    assert!(c.recv().expect("recv").is_none(), "the worker answered");
    let st = c.close().expect("close").expect("status");
    assert_eq!(st.code(), Some(0), "swrk exit status");
    assert!(
        !work.img().join("inventory.img").exists(),
        "a malformed request wrote an image"
    );
    step(
        &work,
        "after malformed requests",
        p.check_running_untraced(),
    );
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

/// `criu service -d --address SOCK --pidfile F`: a client connects, dumps
/// with notifications answered (one refused: the dump fails, the target
/// runs on), dumps again, restores, and waits (WAIT_PID) for the restored
/// tree, which passes its own checks.
#[test]
fn rpc_service_dump_restore() {
    let work = Work::new("rpc_service");
    let opts = Opts::default();
    let sock = work.path("criu.sock");
    let pidf = work.path("service.pid");
    let out = stasis(
        &work,
        &[
            "service",
            "-d",
            "--address",
            sock.to_str().expect("utf-8"),
            "--pidfile",
            pidf.to_str().expect("utf-8"),
        ],
        opts.stasis_timeout,
    );
    assert!(out.success(), "service -d: {out:?}");
    let svc = pidfile(&work, "service.pid");
    let _svc = KillOnDrop(svc);
    let mut p = start(&work, Program::Bin("tp_memory"), MEM_SMALL);
    step(
        &work,
        "ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    fs::create_dir_all(work.img()).expect("img");
    let dir = fs::File::open(work.img()).expect("open img");
    let req = |ty: ReqType, pid: Option<i32>| Req {
        r#type: ty as i32,
        opts: Some(CriuOpts {
            images_dir_fd: dir.as_raw_fd(),
            pid,
            notify_scripts: Some(true),
            log_file: Some("rpc.log".into()),
            log_level: Some(4),
            ..CriuOpts::default()
        }),
        ..Req::default()
    };
    let c = Client::connect(&sock).expect("connect");
    let mut seen = Vec::new();
    let r = c
        .call(&req(ReqType::Dump, Some(p.pid)), |n| {
            seen.push(n.script.clone().unwrap_or_default());
            n.script.as_deref() != Some("pre-dump")
        })
        .expect("dump");
    assert!(!r.success, "a refused pre-dump must fail the dump: {r:?}");
    assert_eq!(seen, ["pre-dump"]);
    step(
        &work,
        "after a refused pre-dump",
        p.check_running_untraced(),
    );
    seen.clear();
    let r = c
        .call(&req(ReqType::Dump, Some(p.pid)), |n| {
            seen.push(n.script.clone().unwrap_or_default());
            true
        })
        .expect("dump");
    assert!(r.success, "{r:?}");
    assert_eq!(r.r#type, ReqType::Dump as i32);
    assert_eq!(seen, ["pre-dump", "post-dump"]);
    let exit = step(
        &work,
        "dumped process dies",
        p.wait(Duration::from_secs(10)),
    );
    assert_eq!(exit, Exit::Signal(libc::SIGKILL));
    seen.clear();
    let r = c
        .call(&req(ReqType::Restore, None), |n| {
            seen.push(format!(
                "{}{}",
                n.script.clone().unwrap_or_default(),
                n.pid.map(|p| format!(":{p}")).unwrap_or_default()
            ));
            true
        })
        .expect("restore");
    assert!(r.success, "{r:?}");
    assert_eq!(r.restore.as_ref().map(|x| x.pid), Some(p.pid));
    let pid = p.pid;
    assert_eq!(
        seen,
        [
            "pre-restore".to_string(),
            format!("setup-namespaces:{pid}"),
            "post-setup-namespaces".into(),
            format!("post-restore:{pid}"),
            "pre-resume".into(),
            "post-resume".into()
        ]
    );
    // The tree is the worker's child: WAIT_PID waits for it to finish.
    work.release_go();
    let w = c
        .call(
            &Req {
                r#type: ReqType::WaitPid as i32,
                pid: Some(pid as u32),
                ..Req::default()
            },
            |_| true,
        )
        .expect("wait_pid");
    assert!(w.success && w.r#type == ReqType::WaitPid as i32, "{w:?}");
    let st = w.status.expect("a wait status");
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "status {st:#x}{}",
        work.diagnostics()
    );
    let result = work.result().unwrap_or_default();
    assert!(result.starts_with("PASS"), "{result}{}", work.diagnostics());
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain kill of the service daemon this test started.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// `--action-script` runs at every point with CRTOOLS_SCRIPT_ACTION and
/// CRTOOLS_INIT_PID (once the root is known).
#[test]
fn action_scripts_cli() {
    let work = Work::new("action_scripts");
    let opts = Opts::default();
    let log = work.path("actions");
    let script = format!(
        "echo \"$CRTOOLS_SCRIPT_ACTION:${{CRTOOLS_INIT_PID:-}}:$CRTOOLS_IMAGE_DIR\" >> {}",
        log.display()
    );
    let mut p = start(&work, Program::Bin("tp_memory"), MEM_SMALL);
    step(
        &work,
        "ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    let pid = p.pid;
    let script: &'static str = Box::leak(script.into_boxed_str());
    let o = Opts {
        dump_extra: vec!["--action-script", script],
        restore_extra: vec!["--action-script", script],
        ..opts.clone()
    };
    dump_and_check_gone(&work, &mut p, &o);
    let mut r = restore_and_adopt(&work, pid, &o);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
    let got = fs::read_to_string(&log).unwrap_or_default();
    let want: String = [
        format!("pre-dump:{pid}"),
        format!("post-dump:{pid}"),
        "pre-restore:".into(),
        format!("setup-namespaces:{pid}"),
        format!("post-setup-namespaces:{pid}"),
        format!("post-restore:{pid}"),
        format!("pre-resume:{pid}"),
        format!("post-resume:{pid}"),
    ]
    .iter()
    .map(|l| format!("{l}:{}\n", work.img().display()))
    .collect();
    assert_eq!(got, want);
}

/// A failing script fails the dump (target left running, no image) or the
/// restore (nothing left behind), with one line naming the point.
#[test]
fn action_script_failure() {
    let work = Work::new("action_script_failure");
    let opts = Opts::default();
    let mut p = target(&work);
    let pid = p.pid;
    let fail_at = |point: &str| format!("test \"$CRTOOLS_SCRIPT_ACTION\" != {point}");
    let out = dump(
        &work,
        pid,
        &["--action-script", &fail_at("post-dump")],
        opts.stasis_timeout,
    );
    assert!(!out.success(), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("post-dump"), "{out:?}");
    assert!(!work.img().join("inventory.img").exists());
    step(&work, "after a failed dump", p.check_running_untraced());
    // A good dump, then a restore whose pre-resume script fails.
    let o = Opts {
        restore_extra: vec![
            "--action-script",
            Box::leak(fail_at("pre-resume").into_boxed_str()),
        ],
        ..opts.clone()
    };
    dump_and_check_gone(&work, &mut p, &o);
    let out = restore_detached(&work, &o.restore_extra, opts.stasis_timeout);
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("pre-resume"), "{out:?}");
    assert!(!pid_exists(pid), "a failed restore left PID {pid} behind");
    // The image is still good: a restore without the script passes.
    let mut r = restore_and_adopt(&work, pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// criu's external resources through the RPC, judged as on the command
/// line: `external: ["tty[...]"]` is refused by name (EOPNOTSUPP) and the
/// target runs on; `unix_sk_ino` naming tp_extunix's stream socket (peer
/// outside the tree) with `external: ["mnt[]"]` dumps it as external
/// `socket:[INO]`, which a restore without `--inherit-fd` then names.
#[test]
fn rpc_external_resources() {
    let work = Work::new("rpc_external");
    let opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_extunix"), &["--stream"], &opts);
    let key = fs::read_link(format!("/proc/{}/fd/42", p.pid))
        .expect("fd 42")
        .to_string_lossy()
        .into_owned();
    let ino: u32 = key
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .parse()
        .expect("inode");
    fs::create_dir_all(work.img()).expect("img");
    let dir = fs::File::open(work.img()).expect("open img");
    let pid = p.pid;
    let dump = |external: Vec<String>, unix_sk_ino: Vec<stasis_rpc::UnixSk>| Req {
        r#type: ReqType::Dump as i32,
        opts: Some(CriuOpts {
            images_dir_fd: dir.as_raw_fd(),
            pid: Some(pid),
            log_file: Some("rpc.log".into()),
            log_level: Some(4),
            external,
            unix_sk_ino,
            ..CriuOpts::default()
        }),
        ..Req::default()
    };
    let c = swrk();
    let r = c
        .call(&dump(vec!["tty[8801:3]".into()], Vec::new()), |_| true)
        .expect("dump");
    let msg = r.cr_errmsg.clone().unwrap_or_default();
    assert!(
        !r.success && r.cr_errno == Some(libc::EOPNOTSUPP) && msg.contains("external tty"),
        "{r:?}"
    );
    step(&work, "after a refused dump", p.check_running_untraced());
    let r = c
        .call(
            &dump(
                vec!["mnt[]".into()],
                vec![stasis_rpc::UnixSk { inode: ino }],
            ),
            |_| true,
        )
        .expect("dump");
    assert!(
        r.success,
        "dump with unix_sk_ino {ino}: {r:?}{}",
        work.diagnostics()
    );
    let _ = p.wait(Duration::from_secs(10));
    let out = restore_detached(&work, &[], opts.stasis_timeout);
    assert!(
        !out.success() && out.stderr.contains(&key) && out.stderr.contains("--inherit-fd"),
        "restore without --inherit-fd: {out:?}"
    );
    assert!(!pid_exists(p.pid), "a refused restore left {}", p.pid);
}
