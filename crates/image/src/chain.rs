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
//! refers to. A lazy restore merges nothing but the few eager pages
//! ([`resolve_lazy`]); the lazy-pages daemon serves every other page from
//! the image of the chain that holds it ([`locate_lazy`]).

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
    /// Kept: the ancestors' inflated page files the merge read.
    _parents: Option<Box<Located>>,
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
/// and checks them). `lazy` gives the lazily filled areas of each process
/// (`restore::lazy::lazy_ranges`). In a pre-copy chain the pages outside
/// them that sit in a parent image (the few eager ones: stacks, file
/// pages, read-only areas) are copied into a temporary page file of the
/// process, after its own pages; the lazy ones stay `in_parent` (the
/// daemon serves them from the image of the chain that holds them, see
/// [`locate_lazy`]): nothing of the chain is merged.
pub fn resolve_lazy(
    dir: &ImageDir,
    lazy: impl FnOnce(&[ProcessImage]) -> Vec<Vec<(u64, u64)>>,
) -> Result<Resolved> {
    let Located {
        mut image,
        mut pages,
        files,
        pieces,
        ..
    } = locate(dir, 0, false)?;
    let ranges = lazy(&image.processes);
    let mut tmp: Option<TempDir> = None;
    for (i, img) in image.processes.iter_mut().enumerate() {
        let (mut eager, inside) = split_runs(&img.mm.pages, ranges.get(i).map_or(&[], |r| r));
        if !eager.iter().any(|r| r.in_parent) {
            continue;
        }
        let t = match &tmp {
            Some(t) => t,
            None => tmp.insert(temp_dir()?),
        };
        let out = t.0.join(format!("pages-{}.img", img.pid));
        let mut skip: Vec<(u64, u64)> = inside
            .iter()
            .filter(|r| !r.in_parent)
            .map(|r| {
                let s = PAGES_HEADER_LEN + r.offset;
                (s, s + r.nr_pages * PAGE_SIZE)
            })
            .collect();
        skip.sort_unstable();
        merge(
            &pages[i],
            img.pid,
            &mut eager,
            (&files, &pieces[i]),
            &out,
            (false, &skip),
        )?;
        eager.extend(inside);
        eager.sort_unstable_by_key(|r| r.addr);
        img.mm.pages = eager;
        pages[i] = out;
    }
    Ok(Resolved {
        image,
        pages,
        _tmp: tmp,
        _parents: None,
    })
}

/// Splits page runs by `ranges` (sorted, disjoint): the parts outside
/// them, and the parts inside.
pub fn split_runs(runs: &[PageRun], ranges: &[(u64, u64)]) -> (Vec<PageRun>, Vec<PageRun>) {
    let (mut out, mut inside) = (Vec::new(), Vec::new());
    for run in runs {
        let end = run.addr + run.nr_pages * PAGE_SIZE;
        let mut cur = run.addr;
        let piece = |s: u64, e: u64| PageRun {
            addr: s,
            nr_pages: (e - s) / PAGE_SIZE,
            offset: run.offset + (s - run.addr),
            in_parent: run.in_parent,
        };
        for &(s, e) in ranges.iter().filter(|&&(s, e)| s < end && e > run.addr) {
            let (s, e) = (s.max(run.addr), e.min(end));
            if s > cur {
                out.push(piece(cur, s));
            }
            inside.push(piece(s, e));
            cur = e;
        }
        if cur < end {
            out.push(piece(cur, end));
        }
    }
    (out, inside)
}

/// The pages of a chain located for the lazy-pages daemon: the top
/// image's metadata (page data not verified), every page file of the
/// chain, and per process where each of its runs' pages are.
pub struct LazyChain {
    pub image: Image,
    /// Every page file the pieces refer to (the ancestors' first).
    pub files: Vec<PathBuf>,
    /// Per process (inventory order): (start, end, index into `files`,
    /// payload offset there), disjoint, in address order.
    pub pieces: Vec<Pieces>,
    /// Every image directory of the chain (the ancestors' first), for the
    /// daemon's background check of their page files.
    pub dirs: Vec<PathBuf>,
}

/// Loads the image in `dir` and its parents (metadata and links checked,
/// page data not read) and locates every page of every run.
pub fn locate_lazy(dir: &ImageDir) -> Result<LazyChain> {
    let l = locate(dir, 0, false)?;
    Ok(LazyChain {
        image: l.image,
        files: l.files,
        pieces: l.pieces,
        dirs: l.dirs,
    })
}

