//! `stasis bench --quick` as a correctness smoke test: every case must dump,
//! restore and verify (PASS). Speed is not asserted here.

mod common;

use std::process::Command;

#[test]
fn bench_quick_verifies_every_case() {
    if !nix_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let work = common::Work::new("bench");
    let out = Command::new(common::stasis_bin())
        .args([
            "bench",
            "--quick",
            "--size-mib",
            "16",
            "--count",
            "200",
            "--dir",
        ])
        .arg(work.dir())
        .arg("--workload")
        .arg(env!("CARGO_BIN_EXE_bench_workload"))
        .output()
        .expect("run stasis bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stasis bench failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("remote syscalls per restore"), "{stdout}");
    for case in [
        "dense 16 MiB",
        "dense 64 MiB",
        "sparse 16 MiB",
        "200 small maps",
        "tiny",
        "tree of 10 processes",
        "8 threads",
    ] {
        assert!(stdout.contains(case), "no row for {case}:\n{stdout}");
    }
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
