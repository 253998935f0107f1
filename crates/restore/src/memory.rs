//! Rebuilding a child's address space by remote syscalls.

use crate::{At, RestoreError, Result, Stage};
use stasis_image::progress::Progress;
use stasis_image::{MmState, PageRun, Vma, VmaKind, PAGES_HEADER_LEN, PAGE_SIZE};
use stasis_sys::buf::FileMap;
use stasis_sys::ptrace;
use stasis_sys::remote::RemoteThread;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::mpsc;

const MADV_POPULATE_WRITE: u64 = stasis_sys::buf::MADV_POPULATE_WRITE as u64;

/// Size of the stub + scratch area the restorer injects through.
pub(crate) const STUB_LEN: u64 = 256 * 1024;
const SCRATCH_IOV_MAX: usize = 1024;
const MAX_BATCH_BYTES: u64 = 1 << 30;

fn is_special(k: &VmaKind) -> bool {
    matches!(
        k,
        VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
    )
}

fn special_kind(path: Option<&str>) -> Option<VmaKind> {
    match path {
        Some("[vdso]") => Some(VmaKind::Vdso),
        Some("[vvar]") => Some(VmaKind::Vvar),
        Some("[vvar_vclock]") => Some(VmaKind::VvarVclock),
        Some("[vsyscall]") => Some(VmaKind::Vsyscall),
        _ => None,
    }
}

/// Picks a free address for the stub area: in a gap of the target's
/// layout, and free in the restorer itself (the caller maps it with
/// MAP_FIXED_NOREPLACE and asks again on EEXIST via `skip`).
pub(crate) fn stub_candidates(mm: &MmState) -> Vec<u64> {
    free_candidates(mm, STUB_LEN)
}

/// Addresses where `len` bytes fit in a gap of the target's layout (with
/// guard space), highest gaps first.
pub(crate) fn free_candidates(mm: &MmState, len: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut prev_end = 1u64 << 32; // stay clear of low addresses and brk-adjacent space
    let mut gaps = Vec::new();
    for v in mm
        .vmas
        .iter()
        .filter(|v| !matches!(v.kind, VmaKind::Vsyscall))
    {
        if v.start > prev_end {
            gaps.push((prev_end, v.start));
        }
        prev_end = prev_end.max(v.end);
    }
    gaps.push((prev_end, stasis_image::USER_SPACE_END));
    let guard = 16 * PAGE_SIZE;
    for (s, e) in gaps.into_iter().rev() {
        if e - s < len + 2 * guard + 0x10000 {
            continue;
        }
        out.push((e - guard - len) & !0xffff);
        out.push((s + guard + 0xffff) & !0xffff);
        let mid = s + (e - s - len) / 2;
        out.push(mid & !0xffff);
    }
    out.retain(|a| *a >= 1 << 32);
    out
}

/// Key in [`ServiceFds::files`] of the descriptor a mapped file is mapped
/// through: the path for a read-only one, `rw:PATH` for one open for
/// writing (what a shared mapping that is or may become writable needs).
pub(crate) fn file_key(path: &str, write: bool) -> String {
    if write {
        format!("rw:{path}")
    } else {
        path.to_string()
    }
}

/// Whether a file VMA must be mapped through a descriptor open for
/// writing: a shared mapping that is writable or may become so (VmFlags
/// `mw`). Private mappings never need one.
pub(crate) fn maps_writable(v: &Vma) -> bool {
    v.shared && (v.prot & libc::PROT_WRITE as u32 != 0 || v.maywrite)
}

/// Key in [`ServiceFds::files`] of the descriptor a saved file (memfd,
/// deleted file) is mapped through; `ro`: the read-only one. Paths start
/// with `/`, these keys never do.
pub(crate) fn saved_key(id: u64, ro: bool) -> String {
    if ro {
        format!("saved-ro:{id}")
    } else {
        format!("saved:{id}")
    }
}

/// Service descriptors in the child: numbers of the pages file, the exe and
/// each mapped file (by path, or [`saved_key`]).
pub(crate) struct ServiceFds {
    pub pages: i32,
    pub exe: i32,
    pub files: HashMap<String, i32>,
    /// Shared anonymous objects the restorer created before forking, as
    /// inherited by every process: id -> (address, length).
    pub shmem: HashMap<u64, (u64, u64)>,
    /// Private memory shared copy-on-write, filled by the restorer with the
    /// owner's pages before forking: (owner PID, VMA start) -> (address, length).
    pub cow: HashMap<(u32, u64), (u64, u64)>,
    /// This process's PID in the image.
    pub image_pid: u32,
    /// SysV shm segments the tree attaches: id -> size.
    pub sysv: HashMap<i32, u64>,
    /// Segments this process attaches and detaches once more after its
    /// memory: it was their last attacher (sysvipc::PidPlan).
    pub sysv_touch: Vec<i32>,
    /// The restorer's /proc/self/status before the fork: the signal
    /// dispositions (SigCgt, SigIgn) every process of the tree, a fork of
    /// it, inherited, and the credentials (in our user namespace).
    pub restorer: std::sync::Arc<stasis_proc::Status>,
}

/// `spread`: if the restorer and the child are pinned to one CPU, the CPUs
/// the restorer's helper thread may use.
/// The special mappings (vDSO trio) a forked process has: what
/// [`tear_down_start`] leaves of the restorer's layout.
pub(crate) type ChildSpecial = Vec<(VmaKind, u64, u64)>;

/// Starts the tear-down of what the fork inherited (rseq unregistered
/// first: its area is about to go), with the calls queued before, without
/// waiting: the tree's processes tear down at once, each on whichever CPU
/// is free, and [`tear_down_end`] waits for each.
pub(crate) fn tear_down_start(
    r: &mut RemoteThread,
    svc: &ServiceFds,
    stub: u64,
    layout: &Inherited,
) -> Result<ChildSpecial> {
    let pid = r.tid().0 as u32;
    unregister_rseq(r, pid)?;
    let child_special = tear_down(r, pid, svc, stub, layout)?;
    r.flush_start().at(pid, Stage::Memory)?;
    Ok(child_special)
}

