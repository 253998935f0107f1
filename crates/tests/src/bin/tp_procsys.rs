//! tp_procsys: descriptors held open on a /proc file (/proc/meminfo) and
//! a sysfs file (/sys/devices/system/cpu/online) survive
//! checkpoint/restore.
//!
//! Usage: `tp_procsys WORKDIR [--corrupt]`
//!
//! Opens both and reads a few bytes of each (offsets 10 and 2). After go
//! each descriptor checks: its link target, its offset, the bytes read
//! from there on equal to the file's (read anew by path: MemTotal's line
//! for meminfo, the rest of the file for the sysfs one), and a read from
//! offset 0 equal too. `--corrupt` expects meminfo's offset one further.

use stasis_tests::{Proto, Report};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// (path, bytes read before the dump, bytes compared after it)
const FILES: [(&str, usize, usize); 2] = [
    ("/proc/meminfo", 10, 12),
    ("/sys/devices/system/cpu/online", 2, 64),
];

fn link(fd: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

fn main() {
    let (proto, args) = Proto::from_args();
    let held: Vec<std::fs::File> = FILES
        .iter()
        .map(|(p, skip, _)| {
            let mut f = std::fs::File::open(p).expect("open");
            let mut b = vec![0u8; *skip];
            std::io::Read::read_exact(&mut f, &mut b).expect("read");
            f
        })
        .collect();
    let links: Vec<_> = held.iter().map(|f| link(f.as_raw_fd())).collect();
    proto.ready_and_wait();
    let mut r = Report::new();
    for (i, ((path, skip, cmp), f)) in FILES.iter().zip(&held).enumerate() {
        let fd = f.as_raw_fd();
        r.eq(&format!("{path}: link"), link(fd), links[i].clone());
        let want = if args.corrupt() && i == 0 {
            skip + 1
        } else {
            *skip
        };
        // SAFETY: lseek on our own descriptor.
        let off = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        r.eq(&format!("{path}: offset"), off, want as i64);
        let fresh = std::fs::read(path).unwrap_or_default();
        let end = (skip + cmp).min(fresh.len());
        let mut got = vec![0u8; end.saturating_sub(*skip)];
        let n = std::io::Read::read(&mut &*f, &mut got).unwrap_or(0);
        got.truncate(n);
        r.eq(
            &format!("{path}: read from the offset"),
            got,
            fresh.get(*skip..end).unwrap_or_default().to_vec(),
        );
        let mut head = vec![0u8; *skip];
        let n = f.read_at(&mut head, 0).unwrap_or(0);
        head.truncate(n);
        r.eq(
            &format!("{path}: read at 0"),
            head,
            fresh.get(..*skip).unwrap_or_default().to_vec(),
        );
    }
    proto.finish(&r)
}
