//! Files whose contents go into the image: memfds (their link reads
//! `/memfd:NAME (deleted)`), files deleted while open or mapped, and
//! directories deleted while open or as the working directory (empty, so
//! no contents). Collection marks them `Saved` with id 0 ([`identify`],
//! and the memory plan for mappings); [`link`] identifies each object by
//! (device, inode) across the tree and records it once (`SavedFile`: memfd
//! name and seals, or the deleted path; size, mode, owner, times from a
//! stat taken before anything reads it, and the data extents: holes are
//! not stored, SEEK_DATA/SEEK_HOLE give where the data lies);
//! [`write_saved`] appends the data extents to the page file of the
//! process that records it, read with O_NOATIME. Files above
//! `dump --ghost-limit` ([`check_ghost_limit`]; at most `MAX_SAVED_FILE`)
//! are refused by name, naming the option.

use super::{Fd, DELETED};
use crate::{At, DumpError, Result, Stage};
use stasis_image::{
    Extent, FdKind, FileTimes, Owner, PagesWriter, ProcessImage, SavedFile, SavedFileKind, VmaKind,
    MAX_SAVED_FILE, PAGE_SIZE,
};
use stasis_sys::util;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let deleted = d.deleted();
    match d.stat()? {
        // A deleted directory (empty) is recreated and removed again.
        Some(md) if (md.is_file() || md.is_dir()) && deleted => Ok(Some(FdKind::Saved {
            id: 0,
            flags: d.flags(),
            pos: d.info.pos,
        })),
        _ => Ok(None),
    }
}

/// Where the dumper can open saved-file object `id` of process `img`: a
/// descriptor or a mapping of it, through /proc.
fn saved_source(img: &ProcessImage, pid: u32, id: u64) -> Option<String> {
    img.files
        .iter()
        .find_map(|e| match e.kind {
            FdKind::Saved { id: i, .. } if i == id => Some(format!("/proc/{pid}/fd/{}", e.fd)),
            _ => None,
        })
        .or_else(|| {
            img.mm.vmas.iter().find_map(|v| match v.kind {
                VmaKind::Saved { id: i } if i == id => {
                    Some(format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end))
                }
                _ => None,
            })
        })
}