/// Waits for the tear-down [`tear_down_start`] started.
pub(crate) fn tear_down_end(r: &mut RemoteThread) -> Result<()> {
    let pid = r.tid().0 as u32;
    r.flush_end().at(pid, Stage::Memory)
}

/// What [`map_start`] mapped: which VMAs come from copy-on-write
/// objects, which were mapped writable for their pages.
pub(crate) struct Mapped {
    from_cow: Vec<bool>,
    has_pages: Vec<bool>,
    /// The pages are filled already ([`fill_start`]).
    filled: bool,
}

/// Starts the mapping of every area (the vDSO moves, then `map_all`) once
/// the tear-down is done, without waiting: the tree's processes map at
/// once when no mapping's order across processes matters (see
/// `tree.rs`); [`map_end`] waits.
pub(crate) fn map_start(
    r: &mut RemoteThread,
    mm: &MmState,
    svc: &ServiceFds,
    stub: u64,
    child_special: &ChildSpecial,
) -> Result<Mapped> {
    let pid = r.tid().0 as u32;
    move_vdso(r, mm, child_special, stub)?;
    let from_cow = from_cow(mm, svc);
    let has_pages = map_all(r, mm, svc, &from_cow, stub)?;
    r.flush_start().at(pid, Stage::Memory)?;
    Ok(Mapped {
        from_cow,
        has_pages,
        filled: false,
    })
}

/// What [`fill_start`] started: the bytes its one preadv must read, and
/// the first address (for an error).
pub(crate) struct Filling(u64, u64);

/// Starts filling the pages of a mapped process ([`map_start`],
/// [`map_end`]) without waiting, when one preadv does it all: every run
/// small (no helper, no userfaultfd), their page-file bytes contiguous, no
/// lazy restore. The tree's processes then fill at once, each on whichever
/// CPU is free, as they tear down and map; [`fill_end`] waits and checks.
/// None: nothing started, [`rebuild`] fills as it always has.
pub(crate) fn fill_start(
    r: &mut RemoteThread,
    mm: &MmState,
    svc: &ServiceFds,
    mapped: &mut Mapped,
) -> Result<Option<Filling>> {
    if crate::lazy::active() {
        return Ok(None);
    }
    let runs = own_runs(mm, &mapped.from_cow);
    let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
        return Ok(None);
    };
    let bytes = last.offset + last.nr_pages * PAGE_SIZE - first.offset;
    let one_call = runs.len() <= SCRATCH_IOV_MAX
        && bytes <= MAX_BATCH_BYTES
        && runs
            .iter()
            .all(|p| p.nr_pages * PAGE_SIZE < BIG_RUN && !p.in_parent)
        && runs
            .windows(2)
            .all(|w| w[1].offset == w[0].offset + w[0].nr_pages * PAGE_SIZE);
    if !one_call {
        return Ok(None);
    }
    let pid = r.tid().0 as u32;
    let at = r
        .write_scratch(0, &runs_iov(&runs))
        .at(pid, Stage::Memory)?;
    r.queue(
        libc::SYS_preadv,
        &[
            svc.pages as u64,
            at,
            runs.len() as u64,
            PAGES_HEADER_LEN + first.offset,
            0,
        ],
        format!("preadv pages into {:#x}", first.addr),
    )
    .at(pid, Stage::Memory)?;
    r.flush_start().at(pid, Stage::Memory)?;
    mapped.filled = true;
    Ok(Some(Filling(bytes, first.addr)))
}

/// Waits for the fill [`fill_start`] started: every byte read.
pub(crate) fn fill_end(r: &mut RemoteThread, f: Filling) -> Result<()> {
    let pid = r.tid().0 as u32;
    let got = r.flush_end_results().at(pid, Stage::Memory)?;
    let Filling(bytes, addr) = f;
    if got.last().copied() != Some(bytes as i64) {
        return Err(RestoreError::Refused {
            pid,
            stage: Stage::Memory,
            what: format!(
                "short read of page data at {addr:#x}: {:?} of {bytes} bytes",
                got.last()
            ),
        });
    }
    Ok(())
}

/// Waits for the mappings [`map_start`] started.
pub(crate) fn map_end(r: &mut RemoteThread) -> Result<()> {
    let pid = r.tid().0 as u32;
    r.flush_end().at(pid, Stage::Memory)
}

/// The memory of a process whose tear-down is done ([`tear_down_end`]),
/// and whose areas are mapped when `mapped` says so (else mapped here).
pub(crate) fn rebuild(
    r: &mut RemoteThread,
    mm: &MmState,
    svc: &ServiceFds,
    stub: u64,
    spread: Option<&[usize]>,
    (child_special, mapped): (&ChildSpecial, Option<Mapped>),
) -> Result<()> {
    let pid = r.tid().0 as u32;
    let mut prof = crate::rebuild::Prof::new();
    let Mapped {
        from_cow,
        has_pages,
        filled,
    } = match mapped {
        Some(m) => m,
        None => {
            let m = map_start(r, mm, svc, stub, child_special)?;
            map_end(r)?;
            m
        }
    };
    prof.mark("map_all");
    // Lazy restore: the lazy areas go to the lazy-pages daemon before
    // anything touches them (lazy.rs); only the other pages are filled.
    let lazy = crate::lazy::register(r, svc.image_pid)?;
    if !filled {
        fill(r, mm, svc, &from_cow, spread, &lazy)?;
    }
    prof.mark("fill");
    // Protections and advice after the fill: the pages went in writable.
    finish_vmas(r, mm, &has_pages)?;
    prof.mark("finish_vmas");
    set_mm(r, mm, svc.exe)?;
    prof.mark("set_mm");
    prof.log(pid, "memory");
    Ok(())
}

