//! Memory: which mappings exist, which of their pages must be saved, and
//! streaming those pages into the page file.

use crate::kinds::regular::file_id;
use crate::{At, DumpError, Result, Stage};
use stasis_image::progress::Progress;
use stasis_image::{
    MmState, PageRun, PagesWriter, Vma, VmaKind, PAGES_HEADER_LEN, PAGE_SIZE, USER_SPACE_END,
};
use stasis_proc::SmapsEntry;
use stasis_sys::pagemap::{
    Pagemap, Query, PAGE_IS_FILE, PAGE_IS_GUARD, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED,
    PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING,
};
use stasis_sys::{mem, Pid};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;

/// Runs of pages to save, in address order.
pub(crate) struct PagePlan {
    /// (start, end, readable through process_vm_readv)
    pub runs: Vec<(u64, u64, bool)>,
    /// Sorted, disjoint ranges whose pages are unchanged since the parent
    /// image (pre-copy): the parts of `runs` inside them are recorded as
    /// `in_parent` and not read.
    pub from_parent: Vec<(u64, u64)>,
    /// Sorted, disjoint ranges of present pages not written since the
    /// last pre-dump (of mappings its tracker still has).
    pub unchanged: Vec<(u64, u64)>,
}

/// Classifies every mapping and finds the pages worth saving.
/// `policies`: memkinds::refuse_policies. `shmem`: what the tree's shared
/// anonymous objects have saved so far. `track`: the write tracker of an
/// earlier pre-dump (its own registrations are not refused), and whether
/// to re-arm it in the same pass (a further brief round).
pub(crate) fn plan(
    pid: u32,
    (smaps, policies): (&[SmapsEntry], Option<String>),
    shmem: &mut crate::shmem::Saved,
    track: (Option<BorrowedFd<'_>>, bool),
) -> Result<(Vec<Vma>, PagePlan)> {
    let st = Stage::Collect;
    let (uffd, rearm) = track;
    let pm = Pagemap::open(Pid(pid as i32)).at(pid, st)?;
    if let Some(what) = policies {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what,
        });
    }
    let mut scan = Scan {
        pid,
        pm: &pm,
        guard: GUARD_CATEGORY,
    };
    let mut vmas = Vec::with_capacity(smaps.len());
    let mut runs = Vec::new();
    let mut unchanged: Vec<(u64, u64)> = Vec::new();
    let mut found = Vec::new();
    for s in smaps {
        let m = &s.map;
        let kind = vma_kind(pid, s)?;
        let prot = (if m.read { libc::PROT_READ } else { 0 })
            | (if m.write { libc::PROT_WRITE } else { 0 })
            | (if m.exec { libc::PROT_EXEC } else { 0 });
        let is_file = matches!(kind, VmaKind::File { .. } | VmaKind::Saved { .. });
        // A SysV segment is no shared anonymous object: it is attached again by id.
        let sysv = matches!(kind, VmaKind::SysvShm { .. });
        let object = crate::shmem::is_object(s, &kind);
        let query = page_query(&kind, m.shared);
        let vma = Vma {
            start: m.start,
            end: m.end,
            prot: prot as u32,
            shared: m.shared,
            pgoff: if is_file || sysv || (m.shared && m.inode != 0) {
                m.offset
            } else {
                0
            },
            kind,
            growsdown: s.has_flag("gd"),
            noreserve: s.has_flag("nr"),
            maywrite: m.shared && (is_file || sysv) && s.has_flag("mw"),
            shmem: if m.shared && !is_file && !sysv {
                m.inode
            } else {
                0
            },
            cow_owner: 0,
            advice: crate::procattrs::vma_advice(pid, s, uffd)?,
            huge_page_size: crate::memkinds::huge_page_size(s).unwrap_or(0),
        };
        found.clear();
        let tracked = match uffd {
            Some(fd) if !object && query.is_some() && crate::track::trackable(&vma) => {
                scan.mapping(&vma, query, Some((fd, rearm)), &mut found)?
            }
            _ if m.end > USER_SPACE_END => false,
            _ => scan.mapping(&vma, query, None, &mut found)?,
        };
        if object {
            let shared = crate::shmem::runs(pid, s, shmem)?;
            runs.extend(shared.into_iter().map(|(a, b)| (a, b, m.read)));
        }
        for &(a, b, c) in &found {
            if c & scan.guard != 0 {
                return Err(DumpError::Unsupported {
                    pid,
                    stage: Stage::Check,
                    what: format!(
                        "a guard region (MADV_GUARD_INSTALL) at {a:#x}-{b:#x}: not restored yet"
                    ),
                });
            }
            if query.is_some_and(|q| !object && matches(q, c)) {
                // Merged within this mapping only.
                match runs.last_mut() {
                    Some(last) if last.1 == a && a > m.start => last.1 = b,
                    _ => runs.push((a, b, m.read)),
                }
            }
            if tracked && c & PAGE_IS_PRESENT != 0 && c & PAGE_IS_WRITTEN == 0 {
                match unchanged.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => unchanged.push((a, b)),
                }
            }
        }
        vmas.push(vma);
    }
    Ok((
        vmas,
        PagePlan {
            runs,
            from_parent: Vec::new(),
            unchanged,
        },
    ))
}

