//! Real container engines checkpointing and restoring real containers with
//! stasis as their criu.
//!
//! runc: a busybox container (a rootfs of Debian's busybox-static in a temp
//! directory, `runc spec` edited: no terminal, no user namespace; runc's
//! session keyring `_ses.ID` kept) runs a shell loop that counts in /dev/shm (the
//! container's own tmpfs, saved in the image) and in its rootfs, checking
//! on every round that the file still holds what its memory says (a
//! mismatch is written to /dev/shm/status). `runc --criu STASIS checkpoint`
//! must end it; `runc --criu STASIS restore -d` brings it back under the
//! same and under a new container id, with its stdio pipes handed back
//! through criu's inherit_fd; `runc exec` then reads the counter from inside
//! (it carries on from where it was), the loop's own check (no
//! /dev/shm/status), its PID 1 and the container's mount table (the same
//! mount points, filesystems and options as before). Negative control: a
//! corrupted image is refused and nothing is left running.
//!
//! podman (4.3, with runc as its runtime and a `criu` link to stasis
//! first in PATH, since podman and runc look criu up there): a container
//! from an image `podman import`ed from the same busybox rootfs is
//! checkpointed and restored in place, then checkpointed with `--export`,
//! removed, and restored with `--import` under a new name. Setup it needs
//! here, each for a reason outside stasis: `--network none` (other network
//! setups are another engineer's) and ulimits within ours (root lacks
//! CAP_SYS_RESOURCE). The container keeps runc's session keyring of its
//! own (podman's default), joined anew at restore.
//!
//! crun: Debian's crun is built without CRIU support, so
//! scripts/build-crun.sh builds Debian's crun 1.8.1 source with it,
//! against stasis's libcriu (crates/libcriu: criu's C client library over
//! `stasis swrk`). The runc tests above run again under that crun (`crun
//! checkpoint` / `crun restore -d`, same and new id, --leave-running,
//! --tcp-established, the corrupt image), with libcriu.so.2 found through
//! LD_LIBRARY_PATH and `criu` (a link to stasis) through PATH; each
//! checkpoint checks that the loader opened our libcriu.so.2.
//!
//! Pre-copy: `checkpoint --pre-dump` then `--parent-path ../pre` under
//! runc and crun (FEATURE_CHECK mem_track, PRE_DUMP, DUMP with
//! parent_img), podman's `--pre-checkpoint` then `--with-previous`: the
//! final image holds only the pages written since (`stasis show`), and a
//! restore without its parent image is refused.
//!
//! Tests skip, saying so, only when the engine is missing (.ci/run
//! installs runc and busybox-static and builds crun; under CI=true a
//! missing crun build fails the crun tests).

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's busybox-static: a rootfs needs no libraries for it.
const BUSYBOX: &str = "/bin/busybox";

/// The container's program: count, and check the count against the file.
const LOOP: &str = "i=0; while :; do \
    c=$(cat /dev/shm/c 2>/dev/null || echo 0); \
    if [ \"$c\" != \"$i\" ]; then echo \"FAIL file $c memory $i\" >> /dev/shm/status; fi; \
    i=$((i+1)); echo $i > /dev/shm/c; \
    usleep 50000; done";

/// Why the runc tests cannot run here, if they cannot.
fn runc_missing() -> Option<String> {
    if Command::new("runc").arg("--version").output().is_err() {
        return Some("no runc in PATH (Debian: apt-get install runc)".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!(
            "no {BUSYBOX} (Debian: apt-get install busybox-static)"
        ));
    }
    None
}

/// One output of a command run with a deadline.
struct Ran {
    ok: bool,
    out: String,
}