/// glibc registered rseq in the restorer's TLS, which is about to go.
fn unregister_rseq(r: &mut RemoteThread, pid: u32) -> Result<()> {
    let st = Stage::Memory;
    if let Some((addr, len, sig)) = ptrace::get_rseq(r.tid()).at(pid, st)? {
        // Queued: it runs first in the tear-down's round trip.
        r.queue(
            libc::SYS_rseq,
            &[addr, u64::from(len), 1, u64::from(sig)],
            "rseq(unregister)",
        )
        .at(pid, st)?;
    }

    Ok(())
}

/// What every process of the tree inherited of the restorer's layout,
/// read once from the restorer (see [`tear_down`]).
pub(crate) struct Inherited {
    /// The vDSO trio, at the same addresses in every fork of ours.
    special: ChildSpecial,
    /// One past the restorer's highest mapping, or the top of the default
    /// 47-bit address space if higher.
    top: u64,
}

/// The top of the default address space (below it without a hint, also
/// with 5-level page tables).
const DEFAULT_TOP: u64 = 0x7fff_ffff_f000;

impl Inherited {
    /// Reads the restorer's own layout (`root`: the image's root, for an
    /// error).
    pub(crate) fn read(root: u32) -> Result<Inherited> {
        let maps =
            stasis_proc::read_maps(std::process::id()).map_err(|e| RestoreError::Refused {
                pid: root,
                stage: Stage::Memory,
                what: format!("the restorer's own layout: {e}"),
            })?;
        let special = maps
            .iter()
            .filter_map(|m| match special_kind(m.path.as_deref()) {
                Some(VmaKind::Vsyscall) | None => None,
                Some(k) => Some((k, m.start, m.end)),
            })
            .collect();
        let top = maps
            .iter()
            .filter(|m| special_kind(m.path.as_deref()) != Some(VmaKind::Vsyscall))
            .map(|m| m.end)
            .fold(DEFAULT_TOP, u64::max);
        Ok(Inherited { special, top })
    }
}

/// Queues the tear-down of everything the fork inherited but the stub
/// area, the shared objects and the vDSO trio; returns the special
/// mappings the child has.
///
/// Every process of the tree is a fork of the restorer: its vDSO trio is
/// the restorer's, and whatever else it maps goes. So the process's own
/// layout is not read: the whole address space but the kept areas is
/// unmapped, one munmap per gap between them (munmap accepts holes).
fn tear_down(
    r: &mut RemoteThread,
    pid: u32,
    svc: &ServiceFds,
    stub: u64,
    layout: &Inherited,
) -> Result<ChildSpecial> {
    let st = Stage::Memory;
    let mut kept: Vec<(u64, u64)> = layout.special.iter().map(|&(_, s, e)| (s, e)).collect();
    // The stub area; shared memory, unmapped once every VMA sharing it has
    // been set up; copy-on-write objects, moved into place below or
    // unmapped at the end.
    kept.push((stub, stub + STUB_LEN));
    kept.extend(
        svc.shmem
            .values()
            .chain(svc.cow.values())
            .map(|&(a, l)| (a, a + l)),
    );
    kept.sort_unstable();
    let mut at = 0u64;
    for (s, e) in kept.into_iter().chain([(layout.top, layout.top)]) {
        if s > at {
            r.queue(
                libc::SYS_munmap,
                &[at, s - at],
                format!("munmap {at:#x}-{s:#x}"),
            )
            .at(pid, st)?;
        }
        at = at.max(e);
    }
    Ok(layout.special.clone())
}

/// For each VMA: do its pages come (at least partly) from a copy-on-write
/// object the tree inherited?
fn from_cow(mm: &MmState, svc: &ServiceFds) -> Vec<bool> {
    mm.vmas
        .iter()
        .map(|v| svc.cow.contains_key(&cow_key(svc, v)))
        .collect()
}

/// The key of a VMA's copy-on-write object in [`ServiceFds::cow`].
fn cow_key(svc: &ServiceFds, v: &Vma) -> (u32, u64) {
    (
        if v.cow_owner != 0 {
            v.cow_owner
        } else {
            svc.image_pid
        },
        v.start,
    )
}

/// Maps every area, writable first where pages will be filled; returns
/// which VMAs were mapped writable for their pages.
fn map_all(
    r: &mut RemoteThread,
    mm: &MmState,
    svc: &ServiceFds,
    from_cow: &[bool],
    stub: u64,
) -> Result<Vec<bool>> {
    let pid = r.tid().0 as u32;
    let st = Stage::Memory;
    let mut has_pages = vec![false; mm.vmas.len()];
    {
        let mut vi = 0;
        for run in &mm.pages {
            while vi < mm.vmas.len() && mm.vmas[vi].end <= run.addr {
                vi += 1;
            }
            if let Some(f) = has_pages.get_mut(vi) {
                *f = true;
            }
        }
    }
    let apart = keep_apart(&mm.vmas, from_cow);
    for (i, v) in mm.vmas.iter().enumerate() {
        if is_special(&v.kind) {
            continue;
        }
        if from_cow[i] {
            let (g, len) = svc.cow[&cow_key(svc, v)];
            r.queue(
                libc::SYS_mremap,
                &[
                    g,
                    len,
                    len,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    v.start,
                ],
                format!("mremap copy-on-write memory to {:#x}-{:#x}", v.start, v.end),
            )
            .at(pid, st)?;
            has_pages[i] = true; // so that the saved protection is applied
            if v.cow_owner != 0 {
                zero_unshared(r, v, mm)?;
            }
            continue;
        }
        if apart[i] {
            map_apart(r, v, svc, apart_temp(mm, svc, stub, v.end - v.start))?;
            has_pages[i] = true; // mapped writable: the saved protection is applied below
        } else {
            map_vma(r, v, has_pages[i], svc, v.start, false)?;
        }
        // Before the pages arrive, so that they arrive as huge pages where
        // the process had asked for them.
        if has_pages[i] && v.advice.iter().any(|a| a == "hugepage") {
            r.queue(
                libc::SYS_madvise,
                &[v.start, v.end - v.start, libc::MADV_HUGEPAGE as u64],
                "madvise(hugepage)",
            )
            .at(pid, st)?;
        }
    }
    // Queued: the caller starts them (map_start).
    Ok(has_pages)
}

