//! End-to-end harness: run a test program, checkpoint it with the `stasis`
//! binary, check it is gone, restore it and let it verify itself.
//!
//! The protocol with the programs is described in `stasis_tests` (src/lib.rs).
//! Every test gets its own work directory under the system temp directory,
//! removed when the test ends (set `STASIS_TEST_KEEP=1` to keep it), and only
//! ever waits for or kills PIDs it started itself, so tests run in parallel.
//!
//! The `stasis` binary is `STASIS_BIN` if set, else `stasis` next to the
//! `deps/` directory holding this test binary (`target/debug/stasis`): build
//! it first with `cargo build -p stasis`.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// A test program.
#[derive(Clone, Copy, Debug)]
pub enum Program {
    /// A binary of this crate (`src/bin/NAME.rs`).
    Bin(&'static str),
    /// `scripts/tp_python.py` under the real python3 executable.
    Python,
    /// `scripts/tp_shell.sh` under bash.
    Shell,
    /// `scripts/TpJava.java` under the JVM (`java` in PATH, source launcher).
    Java,
    /// `go/tp_go.go` built with the `go` toolchain (see [`go_program`]).
    Go,
}

impl Program {
    fn argv(self, work: &Path, args: &[&str]) -> (PathBuf, Vec<OsString>) {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
        let (exe, mut argv): (PathBuf, Vec<OsString>) = match self {
            Program::Bin(name) => (bin_path(name), vec![]),
            Program::Python => (
                python(),
                vec!["-I".into(), scripts.join("tp_python.py").into()],
            ),
            Program::Shell => ("/bin/bash".into(), vec![scripts.join("tp_shell.sh").into()]),
            Program::Java => ("java".into(), vec![scripts.join("TpJava.java").into()]),
            Program::Go => (
                go_program().unwrap_or_else(|e| panic!("tp_go: {e}")),
                vec![],
            ),
        };
        argv.push(work.as_os_str().to_owned());
        argv.extend(args.iter().map(OsString::from));
        (exe, argv)
    }
}

pub fn bin_path(name: &str) -> PathBuf {
    let p = match name {
        "tp_memory" => env!("CARGO_BIN_EXE_tp_memory"),
        "tp_sysvipc" => env!("CARGO_BIN_EXE_tp_sysvipc"),
        "tp_regs" => env!("CARGO_BIN_EXE_tp_regs"),
        "tp_amx" => env!("CARGO_BIN_EXE_tp_amx"),
        "tp_files" => env!("CARGO_BIN_EXE_tp_files"),
        "tp_signals" => env!("CARGO_BIN_EXE_tp_signals"),
        "tp_misc" => env!("CARGO_BIN_EXE_tp_misc"),
        "tp_sleep" => env!("CARGO_BIN_EXE_tp_sleep"),
        "tp_unsupported" => env!("CARGO_BIN_EXE_tp_unsupported"),
        "tp_threads" => env!("CARGO_BIN_EXE_tp_threads"),
        "tp_tree" => env!("CARGO_BIN_EXE_tp_tree"),
        "tp_shared" => env!("CARGO_BIN_EXE_tp_shared"),
        "tp_timers" => env!("CARGO_BIN_EXE_tp_timers"),
        "tp_cow" => env!("CARGO_BIN_EXE_tp_cow"),
        "tp_daemon" => env!("CARGO_BIN_EXE_tp_daemon"),
        "tp_tty" => env!("CARGO_BIN_EXE_tp_tty"),
        "tp_sockets" => env!("CARGO_BIN_EXE_tp_sockets"),
        "tp_epoll" => env!("CARGO_BIN_EXE_tp_epoll"),
        "tp_load" => env!("CARGO_BIN_EXE_tp_load"),
        "tp_memfd" => env!("CARGO_BIN_EXE_tp_memfd"),
        "tp_fdkinds" => env!("CARGO_BIN_EXE_tp_fdkinds"),
        "tp_memkinds" => env!("CARGO_BIN_EXE_tp_memkinds"),
        "tp_locks" => env!("CARGO_BIN_EXE_tp_locks"),
        "tp_procattrs" => env!("CARGO_BIN_EXE_tp_procattrs"),
        "tp_inotify" => env!("CARGO_BIN_EXE_tp_inotify"),
        "tp_inet" => env!("CARGO_BIN_EXE_tp_inet"),
        "tp_unix" => env!("CARGO_BIN_EXE_tp_unix"),
        "tp_httpd" => env!("CARGO_BIN_EXE_tp_httpd"),
        "tp_files2" => env!("CARGO_BIN_EXE_tp_files2"),
        "tp_pty" => env!("CARGO_BIN_EXE_tp_pty"),
        "tp_cgroup" => env!("CARGO_BIN_EXE_tp_cgroup"),
        "tp_seccomp" => env!("CARGO_BIN_EXE_tp_seccomp"),
        "tp_shmem" => env!("CARGO_BIN_EXE_tp_shmem"),
        "tp_precopy" => env!("CARGO_BIN_EXE_tp_precopy"),
        "tp_tcp" => env!("CARGO_BIN_EXE_tp_tcp"),
        "tp_nsmisc" => env!("CARGO_BIN_EXE_tp_nsmisc"),
        "tp_netns" => env!("CARGO_BIN_EXE_tp_netns"),
        "tp_mntns" => env!("CARGO_BIN_EXE_tp_mntns"),
        "tp_rights" => env!("CARGO_BIN_EXE_tp_rights"),
        "tp_mcast" => env!("CARGO_BIN_EXE_tp_mcast"),
        "tp_extunix" => env!("CARGO_BIN_EXE_tp_extunix"),
        "tp_nspid" => env!("CARGO_BIN_EXE_tp_nspid"),
        "tp_userns" => env!("CARGO_BIN_EXE_tp_userns"),
        "tp_fanotify" => env!("CARGO_BIN_EXE_tp_fanotify"),
        "tp_lazy" => env!("CARGO_BIN_EXE_tp_lazy"),
        "tp_netsk" => env!("CARGO_BIN_EXE_tp_netsk"),
        "tp_keyring" => env!("CARGO_BIN_EXE_tp_keyring"),
        "tp_extfile" => env!("CARGO_BIN_EXE_tp_extfile"),
        "tp_landlock" => env!("CARGO_BIN_EXE_tp_landlock"),
        "tp_ptystop" => env!("CARGO_BIN_EXE_tp_ptystop"),
        "tp_mqueue" => env!("CARGO_BIN_EXE_tp_mqueue"),
        "tp_chroot" => env!("CARGO_BIN_EXE_tp_chroot"),
        "tp_procsys" => env!("CARGO_BIN_EXE_tp_procsys"),
        "tp_rseq" => env!("CARGO_BIN_EXE_tp_rseq"),
        "tp_swap" => env!("CARGO_BIN_EXE_tp_swap"),
        other => panic!("unknown test program {other}"),
    };
    PathBuf::from(p)
}

/// The real python3 binary (not a pyenv shim, which would fork).
fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("run python3");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The stasis binary under test.
pub fn stasis_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STASIS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/e2e-xxxx -> target/debug/stasis
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("stasis")
}

