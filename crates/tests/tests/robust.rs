//! Robustness, end to end on real processes: never lose a process, never
//! trust an image.
//!
//! * A dumper killed at any named point (`STASIS_KILL_AT`), at many timed
//!   instants, or failing at any stage (`STASIS_FAULT`) leaves its target
//!   running, untraced and intact (the programs verify registers, memory,
//!   signals and sleeps themselves after go), and no image that looks
//!   complete.
//! * Corrupt, truncated, missing, hostile or symlinked image files are
//!   refused with an error naming the file, and no process appears.
//! * A restore failing at any stage, or for a real reason (file gone,
//!   unopenable, PID taken, changed file, foreign credentials), leaves no
//!   process behind.
//! * Image directories and files are private; 20 dump/restore cycles leak
//!   nothing; 5,000 mappings and 1,000 open files survive.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const MEM_SMALL: &[&str] = &["--size-mib", "16", "--sparse-mib", "16"];
const STASIS_TIMEOUT: Duration = Duration::from_secs(120);

/// One `stasis` run with extra environment variables.
struct Run {
    status: Option<ExitStatus>,
    stderr: String,
}

impl Run {
    fn killed_by_sigkill(&self) -> bool {
        self.status.and_then(|s| s.signal()) == Some(libc::SIGKILL)
    }
    fn failed(&self) -> bool {
        self.status
            .is_some_and(|s| s.code().is_some_and(|c| c != 0))
    }
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

fn command(args: &[&str], env: &[(&str, &str)], work: &Work, tag: &str) -> (Command, PathBuf) {
    let err_p = work.path(&format!("{tag}.stderr"));
    let mut cmd = Command::new(stasis_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_p).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd, err_p)
}