/// The runs to fill: all but those already in place in an owner's
/// copy-on-write VMAs.
fn own_runs(mm: &MmState, from_cow: &[bool]) -> Vec<PageRun> {
    let owned_cow: Vec<&Vma> = mm
        .vmas
        .iter()
        .zip(from_cow)
        .filter(|(v, &c)| c && v.cow_owner == 0)
        .map(|(v, _)| v)
        .collect();
    mm.pages
        .iter()
        .filter(|p| {
            !owned_cow
                .iter()
                .any(|v| p.addr >= v.start && p.addr < v.end)
        })
        .copied()
        .collect()
}

/// Fills the pages, but those already in place in an owner's
/// copy-on-write VMAs.
fn fill(
    r: &mut RemoteThread,
    mm: &MmState,
    svc: &ServiceFds,
    from_cow: &[bool],
    spread: Option<&[usize]>,
    lazy: &[(u64, u64)],
) -> Result<()> {
    let runs = own_runs(mm, from_cow);
    let total: u64 = runs.iter().map(|p| p.nr_pages * PAGE_SIZE).sum();
    let mut progress = Progress::new("restore", total);
    let runs = if lazy.is_empty() {
        fill_by_uffd(r, mm, &runs, from_cow, svc.pages, spread, &mut progress)?
    } else {
        crate::lazy::split_runs(&runs, lazy).0
    };
    fill_pages(r, &runs, svc.pages, spread, &mut progress)?;
    progress.done();
    Ok(())
}

/// Fills the big runs of the areas [`crate::fill_uffd`] may fill, if it
/// can; returns the runs left to fill.
fn fill_by_uffd(
    r: &mut RemoteThread,
    mm: &MmState,
    runs: &[PageRun],
    from_cow: &[bool],
    fd: i32,
    spread: Option<&[usize]>,
    progress: &mut Progress,
) -> Result<Vec<PageRun>> {
    let mut areas: Vec<(u64, u64)> = Vec::new();
    let mut pieces = Vec::new();
    let mut rest = Vec::new();
    let mut vi = 0;
    for run in runs {
        let len = run.nr_pages * PAGE_SIZE;
        while vi < mm.vmas.len() && mm.vmas[vi].end <= run.addr {
            vi += 1;
        }
        let ok = len >= BIG_RUN
            && mm.vmas.get(vi).is_some_and(|v| {
                v.start <= run.addr
                    && run.addr + len <= v.end
                    && crate::fill_uffd::eligible(v, from_cow[vi])
            });
        if !ok {
            rest.push(*run);
            continue;
        }
        let v = &mm.vmas[vi];
        if areas.last() != Some(&(v.start, v.end)) {
            areas.push((v.start, v.end));
        }
        cut(run, crate::fill_uffd::PIECE, &mut pieces);
    }
    let bytes: u64 = pieces.iter().map(|p| p.2).sum();
    log::debug!(
        "{} MiB of {} runs in {} areas may be filled by UFFDIO_COPY",
        bytes >> 20,
        runs.len(),
        areas.len()
    );
    if bytes < crate::fill_uffd::MIN || !crate::fill_uffd::fill(r, &areas, &pieces, fd, spread)? {
        return Ok(runs.to_vec());
    }
    progress.add(bytes);
    Ok(rest)
}

/// Cuts `run` into pieces of at most `piece` bytes: (address, offset in
/// the page file, length).
fn cut(run: &PageRun, piece: u64, out: &mut Vec<(u64, u64, u64)>) {
    let len = run.nr_pages * PAGE_SIZE;
    let mut done = 0;
    while done < len {
        let n = (len - done).min(piece);
        out.push((run.addr + done, run.offset + done, n));
        done += n;
    }
}

/// The saved protection of every VMA mapped writable for its pages, then
/// its advice, locks and seals.
fn finish_vmas(r: &mut RemoteThread, mm: &MmState, has_pages: &[bool]) -> Result<()> {
    let pid = r.tid().0 as u32;
    let st = Stage::Memory;
    for (i, v) in mm.vmas.iter().enumerate() {
        if is_special(&v.kind) {
            continue;
        }
        if has_pages[i] && v.prot != (libc::PROT_READ | libc::PROT_WRITE) as u32 {
            r.queue(
                libc::SYS_mprotect,
                &[v.start, v.end - v.start, u64::from(v.prot)],
                format!("mprotect {:#x}-{:#x}", v.start, v.end),
            )
            .at(pid, st)?;
        }
        for a in &v.advice {
            let advice = match a.as_str() {
                "dontdump" => libc::MADV_DONTDUMP,
                "dontfork" => libc::MADV_DONTFORK,
                "hugepage" if has_pages[i] => continue, // done before filling
                "hugepage" => libc::MADV_HUGEPAGE,
                "nohugepage" => libc::MADV_NOHUGEPAGE,
                "wipeonfork" => libc::MADV_WIPEONFORK,
                "mergeable" => libc::MADV_MERGEABLE,
                _ => continue,
            };
            r.queue(
                libc::SYS_madvise,
                &[v.start, v.end - v.start, advice as u64],
                format!("madvise({a})"),
            )
            .at(pid, st)?;
        }
        crate::procattrs::vma(r, v)?;
    }
    // Flushed with set_mm's call.
    Ok(())
}

