//! Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, a shared mapping of
//! /dev/zero, `[anon_shmem:NAME]`): one shmem object, perhaps mapped by
//! several processes of the tree. Its pages belong to the object, not to
//! a page table: a page written by a process that has exited since, or
//! dropped from the writer's page table (MADV_DONTNEED, reclaim), is still
//! there for every other mapping, though no page table of the tree shows
//! it. So the pages saved are the object's (SEEK_DATA/SEEK_HOLE on the
//! object, opened through /proc/PID/map_files), and each page of an object
//! is saved once, by the first process of the tree that maps it: the
//! restore fills the object through that process's mapping before any
//! process runs. (Shared hugetlb memory keeps the page-table query.)

use crate::{At, DumpError, Result, Stage};
use stasis_image::VmaKind;
use stasis_proc::SmapsEntry;
use std::collections::HashMap;
use std::os::fd::AsFd;

/// Object offsets `[from, to)` already saved, by object (shmem inode).
#[derive(Default)]
pub(crate) struct Saved(HashMap<u64, Vec<(u64, u64)>>);

impl Saved {
    /// Whether no shared anonymous object was seen yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether the mapping is a window on a shared anonymous object (not
/// hugetlb) whose pages [`runs`] finds.
pub(crate) fn is_object(s: &SmapsEntry, kind: &VmaKind) -> bool {
    s.map.shared
        && s.map.inode != 0
        && matches!(kind, VmaKind::Anon)
        && crate::memkinds::huge_page_size(s).is_none()
}

/// The address ranges of the mapping whose pages the image must hold: the
/// object's data in the mapping's window, less what an earlier mapping
/// (of this process or one collected before) saved already.
pub(crate) fn runs(pid: u32, s: &SmapsEntry, saved: &mut Saved) -> Result<Vec<(u64, u64)>> {
    let m = &s.map;
    let (from, to) = (m.offset, m.offset + (m.end - m.start));
    let done = saved.0.entry(m.inode).or_default();
    if outside((from, to), done).is_empty() {
        return Ok(Vec::new());
    }
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let object = std::fs::File::open(&path).map_err(|source| DumpError::Io {
        pid,
        stage: Stage::Collect,
        what: format!("open {path} (shared memory object)"),
        source,
    })?;
    let data =
        stasis_sys::fileops::data_extents_in(object.as_fd(), from, to).at(pid, Stage::Collect)?;
    let mut out = Vec::new();
    for (off, len) in data {
        // Whole pages: an object's size need not be a page multiple.
        let page = stasis_image::PAGE_SIZE;
        let (off, end) = (off / page * page, (off + len).div_ceil(page) * page);
        for (a, b) in outside((off.max(from), end.min(to)), done) {
            out.push((m.start + (a - from), m.start + (b - from)));
        }
    }
    done.push((from, to));
    Ok(out)
}

/// The parts of `[a, b)` outside every range of `done`.
fn outside((a, b): (u64, u64), done: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut parts = vec![(a, b)];
    for &(x, y) in done {
        parts = parts
            .into_iter()
            .flat_map(|(p, q)| {
                let left = (p, q.min(x));
                let right = (p.max(y), q);
                [left, right].into_iter().filter(|(s, e)| s < e)
            })
            .collect();
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::outside;

    #[test]
    fn outside_cuts_saved_ranges() {
        assert_eq!(outside((0, 10), &[]), vec![(0, 10)]);
        assert_eq!(outside((0, 10), &[(3, 5)]), vec![(0, 3), (5, 10)]);
        assert_eq!(outside((0, 10), &[(0, 10)]), vec![]);
        assert_eq!(outside((4, 8), &[(0, 5), (7, 20)]), vec![(5, 7)]);
        assert_eq!(outside((4, 8), &[(10, 20)]), vec![(4, 8)]);
    }
}