/// PAGE_IS_GUARD, or 0 on kernels before 6.14 (no guard regions; the
/// category is refused with EINVAL).
const GUARD_CATEGORY: u64 = PAGE_IS_GUARD;

/// The categories one pass reports for each page; PAGE_IS_FILE only
/// where the mapping's query needs it ([`categories`]).
const CATEGORIES: u64 = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_WRITTEN;

/// What a pass over a mapping with `query` asks for. PAGE_IS_FILE makes
/// the kernel look up the page behind every present entry: about two
/// thirds of a pass over 4 GiB of anonymous memory (42-51 ms against
/// 14-18 ms without it), and only private file mappings need it.
fn categories(query: Option<Query>) -> u64 {
    CATEGORIES | query.map_or(0, |q| (q.mask | q.anyof) & PAGE_IS_FILE)
}

/// One PAGEMAP_SCAN pass per mapping: every page present, swapped out or
/// a guard region, with its categories; for a mapping tracked by an
/// earlier pre-dump, also which present pages were written since (and,
/// re-arming, the written ones write-protected again in the same pass).
struct Scan<'a> {
    pid: u32,
    pm: &'a Pagemap,
    guard: u64,
}

impl Scan<'_> {
    /// Scans `v` into `out`; returns whether the pages' "written"
    /// category is the tracker's (the mapping is registered with it).
    fn mapping(
        &mut self,
        v: &Vma,
        query: Option<Query>,
        tracker: Option<(BorrowedFd<'_>, bool)>,
        out: &mut Vec<(u64, u64, u64)>,
    ) -> Result<bool> {
        let pid = self.pid;
        let mut flags = 0;
        if let Some((fd, rearm)) = tracker {
            flags = PM_SCAN_CHECK_WPASYNC;
            if rearm {
                // Registered (again) first: a mapping new since the last
                // round has no write-protected page, so every page reads
                // as written: saved whole, and protected by this pass.
                match stasis_sys::uffd::register_wp(fd, v.start, v.end - v.start) {
                    Ok(()) => flags |= PM_SCAN_WP_MATCHING,
                    Err(e) => {
                        log::info!("pid {pid}: {:#x}-{:#x} not tracked: {e}", v.start, v.end);
                        flags = 0;
                    }
                }
            }
        }
        loop {
            let q = Query {
                inverted: 0,
                mask: 0,
                anyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | self.guard,
            };
            out.clear();
            match scan_halves(
                self.pm,
                (v.start, v.end),
                q,
                (flags, categories(query) | self.guard),
                out,
            ) {
                Ok(()) => return Ok(flags & PM_SCAN_CHECK_WPASYNC != 0),
                Err(e) if e.errno() == Some(libc::EINVAL) && self.guard != 0 => self.guard = 0,
                Err(e) if e.errno() == Some(libc::EPERM) && flags & PM_SCAN_CHECK_WPASYNC != 0 => {
                    log::debug!(
                        "pid {pid}: {:#x}-{:#x} is not tracked (new, replaced or moved): saved whole",
                        v.start,
                        v.end
                    );
                    flags = 0;
                }
                Err(e) => return Err(e).at(pid, Stage::Collect),
            }
        }
    }
}