/// Identifies, across the tree, the objects whose contents go into the
/// image (memfds, files deleted while open or mapped: `Saved` fds and
/// VMAs, found by collection with id 0; a deleted working directory) by
/// device and inode, gives each an id and records it once, in the first
/// process that has it.
pub(super) fn link(images: &mut [&mut ProcessImage]) -> Result<()> {
    use std::collections::HashMap;
    let mut ids: HashMap<(u64, u64), u64> = HashMap::new();
    for img in images.iter_mut() {
        let pid = img.pid;
        let st = Stage::Collect;
        let mut srcs: Vec<(String, usize, bool)> = Vec::new();
        for (i, e) in img.files.iter().enumerate() {
            if let FdKind::Saved { .. } = e.kind {
                srcs.push((format!("/proc/{pid}/fd/{}", e.fd), i, true));
            }
        }
        for (i, v) in img.mm.vmas.iter().enumerate() {
            if let VmaKind::Saved { .. } = v.kind {
                let src = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
                srcs.push((src, i, false));
            }
        }
        // A deleted working directory (usize::MAX: not an fd or a mapping).
        if img.cwd.ends_with(DELETED) {
            srcs.push((format!("/proc/{pid}/cwd"), usize::MAX, false));
        }
        for (src, i, is_fd) in srcs {
            let io = |what: String| {
                move |source| DumpError::Io {
                    pid,
                    stage: st,
                    what,
                    source,
                }
            };
            let link = std::fs::read_link(&src)
                .map_err(io(format!("readlink {src}")))?
                .to_string_lossy()
                .into_owned();
            let md = std::fs::metadata(&src).map_err(io(format!("stat {src} ({link})")))?;
            let next = ids.len() as u64 + 1;
            let id = *ids.entry((md.dev(), md.ino())).or_insert(next);
            if id == next {
                let what = if is_fd {
                    format!("fd {} ({link})", img.files[i].fd)
                } else if i == usize::MAX {
                    format!("working directory ({link})")
                } else {
                    let v = &img.mm.vmas[i];
                    format!("mapping {:#x}-{:#x} ({link})", v.start, v.end)
                };
                if md.size() > MAX_SAVED_FILE {
                    return Err(DumpError::Unsupported {
                        pid,
                        stage: Stage::Check,
                        what: format!(
                            "{what}: {} bytes, more than the {} MiB a memfd or deleted file may hold in an image",
                            md.size(),
                            MAX_SAVED_FILE >> 20
                        ),
                    });
                }
                let name = link.strip_suffix(DELETED).unwrap_or(&link);
                let (owner, times) = describe(&md);
                let file = open_quietly(&src).map_err(io(format!("open {what}")))?;
                let seals = name
                    .strip_prefix("/memfd:")
                    .and_then(|n| Some((n, util::get_seals(file.as_fd()).ok()?)));
                let is_dir = md.is_dir();
                let kind = match seals {
                    _ if is_dir => SavedFileKind::DeletedDir {
                        path: name.to_string(),
                    },
                    Some((n, seals)) => SavedFileKind::Memfd {
                        name: n.to_string(),
                        seals,
                    },
                    None => match tmpfile_dir(name, md.ino()) {
                        Some(dir) => {
                            check_tmpfile(pid, &what, dir, &md)?;
                            SavedFileKind::Tmpfile {
                                dir: dir.to_string(),
                            }
                        }
                        None => SavedFileKind::Deleted {
                            path: name.to_string(),
                        },
                    },
                };
                // The parent as the process sees it (its root may be a
                // container's).
                if is_dir
                    && !std::path::Path::new(name).parent().is_some_and(|p| {
                        std::path::Path::new(&format!("/proc/{pid}/root{}", p.display())).is_dir()
                    })
                {
                    return Err(DumpError::Unsupported {
                        pid,
                        stage: Stage::Check,
                        what: format!(
                            "{what}: a deleted directory whose parent no longer exists (not supported)"
                        ),
                    });
                }
                let size = if is_dir { 0 } else { md.size() };
                let extents = extents(pid, &file, size, &what)?;
                log::debug!(
                    "pid {pid}: {what}: saved file {id} ({kind:?}, {} bytes)",
                    md.size()
                );
                img.saved_files.push(SavedFile {
                    id,
                    kind,
                    size,
                    offset: 0,
                    mode: md.mode() & 0o7777,
                    dev: md.dev(),
                    ino: md.ino(),
                    owner: Some(owner),
                    times: Some(times),
                    extents: Some(extents),
                });
            }
            if i == usize::MAX {
                img.cwd_saved = id;
            } else if is_fd {
                if let FdKind::Saved { id: slot, .. } = &mut img.files[i].kind {
                    *slot = id;
                }
            } else {
                img.mm.vmas[i].kind = VmaKind::Saved { id };
            }
        }
    }
    check_tmpfile_flags(images)
}

/// An O_TMPFILE file is made again by open(DIR, O_TMPFILE) in its own
/// directory (the only call that gives a description F_GETFL shows as
/// O_TMPFILE): refused by name when it was linked since (its descriptors
/// still read `DIR/#INODE (deleted)`, but a name shares the file), or
/// when that directory is gone, or no longer a directory of the file's
/// filesystem.
fn check_tmpfile(pid: u32, what: &str, dir: &str, md: &std::fs::Metadata) -> Result<()> {
    if md.nlink() != 0 {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what: format!(
                "{what}: an O_TMPFILE file since linked ({} links): its descriptors cannot be \
                 made again on the named file (not supported)",
                md.nlink()
            ),
        });
    }
    let at = format!("/proc/{pid}/root{dir}");
    match std::fs::metadata(&at) {
        Ok(d) if d.is_dir() && d.dev() == md.dev() => Ok(()),
        _ => Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what: format!(
                "{what}: an O_TMPFILE file whose directory {dir} is gone or now on another \
                 filesystem, so open({dir}, O_TMPFILE) cannot make it again (not supported)"
            ),
        }),
    }
}

