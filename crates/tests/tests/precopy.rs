//! End-to-end tests for pre-copy (issue 13): `stasis pre-dump` twice, then
//! `dump --prev-images-dir --track-mem`, restore through the chain; the
//! program (tp_precopy) writes memory between rounds, maps, unmaps and
//! moves areas, and checks every page itself after the restore.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn pre_dump(work: &Work, pid: i32, dir: &str, extra: &[&str]) {
    let d = work.path(dir);
    let pid_s = pid.to_string();
    let log = format!("{dir}.log");
    let mut args = vec![
        "pre-dump",
        "-t",
        &pid_s,
        "-D",
        d.to_str().expect("utf-8"),
        "-o",
        &log,
        "-v4",
    ];
    args.extend_from_slice(extra);
    let out = stasis(work, &args, T);
    if !out.success() {
        fail(work, format!("pre-dump {dir} failed: {}", out.stderr));
    }
}

/// The descriptors of `pid` as `fd -> link`.
fn fds(pid: i32) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let l = fs::read_link(e.path()).ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    l.display().to_string(),
                ))
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Asks the program for step `k`; returns the pages it wrote.
fn step(work: &Work, proc: &mut Proc, k: u64) -> u64 {
    fs::write(work.path("step"), format!("{k}\n")).expect("write step");
    let deadline = Instant::now() + T;
    loop {
        if let Some((s, n)) = fs::read_to_string(work.path("stepped")).ok().and_then(|l| {
            let mut w = l.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((w.next()??, w.next()??))
        }) {
            if s == k {
                return n;
            }
        }
        if let Ok(Some(e)) = proc.poll() {
            fail(work, format!("program exited during step {k}: {e:?}"));
        }
        if Instant::now() > deadline {
            fail(work, format!("no answer to step {k}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Bytes of page data of process `pid` in the image at `dir` (its page
/// file minus the header). Only the root's: a dump unshares the pages it
/// reads (process_vm_readv pins them), so a child's copy-on-write pages
/// are its own in the next round.
fn page_bytes(dir: &Path, pid: i32) -> u64 {
    let f = dir.join(format!("pages-{pid}.img"));
    fs::metadata(&f).expect("stat page file").len() - 4096
}

/// The holder PID recorded in the image at `dir`, if any.
fn holder(work: &Work, dir: &Path) -> Option<i32> {
    show(work, dir)["inventory"]["tracking"]["holder_pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
}

/// Waits until `pid` is gone (reaping it if it became our child).
fn wait_gone(work: &Work, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_exists(pid) {
        let mut st = 0;
        // SAFETY: WNOHANG wait for one PID that may have been reparented to us.
        unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if Instant::now() > deadline {
            fail(work, format!("PID {pid} still exists"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two pre-dumps with writes between, a final dump; returns the running
/// (killed) program and the fresh pages of the last step.
fn chain(work: &Work, args: &[&str]) -> (Proc, u64) {
    let mut p = start(work, Program::Bin("tp_precopy"), args);
    step_ok(work, wait_ready(work, &mut p, T));
    let before = fds(p.pid);
    pre_dump(work, p.pid, "pre1", &[]);
    // The tracker is not in the target's descriptor table, and the
    // program goes on running.
    assert_eq!(fds(p.pid), before, "{}", work.diagnostics());
    let h1 = holder(work, &work.path("pre1")).expect("pre1 records its holder");
    let n1 = step(work, &mut p, 1);
    pre_dump(work, p.pid, "pre2", &["--prev-images-dir", "../pre1"]);
    assert_eq!(fds(p.pid), before, "{}", work.diagnostics());
    wait_gone(work, h1);
    let n2 = step(work, &mut p, 2);
    let pre1 = page_bytes(&work.path("pre1"), p.pid);
    let pre2 = page_bytes(&work.path("pre2"), p.pid);
    // Round 2 saved what step 1 wrote, and far less than round 1.
    assert!(
        pre2 >= n1 * 4096 && pre2 < pre1 / 4,
        "pre1 {pre1} bytes, pre2 {pre2} bytes, step 1 wrote {n1} pages{}",
        work.diagnostics()
    );
    let h2 = holder(work, &work.path("pre2")).expect("pre2 records its holder");
    let opts = Opts {
        dump_extra: vec!["--prev-images-dir", "../pre2", "--track-mem"],
        ..Opts::default()
    };
    dump_and_check_gone(work, &mut p, &opts);
    wait_gone(work, h2);
    (p, n2)
}

#[test]
fn precopy_two_pre_dumps_then_dump() {
    let work = Work::new("precopy_chain");
    let (p, n2) = chain(&work, &[]);
    let pre1 = page_bytes(&work.path("pre1"), p.pid);
    let last = page_bytes(&work.img(), p.pid);
    assert!(
        last >= n2 * 4096 && last < pre1 / 10,
        "final {last} bytes, pre1 {pre1} bytes, step 2 wrote {n2} pages{}",
        work.diagnostics()
    );
    let v = show(&work, &work.img());
    assert!(
        v.to_string().contains("\"in_parent\":true"),
        "no run refers to the parent{}",
        work.diagnostics()
    );
    // The final dump wrote into page files allocated before the freeze,
    // and left none of them behind.
    let log = fs::read_to_string(work.img().join("dump.log")).unwrap_or_default();
    assert!(
        log.contains("allocated ahead"),
        "no page file allocated ahead{}",
        work.diagnostics()
    );
    assert_eq!(partial_entries(&work.img()), Vec::<String>::new());
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// Names in `dir` a writer keeps only while it works (`.stasis-partial-*`).
fn partial_entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".stasis-partial-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A final dump that fails after its page files were allocated ahead
/// leaves the program running, untraced, and the directory without an
/// image or any of those files; the next dump then succeeds.
#[test]
fn precopy_failed_final_dump_leaves_nothing() {
    let work = Work::new("precopy_failed_final");
    let mut p = start(&work, Program::Bin("tp_precopy"), &["--pages", "4096"]);
    step_ok(&work, wait_ready(&work, &mut p, T));
    pre_dump(&work, p.pid, "pre1", &[]);
    step(&work, &mut p, 1);
    fs::create_dir_all(work.img()).expect("create img dir");
    let (pid_s, img) = (p.pid.to_string(), work.img());
    let img_s = img.to_str().expect("utf-8 path");
    let (ok, err) = stasis_env(
        &[
            "dump",
            "-t",
            &pid_s,
            "-D",
            img_s,
            "--prev-images-dir",
            "../pre1",
            "--track-mem",
            "-o",
            "fail.log",
            "-v4",
        ],
        &[("STASIS_FAULT", "dump:write image")],
    );
    assert!(!ok && err.contains("injected"), "{err}");
    let log = fs::read_to_string(work.img().join("fail.log")).unwrap_or_default();
    assert!(
        log.contains("allocated ahead"),
        "nothing allocated ahead: {log}"
    );
    assert!(!work.img().join("inventory.img").exists());
    assert_eq!(partial_entries(&work.img()), Vec::<String>::new());
    step_ok(&work, p.check_running_untraced());
    step(&work, &mut p, 2);
    let opts = Opts {
        dump_extra: vec!["--prev-images-dir", "../pre1", "--track-mem"],
        ..Opts::default()
    };
    dump_and_check_gone(&work, &mut p, &opts);
    assert_eq!(partial_entries(&work.img()), Vec::<String>::new());
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// A tree: a child tracked since the first pre-dump exits before the
/// dump, another is forked after the last pre-dump (saved whole).
#[test]
fn precopy_tree_fork_and_exit() {
    let work = Work::new("precopy_tree");
    let (p, _) = chain(&work, &["--fork"]);
    let v = show(&work, &work.path("pre2"));
    let tracked = v["inventory"]["tracking"]["procs"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        tracked,
        2,
        "pre2 tracks parent and child{}",
        work.diagnostics()
    );
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

#[test]
fn negative_precopy_corrupt() {
    let work = Work::new("precopy_corrupt");
    let (p, _) = chain(&work, &["--corrupt"]);
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    let out = finish(&work, &mut r, T);
    assert!(
        out.result.starts_with("FAIL") && out.result.contains("area page"),
        "corrupted run did not fail: {:?}",
        out.result
    );
}

/// A damaged or missing parent is refused before anything is created.
#[test]
fn precopy_parent_damaged_refused() {
    let work = Work::new("precopy_parent");
    let (p, _) = chain(&work, &[]);
    let pages = work.path(&format!("pre1/pages-{}.img", p.pid));
    let mut b = fs::read(&pages).expect("read pre1 pages");
    let at = b.len() / 2;
    b[at] ^= 1;
    fs::write(&pages, &b).expect("write");
    let out = restore_detached(&work, &[], T);
    assert!(
        !out.success() && out.stderr.contains("checksum") && out.stderr.contains("pre1"),
        "{out:?}"
    );
    assert!(!pid_exists(p.pid), "a process was created");
    b[at] ^= 1;
    fs::write(&pages, &b).expect("write");
    fs::rename(work.path("pre2"), work.path("pre2.moved")).expect("rename");
    let out = restore_detached(&work, &[], T);
    assert!(!out.success() && out.stderr.contains("pre2"), "{out:?}");
    assert!(!pid_exists(p.pid), "a process was created");
    // Put back, the chain restores.
    fs::rename(work.path("pre2.moved"), work.path("pre2")).expect("rename");
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// A dump without `--prev-images-dir` of a tracked process saves every
/// page and ends the tracking; a dump naming a missing parent is refused
/// with the process left running.
#[test]
fn precopy_plain_dump_after_pre_dump() {
    let work = Work::new("precopy_plain");
    let mut p = start(&work, Program::Bin("tp_precopy"), &[]);
    step_ok(&work, wait_ready(&work, &mut p, T));
    pre_dump(&work, p.pid, "pre1", &[]);
    let h1 = holder(&work, &work.path("pre1")).expect("holder");
    step(&work, &mut p, 1);
    let out = dump(&work, p.pid, &["--prev-images-dir", "../nonexistent"], T);
    assert!(
        !out.success() && out.stderr.contains("nonexistent"),
        "{out:?}"
    );
    step_ok(&work, p.check_running_untraced());
    assert!(pid_exists(h1), "the failed dump ended the tracking");
    dump_and_check_gone(&work, &mut p, &Opts::default());
    wait_gone(&work, h1);
    let pre1 = page_bytes(&work.path("pre1"), p.pid);
    assert!(
        page_bytes(&work.img(), p.pid) >= pre1,
        "{}",
        work.diagnostics()
    );
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

fn step_ok<T>(work: &Work, r: Result<T, String>) -> T {
    common::step(work, "waiting for ready", r)
}

/// A free TCP port on the loopback (the listener is closed again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `dump --page-server` sends the image to `stasis page-server` over the
/// loopback; the server's copy (verified before it answers) restores.
/// Without a server the dump is refused and the process runs on.
#[test]
fn page_server_loopback() {
    let work = Work::new("page_server");
    let mut p = start(&work, Program::Bin("tp_precopy"), &["--pages", "4096"]);
    step_ok(&work, wait_ready(&work, &mut p, T));
    let port = free_port().to_string();
    let local = work.path("local");
    let pid_s = p.pid.to_string();
    let dump_args = [
        "dump",
        "-t",
        &pid_s,
        "-D",
        local.to_str().expect("utf-8"),
        "-o",
        "dump.log",
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
    ];
    let out = stasis(&work, &dump_args, T);
    assert!(
        !out.success() && out.stderr.contains("page server") && out.stderr.contains(&pid_s),
        "{out:?}"
    );
    step_ok(&work, p.check_running_untraced());

    let log = work.path("ps.log");
    let img = work.img();
    let mut server = std::process::Command::new(stasis_bin())
        .args([
            "page-server",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "-D",
        ])
        .arg(&img)
        .arg("-o")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start page server");
    let deadline = Instant::now() + T;
    while !fs::read_to_string(&log).is_ok_and(|l| l.contains("listening")) {
        assert!(Instant::now() < deadline, "page server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = stasis(&work, &dump_args, T);
    let served = server.wait().expect("page server");
    if !out.success() || !served.success() {
        let _ = server.kill();
        fail(&work, format!("dump {out:?}, page server {served:?}"));
    }
    assert_eq!(
        step_ok(&work, p.wait(Duration::from_secs(10))),
        Exit::Signal(libc::SIGKILL)
    );
    assert!(img.join("inventory.img").exists() && local.join("inventory.img").exists());
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// Pre-dump `program`, dump it against the pre-dump, restore: PASS, and
/// the final page file under `1/div` of the pre-dump's (`div` 0: the
/// final image takes some of its pages from the pre-dump).
fn pre_dump_then_dump(work: &Work, program: Program, div: u64) {
    let mut p = start(work, program, &[]);
    step_ok(work, wait_ready(work, &mut p, T));
    pre_dump(work, p.pid, "pre1", &[]);
    let opts = Opts {
        dump_extra: vec!["--prev-images-dir", "../pre1", "--track-mem"],
        ..Opts::default()
    };
    dump_and_check_gone(work, &mut p, &opts);
    let (pre1, last) = (
        page_bytes(&work.path("pre1"), p.pid),
        page_bytes(&work.img(), p.pid),
    );
    match pre1.checked_div(div) {
        None => {
            let (own, parent) = own_and_parent_pages(&show(work, &work.img()));
            assert!(
                parent > 0,
                "the final image ({own} pages of its own, {last} bytes; pre1 {pre1}) takes no page from the pre-dump{}",
                work.diagnostics()
            );
        }
        Some(limit) => assert!(
            last < limit,
            "pre1 {pre1} bytes, final {last}{}",
            work.diagnostics()
        ),
    }
    let mut r = restore_and_adopt(work, p.pid, &Opts::default());
    finish(work, &mut r, T).assert_pass(work);
}

/// A CPython interpreter (tp_python).
#[test]
fn precopy_python() {
    pre_dump_then_dump(&Work::new("precopy_python"), Program::Python, 2);
}

/// A Go program (tp_go: goroutines, runtime threads, GC). Its spinning
/// goroutines allocate all the time, and the runtime rewrites most of its
/// heap within the brief round's copy (the program runs meanwhile): the
/// final dump saves 70-90% of what the pre-dump did (measured with the
/// debug build; under load, with more time between the two dumps, the
/// final one was larger once: the heap grows), so only "some pages are
/// taken from the pre-dump" is asked.
#[test]
fn precopy_go() {
    match go_program() {
        Ok(_) => pre_dump_then_dump(&Work::new("precopy_go"), Program::Go, 0),
        Err(e) if e == NO_GO => eprintln!("SKIP precopy_go: {NO_GO}"),
        Err(e) => panic!("precopy_go: {e}"),
    }
}

/// A round that fails after re-arming the trackers (injected fault after
/// the pages are written): the tree runs on, the parent's tracking is
/// ended (it no longer tells what changed since the parent), and the next
/// dump against that parent saves every page; the restore passes.
#[test]
fn precopy_failed_round_ends_tracking() {
    let work = Work::new("precopy_failed_round");
    let mut p = start(&work, Program::Bin("tp_precopy"), &["--pages", "4096"]);
    step_ok(&work, wait_ready(&work, &mut p, T));
    pre_dump(&work, p.pid, "pre1", &[]);
    let h1 = holder(&work, &work.path("pre1")).expect("holder");
    step(&work, &mut p, 1);
    let pre2 = work.path("pre2");
    let out = std::process::Command::new(stasis_bin())
        .args(["pre-dump", "-t", &p.pid.to_string(), "-D"])
        .arg(&pre2)
        .args(["--prev-images-dir", "../pre1"])
        .env("STASIS_FAULT", "dump:write image")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run stasis");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("injected"), "{err}");
    assert!(!pre2.join("inventory.img").exists());
    step_ok(&work, p.check_running_untraced());
    wait_gone(&work, h1);
    step(&work, &mut p, 2);
    let opts = Opts {
        dump_extra: vec!["--prev-images-dir", "../pre1", "--track-mem"],
        ..Opts::default()
    };
    dump_and_check_gone(&work, &mut p, &opts);
    let (pre1, last) = (
        page_bytes(&work.path("pre1"), p.pid),
        page_bytes(&work.img(), p.pid),
    );
    assert!(
        last > pre1 / 2,
        "pre1 {pre1} bytes, final {last}: tracking not ended{}",
        work.diagnostics()
    );
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// `stasis pre-dump` of `pid` into `dir` with `env` set; its log is
/// `DIR/pre.log`. Returns whether it succeeded and its stderr.
fn pre_dump_env(
    work: &Work,
    pid: i32,
    dir: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (bool, String) {
    let d = work.path(dir);
    let pid = pid.to_string();
    let mut args = vec!["pre-dump", "-t", &pid, "-D", d.to_str().expect("utf-8")];
    args.extend_from_slice(&["-o", "pre.log", "-v4"]);
    args.extend_from_slice(extra);
    stasis_env(&args, env)
}

/// Runs stasis with `args` and `env` set: whether it succeeded, and stderr.
fn stasis_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(stasis_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run stasis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Three brief pre-dump rounds and the final dump of tp_precopy writing
/// 16384 pages in turn all the time (`--churn`): each round resumes the
/// program before copying its pages, so it writes pages while they are
/// copied. `lose` sets the negative control's hook on the last round.
fn brief_chain(work: &Work, churn: &str, lose: Option<&str>) -> Proc {
    let mut p = start(work, Program::Bin("tp_precopy"), &["--churn", churn]);
    step_ok(work, wait_ready(work, &mut p, T));
    let rounds = [
        ("pre1", None),
        ("pre2", Some("../pre1")),
        ("pre3", Some("../pre2")),
    ];
    for (dir, prev) in rounds {
        let mut extra = vec![];
        if let Some(prev) = prev {
            extra = vec!["--prev-images-dir", prev];
        }
        let env: Vec<(&str, &str)> = match lose {
            Some(ms) if dir == "pre3" => vec![("STASIS_TEST_PRECOPY_LOSE_WRITES", ms)],
            _ => vec![],
        };
        let (ok, err) = pre_dump_env(work, p.pid, dir, &extra, &env);
        if !ok {
            fail(work, format!("pre-dump {dir}: {err}"));
        }
        let log = fs::read_to_string(work.path(dir).join("pre.log")).unwrap_or_default();
        assert!(
            log.contains("copying pages while it runs"),
            "{dir}: not a brief round:\n{log}"
        );
        step_ok(work, p.check_running_untraced());
    }
    // The rounds after the first saved what was written since, not all.
    let (pre1, pre3) = (
        page_bytes(&work.path("pre1"), p.pid),
        page_bytes(&work.path("pre3"), p.pid),
    );
    assert!(
        pre3 > 0 && pre3 < pre1 / 2,
        "pre1 {pre1} bytes, pre3 {pre3}{}",
        work.diagnostics()
    );
    let opts = Opts {
        dump_extra: vec!["--prev-images-dir", "../pre3", "--track-mem"],
        ..Opts::default()
    };
    dump_and_check_gone(work, &mut p, &opts);
    p
}

/// Brief rounds keep every write: the program's pages, written while
/// each round copied them, are all right after the restore through the
/// chain. A pre-dump image itself is refused by restore (its memory is
/// not of one instant), nothing created.
#[test]
fn precopy_brief_rounds_writer() {
    let work = Work::new("precopy_brief");
    let p = brief_chain(&work, "16384", None);
    let pre3 = work.path("pre3");
    let out = stasis(
        &work,
        &["restore", "-D", pre3.to_str().expect("utf-8"), "-d"],
        T,
    );
    assert!(
        !out.success() && out.stderr.contains("is a pre-dump"),
        "{out:?}"
    );
    assert!(!pid_exists(p.pid), "a process was created");
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// The same with a churned area of 260 MiB: the page plan scans it in
/// two halves at once (memory::scan_halves), re-arming the tracker in the
/// same pass, while the program writes it all through the rounds.
#[test]
fn precopy_brief_rounds_large_area() {
    let work = Work::new("precopy_brief_large");
    let p = brief_chain(&work, "66560", None);
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// Negative control: the last round drops the marks of the writes made
/// during its copy (test hook: it write-protects everything again after
/// the copy and a 300 ms wait, while the program runs). The final dump
/// then takes those pages' stale copies from the round, and the program
/// must FAIL on its churned pages.
#[test]
fn negative_precopy_brief_lost_writes() {
    let work = Work::new("precopy_brief_lost");
    let p = brief_chain(&work, "16384", Some("300"));
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    let out = finish(&work, &mut r, T);
    assert!(
        out.result.starts_with("FAIL") && out.result.contains("hot page"),
        "writes lost during the copy were not detected: {:?}",
        out.result
    );
}

/// `stasis dedup -D DIR` with `env` set: whether it succeeded, and stderr.
fn dedup_env(work: &Work, env: &[(&str, &str)]) -> (bool, String) {
    dedup_dir(&work.img(), env)
}

fn dedup_dir(dir: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let d = dir.to_str().expect("utf-8");
    stasis_env(&["dedup", "-D", d, "-o", "dedup.log", "-v4"], env)
}

/// A successful dedup of the final image, then its parents deleted.
fn dedup_and_drop_parents(work: &Work) {
    let (ok, err) = dedup_env(work, &[]);
    assert!(ok, "dedup failed: {err}{}", work.diagnostics());
    fs::remove_dir_all(work.path("pre1")).expect("remove pre1");
    fs::remove_dir_all(work.path("pre2")).expect("remove pre2");
}

/// Every file of the image directory with its bytes (the log aside).
fn image_files(work: &Work) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(work.img())
        .expect("read image dir")
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            (!name.ends_with(".log")).then(|| (name, fs::read(e.path()).expect("read")))
        })
        .collect();
    v.sort();
    v
}

/// Asserts that the image directory holds exactly `before`.
fn assert_unchanged(work: &Work, before: &[(String, Vec<u8>)], what: &str) {
    assert!(image_files(work) == before, "{what} changed the image");
}

/// Flips one byte in the middle of `path`'s page data.
fn flip(path: &Path) -> Vec<u8> {
    let mut b = fs::read(path).expect("read");
    let at = 4096 + (b.len() - 4096) / 2;
    b[at] ^= 1;
    fs::write(path, &b).expect("write");
    b
}

/// Two pre-dumps and a dump, `stasis dedup -D` on the final image, the
/// parent directories deleted: the final image restores alone and the
/// program checks every page.
#[test]
fn precopy_dedup_standalone() {
    let work = Work::new("precopy_dedup");
    let (p, _) = chain(&work, &["--fork"]);
    dedup_and_drop_parents(&work);
    let v = show(&work, &work.img());
    assert!(
        v["inventory"]["parent"].is_null() && !v.to_string().contains("\"in_parent\":true"),
        "dedup left a parent reference{}",
        work.diagnostics()
    );
    // Merged: the final image now holds at least pre1's pages.
    assert!(
        work.img()
            .join(format!("pages-{}.merged.img", p.pid))
            .exists(),
        "{}",
        work.diagnostics()
    );
    // A second dedup of a standalone image changes nothing.
    let before = image_files(&work);
    let (ok, err) = dedup_env(&work, &[]);
    assert!(ok, "second dedup failed: {err}");
    assert_unchanged(&work, &before, "a second dedup");
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// A dedup with a damaged parent page file, and one killed just before
/// its commit point, leave the image byte-identical and restorable
/// through its chain.
#[test]
fn negative_precopy_dedup_parent_damaged() {
    let work = Work::new("precopy_dedup_damaged");
    let (p, _) = chain(&work, &[]);
    let before = image_files(&work);
    let pages = work.path(&format!("pre1/pages-{}.img", p.pid));
    let mut b = flip(&pages);
    let (ok, err) = dedup_env(&work, &[]);
    assert!(
        !ok && err.contains("checksum")
            && err.contains("pre1")
            && err.contains("nothing was changed"),
        "dedup with a damaged parent: {ok} {err}"
    );
    assert_unchanged(&work, &before, "a refused dedup");
    let at = 4096 + (b.len() - 4096) / 2;
    b[at] ^= 1;
    fs::write(&pages, &b).expect("repair");
    // Killed after writing the merged files, before the inventory rename.
    let (ok, _) = dedup_env(&work, &[("STASIS_TEST_DEDUP_STOP", "1")]);
    assert!(!ok, "the stop hook did not stop the dedup");
    let inv = work.img().join("inventory.img");
    let old_inv = &before
        .iter()
        .find(|(n, _)| n == "inventory.img")
        .expect("inventory")
        .1;
    assert!(
        &fs::read(&inv).expect("read") == old_inv,
        "the inventory changed"
    );
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// An image after dedup with a flipped byte in its merged page file is
/// refused at restore, before any process exists.
#[test]
fn negative_precopy_dedup_flipped_byte() {
    let work = Work::new("precopy_dedup_flip");
    let (p, _) = chain(&work, &[]);
    dedup_and_drop_parents(&work);
    flip(&work.img().join(format!("pages-{}.merged.img", p.pid)));
    let out = restore_detached(&work, &[], T);
    assert!(
        !out.success() && out.stderr.contains("checksum") && out.stderr.contains("merged"),
        "{out:?}"
    );
    assert!(!pid_exists(p.pid), "a process was created");
}

/// A pre-dump image merged with its parent mid-chain: the parent is
/// deleted, the next dump takes the merged pre-dump as its parent (the
/// write tracking goes on), and the final image restores through it.
#[test]
fn precopy_dedup_pre_dump_mid_chain() {
    let work = Work::new("precopy_dedup_mid");
    let mut p = start(&work, Program::Bin("tp_precopy"), &[]);
    step_ok(&work, wait_ready(&work, &mut p, T));
    pre_dump(&work, p.pid, "pre1", &[]);
    step(&work, &mut p, 1);
    pre_dump(&work, p.pid, "pre2", &["--prev-images-dir", "../pre1"]);
    step(&work, &mut p, 2);
    let (ok, err) = dedup_dir(&work.path("pre2"), &[]);
    assert!(
        ok,
        "dedup of a pre-dump failed: {err}{}",
        work.diagnostics()
    );
    let v = show(&work, &work.path("pre2"));
    assert!(
        v["inventory"]["parent"].is_null() && v["inventory"]["pre_dump"] == true,
        "the merged pre-dump lost its pre_dump mark or kept its parent{}",
        work.diagnostics()
    );
    fs::remove_dir_all(work.path("pre1")).expect("remove pre1");
    let opts = Opts {
        dump_extra: vec!["--prev-images-dir", "../pre2", "--track-mem"],
        ..Opts::default()
    };
    dump_and_check_gone(&work, &mut p, &opts);
    assert!(
        show(&work, &work.img())
            .to_string()
            .contains("\"in_parent\":true"),
        "the final dump did not use the merged parent{}",
        work.diagnostics()
    );
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// tp_precopy `--advise`: a pre-dump, a second one that must use its
/// pre-read of smaps (nothing changed meanwhile), then the final dump with
/// the test hook that has the program apply MADV_DONTFORK to a whole
/// mapping between the pre-read and the freeze. `trust` is the negative
/// control's hook: the pre-read is used whatever ran meanwhile.
fn preread_chain(work: &Work, trust: bool) -> Proc {
    let mut p = start(
        work,
        Program::Bin("tp_precopy"),
        &["--pages", "1024", "--advise"],
    );
    step_ok(work, wait_ready(work, &mut p, T));
    pre_dump(work, p.pid, "pre1", &[]);
    let (ok, err) = pre_dump_env(work, p.pid, "pre2", &["--prev-images-dir", "../pre1"], &[]);
    assert!(ok, "pre-dump pre2: {err}");
    let log = fs::read_to_string(work.path("pre2").join("pre.log")).unwrap_or_default();
    assert!(
        log.contains("taken from the pre-read"),
        "pre2 did not use its pre-read:\n{log}"
    );
    let mut env = vec![("STASIS_TEST_PREREAD_SIGNAL", "300")];
    if trust {
        env.push(("STASIS_TEST_PREREAD_TRUST", "1"));
    }
    let img = work.img();
    let pid = p.pid.to_string();
    let args = [
        "dump",
        "-t",
        &pid,
        "-D",
        img.to_str().expect("utf-8"),
        "--prev-images-dir",
        "../pre2",
        "--track-mem",
        "-o",
        "dump.log",
        "-v4",
    ];
    let (ok, err) = stasis_env(&args, &env);
    if !ok {
        fail(work, format!("final dump failed: {err}"));
    }
    check_gone(work, &mut p);
    let log = fs::read_to_string(img.join("dump.log")).unwrap_or_default();
    assert!(log.contains("before the freeze"), "no pre-read:\n{log}");
    assert_eq!(
        log.contains("system call(s) that may change mappings ran meanwhile"),
        !trust,
        "{log}"
    );
    p
}

/// A mapping's flags changed between the final dump's pre-read of smaps
/// and its freeze (madvise on the whole mapping: the layout is the same)
/// are seen: the counted system call makes the dump read smaps again
/// while frozen, and the program finds its mapping still MADV_DONTFORK.
#[test]
fn precopy_preread_sees_advice() {
    let work = Work::new("precopy_preread");
    let p = preread_chain(&work, false);
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    finish(&work, &mut r, T).assert_pass(&work);
}

/// Negative control: the pre-read is trusted although the program applied
/// MADV_DONTFORK after it (test hook STASIS_TEST_PREREAD_TRUST): the
/// restored mapping lacks the advice and the program must FAIL.
#[test]
fn negative_precopy_preread_trusted() {
    let work = Work::new("precopy_preread_trusted");
    let p = preread_chain(&work, true);
    let mut r = restore_and_adopt(&work, p.pid, &Opts::default());
    let out = finish(&work, &mut r, T);
    assert!(
        out.result.starts_with("FAIL") && out.result.contains("MADV_DONTFORK"),
        "a stale pre-read went unnoticed: {:?}",
        out.result
    );
}