/// Mappings at least this large are scanned in two halves at once.
const SPLIT_AT: u64 = 256 << 20;

/// [`Pagemap::scan_categories`] of [start, end): a large range in two
/// halves (cut on a 2 MiB boundary) by two threads, so that the walk of
/// its page tables, done while the tree is frozen, uses two CPUs. The
/// kernel walks each half under the mmap read lock on its own; a run cut
/// at the boundary is joined again.
fn scan_halves(
    pm: &Pagemap,
    (start, end): (u64, u64),
    q: Query,
    flags: (u64, u64),
    out: &mut Vec<(u64, u64, u64)>,
) -> stasis_sys::Result<()> {
    let mid = (start + (end - start) / 2) & !((2 << 20) - 1);
    if end - start < SPLIT_AT || mid <= start {
        return pm.scan_categories((start, end), q, flags, out);
    }
    let mut upper = Vec::new();
    let (a, b) = std::thread::scope(|s| {
        let h = s.spawn(|| pm.scan_categories((mid, end), q, flags, &mut upper));
        let a = pm.scan_categories((start, mid), q, flags, out);
        (a, h.join())
    });
    a?;
    match b {
        Ok(r) => r?,
        Err(_) => {
            return Err(stasis_sys::SysError::other(
                "PAGEMAP_SCAN",
                None,
                "scanning thread panicked",
            ))
        }
    }
    let mut rest = upper.into_iter();
    if let (Some(last), Some(first)) = (out.last_mut(), rest.as_slice().first()) {
        if last.1 == first.0 && last.2 == first.2 {
            last.1 = first.1;
            rest.next();
        }
    }
    out.extend(rest);
    Ok(())
}

/// Whether a page of categories `c` matches `q` (as the kernel matches).
fn matches(q: Query, c: u64) -> bool {
    (c ^ q.inverted) & q.mask == q.mask && (q.anyof == 0 || c & q.anyof != 0)
}

/// What a mapping is (from its smaps entry), or its refusal by name.
fn vma_kind(pid: u32, s: &SmapsEntry) -> Result<VmaKind> {
    let st = Stage::Collect;
    let m = &s.map;
    let unsupported = |what: String| DumpError::Unsupported {
        pid,
        stage: Stage::Check,
        what,
    };
    if let Some(why) = crate::memkinds::refuse_mapping(s) {
        return Err(unsupported(why));
    }
    let range = format!("{:#x}-{:#x}", m.start, m.end);
    let map_file = || {
        let at = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let file = file_id(pid, st, m.path.as_deref().unwrap_or_default(), &at)?;
        if file.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(unsupported(format!(
                "mapping {range} of {}: not a regular file",
                m.path.as_deref().unwrap_or_default()
            )));
        }
        Ok(file)
    };
    Ok(match m.path.as_deref() {
        _ if crate::memkinds::anon_hugetlb(s).is_some() => VmaKind::Anon,
        Some("[vdso]") => VmaKind::Vdso,
        Some("[vvar]") => VmaKind::Vvar,
        Some("[vvar_vclock]") => VmaKind::VvarVclock,
        Some("[vsyscall]") => VmaKind::Vsyscall,
        Some("[heap]") => VmaKind::Heap,
        None | Some("[stack]") => VmaKind::Anon,
        Some(p) if p.starts_with("[anon:") => VmaKind::Anon,
        Some("/dev/zero (deleted)") if m.shared && m.inode != 0 => VmaKind::Anon,
        Some(p) if p.starts_with("[anon_shmem:") && m.shared => VmaKind::Anon,
        // The inode of a SysV shm mapping is the segment's id.
        Some(p) if p.starts_with("/SYSV") && m.is_deleted() && m.shared => VmaKind::SysvShm {
            id: i32::try_from(m.inode).map_err(|_| {
                unsupported(format!("mapping {range} ({p}): segment id {}", m.inode))
            })?,
        },
        Some(p) if p.starts_with('/') && m.is_deleted() => {
            // A memfd or a file deleted while mapped: its contents go
            // into the image (`kinds::saved::link` assigns the id).
            map_file()?;
            VmaKind::Saved { id: 0 }
        }
        Some(p) if p.starts_with('/') => {
            let file = map_file()?;
            VmaKind::File { file }
        }
        Some(p) => {
            return Err(unsupported(format!(
                "mapping {range} ({p}) is not supported yet"
            )))
        }
    })
}