/// Whether two saved VMAs are neighbours the kernel might merge into one if
/// both were mapped afresh: adjacent, private, the same protection, the
/// same advice (VMAs whose advice differs are split again when it is
/// applied), the same backing (anonymous, or the same file at contiguous
/// offsets), neither special. Still an over-approximation: keeping apart
/// two VMAs the kernel would not have merged anyway costs a few remote
/// calls, nothing else.
fn may_merge(a: &Vma, b: &Vma) -> bool {
    let same_backing = match (&a.kind, &b.kind) {
        (VmaKind::Anon | VmaKind::Heap, VmaKind::Anon | VmaKind::Heap) => true,
        (VmaKind::File { file: fa }, VmaKind::File { file: fb }) => {
            fa.path == fb.path && a.pgoff + (a.end - a.start) == b.pgoff
        }
        (VmaKind::Saved { id: ia }, VmaKind::Saved { id: ib }) => {
            ia == ib && a.pgoff + (a.end - a.start) == b.pgoff
        }
        _ => false,
    };
    a.end == b.start
        && same_backing
        && a.huge_page_size == 0
        && b.huge_page_size == 0
        && !a.shared
        && !b.shared
        && a.prot == b.prot
        && a.advice == b.advice
        && a.noreserve == b.noreserve
        && !a.growsdown
        && !b.growsdown
}

/// VMAs that must each get their own anon_vma so that they stay apart.
///
/// VMA boundaries are part of what a process can observe (/proc/PID/maps;
/// mremap and mprotect semantics at the edges), so they are restored as
/// they were. In the original, neighbours with identical flags stay
/// separate VMAs when their anon_vmas differ, typically a child's area
/// inherited at fork beside one it mapped itself. Mapped afresh they would
/// merge. The kernel never merges two VMAs that have different anon_vmas,
/// so each such VMA is given its own before it is put beside its neighbour
/// (see [`map_apart`]). VMAs rebuilt from a copy-on-write object carry
/// their inherited anon_vma and stay apart on their own.
fn keep_apart(vmas: &[Vma], from_cow: &[bool]) -> Vec<bool> {
    let mut apart = vec![false; vmas.len()];
    for i in 1..vmas.len() {
        if !from_cow[i - 1] && !from_cow[i] && may_merge(&vmas[i - 1], &vmas[i]) {
            apart[i - 1] = true;
            apart[i] = true;
        }
    }
    apart
}

