//! tp_inotify: inotify instances survive checkpoint/restore: their watches
//! (the same watch descriptors, including after a removed one, the same
//! masks and inodes), their flags, an empty queue (no event that was not
//! there), and they still report new events with the right watch
//! descriptor.
//!
//! Usage: `tp_inotify WORKDIR [--queued] [--corrupt]`
//!
//! With `--queued`, an IN_CREATE event (of `w/queued`) is left unread in
//! instance A: a dump must refuse it, and the event must still be there
//! afterwards (checked instead of an empty queue).
//!
//! State, in `WORK/w` (not the work directory itself, where the harness
//! writes): instance A (IN_NONBLOCK) watches the directory (IN_CREATE |
//! IN_DELETE, wd 1) and `f` (IN_MODIFY | IN_CLOSE_WRITE, wd 3: wd 2, on
//! `gone`, was removed and its IN_IGNORED read); instance B (blocking)
//! watches `f` (IN_OPEN, wd 1). After go: each instance's watches as
//! fdinfo lists them, the flags, an empty queue; then creating `w/new`,
//! writing `f` and opening `f` give the expected events.

use stasis_tests::{Proto, Report};
use std::ffi::CString;

/// (wd, ino, mask) of every watch, as fdinfo lists them, sorted.
fn watches(fd: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("inotify wd:"))
        .map(|l| {
            l.split_whitespace()
                .filter(|t| t.starts_with("wd:") || t.starts_with("ino:") || t.starts_with("mask:"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    v.sort();
    v
}

fn add(fd: i32, path: &std::path::Path, mask: u32) -> i32 {
    let c = CString::new(path.to_str().unwrap_or_default()).unwrap_or_default();
    // SAFETY: c is a valid path; fd is our inotify instance.
    unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let w = proto.path("w");
    let _ = std::fs::create_dir(&w);
    for f in ["f", "gone"] {
        let _ = std::fs::write(w.join(f), b"x");
    }
    // SAFETY: creating our own inotify instances.
    let (a, b) = unsafe {
        (
            libc::inotify_init1(libc::IN_NONBLOCK),
            libc::inotify_init1(0),
        )
    };
    let wd_dir = add(a, &w, libc::IN_CREATE | libc::IN_DELETE);
    let wd_gone = add(a, &w.join("gone"), libc::IN_ATTRIB);
    // SAFETY: removing our own watch.
    unsafe { libc::inotify_rm_watch(a, wd_gone) };
    let drained = stasis_tests::inotify_events(a);
    let wd_f = add(a, &w.join("f"), libc::IN_MODIFY | libc::IN_CLOSE_WRITE);
    let wd_b = add(b, &w.join("f"), libc::IN_OPEN);
    let queued = if args.flag("queued") {
        let _ = std::fs::write(w.join("queued"), b"q");
        vec![(wd_dir, libc::IN_CREATE, "queued".to_string())]
    } else {
        vec![]
    };
    let before = (watches(a), watches(b));
    let mut report = Report::new();
    report.eq("wds at setup", (1, 2, 3, 1), (wd_dir, wd_gone, wd_f, wd_b));
    report.eq("IN_IGNORED of the removed watch", 1, drained.len());
    proto.ready_and_wait();

    report.eq("instance A watches", before.0, watches(a));
    report.eq("instance B watches", before.1, watches(b));
    // SAFETY: fcntl queries on our own descriptors.
    let (fa, fb) = unsafe { (libc::fcntl(a, libc::F_GETFL), libc::fcntl(b, libc::F_GETFL)) };
    report.eq(
        "O_NONBLOCK of A, B",
        (true, false),
        (fa & libc::O_NONBLOCK != 0, fb & libc::O_NONBLOCK != 0),
    );
    report.eq(
        "events queued after restore (A)",
        queued,
        stasis_tests::inotify_events(a),
    );
    report.eq(
        "events queued after restore (B)",
        vec![],
        stasis_tests::inotify_events(b),
    );
    let new = if args.corrupt() { "other" } else { "new" };
    let _ = std::fs::write(w.join(new), b"n");
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .open(w.join("f"))
        .map(|mut f| std::io::Write::write_all(&mut f, b"y"));
    let got = stasis_tests::inotify_events(a);
    report.eq(
        "events of A",
        vec![
            (wd_dir, libc::IN_CREATE, "new".to_string()),
            (wd_f, libc::IN_MODIFY, String::new()),
            (wd_f, libc::IN_CLOSE_WRITE, String::new()),
        ],
        got,
    );
    let got_b: Vec<(i32, u32)> = stasis_tests::inotify_events(b)
        .into_iter()
        .map(|e| (e.0, e.1))
        .collect();
    report.eq("events of B", vec![(wd_b, libc::IN_OPEN)], got_b);
    proto.finish(&report);
}
