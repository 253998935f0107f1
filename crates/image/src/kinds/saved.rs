//! Files whose contents are in the image (memfds, deleted files): the
//! `Saved` descriptor names a `SavedFile` record by id; the records' spans
//! in the page file are aligned and overlap nothing; every reference
//! resolves to one record in the image.

use std::collections::HashSet;
use std::path::Path;

use crate::checker::{aligned, Checker};
use crate::error::Result;
use crate::limits::{MAX_MEMFD_NAME, MAX_PATH_LEN, MAX_SAVED_FILE, MAX_SAVED_FILES};
use crate::model::{FdKind, ProcessImage, SavedFileKind, VmaKind, PAGE_SIZE};

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
        c.ensure(f.offset.checked_add(saved_span(f.size)).is_some(), || {
            format!("{field}.offset: {:#x} + size overflows", f.offset)
        })?;
        c.ensure(f.mode & !0o7777 == 0, || {
            format!("{field}.mode: {:#o} has bits beyond 0o7777", f.mode)
        })?;
        match &f.kind {
            SavedFileKind::Memfd { name, .. } => {
                c.string(&format!("{field}.kind.name"), name, MAX_MEMFD_NAME)?
            }
            SavedFileKind::Deleted { path } => {
                c.string(&format!("{field}.kind.path"), path, MAX_PATH_LEN)?;
                c.ensure(path.starts_with('/'), || {
                    format!("{field}.kind.path: {path:?} is not absolute")
                })?;
            }
        }
        if f.size > 0 {
            spans.push((f.offset, f.offset + saved_span(f.size), field));
        }
    }
    for (i, r) in img.mm.pages.iter().enumerate() {
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
/// and every `Saved` descriptor or mapping refers to one.
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