/// Which pages of a mapping of this kind the page file holds (a
/// PAGEMAP_SCAN query), or None for none.
fn page_query(kind: &VmaKind, shared: bool) -> Option<Query> {
    match (kind, shared) {
        (VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall, _) => None,
        // A segment's memory is saved once, with the segment (sysvipc.rs).
        (VmaKind::SysvShm { .. }, _) => None,
        // Shared file mappings live in the file itself.
        (VmaKind::File { .. } | VmaKind::Saved { .. }, true) => None,
        // Private file mappings: only pages copied on write (anonymous).
        (VmaKind::File { .. } | VmaKind::Saved { .. }, false) => Some(Query {
            inverted: PAGE_IS_FILE | PAGE_IS_PFNZERO,
            mask: PAGE_IS_FILE | PAGE_IS_PFNZERO,
            anyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        }),
        // Shared anonymous pages are shmem ("file") pages: take all present.
        (_, true) => Some(Query {
            inverted: 0,
            mask: 0,
            anyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        }),
        // Private anonymous: present or swapped, but not the shared zero page.
        (_, false) => Some(Query {
            inverted: PAGE_IS_PFNZERO,
            mask: PAGE_IS_PFNZERO,
            anyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        }),
    }
}

/// Bytes per batch: one process_vm_readv (up to 1024 iovecs) each. Small
/// enough that the hash and the write read the batch from the CPU's cache
/// rather than from memory (docs/architecture.md "Speed, round three").
const CHUNK: usize = 1 << 20;
/// Batches in flight between the reading and the writing thread.
const BUFFERS: usize = 8;

/// Full-size ([`CHUNK`]) page buffers kept between calls of [`dump_pages`]
/// (at most two processes' worth: two processes are written at once).
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// A full-size buffer from the pool, or a new one.
fn pooled() -> Vec<u8> {
    POOL.lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_else(|| vec![0u8; CHUNK])
}

/// Gives full-size buffers back to the pool.
fn unpool(bufs: impl IntoIterator<Item = Vec<u8>>) {
    if let Ok(mut p) = POOL.lock() {
        for b in bufs {
            if b.len() == CHUNK && p.len() < 2 * BUFFERS {
                p.push(b);
            }
        }
    }
}

/// Fills the pool with `procs` processes' worth of buffers, every page of
/// them written: a dump whose copy is frozen time (after a pre-copy round)
/// then takes no page fault there for its buffers (on a VM, the host backs
/// a guest page only at its first write: 1.7 ms per MiB was measured here).
pub(crate) fn warm_buffers(procs: usize) {
    let have = POOL.lock().map(|p| p.len()).unwrap_or(0);
    unpool((have..procs.min(2) * BUFFERS).map(|_| vec![1u8; CHUNK]));
}

/// Empties the pool: its buffers hold copies of a dumped tree's memory,
/// which a long-lived caller (migrate, bench) should not keep.
pub(crate) fn clear_pool() {
    if let Ok(mut p) = POOL.lock() {
        *p = Vec::new();
    }
}

/// Bytes written between two calls that start writeback.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// One batch of page data, in file order.
enum Batch {
    /// Readable ranges, read with one process_vm_readv.
    Vm(Vec<(u64, usize)>, usize),
    /// An unreadable (e.g. PROT_NONE) range, read through /proc/PID/mem.
    Mem(u64, usize),
}

impl Batch {
    /// Bytes the batch reads.
    fn len(&self) -> usize {
        match self {
            Batch::Vm(_, n) | Batch::Mem(_, n) => *n,
        }
    }
}