/// Serializes the tests of one test binary that open pseudo-terminals: a
/// pair is restored with its old index, which a pty opened meanwhile by a
/// concurrent test could take (refused by name, and a flaky test).
pub fn pty_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the test process a child subreaper, so that a process restored with
/// `-d` is reparented to us when `stasis restore` exits and can be waited for.
pub fn ensure_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: integer-only prctl on our own process.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1u64, 0u64, 0u64, 0u64) };
        assert_eq!(
            r,
            0,
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    });
}

/// A unique work directory, removed on drop (also when the test panics).
pub struct Work {
    dir: PathBuf,
}

impl Work {
    pub fn new(name: &str) -> Work {
        Work::under(name, &std::env::temp_dir())
    }

    /// A work directory under `base` (e.g. /dev/shm, for the paths that
    /// differ on tmpfs).
    pub fn under(name: &str, base: &Path) -> Work {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let base = fs::canonicalize(base).expect("work base dir");
        let dir = base.join(format!("stasis-e2e-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create work dir");
        Work { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The image directory (`WORK/img`).
    pub fn img(&self) -> PathBuf {
        self.dir.join("img")
    }

    /// Releases go: creates `go` if needed (never truncating it, a program
    /// may have it mapped) and writes '1' at offset 0.
    pub fn release_go(&self) {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path("go"))
            .expect("open go");
        f.write_all_at(b"1", 0).expect("write go");
    }

    /// Removes `go` and `result`, for running a restored image again.
    pub fn reset_go(&self) {
        let _ = fs::remove_file(self.path("go"));
        let _ = fs::remove_file(self.path("result"));
    }

    /// The result line, if written.
    pub fn result(&self) -> Option<String> {
        fs::read_to_string(self.path("result")).ok()
    }

    /// A file's content for diagnostics (its last 6000 bytes).
    pub fn tail(&self, name: &str) -> String {
        tail(&self.path(name))
    }

    /// Everything useful when a step fails.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for name in [
            "out.log",
            "result",
            "img/dump.log",
            "img/restore.log",
            "img2/dump.log",
        ] {
            if self.path(name).exists() {
                s.push_str(&format!("\n----- {name} -----\n{}", self.tail(name)));
            }
        }
        s
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if std::env::var_os("STASIS_TEST_KEEP").is_some() {
            eprintln!("keeping work dir {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(p: &Path) -> String {
    match fs::read(p) {
        Ok(b) => {
            let start = b.len().saturating_sub(6000);
            String::from_utf8_lossy(&b[start..]).into_owned()
        }
        Err(e) => format!("<{e}>"),
    }
}

/// How a process ended, from its wait status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn from_status(status: i32) -> Exit {
        if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else {
            Exit::Signal(libc::WTERMSIG(status))
        }
    }
}

/// A process this test started (spawned, or restored and reparented to us).
/// Dropping it kills and reaps it if it is still our running child; a PID
/// that is not our child is never touched.
pub struct Proc {
    pub pid: i32,
    exited: Option<Exit>,
}

impl Proc {
    /// Adopts a PID that must be our child (e.g. after a restore with -d).
    pub fn adopt(pid: i32) -> Proc {
        Proc { pid, exited: None }
    }

