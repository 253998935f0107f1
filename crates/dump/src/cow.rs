//! Private pages a child still shares copy-on-write with an ancestor.
//!
//! After fork, parent and child map the same physical pages until one of
//! them writes. Saving them once and restoring them from one copy keeps a
//! restored tree as small in memory as the original. Two present pages are
//! the same page when /proc/PID/pagemap gives the same PFN (readable by
//! root); a page of a descendant is attributed to the topmost ancestor
//! that maps the same private range (the "owner"): anonymous memory, or
//! a private mapping of the same file at the same offset, whose pages
//! copied on write are anonymous (pagemap bit 61 clear) while the others
//! are the file's own (never counted as shared copies).

use crate::collect::Collected;
use crate::{DumpError, Result, Stage};
use stasis_image::{CowRun, VmaKind, PAGE_SIZE};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const PFN_MASK: u64 = (1 << 55) - 1;

fn private_anon(v: &stasis_image::Vma) -> bool {
    !v.shared
        && v.shmem == 0
        && v.huge_page_size == 0
        && matches!(v.kind, VmaKind::Anon | VmaKind::Heap)
}

/// A private mapping whose written pages may be shared copy-on-write:
/// anonymous, or of a file (regular, memfd, deleted) whose copied pages are
/// anonymous while the others stay the file's.
fn cow_candidate(v: &stasis_image::Vma) -> bool {
    private_anon(v)
        || (!v.shared
            && v.huge_page_size == 0
            && matches!(v.kind, VmaKind::File { .. } | VmaKind::Saved { .. }))
}

/// Whether `w` (an ancestor's VMA) maps what `v` maps: the same range of
/// the same object at the same offset.
fn same_mapping(v: &stasis_image::Vma, w: &stasis_image::Vma) -> bool {
    let same_object = match (&v.kind, &w.kind) {
        (VmaKind::File { file: a }, VmaKind::File { file: b }) => a.dev == b.dev && a.ino == b.ino,
        (VmaKind::Saved { id: a }, VmaKind::Saved { id: b }) => a == b,
        _ => private_anon(v) && private_anon(w),
    };
    w.start == v.start && w.end == v.end && w.pgoff == v.pgoff && cow_candidate(w) && same_object
}

/// Bit 61 of a pagemap entry: a file page or shared anonymous page (not a
/// page copied on write).
const FILE_PAGE: u64 = 1 << 61;

/// /proc/PID/pagemap of the processes one worker reads, each opened once,
/// and the entries of ancestors' VMAs, which every child compares with:
/// read once.
#[derive(Default)]
struct Pagemaps {
    files: HashMap<u32, std::fs::File>,
    owners: HashMap<(u32, u64, u64), std::rc::Rc<Vec<u64>>>,
}

impl Pagemaps {
    fn read(&mut self, pid: u32, start: u64, end: u64) -> Result<Vec<u64>> {
        let path = format!("/proc/{pid}/pagemap");
        let io = |source| DumpError::Io {
            pid,
            stage: Stage::Collect,
            what: format!("read {path}"),
            source,
        };
        let f = match self.files.entry(pid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(std::fs::File::open(&path).map_err(io)?)
            }
        };
        let n = ((end - start) / PAGE_SIZE) as usize;
        let mut buf = vec![0u8; n * 8];
        f.read_exact_at(&mut buf, start / PAGE_SIZE * 8)
            .map_err(io)?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }

    /// An ancestor's entries for `start..end`, read on first use.
    fn owner(&mut self, pid: u32, start: u64, end: u64) -> Result<std::rc::Rc<Vec<u64>>> {
        if let Some(v) = self.owners.get(&(pid, start, end)) {
            return Ok(v.clone());
        }
        let v = std::rc::Rc::new(self.read(pid, start, end)?);
        self.owners.insert((pid, start, end), v.clone());
        Ok(v)
    }
}

/// A VMA of a descendant with pages shared: (VMA index, owner PID, runs).
type SharedVma = (usize, u32, Vec<(u64, u64)>);

/// Removes `cut` (sorted, disjoint) from `runs` (sorted, disjoint).
fn subtract(runs: &[(u64, u64, bool)], cut: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::with_capacity(runs.len());
    for &(s, e, r) in runs {
        let mut cur = s;
        for &(cs, ce) in cut.iter().filter(|&&(cs, ce)| cs < e && ce > s) {
            if cs > cur {
                out.push((cur, cs, r));
            }
            cur = cur.max(ce);
        }
        if cur < e {
            out.push((cur, e, r));
        }
    }
    out
}

