//! Files whose contents go into the image: memfds (their link reads
//! `/memfd:NAME (deleted)`) and files deleted while open or mapped.
//! Collection marks them `Saved` with id 0 ([`identify`], and the memory
//! plan for mappings); [`link`] identifies each object by (device, inode)
//! across the tree and records it once (`SavedFile`: memfd name and seals,
//! or the deleted path; size, mode); [`write_saved`] appends the bytes to
//! the page file of the process that records it. Files above
//! `dump --ghost-limit` ([`check_ghost_limit`]; at most `MAX_SAVED_FILE`)
//! are refused by name, naming the option.

use super::{Fd, DELETED};
use crate::{At, DumpError, Result, Stage};
use stasis_image::{
    FdKind, PagesWriter, ProcessImage, SavedFile, SavedFileKind, VmaKind, MAX_SAVED_FILE, PAGE_SIZE,
};
use stasis_sys::util;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let deleted = d.deleted();
    match d.stat()? {
        Some(md) if md.file_type().is_file() && deleted => Ok(Some(FdKind::Saved {
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
/// VMAs, found by collection with id 0) by device and inode, gives each an
/// id and records it once, in the first process that has it.
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
                let file = std::fs::File::open(&src).map_err(io(format!("open {what}")))?;
                let seals = name
                    .strip_prefix("/memfd:")
                    .and_then(|n| Some((n, util::get_seals(file.as_fd()).ok()?)));
                let kind = match seals {
                    Some((n, seals)) => SavedFileKind::Memfd {
                        name: n.to_string(),
                        seals,
                    },
                    None => SavedFileKind::Deleted {
                        path: name.to_string(),
                    },
                };
                log::debug!(
                    "pid {pid}: {what}: saved file {id} ({kind:?}, {} bytes)",
                    md.size()
                );
                img.saved_files.push(SavedFile {
                    id,
                    kind,
                    size: md.size(),
                    offset: 0,
                    mode: md.mode() & 0o7777,
                    dev: md.dev(),
                    ino: md.ino(),
                });
            }
            if is_fd {
                if let FdKind::Saved { id: slot, .. } = &mut img.files[i].kind {
                    *slot = id;
                }
            } else {
                img.mm.vmas[i].kind = VmaKind::Saved { id };
            }
        }
    }
    Ok(())
}

/// Appends the contents of the saved files recorded in `img` to its page
/// file, each at a page-aligned offset, padded to whole pages.
/// `host_pid` is the process's PID in our namespace (for /proc).
pub(crate) fn write_saved(
    img: &mut ProcessImage,
    host_pid: u32,
    pages: &mut PagesWriter,
) -> Result<()> {
    use std::io::Read;
    let pid = host_pid;
    let st = Stage::Memory;
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    for k in 0..img.saved_files.len() {
        let (id, size) = (img.saved_files[k].id, img.saved_files[k].size);
        let src = saved_source(img, pid, id).ok_or_else(|| DumpError::Unsupported {
            pid,
            stage: st,
            what: format!("saved file {id}: no descriptor or mapping of it"),
        })?;
        let io = |what: &str| {
            let what = format!("{what} {src} (saved file {id})");
            move |source| DumpError::Io {
                pid,
                stage: st,
                what,
                source,
            }
        };
        let mut f = std::fs::File::open(&src).map_err(io("open"))?;
        img.saved_files[k].offset = pages.offset();
        let mut left = size;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            f.read_exact(&mut buf[..want]).map_err(io("read"))?;
            let padded = want.next_multiple_of(PAGE_SIZE as usize);
            buf[want..padded].fill(0);
            pages.write_all(&buf[..padded]).at(pid, st)?;
            left -= want as u64;
        }
    }
    Ok(())
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
                SavedFileKind::Deleted { path } => format!("{path}{DELETED}"),
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
