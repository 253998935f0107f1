//! Unix sockets whose other end is outside the dumped tree (criu's
//! `--ext-unix-sk`), with tp_extunix.

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

/// A stream connected to a server outside: refused by name even with the
/// option (a new connection would be another stream for the server).
#[test]
fn refuse_ext_unix_stream() {
    refused_dump(
        "refuse_ext_unix_stream",
        Program::Bin("tp_extunix"),
        &["--stream"],
        &["--ext-unix-sk"],
        &["outside the dumped tree"],
        false,
    );
}