    /// Non-blocking check: `Ok(None)` while running, `Ok(Some(exit))` once
    /// exited (reaped), `Err` if the PID is not our child.
    pub fn poll(&mut self) -> Result<Option<Exit>, String> {
        if let Some(e) = self.exited {
            return Ok(Some(e));
        }
        let mut status = 0;
        // SAFETY: waits only for this specific PID; status is a valid out pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG | libc::__WALL) };
        if r == self.pid {
            let e = Exit::from_status(status);
            self.exited = Some(e);
            Ok(Some(e))
        } else if r == 0 {
            Ok(None)
        } else {
            Err(format!(
                "waitpid({}): {} (not a child of the test process)",
                self.pid,
                std::io::Error::last_os_error()
            ))
        }
    }

    /// Waits for the process to exit; on timeout kills it and fails.
    pub fn wait(&mut self, timeout: Duration) -> Result<Exit, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.poll()? {
                return Ok(e);
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "process {} did not exit within {timeout:?}; killed",
                    self.pid
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs and reaps the process if it is our running child.
    pub fn kill(&mut self) {
        if let Ok(None) = self.poll() {
            // SAFETY: the PID is our unreaped child, so it cannot have been reused.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let mut status = 0;
            // SAFETY: as above.
            if unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) } == self.pid {
                self.exited = Some(Exit::from_status(status));
            }
        }
    }

    /// Whether the process is running and neither stopped nor traced.
    pub fn check_running_untraced(&mut self) -> Result<(), String> {
        if let Some(e) = self.poll()? {
            return Err(format!("process {} exited: {e:?}", self.pid));
        }
        let stat =
            fs::read_to_string(format!("/proc/{}/stat", self.pid)).map_err(|e| e.to_string())?;
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.chars().next())
            .unwrap_or('?');
        if state == 'T' || state == 't' {
            return Err(format!(
                "process {} is left stopped (state {state})",
                self.pid
            ));
        }
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid)).map_err(|e| e.to_string())?;
        let tracer = stasis_tests::status_field(&status, "TracerPid").unwrap_or_default();
        if tracer != "0" {
            return Err(format!("process {} is still traced by {tracer}", self.pid));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `program` in `work` with stdin /dev/null and stdout/stderr appended
/// to `WORK/out.log`.
pub fn start(work: &Work, program: Program, args: &[&str]) -> Proc {
    let (exe, argv) = program.argv(work.dir(), args);
    let mut cmd = Command::new(&exe);
    cmd.args(&argv);
    spawn_in_session(work, cmd)
}

/// Spawns `cmd` in `work` as a tree of its own (a new session, no
/// inherited descriptors), stdin /dev/null, stdout and stderr appended to
/// `WORK/out.log`.
pub fn spawn_in_session(work: &Work, mut cmd: Command) -> Proc {
    ensure_subreaper();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.path("out.log"))
        .expect("out.log");
    cmd.current_dir(work.dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup out.log"))
        .stderr(log);
    // Descriptors inherited from whoever runs the tests (a CI runner's
    // pipes, say) are not the program's own state: close them. Its own
    // session, too, so a terminal the tests run on is not its controlling
    // terminal (which only a shell job may have).
    // SAFETY: close_range and setsid are async-signal-safe and touch only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::setsid();
            Ok(())
        });
    }
    let exe = cmd.get_program().to_owned();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.to_string_lossy()));
    let pid = i32::try_from(child.id()).expect("pid");
    // The std handle is dropped without waiting: Proc owns the PID now.
    drop(child);
    Proc { pid, exited: None }
}