/// Cuts the plan into batches and records every page run, with its file
/// offset, in `mm.pages`.
fn batches(mm: &mut MmState, plan: &PagePlan, base: u64) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut pending: Vec<(u64, usize)> = Vec::new();
    let mut filled = 0usize;
    let mut offset = base;
    for (start, end, readable, in_parent) in pieces(plan) {
        mm.pages.push(PageRun {
            addr: start,
            nr_pages: (end - start) / PAGE_SIZE,
            offset: if in_parent { 0 } else { offset },
            in_parent,
        });
        if in_parent {
            continue;
        }
        offset += end - start;
        let mut a = start;
        while a < end {
            if !readable {
                let n = ((end - a) as usize).min(CHUNK);
                if !pending.is_empty() {
                    out.push(Batch::Vm(std::mem::take(&mut pending), filled));
                    filled = 0;
                }
                out.push(Batch::Mem(a, n));
                a += n as u64;
                continue;
            }
            let n = ((end - a) as usize).min(CHUNK - filled);
            pending.push((a, n));
            filled += n;
            a += n as u64;
            if filled == CHUNK || pending.len() == mem::IOV_MAX {
                out.push(Batch::Vm(std::mem::take(&mut pending), filled));
                filled = 0;
            }
        }
    }
    if !pending.is_empty() {
        out.push(Batch::Vm(pending, filled));
    }
    out
}

/// The planned runs cut where they enter or leave `from_parent`:
/// (start, end, readable, in the parent).
fn pieces(plan: &PagePlan) -> Vec<(u64, u64, bool, bool)> {
    let mut out = Vec::with_capacity(plan.runs.len());
    let fp = &plan.from_parent;
    for &(start, end, readable) in &plan.runs {
        let mut a = start;
        let mut i = fp.partition_point(|r| r.1 <= a);
        while a < end {
            match fp.get(i) {
                Some(&(ps, pe)) if ps <= a => {
                    let b = pe.min(end);
                    out.push((a, b, readable, true));
                    a = b;
                    i += 1;
                }
                Some(&(ps, _)) if ps < end => {
                    out.push((a, ps, readable, false));
                    a = ps;
                }
                _ => {
                    out.push((a, end, readable, false));
                    a = end;
                }
            }
        }
    }
    out
}

