//! Go programs: `go/tp_go.go` (goroutines on several threads, asynchronous
//! preemption by SIGURG, per-thread sigaltstacks, vDSO time, futexes, the
//! netpoller on nonblocking pipes, timers, a GC after restore) carries on
//! after a checkpoint and verifies itself.
//!
//! Built once per run with the `go` toolchain (Debian's `golang`); every
//! test skips, saying so, only when there is no `go` in PATH, and fails if
//! the build fails.

mod common;

use common::*;
use std::fs;
use std::time::Duration;

/// The program, or `None` (the test is skipped) without a toolchain.
fn opts() -> Opts {
    Opts {
        ready_timeout: Duration::from_secs(60),
        finish_timeout: Duration::from_secs(90),
        ..Opts::default()
    }
}

#[test]
fn selfcheck_go() {
    if !have_go("selfcheck_go") {
        return;
    }
    let work = Work::new("selfcheck_go");
    run_plain(&work, Program::Go, &[]).assert_pass(&work);
}

/// The negative control: one map entry changed after go must be reported.
#[test]
fn negative_go() {
    if !have_go("negative_go") {
        return;
    }
    let work = Work::new("negative_go");
    let out = run_plain(&work, Program::Go, &["--corrupt"]);
    assert!(
        out.result.starts_with("FAIL: ") && out.result.contains("hash differs"),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
    assert_eq!(out.exit, Exit::Code(1), "{out:?}");
}

/// Dump, kill, restore with GOMAXPROCS=4.
#[test]
fn cr_go() {
    if !have_go("cr_go") {
        return;
    }
    let work = Work::new("cr_go");
    run_case(&work, Program::Go, &[], &opts()).assert_pass(&work);
}

/// One P: every goroutine switch among the spinners is a preemption.
#[test]
fn cr_go_one_proc() {
    if !have_go("cr_go_one_proc") {
        return;
    }
    let work = Work::new("cr_go_one_proc");
    run_case(&work, Program::Go, &["--procs", "1"], &opts()).assert_pass(&work);
}

/// `dump -R`: the dump alone must leave the program unharmed (the dump's
/// injected syscalls once wrote 7.5 KiB below each thread's stack pointer,
/// which in Go is the neighbouring goroutines' stacks).
#[test]
fn go_dump_leave_running() {
    if !have_go("go_dump_leave_running") {
        return;
    }
    let o = opts();
    let work = Work::new("go_dump_leave_running");
    let mut p = start(&work, Program::Go, &[]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, o.ready_timeout),
    );
    for i in 0..3 {
        let _ = fs::remove_dir_all(work.img());
        let out = dump(&work, p.pid, &["-R"], o.stasis_timeout);
        if !out.success() {
            fail(&work, format!("dump -R #{i} failed: {}", out.stderr));
        }
        step(&work, "after dump -R", p.check_running_untraced());
        std::thread::sleep(Duration::from_millis(100));
    }
    finish(&work, &mut p, o.finish_timeout).assert_pass(&work);
}

/// A restored Go program dumped and restored again.
#[test]
fn cr_go_twice() {
    if !have_go("cr_go_twice") {
        return;
    }
    let o = opts();
    let work = Work::new("cr_go_twice");
    let mut p = start(&work, Program::Go, &[]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, o.ready_timeout),
    );
    dump_and_check_gone(&work, &mut p, &o);
    let mut r = restore_and_adopt(&work, p.pid, &o);
    std::thread::sleep(Duration::from_millis(300));
    fs::remove_dir_all(work.img()).expect("remove first image");
    dump_and_check_gone(&work, &mut r, &o);
    let mut r2 = restore_and_adopt(&work, p.pid, &o);
    finish(&work, &mut r2, o.finish_timeout).assert_pass(&work);
}
