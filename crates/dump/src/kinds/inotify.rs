//! inotify instances: each watch from its fdinfo line (`inotify wd:%x
//! ino:%lx sdev:%x mask:%x ignored_mask:%x fhandle-bytes:%x fhandle-type:%x
//! f_handle:%02x...`), saved with the file handle of the watched object and
//! the mount point of its filesystem, and the object's path where it has
//! one ([`object_path`]: a restore on a filesystem made anew, a tmpfs of
//! the tree's own, finds it by that; [`refuse_unnamed_made_anew`] refuses
//! a watch or mark there on an object without one). Events waiting to be
//! read cannot be saved: an instance with any is refused.

use super::Fd;
use crate::{At, DumpError, Result, Stage};
use stasis_image::mntns::{MountHow, MountNs};
use stasis_image::{FdKind, InotifyWatch, ProcessImage};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if d.link != "anon_inode:inotify" {
        return Ok(None);
    }
    let mut watches = Vec::new();
    for (_, v) in d.info.extra.iter().filter(|(k, _)| k == "inotify wd") {
        let w = parse_watch(v).ok_or_else(|| d.refuse(&format!("fdinfo line inotify wd:{v}")))?;
        let (wd, mask, ino, sdev, handle_type, handle) = w;
        if handle.is_empty() {
            return Err(d.refuse(&format!(
                "watch {wd}: the kernel gives no file handle for the watched object"
            )));
        }
        let mount = mount_point(d.pid, sdev)?
            .ok_or_else(|| d.refuse(&format!("watch {wd}: no mount of device {sdev:#x}")))?;
        let path = object_path(d.pid, &mount, handle_type, &handle);
        watches.push(InotifyWatch {
            wd,
            mask,
            ino,
            mount,
            handle_type,
            handle,
            path,
        });
    }
    watches.sort_by_key(|w| w.wd);
    if queued(d)? != 0 {
        return Err(d.refuse("an inotify instance with unread events (not supported yet)"));
    }
    Ok(Some(FdKind::Inotify {
        flags: d.flags(),
        watches,
    }))
}

/// Bytes of events waiting in the instance, asked of a duplicate.
fn queued(d: &Fd<'_>) -> Result<u32> {
    let (pid, st) = (d.pid, Stage::Check);
    let dup = d.dup()?;
    stasis_sys::inotify::queued_bytes(&dup).at(pid, st)
}

/// The mount point (as the process sees it) of the filesystem whose
/// superblock device is `sdev` (the kernel's encoding: major << 20 | minor).
pub(super) fn mount_point(pid: u32, sdev: u64) -> Result<Option<String>> {
    let (major, minor) = ((sdev >> 20) as u32, (sdev & 0xf_ffff) as u32);
    let mounts = stasis_proc::read_mountinfo(pid).at(pid, Stage::Check)?;
    // A mount of the whole filesystem if there is one, else any of it
    // (a file handle is valid on every mount of its filesystem).
    let mut of_dev: Vec<_> = mounts
        .into_iter()
        .filter(|m| m.major == major && m.minor == minor)
        .collect();
    of_dev.sort_by_key(|m| m.root != "/");
    Ok(of_dev.into_iter().next().map(|m| m.mount_point))
}

