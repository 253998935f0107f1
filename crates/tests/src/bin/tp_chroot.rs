//! tp_chroot: a process whose root is a directory it chroot()ed into
//! survives checkpoint/restore with that root and its cwd (needs root).
//!
//! Usage: `tp_chroot WORKDIR [--corrupt]`
//!
//! Makes WORK/sub and a file WORK/marker, chroots into WORK and changes to
//! /sub; from then on the protocol files are /ready, /go, /result (the
//! harness sees them in WORK). After go it checks: / is the directory WORK
//! was (device and inode), /.. is / again (the root is a barrier), /marker
//! reads its contents, getcwd is /sub and . is the directory WORK/sub was.
//! `--corrupt` expects the cwd to be / instead.

use stasis_tests::{Proto, Report};
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const MARKER: &[u8] = b"a file inside the chroot\n";

fn id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

fn main() {
    let (outside, args) = Proto::from_args();
    let dir = outside.dir().to_path_buf();
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir sub");
    std::fs::write(dir.join("marker"), MARKER).expect("write marker");
    let root_id = id(&dir);
    let sub_id = id(&dir.join("sub"));
    let d = CString::new(dir.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: chroot/chdir with valid NUL-terminated paths.
    unsafe {
        if libc::chroot(d.as_ptr()) != 0 || libc::chdir(c"/sub".as_ptr()) != 0 {
            stasis_tests::fatal(&format!("chroot: {}", std::io::Error::last_os_error()));
        }
    }
    let proto = Proto::new(Path::new("/"));
    proto.ready_and_wait();
    let mut r = Report::new();
    r.eq("root directory", id(Path::new("/")), root_id);
    r.eq("/.. (the root is a barrier)", id(Path::new("/..")), root_id);
    r.eq(
        "/marker",
        std::fs::read("/marker").ok(),
        Some(MARKER.to_vec()),
    );
    let want_cwd = if args.corrupt() { "/" } else { "/sub" };
    r.eq("cwd", std::env::current_dir().ok(), Some(want_cwd.into()));
    r.eq("cwd directory", id(Path::new(".")), sub_id);
    proto.finish(&r)
}