/// Streams every planned page into `out`, recording page runs in `mm.pages`.
///
/// Two threads: this one reads a batch from the target (process_vm_readv,
/// or /proc/PID/mem for unreadable areas) and hashes it while it is still
/// in cache; the other writes the previous batches into the page file.
/// [`BUFFERS`] buffers of [`CHUNK`] bytes circulate between them, so memory
/// use does not grow with the size of the process.
///
/// `running`: the process runs while its pages are read (a brief pre-dump
/// round): a page it unmapped since reads as zeros (see [`read_running`]).
pub(crate) fn dump_pages(
    pid: Pid,
    mm: &mut MmState,
    plan: &PagePlan,
    out: &mut PagesWriter,
    running: bool,
) -> Result<()> {
    let p = pid.0 as u32;
    let st = Stage::Memory;
    let batches = batches(mm, plan, out.offset());
    let total: u64 = batches.iter().map(|b| b.len() as u64).sum();
    let mut progress = Progress::new("dump", total);
    let mut mem_file: Option<std::fs::File> = None;
    let (mut hasher, mut sink) = out.split();
    if let [b] = &batches[..] {
        // One batch (most processes of a tree): no writer thread.
        let n = b.len();
        let mut buf = vec![0u8; n];
        read_into(pid, b, &mut buf, &mut mem_file, running)?;
        hasher.update(&buf);
        sink.write_all(&buf).at(p, st)?;
        progress.add(n as u64);
        progress.done();
        return Ok(());
    }
    std::thread::scope(|s| -> Result<()> {
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        // No larger or more buffers than the batches need: zeroing eight
        // 1 MiB buffers cost a small process of a tree more than its pages.
        // Full-size buffers come from the pool, and go back to it.
        let len = batches.iter().map(Batch::len).max().unwrap_or(0);
        for _ in 0..BUFFERS.min(batches.len()) {
            let _ = empty_tx.send(if len == CHUNK {
                pooled()
            } else {
                vec![0u8; len]
            });
        }
        let writer = s.spawn(move || -> Result<()> {
            let mut flushed = sink.offset();
            for (buf, n) in full_rx {
                sink.write_all(&buf[..n]).at(p, st)?;
                // Start writeback now, so the fsync at commit has little
                // left to wait for (best effort: the fsync is what counts).
                if sink.offset() - flushed >= WRITEBACK_EVERY {
                    let _ = stasis_sys::util::start_writeback(
                        sink.fd(),
                        PAGES_HEADER_LEN + flushed,
                        sink.offset() - flushed,
                    );
                    flushed = sink.offset();
                }
                // The reader may be gone (error): nothing to return it to.
                let _ = empty_tx.send(buf);
            }
            Ok(())
        });
        let read = (|| -> Result<()> {
            for b in &batches {
                // A closed channel means the writer failed: its error wins.
                let Ok(mut buf) = empty_rx.recv() else {
                    return Ok(());
                };
                let n = b.len();
                read_into(pid, b, &mut buf[..n], &mut mem_file, running)?;
                hasher.update(&buf[..n]);
                progress.add(n as u64);
                if full_tx.send((buf, n)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(DumpError::Io {
                pid: p,
                stage: st,
                what: "page writer thread".into(),
                source: std::io::Error::other("panicked"),
            })
        });
        unpool(empty_rx.try_iter());
        read.and(written)
    })?;
    progress.done();
    Ok(())
}

/// `/proc/PID/mem`, opened on first use.
fn proc_mem(pid: u32, mem_file: &mut Option<std::fs::File>) -> Result<&std::fs::File> {
    match mem_file {
        Some(f) => Ok(f),
        None => {
            Ok(
                mem_file.insert(std::fs::File::open(format!("/proc/{pid}/mem")).map_err(
                    |source| DumpError::Io {
                        pid,
                        stage: Stage::Memory,
                        what: format!("open /proc/{pid}/mem"),
                        source,
                    },
                )?),
            )
        }
    }
}

/// Reads one batch from the target into `dst`.
fn read_batch(
    pid: Pid,
    b: &Batch,
    dst: &mut [u8],
    mem_file: &mut Option<std::fs::File>,
) -> Result<()> {
    let p = pid.0 as u32;
    let st = Stage::Memory;
    match b {
        Batch::Vm(ranges, _) => mem::read_ranges(pid, ranges, dst).at(p, st),
        Batch::Mem(addr, _) => {
            // FOLL_FORCE: reads what process_vm_readv cannot.
            proc_mem(p, mem_file)?
                .read_exact_at(dst, *addr)
                .map_err(|source| DumpError::Io {
                    pid: p,
                    stage: st,
                    what: format!("read /proc/{p}/mem at {addr:#x}"),
                    source,
                })
        }
    }
}

/// [`read_batch`], or [`read_running`] when the process runs.
fn read_into(
    pid: Pid,
    b: &Batch,
    dst: &mut [u8],
    mem_file: &mut Option<std::fs::File>,
    running: bool,
) -> Result<()> {
    match read_batch(pid, b, dst, mem_file) {
        Err(e) if running && (exited(pid) || no_memory(&e)) => {
            // It exited while the round copied (a container's shell loop
            // forks short-lived children): no later dump has it, so no
            // later image takes a page of it from this one.
            log::debug!(
                "pid {}: exited while its pages were copied ({e}): saved as zeros",
                pid.0
            );
            dst.fill(0);
            Ok(())
        }
        Err(e) if running => read_running(pid, b, dst, mem_file, e),
        r => r,
    }
}

/// Whether `pid` has exited (gone, or a zombie whose memory is gone): a
/// process of a tree that runs during a brief pre-dump round may.
pub(crate) fn exited(pid: Pid) -> bool {
    !matches!(stasis_sys::util::proc_state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// Whether `e` says the process has no memory any more: ESRCH from
/// process_vm_readv or the open of /proc/PID/mem (the kernel's
/// `mm_access` finds no mm). A process that is exiting has dropped its
/// memory well before it becomes a zombie (its state still says running
/// meanwhile: [`exited`] cannot tell); exec swaps the mm, never clears it.
fn no_memory(e: &DumpError) -> bool {
    match e {
        DumpError::Sys { source, .. } => source.errno() == Some(libc::ESRCH),
        DumpError::Io { source, .. } => source.raw_os_error() == Some(libc::ESRCH),
        _ => false,
    }
}

/// A batch that failed to read while the process runs (a brief pre-dump
/// round): the process unmapped or mprotected part of it since the
/// layout was taken. Read again page by page through /proc/PID/mem
/// (FOLL_FORCE reads PROT_NONE pages); a page that is gone reads as
/// zeros. That is safe for the next round: an address unmapped since the
/// round's re-protection is either still unmapped, or mapped by a new or
/// moved mapping, which is not registered with the tracker (scan EPERM:
/// saved whole), so no later round takes this page from this image.
fn read_running(
    pid: Pid,
    b: &Batch,
    dst: &mut [u8],
    mem_file: &mut Option<std::fs::File>,
    first: DumpError,
) -> Result<()> {
    let p = pid.0 as u32;
    let ranges = match b {
        Batch::Vm(ranges, _) => ranges.clone(),
        Batch::Mem(addr, n) => vec![(*addr, *n)],
    };
    let f = match proc_mem(p, mem_file) {
        Ok(f) => f,
        // An exiting process (its memory already gone, not yet a zombie, or
        // reaped since the failed read): ESRCH.
        Err(e) if exited(pid) || no_memory(&e) => {
            log::debug!(
                "pid {p}: exited while its pages were copied ({first}; {e}): saved as zeros"
            );
            dst.fill(0);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let (mut at, mut gone) = (0usize, 0usize);
    for (addr, len) in ranges {
        for off in (0..len).step_by(PAGE_SIZE as usize) {
            let page = &mut dst[at + off..at + off + PAGE_SIZE as usize];
            if f.read_exact_at(page, addr + off as u64).is_err() {
                page.fill(0);
                gone += 1;
            }
        }
        at += len;
    }
    if exited(pid) {
        log::debug!("pid {p}: exited while its pages were copied ({first}): saved as zeros");
        dst.fill(0);
        return Ok(());
    }
    log::debug!("pid {p}: {gone} pages gone while copying ({first}): saved as zeros");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{matches, page_query, pieces, PagePlan};
    use stasis_image::VmaKind;
    use stasis_sys::pagemap::{
        PAGE_IS_FILE, PAGE_IS_GUARD, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED,
        PAGE_IS_WRITTEN,
    };

    /// The plan's queries, applied to the categories of the single pass,
    /// select what the kernel would have selected with them.
    #[test]
    fn queries_match_categories() {
        let anon = page_query(&VmaKind::Anon, false).expect("private anonymous");
        assert!(matches(anon, PAGE_IS_PRESENT | PAGE_IS_WRITTEN));
        assert!(matches(anon, PAGE_IS_SWAPPED));
        assert!(!matches(anon, PAGE_IS_PRESENT | PAGE_IS_PFNZERO));
        assert!(!matches(anon, PAGE_IS_GUARD));
        let shared = page_query(&VmaKind::Anon, true).expect("shared anonymous");
        assert!(matches(shared, PAGE_IS_PRESENT | PAGE_IS_FILE));
        let vdso = page_query(&VmaKind::Vdso, false);
        assert!(vdso.is_none());
    }

    #[test]
    fn pieces_cut_at_parent_ranges() {
        let plan = PagePlan {
            runs: vec![(0x1000, 0x5000, true), (0x8000, 0x9000, false)],
            from_parent: vec![(0x0, 0x2000), (0x3000, 0x4000), (0x8000, 0x9000)],
            unchanged: vec![],
        };
        assert_eq!(
            pieces(&plan),
            vec![
                (0x1000, 0x2000, true, true),
                (0x2000, 0x3000, true, false),
                (0x3000, 0x4000, true, true),
                (0x4000, 0x5000, true, false),
                (0x8000, 0x9000, false, true),
            ]
        );
    }
}