/// The path, as process `pid` sees it, of the object a file handle names
/// on the filesystem mounted at `mount`: opened by the handle
/// (open_by_handle_at on that mount, through /proc/PID/root), named below
/// the mount by the two descriptors' links, and checked to name that very
/// object (device and inode, the last component not followed). None when
/// it has no such name: deleted, or not below the mount.
pub(super) fn object_path(
    pid: u32,
    mount: &str,
    handle_type: i32,
    handle: &[u8],
) -> Option<String> {
    let mnt = stasis_sys::util::open(
        &format!("/proc/{pid}/root{mount}"),
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .ok()?;
    let obj = stasis_sys::inotify::open_by_handle(&mnt, handle_type, handle, libc::O_PATH).ok()?;
    let link = |fd: &std::os::fd::OwnedFd| {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .ok()
            .and_then(|l| l.to_str().map(str::to_string))
    };
    let (m, o) = (link(&mnt)?, link(&obj)?);
    if o.ends_with(super::DELETED) {
        return None;
    }
    let rel = if o == m {
        ""
    } else if m == "/" {
        o.strip_prefix('/')?
    } else {
        o.strip_prefix(m.as_str())?.strip_prefix('/')?
    };
    let path = match (rel, mount) {
        ("", _) => mount.to_string(),
        (r, "/") => format!("/{r}"),
        (r, _) => format!("{mount}/{r}"),
    };
    let named = std::fs::symlink_metadata(format!("/proc/{pid}/root{path}")).ok()?;
    let held = std::fs::File::from(obj).metadata().ok()?;
    (named.dev() == held.dev() && named.ino() == held.ino()).then_some(path)
}

/// A watch or mark on an object of a tmpfs of the tree's own mount
/// namespace (`mntns`), which a restore makes anew (so the saved file
/// handle is stale there), is found by its path: refused by name when the
/// object had none.
pub(crate) fn refuse_unnamed_made_anew(
    images: &[&mut ProcessImage],
    mntns: Option<&MountNs>,
) -> Result<()> {
    let Some(ns) = mntns else { return Ok(()) };
    let anew = |mount: &str| {
        ns.mounts
            .iter()
            .any(|m| m.mount_point == mount && matches!(m.how, MountHow::Tmpfs { .. }))
    };
    for img in images {
        for e in &img.files {
            let unnamed: Vec<(String, u64, &str)> = match &e.kind {
                FdKind::Inotify { watches, .. } => watches
                    .iter()
                    .filter(|w| w.path.is_none() && anew(&w.mount))
                    .map(|w| (format!("inotify watch {}", w.wd), w.ino, w.mount.as_str()))
                    .collect(),
                FdKind::Fanotify { marks, .. } => marks
                    .iter()
                    .filter(|m| {
                        m.target == stasis_image::FanotifyTarget::Inode
                            && m.path.is_none()
                            && anew(&m.mount)
                    })
                    .map(|m| ("fanotify mark".to_string(), m.ino, m.mount.as_str()))
                    .collect(),
                _ => continue,
            };
            if let Some((what, ino, mount)) = unnamed.first() {
                return Err(DumpError::Unsupported {
                    pid: img.pid,
                    stage: Stage::Check,
                    what: format!(
                        "fd {}: {what} on inode {ino} of the tmpfs at {mount}, which a restore \
                         makes anew: the object has no name there (deleted, or out of reach) to \
                         find it by (not supported)",
                        e.fd
                    ),
                });
            }
        }
    }
    Ok(())
}

/// One watch: (wd, mask, ino, sdev, handle type, handle bytes).
type Watch = (i32, u32, u64, u64, i32, Vec<u8>);

/// Parses the value of an `inotify wd:` fdinfo line (every number hex).
fn parse_watch(v: &str) -> Option<Watch> {
    let mut it = v.split_whitespace();
    let wd = i32::from_str_radix(it.next()?, 16).ok()?;
    let (mut mask, mut ino, mut sdev, mut htype, mut handle) = (None, None, None, 0, Vec::new());
    for tok in it {
        let (k, val) = tok.split_once(':')?;
        match k {
            "mask" => mask = u32::from_str_radix(val, 16).ok(),
            "ino" => ino = u64::from_str_radix(val, 16).ok(),
            "sdev" => sdev = u64::from_str_radix(val, 16).ok(),
            "fhandle-type" => htype = i32::from_str_radix(val, 16).ok()?,
            "f_handle" => {
                handle = (0..val.len() / 2)
                    .map(|i| u8::from_str_radix(val.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()?;
            }
            _ => {}
        }
    }
    Some((wd, mask?, ino?, sdev?, htype, handle))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_watch_lines() {
        assert_eq!(
            super::parse_watch(
                "1 ino:2a sdev:800001 mask:fff ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2a000000dcd1c7b1"
            ),
            Some((1, 0xfff, 0x2a, 0x80_0001, 1, vec![0x2a, 0, 0, 0, 0xdc, 0xd1, 0xc7, 0xb1]))
        );
        assert_eq!(super::parse_watch("1 ino:zz"), None);
    }
}
