//! Image chains (pre-copy): an image whose page runs are marked
//! `in_parent` takes those pages from its parent image, which may itself
//! have a parent. The link names the parent's directory (relative to the
//! child's, as criu's `--prev-images-dir`) and the xxh3-64 of the parent's
//! inventory payload, so a parent replaced or rewritten since is refused.
//!
//! A restore resolves the chain before creating anything
//! ([`resolve_chain`]): every image of the chain is loaded and verified
//! (checksums of every file), and each process whose runs point into the
//! parent gets one page file of its own again, written into a private
//! temporary directory: its own page file followed by the parent pages it
//! refers to.

use crate::error::{ImageError, Result};
use crate::format::{FileKind, INVENTORY_FILE, PAGES_HEADER_LEN};
use crate::limits::PAGE_SIZE;
use crate::model::{Inventory, PageRun, ProcessImage};
use crate::reader::{read_metadata, Image, ImageDir};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Longest chain a restore follows.
pub const MAX_CHAIN: usize = 64;

/// Where the parent image is, and which one it must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The parent's directory, relative to this image's directory (or
    /// absolute), as given to `--prev-images-dir`.
    pub dir: String,
    /// xxh3-64 of the parent's inventory payload (its header checksum).
    pub inventory_xxh3: u64,
}

/// Write tracking left running by a pre-dump: a holder process keeps one
/// userfaultfd per tracked process open (the target itself holds none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracking {
    /// PID of the holder process (in the dumper's PID namespace).
    pub holder_pid: u32,
    /// Its start time (field 22 of /proc/PID/stat), against PID reuse.
    pub holder_start: u64,
    pub procs: Vec<TrackedProc>,
}

/// One tracked process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedProc {
    /// Its PID in the image.
    pub pid: u32,
    /// Its PID and start time in the dumper's PID namespace.
    pub host_pid: u32,
    pub host_start: u64,
    /// The descriptor number of its userfaultfd in the holder.
    pub fd: i32,
}

/// xxh3-64 of the inventory payload of the image in `dir`.
pub fn inventory_digest(dir: &Path) -> Result<u64> {
    let payload = read_metadata(&dir.join(INVENTORY_FILE), FileKind::Inventory, false)?;
    Ok(xxhash_rust::xxh3::xxh3_64(&payload))
}

/// The parent directory a link names, seen from the child image `dir`.
pub fn parent_path(dir: &Path, link: &ParentLink) -> PathBuf {
    dir.join(&link.dir)
}

/// Opens the parent of the image in `dir` and checks that it is the one
/// the link names.
pub fn open_parent(dir: &Path, link: &ParentLink) -> Result<(ImageDir, Inventory)> {
    let pdir = parent_path(dir, link);
    let inv_path = pdir.join(INVENTORY_FILE);
    let parent = ImageDir::open(&pdir).map_err(|e| {
        ImageError::invalid(
            &dir.join(INVENTORY_FILE),
            format!("parent image {}: {e}", pdir.display()),
        )
    })?;
    let digest = inventory_digest(&pdir)?;
    if digest != link.inventory_xxh3 {
        return Err(ImageError::invalid(
            &inv_path,
            format!(
                "not the parent image this one was dumped against (inventory checksum {digest:#x}, expected {:#x})",
                link.inventory_xxh3
            ),
        ));
    }
    let inv = parent.load_inventory()?;
    Ok((parent, inv))
}

/// An image whose pages are all in files of its own: the page file to
/// read for each process (in inventory order), and the temporary
/// directory holding merged ones (removed on drop).
pub struct Resolved {
    pub image: Image,
    pub pages: Vec<PathBuf>,
    _tmp: Option<TempDir>,
    /// Kept open: the parents' resolutions the merged files were built from.
    _parents: Vec<Resolved>,
}

/// A private directory removed with its contents on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads and verifies the image in `dir` and every parent it refers to,
/// and gives each process one page file holding every page it needs.
pub fn resolve_chain(dir: &ImageDir) -> Result<Resolved> {
    resolve_at(dir, 0)
}

/// For a lazy restore: the image in `dir`, its metadata loaded and
/// verified but not its page data (the lazy-pages daemon serves the pages
/// and checks them); an image with a parent is refused by name.
pub fn resolve_lazy(dir: &ImageDir) -> Result<Resolved> {
    let image = dir.load_all_with(false)?;
    if image.inventory.parent.is_some()
        || image
            .processes
            .iter()
            .any(|p| p.mm.pages.iter().any(|r| r.in_parent))
    {
        return Err(ImageError::invalid(
            &dir.path().join(INVENTORY_FILE),
            "--lazy-pages: an image with a parent image (pre-copy chain) is not restored lazily yet",
        ));
    }
    let pages: Vec<PathBuf> = image
        .inventory
        .processes
        .iter()
        .map(|r| dir.pages_path(r))
        .collect();
    for p in &pages {
        if crate::compress::is_compressed(p)? {
            return Err(ImageError::invalid(
                p,
                "--lazy-pages: a compressed page file is not served lazily yet (restore it without --lazy-pages)",
            ));
        }
    }
    Ok(Resolved {
        image,
        pages,
        _tmp: None,
        _parents: vec![],
    })
}

