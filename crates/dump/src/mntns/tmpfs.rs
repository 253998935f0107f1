//! A tmpfs of the tree's own, read through /proc/ROOT/root: directories,
//! regular files (contents), symlinks, device nodes and fifos with their
//! modes, owners and times. Hard links, sockets and extended attributes
//! are refused by name; the total size is capped.

use crate::checks::refuse;
use crate::{DumpError, Result, Stage};
use stasis_image::mntns::{TmpfsEntry, MAX_TMPFS_BYTES, MAX_TMPFS_ENTRIES};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Every entry below `dir` (the mount's root), parents first; `bytes`
/// counts file contents across every tmpfs of the image.
///
/// The directories other mounts cover are read through a clone of this
/// mount alone (`mount_point`, in the process's namespace: [`clone_mount_of`]
/// with the mounts below it left out), so their modes, owners and times
/// are the tmpfs's own, not the root's of the mount above.
///
/// [`clone_mount_of`]: stasis_sys::mount::clone_mount_of
pub(super) fn save(
    pid: u32,
    name: &str,
    dir: &str,
    mount_point: &str,
    bytes: &mut u64,
) -> Result<Vec<TmpfsEntry>> {
    let io = |what: String| {
        move |source| DumpError::Io {
            pid,
            stage: Stage::Collect,
            what,
            source,
        }
    };
    let top = std::fs::symlink_metadata(dir).map_err(io(format!("{name}: stat {dir}")))?;
    let mut out = Vec::new();
    let mut alone: Option<std::os::fd::OwnedFd> = None;
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let path = if rel.is_empty() {
            dir.to_string()
        } else {
            format!("{dir}/{rel}")
        };
        let md = std::fs::symlink_metadata(&path).map_err(io(format!("{name}: stat {rel}")))?;
        if md.dev() != top.dev() {
            // A mount point of a mount below: an empty directory here,
            // whose own mode, owner and times only a clone without the
            // mount above shows.
            let clone = match &alone {
                Some(c) => c,
                None => alone.insert(
                    stasis_sys::mount::clone_mount_of(stasis_sys::Pid(pid as i32), mount_point)
                        .map_err(|e| DumpError::Sys {
                            pid,
                            stage: Stage::Collect,
                            source: e,
                        })?,
                ),
            };
            let under = format!("/proc/self/fd/{}/{rel}", clone.as_raw_fd());
            let hidden = std::fs::symlink_metadata(&under)
                .map_err(io(format!("{name}: stat {rel} under its mount")))?;
            if !hidden.is_dir() {
                return Err(refuse(
                    pid,
                    format!("{name}: {rel:?} is a mount point on a file: not restored"),
                ));
            }
            out.push(entry(rel, &hidden, hidden.mode()));
            continue;
        }
        let what = |w: &str| refuse(pid, format!("{name}: {rel:?} is {w}: not restored"));
        if stasis_sys::mount::xattr_names_len(&path).unwrap_or(0) > 0 {
            return Err(what("a file with extended attributes"));
        }
        let ft = md.file_type();
        let mut e = entry(rel.clone(), &md, md.mode());
        if ft.is_dir() {
            let mut names: Vec<String> = std::fs::read_dir(&path)
                .map_err(io(format!("{name}: read directory {rel}")))?
                .filter_map(std::result::Result::ok)
                .map(|d| d.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.reverse();
            todo.extend(names.into_iter().map(|n| {
                if rel.is_empty() {
                    n
                } else {
                    format!("{rel}/{n}")
                }
            }));
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&path).map_err(io(format!("{name}: readlink {rel}")))?;
            e.target = t.to_string_lossy().into_owned();
        } else if ft.is_file() {
            if md.nlink() > 1 {
                return Err(what("a file with several hard links"));
            }
            *bytes += md.len();
            if *bytes > MAX_TMPFS_BYTES {
                return Err(refuse(
                    pid,
                    format!("{name}: tmpfs contents above {MAX_TMPFS_BYTES} bytes: not saved"),
                ));
            }
            e.data = std::fs::read(&path).map_err(io(format!("{name}: read {rel}")))?;
        } else if ft.is_socket() {
            return Err(what("a socket"));
        }
        out.push(e);
        if out.len() > MAX_TMPFS_ENTRIES {
            return Err(refuse(
                pid,
                format!("{name}: more than {MAX_TMPFS_ENTRIES} tmpfs entries: not saved"),
            ));
        }
    }
    Ok(out)
}

fn entry(path: String, md: &std::fs::Metadata, mode: u32) -> TmpfsEntry {
    TmpfsEntry {
        path,
        mode,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        atime: (md.atime(), md.atime_nsec()),
        mtime: (md.mtime(), md.mtime_nsec()),
        target: String::new(),
        data: Vec::new(),
    }
}