/// Where the pages of one process's runs are, in address order: disjoint
/// pieces (start, end, index into [`Located::files`], payload offset there).
pub type Pieces = Vec<(u64, u64, usize, u64)>;

/// An image of a chain with its pages located, not copied: each run of
/// each process is found in the page file of the image that holds it
/// (this one, or the nearest ancestor whose run is not `in_parent`).
pub(crate) struct Located {
    pub(crate) image: Image,
    /// Its own page files (raw; inflated into `tmp` if compressed).
    pub(crate) pages: Vec<PathBuf>,
    tmp: Option<TempDir>,
    /// Every page file the pieces refer to (the ancestors' first).
    pub(crate) files: Vec<PathBuf>,
    /// Per process, in inventory order.
    pub(crate) pieces: Vec<Pieces>,
    /// Every image directory of the chain (the ancestors' first).
    pub(crate) dirs: Vec<PathBuf>,
    /// Kept: the ancestors' inflated page files live in their `tmp`.
    _parent: Option<Box<Located>>,
}

/// Loads and verifies the image in `dir` and, if its runs refer to it, its
/// parent (recursively), and locates every page of every run. One pass:
/// nothing is copied here, so a chain of K images costs one copy of the
/// pages at the top ([`resolve_at`]), not one per image. Without `verify`
/// (lazy restore) the page data is neither read nor checked, and a
/// compressed page file is refused.
fn locate(dir: &ImageDir, depth: usize, verify: bool) -> Result<Located> {
    let inv_path = dir.path().join(INVENTORY_FILE);
    if depth > MAX_CHAIN {
        return Err(ImageError::invalid(
            &inv_path,
            format!("parent chain longer than {MAX_CHAIN} images"),
        ));
    }
    let image = dir.load_all_with(verify)?;
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
            if !verify {
                return Err(ImageError::invalid(
                    &pages[i],
                    "--lazy-pages: a compressed page file is not served lazily yet (restore it without --lazy-pages)",
                ));
            }
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
    let parent = match (&image.inventory.parent, needs_parent) {
        (_, false) => None,
        (None, true) => {
            return Err(ImageError::invalid(
                &inv_path,
                "page runs refer to a parent image, but the inventory names none",
            ))
        }
        (Some(l), true) => {
            let (pdir, _) = open_parent(dir.path(), l)?;
            Some((
                pdir.path().to_path_buf(),
                Box::new(locate(&pdir, depth + 1, verify)?),
            ))
        }
    };
    let mut files = parent
        .as_ref()
        .map(|(_, p)| p.files.clone())
        .unwrap_or_default();
    let base = files.len();
    files.extend(pages.iter().cloned());
    let mut dirs = parent
        .as_ref()
        .map(|(_, p)| p.dirs.clone())
        .unwrap_or_default();
    dirs.push(dir.path().to_path_buf());
    let mut pieces = Vec::with_capacity(image.processes.len());
    for (i, img) in image.processes.iter().enumerate() {
        let mut out: Pieces = Vec::with_capacity(img.mm.pages.len());
        let from_parent = match &parent {
            Some((pdir, p)) if img.mm.pages.iter().any(|r| r.in_parent) => {
                let Some(pi) = p.image.processes.iter().position(|q| q.pid == img.pid) else {
                    return Err(ImageError::invalid(
                        &inv_path,
                        format!(
                            "process {} refers to its parent image's pages, but {} has no process {}",
                            img.pid,
                            pdir.display(),
                            img.pid
                        ),
                    ));
                };
                Some(&p.pieces[pi])
            }
            _ => None,
        };
        for r in &img.mm.pages {
            let stop = r.addr + r.nr_pages * PAGE_SIZE;
            if !r.in_parent {
                out.push((r.addr, stop, base + i, r.offset));
                continue;
            }
            let src = from_parent.map(Vec::as_slice).unwrap_or_default();
            let mut addr = r.addr;
            let mut k = src.partition_point(|p| p.1 <= addr);
            while addr < stop {
                match src.get(k) {
                    Some(&(s, e, f, off)) if s <= addr => {
                        let to = e.min(stop);
                        out.push((addr, to, f, off + (addr - s)));
                        addr = to;
                        k += 1;
                    }
                    _ => {
                        return Err(ImageError::invalid(
                            &inv_path,
                            format!(
                            "process {}: page {addr:#x} is in neither this image nor its parent",
                            img.pid
                        ),
                        ))
                    }
                }
            }
        }
        // Runs are in address order in a valid image; the lookups need it.
        out.sort_unstable_by_key(|p| p.0);
        pieces.push(out);
    }
    Ok(Located {
        image,
        pages,
        tmp,
        files,
        pieces,
        dirs,
        _parent: parent.map(|(_, p)| p),
    })
}

