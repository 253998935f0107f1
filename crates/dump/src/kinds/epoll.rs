//! epoll instances and their registrations (fdinfo `tfd:` lines). Each
//! registration must still name, by number, the file it was registered
//! with: the restore re-adds it from that descriptor.

use super::Fd;
use crate::Result;
use stasis_image::{EpollTarget, FdKind};
use std::os::unix::fs::MetadataExt;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if d.link != "anon_inode:[eventpoll]" {
        return Ok(None);
    }
    let mut targets = Vec::new();
    for (k, v) in d.info.extra.iter().filter(|(k, _)| k == "tfd") {
        let t = parse_tfd(v).ok_or_else(|| d.refuse(&format!("fdinfo line {k}:{v}")))?;
        // The registration names the watched file by descriptor number: it
        // must still be that very file.
        let same = std::fs::metadata(format!("/proc/{}/fd/{}", d.pid, t.0))
            .map(|m| m.ino() == t.3)
            .unwrap_or(false);
        if !same {
            return Err(d.refuse(&format!(
                "it watches a file no longer open as fd {} (not supported yet)",
                t.0
            )));
        }
        targets.push(EpollTarget {
            fd: t.0,
            events: t.1,
            data: t.2,
        });
    }
    Ok(Some(FdKind::Epoll {
        flags: d.flags(),
        targets,
    }))
}

/// One `tfd:` line of an epoll's fdinfo: (fd, events, data, inode).
/// The kernel prints `tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x`.
fn parse_tfd(v: &str) -> Option<(i32, u32, u64, u64)> {
    let mut it = v.split_whitespace();
    let fd = it.next()?.parse().ok()?;
    let (mut events, mut data, mut ino) = (None, None, None);
    while let Some(tok) = it.next() {
        match tok {
            "events:" => events = u32::from_str_radix(it.next()?, 16).ok(),
            "data:" => data = u64::from_str_radix(it.next()?, 16).ok(),
            t if t.starts_with("ino:") => ino = u64::from_str_radix(&t[4..], 16).ok(),
            _ => {}
        }
    }
    Some((fd, events?, data?, ino?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_tfd_lines() {
        assert_eq!(
            super::parse_tfd(
                "       5 events: 80000019 data:                5  pos:0 ino:11289f sdev:f"
            ),
            Some((5, 0x8000_0019, 5, 0x11289f))
        );
        assert_eq!(super::parse_tfd("garbage"), None);
    }
}