fn resolve_at(dir: &ImageDir, depth: usize) -> Result<Resolved> {
    let inv_path = dir.path().join(INVENTORY_FILE);
    if depth > MAX_CHAIN {
        return Err(ImageError::invalid(
            &inv_path,
            format!("parent chain longer than {MAX_CHAIN} images"),
        ));
    }
    let mut image = dir.load_all()?;
    let mut pages: Vec<PathBuf> = image
        .inventory
        .processes
        .iter()
        .map(|r| dir.pages_path(r))
        .collect();
    // Compressed page files (verified by `load_all`) are inflated first,
    // so that everything below and every reader sees raw page files.
    let mut tmp: Option<TempDir> = None;
    for (i, img) in image.processes.iter().enumerate() {
        if crate::compress::is_compressed(&pages[i])? {
            let t = match &tmp {
                Some(t) => t,
                None => tmp.insert(temp_dir()?),
            };
            let out = t.0.join(format!("inflated-{}.img", img.pid));
            crate::compress::inflate_file(&pages[i], &out)?;
            pages[i] = out;
        }
    }
    let needs_parent = image
        .processes
        .iter()
        .any(|p| p.mm.pages.iter().any(|r| r.in_parent));
    let link = match (&image.inventory.parent, needs_parent) {
        (_, false) => {
            return Ok(Resolved {
                image,
                pages,
                _tmp: tmp,
                _parents: vec![],
            })
        }
        (None, true) => {
            return Err(ImageError::invalid(
                &inv_path,
                "page runs refer to a parent image, but the inventory names none",
            ))
        }
        (Some(l), true) => l.clone(),
    };
    let (pdir, _) = open_parent(dir.path(), &link)?;
    let parent = resolve_at(&pdir, depth + 1)?;
    let tmp = match tmp {
        Some(t) => t,
        None => temp_dir()?,
    };
    for (i, img) in image.processes.iter_mut().enumerate() {
        if !img.mm.pages.iter().any(|r| r.in_parent) {
            continue;
        }
        let Some(pi) = parent.image.processes.iter().position(|p| p.pid == img.pid) else {
            return Err(ImageError::invalid(
                &inv_path,
                format!(
                    "process {} refers to its parent image's pages, but {} has no process {}",
                    img.pid,
                    pdir.path().display(),
                    img.pid
                ),
            ));
        };
        let out = tmp.0.join(format!("pages-{}.img", img.pid));
        merge(
            &pages[i],
            img,
            &parent.pages[pi],
            &parent.image.processes[pi].mm.pages,
            &out,
        )?;
        pages[i] = out;
    }
    Ok(Resolved {
        image,
        pages,
        _tmp: Some(tmp),
        _parents: vec![parent],
    })
}

fn temp_dir() -> Result<TempDir> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!("stasis-chain-{}-{nanos:x}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&p)
        .map_err(|e| ImageError::io(&p, "create", e))?;
    Ok(TempDir(p))
}

/// Writes `out`: a copy of the page file `own`, followed by the parent's
/// pages for every `in_parent` run of `img`, whose runs are rewritten to
/// point there.
fn merge(
    own: &Path,
    img: &mut ProcessImage,
    parent_file: &Path,
    parent_runs: &[PageRun],
    out: &Path,
) -> Result<()> {
    let io = |what: &'static str, e| ImageError::io(out, what, e);
    let mut src = File::open(own).map_err(|e| ImageError::io(own, "open", e))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| io("create", e))?;
    let mut end = std::io::copy(&mut src, &mut dst).map_err(|e| io("copy", e))?;
    let pf = File::open(parent_file).map_err(|e| ImageError::io(parent_file, "open", e))?;
    let mut buf = vec![0u8; 1 << 20];
    for run in img.mm.pages.iter_mut().filter(|r| r.in_parent) {
        let at = end;
        let mut addr = run.addr;
        let stop = run.addr + run.nr_pages * PAGE_SIZE;
        while addr < stop {
            let (from, n) = find(parent_runs, addr, stop).ok_or_else(|| {
                ImageError::invalid(
                    out,
                    format!(
                        "process {}: page {addr:#x} is in neither this image nor its parent",
                        img.pid
                    ),
                )
            })?;
            copy_at(&pf, PAGES_HEADER_LEN + from, &dst, end, n, &mut buf)
                .map_err(|e| io("copy parent pages", e))?;
            end += n;
            addr += n;
        }
        run.offset = at - PAGES_HEADER_LEN;
        run.in_parent = false;
    }
    dst.sync_data().map_err(|e| io("fsync", e))?;
    Ok(())
}

/// The payload offset of `addr` in `runs` and how many bytes from there
/// (at most up to `stop`) are contiguous in the file.
fn find(runs: &[PageRun], addr: u64, stop: u64) -> Option<(u64, u64)> {
    let i = runs.partition_point(|r| r.addr + r.nr_pages * PAGE_SIZE <= addr);
    let r = runs.get(i).filter(|r| r.addr <= addr && !r.in_parent)?;
    let end = (r.addr + r.nr_pages * PAGE_SIZE).min(stop);
    Some((r.offset + (addr - r.addr), end - addr))
}

fn copy_at(
    src: &File,
    from: u64,
    dst: &File,
    to: u64,
    len: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], from + done)?;
        dst.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}