/// Maps `v` writable away from its neighbours, gives it an anon_vma (one
/// page written, then dropped again), and moves it into place: with an
/// anon_vma of its own it cannot merge with a neighbour.
///
/// `temp`: a place free in both layouts (see [`apart_temp`]), where the
/// temporary mapping is made without replacing anything, queued with the
/// rest; without one the kernel picks the address (a round trip).
fn map_apart(r: &mut RemoteThread, v: &Vma, svc: &ServiceFds, temp: Option<u64>) -> Result<()> {
    let pid = r.tid().0 as u32;
    let st = Stage::Memory;
    // The rest is queued (and runs before any later call, so it is in
    // place before the next temporary mapping is made).
    let tmp = match temp {
        Some(at) => map_vma(r, v, true, svc, at, true)?,
        None => map_vma(r, v, true, svc, 0, false)?,
    };
    let len = v.end - v.start;
    let page = [tmp, PAGE_SIZE];
    r.queue(
        libc::SYS_madvise,
        &[page[0], page[1], MADV_POPULATE_WRITE],
        "madvise(populate_write)",
    )
    .at(pid, st)?;
    r.queue(
        libc::SYS_madvise,
        &[page[0], page[1], libc::MADV_DONTNEED as u64],
        "madvise(dontneed)",
    )
    .at(pid, st)?;
    r.queue(
        libc::SYS_mremap,
        &[
            tmp,
            len,
            len,
            (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
            v.start,
        ],
        format!("mremap {:#x}-{:#x} into place", v.start, v.end),
    )
    .at(pid, st)?;
    Ok(())
}

/// Where [`map_apart`] may make its temporary mapping of `len` bytes
/// without a round trip: past the stub area (whose gap in the image's
/// layout was chosen free), when that range and a guard on both sides is
/// free in the image's layout and holds none of the objects the process
/// inherited, so the temporary mapping has no neighbour whose anon_vma it
/// could share. None: let the kernel pick.
fn apart_temp(mm: &MmState, svc: &ServiceFds, stub: u64, len: u64) -> Option<u64> {
    let guard = 16 * PAGE_SIZE;
    let free = |at: u64| -> Option<u64> {
        let (lo, hi) = (
            at.checked_sub(guard)?,
            at.checked_add(len)?.checked_add(guard)?,
        );
        let hits = |s: u64, e: u64| s < hi && lo < e;
        let busy = lo < 1 << 32
            || hi > stasis_image::USER_SPACE_END
            || hits(stub, stub + STUB_LEN)
            || mm.vmas.iter().any(|v| hits(v.start, v.end))
            || svc
                .shmem
                .values()
                .chain(svc.cow.values())
                .any(|&(a, l)| hits(a, a + l));
        (!busy).then_some(at)
    };
    // Just above the stub area, else in any gap of the image's layout.
    let above = (stub + STUB_LEN + (1 << 20) + 0xffff) & !0xffff;
    free(above).or_else(|| free_candidates(mm, len).into_iter().find_map(free))
}

/// Maps `v` at `at` (its own start, or 0 for any address the kernel picks);
/// returns the address. `fill`: writable, for its pages to be copied in.
/// `noreplace`: at `at` without replacing anything (MAP_FIXED_NOREPLACE:
/// the call fails instead).
fn map_vma(
    r: &mut RemoteThread,
    v: &Vma,
    fill: bool,
    svc: &ServiceFds,
    at: u64,
    noreplace: bool,
) -> Result<u64> {
    let pid = r.tid().0 as u32;
    let fixed = match (at, noreplace) {
        (0, _) => 0,
        (_, true) => libc::MAP_FIXED_NOREPLACE,
        (_, false) => libc::MAP_FIXED,
    };
    let mut flags = fixed
        | if v.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    if v.growsdown {
        flags |= libc::MAP_GROWSDOWN;
    }
    if v.noreserve {
        flags |= libc::MAP_NORESERVE;
    }
    flags |= crate::hugetlb::map_flags(v);
    if let VmaKind::SysvShm { id } = v.kind {
        // Attached by id (never a new anonymous object: sysvipc.rs).
        crate::sysvipc::attach(r, v, id, &svc.sysv)?;
        return Ok(v.start);
    }
    if v.shmem != 0 {
        // Another mapping of the very object the restorer created: mremap
        // with old_size 0 duplicates a shared mapping.
        let &(base, len) = svc
            .shmem
            .get(&v.shmem)
            .ok_or_else(|| RestoreError::Refused {
                pid,
                stage: Stage::Memory,
                what: format!("no shared memory object {}", v.shmem),
            })?;
        if v.pgoff + (v.end - v.start) > len {
            return Err(RestoreError::Refused {
                pid,
                stage: Stage::Memory,
                what: format!(
                    "shared memory {:#x}-{:#x} lies outside its object",
                    v.start, v.end
                ),
            });
        }
        if v.huge_page_size != 0 {
            // mremap cannot duplicate hugetlb memory: map its file.
            crate::hugetlb::map_shared_view(r, v, base, len)?;
        } else {
            r.queue(
                libc::SYS_mremap,
                &[
                    base + v.pgoff,
                    0,
                    v.end - v.start,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    v.start,
                ],
                format!("mremap shared memory to {:#x}-{:#x}", v.start, v.end),
            )
            .at(pid, Stage::Memory)?;
        }
        if !fill && v.prot != (libc::PROT_READ | libc::PROT_WRITE) as u32 {
            r.queue(
                libc::SYS_mprotect,
                &[v.start, v.end - v.start, u64::from(v.prot)],
                "mprotect shared memory",
            )
            .at(pid, Stage::Memory)?;
        }
        return Ok(v.start);
    }
    let fd: i64 = match &v.kind {
        VmaKind::Saved { id } => {
            // A read-only shared mapping of a write-sealed memfd goes
            // through a read-only descriptor, as the kernel gave the
            // original one no way to become writable.
            let ro = v.shared && v.prot & libc::PROT_WRITE as u32 == 0;
            let fd = ro
                .then(|| svc.files.get(&saved_key(*id, true)))
                .flatten()
                .or_else(|| svc.files.get(&saved_key(*id, false)));
            *fd.ok_or_else(|| RestoreError::Refused {
                pid,
                stage: Stage::Memory,
                what: format!("no descriptor for saved file {id}"),
            })? as i64
        }
        VmaKind::File { file } => *svc
            .files
            .get(&file_key(&file.path, maps_writable(v)))
            .ok_or_else(|| RestoreError::Refused {
                pid,
                stage: Stage::Memory,
                what: format!("no descriptor for mapped file {}", file.path),
            })? as i64,
        _ => {
            flags |= libc::MAP_ANONYMOUS;
            -1
        }
    };
    let prot = if fill {
        (libc::PROT_READ | libc::PROT_WRITE) as u32
    } else {
        v.prot
    };
    let args = [
        at,
        v.end - v.start,
        u64::from(prot),
        flags as u64,
        fd as u64,
        v.pgoff,
    ];
    let what = format!("mmap {:#x}-{:#x}", v.start, v.end);
    if at != 0 {
        // MAP_FIXED: the mapping lands at `at` or the call fails; queued
        // with the other mappings (one round trip for all of them).
        r.queue(libc::SYS_mmap, &args, what)
            .at(pid, Stage::Memory)?;
        return Ok(at);
    }
    let got = r
        .call(libc::SYS_mmap, &args, &what)
        .at(pid, Stage::Memory)?;
    if at != 0 && got != at {
        return Err(RestoreError::Refused {
            pid,
            stage: Stage::Memory,
            what: format!("mmap {:#x}-{:#x} landed at {got:#x}", v.start, v.end),
        });
    }
    Ok(got)
}

/// Runs at least this long are filled by populate + process_vm_writev;
/// shorter ones by remote preadv, many per call.
const BIG_RUN: u64 = 256 << 10;
/// Pieces the big runs are cut into: the unit of work the child and the
/// restorer's helper thread share.
const PIECE: u64 = 32 << 20;

/// The pieces not yet taken, `next..end` of the list: the child takes them
/// from the front, the helper thread from the back.
struct Unclaimed {
    next: usize,
    end: usize,
}

impl Unclaimed {
    fn front(m: &std::sync::Mutex<Unclaimed>) -> Option<usize> {
        let mut u = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (u.next < u.end).then(|| {
            u.next += 1;
            u.next - 1
        })
    }

    fn back(m: &std::sync::Mutex<Unclaimed>) -> Option<usize> {
        let mut u = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (u.next < u.end).then(|| {
            u.end -= 1;
            u.end
        })
    }
}

/// Fills every page run from the page file.
///
/// First touch of fresh memory (allocating, zeroing, and on a VM the
/// host's own fault) costs more than copying into it, and it is what both
/// CPUs must share. Big runs are cut into [`PIECE`]s, taken by two workers
/// from opposite ends of the list: the child takes pieces from the front
/// and populates them (remote `madvise(MADV_POPULATE_WRITE)`), handing
/// each to the helper; the helper thread of the restorer copies every
/// populated piece in (`process_vm_writev` from a read-only mapping of
/// the page file: one copy, fast into present pages) and, whenever none is waiting, takes a piece
/// from the back and copies it into the unpopulated memory, which
/// `process_vm_writev` faults in itself (slower per page than the
/// populate, but on the other CPU). Small runs go by remote `preadv`, up
/// to 1024 runs per call.
fn fill_pages(
    r: &mut RemoteThread,
    pages: &[PageRun],
    fd: i32,
    spread: Option<&[usize]>,
    progress: &mut Progress,
) -> Result<()> {
    let child = r.tid();
    let pid = child.0 as u32;
    let st = Stage::Memory;
    let (big, small): (Vec<PageRun>, Vec<PageRun>) = pages
        .iter()
        .partition(|p| p.nr_pages * PAGE_SIZE >= BIG_RUN);
    let mut pieces = Vec::new();
    for run in &big {
        cut(run, PIECE, &mut pieces);
    }
    if pieces.is_empty() {
        return preadv_runs(r, &small, fd, progress);
    }
    let file = crate::fill_uffd::open_child_fd(pid, fd)?;
    let unclaimed = std::sync::Mutex::new(Unclaimed {
        next: 0,
        end: pieces.len(),
    });
    let pieces = &pieces;
    let unclaimed = &unclaimed;
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = mpsc::channel::<usize>();
        let (done_tx, done_rx) = mpsc::channel::<u64>();
        let helper = s.spawn(move || -> Result<()> {
            // Not on the child's CPU: it is busy populating (and wake-ups
            // from the pinned restorer would pull this thread there).
            crate::fill_uffd::move_away(spread);
            let copy = |i: usize| -> Result<()> {
                let (addr, off, len) = pieces[i];
                // Straight from the page cache: a mapping of the piece,
                // no copy into a buffer.
                let map = FileMap::read_only(
                    file.as_fd(),
                    PAGES_HEADER_LEN + off,
                    usize::try_from(len).unwrap_or(usize::MAX),
                )
                .at(pid, st)?;
                stasis_sys::mem::write_bytes(child, addr, map.as_slice()).at(pid, st)?;
                let _ = done_tx.send(len);
                Ok(())
            };
            loop {
                // Populated pieces first: they are the cheap ones.
                match rx.try_recv() {
                    Ok(i) => copy(i)?,
                    Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                    Err(mpsc::TryRecvError::Empty) => match Unclaimed::back(unclaimed) {
                        Some(i) => copy(i)?,
                        // Nothing left to take: copy what the child
                        // populates until it is done.
                        None => {
                            for i in rx.iter() {
                                copy(i)?;
                            }
                            return Ok(());
                        }
                    },
                }
            }
        });
        let res = (|| -> Result<()> {
            while let Some(i) = Unclaimed::front(unclaimed) {
                let (addr, _, len) = pieces[i];
                r.call(
                    libc::SYS_madvise,
                    &[addr, len, MADV_POPULATE_WRITE],
                    &format!("madvise(MADV_POPULATE_WRITE) {addr:#x}+{len:#x}"),
                )
                .at(pid, st)?;
                // A closed channel means the helper failed: its error wins.
                if tx.send(i).is_err() {
                    return Ok(());
                }
                progress.add(done_rx.try_iter().sum());
            }
            preadv_runs(r, &small, fd, progress)
        })();
        if res.is_err() {
            // The helper must not go on taking pieces.
            let mut u = unclaimed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            u.end = u.next;
        }
        drop(tx);
        let copied = helper.join().unwrap_or_else(|_| {
            Err(RestoreError::Refused {
                pid,
                stage: st,
                what: "page copy thread panicked".into(),
            })
        });
        progress.add(done_rx.try_iter().sum());
        res.and(copied)
    })
}

