//! A whole container in every namespace, without a container engine
//! (issue 11): a rootfs made of Debian's busybox-static and tp_container
//! (with the libraries it links), started by `stasis run --user` (user,
//! PID and mount namespaces) whose init is util-linux `unshare` (UTS,
//! IPC, network, cgroup and time namespaces, with clock offsets) exec'ing
//! a busybox shell that names the host, puts lo up with an extra address,
//! a route and a sysctl, waits for eth0 (a veth the test adds, its other
//! end here) and gives it an address, mounts proc, sysfs, a devpts and an mqueue in
//! /dev, the host's /dev/null bound on /dev/null (the shell opens it for
//! a background job), a tmpfs /tmp, pivots into the rootfs, and becomes
//! the container's shell, which starts tp_container (see that program: a
//! TCP server, a pty pair, SysV shm, semaphore and message queue, an inotify
//! watch, a child in a nested PID namespace, a seccomp filter).
//!
//! The tree is checked before the dump, dumped, and restored twice side
//! by side (each copy in its own user, PID, network, ... namespaces, both
//! alive at once, the outer end of each one's veth made here under a name
//! of the test's, criu's `--veth-pair`), and each copy checks every piece itself when the test
//! asks it over TCP in its network namespace. Negative control: a third
//! restore from a copy of the image whose host name was edited (the
//! inventory rewritten with a valid checksum) must fail its check, naming
//! the host name.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";
const UNSHARE: &str = "/usr/bin/unshare";

/// Why the test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !Path::new(BUSYBOX).exists() {
        return Some(format!(
            "no {BUSYBOX} (Debian: apt-get install busybox-static)"
        ));
    }
    if !Path::new(UNSHARE).exists() {
        return Some(format!("no {UNSHARE} (util-linux)"));
    }
    None
}

/// Copies `from` to `root/from` (parents made), keeping its mode.
fn copy_in(root: &Path, from: &Path) {
    let to = root.join(from.strip_prefix("/").expect("absolute path"));
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// The shared libraries `bin` loads, as ldd lists them.
fn libraries(bin: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .expect("run ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let p = match l.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect()
}

/// The container's shell: tp_container, then waiting for it.
const INIT: &str = "exec </init >/tmp/init.log 2>&1\n/tp_container &\nwait\n";

/// The rootfs in WORK/rootfs.
fn rootfs(work: &Work) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let r = work.path("rootfs");
    for d in ["bin", "proc", "sys", "dev/pts", "dev/mqueue", "tmp", ".old"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir in rootfs");
    }
    std::fs::write(r.join("dev/null"), "").expect("touch dev/null");
    std::os::unix::fs::symlink("pts/ptmx", r.join("dev/ptmx")).expect("symlink ptmx");
    std::fs::copy(BUSYBOX, r.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", r.join("bin/sh")).expect("symlink sh");
    let tp = PathBuf::from(env!("CARGO_BIN_EXE_tp_container"));
    std::fs::copy(&tp, r.join("tp_container")).expect("copy tp_container");
    for lib in libraries(&tp) {
        copy_in(&r, &lib);
    }
    std::fs::write(r.join("init"), INIT).expect("write init");
    // Root inside is uid 100000 here: it must reach the rootfs.
    for p in [work.dir(), &r] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    r
}

/// What the shell does before it becomes the container's shell.
fn stage2(rootfs: &Path) -> String {
    let r = rootfs.display();
    format!(
        "set -e
mount --make-rprivate /
hostname box-a
ip link set lo up
ip addr add 10.7.7.7/32 dev lo
ip route add 10.8.0.0/16 dev lo
sysctl -w net.ipv4.ip_default_ttl=77 >/dev/null
while ! ip link show eth0 >/dev/null 2>&1; do usleep 20000; done
ip addr add 10.9.0.2/24 dev eth0
ip link set eth0 up
mount --bind {r} {r}
mount -t proc proc {r}/proc
mount -t sysfs sysfs {r}/sys
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts {r}/dev/pts
mount --bind /dev/null {r}/dev/null
mount -t mqueue mqueue {r}/dev/mqueue
mount -t tmpfs tmpfs {r}/tmp
cd {r}
pivot_root . .old
cd /
umount -l /.old
exec /bin/busybox sh /init
"
    )
}

/// Sends `req` to tp_container over TCP in the network namespace of
/// process `pid` (from a thread that enters it) and returns its answer.
fn ask(pid: i32, req: &str) -> Result<String, String> {
    let ns = format!("/proc/{pid}/ns/net");
    let req = format!("{req}\n");
    std::thread::spawn(move || -> Result<String, String> {
        let f = std::fs::File::open(&ns).map_err(|e| format!("{ns}: {e}"))?;
        // SAFETY: setns on a descriptor we hold; this thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
        }
        let addr = "127.0.0.1:7070".parse().expect("address");
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("read: {e}"))?;
        Ok(out.trim().to_string())
    })
    .join()
    .map_err(|_| "the asking thread panicked".to_string())?
}

