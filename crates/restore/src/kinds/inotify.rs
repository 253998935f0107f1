//! inotify instances: created by the restorer, each watch added again on
//! the object its file handle names (`open_by_handle_at` on the mount
//! point of its filesystem, then `inotify_add_watch` through the object's
//! /proc/self/fd link, so a renamed object is still found); on a
//! filesystem made anew (a tmpfs of the tree's own: the handle is stale)
//! the object at the path the dump found for it. The kernel
//! gives watch descriptors in increasing order: a watch whose number is not
//! the next one is added and removed until it is (the IN_IGNORED events of
//! those removals are then read away; the dump refused queued events, so
//! the queue is empty as it was).

use super::{Cx, Opened};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::InotifyWatch;
use stasis_sys::inotify;
use std::os::fd::AsRawFd;

/// How many watch numbers a gap may skip before giving up.
const MAX_SKIP: i32 = 1 << 16;

pub(super) fn open(
    o: &mut Opened,
    cx: &Cx<'_>,
    flags: u32,
    watches: &[InotifyWatch],
) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let ifd = inotify::init(flags as i32 & libc::O_NONBLOCK).at(pid, st)?;
    for w in watches {
        let what = format!("inotify watch {} (inode {})", w.wd, w.ino);
        let obj = open_handle(
            cx,
            &w.mount,
            w.handle_type,
            &w.handle,
            (&what, Some(w.ino), w.path.as_deref()),
        )?;
        let path = format!("/proc/self/fd/{}", obj.as_raw_fd());
        let mut got = inotify::add_watch(&ifd, &path, w.mask).at(pid, st)?;
        while got < w.wd && got > w.wd - MAX_SKIP {
            inotify::rm_watch(&ifd, got).at(pid, st)?;
            got = inotify::add_watch(&ifd, &path, w.mask).at(pid, st)?;
        }
        if got != w.wd {
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!(
                    "fd {}: inotify watch {} came back as {got} (inode {})",
                    cx.fd, w.wd, w.ino
                ),
            });
        }
    }
    inotify::drain(&ifd).at(pid, st)?;
    Ok(o.push(ifd))
}

/// The object a saved file handle names (O_PATH), opened on the mount
/// point of its filesystem; `what` names it in the error. A stale handle
/// (a filesystem made anew) falls back to `path`, the object's path the
/// dump found, and for the root of the filesystem (inode `root_ino`) to
/// the mount point.
pub(super) fn open_handle(
    cx: &Cx<'_>,
    mount: &str,
    handle_type: i32,
    handle: &[u8],
    (what, root_ino, path): (&str, Option<u64>, Option<&str>),
) -> Result<std::os::fd::OwnedFd> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let mnt = crate::mntns::open(mount, libc::O_RDONLY | libc::O_DIRECTORY).at(pid, st)?;
    let got = inotify::open_by_handle(&mnt, handle_type, handle, libc::O_PATH);
    if let (Err(e), Some(p)) = (&got, path) {
        if e.errno() == Some(libc::ESTALE) {
            return crate::mntns::open(p, libc::O_PATH | libc::O_NOFOLLOW).map_err(|source| {
                RestoreError::Sys {
                    pid,
                    stage: st,
                    source: stasis_sys::SysError {
                        op: format!("fd {}: {what}: stale handle, by path: {}", cx.fd, source.op),
                        ..source
                    },
                }
            });
        }
    }
    // A filesystem made anew (a tmpfs of the tree's own mount namespace,
    // its contents saved) gives new handles; its root is the same
    // directory still: the mount point itself, with the saved inode
    // number.
    if got.as_ref().is_err_and(|e| e.errno() == Some(libc::ESTALE)) {
        let root = std::fs::File::from(mnt.try_clone().map_err(|source| RestoreError::Io {
            pid,
            stage: st,
            what: format!("fd {}: {what}: dup {mount}", cx.fd),
            source,
        })?);
        let same_root = root.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            Some(m.ino()) == root_ino
        });
        if same_root {
            return Ok(std::os::fd::OwnedFd::from(root));
        }
    }
    got.map_err(|source| RestoreError::Sys {
        pid,
        stage: st,
        source: stasis_sys::SysError {
            op: format!("fd {}: {what}: {}", cx.fd, source.op),
            ..source
        },
    })
}
