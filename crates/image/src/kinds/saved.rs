//! Files whose contents are in the image (memfds, files and directories
//! deleted while open): the `Saved` descriptor names a `SavedFile` record
//! by id; the records' spans in the page file are aligned and overlap
//! nothing; every reference (descriptor, mapping, deleted working
//! directory) resolves to one record in the image. Besides their bytes a
//! record keeps the owner, the times and the data extents, so that a
//! restored object is the same one down to its holes.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checker::{aligned, Checker};
use crate::error::Result;
use crate::limits::{MAX_EXTENTS, MAX_MEMFD_NAME, MAX_PATH_LEN, MAX_SAVED_FILE, MAX_SAVED_FILES};
use crate::model::{FdKind, ProcessImage, SavedFile, SavedFileKind, VmaKind, PAGE_SIZE};

/// Owner of a saved file (`st_uid`, `st_gid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Access and modification times of a saved file (set with `futimens`
/// after its contents). The change time cannot be set: it is the time of
/// the restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTimes {
    pub atime_sec: i64,
    pub atime_nsec: i64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

/// `len` bytes of data at byte `offset` of a saved file (as SEEK_DATA /
/// SEEK_HOLE see them); everything outside the extents is a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

impl SavedFile {
    /// The data ranges of the file, in order: its extents, or the whole
    /// file for images written before extents were recorded.
    pub fn data_extents(&self) -> Vec<Extent> {
        match &self.extents {
            Some(e) => e.clone(),
            None if self.size > 0 => vec![Extent {
                offset: 0,
                len: self.size,
            }],
            None => Vec::new(),
        }
    }

    /// Bytes the file takes in the page file: each extent padded to whole
    /// pages, one after the other from `offset`.
    pub fn payload_len(&self) -> u64 {
        self.data_extents()
            .iter()
            .fold(0u64, |acc, e| acc.saturating_add(saved_span(e.len)))
    }
}

/// Extents are sorted, disjoint, non-empty and inside the file.
fn validate_extents(f: &SavedFile) -> std::result::Result<(), String> {
    let Some(ext) = &f.extents else {
        return Ok(());
    };
    if ext.len() > MAX_EXTENTS {
        return Err(format!("{} extents, cap {MAX_EXTENTS}", ext.len()));
    }
    let mut end = 0u64;
    for (i, e) in ext.iter().enumerate() {
        let stop = e
            .offset
            .checked_add(e.len)
            .ok_or(format!("[{i}] overflows"))?;
        if e.len == 0 || e.offset < end || stop > f.size {
            return Err(format!(
                "[{i}] {}+{} is empty, out of order or beyond the size {}",
                e.offset, e.len, f.size
            ));
        }
        end = stop;
    }
    Ok(())
}

/// Bytes a saved file of `size` takes in the page file: whole pages.
pub fn saved_span(size: u64) -> u64 {
    size.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// A `Saved` descriptor names a record (ids start at 1).
pub(super) fn validate_fd(c: &Checker<'_>, field: &str, id: u64) -> Result<()> {
    c.ensure(id > 0, || format!("{field}.id: 0"))
}

/// Saved files: ids unique, sizes capped, names and paths bounded, page
/// file spans aligned and not shared with page runs or each other.
pub(crate) fn validate_saved(c: &Checker<'_>, img: &ProcessImage) -> Result<()> {
    c.count("saved_files", img.saved_files.len(), MAX_SAVED_FILES)?;
    if img.saved_files.is_empty() {
        return Ok(());
    }
    let mut ids = HashSet::new();
    let mut spans = Vec::with_capacity(img.saved_files.len() + img.mm.pages.len());
    for (i, f) in img.saved_files.iter().enumerate() {
        let field = format!("saved_files[{i}]");
        c.ensure(f.id > 0 && ids.insert(f.id), || {
            format!("{field}.id: {} is 0 or listed twice", f.id)
        })?;
        c.ensure(f.size <= MAX_SAVED_FILE, || {
            format!("{field}.size: {} above the cap {MAX_SAVED_FILE}", f.size)
        })?;
        c.ensure(aligned(f.offset), || {
            format!("{field}.offset: {:#x} not page-aligned", f.offset)
        })?;
        validate_extents(f).map_err(|e| c.err(format!("{field}.extents: {e}")))?;
        c.ensure(f.offset.checked_add(f.payload_len()).is_some(), || {
            format!("{field}.offset: {:#x} + size overflows", f.offset)
        })?;
        c.ensure(f.mode & !0o7777 == 0, || {
            format!("{field}.mode: {:#o} has bits beyond 0o7777", f.mode)
        })?;
        match &f.kind {
            SavedFileKind::Memfd { name, .. } => {
                c.string(&format!("{field}.kind.name"), name, MAX_MEMFD_NAME)?
            }
            SavedFileKind::Deleted { path }
            | SavedFileKind::DeletedDir { path }
            | SavedFileKind::Tmpfile { dir: path } => {
                c.string(&format!("{field}.kind.path"), path, MAX_PATH_LEN)?;
                c.ensure(path.starts_with('/'), || {
                    format!("{field}.kind.path: {path:?} is not absolute")
                })?;
            }
        }
        if f.payload_len() > 0 {
            spans.push((f.offset, f.offset + f.payload_len(), field));
        }
    }
    for (i, r) in img
        .mm
        .pages
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.in_parent)
    {
        let len = r.nr_pages.saturating_mul(PAGE_SIZE);
        spans.push((
            r.offset,
            r.offset.saturating_add(len),
            format!("mm.pages[{i}]"),
        ));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        c.ensure(w[1].0 >= w[0].1, || {
            format!(
                "{}: page file offset {:#x} overlaps {}",
                w[1].2, w[1].0, w[0].2
            )
        })?;
    }
    Ok(())
}