/// [`ask`] until tp_container answers (it is still starting), 30 s.
fn ask_when_up(work: &Work, pid: i32, req: &str) -> String {
    let t0 = Instant::now();
    loop {
        match ask(pid, req) {
            Ok(a) => return a,
            Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                fail(work, format!("tp_container in {pid} never answered: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `stasis restore -D IMG -d --pidfile WORK/NAME.pid --veth-pair
/// eth0=VETH`: the restored init.
/// The outer end of the container's eth0 is made here as `veth`.
fn restore_copy(work: &Work, img: &Path, name: &str, veth: &str) -> Proc {
    let pidfile_p = work.path(&format!("{name}.pid"));
    let log = format!("restore-{name}.log");
    let out = stasis(
        work,
        &[
            "restore",
            "-D",
            img.to_str().expect("utf-8"),
            "-o",
            &log,
            "-v4",
            "-d",
            "--pidfile",
            pidfile_p.to_str().expect("utf-8"),
            "--veth-pair",
            &format!("eth0={veth}"),
        ],
        Duration::from_secs(60),
    );
    if !out.success() {
        fail(work, format!("restore {name} failed: {}", out.stderr));
    }
    Proc::adopt(pidfile(work, &format!("{name}.pid")))
}

/// A copy of the image in WORK/NAME whose host name is `host`.
fn edited_image(work: &Work, name: &str, host: &str) -> PathBuf {
    let to = work.path(name);
    std::fs::create_dir_all(&to).expect("mkdir");
    for e in std::fs::read_dir(work.img()).expect("read img") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy image file");
    }
    let inv = to.join(stasis_image::INVENTORY_FILE);
    let bytes = std::fs::read(&inv).expect("read inventory");
    let mut v: serde_json::Value =
        serde_json::from_slice(&bytes[stasis_image::format::HEADER_LEN..]).expect("json");
    v["uts"]["hostname"] = serde_json::Value::String(host.into());
    let payload = serde_json::to_vec(&v).expect("json");
    let out = stasis_image::format::encode_metadata(stasis_image::FileKind::Inventory, &payload);
    std::fs::write(&inv, out).expect("write inventory");
    to
}

fn ns_ino(pid: i32, ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}")).map_or(0, |m| m.ino())
}

/// The container (see the module comment): checked, dumped, restored
/// twice side by side, each copy checked; an edited image's copy fails.
#[test]
fn cr_container_in_every_namespace_twice() {
    if let Some(why) = missing() {
        eprintln!("SKIP: {why}");
        return;
    }
    let work = Work::new("cr_container_all");
    let t = Duration::from_secs(60);
    let root = rootfs(&work);
    ensure_subreaper();
    let pidfile_arg = work.path("run.pid").to_str().expect("utf-8").to_string();
    let script = stage2(&root);
    let run = [
        "run",
        "-d",
        "--pidfile",
        &pidfile_arg,
        "--user",
        "--",
        UNSHARE,
        "--uts",
        "--ipc",
        "--net",
        "--cgroup",
        "--time",
        "--monotonic",
        "100000",
        "--boottime",
        "200000",
        "--",
        BUSYBOX,
        "sh",
        "-c",
        &script,
    ];
    let out = stasis(&work, &run, t);
    if !out.success() {
        fail(&work, format!("stasis run failed: {}", out.stderr));
    }
    let mut init = Proc::adopt(pidfile(&work, "run.pid"));
    // The container's eth0: a veth whose other end is ours (the shell
    // waits for it).
    let tag = std::process::id() % 100_000;
    let outer = |c: &str| format!("vca{tag}{c}");
    // Once unshare(1) made the namespaces (under load `stasis run -d`
    // returns first: eth0 would be made in ours, "File exists").
    if !stasis_tests::await_other_ns(init.pid, "net") {
        init.kill();
        fail(
            &work,
            "the container's init did not unshare its network namespace",
        );
    }
    let netns = format!("/proc/{}/ns/net", init.pid);
    // unshare(1) makes the namespaces after `stasis run` wrote its PID:
    // until it has, the process is still in our network namespace (whose
    // eth0 would make the link fail with EEXIST).
    let ours = fs::read_link("/proc/self/ns/net").expect("our netns");
    let deadline = Instant::now() + t;
    while fs::read_link(&netns).ok().as_ref() == Some(&ours) {
        if Instant::now() > deadline {
            init.kill();
            fail(&work, "the container never left our network namespace");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = std::process::Command::new("ip")
        .args([
            "link",
            "add",
            &outer("o"),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns,
        ])
        .output()
        .expect("run ip");
    if !out.status.success() {
        init.kill();
        fail(
            &work,
            format!("ip link add: {}", String::from_utf8_lossy(&out.stderr)),
        );
    }
    let before = ask_when_up(&work, init.pid, "check");
    if before != "PASS" {
        init.kill();
        fail(
            &work,
            format!("the container's own check before the dump: {before}"),
        );
    }
    let out = dump(&work, init.pid, &[], t);
    if !out.success() {
        init.kill();
        fail(&work, format!("stasis dump failed: {}", out.stderr));
    }
    step(&work, "waiting for the dumped init", init.wait(t).map(drop));
    let mut a = restore_copy(&work, &work.img(), "a", &outer("a"));
    let mut b = restore_copy(&work, &work.img(), "b", &outer("b"));
    for (c, p) in [("a", a.pid), ("b", b.pid)] {
        // The outer ends, in our namespace, named as asked.
        let here = std::path::Path::new("/sys/class/net").join(outer(c));
        if !here.exists() {
            fail(
                &work,
                format!("copy {c} (pid {p}): no outer end {} here", outer(c)),
            );
        }
    }
    // Two copies at once, each in namespaces of its own.
    for ns in ["user", "pid", "net", "ipc", "uts", "mnt", "cgroup", "time"] {
        let (x, y) = (ns_ino(a.pid, ns), ns_ino(b.pid, ns));
        if x == 0 || x == y {
            fail(
                &work,
                format!("the copies share their {ns} namespace ({x} {y})"),
            );
        }
    }
    let answers = (
        ask_when_up(&work, a.pid, "check"),
        ask_when_up(&work, b.pid, "check"),
    );
    if answers != ("PASS".to_string(), "PASS".to_string()) {
        fail(&work, format!("restored copies: {answers:?}"));
    }
    a.kill();
    b.kill();
    // Negative control: the image edited, the copy sees it.
    let edited = edited_image(&work, "img-edited", "box-x");
    let mut c = restore_copy(&work, &edited, "edited", &outer("e"));
    let answer = ask_when_up(&work, c.pid, "check");
    c.kill();
    assert!(
        answer.starts_with("FAIL: ") && answer.contains("host name") && answer.contains("box-x"),
        "the edited image's copy must fail its check on the host name: {answer}"
    );
}

/// The work directory made a rootfs for tp_runknobs (the program, the
/// libraries it links, /proc, a marker `/knob-root`), owned by the uid
/// that root inside `--user`'s default map is (100000), which writes the
/// protocol files in it. Its path.
fn knob_rootfs(work: &Work) -> String {
    let r = work.dir();
    std::fs::create_dir_all(r.join("proc")).expect("mkdir proc");
    std::fs::write(r.join("knob-root"), "").expect("marker");
    let tp = PathBuf::from(env!("CARGO_BIN_EXE_tp_runknobs"));
    std::fs::copy(&tp, r.join("tp_runknobs")).expect("copy tp_runknobs");
    for lib in libraries(&tp) {
        copy_in(r, &lib);
    }
    std::os::unix::fs::chown(r, Some(100_000), Some(100_000)).expect("chown work dir");
    r.to_str().expect("utf-8").to_string()
}

/// `stasis run --user --net --root WORK` plus `knobs` with tp_runknobs
/// as init (its work directory `/`): ready, or dead with its verdict.
fn run_knobs(work: &Work, knobs: &[&str]) -> Proc {
    let root = knob_rootfs(work);
    ensure_subreaper();
    let pidfile_arg = work.path("run.pid").to_str().expect("utf-8").to_string();
    let mut run = vec!["run", "-d", "--pidfile", &pidfile_arg, "--user", "--net"];
    run.extend_from_slice(knobs);
    run.extend_from_slice(&["--root", &root, "--", "/tp_runknobs", "/"]);
    let out = stasis(work, &run, Duration::from_secs(60));
    if !out.success() {
        fail(work, format!("stasis run failed: {}", out.stderr));
    }
    Proc::adopt(pidfile(work, "run.pid"))
}

/// `stasis run`'s namespace knobs and `--root` (issue 11): tp_runknobs
/// in its own user, UTS, IPC, cgroup, time, network, mount and PID
/// namespaces, in a rootfs, is dumped, killed and restored; the restored
/// copy's namespaces are all new (none ours), and it checks that each is
/// owned by its user namespace, that it runs in the rootfs, and that its
/// host and domain names and its SysV message survived. Negative
/// control: a copy restored from an image with an edited host name fails.
#[test]
fn cr_run_knobs_every_namespace_and_root() {
    let work = Work::new("cr_run_knobs");
    let t = Duration::from_secs(60);
    let mut init = run_knobs(&work, &["--uts", "--ipc", "--cgroup", "--time"]);
    step(&work, "waiting for ready", wait_ready(&work, &mut init, t));
    let out = dump(&work, init.pid, &[], t);
    if !out.success() {
        init.kill();
        fail(&work, format!("stasis dump failed: {}", out.stderr));
    }
    step(&work, "waiting for the dumped init", init.wait(t).map(drop));
    let img = work.img();
    let rpid = work.path("r.pid");
    let args = [
        "restore",
        "-D",
        img.to_str().expect("utf-8"),
        "-d",
        "--pidfile",
        rpid.to_str().expect("utf-8"),
        "-o",
        "restore.log",
        "-v4",
    ];
    let out = stasis(&work, &args, t);
    if !out.success() {
        fail(&work, format!("restore failed: {}", out.stderr));
    }
    let mut r = Proc::adopt(pidfile(&work, "r.pid"));
    for ns in ["user", "uts", "ipc", "cgroup", "time", "net", "mnt", "pid"] {
        let ours = ns_ino(std::process::id() as i32, ns);
        if ns_ino(r.pid, ns) == ours {
            r.kill();
            fail(&work, format!("the restored tree is in our {ns} namespace"));
        }
    }
    finish(&work, &mut r, t).assert_pass(&work);
    // Negative control through the restore: a copy of the image whose
    // host name was edited must fail the restored program's check (go is
    // already released).
    let edited = edited_image(&work, "img-edited", "knob-bad");
    let epid = work.path("e.pid");
    let mut args = args;
    args[2] = edited.to_str().expect("utf-8");
    args[5] = epid.to_str().expect("utf-8");
    let out = stasis(&work, &args, t);
    if !out.success() {
        fail(
            &work,
            format!("restore of the edited image failed: {}", out.stderr),
        );
    }
    let mut e = Proc::adopt(pidfile(&work, "e.pid"));
    let exit = step(&work, "waiting for the edited copy", e.wait(t));
    let result = fs::read_to_string(work.path("result")).unwrap_or_default();
    assert!(
        exit == Exit::Code(1) && result.starts_with("FAIL: ") && result.contains("host name"),
        "the copy with an edited host name did not fail: {exit:?} {result:?}{}",
        work.diagnostics()
    );
}

/// Negative control: the same tree without `--uts` shares our UTS
/// namespace, which is not owned by its user namespace: the program's
/// own check fails, naming it.
#[test]
fn negative_run_knobs_without_uts() {
    let work = Work::new("negative_run_knobs");
    let t = Duration::from_secs(60);
    let mut init = run_knobs(&work, &["--ipc", "--cgroup", "--time"]);
    let _ = init.wait(t);
    let result = std::fs::read_to_string(work.path("result")).unwrap_or_default();
    assert!(
        result.starts_with("FAIL: ") && result.contains("uts namespace"),
        "the tree without its own UTS namespace passed: {result:?}{}",
        work.diagnostics()
    );
}

/// How long the tp_unix rootfs tests wait for each step.
const T: Duration = Duration::from_secs(60);

/// `stasis run --root WORK -- /NAME / --own-stdio ARGS` (its own PID and
/// mount namespaces, pivoted into the work directory: a restore rebuilds
/// that mount namespace): ready, or dead with its verdict.
fn run_in_root(work: &Work, (name, tp): (&str, &str), args: &[&str]) -> Proc {
    let r = work.dir();
    fs::create_dir_all(r.join("proc")).expect("mkdir proc");
    let tp = PathBuf::from(tp);
    fs::copy(&tp, r.join(name)).expect("copy the test program");
    for lib in libraries(&tp) {
        copy_in(r, &lib);
    }
    ensure_subreaper();
    let pidfile_arg = work.path("run.pid").to_str().expect("utf-8").to_string();
    let root = r.to_str().expect("utf-8").to_string();
    let prog = format!("/{name}");
    let mut run = vec!["run", "-d", "--pidfile", &pidfile_arg, "--root", &root];
    run.extend_from_slice(&["--", &prog, "/", "--own-stdio"]);
    run.extend_from_slice(args);
    let out = stasis(work, &run, Duration::from_secs(60));
    if !out.success() {
        fail(work, format!("stasis run failed: {}", out.stderr));
    }
    let mut p = Proc::adopt(pidfile(work, "run.pid"));
    step(work, "waiting for ready", wait_ready(work, &mut p, T));
    p
}

/// [`run_in_root`] for tp_unix.
fn run_unix_in_root(work: &Work, args: &[&str]) -> Proc {
    run_in_root(work, ("tp_unix", env!("CARGO_BIN_EXE_tp_unix")), args)
}

/// Dumps the tree of `init`, restores it (`-d`) and lets it finish.
fn cr_in_root(work: &Work, mut init: Proc) -> Outcome {
    let out = dump(work, init.pid, &[], T);
    if !out.success() {
        init.kill();
        fail(work, format!("stasis dump failed: {}", out.stderr));
    }
    step(work, "waiting for the dumped init", init.wait(T).map(drop));
    let out = restore_detached(work, &[], T);
    if !out.success() {
        fail(work, format!("restore failed: {}", out.stderr));
    }
    let mut r = Proc::adopt(pidfile(work, "pidfile"));
    finish(work, &mut r, T)
}

/// tp_unix `--lone-accepted --path` as PID 1 in a rootfs (`stasis run
/// --root`): the listener made for the connection whose path listener
/// was closed is bound where the pivoted root will find its path (by a
/// thread rooted in the rebuilt tree), the connection made again there
/// with its maker's PID, and the file removed after.
#[test]
fn cr_unix_peercred_lone_accepted_in_rootfs() {
    let work = Work::new("cr_unix_lone_accepted_rootfs");
    let init = run_unix_in_root(&work, &["--lone-accepted", "--path"]);
    cr_in_root(&work, init).assert_pass(&work);
    let left = work.path("socks").join("gone.sock");
    assert!(!left.exists(), "{} left behind", left.display());
}

/// tp_unix `--lone-accepted --path --keep-listener` in a rootfs (`stasis
/// run --root`, whose mount namespace a restore rebuilds): a listener
/// and a datagram socket bound to paths, bound again where the pivoted
/// tree finds them (from a thread rooted in the rebuilt tree), with the
/// connection waiting in the listener and the datagram waiting in the
/// other; clients reach both by their paths after.
#[test]
fn cr_unix_path_sockets_in_rootfs() {
    let work = Work::new("cr_unix_path_sockets_rootfs");
    let init = run_unix_in_root(&work, &["--lone-accepted", "--path", "--keep-listener"]);
    cr_in_root(&work, init).assert_pass(&work);
}

/// Its negative control through the same dump and restore.
#[test]
fn negative_cr_unix_path_sockets_in_rootfs() {
    let work = Work::new("negative_cr_unix_path_sockets_rootfs");
    let init = run_unix_in_root(
        &work,
        &["--lone-accepted", "--path", "--keep-listener", "--corrupt"],
    );
    let out = cr_in_root(&work, init);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// tp_files2 in a rootfs (`stasis run --root`): its deleted file (with
/// a hole, another owner, set times, mapped), deleted directories as
/// working directory and descriptor, made again inside the rebuilt tree
/// (from a thread rooted in it), so their links name what the tree sees
/// and nothing is left in their parents; its /proc files and pidfds.
#[test]
fn cr_deleted_files_in_rootfs() {
    let work = Work::new("cr_deleted_files_rootfs");
    let init = run_in_root(&work, ("tp_files2", env!("CARGO_BIN_EXE_tp_files2")), &[]);
    cr_in_root(&work, init).assert_pass(&work);
}

/// Its negative control through the same dump and restore.
#[test]
fn negative_cr_deleted_files_in_rootfs() {
    let work = Work::new("negative_cr_deleted_files_rootfs");
    let init = run_in_root(
        &work,
        ("tp_files2", env!("CARGO_BIN_EXE_tp_files2")),
        &["--corrupt"],
    );
    let out = cr_in_root(&work, init);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}