/// Reads page runs from the page file into place with remote preadv, up to
/// 1024 runs and 1 GiB per call (runs contiguous in the file).
fn preadv_runs(
    r: &mut RemoteThread,
    runs: &[PageRun],
    fd: i32,
    progress: &mut Progress,
) -> Result<()> {
    let pid = r.tid().0 as u32;
    let mut i = 0;
    while i < runs.len() {
        let first = runs[i];
        let mut bytes = 0u64;
        let mut n = 0;
        while i + n < runs.len() && n < SCRATCH_IOV_MAX {
            let run = runs[i + n];
            let len = run.nr_pages * PAGE_SIZE;
            if n > 0 && (run.offset != first.offset + bytes || bytes + len > MAX_BATCH_BYTES) {
                break;
            }
            bytes += len;
            n += 1;
        }
        let at = r
            .write_scratch(0, &runs_iov(&runs[i..i + n]))
            .at(pid, Stage::Memory)?;
        i += n;
        let got = r
            .call(
                libc::SYS_preadv,
                &[fd as u64, at, n as u64, PAGES_HEADER_LEN + first.offset, 0],
                &format!("preadv pages into {:#x}", first.addr),
            )
            .at(pid, Stage::Memory)?;
        if got != bytes {
            return Err(RestoreError::Refused {
                pid,
                stage: Stage::Memory,
                what: format!(
                    "short read of page data at {:#x}: {got} of {bytes} bytes",
                    first.addr
                ),
            });
        }
        progress.add(bytes);
    }
    Ok(())
}

/// The iovec array (address, length as little-endian u64 pairs) a
/// remote preadv reads `runs` into.
fn runs_iov(runs: &[PageRun]) -> Vec<u8> {
    let mut iov = Vec::with_capacity(runs.len() * 16);
    for run in runs {
        iov.extend_from_slice(&run.addr.to_le_bytes());
        iov.extend_from_slice(&(run.nr_pages * PAGE_SIZE).to_le_bytes());
    }
    iov
}

