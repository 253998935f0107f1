//! A file named external at the dump (criu's `--external
//! file[MNT_ID:INODE]`), with tp_extfile: saved without its path, and
//! handed back at restore with `--inherit-fd fd[N]:file[MNT_ID:INODE]`.

mod common;

use common::*;

#[test]
fn selfcheck_ext_file() {
    let work = Work::new("selfcheck_ext_file");
    run_plain(&work, Program::Bin("tp_extfile"), &[]).assert_pass(&work);
}

#[test]
fn negative_ext_file() {
    let work = Work::new("negative_ext_file");
    let out = run_plain(&work, Program::Bin("tp_extfile"), &["--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// The key criu gives the program's descriptor 42: its mount id (fdinfo)
/// and inode, in hex.
fn key_of(pid: i32) -> String {
    use std::os::unix::fs::MetadataExt;
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/42")).expect("fdinfo");
    let mnt: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("mnt_id");
    let ino = std::fs::metadata(format!("/proc/{pid}/fd/42"))
        .expect("fd 42")
        .ino();
    format!("file[{mnt:x}:{ino:x}]")
}

/// Dumped with `--external KEY`; a restore without `--inherit-fd` for it
/// is refused naming the key and leaves nothing; with `--inherit-fd
/// fd[0]:KEY` and another file on our descriptor 0, that file becomes the
/// program's descriptor 42 (its contents, its inode, writable).
fn ext_file(name: &str, args: &[&str]) -> Outcome {
    let work = Work::new(name);
    let mut opts = Opts::default();
    let mut p = start_ready(&work, Program::Bin("tp_extfile"), args, &opts);
    let key = key_of(p.pid);
    opts.dump_extra = vec!["--external", Box::leak(key.clone().into_boxed_str())];
    dump_and_check_gone(&work, &mut p, &opts);
    let out = restore_detached(&work, &[], opts.stasis_timeout);
    assert!(
        !out.success()
            && out.stderr.trim_end().lines().count() == 1
            && out.stderr.contains(&key)
            && out.stderr.contains("--inherit-fd"),
        "restore without --inherit-fd: {out:?}"
    );
    assert!(!pid_exists(p.pid), "a refused restore left {}", p.pid);
    let new = work.path("ext-new.txt");
    std::fs::write(&new, b"handed-in contents\n").expect("write ext-new.txt");
    let handed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&new)
        .expect("open ext-new.txt");
    let inherit = format!("--inherit-fd=fd[0]:{key}");
    let out = restore_detached_stdin(
        &work,
        &[&inherit],
        opts.stasis_timeout,
        std::process::Stdio::from(handed),
    );
    let mut r = Proc::adopt(p.pid);
    if !out.success() {
        fail(&work, format!("restore with {inherit}: {}", out.stderr));
    }
    let out = finish(&work, &mut r, opts.finish_timeout);
    if !out.result.starts_with("FAIL") {
        out.assert_pass(&work);
    }
    out
}

#[test]
fn cr_ext_file() {
    let out = ext_file("cr_ext_file", &[]);
    assert!(out.result.starts_with("PASS"), "{out:?}");
}

#[test]
fn negative_cr_ext_file() {
    let out = ext_file("negative_cr_ext_file", &["--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}