/// The image in `dir` and every parent it refers to, loaded and fully
/// verified, its pages located (for `dedup`).
pub(crate) fn locate_verified(dir: &ImageDir) -> Result<Located> {
    locate(dir, 0, true)
}

fn resolve_at(dir: &ImageDir, depth: usize) -> Result<Resolved> {
    let loc = locate(dir, depth, true)?;
    let Located {
        mut image,
        mut pages,
        tmp,
        files,
        pieces,
        _parent,
        ..
    } = loc;
    if _parent.is_none() {
        return Ok(Resolved {
            image,
            pages,
            _tmp: tmp,
            _parents: None,
        });
    }
    let tmp = match tmp {
        Some(t) => t,
        None => temp_dir()?,
    };
    for (i, img) in image.processes.iter_mut().enumerate() {
        if !img.mm.pages.iter().any(|r| r.in_parent) {
            continue;
        }
        let out = tmp.0.join(format!("pages-{}.img", img.pid));
        merge(
            &pages[i],
            img.pid,
            &mut img.mm.pages,
            (&files, &pieces[i]),
            &out,
            (false, &[]),
        )?;
        pages[i] = out;
    }
    Ok(Resolved {
        image,
        pages,
        _tmp: Some(tmp),
        _parents: _parent,
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

/// Writes `out`: a copy of the page file `own`, followed by the pages of
/// every `in_parent` run of `runs` (of process `pid`), read where `pieces`
/// locates them; those runs are rewritten to point there. `durable`:
/// synced to disk (an image file); a restore's temporary copy is not
/// (on a disk file system that sync was most of a lazy restore's time).
/// `skip`: sorted byte ranges of `own` left out of the copy (a hole
/// there: the pages of a lazy restore, which the daemon serves from the
/// image itself).
pub(crate) fn merge(
    own: &Path,
    pid: u32,
    runs: &mut [PageRun],
    (files, pieces): (&[PathBuf], &Pieces),
    out: &Path,
    (durable, skip): (bool, &[(u64, u64)]),
) -> Result<()> {
    let io = |what: &'static str, e| ImageError::io(out, what, e);
    let mut src = File::open(own).map_err(|e| ImageError::io(own, "open", e))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| io("create", e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut end = if skip.is_empty() {
        std::io::copy(&mut src, &mut dst).map_err(|e| io("copy", e))?
    } else {
        // Everything but the skipped byte ranges, at the same offsets.
        let len = src
            .metadata()
            .map_err(|e| ImageError::io(own, "stat", e))?
            .len();
        let mut at = 0;
        for &(s, e) in skip.iter().chain(std::iter::once(&(len, len))) {
            let s = s.clamp(at, len);
            copy_at(&src, at, &dst, at, s - at, &mut buf).map_err(|e| io("copy", e))?;
            at = at.max(e.min(len));
        }
        dst.set_len(len).map_err(|e| io("truncate", e))?;
        len
    };
    let mut open: Vec<Option<File>> = (0..files.len()).map(|_| None).collect();
    for run in runs.iter_mut().filter(|r| r.in_parent) {
        let at = end;
        let mut addr = run.addr;
        let stop = run.addr + run.nr_pages * PAGE_SIZE;
        let mut k = pieces.partition_point(|p| p.1 <= addr);
        while addr < stop {
            // `locate` checked that the pieces cover every run.
            let Some(&(s, e, f, off)) = pieces.get(k).filter(|p| p.0 <= addr) else {
                return Err(ImageError::invalid(
                    out,
                    format!("process {pid}: page {addr:#x} not located"),
                ));
            };
            let n = e.min(stop) - addr;
            let pf = match &mut open[f] {
                Some(pf) => pf,
                slot => slot.insert(
                    File::open(&files[f]).map_err(|e| ImageError::io(&files[f], "open", e))?,
                ),
            };
            copy_at(
                pf,
                PAGES_HEADER_LEN + off + (addr - s),
                &dst,
                end,
                n,
                &mut buf,
            )
            .map_err(|e| io("copy parent pages", e))?;
            end += n;
            addr += n;
            k += 1;
        }
        run.offset = at - PAGES_HEADER_LEN;
        run.in_parent = false;
    }
    if durable {
        dst.sync_data().map_err(|e| io("fsync", e))?;
    }
    Ok(())
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
