//! tp_tty: a shell job (stdin, stdout and stderr on a terminal) survives
//! `dump -j` / `restore -j`: its descriptors are terminals again (the
//! restorer's), with their flags, and writing to them works.
//!
//! Usage: `tp_tty WORKDIR [--corrupt]`; after go it writes `TTY-OK` to stdout.

use stasis_tests::{Proto, Report};

fn state() -> Vec<(bool, i32)> {
    (0..3)
        // SAFETY: isatty and fcntl(F_GETFL) on our own descriptors.
        .map(|fd| unsafe { (libc::isatty(fd) == 1, libc::fcntl(fd, libc::F_GETFL)) })
        .collect()
}

fn main() {
    let (proto, args) = Proto::from_args();
    let before = state();
    proto.ready_and_wait();
    let mut report = Report::new();
    report.check(before.iter().all(|s| s.0), || {
        format!("not started on a terminal: {before:?}")
    });
    let after = state();
    report.eq(
        "(isatty, flags) of fds 0-2",
        before,
        if args.corrupt() { vec![] } else { after },
    );
    let msg = b"TTY-OK\n";
    // SAFETY: writing a literal to our stdout.
    let n = unsafe { libc::write(1, msg.as_ptr().cast(), msg.len()) };
    report.eq("write to the terminal", msg.len() as isize, n);
    proto.finish(&report);
}