/// Runs `cmd` (stdin /dev/null), killing it after `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> Ran {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t0.elapsed() > timeout => {
                let _ = child.kill();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("wait for {what}: {e}"),
        }
    }
    let out = child.wait_with_output().expect("output");
    Ran {
        ok: out.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// What crun 1.8.1 reads to refuse a hybrid cgroup layout.
const HYBRID: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

/// The container engine a bundle runs under.
#[derive(Clone, Debug)]
enum Engine {
    /// Debian's runc, given stasis with `--criu`.
    Runc,
    /// crun built with CRIU support (scripts/build-crun.sh) and stasis's
    /// libcriu: it loads `libcriu.so.2` (the build's libcriu.so, through
    /// LD_LIBRARY_PATH), which starts `criu` from PATH (a link to stasis).
    Crun { bin: PathBuf, libcriu: PathBuf },
}

/// A bundle, a private engine state directory, and every container
/// started from it: deleted (`runc delete -f`) with the temp directory on
/// drop.
struct Bundle {
    engine: Engine,
    name: String,
    dir: PathBuf,
    ids: Vec<String>,
    /// Init PIDs seen: once an engine exits, a subreaper test process
    /// (tests of this file are one process) inherits them; reaped on drop.
    pids: std::cell::RefCell<Vec<i32>>,
    /// Our ends of the containers' stdout/stderr pipes (and the runc
    /// processes that handed them over), kept open while they run.
    stdio: Vec<Child>,
}

impl Bundle {
    /// A bundle whose container runs `sh -c PROGRAM` under `engine`.
    fn with_program(engine: &Engine, name: &str, program: &str) -> Bundle {
        let tag = match engine {
            Engine::Runc => "runc",
            Engine::Crun { .. } => "crun",
        };
        let name = &format!("{tag}-{name}");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("containers-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("bundle/rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "data", "etc"] {
            fs::create_dir_all(root.join(d)).expect("rootfs");
        }
        fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
        for a in ["sh", "cat", "echo", "usleep", "ps", "ls", "nc", "netstat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).expect("link");
        }
        fs::create_dir_all(dir.join("state")).expect("state dir");
        if let Engine::Crun { libcriu, .. } = engine {
            // `criu` (stasis) and libcriu.so.2, first in PATH and in
            // LD_LIBRARY_PATH (Debian's criu may be installed too).
            let env = dir.join("env");
            fs::create_dir_all(&env).expect("env dir");
            let mut c = Command::new(stasis_bin());
            c.arg("install-criu-link").arg(&env);
            let r = run(c, T);
            assert!(r.ok, "stasis install-criu-link: {}", r.out);
            std::os::unix::fs::symlink(libcriu, env.join("libcriu.so.2")).expect("link libcriu");
        }
        let b = Bundle {
            engine: engine.clone(),
            name: name.to_string(),
            dir,
            ids: Vec::new(),
            pids: Default::default(),
            stdio: Vec::new(),
        };
        let mut spec = b.cmd(&["spec"]);
        spec.current_dir(b.bundle());
        let r = run(spec, T);
        assert!(r.ok, "{:?} spec: {}", b.engine, r.out);
        let cfg_path = b.bundle().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&cfg_path).expect("config")).expect("json");
        cfg["process"]["terminal"] = false.into();
        cfg["process"]["args"] = serde_json::json!(["/bin/sh", "-c", program]);
        cfg["root"]["readonly"] = false.into();
        fs::write(&cfg_path, cfg.to_string()).expect("write config");
        b
    }

    fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    fn id(&self, suffix: &str) -> String {
        format!("stasis-{}-{}-{suffix}", self.name, std::process::id())
    }

    /// `runc --root STATE --criu STASIS ARGS`, or `crun --root STATE
    /// ARGS` with stasis as `criu` and its libcriu.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match &self.engine {
            Engine::Runc => {
                let mut c = Command::new("runc");
                c.arg("--root").arg(self.dir.join("state"));
                c.arg("--criu").arg(stasis_bin());
                c
            }
            Engine::Crun { bin, .. } => {
                let env = self.dir.join("env");
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut dirs = vec![env.clone()];
                dirs.extend(std::env::split_paths(&path));
                // crun 1.8.1 refuses a hybrid cgroup layout whose cgroup2
                // has a controller (here hugetlb), before anything else,
                // though it uses only the v1 hierarchies of one: each
                // crun runs in a mount namespace of its own where
                // /sys/fs/cgroup/unified/cgroup.controllers reads empty.
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        "f={HYBRID}; grep -qs . $f && mount --bind /dev/null $f; exec \"$0\" \"$@\""
                    ))
                    .arg(bin)
                    .env("PATH", std::env::join_paths(dirs).expect("PATH"))
                    .env("LD_LIBRARY_PATH", &env)
                    .arg("--root")
                    .arg(self.dir.join("state"));
                c
            }
        };
        c.args(args);
        c
    }

    /// `run -d` or `restore -d` with stdout and stderr on a pipe
    /// we hold; returns once runc has.
    fn start(&mut self, id: &str, args: &[&str]) -> Ran {
        self.ids.push(id.to_string());
        let mut c = self.cmd(args);
        c.arg("--bundle").arg(self.bundle()).arg(id);
        // runc's stdout is a pipe whose reader is a `cat` of ours: the
        // container inherits the writer (restore: through inherit_fd).
        let mut cat = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("cat");
        let w = std::os::fd::OwnedFd::from(cat.stdin.take().expect("pipe"));
        let err = w.try_clone().expect("dup");
        let t0 = Instant::now();
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("runc");
        let ok = loop {
            if let Some(st) = child.try_wait().expect("wait runc") {
                break st.success();
            }
            if t0.elapsed() > T {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stdio.push(cat);
        Ran {
            ok,
            out: String::new(),
        }
    }

    fn exec(&self, id: &str, cmd: &[&str]) -> Ran {
        let mut c = self.cmd(&["exec", id, "/bin/busybox"]);
        c.args(cmd);
        run(c, T)
    }

    fn counter(&self, id: &str) -> u64 {
        // (Not there yet right after the start: tried again.)
        read_counter(|| self.exec(id, &["cat", "/dev/shm/c"]).out)
    }

    /// The container's init PID as runc knows it, if it runs.
    fn state(&self, id: &str) -> Option<(String, i32)> {
        let r = run(self.cmd(&["state", id]), T);
        if !r.ok {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&r.out).ok()?;
        if let Some(p) = v["pid"].as_i64().filter(|p| *p > 0) {
            self.pids.borrow_mut().push(p as i32);
        }
        Some((
            v["status"].as_str().unwrap_or("").to_string(),
            v["pid"].as_i64().unwrap_or(0) as i32,
        ))
    }

    /// Mount points, filesystem types and per-mount options inside the
    /// container, but for runc's masked files (bound from /dev/null of the
    /// container's /dev at the start, from the host's at a restore: runc's
    /// choice, through ext_mnt).
    fn mounts(&self, id: &str) -> Vec<String> {
        let r = self.exec(id, &["cat", "/proc/1/mountinfo"]);
        assert!(r.ok, "mountinfo: {}", r.out);
        let mut v: Vec<String> = r
            .out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let dash = f.iter().position(|x| *x == "-")?;
                let at = f.get(4)?;
                if ["/proc/keys", "/proc/timer_list"].contains(at) {
                    return None;
                }
                Some(format!(
                    "{at} {} {} {}",
                    f.get(dash + 1)?,
                    f.get(5)?,
                    f.get(dash + 3)?
                ))
            })
            .collect();
        v.sort();
        v
    }

    /// `checkpoint --image-path IMG --work-path IMG.work EXTRA ID`.
    fn checkpoint_cmd(&self, id: &str, img: &Path, extra: &[&str]) -> Command {
        // (crun takes only an existing work directory; runc makes it.)
        let _ = fs::create_dir_all(img.with_extension("work"));
        let mut c = self.cmd(&["checkpoint", "--image-path"]);
        c.arg(img)
            .arg("--work-path")
            .arg(img.with_extension("work"))
            .args(extra)
            .arg(id);
        c
    }

    fn checkpoint(&self, id: &str, img: &Path, extra: &[&str]) -> Ran {
        run(self.checkpoint_cmd(id, img, extra), T)
    }

    /// [`Self::checkpoint`], which must succeed; crun must have loaded
    /// stasis's libcriu (the dynamic loader names the file it opened).
    fn checkpoint_ok(&self, id: &str, img: &Path, extra: &[&str]) {
        let mut c = self.checkpoint_cmd(id, img, extra);
        if matches!(self.engine, Engine::Crun { .. }) {
            c.env("LD_DEBUG", "files");
        }
        let r = run(c, T);
        if matches!(self.engine, Engine::Crun { .. }) {
            let ours = format!(
                "calling init: {}",
                self.dir.join("env/libcriu.so.2").display()
            );
            assert!(
                r.out.contains(&ours),
                "crun did not load stasis's libcriu.so.2:\n{}",
                r.out
            );
        }
        assert!(
            r.ok,
            "{:?} checkpoint {extra:?}: {}\n{}",
            self.engine,
            r.out,
            self.log(img, "dump.log")
        );
    }

    /// `runc restore -d` of `id` from `img`.
    fn restore(&mut self, id: &str, img: &Path, extra: &[&str]) -> Ran {
        let mut args = restore_args(img);
        args.extend(extra.iter().map(|a| a.to_string()));
        self.start(id, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn log(&self, img: &Path, name: &str) -> String {
        let text = fs::read_to_string(img.with_extension("work").join(name)).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("ERROR") || l.starts_with("Error"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = run(self.cmd(&["delete", "-f", id]), T);
        }
        for c in &mut self.stdio {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &p in self.pids.borrow().iter() {
            gone(p);
        }
        if matches!(self.engine, Engine::Crun { .. }) {
            // The cgroups stasis remade for a container crun then restored
            // under a new id (crun moves it to that id's), once their
            // processes are gone.
            for id in &self.ids {
                for h in fs::read_dir("/sys/fs/cgroup")
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    rmdir_cgroup(&h.path().join(id));
                }
            }
        }
        if std::env::var_os("KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

const T: Duration = Duration::from_secs(60);

/// The counter as `read` returns it; the loop rewrites the file (`echo >`
/// truncates first) and writes it first only after its first round, so an
/// empty or failed read is tried again.
fn read_counter(mut read: impl FnMut() -> String) -> u64 {
    for _ in 0..50 {
        if let Ok(n) = read().trim().parse() {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "the counter file stays missing, empty or garbled: {:?}",
        read()
    );
}

/// `restore -d` from `img`, logging to restore.log beside its dump.log.
fn restore_args(img: &Path) -> Vec<String> {
    let work = img.with_extension("work");
    ["restore", "-d", "--image-path"]
        .iter()
        .map(|a| a.to_string())
        .chain([
            img.to_string_lossy().into_owned(),
            "--work-path".into(),
            work.to_string_lossy().into_owned(),
        ])
        .collect()
}

/// A started container of a new bundle running `program` under `engine`
/// (None: the test skipped, saying why: the engine is missing).
fn started(
    engine: Option<Engine>,
    test: &str,
    name: &str,
    program: &str,
) -> Option<(Bundle, String)> {
    let engine = engine?;
    if let Some(why) = runc_missing().filter(|_| matches!(engine, Engine::Runc)) {
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    let mut b = Bundle::with_program(&engine, name, program);
    let a = b.id("a");
    assert!(b.start(&a, &["run", "-d"]).ok, "{engine:?} run");
    Some((b, a))
}

/// crun built with CRIU support against stasis's libcriu, or None (the
/// test skipped, saying so) when the build is absent: `STASIS_CRUN`
/// (.ci/run exports it) or scripts/build-crun.sh's default place, and
/// target/debug/libcriu.so (`cargo build -p stasis-libcriu`). Under CI
/// (CI=true) a missing build fails the test instead: CI builds it.
fn crun(test: &str) -> Option<Engine> {
    let debug = stasis_bin().parent().expect("target dir").to_path_buf();
    let bin = std::env::var_os("STASIS_CRUN")
        .map_or_else(|| debug.join("../crun/crun-1.8.1/crun"), PathBuf::from);
    let libcriu = debug.join("libcriu.so");
    let missing = [&bin, &libcriu]
        .into_iter()
        .find(|p| !p.exists())
        .map(|p| {
            format!(
                "{} missing (scripts/build-crun.sh; cargo build -p stasis-libcriu)",
                p.display()
            )
        })
        .or_else(|| {
            (!Path::new(BUSYBOX).exists())
                .then(|| format!("no {BUSYBOX} (Debian: apt-get install busybox-static)"))
        });
    match missing {
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {why}, under CI, which builds it")
        }
        Some(why) => {
            eprintln!("SKIP {test}: {why}");
            None
        }
        None => Some(Engine::Crun { bin, libcriu }),
    }
}

/// Waits (up to T) for `pid` to be gone, reaping it if it is ours (a
/// container's init whose engine exited, with this process a subreaper).
fn gone(pid: i32) -> bool {
    let t0 = Instant::now();
    while pid_exists(pid) {
        if t0.elapsed() > T {
            return false;
        }
        // SAFETY: WNOHANG wait for one PID, ours or not.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) };
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits until what `read` returns passes `past`; returns it.
fn wait_past(what: &str, past: u64, mut read: impl FnMut() -> u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let c = read();
        if c > past {
            return c;
        }
        assert!(t0.elapsed() < T, "{what} stays at {c}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the counter of `id` passes `past`.
fn counts_past(b: &Bundle, id: &str, past: u64) -> u64 {
    wait_past(&format!("{id}: the counter"), past, || b.counter(id))
}

fn no_failure(b: &Bundle, id: &str) {
    let r = b.exec(id, &["cat", "/dev/shm/status"]);
    assert!(
        !r.ok,
        "{id}: the container's own check failed: {}",
        r.out.trim()
    );
}

/// A restored container runs as PID 1 of its namespace with the count
/// it had, and goes on counting.
fn check_restored(b: &Bundle, id: &str, at_checkpoint: u64, mounts: &[String]) {
    let (status, pid) = b.state(id).expect("restored container state");
    assert_eq!(status, "running", "{id}");
    assert!(pid_exists(pid), "{id}: init {pid} is gone");
    let first = b.counter(id);
    assert!(
        first >= at_checkpoint,
        "{id}: restored at {first}, below {at_checkpoint} at the checkpoint"
    );
    counts_past(b, id, first);
    no_failure(b, id);
    let ps = b.exec(id, &["ps"]);
    assert!(
        ps.out
            .lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("/dev/shm/c")),
        "{id}: the loop is not PID 1 of its namespace:\n{}",
        ps.out
    );
    assert_eq!(b.mounts(id), mounts, "{id}: mount table differs");
    // runc binds each cgroup v1 hierarchy's cgroup of the container (named
    // by its id) at /sys/fs/cgroup/CONTROLLER: its own again, not the
    // whole hierarchy (runc names the hierarchy's root at a restore).
    // crun names its own cgroup (the test's) as the source instead, and
    // makes the container's only after the restore, telling criu nothing
    // of it: stasis binds the cgroup the tree was checkpointed in (the
    // first id's, remade) where crun's own is above it, else crun's own,
    // as named (criu would bind crun's own in every hierarchy).
    let info = b.exec(id, &["cat", "/proc/1/mountinfo"]).out;
    let own = fs::read_to_string("/proc/self/cgroup").expect("our cgroups");
    for l in info.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(ctrl) = f
            .get(4)
            .and_then(|m| m.strip_prefix("/sys/fs/cgroup/"))
            .filter(|_| l.contains(" - cgroup "))
        else {
            continue;
        };
        let want = match b.engine {
            Engine::Runc => format!("/{id}"),
            Engine::Crun { .. } => {
                let saved = format!("/{}", b.id("a"));
                let crun_own = own
                    .lines()
                    .filter_map(|c| {
                        let mut f = c.splitn(3, ':').skip(1);
                        f.next().zip(f.next())
                    })
                    .find(|(cs, _)| {
                        cs.split(',')
                            .any(|c| c == ctrl || c == format!("name={ctrl}"))
                    })
                    .map_or("/", |(_, p)| p);
                if saved.starts_with(crun_own) {
                    saved
                } else {
                    crun_own.to_string()
                }
            }
        };
        assert!(
            f[3].ends_with(&want),
            "{id}: {} shows cgroup {} of its hierarchy, not {want}",
            f[4],
            f[3]
        );
    }
}

/// `#[test]`s running one test body under runc and under crun.
macro_rules! on_both_engines {
    ($($body:ident: $runc:ident, $crun:ident;)*) => {$(
        #[test]
        fn $runc() {
            $body(Some(Engine::Runc), stringify!($runc));
        }

        #[test]
        fn $crun() {
            $body(crun(stringify!($crun)), stringify!($crun));
        }
    )*};
}

on_both_engines! {
    checkpoint_restore_busybox: runc_checkpoint_restore_busybox, crun_checkpoint_restore_busybox;
    restore_refuses_corrupt_image: runc_restore_refuses_corrupt_image, crun_restore_refuses_corrupt_image;
    leave_running_then_restore_copy: runc_leave_running_then_restore_copy, crun_leave_running_then_restore_copy;
    tcp_established_inside_container: runc_tcp_established_inside_container, crun_tcp_established_inside_container;
    pre_dump_then_checkpoint: runc_pre_dump_then_checkpoint, crun_pre_dump_then_checkpoint;
}

fn checkpoint_restore_busybox(engine: Option<Engine>, test: &str) {
    let Some((mut b, a)) = started(engine, test, "cr", LOOP) else {
        return;
    };
    counts_past(&b, &a, 5);
    no_failure(&b, &a);
    let mounts = b.mounts(&a);
    // Read before the checkpoint: the count it saved is at least this.
    let saved = b.counter(&a);
    let (_, pid) = b.state(&a).expect("state");
    let img = b.dir.join("img");
    b.checkpoint_ok(&a, &img, &[]);
    assert!(
        b.state(&a).is_none(),
        "{a}: still known to runc after the checkpoint"
    );
    assert!(gone(pid), "{a}: init {pid} survived the checkpoint");

    // The same id, then (that one deleted) a new one from the same image.
    let r = b.restore(&a, &img, &[]);
    assert!(r.ok, "runc restore: {}", b.log(&img, "restore.log"));
    check_restored(&b, &a, saved, &mounts);
    assert!(run(b.cmd(&["delete", "-f", &a]), T).ok);
    let c = b.id("b");
    let r = b.restore(&c, &img, &[]);
    assert!(r.ok, "runc restore as {c}: {}", b.log(&img, "restore.log"));
    check_restored(&b, &c, saved, &mounts);
}

fn restore_refuses_corrupt_image(engine: Option<Engine>, test: &str) {
    let Some((mut b, a)) = started(engine, test, "corrupt", LOOP) else {
        return;
    };
    counts_past(&b, &a, 2);
    let img = b.dir.join("img");
    b.checkpoint_ok(&a, &img, &[]);
    // One byte of the inventory flipped: its checksum no longer matches.
    let inv = img.join("inventory.img");
    let mut bytes = fs::read(&inv).expect("inventory");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    fs::write(&inv, bytes).expect("write");
    let r = b.restore(&a, &img, &[]);
    assert!(!r.ok, "a corrupted image was restored");
    let log = b.log(&img, "restore.log");
    assert!(
        log.contains("checksum") || log.contains("inventory"),
        "the refusal does not name the damage: {log:?}"
    );
    match b.state(&a) {
        None => {}
        Some((status, pid)) => assert!(
            status != "running" && !pid_exists(pid),
            "{a}: {status} with init {pid} after a refused restore"
        ),
    }
}

fn leave_running_then_restore_copy(engine: Option<Engine>, test: &str) {
    let Some((mut b, a)) = started(engine, test, "leave", LOOP) else {
        return;
    };
    let before = counts_past(&b, &a, 3);
    let mounts = b.mounts(&a);
    let img = b.dir.join("img");
    b.checkpoint_ok(&a, &img, &["--leave-running"]);
    // Still running and counting, its check intact.
    counts_past(&b, &a, before);
    no_failure(&b, &a);
    // Stopped, then restored from the image taken while it ran.
    assert!(run(b.cmd(&["delete", "-f", &a]), T).ok);
    let r = b.restore(&a, &img, &[]);
    assert!(r.ok, "runc restore: {}", b.log(&img, "restore.log"));
    check_restored(&b, &a, before, &mounts);
}

/// [`LOOP`] after writing 4 MB of the shell's heap once (977 pages a
/// final dump after a pre-dump takes from the parent).
fn big_loop() -> String {
    format!("big=$(busybox head -c 4000000 /dev/zero | busybox tr '\\0' x); {LOOP}")
}

/// Pages an image holds itself and pages it takes from its parent image
/// (`stasis show`).
fn own_and_parent(img: &Path) -> (u64, u64) {
    // (Its output outgrows a pipe: read while it runs.)
    let o = Command::new(stasis_bin())
        .arg("show")
        .arg(img)
        .stdin(Stdio::null())
        .output()
        .expect("stasis show");
    assert!(
        o.status.success(),
        "stasis show {}: {}",
        img.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("show: JSON");
    own_and_parent_pages(&v)
}

/// `checkpoint --pre-dump --image-path PRE` (the engine asks FEATURE_CHECK
/// mem_track, then sends PRE_DUMP with track_mem): the container runs on;
/// then `checkpoint --parent-path ../PRE --image-path IMG`: the final
/// image holds only the pages written since the pre-dump (the loop's few)
/// and takes the rest from PRE (among them 4 MB the shell wrote once). Negative control: with PRE moved away, the restore is
/// refused naming the parent and nothing runs; put back, the container is
/// restored and carries on from its count.
fn pre_dump_then_checkpoint(engine: Option<Engine>, test: &str) {
    let Some((mut b, a)) = started(engine, test, "predump", &big_loop()) else {
        return;
    };
    let before = counts_past(&b, &a, 3);
    let mounts = b.mounts(&a);
    let pre = b.dir.join("pre");
    b.checkpoint_ok(&a, &pre, &["--pre-dump"]);
    let (status, _) = b.state(&a).expect("state after the pre-dump");
    assert_eq!(status, "running", "{a} after the pre-dump");
    counts_past(&b, &a, before);
    no_failure(&b, &a);
    let saved = b.counter(&a);
    let img = b.dir.join("img");
    b.checkpoint_ok(&a, &img, &["--parent-path", "../pre"]);
    assert!(
        b.state(&a).is_none(),
        "{a}: still known after the checkpoint"
    );
    let (pre_own, _) = own_and_parent(&pre);
    let (own, parent) = own_and_parent(&img);
    eprintln!("{test}: pre-dump {pre_own} pages; final {own} own, {parent} in the parent");
    assert!(
        pre_own >= 977 && parent >= 977 && own * 8 < pre_own,
        "final image: {own} pages of its own, {parent} in the parent (pre-dump: {pre_own})"
    );

    let away = b.dir.join("pre.away");
    fs::rename(&pre, &away).expect("move the parent away");
    let r = b.restore(&a, &img, &[]);
    assert!(!r.ok, "restored without its parent image");
    let log = b.log(&img, "restore.log");
    assert!(
        log.contains("parent"),
        "the refusal does not name the parent: {log:?}"
    );
    if let Some((status, pid)) = b.state(&a) {
        assert!(
            status != "running" && !pid_exists(pid),
            "{a}: {status} with init {pid} after a refused restore"
        );
    }
    let _ = run(b.cmd(&["delete", "-f", &a]), T);
    fs::rename(&away, &pre).expect("put the parent back");
    let r = b.restore(&a, &img, &[]);
    assert!(r.ok, "restore of the chain: {}", b.log(&img, "restore.log"));
    check_restored(&b, &a, saved, &mounts);
}

/// A TCP connection inside the container (its own network namespace,
/// lo only): a client sends a number every 50 ms, a server answers each
/// with `got-N`, the client appends the answers to /dev/shm/replies.
const TCP_LOOP: &str = "nc -l -p 5000 -e sh -c 'while read l; do echo got-$l; done' & \
    usleep 300000; i=0; \
    (while :; do i=$((i+1)); echo $i; usleep 50000; done) | nc 127.0.0.1 5000 > /dev/shm/replies";

/// The answers so far: they must be got-1, got-2, ... without a gap.
fn replies(b: &Bundle, id: &str) -> u64 {
    let r = b.exec(id, &["cat", "/dev/shm/replies"]);
    if !r.ok {
        return 0; // not made yet, right after the start
    }
    let mut n = 0;
    for l in r.out.lines() {
        // The last line may be half written.
        if l.is_empty() {
            continue;
        }
        match l.strip_prefix("got-").and_then(|v| v.parse::<u64>().ok()) {
            Some(v) if v == n + 1 => n = v,
            _ if l == r.out.lines().last().unwrap_or("") => break,
            _ => panic!("{id}: answer {l:?} after got-{n}: the stream lost or changed data"),
        }
    }
    n
}

fn replies_past(b: &Bundle, id: &str, past: u64) -> u64 {
    wait_past(&format!("{id}: the connection"), past, || replies(b, id))
}

fn tcp_established_inside_container(engine: Option<Engine>, test: &str) {
    let Some((mut b, a)) = started(engine, test, "tcp", TCP_LOOP) else {
        return;
    };
    let before = replies_past(&b, &a, 3);
    let img = b.dir.join("img");
    // Without --tcp-established the connection is refused by name.
    let r = b.checkpoint(&a, &img, &[]);
    assert!(
        !r.ok,
        "a TCP connection was dumped without --tcp-established"
    );
    let _ = fs::remove_dir_all(&img);
    replies_past(&b, &a, before);
    b.checkpoint_ok(&a, &img, &["--tcp-established"]);
    let r = b.restore(&a, &img, &["--tcp-established"]);
    assert!(r.ok, "runc restore: {}", b.log(&img, "restore.log"));
    // The same stream goes on: more answers, none lost or changed.
    let now = replies(&b, &a);
    replies_past(&b, &a, now);
    let ns = b.exec(&a, &["netstat", "-tn"]);
    assert!(ns.out.contains("ESTABLISHED"), "{}", ns.out);
}

/// podman with runc, a private containers.conf, and `criu` = stasis in
/// PATH; removes its containers and image on drop.
struct Podman {
    dir: PathBuf,
    image: String,
    names: Vec<String>,
}

/// Podman values alive in this test process, and whether podman's
/// `libpod_parent` cgroups did not exist before the first of them: then
/// the last one to go removes them (when empty). The tests run in
/// parallel, so one that ends may leave them to another still running.
static LIBPOD: std::sync::Mutex<(usize, bool)> = std::sync::Mutex::new((0, false));

/// Removes cgroup `c` and the cgroups below it (conmon's), deepest first;
/// rmdir only takes an empty cgroup, so one still in use stays.
fn rmdir_cgroup(c: &Path) {
    if let Ok(d) = fs::read_dir(c) {
        for e in d.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_cgroup(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(c);
}

/// podman's parent cgroup of its containers, in every hierarchy.
fn libpod_cgroups() -> Vec<PathBuf> {
    fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("libpod_parent"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

impl Podman {
    /// `tag` keeps the directory and image of each test apart (the tests
    /// of this file run in one process, in parallel).
    fn new(tag: &str) -> Result<Podman, String> {
        if Command::new("podman").arg("--version").output().is_err() {
            return Err("no podman in PATH (Debian: apt-get install podman)".into());
        }
        if let Some(why) = runc_missing() {
            return Err(why);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("containers-podman-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "data", "etc"] {
            fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
        }
        fs::copy(BUSYBOX, root.join("bin/busybox")).map_err(|e| e.to_string())?;
        for a in ["sh", "cat", "echo", "usleep", "ps"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a))
                .map_err(|e| e.to_string())?;
        }
        fs::create_dir_all(dir.join("criu")).map_err(|e| e.to_string())?;
        let r = run(
            {
                let mut c = Command::new(stasis_bin());
                c.arg("install-criu-link").arg(dir.join("criu"));
                c
            },
            T,
        );
        if !r.ok {
            return Err(format!("stasis install-criu-link: {}", r.out));
        }
        fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nproc=1024:1024\", \"nofile=1024:1024\"]\n",
        )
        .map_err(|e| e.to_string())?;
        let tar = dir.join("rootfs.tar");
        let r = run(
            {
                let mut c = Command::new("tar");
                c.arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".");
                c
            },
            T,
        );
        if !r.ok {
            return Err(format!("tar: {}", r.out));
        }
        let p = Podman {
            image: format!("localhost/stasis-busybox-{tag}:{}", std::process::id()),
            dir,
            names: Vec::new(),
        };
        {
            let mut live = LIBPOD.lock().unwrap_or_else(|e| e.into_inner());
            if live.0 == 0 {
                live.1 = libpod_cgroups().is_empty();
            }
            live.0 += 1;
        }
        let mut c = p.podman(&["import"]);
        c.arg(&tar).arg(&p.image);
        let r = run(c, Duration::from_secs(120));
        if !r.ok {
            return Err(format!("podman import: {}", r.out));
        }
        Ok(p)
    }

    fn podman(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.dir.join("criu")];
        dirs.extend(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(dirs).expect("PATH"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = run(self.podman(args), Duration::from_secs(120));
        if !r.ok {
            // runc names criu's log; its errors say what stasis refused.
            let log = r
                .out
                .split("log file: ")
                .nth(1)
                // The path ends where podman's quoting does (`"`, `\n`).
                .and_then(|l| {
                    l.split(|c: char| c.is_whitespace() || c == '"' || c == '\\')
                        .next()
                })
                .and_then(|f| fs::read_to_string(f).ok())
                .unwrap_or_default();
            let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
            panic!(
                "podman {}: {}
{}",
                args.join(" "),
                r.out,
                errors.join("\n")
            );
        }
        r.out
    }

    /// `podman run -d` of container `name` (runc, no network) running
    /// `sh -c PROGRAM` in the imported busybox image.
    fn run_loop(&self, name: &str, program: &str) {
        let image = self.image.clone();
        self.ok(&[
            "--runtime",
            "runc",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            &image,
            "/bin/sh",
            "-c",
            program,
        ]);
    }

    fn counter(&self, name: &str) -> u64 {
        read_counter(|| run(self.podman(&["exec", name, "cat", "/dev/shm/c"]), T).out)
    }

    fn counts_past(&self, name: &str, past: u64) -> u64 {
        wait_past(&format!("{name}: the counter"), past, || self.counter(name))
    }

    /// Running, at or past `at`, counting on, its own check intact, the
    /// loop PID 1.
    fn check_running(&self, name: &str, at: u64) {
        let first = self.counter(name);
        assert!(first >= at, "{name}: at {first}, below {at}");
        self.counts_past(name, first);
        let r = run(self.podman(&["exec", name, "cat", "/dev/shm/status"]), T);
        assert!(!r.ok, "{name}: the container's own check failed: {}", r.out);
        let ps = self.ok(&["exec", name, "ps"]);
        assert!(
            ps.lines()
                .any(|l| l.trim_start().starts_with("1 ") && l.contains("/dev/shm/c")),
            "{name}: the loop is not PID 1:\n{ps}"
        );
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = run(self.podman(&["rm", "-f", "-t", "0", n]), T);
        }
        let _ = run(self.podman(&["rmi", "-f", &self.image]), T);
        let _ = fs::remove_dir_all(&self.dir);
        let mut live = LIBPOD.lock().unwrap_or_else(|e| e.into_inner());
        live.0 -= 1;
        if live.0 == 0 && live.1 {
            for c in libpod_cgroups() {
                rmdir_cgroup(&c);
            }
        }
    }
}

/// podman's pre-copy: `container checkpoint --pre-checkpoint` (runc's
/// `--pre-dump`: the container runs on), then `--with-previous` (runc's
/// `--parent-path` to the pre-checkpoint) and `restore`: the container
/// carries on from its count.
#[test]
fn podman_pre_checkpoint_with_previous() {
    let mut p = match Podman::new("pre") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIP podman_pre_checkpoint_with_previous: {why}");
            return;
        }
    };
    let a = format!("stasis-pmpre-{}-a", std::process::id());
    p.names.push(a.clone());
    p.run_loop(&a, &big_loop());
    let before = p.counts_past(&a, 3);
    p.ok(&["container", "checkpoint", "--pre-checkpoint", &a]);
    let st = p.ok(&["inspect", "-f", "{{.State.Status}}", &a]);
    assert_eq!(st.trim(), "running", "{a} after the pre-checkpoint");
    p.counts_past(&a, before);
    let saved = p.counter(&a);
    p.ok(&["container", "checkpoint", "--with-previous", &a]);
    let st = p.ok(&["inspect", "-f", "{{.State.Status}}", &a]);
    assert_eq!(st.trim(), "exited", "{a} after the checkpoint");
    // podman keeps both images beside the container's state: the final one
    // takes the pages not written since from the pre-checkpoint's.
    let state = PathBuf::from(p.ok(&["inspect", "-f", "{{.StaticDir}}", &a]).trim());
    let (pre_own, _) = own_and_parent(&state.join("pre-checkpoint"));
    let (own, parent) = own_and_parent(&state.join("checkpoint"));
    eprintln!("podman: pre-checkpoint {pre_own} pages; final {own} own, {parent} in the parent");
    assert!(
        pre_own >= 977 && parent >= 977 && own * 8 < pre_own,
        "final image: {own} pages of its own, {parent} in the parent (pre: {pre_own})"
    );
    p.ok(&["container", "restore", &a]);
    p.check_running(&a, saved);
}

#[test]
fn podman_checkpoint_restore_export_import() {
    let mut p = match Podman::new("export") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIP podman_checkpoint_restore_export_import: {why}");
            return;
        }
    };
    let a = format!("stasis-pm-{}-a", std::process::id());
    let b = format!("stasis-pm-{}-b", std::process::id());
    p.names.extend([a.clone(), b.clone()]);
    p.run_loop(&a, LOOP);
    let saved = p.counts_past(&a, 3);
    // In place: checkpoint (the container stops), restore.
    p.ok(&["container", "checkpoint", &a]);
    let st = p.ok(&["inspect", "-f", "{{.State.Status}}", &a]);
    assert_eq!(st.trim(), "exited", "{a} after the checkpoint");
    p.ok(&["container", "restore", &a]);
    p.check_running(&a, saved);
    // Exported to a tarball, the container removed, imported as another.
    let tar = p.dir.join("checkpoint.tar.gz");
    let before = p.counter(&a);
    p.ok(&[
        "container",
        "checkpoint",
        "--export",
        tar.to_str().unwrap(),
        &a,
    ]);
    p.ok(&["rm", "-f", "-t", "0", &a]);
    p.ok(&[
        "container",
        "restore",
        "--import",
        tar.to_str().unwrap(),
        "--name",
        &b,
    ]);
    p.check_running(&b, before);
}

/// runc's stdio without runc: a shell writing to a pipe whose reader is
/// ours is dumped; a restore without `--inherit-fd` is refused naming the
/// pipe, and leaves nothing; with `--inherit-fd fd[1]:pipe:[INO]` the
/// restored shell writes into the pipe we hand over.
#[test]
fn external_pipe_needs_inherit_fd() {
    use std::io::Read;
    if !Path::new(BUSYBOX).exists() {
        eprintln!("SKIP external_pipe_needs_inherit_fd: no {BUSYBOX}");
        return;
    }
    ensure_subreaper();
    let work = Work::new("inherit_fd");
    let mut sh = Command::new(BUSYBOX);
    use std::os::unix::process::CommandExt;
    // Only its stdio: not the test runner's other descriptors.
    // SAFETY: close_range is async-signal-safe and touches only the child's table.
    unsafe {
        sh.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut sh = sh
        .args([
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo line-$i; usleep 50000; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("shell");
    let pid = sh.id() as i32;
    let mut first = sh.stdout.take().expect("pipe");
    let mut buf = [0u8; 64];
    assert!(
        first.read(&mut buf).expect("read") > 0,
        "no output before the dump"
    );
    let link = fs::read_link(format!("/proc/{pid}/fd/1")).expect("fd 1");
    let key = link.to_string_lossy().into_owned();
    assert!(key.starts_with("pipe:["), "{key}");
    let img = work.img();
    let out = stasis(
        &work,
        &["dump", "-t", &pid.to_string(), "-D", img.to_str().unwrap()],
        T,
    );
    assert!(out.success(), "dump: {}", out.stderr);
    drop(first);
    // The tree killed, its PIDs free again (its usleep children reaped).
    check_gone(&work, &mut Proc::adopt(pid));
    drop(sh);
    // Refused without the pipe, nothing left behind.
    let out = stasis(&work, &["restore", "-D", img.to_str().unwrap(), "-d"], T);
    assert!(
        !out.success() && out.stderr.contains(&key) && out.stderr.contains("--inherit-fd"),
        "restore without --inherit-fd: {}",
        out.stderr
    );
    assert!(!pid_exists(pid), "a refused restore left {pid}");
    // With our new pipe as its stdout.
    let (r, w) = {
        let mut fds = [0i32; 2];
        // SAFETY: a valid out array of two ints.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: two fresh descriptors owned by nobody else.
        unsafe {
            (
                fs::File::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        }
    };
    let st = Command::new(stasis_bin())
        .args(["restore", "-D", img.to_str().unwrap(), "-d"])
        .arg(format!("--inherit-fd=fd[1]:{key}"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .expect("stasis restore");
    let mut restored = Proc::adopt(pid);
    assert!(
        st.status.success(),
        "restore with --inherit-fd: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut text = String::new();
    let mut r = r;
    while !text.contains('\n') || text.lines().count() < 3 {
        let n = r.read(&mut buf).expect("read the inherited pipe");
        assert!(n > 0, "the restored shell closed the pipe");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        text.lines().all(|l| l.starts_with("line-") || l.is_empty()),
        "{text}"
    );
    restored.kill();
    // Its children (a usleep at most) end by themselves; reap ours.
    for p in show(&work, &img)["inventory"]["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["pid"].as_i64())
    {
        gone(p as i32);
    }
}

/// runc passes criu's `--freeze-cgroup`: a process `runc exec -d` left in
/// the container's cgroup, whose parent is outside the tree, would run on
/// while the tree is dumped, so the checkpoint is refused naming it, and
/// the container runs on.
#[test]
fn runc_checkpoint_refuses_exec_process() {
    let Some((b, a)) = started(
        Some(Engine::Runc),
        "runc_checkpoint_refuses_exec_process",
        "exec",
        LOOP,
    ) else {
        return;
    };
    counts_past(&b, &a, 2);
    // (Its stdio not on our pipes: it outlives the call.)
    let st = b
        .cmd(&["exec", "-d", &a, "/bin/busybox", "sleep", "60"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("runc exec -d");
    assert!(st.success(), "runc exec -d: {st}");
    let img = b.dir.join("img");
    let r = b.checkpoint(&a, &img, &[]);
    assert!(!r.ok, "the checkpoint was not refused");
    let log = b.log(&img, "dump.log");
    assert!(
        log.contains("is in the cgroup but not in the tree"),
        "the refusal does not name the process: {log:?}"
    );
    let now = b.counter(&a);
    counts_past(&b, &a, now + 2);
}