/// Runs stasis to completion (killing it after `STASIS_TIMEOUT`).
fn run_stasis(work: &Work, args: &[&str], env: &[(&str, &str)]) -> Run {
    let (mut cmd, err_p) = command(args, env, work, "run");
    let mut child = cmd.spawn().expect("spawn stasis");
    let deadline = Instant::now() + STASIS_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Run {
        status,
        stderr: fs::read_to_string(err_p).unwrap_or_default(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `dump -t PID -D DIR -R` (the target must survive in every case here).
fn dump_r(work: &Work, pid: i32, dir: &Path, env: &[(&str, &str)]) -> Run {
    let pid_s = pid.to_string();
    run_stasis(work, &["dump", "-t", &pid_s, "-D", s(dir), "-R"], env)
}

/// Waits (up to 5 s) until the target is running, not stopped and not
/// traced: a tracee released by a dying tracer may take a moment to run.
fn wait_untraced(p: &mut Proc) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match p.check_running_untraced() {
            Ok(()) => return Ok(()),
            Err(e) if e.contains("exited") || Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn started(work: &Work, program: Program, args: &[&str]) -> Proc {
    let mut p = start(work, program, args);
    step(
        work,
        "waiting for ready",
        wait_ready(work, &mut p, Duration::from_secs(60)),
    );
    p
}

/// After a dump that did not complete: no `inventory.img`; after one that
/// did (killed after the commit), the image must pass validation: a restore
/// then only fails because the PID is in use.
fn check_image_state(work: &Work, dir: &Path, pid: i32, what: &str) {
    if !dir.join("inventory.img").exists() {
        return;
    }
    let r = run_stasis(work, &["restore", "-D", s(dir), "-d"], &[]);
    assert!(
        r.failed() && r.stderr.contains("preflight") && r.stderr.contains("already in use"),
        "{what}: left an inventory.img, but the image is not whole: {:?} {}{}",
        r.status,
        r.stderr,
        work.diagnostics()
    );
    let _ = pid;
}

// ---------------------------------------------------------------------------
// The dumper killed at every named point.

/// Points reached in every dump -R, in order. `:N` is the Nth pass.
const KILL_POINTS: &[&str] = &[
    "freeze-seized",
    "dump:freeze",
    "heal-frame",
    "heal-stub-half",
    "heal-stub",
    "inject-set-regs:1",
    "syscall-entry:1",
    "syscall-exit:1",
    "heal-mask",
    "inject-set-regs:2",
    "syscall-entry:2",
    "syscall-exit:2",
    "inject-set-regs:4",
    "syscall-entry:5",
    "syscall-exit:7",
    "finish-mask",
    "finish-cont",
    "finish-stop",
    "finish-regs",
    "finish-unpatch-half",
    "finish-unpatch",
    "dump:collect",
    "dump:memory",
    "dump:write-image",
    "dump:commit",
    "commit-written",
    "commit-renamed",
    "commit-inventory",
    "dump:release",
    "before-detach",
];

/// Points after which the image is complete.
const AFTER_COMMIT: &[&str] = &["commit-inventory", "dump:release", "before-detach"];

fn kill_at_every_point(name: &str, program: Program, args: &[&str]) {
    let work = Work::new(name);
    let mut p = started(&work, program, args);
    for (i, point) in KILL_POINTS.iter().enumerate() {
        let dir = work.path(&format!("img-{i}"));
        // A thread still inside the healing stub of an earlier killed dump
        // (sleeping in its restarted call) is refused until it leaves it.
        let mut tries = 0;
        let run = loop {
            let run = dump_r(&work, p.pid, &dir, &[("STASIS_KILL_AT", point)]);
            tries += 1;
            if tries < 200 && run.failed() && run.stderr.contains("healing stub") {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            break run;
        };
        assert!(
            run.killed_by_sigkill(),
            "STASIS_KILL_AT={point}: the dumper was not killed there: {:?} {}{}",
            run.status,
            run.stderr,
            work.diagnostics()
        );
        step(
            &work,
            &format!("target after the dumper was killed at {point}"),
            wait_untraced(&mut p),
        );
        let complete = dir.join("inventory.img").exists();
        assert_eq!(
            complete,
            AFTER_COMMIT.contains(point),
            "STASIS_KILL_AT={point}: inventory.img present: {complete}{}",
            work.diagnostics()
        );
        check_image_state(&work, &dir, p.pid, point);
    }
    // Still dumpable, and intact: it verifies itself.
    let dir = work.path("img-final");
    let mut tries = 0;
    loop {
        let run = dump_r(&work, p.pid, &dir, &[]);
        tries += 1;
        if run.ok() {
            break;
        }
        assert!(
            tries < 200 && run.stderr.contains("healing stub"),
            "a dump after the kills failed: {:?} {}{}",
            run.status,
            run.stderr,
            work.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    step(&work, "target after the final dump", wait_untraced(&mut p));
    finish(&work, &mut p, Duration::from_secs(60)).assert_pass(&work);
}

#[test]
fn kill_dumper_at_every_point_regs() {
    kill_at_every_point("kill_points_regs", Program::Bin("tp_regs"), &[]);
}

#[test]
fn kill_dumper_at_every_point_amx() {
    kill_at_every_point("kill_points_amx", Program::Bin("tp_amx"), &[]);
}

#[test]
fn kill_dumper_at_every_point_sleep() {
    kill_at_every_point(
        "kill_points_sleep",
        Program::Bin("tp_sleep"),
        &["--mode", "nanosleep", "--sleep-ms", "300"],
    );
}

#[test]
fn kill_dumper_at_every_point_poll() {
    kill_at_every_point(
        "kill_points_poll",
        Program::Bin("tp_sleep"),
        &["--mode", "poll", "--sleep-ms", "300"],
    );
}

#[test]
fn kill_dumper_at_every_point_signals() {
    kill_at_every_point(
        "kill_points_signals",
        Program::Bin("tp_signals"),
        &["--pending"],
    );
}

/// Without a vDSO the healing stub lives in padding past libc's text
/// segment: a killed dumper must leave the process unharmed there too
/// (tp_memkinds checks those bytes are as they were after the final dump).
#[test]
fn kill_dumper_at_every_point_novdso() {
    kill_at_every_point(
        "kill_points_novdso",
        Program::Bin("tp_memkinds"),
        &["--case", "novdso"],
    );
}

#[test]
fn kill_dumper_at_every_point_memory() {
    kill_at_every_point("kill_points_memory", Program::Bin("tp_memory"), MEM_SMALL);
}

/// A Go program: threads in tight loops (live flags), on goroutine stacks
/// with other stacks right below them, each left mid-injection.
#[test]
fn kill_dumper_at_every_point_go() {
    match go_program() {
        Ok(_) => kill_at_every_point("kill_points_go", Program::Go, &[]),
        Err(e) if e == NO_GO => eprintln!("SKIP kill_dumper_at_every_point_go: {NO_GO}"),
        Err(e) => panic!("kill_dumper_at_every_point_go: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The dumper killed at timed instants spread over a whole dump.

fn is_traced(pid: i32) -> bool {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    stasis_tests::status_field(&st, "TracerPid").is_some_and(|t| t != "0")
}

/// Spawns `stasis dump -R` and returns once it has seized the target (or
/// exited), with the instant it was first seen tracing it.
fn spawn_until_traced(cmd: &mut Command, pid: i32) -> (std::process::Child, Instant) {
    let mut child = cmd.spawn().expect("spawn stasis");
    loop {
        if is_traced(pid) || child.try_wait().ok().flatten().is_some() {
            return (child, Instant::now());
        }
        std::hint::spin_loop();
    }
}

fn kill_at_timed_instants(name: &str, program: Program, args: &[&str], kills: u32) {
    let work = Work::new(name);
    let mut p = started(&work, program, args);
    // How long the target stays traced during a dump here, from the moment
    // it is seen traced to the dumper's exit (shortest of three).
    let mut full = Duration::MAX;
    for i in 0..3 {
        let dir = work.path(&format!("measure-{i}"));
        let pid_s = p.pid.to_string();
        let (mut cmd, _) = command(
            &["dump", "-t", &pid_s, "-D", s(&dir), "-R"],
            &[],
            &work,
            "m",
        );
        let (mut child, t) = spawn_until_traced(&mut cmd, p.pid);
        let st = child.wait().expect("wait stasis");
        full = full.min(t.elapsed());
        assert!(st.success(), "measuring dump failed{}", work.diagnostics());
        step(&work, "target after a dump", wait_untraced(&mut p));
    }
    eprintln!("{name}: a dump holds the target for {full:?}; killing at {kills} instants over it");
    let (mut killed, mut completed) = (0, 0);
    for k in 0..kills {
        let delay = full.mul_f64(1.1 * f64::from(k) / f64::from(kills));
        let dir = work.path(&format!("img-{k}"));
        let pid_s = p.pid.to_string();
        let (mut cmd, err_p) = command(
            &["dump", "-t", &pid_s, "-D", s(&dir), "-R"],
            &[],
            &work,
            "timed",
        );
        let (mut child, t) = spawn_until_traced(&mut cmd, p.pid);
        while t.elapsed() < delay {
            std::hint::spin_loop();
        }
        let _ = child.kill();
        let st = child.wait().expect("wait stasis");
        let stderr = fs::read_to_string(err_p).unwrap_or_default();
        match st.signal() {
            Some(libc::SIGKILL) => killed += 1,
            _ if st.success() => completed += 1,
            _ if stderr.contains("healing stub") => killed += 1,
            _ => panic!(
                "dump {k} (kill after {delay:?}) failed on its own: {st:?} {stderr}{}",
                work.diagnostics()
            ),
        }
        step(
            &work,
            &format!("target after the dumper was killed at {delay:?}"),
            wait_untraced(&mut p),
        );
        check_image_state(&work, &dir, p.pid, &format!("kill after {delay:?}"));
        if !st.success() {
            // Killed before the commit finished, or after it: either no
            // inventory, or a whole image (checked above).
            let _ = fs::remove_dir_all(&dir);
        }
    }
    eprintln!("{name}: {killed} dumps killed, {completed} completed before the kill");
    assert!(
        killed >= kills / 4,
        "only {killed} of {kills} dumps were interrupted while holding the target"
    );
    finish(&work, &mut p, Duration::from_secs(60)).assert_pass(&work);
}

#[test]
fn kill_dumper_at_timed_instants_regs() {
    kill_at_timed_instants("kill_timed_regs", Program::Bin("tp_regs"), &[], 48);
}

#[test]
fn kill_dumper_at_timed_instants_amx() {
    kill_at_timed_instants("kill_timed_amx", Program::Bin("tp_amx"), &[], 24);
}

#[test]
fn kill_dumper_at_timed_instants_sleep() {
    kill_at_timed_instants(
        "kill_timed_sleep",
        Program::Bin("tp_sleep"),
        &["--mode", "clock_nanosleep", "--sleep-ms", "300"],
        48,
    );
}

#[test]
fn kill_dumper_at_timed_instants_memory() {
    kill_at_timed_instants(
        "kill_timed_memory",
        Program::Bin("tp_memory"),
        MEM_SMALL,
        44,
    );
}

// ---------------------------------------------------------------------------
// The dump failing at every stage.

#[test]
fn dump_fails_at_every_stage() {
    let work = Work::new("dump_fault_stages");
    let mut p = started(&work, Program::Bin("tp_signals"), &["--pending"]);
    let cases: &[(&str, &str)] = &[
        ("dump:freeze", "freeze"),
        ("dump:collect", "collect"),
        ("dump:memory", "memory"),
        ("dump:write image", "write image"),
        ("dump:commit", "commit"),
        // A remote syscall failing mid-sequence: the error path must put
        // the thread back from an injected state.
        ("sys:syscall-exit:1", "query"),
        ("sys:syscall-exit:3", "query"),
        ("sys:syscall-exit:6", "query"),
    ];
    for (i, (fault, stage)) in cases.iter().enumerate() {
        let dir = work.path(&format!("img-{i}"));
        let run = dump_r(&work, p.pid, &dir, &[("STASIS_FAULT", fault)]);
        assert!(
            run.failed() && run.stderr.contains(&format!(": {stage}: ")),
            "STASIS_FAULT={fault}: expected a failure naming stage {stage:?}: {:?} {}",
            run.status,
            run.stderr
        );
        assert!(run.stderr.contains(&p.pid.to_string()), "{}", run.stderr);
        step(
            &work,
            &format!("target after {fault}"),
            wait_untraced(&mut p),
        );
        assert!(
            !dir.join("inventory.img").exists(),
            "STASIS_FAULT={fault} left an inventory.img"
        );
        let partial: Vec<_> = fs::read_dir(&dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            partial.is_empty(),
            "STASIS_FAULT={fault} left files behind: {partial:?}"
        );
    }
    finish(&work, &mut p, Duration::from_secs(60)).assert_pass(&work);
}

// ---------------------------------------------------------------------------
// Images: every corruption refused before anything is created.

/// A dumped (and killed) tp_files; returns its PID and a pristine copy of
/// the image at `WORK/pristine`.
fn dumped_image(work: &Work, program: Program, args: &[&str]) -> (i32, PathBuf) {
    let mut p = started(work, program, args);
    dump_and_check_gone(work, &mut p, &Opts::default());
    let pristine = work.path("pristine");
    copy_dir(&work.img(), &pristine);
    (p.pid, pristine)
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).expect("create dir");
    for e in fs::read_dir(from).expect("read dir").filter_map(Result::ok) {
        let name = e.file_name();
        if name.to_string_lossy().ends_with(".img") {
            fs::copy(e.path(), to.join(&name)).expect("copy image file");
        }
    }
}

/// Runs a restore that must fail: non-zero, stderr contains each of
/// `words`, and no process with `pid` exists afterwards.
fn restore_must_fail(
    work: &Work,
    dir: &Path,
    pid: i32,
    env: &[(&str, &str)],
    words: &[&str],
    what: &str,
) {
    let r = run_stasis(work, &["restore", "-D", s(dir), "-d"], env);
    if pid_exists(pid) {
        // Ours to clean up: it came from our image.
        // SAFETY: plain kill of the PID the restore just created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut p = Proc::adopt(pid);
        p.kill();
        fail(
            work,
            format!(
                "{what}: a process with PID {pid} exists after the restore: {:?} {}",
                r.status, r.stderr
            ),
        );
    }
    assert!(
        r.failed(),
        "{what}: restore did not fail: {:?} {}",
        r.status,
        r.stderr
    );
    for w in words {
        assert!(
            r.stderr.contains(w),
            "{what}: the error does not mention {w:?}: {}",
            r.stderr
        );
    }
}

fn header(kind: u32, payload: &[u8]) -> Vec<u8> {
    let kind = match kind {
        1 => stasis_image::FileKind::Inventory,
        _ => stasis_image::FileKind::Core,
    };
    stasis_image::encode_metadata(kind, payload)
}

/// Re-encodes the metadata file `path` after `edit` changed its JSON, with a
/// valid header and checksum.
fn edit_json(path: &Path, edit: &dyn Fn(&mut serde_json::Value)) {
    let bytes = fs::read(path).expect("read metadata");
    let kind = u32::from_le_bytes(bytes[12..16].try_into().expect("kind"));
    let mut v: serde_json::Value = serde_json::from_slice(&bytes[32..]).expect("json");
    edit(&mut v);
    fs::write(path, header(kind, &serde_json::to_vec(&v).expect("encode"))).expect("write");
}

type Mutation = (String, Box<dyn Fn(&Path)>);

fn mutations(pid: i32) -> Vec<(Mutation, &'static str)> {
    use serde_json::json;
    let core = format!("core-{pid}.img");
    let pages = format!("pages-{pid}.img");
    let mut out: Vec<(Mutation, &'static str)> = Vec::new();
    let files: Vec<(String, &'static str)> = vec![
        ("inventory.img".into(), "inventory.img"),
        (core.clone(), "core-"),
        (pages.clone(), "pages-"),
    ];
    for (file, names) in &files {
        let f = file.clone();
        // Byte flips in the header (magic, version, kind, length, checksum)
        // and in the payload.
        // (Bytes 40..4096 of a page file are padding, ignored by design;
        // 32..40 hold the chunk size, see chunked_page_checksums.)
        let payload_at = if file.starts_with("pages") { 4096 } else { 40 };
        for off in [0usize, 9, 13, 17, 25, payload_at, 4200] {
            let f = f.clone();
            out.push((
                (
                    format!("{f}: flip byte {off}"),
                    Box::new(move |d: &Path| {
                        let p = d.join(&f);
                        let mut b = fs::read(&p).expect("read");
                        let i = off.min(b.len() - 1);
                        b[i] ^= 0x40;
                        fs::write(&p, b).expect("write");
                    }),
                ),
                names,
            ));
        }
        // The last byte.
        let g = f.clone();
        out.push((
            (
                format!("{f}: flip the last byte"),
                Box::new(move |d: &Path| {
                    let p = d.join(&g);
                    let mut b = fs::read(&p).expect("read");
                    let n = b.len();
                    b[n - 1] ^= 1;
                    fs::write(&p, b).expect("write");
                }),
            ),
            names,
        ));
        for cut in [0u64, 16, 31, 32, 100] {
            let g = f.clone();
            out.push((
                (
                    format!("{f}: truncated to {cut}"),
                    Box::new(move |d: &Path| {
                        let file = fs::OpenOptions::new()
                            .write(true)
                            .open(d.join(&g))
                            .expect("open");
                        let len = file.metadata().expect("stat").len();
                        file.set_len(cut.min(len.saturating_sub(1)))
                            .expect("truncate");
                    }),
                ),
                names,
            ));
        }
        let g = f.clone();
        out.push((
            (
                format!("{f}: one byte short"),
                Box::new(move |d: &Path| {
                    let file = fs::OpenOptions::new()
                        .write(true)
                        .open(d.join(&g))
                        .expect("open");
                    let len = file.metadata().expect("stat").len();
                    file.set_len(len - 1).expect("truncate");
                }),
            ),
            names,
        ));
        let g = f.clone();
        out.push((
            (
                format!("{f}: trailing data"),
                Box::new(move |d: &Path| {
                    let file = fs::OpenOptions::new()
                        .write(true)
                        .open(d.join(&g))
                        .expect("open");
                    let len = file.metadata().expect("stat").len();
                    file.set_len(len + 4096).expect("extend");
                }),
            ),
            names,
        ));
        let g = f.clone();
        out.push((
            (
                format!("{f}: deleted"),
                Box::new(move |d: &Path| fs::remove_file(d.join(&g)).expect("remove")),
            ),
            names,
        ));
        let g = f.clone();
        out.push((
            (
                format!("{f}: a symlink to a valid copy outside the directory"),
                Box::new(move |d: &Path| {
                    let outside = d.with_extension("outside");
                    let _ = fs::create_dir_all(&outside);
                    fs::copy(d.join(&g), outside.join(&g)).expect("copy");
                    fs::remove_file(d.join(&g)).expect("remove");
                    std::os::unix::fs::symlink(outside.join(&g), d.join(&g)).expect("symlink");
                }),
            ),
            names,
        ));
        let g = f.clone();
        out.push((
            (
                format!("{f}: a directory"),
                Box::new(move |d: &Path| {
                    fs::remove_file(d.join(&g)).expect("remove");
                    fs::create_dir(d.join(&g)).expect("mkdir");
                }),
            ),
            names,
        ));
        let g = f.clone();
        out.push((
            (
                format!("{f}: a FIFO"),
                Box::new(move |d: &Path| {
                    fs::remove_file(d.join(&g)).expect("remove");
                    let c = std::ffi::CString::new(s(&d.join(&g))).expect("path");
                    // SAFETY: valid path; creates a FIFO in our own test directory.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
                }),
            ),
            names,
        ));
    }
    // Page file: the kind of a core file.
    let g = pages.clone();
    out.push((
        (
            "pages: wrong kind".into(),
            Box::new(move |d: &Path| {
                let p = d.join(&g);
                let mut b = fs::read(&p).expect("read");
                b[12] = 2;
                fs::write(&p, b).expect("write");
            }),
        ),
        "pages-",
    ));
    // Metadata headers with a valid checksum but a hostile length/version.
    for (file, names) in [
        ("inventory.img".to_string(), "inventory.img"),
        (core.clone(), "core-"),
    ] {
        for (field, at, val) in [
            (
                "payload_len huge",
                16usize,
                (1u64 << 40).to_le_bytes().to_vec(),
            ),
            ("version 2", 8, 2u32.to_le_bytes().to_vec()),
            ("kind pages", 12, 3u32.to_le_bytes().to_vec()),
        ] {
            let g = file.clone();
            out.push((
                (
                    format!("{file}: header {field}"),
                    Box::new(move |d: &Path| {
                        let p = d.join(&g);
                        let mut b = fs::read(&p).expect("read");
                        b[at..at + val.len()].copy_from_slice(&val);
                        fs::write(&p, b).expect("write");
                    }),
                ),
                names,
            ));
        }
    }
    // Hostile JSON behind a valid header and checksum.
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let core_edits: Vec<(&str, Edit)> = vec![
        (
            "vma above user space",
            Box::new(|v| v["mm"]["vmas"][0]["end"] = json!(0x8000_0000_0000u64)),
        ),
        (
            "overlapping vmas",
            Box::new(|v| {
                let s0 = v["mm"]["vmas"][0]["start"].clone();
                v["mm"]["vmas"][1]["start"] = s0;
            }),
        ),
        (
            "unaligned vma",
            Box::new(|v| {
                v["mm"]["vmas"][0]["start"] =
                    json!(v["mm"]["vmas"][0]["start"].as_u64().unwrap_or(0) + 1)
            }),
        ),
        (
            "vma list repeated",
            Box::new(|v| {
                let vm = v["mm"]["vmas"].as_array().cloned().unwrap_or_default();
                let mut all = vm.clone();
                all.extend(vm);
                v["mm"]["vmas"] = json!(all);
            }),
        ),
        (
            "page run outside every vma",
            Box::new(|v| v["mm"]["pages"][0]["addr"] = json!(0x1000)),
        ),
        (
            "page run huge",
            Box::new(|v| v["mm"]["pages"][0]["nr_pages"] = json!(u64::MAX)),
        ),
        (
            "page run unaligned offset",
            Box::new(|v| v["mm"]["pages"][0]["offset"] = json!(7)),
        ),
        (
            "page runs sharing file bytes",
            Box::new(|v| v["mm"]["pages"][1]["offset"] = json!(0)),
        ),
        (
            "absurd fd",
            Box::new(|v| v["files"][0]["fd"] = json!(1u64 << 21)),
        ),
        ("negative fd", Box::new(|v| v["files"][0]["fd"] = json!(-1))),
        (
            "fd past the descriptor limit",
            Box::new(|v| v["files"][0]["fd"] = json!(1 << 20)),
        ),
        (
            "duplicate fd",
            Box::new(|v| {
                let f0 = v["files"][0]["fd"].clone();
                v["files"][1]["fd"] = f0;
            }),
        ),
        ("no threads", Box::new(|v| v["threads"] = json!([]))),
        (
            "thread id not the pid",
            Box::new(|v| v["threads"][0]["tid"] = json!(v["pid"].as_u64().unwrap_or(0) + 1)),
        ),
        ("pid 0", Box::new(|v| v["pid"] = json!(0))),
        (
            "pid mismatch",
            Box::new(|v| v["pid"] = json!(v["pid"].as_u64().unwrap_or(0) + 1)),
        ),
        (
            "huge group count",
            Box::new(|v| v["creds"]["groups"] = json!(vec![0u32; 70_000])),
        ),
        (
            "rlimit cur above max",
            Box::new(|v| {
                v["rlimits"][0]["cur"] = json!(5);
                v["rlimits"][0]["max"] = json!(4);
            }),
        ),
        (
            "signal 65",
            Box::new(|v| {
                v["sigactions"] =
                    json!([{"signo": 65, "handler": 1, "flags": 0, "restorer": 0, "mask": 0}]);
            }),
        ),
        ("NUL in cwd", Box::new(|v| v["cwd"] = json!("/tmp\u{0}x"))),
        (
            "umask out of range",
            Box::new(|v| v["umask"] = json!(0o7777)),
        ),
        (
            "odd auxv",
            Box::new(|v| {
                if let Some(a) = v["mm"]["auxv"].as_array_mut() {
                    a.push(json!(1));
                }
            }),
        ),
        (
            "huge xsave",
            Box::new(|v| v["threads"][0]["xsave"] = json!("00".repeat(70_000))),
        ),
        (
            "huge path",
            Box::new(|v| v["exe"]["path"] = json!("/".repeat(5000))),
        ),
        ("wrong type", Box::new(|v| v["mm"] = json!("nope"))),
        (
            "unknown vma kind",
            Box::new(|v| v["mm"]["vmas"][0]["kind"] = json!({"type": "nonexistent"})),
        ),
        (
            "missing field",
            Box::new(|v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("creds");
                }
            }),
        ),
    ];
    for (what, edit) in core_edits {
        let g = core.clone();
        out.push((
            (
                format!("core: {what}"),
                Box::new(move |d: &Path| edit_json(&d.join(&g), &edit)),
            ),
            "core-",
        ));
    }
    let inv_edits: Vec<(&str, Edit)> = vec![
        (
            "core file escaping the directory",
            Box::new(|v| v["processes"][0]["core_file"] = json!("../pristine/x.img")),
        ),
        (
            "absolute core file",
            Box::new(|v| v["processes"][0]["core_file"] = json!("/etc/passwd")),
        ),
        (
            "pages file ..",
            Box::new(|v| v["processes"][0]["pages_file"] = json!("..")),
        ),
        (
            "pages file escaping",
            Box::new(|v| v["processes"][0]["pages_file"] = json!("../../../etc/shadow")),
        ),
        (
            "core file is the inventory",
            Box::new(|v| v["processes"][0]["core_file"] = json!("inventory.img")),
        ),
        (
            "empty name",
            Box::new(|v| v["processes"][0]["core_file"] = json!("")),
        ),
        ("no processes", Box::new(|v| v["processes"] = json!([]))),
        (
            "root pid missing",
            Box::new(|v| v["root_pid"] = json!(4_000_000)),
        ),
        (
            "duplicate process",
            Box::new(|v| {
                let p0 = v["processes"][0].clone();
                if let Some(a) = v["processes"].as_array_mut() {
                    a.push(p0);
                }
            }),
        ),
        (
            "deep nesting",
            Box::new(|v| {
                let mut x = json!(0);
                for _ in 0..1000 {
                    x = json!([x]);
                }
                v["tool_version"] = x;
            }),
        ),
    ];
    for (what, edit) in inv_edits {
        out.push((
            (
                format!("inventory: {what}"),
                Box::new(move |d: &Path| edit_json(&d.join("inventory.img"), &edit)),
            ),
            "inventory.img",
        ));
    }
    // The pid in the inventory no longer matches the core file.
    out.push((
        (
            "inventory: pid mismatch".into(),
            Box::new(|d: &Path| {
                edit_json(&d.join("inventory.img"), &|v| {
                    v["processes"][0]["pid"] =
                        json!(v["processes"][0]["pid"].as_u64().unwrap_or(0) + 1);
                    v["root_pid"] = v["processes"][0]["pid"].clone();
                })
            }),
        ),
        "core-",
    ));
    out
}

#[test]
fn corrupt_images_are_refused() {
    let work = Work::new("corrupt_images");
    let (pid, pristine) = dumped_image(&work, Program::Bin("tp_files"), &[]);
    let muts = mutations(pid);
    eprintln!("{} mutations of a real image", muts.len());
    for (i, ((what, mutate), name)) in muts.iter().enumerate() {
        let dir = work.path(&format!("bad-{i}"));
        copy_dir(&pristine, &dir);
        mutate(&dir);
        restore_must_fail(&work, &dir, pid, &[], &[name], what);
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(dir.with_extension("outside"));
    }
    // The pristine image is good: the checks above refused only damage.
    work.reset_go();
    let mut r = restore_and_adopt(&work, pid, &Opts::default());
    finish(&work, &mut r, Duration::from_secs(60)).assert_pass(&work);
}

/// A page file big enough to be checked on every CPU (kind 5: chunked
/// checksums, docs/image-format.md "Page file checksums"): a flipped byte
/// in a middle or the last chunk, a changed or invalid chunk size, or the
/// kind set back to 3 without a whole-payload checksum are refused before
/// any process exists; the same pages as an old kind 3 file (the whole
/// payload's checksum) restore, and the process checks every page.
#[test]
fn chunked_page_checksums() {
    let work = Work::new("chunked_page_checksums");
    let (pid, pristine) = dumped_image(
        &work,
        Program::Bin("tp_memory"),
        &["--size-mib", "48", "--sparse-mib", "8"],
    );
    let pages = format!("pages-{pid}.img");
    let orig = fs::read(pristine.join(&pages)).expect("read pages");
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    assert_eq!(orig[12..16], 5u32.to_le_bytes(), "the dump writes kind 5");
    assert_eq!(u64_at(&orig, 32), 1 << 20, "chunk size");
    let payload = orig.len() - 4096;
    assert!(
        payload >= 32 << 20,
        "a page file of {payload} bytes is too small for the parallel check"
    );
    type PageEdit = Box<dyn Fn(&mut Vec<u8>)>;
    let edits: Vec<(&str, PageEdit, &str)> = vec![
        (
            "a byte flipped in a middle chunk",
            Box::new(move |b| b[4096 + payload / 2 + 12345] ^= 0x10),
            "checksum",
        ),
        (
            "a byte flipped in the last chunk",
            Box::new(|b| {
                let n = b.len();
                b[n - 3] ^= 1;
            }),
            "checksum",
        ),
        (
            "chunk size 2 MiB",
            Box::new(|b| b[32..40].copy_from_slice(&(2u64 << 20).to_le_bytes())),
            "checksum",
        ),
        (
            "chunk size not a power of two",
            Box::new(|b| b[32..40].copy_from_slice(&3000u64.to_le_bytes())),
            "chunk size",
        ),
        (
            "kind 3 with the chunked checksum",
            Box::new(|b| b[12..16].copy_from_slice(&3u32.to_le_bytes())),
            "checksum",
        ),
    ];
    for (what, edit, word) in &edits {
        let dir = work.path("bad");
        copy_dir(&pristine, &dir);
        let mut b = orig.clone();
        edit(&mut b);
        fs::write(dir.join(&pages), &b).expect("write pages");
        restore_must_fail(&work, &dir, pid, &[], &[&pages, word], what);
        let _ = fs::remove_dir_all(&dir);
    }
    // The same pages as a kind 3 file, as stasis wrote them before.
    let mut b = orig;
    b[12..16].copy_from_slice(&3u32.to_le_bytes());
    b[32..4096].fill(0);
    let whole = stasis_tests::hash(&b[4096..]);
    b[24..32].copy_from_slice(&whole.to_le_bytes());
    fs::write(work.img().join(&pages), &b).expect("write pages");
    work.reset_go();
    let mut r = restore_and_adopt(&work, pid, &Opts::default());
    finish(&work, &mut r, Duration::from_secs(60)).assert_pass(&work);
}

/// The images directory itself may be a symlink (the user's choice of
/// path), but nothing inside it is followed.
#[test]
fn symlinked_images_dir_is_followed_but_entries_are_not() {
    let work = Work::new("symlinked_dir");
    let (pid, pristine) = dumped_image(&work, Program::Bin("tp_files"), &[]);
    let link = work.path("link-to-img");
    std::os::unix::fs::symlink(&pristine, &link).expect("symlink");
    // Every entry replaced by a symlink to its own valid copy *inside* the
    // directory is refused too.
    let dir = work.path("inner-links");
    copy_dir(&pristine, &dir);
    let core = format!("core-{pid}.img");
    fs::rename(dir.join(&core), dir.join("real-core")).expect("rename");
    std::os::unix::fs::symlink("real-core", dir.join(&core)).expect("symlink");
    restore_must_fail(
        &work,
        &dir,
        pid,
        &[],
        &[&core, "symlink"],
        "core file as a relative symlink",
    );
    let pidfile = work.path("pidfile");
    let r = run_stasis(
        &work,
        &["restore", "-D", s(&link), "-d", "--pidfile", s(&pidfile)],
        &[],
    );
    let mut p = Proc::adopt(pid);
    assert!(
        r.ok(),
        "restore through a symlinked directory: {}",
        r.stderr
    );
    step(&work, "restored process", p.check_running_untraced());
    finish(&work, &mut p, Duration::from_secs(60)).assert_pass(&work);
}

// ---------------------------------------------------------------------------
// Restore: all or nothing.

#[test]
fn restore_fails_at_every_stage_leaving_nothing() {
    let work = Work::new("restore_fault_stages");
    let (pid, _) = dumped_image(&work, Program::Bin("tp_files"), &[]);
    for stage in [
        "validate",
        "preflight",
        "fork",
        "memory",
        "attributes",
        "credentials",
        "registers",
        "resume",
    ] {
        let fault = format!("restore:{stage}");
        restore_must_fail(
            &work,
            &work.img(),
            pid,
            &[("STASIS_FAULT", &fault)],
            &[&format!(": {stage}: "), &pid.to_string()],
            &fault,
        );
    }
    // A file of the process deleted since the dump.
    let data = work.path("data.txt");
    let moved = work.path("data.txt.moved");
    fs::rename(&data, &moved).expect("move data.txt");
    restore_must_fail(
        &work,
        &work.img(),
        pid,
        &[],
        &["preflight", "data.txt"],
        "file deleted",
    );
    fs::rename(&moved, &data).expect("move back");
    // A file that cannot be opened any more (immutable, so even root gets
    // EPERM opening it for writing; size and mtime are unchanged).
    let rw = work.path("rw.bin");
    let chattr = Command::new("chattr").arg("+i").arg(&rw).status();
    if chattr.is_ok_and(|s| s.success()) {
        restore_must_fail(
            &work,
            &work.img(),
            pid,
            &[],
            &["fork", "rw.bin"],
            "file unopenable",
        );
        let _ = Command::new("chattr").arg("-i").arg(&rw).status();
    } else {
        eprintln!("skipped the unopenable-file case: chattr +i not supported here");
    }
    // The PID taken: restore once, then again.
    work.reset_go();
    let mut first = restore_and_adopt(&work, pid, &Opts::default());
    let r = run_stasis(&work, &["restore", "-D", s(&work.img()), "-d"], &[]);
    assert!(
        r.failed() && r.stderr.contains("already in use"),
        "restore over a taken PID: {:?} {}",
        r.status,
        r.stderr
    );
    step(
        &work,
        "the first restored process",
        first.check_running_untraced(),
    );
    finish(&work, &mut first, Duration::from_secs(60)).assert_pass(&work);
}

/// Out of memory: the restorer (and so the process it forks) limited by
/// RLIMIT_AS below what the image needs; the memory stage fails and the
/// half-built process is gone.
#[test]
fn restore_out_of_memory_leaves_nothing() {
    let work = Work::new("restore_oom");
    let (pid, _) = dumped_image(
        &work,
        Program::Bin("tp_memory"),
        &["--size-mib", "128", "--sparse-mib", "16"],
    );
    let img = work.img();
    let err_p = work.path("oom.stderr");
    let mut cmd = Command::new(stasis_bin());
    cmd.args(["restore", "-D", s(&img), "-d"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_p).expect("stderr"));
    // SAFETY: setrlimit is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            let rl = libc::rlimit {
                rlim_cur: 96 << 20,
                rlim_max: 96 << 20,
            };
            libc::setrlimit(libc::RLIMIT_AS, &rl);
            Ok(())
        });
    }
    let st = cmd.status().expect("run stasis");
    let stderr = fs::read_to_string(&err_p).unwrap_or_default();
    if pid_exists(pid) {
        let mut p = Proc::adopt(pid);
        // SAFETY: the PID our image produced.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        p.kill();
        fail(
            &work,
            format!("a process exists after a failed restore: {stderr}"),
        );
    }
    assert!(!st.success(), "restore under RLIMIT_AS succeeded: {stderr}");
    assert!(
        stderr.contains("memory") && stderr.contains(&pid.to_string()),
        "the error does not name the stage: {stderr}"
    );
    // Without the limit it works.
    work.reset_go();
    let mut r = restore_and_adopt(&work, pid, &Opts::default());
    finish(&work, &mut r, Duration::from_secs(120)).assert_pass(&work);
}

/// An image from a CPU with a bigger XSAVE layout (AMX: 11,008 bytes, tile
/// components in the feature mask) restores here when the thread's tile
/// state was not live; claiming live tile data is refused by name on a CPU
/// without AMX.
#[test]
fn xsave_area_from_another_cpu_layout() {
    let work = Work::new("xsave_layout");
    let (pid, _) = dumped_image(&work, Program::Bin("tp_regs"), &[]);
    let core = work.img().join(format!("core-{pid}.img"));
    let pristine = fs::read(&core).expect("read core");
    let amx = fs::read_to_string("/proc/cpuinfo")
        .expect("cpuinfo")
        .contains(" amx_tile");
    // Live tile data claimed: only an AMX CPU can hold it.
    let bigger = |live_tiles: bool| {
        move |v: &mut serde_json::Value| {
            let hex = v["threads"][0]["xsave"]
                .as_str()
                .expect("xsave")
                .to_string();
            let mut b: Vec<u8> = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            b.resize(11_008, 0);
            let features = u64::from_le_bytes(b[464..472].try_into().expect("8")) | 3 << 17;
            b[464..472].copy_from_slice(&features.to_le_bytes());
            if live_tiles {
                let bv = u64::from_le_bytes(b[512..520].try_into().expect("8")) | 3 << 17;
                b[512..520].copy_from_slice(&bv.to_le_bytes());
            }
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            v["threads"][0]["xsave"] = serde_json::json!(hex);
        }
    };
    if !amx {
        edit_json(&core, &bigger(true));
        restore_must_fail(
            &work,
            &work.img(),
            pid,
            &[],
            &["registers", "XSAVE state this CPU lacks", "AMX TILEDATA"],
            "live tile data on a CPU without AMX",
        );
        fs::write(&core, &pristine).expect("restore core");
    }
    edit_json(&core, &bigger(false));
    let mut r = restore_and_adopt(&work, pid, &Opts::default());
    finish(&work, &mut r, Duration::from_secs(60)).assert_pass(&work);
}

#[test]
fn changed_files_refused_unless_allowed() {
    let work = Work::new("changed_files");
    let (pid, _) = dumped_image(&work, Program::Bin("tp_files"), &[]);
    // Same content, new mtime.
    let data = work.path("data.txt");
    let f = fs::File::options().write(true).open(&data).expect("open");
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(3600))
        .expect("set mtime");
    drop(f);
    restore_must_fail(
        &work,
        &work.img(),
        pid,
        &[],
        &[
            "preflight",
            "data.txt",
            "changed since the dump",
            "--allow-changed-files",
        ],
        "changed mtime",
    );
    let opts = Opts {
        restore_extra: vec!["--allow-changed-files"],
        ..Opts::default()
    };
    let mut r = restore_and_adopt(&work, pid, &opts);
    finish(&work, &mut r, Duration::from_secs(60)).assert_pass(&work);
}

// ---------------------------------------------------------------------------
// Security.

#[test]
fn images_are_private() {
    let work = Work::new("images_private");
    let mut p = started(&work, Program::Bin("tp_signals"), &[]);
    // A permissive umask must not leak into the image.
    let dir = work.path("fresh/img");
    let pid_s = p.pid.to_string();
    let err_p = work.path("private.stderr");
    let mut cmd = Command::new(stasis_bin());
    cmd.args(["dump", "-t", &pid_s, "-D", s(&dir), "-R", "-o", "dump.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_p).expect("stderr"));
    // SAFETY: umask is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    assert!(
        cmd.status().expect("run stasis").success(),
        "dump failed: {}",
        fs::read_to_string(&err_p).unwrap_or_default()
    );
    let mode = |p: &Path| fs::symlink_metadata(p).expect("stat").mode() & 0o7777;
    assert_eq!(mode(&dir), 0o700, "image directory mode");
    let mut n = 0;
    for e in fs::read_dir(&dir).expect("read dir").filter_map(Result::ok) {
        assert_eq!(mode(&e.path()), 0o600, "mode of {}", e.path().display());
        n += 1;
    }
    assert!(
        n >= 4,
        "expected inventory, core, pages and log files, found {n}"
    );
    step(&work, "target", p.check_running_untraced());
    finish(&work, &mut p, Duration::from_secs(60)).assert_pass(&work);
}

const NOBODY: &str = "65534";

fn chown_r(path: &Path, uid: u32) {
    for e in fs::read_dir(path).expect("read dir").filter_map(Result::ok) {
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(uid)).expect("chown");
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown");
}

/// `stasis restore` run as nobody through setpriv.
fn restore_as_nobody(work: &Work, dir: &Path) -> Run {
    let err_p = work.path("nobody.stderr");
    let st = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .arg(stasis_bin())
        .args(["restore", "-D", s(dir), "-d"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_p).expect("stderr"))
        .status()
        .ok();
    Run {
        status: st,
        stderr: fs::read_to_string(&err_p).unwrap_or_default(),
    }
}

fn have_setpriv() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn unprivileged_restore_of_foreign_credentials_refused() {
    if !have_setpriv() {
        eprintln!("skipped: no setpriv");
        return;
    }
    let work = Work::new("unpriv_refused");
    let (pid, _) = dumped_image(&work, Program::Bin("tp_files"), &[]);
    // The user got hold of root's image.
    let dir = work.path("for-nobody");
    copy_dir(&work.img(), &dir);
    chown_r(&dir, 65534);
    let r = restore_as_nobody(&work, &dir);
    assert!(r.failed(), "restore as nobody: {:?} {}", r.status, r.stderr);
    assert!(
        r.stderr.contains("preflight") && r.stderr.contains("credentials refused"),
        "expected the credential refusal: {}",
        r.stderr
    );
    assert!(!pid_exists(pid), "a process appeared");
    // Root restores the same image.
    work.reset_go();
    let mut p = restore_and_adopt(&work, pid, &Opts::default());
    finish(&work, &mut p, Duration::from_secs(60)).assert_pass(&work);
}

/// The converse: an image of nobody's own process passes the credential
/// check when nobody restores it (it then fails for lack of the privilege
/// clone3 set_tid needs), and still leaves nothing.
#[test]
fn unprivileged_restore_of_own_credentials_passes_the_check() {
    if !have_setpriv() {
        eprintln!("skipped: no setpriv");
        return;
    }
    let work = Work::new("unpriv_own");
    fs::set_permissions(work.dir(), fs::Permissions::from_mode(0o777)).expect("chmod");
    ensure_subreaper();
    let log = fs::File::create(work.path("out.log")).expect("log");
    let mut cmd = Command::new("setpriv");
    // SAFETY: close_range only touches the child's descriptor table.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_tp_files"))
        .arg(work.dir())
        .current_dir(work.dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn setpriv");
    let mut p = Proc::adopt(i32::try_from(child.id()).expect("pid"));
    drop(child);
    step(
        &work,
        "ready",
        wait_ready(&work, &mut p, Duration::from_secs(60)),
    );
    let status = fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap_or_default();
    assert!(
        status.contains("Uid:\t65534"),
        "not running as nobody: {status}"
    );
    dump_and_check_gone(&work, &mut p, &Opts::default());
    let dir = work.path("for-nobody");
    copy_dir(&work.img(), &dir);
    chown_r(&dir, 65534);
    let r = restore_as_nobody(&work, &dir);
    assert!(
        !pid_exists(p.pid),
        "a process appeared after an unprivileged restore: {}",
        r.stderr
    );
    assert!(r.failed(), "{:?} {}", r.status, r.stderr);
    assert!(
        !r.stderr.contains("credentials refused") && r.stderr.contains(": fork: "),
        "nobody's own credentials should pass preflight (and the restore fail later, \
         for lack of privilege): {}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------
// Load.

fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn maps_count(pid: i32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    stasis_tests::status_field(&st, "VmRSS")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Processes whose cwd is in `dir` (every program of a test runs there).
fn procs_in(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("/proc").filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c.starts_with(dir)) {
            out.push(pid);
        }
    }
    out
}

/// The last "descriptors open at exit: N" in a log.
fn fds_at_exit(log: &Path) -> Option<usize> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.split("descriptors open at exit: ").nth(1))
        .and_then(|n| n.trim().parse().ok())
}

#[test]
fn twenty_cycles_leak_nothing() {
    let work = Work::new("twenty_cycles");
    let opts = Opts::default();
    let mut p = started(&work, Program::Bin("tp_files"), &[]);
    let (fds0, maps0, rss0) = (fd_count(p.pid), maps_count(p.pid), rss_kib(p.pid));
    let mut stasis_fds: Vec<(usize, usize)> = Vec::new();
    for cycle in 1..=20 {
        dump_and_check_gone(&work, &mut p, &opts);
        let dump_fds = fds_at_exit(&work.img().join("dump.log"));
        p = restore_and_adopt(&work, p.pid, &opts);
        let restore_fds = fds_at_exit(&work.img().join("restore.log"));
        let (fds, maps, rss) = (fd_count(p.pid), maps_count(p.pid), rss_kib(p.pid));
        assert_eq!(fds, fds0, "cycle {cycle}: target descriptors");
        assert_eq!(maps, maps0, "cycle {cycle}: target mappings");
        assert!(
            rss <= rss0 * 2 + 4096,
            "cycle {cycle}: target VmRSS grew from {rss0} to {rss} KiB"
        );
        let procs = procs_in(work.dir());
        assert_eq!(
            procs,
            vec![p.pid],
            "cycle {cycle}: processes in the work dir"
        );
        let (Some(d), Some(r)) = (dump_fds, restore_fds) else {
            fail(
                &work,
                format!("cycle {cycle}: no descriptor count in the logs"),
            );
        };
        stasis_fds.push((d, r));
    }
    assert!(
        stasis_fds.windows(2).all(|w| w[0] == w[1]),
        "stasis's own descriptors at exit changed across cycles: {stasis_fds:?}"
    );
    finish(&work, &mut p, Duration::from_secs(60)).assert_pass(&work);
}

#[test]
fn five_thousand_mappings_and_a_thousand_files() {
    let work = Work::new("load_maps_files");
    let opts = Opts {
        ready_timeout: Duration::from_secs(120),
        finish_timeout: Duration::from_secs(120),
        ..Opts::default()
    };
    let mut p = started(&work, Program::Bin("tp_load"), &[]);
    let (maps0, fds0) = (maps_count(p.pid), fd_count(p.pid));
    assert!(maps0 >= 5000 && fds0 >= 1000, "{maps0} maps, {fds0} fds");
    dump_and_check_gone(&work, &mut p, &opts);
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    assert_eq!(fd_count(r.pid), fds0, "descriptors after restore");
    assert_eq!(maps_count(r.pid), maps0, "mappings after restore");
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

#[test]
fn negative_load() {
    let work = Work::new("negative_load");
    let out = run_plain(
        &work,
        Program::Bin("tp_load"),
        &["--maps", "50", "--files", "10", "--corrupt"],
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

// ---------------------------------------------------------------------------
// Trees: load, all or nothing, and dumps that fail or die.

/// A small tree with threads: 6 processes of 2 threads, 60 mappings and 12
/// files in all.
const TREE_SMALL: &[&str] = &[
    "--procs",
    "6",
    "--threads",
    "2",
    "--maps",
    "60",
    "--files",
    "12",
];

/// Every process of the tree under `root` (root first), through
/// /proc/PID/task/TID/children.
fn tree_pids(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        out.push(p);
        for t in tasks_of(p) {
            let kids =
                fs::read_to_string(format!("/proc/{p}/task/{t}/children")).unwrap_or_default();
            queue.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<i32>().ok()),
            );
        }
    }
    out
}

fn tasks_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The PIDs (processes and zombies) an image holds.
fn image_pids(work: &Work, dir: &Path) -> Vec<i32> {
    let v = show(work, dir);
    let mut out = Vec::new();
    for key in ["processes", "zombies"] {
        for p in v["inventory"][key].as_array().into_iter().flatten() {
            if let Some(pid) = p["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
                out.push(pid);
            }
        }
    }
    assert!(!out.is_empty(), "no PIDs in the image");
    out
}

/// Every thread of every process of the tree (`expect`: PID -> TIDs, as
/// before) exists, runs, and is neither stopped nor traced; waits up to 5 s
/// for a tracee released by a dying tracer.
fn check_tree_untraced(expect: &[(i32, Vec<i32>)]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = (|| {
            for (pid, tids) in expect {
                let now = tasks_of(*pid);
                if &now != tids {
                    return Err(format!("process {pid}: threads {tids:?} became {now:?}"));
                }
                for t in tids {
                    let stat = fs::read_to_string(format!("/proc/{pid}/task/{t}/stat"))
                        .map_err(|e| format!("task {t}: {e}"))?;
                    let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
                    if matches!(state, Some('t' | 'T' | 'Z' | 'X')) {
                        return Err(format!("task {t} of {pid} is in state {state:?}"));
                    }
                    let st = fs::read_to_string(format!("/proc/{pid}/task/{t}/status"))
                        .map_err(|e| format!("task {t}: {e}"))?;
                    let tracer = stasis_tests::status_field(&st, "TracerPid").unwrap_or_default();
                    if tracer != "0" {
                        return Err(format!("task {t} of {pid} is traced by {tracer}"));
                    }
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn tree_snapshot(root: i32) -> Vec<(i32, Vec<i32>)> {
    tree_pids(root)
        .into_iter()
        .map(|p| (p, tasks_of(p)))
        .collect()
}

/// After a failed restore: none of `pids` exists, not even as a zombie
/// reparented to us (the test process is a child subreaper). Reaps and
/// reports any left.
fn assert_pids_free(work: &Work, pids: &[i32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left: Vec<i32> = pids.to_vec();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        left.retain(|&p| pid_exists(p));
    }
    if left.is_empty() {
        return;
    }
    let states: Vec<String> = left
        .iter()
        .map(|p| {
            let st = fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            format!(
                "{p} (state {}, parent {})",
                stasis_tests::status_field(&st, "State").unwrap_or_default(),
                stasis_tests::status_field(&st, "PPid").unwrap_or_default()
            )
        })
        .collect();
    for &p in &left {
        // Ours to clean up: they came from our image.
        // SAFETY: plain kill of a PID the failed restore created.
        unsafe { libc::kill(p, libc::SIGKILL) };
        Proc::adopt(p).kill();
    }
    fail(
        work,
        format!(
            "{what}: processes of the tree left behind: {}",
            states.join(", ")
        ),
    );
}

/// A restore of a tree image that must fail naming `words`, leaving none
/// of the image's PIDs behind.
fn tree_restore_must_fail(
    work: &Work,
    pids: &[i32],
    env: &[(&str, &str)],
    words: &[&str],
    what: &str,
) {
    let r = run_stasis(work, &["restore", "-D", s(&work.img()), "-d"], env);
    assert_pids_free(work, pids, what);
    assert!(
        r.failed(),
        "{what}: restore did not fail: {:?} {}",
        r.status,
        r.stderr
    );
    for w in words {
        assert!(
            r.stderr.contains(w),
            "{what}: the error does not mention {w:?}: {}",
            r.stderr
        );
    }
}

#[test]
fn tree_of_fifty_processes_with_threads_under_load() {
    let work = Work::new("load_tree");
    let opts = Opts {
        ready_timeout: Duration::from_secs(120),
        finish_timeout: Duration::from_secs(120),
        ..Opts::default()
    };
    let args = ["--procs", "50", "--threads", "4"];
    let mut p = started(&work, Program::Bin("tp_load"), &args);
    let count = |root: i32| {
        let pids = tree_pids(root);
        let maps: usize = pids.iter().map(|&p| maps_count(p)).sum();
        let fds: usize = pids.iter().map(|&p| fd_count(p)).sum();
        let threads: usize = pids.iter().map(|&p| tasks_of(p).len()).sum();
        (pids.len(), threads, maps, fds)
    };
    let before = count(p.pid);
    assert!(
        before.0 == 50 && before.1 == 200 && before.2 >= 5000 && before.3 >= 1000,
        "processes, threads, maps, fds: {before:?}"
    );
    dump_and_check_gone(&work, &mut p, &opts);
    let mut r = restore_and_adopt(&work, p.pid, &opts);
    assert_eq!(
        count(r.pid),
        before,
        "processes, threads, maps, fds after restore"
    );
    step(
        &work,
        "restored tree",
        check_tree_untraced(&tree_snapshot(r.pid)),
    );
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

#[test]
fn negative_load_tree() {
    let work = Work::new("negative_load_tree");
    let out = run_plain(
        &work,
        Program::Bin("tp_load"),
        &[TREE_SMALL, &["--corrupt"]].concat(),
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains("process 5"),
        "{out:?}"
    );
}

/// A daemon's process group whose leader exited: if that leader's PID is
/// taken here, the group cannot be recreated, so the restore is refused
/// by name before anything is created (not restored into another group);
/// once the PID is free it restores.
#[test]
fn group_leader_pid_taken_refused() {
    let work = Work::new("group_leader_taken");
    let opts = Opts::default();
    let mut starter = started(&work, Program::Bin("tp_daemon"), &[]);
    let mut daemon = Proc::adopt(pidfile(&work, "daemon.pid"));
    dump_and_check_gone(&work, &mut daemon, &opts);
    let v = show(&work, &work.img());
    let procs = v["processes"].as_array().expect("processes").clone();
    let pids: Vec<i64> = procs.iter().filter_map(|p| p["pid"].as_i64()).collect();
    let group = procs
        .iter()
        .filter_map(|p| Some((p["pgid"].as_i64()?, p["sid"].as_i64()?)))
        .find(|(g, sid)| !pids.contains(g) && g != sid)
        .map(|(g, _)| g)
        .expect("a leaderless group in the image");
    let Some(mut holder) = take_pid(group as i32) else {
        eprintln!("group_leader_pid_taken_refused: PID {group} could not be taken; skipped");
        return;
    };
    restore_must_fail(
        &work,
        &work.img(),
        daemon.pid,
        &[],
        &["preflight", "process group", "--new-pid-ns"],
        "group leader PID taken",
    );
    holder.kill();
    let _ = holder.wait(Duration::from_secs(10));
    let mut r = restore_and_adopt(&work, daemon.pid, &opts);
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
    let _ = starter.wait(Duration::from_secs(10));
}

/// Creates a process with PID `pid` (clone3 with set_tid) that pauses
/// until killed; returns it.
fn take_pid(pid: i32) -> Option<Proc> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let set = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: a fork-like clone3 (no new stack); the child only makes raw
    // system calls (pause until killed) and never returns into Rust code
    // that could touch locks held by other threads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        loop {
            // SAFETY: raw pause in the child; it ends by SIGKILL.
            unsafe { libc::syscall(libc::SYS_pause) };
        }
    }
    (r == i64::from(pid)).then(|| Proc::adopt(pid))
}

/// A tree image (processes, threads, zombies, a stopped process) failing
/// to restore at every stage and for real reasons leaves none of its PIDs.
#[test]
fn restore_tree_fails_at_every_stage_leaving_nothing() {
    for (prog, args) in [("tp_load", TREE_SMALL), ("tp_tree", &[][..])] {
        let work = Work::new(&format!("restore_tree_faults_{prog}"));
        let (root, _) = dumped_image(&work, Program::Bin(prog), args);
        let pids = image_pids(&work, &work.img());
        assert!(pids.len() >= 6, "{prog}: {pids:?}");
        for stage in [
            "validate",
            "preflight",
            "fork",
            "memory",
            "attributes",
            "credentials",
            "registers",
            "resume",
        ] {
            let fault = format!("restore:{stage}");
            tree_restore_must_fail(
                &work,
                &pids,
                &[("STASIS_FAULT", &fault)],
                &[&format!(": {stage}: ")],
                &format!("{prog} {fault}"),
            );
        }
        // One PID of the tree (the last, a leaf or a zombie) taken: refused
        // by the preflight, and, with the preflight's check skipped (the
        // PID taken in between), by the fork of its parent.
        let victim = *pids.last().expect("pids");
        if let Some(mut taker) = take_pid(victim) {
            let others: Vec<i32> = pids.iter().copied().filter(|&p| p != victim).collect();
            tree_restore_must_fail(
                &work,
                &others,
                &[],
                &["preflight", &victim.to_string(), "already in use"],
                &format!("{prog}: PID {victim} taken"),
            );
            tree_restore_must_fail(
                &work,
                &others,
                &[("STASIS_FAULT", "restore:skip-pid-check")],
                &["fork", &victim.to_string(), "already in use"],
                &format!("{prog}: PID {victim} taken after the preflight"),
            );
            // The foreign holder of the PID is never touched.
            assert_eq!(
                taker.poll(),
                Ok(None),
                "{prog}: the process holding PID {victim} was killed by the failed restore"
            );
            taker.kill();
        } else {
            eprintln!("skipped the taken-PID case: PID {victim} could not be taken");
        }
        if prog == "tp_load" {
            // A file of a non-root process (process 5) gone.
            let f = work.path("files/p5-f0");
            let moved = work.path("p5-f0.moved");
            fs::rename(&f, &moved).expect("move file");
            tree_restore_must_fail(
                &work,
                &pids,
                &[],
                &["preflight", "p5-f0"],
                "file of a child deleted",
            );
            fs::rename(&moved, &f).expect("move back");
        }
        // Still restorable, and correct.
        work.reset_go();
        let mut r = restore_and_adopt(&work, root, &Opts::default());
        finish(&work, &mut r, Duration::from_secs(60)).assert_pass(&work);
    }
}

/// Dumps of a tree with threads failing at every stage, or a remote
/// syscall failing in a later process, leave every process and thread
/// running, untraced and intact.
#[test]
fn dump_of_tree_fails_at_every_stage() {
    let work = Work::new("dump_tree_fault_stages");
    let mut p = started(&work, Program::Bin("tp_load"), TREE_SMALL);
    let snap = tree_snapshot(p.pid);
    assert_eq!(snap.len(), 6, "{snap:?}");
    let cases: &[(&str, &str)] = &[
        ("dump:freeze", "freeze"),
        ("dump:collect", "collect"),
        ("dump:memory", "memory"),
        ("dump:write image", "write image"),
        ("dump:commit", "commit"),
        ("sys:syscall-exit:1", "query"),
        ("sys:syscall-exit:20", "query"),
        ("sys:syscall-exit:40", "query"),
    ];
    for (i, (fault, stage)) in cases.iter().enumerate() {
        let dir = work.path(&format!("img-{i}"));
        let run = dump_r(&work, p.pid, &dir, &[("STASIS_FAULT", fault)]);
        assert!(
            run.failed() && run.stderr.contains(&format!(": {stage}: ")),
            "STASIS_FAULT={fault}: expected a failure naming stage {stage:?}: {:?} {}",
            run.status,
            run.stderr
        );
        step(
            &work,
            &format!("tree after {fault}"),
            check_tree_untraced(&snap),
        );
        assert!(
            !dir.join("inventory.img").exists(),
            "STASIS_FAULT={fault} left an inventory.img"
        );
    }
    finish(&work, &mut p, Duration::from_secs(60)).assert_pass(&work);
}

/// The dumper of a tree with threads SIGKILLed at named points (in the
/// freeze of a later process, inside remote syscalls of later processes,
/// in the commit) leaves every process and thread running, untraced and
/// intact.
#[test]
fn kill_dumper_of_tree_at_every_point() {
    let work = Work::new("kill_tree");
    let mut p = started(&work, Program::Bin("tp_load"), TREE_SMALL);
    let snap = tree_snapshot(p.pid);
    let points: Vec<&str> = KILL_POINTS
        .iter()
        .copied()
        .chain([
            "freeze-seized:7",
            "freeze-seized:12",
            "inject-set-regs:20",
            "syscall-entry:30",
            "syscall-exit:45",
            "finish-regs:3",
            "finish-unpatch:5",
            "heal-frame:6",
        ])
        .collect();
    for (i, point) in points.iter().enumerate() {
        let dir = work.path(&format!("img-{i}"));
        let mut tries = 0;
        let run = loop {
            let run = dump_r(&work, p.pid, &dir, &[("STASIS_KILL_AT", point)]);
            tries += 1;
            if tries < 200 && run.failed() && run.stderr.contains("healing stub") {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            break run;
        };
        assert!(
            run.killed_by_sigkill(),
            "STASIS_KILL_AT={point}: the dumper was not killed there: {:?} {}{}",
            run.status,
            run.stderr,
            work.diagnostics()
        );
        step(
            &work,
            &format!("tree after the dumper was killed at {point}"),
            check_tree_untraced(&snap),
        );
        let complete = dir.join("inventory.img").exists();
        assert_eq!(
            complete,
            AFTER_COMMIT.contains(point),
            "STASIS_KILL_AT={point}: inventory.img present: {complete}"
        );
    }
    finish(&work, &mut p, Duration::from_secs(60)).assert_pass(&work);
}