/// Moves the child's [vdso]/[vvar]/[vvar_vclock] to the saved addresses,
/// keeping their layout (the kernel only accepts whole, same-size moves).
fn move_vdso(
    r: &mut RemoteThread,
    mm: &MmState,
    child: &[(VmaKind, u64, u64)],
    stub: u64,
) -> Result<()> {
    let pid = r.tid().0 as u32;
    let st = Stage::Memory;
    let target: Vec<&Vma> = mm
        .vmas
        .iter()
        .filter(|v| is_special(&v.kind) && v.kind != VmaKind::Vsyscall)
        .collect();
    if target.is_empty() {
        for &(_, s, e) in child {
            r.call(libc::SYS_munmap, &[s, e - s], "munmap [vdso]")
                .at(pid, st)?;
        }
        return Ok(());
    }
    let mut pairs = Vec::new();
    for v in &target {
        let c = child.iter().find(|c| c.0 == v.kind);
        match c {
            Some(&(_, s, e)) if e - s == v.end - v.start => pairs.push((s, v.start, e - s)),
            _ => {
                return Err(RestoreError::Refused {
                    pid,
                    stage: st,
                    what: format!(
                        "the vDSO layout of this kernel differs from the dumped one ({:?} {:#x}-{:#x}); \
                         restoring across kernels with different vDSOs is not supported yet",
                        v.kind, v.start, v.end
                    ),
                })
            }
        }
    }
    if pairs.len() != child.len() {
        return Err(RestoreError::Refused {
            pid,
            stage: st,
            what: "the vDSO layout of this kernel differs".into(),
        });
    }
    let delta: Vec<u64> = pairs.iter().map(|p| p.1.wrapping_sub(p.0)).collect();
    if delta.iter().any(|d| *d != delta[0]) {
        return Err(RestoreError::Refused {
            pid,
            stage: st,
            what: "the vDSO areas were not dumped in the kernel's layout".into(),
        });
    }
    if delta[0] == 0 {
        return Ok(());
    }
    // Through a temporary place right after the stub area: free in both layouts.
    let lo = pairs.iter().map(|p| p.0).min().unwrap_or(0);
    let temp = stub + STUB_LEN + 16 * PAGE_SIZE;
    let span = pairs.iter().map(|p| p.0 + p.2).max().unwrap_or(0) - lo;
    let overlaps = |a: u64| mm.vmas.iter().any(|v| v.start < a + span && a < v.end);
    if overlaps(temp) {
        return Err(RestoreError::Refused {
            pid,
            stage: st,
            what: "no room to move the vDSO".into(),
        });
    }
    for &(s, _, len) in &pairs {
        let to = temp + (s - lo);
        r.queue(
            libc::SYS_mremap,
            &[
                s,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                to,
            ],
            "mremap vdso",
        )
        .at(pid, st)?;
    }
    for &(s, d, len) in &pairs {
        let from = temp + (s - lo);
        r.queue(
            libc::SYS_mremap,
            &[
                from,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                d,
            ],
            "mremap vdso",
        )
        .at(pid, st)?;
    }
    // Six moves, queued: they run first in map_all's round trip.
    Ok(())
}

/// PR_SET_MM_MAP: code/data/brk/stack/arg/env bounds, auxv and the exe link.
fn set_mm(r: &mut RemoteThread, mm: &MmState, exe_fd: i32) -> Result<()> {
    let pid = r.tid().0 as u32;
    let mut b = Vec::with_capacity(104 + mm.auxv.len() * 8);
    for v in [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    // Staged and queued: one round trip with the protections and advice
    // of finish_vmas and the attributes that follow.
    let auxv: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
    let auxv_at = r.stage(&auxv).at(pid, Stage::Memory)?;
    b.extend_from_slice(&auxv_at.to_le_bytes());
    b.extend_from_slice(&((mm.auxv.len() * 8) as u32).to_le_bytes());
    b.extend_from_slice(&exe_fd.to_le_bytes());
    let at = r.stage(&b).at(pid, Stage::Memory)?;
    r.queue(
        libc::SYS_prctl,
        &[
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            at,
            104,
            0,
        ],
        "prctl(PR_SET_MM_MAP)",
    )
    .at(pid, Stage::Memory)?;
    // Not flushed here: it runs first in the next round trip (the
    // attributes' signal queries), which fails naming it if it fails.
    Ok(())
}

/// In a VMA that came from its owner's copy-on-write object, every page
/// that is neither shared with the owner nor saved for this process must
/// read as zero (the process had never touched it, or dropped it).
fn zero_unshared(r: &mut RemoteThread, v: &Vma, mm: &MmState) -> Result<()> {
    let pid = r.tid().0 as u32;
    let mut keep: Vec<(u64, u64)> = mm
        .cow_pages
        .iter()
        .map(|c| (c.addr, c.addr + c.nr_pages * PAGE_SIZE))
        .chain(
            mm.pages
                .iter()
                .map(|p| (p.addr, p.addr + p.nr_pages * PAGE_SIZE)),
        )
        .filter(|&(s, e)| s < v.end && e > v.start)
        .collect();
    keep.sort_unstable();
    let mut cur = v.start;
    let mut holes = Vec::new();
    for (s, e) in keep {
        if s > cur {
            holes.push((cur, s));
        }
        cur = cur.max(e);
    }
    if cur < v.end {
        holes.push((cur, v.end));
    }
    for (s, e) in holes {
        r.queue(
            libc::SYS_madvise,
            &[s, e - s, libc::MADV_DONTNEED as u64],
            "madvise(MADV_DONTNEED)",
        )
        .at(pid, Stage::Memory)?;
    }
    Ok(())
}