/// Waits until `WORK/ready` holds a complete line.
pub fn wait_ready(work: &Work, proc: &mut Proc, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if fs::read(work.path("ready")).is_ok_and(|b| b.ends_with(b"\n")) {
            return Ok(());
        }
        if let Some(e) = proc.poll()? {
            return Err(format!("program exited before ready: {e:?}"));
        }
        if Instant::now() > deadline {
            proc.kill();
            return Err(format!("no ready within {timeout:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Output of one `stasis` run.
#[derive(Debug)]
pub struct CmdOut {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOut {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `cmd` with stdin from `stdin` and stdout/stderr into the files
/// `out_p` and `err_p` (so a restored process can never hold a pipe of
/// ours), none of our other descriptors, killing it after `timeout`.
pub fn run_captured(
    cmd: &mut Command,
    out_p: &Path,
    err_p: &Path,
    stdin: Stdio,
    timeout: Duration,
) -> CmdOut {
    cmd.stdin(stdin)
        .stdout(File::create(out_p).expect("stdout file"))
        .stderr(File::create(err_p).expect("stderr file"));
    // What `stasis run` starts must not inherit the test runner's descriptors.
    // SAFETY: close_range is async-signal-safe and touches only the child's table.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CmdOut {
        code,
        stdout: fs::read_to_string(out_p).unwrap_or_default(),
        stderr: fs::read_to_string(err_p).unwrap_or_default(),
    }
}

/// Runs `stasis ARGS` with stdout/stderr captured through files in the work
/// directory (so a restored process can never hold a pipe of ours), killing
/// it after `timeout`.
pub fn stasis(work: &Work, args: &[&str], timeout: Duration) -> CmdOut {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let bin = stasis_bin();
    assert!(
        bin.exists(),
        "stasis binary not found at {}: run `cargo build -p stasis` or set STASIS_BIN",
        bin.display()
    );
    let (out_p, err_p) = (
        work.path(&format!("stasis-{n}.stdout")),
        work.path(&format!("stasis-{n}.stderr")),
    );
    let mut cmd = Command::new(&bin);
    cmd.args(args);
    let out = run_captured(&mut cmd, &out_p, &err_p, Stdio::null(), timeout);
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.path("stasis-commands.log"))
        .expect("log");
    let _ = writeln!(
        log,
        "stasis {} -> {:?}\n{}",
        args.join(" "),
        out.code,
        out.stderr
    );
    out
}

/// Timeouts and extra options of one case.
#[derive(Clone, Debug)]
pub struct Opts {
    pub ready_timeout: Duration,
    pub finish_timeout: Duration,
    pub stasis_timeout: Duration,
    pub dump_extra: Vec<&'static str>,
    pub restore_extra: Vec<&'static str>,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            ready_timeout: Duration::from_secs(30),
            finish_timeout: Duration::from_secs(30),
            stasis_timeout: Duration::from_secs(120),
            dump_extra: vec![],
            restore_extra: vec![],
        }
    }
}

/// What a completed case produced.
#[derive(Debug)]
pub struct Outcome {
    pub pid: i32,
    pub exit: Exit,
    pub result: String,
}

impl Outcome {
    /// Panics unless the program reported PASS (or SKIP, which is printed).
    pub fn assert_pass(&self, work: &Work) {
        if self.result.starts_with("SKIP") {
            eprintln!("skipped: {}", self.result.trim_end());
            return;
        }
        assert!(
            self.result == "PASS\n" && self.exit == Exit::Code(0),
            "program did not pass: result {:?}, exit {:?}{}",
            self.result,
            self.exit,
            work.diagnostics()
        );
    }
}

/// Fails the test with `msg` and the work directory's diagnostics.
pub fn fail(work: &Work, msg: impl std::fmt::Display) -> ! {
    panic!("{msg}{}", work.diagnostics())
}

/// Unwraps a step's result, failing with diagnostics.
pub fn step<T>(work: &Work, what: &str, r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| fail(work, format!("{what}: {e}")))
}

/// Releases go and waits for the program to finish; returns its outcome.
pub fn finish(work: &Work, proc: &mut Proc, timeout: Duration) -> Outcome {
    work.release_go();
    let exit = step(
        work,
        "waiting for the program to finish",
        proc.wait(timeout),
    );
    Outcome {
        pid: proc.pid,
        exit,
        result: work.result().unwrap_or_else(|| "<no result file>".into()),
    }
}

/// Runs a program through the protocol without stasis: start, ready, go.
pub fn run_plain(work: &Work, program: Program, args: &[&str]) -> Outcome {
    let opts = Opts::default();
    let mut p = start_ready(work, program, args, &opts);
    finish(work, &mut p, opts.finish_timeout)
}

/// `stasis dump -t PID -D WORK/img -o dump.log -v4 EXTRA...`. Creates the
/// (empty) image directory first.
pub fn dump(work: &Work, pid: i32, extra: &[&str], timeout: Duration) -> CmdOut {
    fs::create_dir_all(work.img()).expect("create img dir");
    let pid_s = pid.to_string();
    let img = work.img();
    let mut args = vec![
        "dump",
        "-t",
        &pid_s,
        "-D",
        img.to_str().expect("utf-8 path"),
        "-o",
        "dump.log",
        "-v4",
    ];
    args.extend_from_slice(extra);
    stasis(work, &args, timeout)
}

/// `stasis restore -D WORK/img -o restore.log -v4 -d --pidfile WORK/pidfile EXTRA...`.
pub fn restore_detached(work: &Work, extra: &[&str], timeout: Duration) -> CmdOut {
    let mut args = restore_args(work);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    stasis(work, &args, timeout)
}

/// [`restore_detached`] with variables `env` set for stasis (test hooks
/// such as `STASIS_FAULT`); its output in `WORK/restore-env.*`.
pub fn restore_detached_env(work: &Work, env: &[(&str, &str)], timeout: Duration) -> CmdOut {
    let mut cmd = Command::new(stasis_bin());
    cmd.args(restore_args(work)).envs(env.iter().copied());
    let (out_p, err_p) = (
        work.path("restore-env.stdout"),
        work.path("restore-env.stderr"),
    );
    run_captured(&mut cmd, &out_p, &err_p, Stdio::null(), timeout)
}

/// [`restore_detached`] with `stdin` as stasis's descriptor 0 (handed in
/// with `--inherit-fd fd[0]:KEY`); its output in `WORK/restore-stdin.*`.
pub fn restore_detached_stdin(
    work: &Work,
    extra: &[&str],
    timeout: Duration,
    stdin: Stdio,
) -> CmdOut {
    let mut cmd = Command::new(stasis_bin());
    cmd.args(restore_args(work)).args(extra);
    let (out_p, err_p) = (
        work.path("restore-stdin.stdout"),
        work.path("restore-stdin.stderr"),
    );
    run_captured(&mut cmd, &out_p, &err_p, stdin, timeout)
}

/// `restore -D WORK/img -o restore.log -v4 -d --pidfile WORK/pidfile`,
/// the pidfile removed first.
fn restore_args(work: &Work) -> Vec<String> {
    let (img, pidfile) = (work.img(), work.path("pidfile"));
    let _ = fs::remove_file(&pidfile);
    let mut args: Vec<String> = ["restore", "-D"].map(String::from).to_vec();
    args.push(img.to_str().expect("utf-8 path").to_string());
    args.extend(["-o", "restore.log", "-v4", "-d", "--pidfile"].map(String::from));
    args.push(pidfile.to_str().expect("utf-8 path").to_string());
    args
}

/// Whether a process with this PID exists at all.
pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Dumps the running program: asserts success, that the program was killed
/// by SIGKILL and that its PID is gone.
pub fn dump_and_check_gone(work: &Work, proc: &mut Proc, opts: &Opts) {
    let out = dump(work, proc.pid, &opts.dump_extra, opts.stasis_timeout);
    if !out.success() {
        fail(
            work,
            format!("stasis dump failed ({:?}): {}", out.code, out.stderr),
        );
    }
    check_gone(work, proc);
}

/// After a successful dump: the program was killed by SIGKILL, its PID is
/// gone, the image has an inventory, and every other process of the tree
/// is gone too (ours reaped), so their PIDs are free for the restore.
pub fn check_gone(work: &Work, proc: &mut Proc) {
    let exit = step(
        work,
        "waiting for the dumped process to die",
        proc.wait(Duration::from_secs(10)),
    );
    if exit != Exit::Signal(libc::SIGKILL) {
        fail(
            work,
            format!("dumped process ended with {exit:?}, expected SIGKILL"),
        );
    }
    if pid_exists(proc.pid) {
        fail(work, format!("PID {} still exists after dump", proc.pid));
    }
    if !work.img().join("inventory.img").exists() {
        fail(work, "image has no inventory.img after a successful dump");
    }
    // The rest of the tree was killed too; its orphans are reparented to
    // us (the subreaper) or to init: reap ours and wait for the others, so
    // that their PIDs are free for the restore.
    let v = show(work, &work.img());
    let inv = &v["inventory"];
    let mut others: Vec<i32> = Vec::new();
    for key in ["processes", "zombies"] {
        for p in inv[key].as_array().into_iter().flatten() {
            if let Some(pid) = p["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
                if pid != proc.pid {
                    others.push(pid);
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in others {
        while pid_exists(pid) {
            let mut st = 0;
            // SAFETY: WNOHANG wait for one specific PID of the dumped tree,
            // which is either our (adopted) child or not ours at all.
            unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
            if Instant::now() > deadline {
                fail(
                    work,
                    format!("PID {pid} of the dumped tree still exists after dump"),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Restores with -d and returns the restored process, checking the pidfile
/// and that it is our child and running.
pub fn restore_and_adopt(work: &Work, pid: i32, opts: &Opts) -> Proc {
    let out = restore_detached(work, &opts.restore_extra, opts.stasis_timeout);
    let mut p = Proc::adopt(pid);
    if !out.success() {
        fail(
            work,
            format!("stasis restore failed ({:?}): {}", out.code, out.stderr),
        );
    }
    let pidfile = fs::read_to_string(work.path("pidfile")).unwrap_or_default();
    if pidfile.trim() != pid.to_string() {
        fail(work, format!("pidfile says {pidfile:?}, expected {pid}"));
    }
    match p.poll() {
        Ok(None) => {}
        Ok(Some(e)) => fail(
            work,
            format!("restored process {pid} already exited: {e:?}"),
        ),
        Err(e) => {
            if pid_exists(pid) {
                // We restored it; it is ours to clean up even though it is
                // not our child.
                // SAFETY: plain kill of the PID stasis just restored for us.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            fail(work, format!("restored process: {e}"));
        }
    }
    step(work, "restored process state", p.check_running_untraced());
    p
}

/// The standard case: start, ready, dump (gone), restore -d (same PID, our
/// child), go, wait, read the result.
/// Starts `program` and waits until it is ready (test fails otherwise).
pub fn start_ready(work: &Work, program: Program, args: &[&str], opts: &Opts) -> Proc {
    let mut p = start(work, program, args);
    step(
        work,
        "waiting for ready",
        wait_ready(work, &mut p, opts.ready_timeout),
    );
    p
}

pub fn run_case(work: &Work, program: Program, args: &[&str], opts: &Opts) -> Outcome {
    let mut p = start_ready(work, program, args, opts);
    dump_and_check_gone(work, &mut p, opts);
    let mut r = restore_and_adopt(work, p.pid, opts);
    finish(work, &mut r, opts.finish_timeout)
}

/// `stasis show DIR` parsed as JSON.
/// The PID a program wrote into `WORK/name`.
pub fn pidfile(work: &Work, name: &str) -> i32 {
    fs::read_to_string(work.path(name))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| fail(work, format!("no pid in {name}")))
}

pub fn show(work: &Work, dir: &Path) -> serde_json::Value {
    let out = stasis(
        work,
        &["show", dir.to_str().expect("utf-8 path")],
        Duration::from_secs(60),
    );
    if !out.success() {
        fail(
            work,
            format!("stasis show failed ({:?}): {}", out.code, out.stderr),
        );
    }
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| fail(work, format!("stasis show: not JSON: {e}")))
}

/// Every page run (`addr`, `nr_pages`) found anywhere in `show` output under
/// a `pages` array (the `mm.pages` of each process).
pub fn page_runs(v: &serde_json::Value) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    fn walk(v: &serde_json::Value, runs: &mut Vec<(u64, u64)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if k == "pages" {
                        if let Some(arr) = x.as_array() {
                            for r in arr {
                                if let (Some(a), Some(n)) =
                                    (r["addr"].as_u64(), r["nr_pages"].as_u64())
                                {
                                    runs.push((a, n));
                                }
                            }
                        }
                    }
                    walk(x, runs);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, runs)),
            _ => {}
        }
    }
    walk(v, &mut runs);
    runs
}

/// Pages an image holds itself and pages it takes from its parent
/// (runs marked `in_parent`), over every `pages` array of `show` output.
pub fn own_and_parent_pages(v: &serde_json::Value) -> (u64, u64) {
    fn walk(v: &serde_json::Value, t: &mut (u64, u64)) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    for r in x.as_array().filter(|_| k == "pages").into_iter().flatten() {
                        let n = r["nr_pages"].as_u64().unwrap_or(0);
                        if r["in_parent"].as_bool() == Some(true) {
                            t.1 += n;
                        } else {
                            t.0 += n;
                        }
                    }
                    walk(x, t);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, t)),
            _ => {}
        }
    }
    let mut t = (0, 0);
    walk(v, &mut t);
    t
}

/// Pages of `runs` inside `[start, end)`.
pub fn pages_in(runs: &[(u64, u64)], start: u64, end: u64, page: u64) -> u64 {
    runs.iter()
        .map(|&(a, n)| {
            let (lo, hi) = (a.max(start), (a + n * page).min(end));
            if hi > lo {
                (hi - lo) / page
            } else {
                0
            }
        })
        .sum()
}

/// Is `java` on PATH (the JVM test is skipped, saying so, without it)?
pub fn have_java() -> bool {
    Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `go/tp_go.go` built once per test run with the `go` toolchain in PATH
/// (Debian's `golang`) into `target/tmp/go/`, with its build cache there
/// too (`GOCACHE`; CI runs as root, possibly without HOME). `Err` says
/// why there is none: no toolchain (tests skip, saying so) or a failed
/// build (tests fail).
pub fn go_program() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/tp_go.go");
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
            fs::create_dir_all(dir.join("cache")).map_err(|e| format!("{}: {e}", dir.display()))?;
            let version = Command::new("go").arg("version").output();
            match version {
                Ok(o) if o.status.success() => {}
                _ => return Err(NO_GO.into()),
            }
            // A private output name, renamed into place: several test
            // binaries may build at once.
            let out = dir.join(format!("tp_go.{}", std::process::id()));
            let mut cmd = go_build(&dir, dir.join("gopath").as_os_str(), &out);
            cmd.arg(&src).current_dir(&dir);
            let o = cmd.output().map_err(|e| format!("run go build: {e}"))?;
            if !o.status.success() {
                return Err(format!(
                    "go build {} failed: {}",
                    src.display(),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            let exe = dir.join("tp_go");
            fs::rename(&out, &exe).map_err(|e| format!("{}: {e}", exe.display()))?;
            Ok(exe)
        })
        .clone()
}

/// `go build -o OUT` in GOPATH mode (GOPATH `gopath`), static, with the
/// build cache (and HOME, if unset) under `dir`; the caller adds what to
/// build.
pub fn go_build(dir: &Path, gopath: &std::ffi::OsStr, out: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(out)
        .env("CGO_ENABLED", "0")
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "");
    if std::env::var_os("GOCACHE").is_none() {
        cmd.env("GOCACHE", dir.join("cache"));
    }
    if std::env::var_os("HOME").is_none() {
        cmd.env("HOME", dir);
    }
    cmd
}

/// Reaps the program in the background once a dump kills it, so its PID
/// is free for the restore that follows in the same command.
pub fn reap_when_killed(p: Proc, timeout: Duration) -> Reaper {
    std::thread::spawn(move || {
        let mut p = p;
        let e = p.wait(timeout);
        (p, e)
    })
}

pub type Reaper = std::thread::JoinHandle<(Proc, Result<Exit, String>)>;

/// After the command that was to kill the program (`out`): if it failed,
/// kills the program and fails the test; else checks that the program
/// died by SIGKILL and was reaped.
pub fn killed_by(work: &Work, pid: i32, reaper: Reaper, out: &CmdOut, what: &str) {
    if !out.success() {
        // SAFETY: plain kill of the program this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = reaper.join();
        fail(work, format!("{what} failed: {}", out.stderr));
    }
    let (_, exit) = reaper.join().expect("reaper");
    assert_eq!(
        exit,
        Ok(Exit::Signal(libc::SIGKILL)),
        "{}",
        work.diagnostics()
    );
}

/// Whether `test` can run the Go test program; says SKIP when there is
/// no Go toolchain, panics on any other failure to build it.
pub fn have_go(test: &str) -> bool {
    match go_program() {
        Ok(_) => true,
        Err(e) if e == NO_GO => {
            eprintln!("SKIP {test}: {NO_GO}");
            false
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// What [`go_program`] says when there is no `go` in PATH.
pub const NO_GO: &str = "no `go` toolchain in PATH (Debian: apt-get install golang)";

/// A process of `program` run with `args` holds something the dump must
/// refuse: the dump (with `dump_extra`) fails with one line naming the PID
/// and `words` (any of them, or with `all` every one; case-insensitive),
/// leaves no image, and the process runs on unharmed, passing its own
/// checks after go.
pub fn refused_dump(
    name: &str,
    program: Program,
    args: &[&str],
    dump_extra: &[&str],
    words: &[&str],
    all: bool,
) {
    let work = Work::new(name);
    let opts = Opts::default();
    let mut p = start_ready(&work, program, args, &opts);
    let out = dump(&work, p.pid, dump_extra, opts.stasis_timeout);
    assert!(
        out.code.is_some_and(|c| c != 0),
        "dump of {args:?} did not fail: {out:?}{}",
        work.diagnostics()
    );
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "dump error is not one line: {:?}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&p.pid.to_string()),
        "dump error does not name PID {}: {:?}",
        p.pid,
        out.stderr
    );
    let lower = out.stderr.to_lowercase();
    let named = |w: &&str| lower.contains(&w.to_lowercase());
    let ok = if all {
        words.iter().all(named)
    } else {
        words.iter().any(named)
    };
    assert!(ok, "dump error does not name {words:?}: {:?}", out.stderr);
    assert!(
        !work.img().join("inventory.img").exists(),
        "a failed dump left an inventory.img"
    );
    step(
        &work,
        "process after the refused dump",
        p.check_running_untraced(),
    );
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

/// A plain dump of `p` that must not finish: `env` (e.g.
/// `STASIS_FAULT=dump:commit` or `STASIS_KILL_AT=point`) makes it fail
/// (`killed`: SIGKILL itself). Asserts that, then waits until the target
/// runs untraced again (a tracee is released when its tracer dies) and
/// that no image was left; returns the dump's output.
pub fn interrupted_dump(
    work: &Work,
    p: &mut Proc,
    env: (&str, &str),
    killed: bool,
) -> std::process::Output {
    let img = work.img();
    fs::create_dir_all(&img).expect("img dir");
    let out = Command::new(stasis_bin())
        .args(["dump", "-t", &p.pid.to_string(), "-D"])
        .arg(&img)
        .env(env.0, env.1)
        .stdin(Stdio::null())
        .output()
        .expect("run stasis");
    use std::os::unix::process::ExitStatusExt;
    if killed {
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    } else {
        assert!(!out.status.success(), "{out:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.check_running_untraced().is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    step(work, "target after the dump", p.check_running_untraced());
    assert!(
        !img.join("inventory.img").exists(),
        "an image after {env:?}"
    );
    out
}

/// A child of the tree holds something the dump must refuse: the dump
/// fails with one line naming `word` and a process other than the root,
/// leaves no image, and the tree runs on, passing its own checks.
pub fn refused_child_dump(name: &str, program: Program, args: &[&str], word: &str) {
    let work = Work::new(name);
    let opts = Opts::default();
    let mut p = start_ready(&work, program, args, &opts);
    let out = dump(&work, p.pid, &[], opts.stasis_timeout);
    assert!(
        out.code.is_some_and(|c| c != 0)
            && out.stderr.trim_end().lines().count() == 1
            && out.stderr.contains(word)
            && !out.stderr.contains(&format!("dump pid {}:", p.pid)),
        "dump did not refuse the child's {word:?} by name: {out:?}"
    );
    assert!(!work.img().join("inventory.img").exists());
    step(
        &work,
        "tree after the refused dump",
        p.check_running_untraced(),
    );
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

/// `dump -R` leaves the process running, untraced and intact (its maps check
/// catches anything the dump left behind), with a complete image.
pub fn leave_running(name: &str, program: Program, args: &[&str]) {
    let work = Work::new(name);
    let opts = Opts::default();
    let mut p = start_ready(&work, program, args, &opts);
    let out = dump(&work, p.pid, &["-R"], opts.stasis_timeout);
    if !out.success() {
        fail(
            &work,
            format!("stasis dump -R failed ({:?}): {}", out.code, out.stderr),
        );
    }
    step(&work, "process after dump -R", p.check_running_untraced());
    assert!(
        work.img().join("inventory.img").exists(),
        "no inventory.img{}",
        work.diagnostics()
    );
    finish(&work, &mut p, opts.finish_timeout).assert_pass(&work);
}

/// `program ARGS` as PID 1 of a PID namespace of its own (`stasis run`):
/// dumped, restored (its namespace made anew), released; its outcome.
pub fn cr_own_pid_ns(work: &Work, program: Program, args: &[&str]) -> Outcome {
    let t = Duration::from_secs(60);
    let dir = work.dir().to_str().expect("utf-8").to_string();
    let Program::Bin(name) = program else {
        fail(work, "cr_own_pid_ns runs test programs only");
    };
    let prog = bin_path(name);
    ensure_subreaper();
    let run_pid = format!("{dir}/run.pid");
    let mut run = vec!["run", "-d", "--pidfile", &run_pid, "--"];
    run.push(prog.to_str().expect("utf-8"));
    run.push(&dir);
    run.extend_from_slice(args);
    let out = stasis(work, &run, t);
    if !out.success() {
        fail(work, format!("stasis run: {out:?}"));
    }
    let mut init = Proc::adopt(pidfile(work, "run.pid"));
    step(work, "waiting for ready", wait_ready(work, &mut init, t));
    let ready = fs::read_to_string(work.path("ready")).unwrap_or_default();
    if !ready.starts_with("READY 1") {
        fail(work, format!("not PID 1 of its namespace: {ready:?}"));
    }
    let out = dump(work, init.pid, &[], t);
    if !out.success() {
        fail(work, format!("dump: {out:?}"));
    }
    step(work, "waiting for the dumped init", init.wait(t));
    let out = restore_detached(work, &[], t);
    if !out.success() {
        fail(work, format!("restore: {out:?}"));
    }
    let mut r = Proc::adopt(pidfile(work, "pidfile"));
    finish(work, &mut r, t)
}

/// Dumps `program ARGS`, restores it with `--new-pid-ns` (a helper init
/// holds PID 1 there, the tree keeps its PIDs), releases it; its outcome.
pub fn cr_new_pid_ns(work: &Work, program: Program, args: &[&str]) -> Outcome {
    let opts = Opts::default();
    ensure_subreaper();
    let mut p = start_ready(work, program, args, &opts);
    dump_and_check_gone(work, &mut p, &opts);
    let out = restore_detached(work, &["--new-pid-ns"], opts.stasis_timeout);
    if !out.success() {
        fail(work, format!("restore --new-pid-ns failed: {out:?}"));
    }
    let root = pidfile(work, "pidfile");
    let status = fs::read_to_string(format!("/proc/{root}/status")).unwrap_or_default();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or("");
    if !nspid.trim_end().ends_with(&format!("\t{}", p.pid)) {
        fail(
            work,
            format!("the copy is not PID {} in a namespace: {nspid:?}", p.pid),
        );
    }
    // The helper init (the root's parent) is ours to wait for: it exits
    // with the root's status.
    let helper = fs::read_to_string(format!("/proc/{root}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
        })
        .unwrap_or_else(|| fail(work, "no parent of the copy"));
    let mut helper = Proc::adopt(helper);
    finish(work, &mut helper, opts.finish_timeout)
}