/// O_TMPFILE's own bit (O_TMPFILE is it with O_DIRECTORY).
const TMPFILE_BIT: u32 = (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32;

/// A description made by open(O_TMPFILE) keeps the bit in its flags
/// (F_GETFL) after the file was linked (linkat): only a file never linked
/// can be made again by such an open, so any other is refused by name.
fn check_tmpfile_flags(images: &[&mut ProcessImage]) -> Result<()> {
    for img in images {
        for e in &img.files {
            let (flags, tmpfile) = match &e.kind {
                FdKind::Saved { id, flags, .. } => (
                    *flags,
                    images
                        .iter()
                        .flat_map(|i| &i.saved_files)
                        .any(|f| f.id == *id && matches!(f.kind, SavedFileKind::Tmpfile { .. })),
                ),
                k => (k.flags(), false),
            };
            if flags & TMPFILE_BIT != 0 && !tmpfile {
                let link = std::fs::read_link(format!("/proc/{}/fd/{}", img.pid, e.fd))
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(DumpError::Unsupported {
                    pid: img.pid,
                    stage: Stage::Check,
                    what: format!(
                        "fd {} ({link}): opened with O_TMPFILE and since linked: no open gives \
                         a description with O_TMPFILE in its flags (F_GETFL) to a file that \
                         had a name (not supported)",
                        e.fd
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The directory of an O_TMPFILE file never linked: the kernel names its
/// dentry `#INODE`, so its link reads `DIR/#INODE (deleted)`.
fn tmpfile_dir(name: &str, ino: u64) -> Option<&str> {
    let (dir, base) = name.rsplit_once('/')?;
    (base.strip_prefix('#')? == ino.to_string()).then_some(if dir.is_empty() { "/" } else { dir })
}

/// Appends the contents of the saved files recorded in `img` to its page
/// file, each at a page-aligned offset: its data extents, each padded to
/// whole pages. `host_pid` is the process's PID in our namespace (for /proc).
pub(crate) fn write_saved(
    img: &mut ProcessImage,
    host_pid: u32,
    pages: &mut PagesWriter,
) -> Result<()> {
    let pid = host_pid;
    let st = Stage::Memory;
    let mut buf = vec![0u8; 1 << 20];
    for k in 0..img.saved_files.len() {
        let id = img.saved_files[k].id;
        if img.saved_files[k].data_extents().is_empty() {
            img.saved_files[k].offset = pages.offset();
            continue; // all holes, or a directory
        }
        let src = saved_source(img, pid, id).ok_or_else(|| DumpError::Unsupported {
            pid,
            stage: st,
            what: format!("saved file {id}: no descriptor or mapping of it"),
        })?;
        let f = open_quietly(&src).map_err(|source| DumpError::Io {
            pid,
            stage: st,
            what: format!("open {src} (saved file {id})"),
            source,
        })?;
        write_contents(pid, &f, &mut img.saved_files[k], pages, &mut buf, &src)?;
    }
    Ok(())
}

/// Owner and times from a stat taken before anything read the file (a
/// read may move its access time).
fn describe(md: &std::fs::Metadata) -> (Owner, FileTimes) {
    (
        Owner {
            uid: md.uid(),
            gid: md.gid(),
        },
        FileTimes {
            atime_sec: md.atime(),
            atime_nsec: md.atime_nsec(),
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        },
    )
}

/// The data extents of `file` (`size` bytes).
pub(crate) fn extents(
    pid: u32,
    file: &std::fs::File,
    size: u64,
    what: &str,
) -> Result<Vec<Extent>> {
    let ext =
        stasis_sys::fileops::data_extents(file.as_fd(), size).map_err(|source| DumpError::Sys {
            pid,
            stage: Stage::Collect,
            source: stasis_sys::SysError {
                op: format!("{what}: {}", source.op),
                ..source
            },
        })?;
    Ok(page_aligned(&ext, size))
}

/// Extents widened to whole pages (the last may end at `size`) and merged:
/// a hole smaller than a page (file systems with small blocks) is stored
/// as zeros. Whole-page extents keep the image unreadable by an older
/// stasis that does not know extents (its page file length or overlap
/// check fails) rather than misread, and a file without a whole-page
/// hole is stored exactly as before extents existed.
fn page_aligned(ext: &[(u64, u64)], size: u64) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for &(off, len) in ext {
        let start = off & !(PAGE_SIZE - 1);
        let end = off
            .saturating_add(len)
            .next_multiple_of(PAGE_SIZE)
            .min(size);
        if end <= start {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.offset + last.len >= start => {
                last.len = last.len.max(end - last.offset);
            }
            _ => out.push(Extent {
                offset: start,
                len: end - start,
            }),
        }
    }
    out
}

/// Opens `src` for reading without moving its access time (O_NOATIME,
/// where the file system and our privileges allow it).
fn open_quietly(src: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(src)
        .or_else(|_| std::fs::File::open(src))
}

/// Appends the data extents of `f` (open as `file`) to the page file, each
/// padded to whole pages, and records where they start.
fn write_contents(
    pid: u32,
    file: &std::fs::File,
    f: &mut SavedFile,
    pages: &mut PagesWriter,
    buf: &mut [u8],
    src: &str,
) -> Result<()> {
    let what = format!("{src} (saved file {})", f.id);
    f.offset = write_extents(pid, file, &f.data_extents(), pages, buf, &what)?;
    Ok(())
}

/// Appends the `extents` of `file` to the page file, each padded to whole
/// pages; returns the payload offset of the first.
pub(crate) fn write_extents(
    pid: u32,
    file: &std::fs::File,
    extents: &[Extent],
    pages: &mut PagesWriter,
    buf: &mut [u8],
    what: &str,
) -> Result<u64> {
    let st = Stage::Memory;
    let offset = pages.offset();
    for e in extents {
        let mut done = 0u64;
        while done < e.len {
            let want = (e.len - done).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..want], e.offset + done)
                .map_err(|source| DumpError::Io {
                    pid,
                    stage: st,
                    what: format!("read {what} at {}", e.offset + done),
                    source,
                })?;
            let padded = want.next_multiple_of(PAGE_SIZE as usize);
            buf[want..padded].fill(0);
            pages.write_all(&buf[..padded]).at(pid, st)?;
            done += want as u64;
        }
    }
    Ok(offset)
}

/// Refuses, naming the descriptor or mapping and the option, a saved file
/// above `--ghost-limit` (criu's option for the size of deleted files it
/// carries in the image; ours also bounds memfds).
pub(crate) fn check_ghost_limit(images: &[&mut ProcessImage], limit: u64) -> Result<()> {
    for img in images {
        if let Some(f) = img.saved_files.iter().find(|f| f.size > limit) {
            let pid = img.pid;
            let what = img
                .files
                .iter()
                .find_map(|e| match e.kind {
                    FdKind::Saved { id, .. } if id == f.id => Some(format!("fd {}", e.fd)),
                    _ => None,
                })
                .or_else(|| {
                    img.mm.vmas.iter().find_map(|v| match v.kind {
                        VmaKind::Saved { id } if id == f.id => {
                            Some(format!("mapping {:#x}-{:#x}", v.start, v.end))
                        }
                        _ => None,
                    })
                })
                .unwrap_or_else(|| format!("saved file {}", f.id));
            let name = match &f.kind {
                SavedFileKind::Memfd { name, .. } => format!("/memfd:{name} (deleted)"),
                SavedFileKind::Deleted { path } | SavedFileKind::DeletedDir { path } => {
                    format!("{path}{DELETED}")
                }
                SavedFileKind::Tmpfile { dir } => format!("{dir}/#{}{DELETED}", f.ino),
            };
            return Err(DumpError::Unsupported {
                pid,
                stage: Stage::Check,
                what: format!(
                    "{what} ({name}): {} bytes, above the ghost limit of {limit} bytes for a memfd or deleted file (raise it with --ghost-limit SIZE)",
                    f.size
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: Vec<Extent>) -> Vec<(u64, u64)> {
        v.into_iter().map(|e| (e.offset, e.len)).collect()
    }

    #[test]
    fn extents_widened_to_pages_and_merged() {
        // 1 KiB blocks: data, a 1 KiB hole, data: one extent.
        assert_eq!(
            pairs(page_aligned(&[(0, 1024), (2048, 1024)], 3072)),
            vec![(0, 3072)]
        );
        // A whole-page hole stays a hole; the tail ends at the size.
        assert_eq!(
            pairs(page_aligned(
                &[(0, 8192), (1 << 20, 5000)],
                (1 << 20) + 9000
            )),
            vec![(0, 8192), (1 << 20, 8192)]
        );
        assert_eq!(pairs(page_aligned(&[(0, 100)], 100)), vec![(0, 100)]);
        assert!(page_aligned(&[], 1 << 20).is_empty());
    }
}