/// The VMAs of process `c` with pages shared copy-on-write with an
/// ancestor.
fn shared_of(
    procs: &[Collected],
    c: usize,
    index: &HashMap<u32, usize>,
    maps: &mut Pagemaps,
) -> Result<Vec<SharedVma>> {
    let parent = |i: usize| index.get(&procs[i].image.ppid).copied();
    let mut found: Vec<SharedVma> = Vec::new();
    for (vi, v) in procs[c].image.mm.vmas.iter().enumerate() {
        if !cow_candidate(v) {
            continue;
        }
        // The topmost ancestor mapping the same private anonymous range.
        let mut owner = None;
        let mut a = parent(c);
        while let Some(p) = a {
            let same = procs[p].image.mm.vmas.iter().any(|w| same_mapping(v, w));
            if !same {
                break;
            }
            owner = Some(p);
            a = parent(p);
        }
        let Some(o) = owner else { continue };
        let mine = maps.read(procs[c].host_pid, v.start, v.end)?;
        let theirs = maps.owner(procs[o].host_pid, v.start, v.end)?;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (k, (&m, &t)) in mine.iter().zip(theirs.iter()).enumerate() {
            let same = m & PRESENT != 0
                && t & PRESENT != 0
                && m & SWAPPED == 0
                && (m | t) & FILE_PAGE == 0 // the file's own pages are not copies
                && m & PFN_MASK != 0 // PFNs hidden without CAP_SYS_ADMIN
                && m & PFN_MASK == t & PFN_MASK;
            if same {
                let a = v.start + k as u64 * PAGE_SIZE;
                match runs.last_mut() {
                    Some(r) if r.1 == a => r.1 = a + PAGE_SIZE,
                    _ => runs.push((a, a + PAGE_SIZE)),
                }
            }
        }
        if !runs.is_empty() {
            found.push((vi, procs[o].host_pid, runs));
        }
    }
    Ok(found)
}

/// Finds, for every process but the root, the pages of its private
/// anonymous VMAs that are the very pages of its owner's VMA at the same
/// address; marks the VMA (`cow_owner`), records the runs (`cow_pages`),
/// and drops them from the process's own page plan. PIDs are ours here.
pub(crate) fn find_shared(procs: &mut [Collected]) -> Result<()> {
    let index: HashMap<u32, usize> = procs
        .iter()
        .enumerate()
        .map(|(i, c)| (c.host_pid, i))
        .collect();
    // The pagemaps are read on two threads (every other process each):
    // only reads, of a frozen tree; the results are applied in order.
    let n = procs.len();
    let (evens, odds) = {
        let all: &[Collected] = procs;
        let scan = |first: usize| -> Result<Vec<(usize, Vec<SharedVma>)>> {
            let mut maps = Pagemaps::default();
            (first..n)
                .step_by(2)
                .map(|c| Ok((c, shared_of(all, c, &index, &mut maps)?)))
                .collect()
        };
        if n <= 2 {
            (scan(1), Ok(Vec::new()))
        } else {
            std::thread::scope(|s| {
                let odds = s.spawn(|| scan(2));
                let evens = scan(1);
                let odds = odds.join().unwrap_or_else(|_| {
                    Err(DumpError::Io {
                        pid: all.first().map_or(0, |c| c.host_pid),
                        stage: Stage::Collect,
                        what: "copy-on-write scan thread".into(),
                        source: std::io::Error::other("panicked"),
                    })
                });
                (evens, odds)
            })
        }
    };
    let mut found_all: Vec<(usize, Vec<SharedVma>)> = evens?.into_iter().chain(odds?).collect();
    found_all.sort_unstable_by_key(|(c, _)| *c);
    for (c, found) in found_all {
        let me = &mut procs[c];
        let mut all_cut = Vec::new();
        for (vi, owner, runs) in found {
            me.image.mm.vmas[vi].cow_owner = owner;
            for &(s, e) in &runs {
                me.image.mm.cow_pages.push(CowRun {
                    addr: s,
                    nr_pages: (e - s) / PAGE_SIZE,
                });
            }
            all_cut.extend(runs);
        }
        if !all_cut.is_empty() {
            all_cut.sort_unstable();
            me.page_plan.runs = subtract(&me.page_plan.runs, &all_cut);
            log::info!(
                "pid {}: {} pages shared copy-on-write with an ancestor",
                me.host_pid,
                all_cut.iter().map(|r| (r.1 - r.0) / PAGE_SIZE).sum::<u64>()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::subtract;

    #[test]
    fn subtract_cuts_runs() {
        let runs = [(0, 100, true), (200, 300, false)];
        let cut = [(10, 20), (90, 210), (250, 260)];
        assert_eq!(
            subtract(&runs, &cut),
            vec![
                (0, 10, true),
                (20, 90, true),
                (210, 250, false),
                (260, 300, false)
            ]
        );
        assert_eq!(subtract(&runs, &[]), runs.to_vec());
        assert_eq!(subtract(&runs, &[(0, 300)]), vec![]);
    }
}