/// Whole-image rule for saved files: every id defined once in the image,
/// and every `Saved` descriptor or mapping and every deleted working
/// directory (`cwd_saved`) refers to one.
pub fn validate_saved_refs(file: &Path, procs: &[ProcessImage]) -> Result<()> {
    let c = Checker { file };
    let mut defined = HashSet::new();
    for p in procs {
        for f in &p.saved_files {
            c.ensure(defined.insert(f.id), || {
                format!(
                    "saved file {} defined by more than one process (pid {})",
                    f.id, p.pid
                )
            })?;
        }
    }
    for p in procs {
        c.ensure(p.cwd_saved == 0 || defined.contains(&p.cwd_saved), || {
            format!(
                "pid {}: working directory: saved file {} is not in the image",
                p.pid, p.cwd_saved
            )
        })?;
        for e in &p.files {
            if let FdKind::Saved { id, .. } = e.kind {
                c.ensure(defined.contains(&id), || {
                    format!(
                        "pid {} fd {}: saved file {id} is not in the image",
                        p.pid, e.fd
                    )
                })?;
            }
        }
        for v in &p.mm.vmas {
            if let VmaKind::Saved { id } = v.kind {
                c.ensure(defined.contains(&id), || {
                    format!(
                        "pid {} mapping {:#x}-{:#x}: saved file {id} is not in the image",
                        p.pid, v.start, v.end
                    )
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, extents: Option<Vec<(u64, u64)>>) -> SavedFile {
        SavedFile {
            id: 1,
            kind: SavedFileKind::Deleted { path: "/x".into() },
            size,
            offset: 0,
            mode: 0o640,
            dev: 0,
            ino: 0,
            owner: None,
            times: None,
            extents: extents.map(|v| {
                v.into_iter()
                    .map(|(offset, len)| Extent { offset, len })
                    .collect()
            }),
        }
    }

    #[test]
    fn payload_is_extents_padded() {
        assert_eq!(file(5000, None).payload_len(), 8192);
        assert_eq!(file(0, None).payload_len(), 0);
        let f = file(1 << 20, Some(vec![(0, 100), (8192, 4096), (65536, 1)]));
        assert_eq!(f.payload_len(), 3 * 4096);
        assert_eq!(file(1 << 20, Some(vec![])).payload_len(), 0);
    }

    #[test]
    fn bad_extents_refused() {
        assert!(validate_extents(&file(100, Some(vec![(0, 100)]))).is_ok());
        for bad in [
            vec![(0, 101)],
            vec![(10, 0)],
            vec![(50, 10), (40, 5)],
            vec![(0, 20), (10, 20)],
            vec![(u64::MAX, 2)],
        ] {
            assert!(
                validate_extents(&file(100, Some(bad.clone()))).is_err(),
                "{bad:?}"
            );
        }
    }
}
