//! `stasis dedup -D DIR`: merges an image chain into its top image. Every
//! `in_parent` run of DIR gets its pages, copied from the image of the
//! chain that holds them, appended to a new page file of its process; the
//! runs and checksums are rewritten and the parent link is dropped, so DIR
//! restores alone. The parents are not touched.
//!
//! Atomic: the whole chain is verified first (a broken chain changes
//! nothing); the rewritten core and page files are written under the other
//! name of each pair (`core-PID.img` <-> `core-PID.merged.img`, the same for
//! pages), which the current inventory does not list, and a new inventory
//! naming them is renamed over `inventory.img`. Until that rename DIR is the
//! image it was (restorable through its chain); after it, the standalone
//! one. The superseded files are removed last.

use crate::chain::{locate_verified, merge};
use crate::error::{ImageError, Result};
use crate::format::{encode_metadata, FileKind, INVENTORY_FILE, PAGES_HEADER_LEN};
use crate::model::{Inventory, ProcessRef};
use crate::reader::{parse_process, ImageDir};
use crate::validate::{pages_len, validate_inventory};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What a dedup did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dedup {
    /// Processes whose page file was rewritten.
    pub processes: usize,
    /// Bytes of pages copied from the parent images.
    pub copied: u64,
    /// Images of the chain above DIR that were read (0: already standalone).
    pub parents: usize,
}

/// The inventory being written, before its rename over `inventory.img`.
const INVENTORY_PART: &str = ".inventory.img.dedup-part";

/// The other name of a core or page file of the pair `STEM-PID.img` /
/// `STEM-PID.merged.img`.
fn other_name(stem: &str, pid: u32, current: &str) -> String {
    let plain = format!("{stem}-{pid}.img");
    if current == plain {
        format!("{stem}-{pid}.merged.img")
    } else {
        plain
    }
}

/// Files written so far, removed unless the dedup is committed.
struct Written(Vec<PathBuf>);

impl Drop for Written {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn fsync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| ImageError::io(path, "fsync", e))
}

/// Removes `path` if it exists: a leftover of an interrupted dedup (the
/// caller checked that the inventory does not list it).
fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ImageError::io(path, "remove stale", e))
        }
        _ => Ok(()),
    }
}

/// Rewrites the header of the page file `path` (a copy of another page
/// file with pages appended) for its current payload: length and checksum
/// (kind `pages-chunked`).
fn reseal_pages(path: &Path) -> Result<u64> {
    let io = |what: &'static str, e| ImageError::io(path, what, e);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io("open", e))?;
    let len = f.metadata().map_err(|e| io("stat", e))?.len();
    let payload = len
        .checked_sub(PAGES_HEADER_LEN)
        .ok_or_else(|| ImageError::invalid(path, "merged page file shorter than its header"))?;
    let mut hasher = crate::pagesum::PageSum::new(crate::pagesum::CHUNK);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = PAGES_HEADER_LEN;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], at)
            .map_err(|e| io("read", e))?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    let head = hasher.header_block(payload);
    f.write_all_at(&head, 0)
        .map_err(|e| io("write header", e))?;
    f.sync_all().map_err(|e| io("fsync", e))?;
    Ok(payload)
}

/// Merges the chain of the image in `dir` into it (see the module doc).
pub fn dedup(dir: &Path) -> Result<Dedup> {
    let image_dir = ImageDir::open(dir)?;
    let inv_path = dir.join(INVENTORY_FILE);
    // Everything of the chain is loaded and verified before anything is
    // written: a missing or damaged parent changes nothing.
    let loc = locate_verified(&image_dir)?;
    let inv: &Inventory = &loc.image.inventory;
    if inv.parent.is_none() {
        return Ok(Dedup::default());
    }
    let mut new_inv = inv.clone();
    new_inv.parent = None;
    let mut out = Dedup {
        parents: loc.dirs.len() - 1,
        ..Dedup::default()
    };
    let mut written = Written(Vec::new());
    let mut superseded = Vec::new();
    for (i, img) in loc.image.processes.iter().enumerate() {
        if !img.mm.pages.iter().any(|r| r.in_parent) {
            continue;
        }
        let old = &inv.processes[i];
        let new = ProcessRef {
            pid: old.pid,
            core_file: other_name("core", old.pid, &old.core_file),
            pages_file: other_name("pages", old.pid, &old.pages_file),
        };
        if inv.processes.iter().any(|p| {
            [&p.core_file, &p.pages_file]
                .iter()
                .any(|n| **n == new.core_file || **n == new.pages_file)
        }) {
            return Err(ImageError::invalid(
                &inv_path,
                format!(
                    "dedup: process {}: {} or {} is already listed by the inventory",
                    old.pid, new.core_file, new.pages_file
                ),
            ));
        }
        let (core_path, pages_path) = (dir.join(&new.core_file), dir.join(&new.pages_file));
        remove_stale(&core_path)?;
        remove_stale(&pages_path)?;
        let mut merged = img.clone();
        let before = std::fs::metadata(&loc.pages[i])
            .map_err(|e| ImageError::io(&loc.pages[i], "stat", e))?
            .len();
        written.0.push(pages_path.clone());
        merge(
            &loc.pages[i],
            img.pid,
            &mut merged.mm.pages,
            (&loc.files, &loc.pieces[i]),
            &pages_path,
            (true, &[]),
        )?;
        let payload = reseal_pages(&pages_path)?;
        out.copied += payload + PAGES_HEADER_LEN - before;
        if payload < pages_len(&merged) {
            return Err(ImageError::invalid(
                &pages_path,
                format!(
                    "dedup: merged page file holds {payload} bytes, its runs need {}",
                    pages_len(&merged)
                ),
            ));
        }
        let json = serde_json::to_vec(&merged).map_err(|error| ImageError::Encode {
            path: core_path.clone(),
            error,
        })?;
        let bytes = encode_metadata(FileKind::Core, &json);
        // Decoded and validated as a restore will.
        parse_process(&core_path, &bytes)?;
        written.0.push(core_path.clone());
        write_synced(&core_path, &bytes)?;
        superseded.push(dir.join(&old.core_file));
        superseded.push(dir.join(&old.pages_file));
        new_inv.processes[i] = new;
        out.processes += 1;
    }
    validate_inventory(&inv_path, &new_inv)?;
    let json = serde_json::to_vec(&new_inv).map_err(|error| ImageError::Encode {
        path: inv_path.clone(),
        error,
    })?;
    let part = dir.join(INVENTORY_PART);
    remove_stale(&part)?;
    written.0.push(part.clone());
    write_synced(&part, &encode_metadata(FileKind::Inventory, &json))?;
    fsync(dir)?;
    if std::env::var_os("STASIS_TEST_DEDUP_STOP").is_some() {
        // Tests: a dedup killed just before its commit point.
        std::process::exit(137);
    }
    std::fs::rename(&part, &inv_path).map_err(|e| ImageError::io(&inv_path, "rename", e))?;
    written.0.clear();
    fsync(dir)?;
    for p in superseded {
        remove_stale(&p)?;
    }
    fsync(dir)?;
    Ok(out)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let f = crate::writer::create_file(path)?;
    f.write_all_at(bytes, 0)
        .and_then(|()| f.sync_all())
        .map_err(|e| ImageError::io(path, "write", e))
}
