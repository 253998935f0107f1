//! Unix sockets whose other end is outside the dumped tree (criu's
//! `--ext-unix-sk`, `--external unix[INO]`), with tp_extunix; files named
//! external (`--external file[MNT_ID:INODE]`), with tp_extfile.

mod common;

use common::*;

#[test]
fn selfcheck_ext_unix() {
    let work = Work::new("selfcheck_ext_unix");
    run_plain(&work, Program::Bin("tp_extunix"), &[]).assert_pass(&work);
}

#[test]
fn negative_ext_unix() {
    let work = Work::new("negative_ext_unix");
    let out = run_plain(&work, Program::Bin("tp_extunix"), &["--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

fn ext_case(name: &str, args: &[&str]) -> Outcome {
    let work = Work::new(name);
    let opts = Opts {
        dump_extra: vec!["--ext-unix-sk"],
        ..Opts::default()
    };
    let out = run_case(&work, Program::Bin("tp_extunix"), args, &opts);
    if !out.result.starts_with("FAIL") {
        out.assert_pass(&work);
    }
    out
}

/// A datagram socket connected to a server outside the tree: with
/// `--ext-unix-sk` it is connected to the server's name again, and what it
/// sends after the restore reaches the server.
#[test]
fn cr_ext_unix_dgram() {
    let out = ext_case("cr_ext_unix_dgram", &[]);
    assert!(out.result.starts_with("PASS"), "{out:?}");
}

#[test]
fn negative_cr_ext_unix_dgram() {
    let out = ext_case("negative_cr_ext_unix_dgram", &["--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// Without the option: refused by name, the program runs on.
#[test]
fn refuse_ext_unix_without_option() {
    refused_dump(
        "refuse_ext_unix_without_option",
        Program::Bin("tp_extunix"),
        &[],
        &[],
        &["outside the dumped tree"],
        false,
    );
}

/// A stream whose other end is outside, without the option: refused by
/// name, the program runs on.
#[test]
fn refuse_ext_unix_stream() {
    refused_dump(
        "refuse_ext_unix_stream",
        Program::Bin("tp_extunix"),
        &["--stream"],
        &[],
        &["outside the dumped tree"],
        false,
    );
}

/// With the option, but data from outside waits in the tree's end: it
/// cannot be put back into the caller's socket; refused by name.
#[test]
fn refuse_ext_unix_stream_queued() {
    refused_dump(
        "refuse_ext_unix_stream_queued",
        Program::Bin("tp_extunix"),
        &["--stream", "--queued"],
        &["--ext-unix-sk"],
        &["data queued"],
        false,
    );
}

/// A stream whose other end is outside (journald, D-Bus): dumped with
/// `--ext-unix-sk` as external `socket:[INO]`; a restore without
/// `--inherit-fd` for it, or given /dev/null for it, is refused by name
/// and leaves nothing; with
/// `--inherit-fd fd[0]:socket:[INO]` our socket becomes the program's
/// descriptor 42 (flags, SO_SNDBUF), and the program's `ping` reaches us
/// and our `pong` reaches it.
fn ext_stream(name: &str, args: &[&str]) -> Outcome {
    ext_stream_with(name, args, false)
}

/// `by_inode`: dumped with criu's `--external unix[INO]` naming that
/// socket instead of `--ext-unix-sk`.
fn ext_stream_with(name: &str, args: &[&str], by_inode: bool) -> Outcome {
    use std::io::{Read, Write};
    let work = Work::new(name);
    let mut opts = Opts {
        dump_extra: vec!["--ext-unix-sk"],
        ..Opts::default()
    };
    let mut p = start_ready(&work, Program::Bin("tp_extunix"), args, &opts);
    let key = step(
        &work,
        "the program's descriptor 42",
        std::fs::read_link(format!("/proc/{}/fd/42", p.pid)).map_err(|e| e.to_string()),
    );
    let key = key.to_string_lossy().into_owned();
    assert!(key.starts_with("socket:["), "{key}");
    if by_inode {
        let ino = key.trim_start_matches("socket:[").trim_end_matches(']');
        opts.dump_extra = vec![
            "--external",
            Box::leak(format!("unix[{ino}]").into_boxed_str()),
        ];
    }
    dump_and_check_gone(&work, &mut p, &opts);
    refused_without_inherit(&work, p.pid, &key, &opts);
    // Something other than a unix stream socket for it (/dev/null).
    let inherit = format!("--inherit-fd=fd[0]:{key}");
    let out = restore_detached_stdin(
        &work,
        &[&inherit],
        opts.stasis_timeout,
        std::process::Stdio::null(),
    );
    assert!(
        !out.success() && out.stderr.contains("not a unix stream socket"),
        "restore with /dev/null for {key}: {out:?}"
    );
    assert!(!pid_exists(p.pid), "a refused restore left {}", p.pid);
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let stdin = std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs));
    let mut r = restored_with(&work, p.pid, &inherit, stdin, &opts);
    step(&work, "restored process state", r.check_running_untraced());
    work.release_go();
    ours.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let mut got = [0u8; 4];
    let read = ours.read_exact(&mut got);
    assert!(
        read.is_ok() && &got == b"ping",
        "what the restored program sent: {read:?} {got:?}{}",
        work.diagnostics()
    );
    ours.write_all(b"pong").expect("send pong");
    finished(&work, &mut r, &opts)
}

/// A restore of `pid` without `--inherit-fd` for its external `key`: one
/// line naming the key and the option; nothing is left.
fn refused_without_inherit(work: &Work, pid: i32, key: &str, opts: &Opts) {
    let out = restore_detached(work, &[], opts.stasis_timeout);
    assert!(
        !out.success()
            && out.stderr.trim_end().lines().count() == 1
            && out.stderr.contains(key)
            && out.stderr.contains("--inherit-fd"),
        "restore without --inherit-fd: {out:?}"
    );
    assert!(!pid_exists(pid), "a refused restore left {pid}");
}

/// The restore of `pid` with `inherit` (`--inherit-fd=fd[0]:KEY`) and
/// `stdin` as our descriptor 0, which must succeed.
fn restored_with(
    work: &Work,
    pid: i32,
    inherit: &str,
    stdin: std::process::Stdio,
    opts: &Opts,
) -> Proc {
    let out = restore_detached_stdin(work, &[inherit], opts.stasis_timeout, stdin);
    let r = Proc::adopt(pid);
    if !out.success() {
        fail(work, format!("restore with {inherit}: {}", out.stderr));
    }
    r
}

/// The program's outcome; a verdict other than FAIL must be a pass.
fn finished(work: &Work, r: &mut Proc, opts: &Opts) -> Outcome {
    let out = finish(work, r, opts.finish_timeout);
    if !out.result.starts_with("FAIL") {
        out.assert_pass(work);
    }
    out
}

#[test]
fn cr_ext_unix_stream() {
    let out = ext_stream("cr_ext_unix_stream", &["--stream"]);
    assert!(out.result.starts_with("PASS"), "{out:?}");
}

#[test]
fn negative_cr_ext_unix_stream() {
    let out = ext_stream("negative_cr_ext_unix_stream", &["--stream", "--corrupt"]);
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

#[test]
fn selfcheck_ext_unix_stream() {
    let work = Work::new("selfcheck_ext_unix_stream");
    run_plain(&work, Program::Bin("tp_extunix"), &["--stream"]).assert_pass(&work);
}

/// criu's `--external unix[INO]` naming the program's socket: dumped and
/// re-joined through `--inherit-fd` as with `--ext-unix-sk`.
#[test]
fn cr_ext_unix_stream_by_inode() {
    let out = ext_stream_with("cr_ext_unix_stream_by_inode", &["--stream"], true);
    assert!(out.result.starts_with("PASS"), "{out:?}");
}

#[test]
fn negative_cr_ext_unix_stream_by_inode() {
    let out = ext_stream_with(
        "negative_cr_ext_unix_stream_by_inode",
        &["--stream", "--corrupt"],
        true,
    );
    assert!(out.result.starts_with("FAIL: "), "{out:?}");
}

/// `--external unix[INO]` naming another socket: this one is still
/// refused by name, the program runs on.
#[test]
fn refuse_ext_unix_other_inode() {
    refused_dump(
        "refuse_ext_unix_other_inode",
        Program::Bin("tp_extunix"),
        &["--stream"],
        &["--external", "unix[1]"],
        &["outside the dumped tree"],
        false,
    );
}

// A file named external at the dump (criu's `--external
// file[MNT_ID:INODE]`), with tp_extfile: saved without its path, and
// handed back at restore with `--inherit-fd fd[N]:file[MNT_ID:INODE]`.

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
    refused_without_inherit(&work, p.pid, &key, &opts);
    let new = work.path("ext-new.txt");
    std::fs::write(&new, b"handed-in contents\n").expect("write ext-new.txt");
    let handed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&new)
        .expect("open ext-new.txt");
    let inherit = format!("--inherit-fd=fd[0]:{key}");
    let mut r = restored_with(
        &work,
        p.pid,
        &inherit,
        std::process::Stdio::from(handed),
        &opts,
    );
    finished(&work, &mut r, &opts)
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
