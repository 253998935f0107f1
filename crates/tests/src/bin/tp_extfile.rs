//! tp_extfile: a file the caller names external (criu's `--external
//! file[MNT_ID:INODE]`), handed back at restore with `--inherit-fd`.
//!
//! The program writes `WORK/ext.txt` and holds it open read-write as
//! descriptor 42. After go, descriptor 42 must be a regular file whose
//! contents (read from offset 0) and inode are those of `WORK/ext-new.txt`
//! if that exists (the harness wrote it and handed it in at the restore),
//! else of `WORK/ext.txt` (not dumped); and writable: a line appended
//! through it must be read back by path. `--corrupt`: the expected
//! contents are altered, so the check must fail.
//!
//! Usage: `tp_extfile WORKDIR [--corrupt]`

use stasis_tests::{Proto, Report};
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};

const FD: i32 = 42;

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let path = proto.path("ext.txt");
    std::fs::write(&path, b"external contents\n").expect("write ext.txt");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open ext.txt");
    let raw = f.into_raw_fd();
    // SAFETY: dup2 of our own descriptor onto a free number, then close.
    unsafe {
        assert_eq!(libc::dup2(raw, FD), FD, "dup2");
        libc::close(raw);
    }
    proto.ready_and_wait();
    let new = proto.path("ext-new.txt");
    let target = if new.exists() { new } else { path };
    let mut want = std::fs::read(&target).unwrap_or_default();
    if args.corrupt() {
        want.push(b'!');
    }
    // SAFETY: descriptor 42 is ours; the File is leaked back below.
    let mut held = unsafe { std::fs::File::from_raw_fd(FD) };
    let mut got = vec![0u8; want.len() + 16];
    let n = held.read_at(&mut got, 0).unwrap_or(0);
    got.truncate(n);
    report.eq("contents of descriptor 42", want, got);
    let ino = |m: std::io::Result<std::fs::Metadata>| m.map(|m| (m.dev(), m.ino())).ok();
    report.eq(
        "file of descriptor 42",
        ino(std::fs::metadata(&target)),
        ino(held.metadata()),
    );
    let wrote = held
        .write_all_at(b"appended\n", n as u64)
        .and_then(|()| held.flush());
    report.check(wrote.is_ok(), || {
        format!("write through descriptor 42: {wrote:?}")
    });
    let text = std::fs::read_to_string(&target).unwrap_or_default();
    report.check(text.ends_with("appended\n"), || {
        format!("{} after the write: {text:?}", target.display())
    });
    let _ = held.into_raw_fd();
    proto.finish(&report);
}
