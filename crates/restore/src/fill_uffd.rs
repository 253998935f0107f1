//! Filling private anonymous memory by UFFDIO_COPY (issue 14).
//!
//! First touch of fresh anonymous memory allocates a page and zeroes it,
//! and the copy of the saved bytes then writes it a second time.
//! UFFDIO_COPY allocates the page and copies into it in one pass (no
//! zeroing: this kernel does not `init_on_alloc`), and needs nothing from
//! the process: both of the restorer's threads fill it, one per CPU, while
//! the process stays stopped, without a ptrace round trip per piece.
//!
//! The process creates a userfaultfd by remote syscall; the restorer takes
//! a duplicate (pidfd_getfd) and closes the process's own, registers the
//! whole areas in missing mode, copies every big run in from read-only
//! mappings of the page file, unregisters the areas and drops the
//! descriptor. Unregistering clears the area's `VM_UFFD_MISSING` (VmFlags
//! `um`) and its context; the pages are ordinary anonymous pages, present
//! and exclusive, as after a fault (`e2e::uffd_fill_*`). No page is
//! touched by anyone else while the areas are registered: a fault there
//! would wait for an answer nobody gives.
//!
//! Only areas where that is the whole story: private anonymous memory
//! (not shared, not hugetlb, not from a copy-on-write object) that was not
//! advised `hugepage` (UFFDIO_COPY fills small pages; the populate path
//! gives those areas their huge pages). Not during a lazy restore (its
//! own userfaultfd holds the lazy areas). If the process cannot create a
//! userfaultfd, the pages are filled as before. `STASIS_FILL_UFFD=0`
//! turns it off (for comparisons).

use crate::{At, RestoreError, Result, Stage};
use stasis_image::{Vma, VmaKind, PAGES_HEADER_LEN, PAGE_SIZE};
use stasis_sys::buf::FileMap;
use stasis_sys::remote::RemoteThread;
use stasis_sys::uffd::{self, Fill};
use stasis_sys::{util, Pid};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Unit of work the two threads share: one read-only mapping of the page
/// file and one UFFDIO_COPY.
pub(crate) const PIECE: u64 = 8 << 20;

/// Less than this is not worth a userfaultfd (two more remote calls and a
/// thread): those pages are filled as before.
pub(crate) const MIN: u64 = 4 << 20;

/// Whether the pages of `v` may be filled by UFFDIO_COPY.
pub(crate) fn eligible(v: &Vma, from_cow: bool) -> bool {
    matches!(v.kind, VmaKind::Anon | VmaKind::Heap)
        && !v.shared
        && v.shmem == 0
        && v.huge_page_size == 0
        && v.cow_owner == 0
        && !from_cow
        && !v.advice.iter().any(|a| a == "hugepage")
        && enabled()
}

/// Off by `STASIS_FILL_UFFD=0`, and wherever a fault in an area nobody
/// advised may allocate a huge page: a populated area would then have
/// them and a copied one would not.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("STASIS_FILL_UFFD").is_ok_and(|s| s == "0");
        let thp = thp_on_fault();
        if off || thp {
            log::debug!("no UFFDIO_COPY fill: STASIS_FILL_UFFD=0 {off}, huge pages on fault {thp}");
        }
        !off && !thp
    })
}

/// Whether any transparent huge page size is allocated on fault in areas
/// not advised `hugepage` ("always", or "inherit" of a global "always";
/// an unreadable global mode counts as yes).
fn thp_on_fault() -> bool {
    let dir = "/sys/kernel/mm/transparent_hugepage";
    let mode = |path: &str| -> Option<String> {
        let s = std::fs::read_to_string(path).ok()?;
        let (_, rest) = s.split_once('[')?;
        Some(rest.split_once(']')?.0.to_string())
    };
    let Some(global) = mode(&format!("{dir}/enabled")) else {
        // No THP in this kernel at all, or a mode we cannot read.
        return std::path::Path::new(dir).exists();
    };
    if global == "always" {
        return true;
    }
    // Per-size settings ("inherit" is the global mode: not "always" here;
    // a size with no `enabled` is not one for anonymous memory).
    let Ok(sizes) = std::fs::read_dir(dir) else {
        return true;
    };
    sizes
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("hugepages-"))
        .any(|e| mode(&format!("{}/enabled", e.path().display())).is_some_and(|m| m == "always"))
}

/// In the stopped process: a userfaultfd (`flags` for userfaultfd(2)),
/// created by remote syscall; returns our duplicate, the process's own
/// descriptor closed again.
pub(crate) fn take_uffd(r: &mut RemoteThread, image_pid: u32, flags: u64) -> Result<OwnedFd> {
    let st = Stage::Memory;
    let host = r.tid();
    let fd = r
        .call(libc::SYS_userfaultfd, &[flags], "userfaultfd")
        .at(image_pid, st)? as i32;
    let dup = util::pidfd_open(host).and_then(|pfd| util::pidfd_getfd(&pfd, host, fd));
    let closed = r.call(libc::SYS_close, &[fd as u64], "close(userfaultfd)");
    let dup = dup.at(image_pid, st)?;
    closed.at(image_pid, st)?;
    Ok(dup)
}

/// The child's descriptor `fd`, opened again here.
pub(crate) fn open_child_fd(pid: u32, fd: i32) -> Result<std::fs::File> {
    let path = format!("/proc/{pid}/fd/{fd}");
    std::fs::File::open(&path).map_err(|source| RestoreError::Io {
        pid,
        stage: Stage::Memory,
        what: format!("open {path}"),
        source,
    })
}

/// Moves the calling thread off the CPU it runs on, within `spread` (the
/// CPUs the restore may use), so that the two workers of a fill do not
/// share one CPU.
pub(crate) fn move_away(spread: Option<&[usize]>) {
    if let Some(cpus) = spread {
        let here = util::current_cpu();
        let others: Vec<usize> = cpus.iter().copied().filter(|c| Some(*c) != here).collect();
        let _ = util::set_affinity(Pid(0), if others.is_empty() { cpus } else { &others });
    }
}

/// Fills `pieces` (address, offset in the page file, length; each inside
/// one of `areas`) by UFFDIO_COPY from page file `fd` of the process, on
/// two threads. Returns false, having filled nothing, if the process
/// cannot have a userfaultfd (the caller fills the pieces as before).
pub(crate) fn fill(
    r: &mut RemoteThread,
    areas: &[(u64, u64)],
    pieces: &[(u64, u64, u64)],
    fd: i32,
    spread: Option<&[usize]>,
) -> Result<bool> {
    let child = r.tid();
    let pid = child.0 as u32;
    let st = Stage::Memory;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let uffd = match take_uffd(r, pid, flags)
        .or_else(|_| take_uffd(r, pid, flags | uffd::UFFD_USER_MODE_ONLY))
    {
        Ok(u) => u,
        Err(e) => {
            log::debug!("pid {pid}: no userfaultfd for the fill ({e}); populating instead");
            return Ok(false);
        }
    };
    uffd::enable_features(uffd.as_fd(), 0).at(pid, st)?;
    let file = open_child_fd(pid, fd)?;
    let mut registered = Vec::with_capacity(areas.len());
    let res = (|| -> Result<()> {
        for &(s, e) in areas {
            uffd::register_missing(uffd.as_fd(), s, e - s).at(pid, st)?;
            registered.push((s, e));
        }
        copy_all(child, uffd.as_fd(), file.as_fd(), pieces, spread)
    })();
    // Unregistered whatever happened: the process must not be left with
    // areas whose faults nobody answers.
    let mut unreg = Ok(());
    for &(s, e) in &registered {
        if let Err(err) = uffd::unregister(uffd.as_fd(), s, e - s) {
            unreg = unreg.and(Err(err).at(pid, st));
        }
    }
    res.and(unreg)?;
    log::debug!(
        "pid {pid}: {} MiB in {} pieces filled by UFFDIO_COPY",
        pieces.iter().map(|p| p.2).sum::<u64>() >> 20,
        pieces.len()
    );
    Ok(true)
}

/// Both threads take pieces in order until none is left or one failed.
fn copy_all(
    child: Pid,
    uffd: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    pieces: &[(u64, u64, u64)],
    spread: Option<&[usize]>,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    // Test hook (STASIS_FAULT=sys:uffd-fill-hole): the last page of every
    // piece is left out, to prove the tests see pages missing.
    let hole = stasis_sys::hook::fail_point("uffd-fill-hole");
    let work = || -> Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let Some(&piece) = pieces.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return Ok(());
            };
            if let Err(e) = copy_piece(child, uffd, file, piece, hole) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let helper = s.spawn(|| {
            move_away(spread);
            work()
        });
        let here = work();
        let there = helper.join().unwrap_or_else(|_| {
            Err(RestoreError::Refused {
                pid: child.0 as u32,
                stage: Stage::Memory,
                what: "page copy thread panicked".into(),
            })
        });
        here.and(there)
    })
}

/// One piece: UFFDIO_COPY from a mapping of the page file, as far as it
/// goes; a page found present already (none should be) is written over.
fn copy_piece(
    child: Pid,
    uffd: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    (addr, off, len): (u64, u64, u64),
    hole: bool,
) -> Result<()> {
    let pid = child.0 as u32;
    let st = Stage::Memory;
    let map = FileMap::read_only(
        file,
        PAGES_HEADER_LEN + off,
        usize::try_from(len).unwrap_or(usize::MAX),
    )
    .at(pid, st)?;
    let mut data = map.as_slice();
    if hole {
        data = &data[..data.len() - PAGE_SIZE as usize];
    }
    let mut done = 0usize;
    let mut again = 0;
    while done < data.len() {
        let at = addr + done as u64;
        match uffd::copy(uffd, at, &data[done..]).at(pid, st)? {
            Fill::Done(n) if n > 0 => {
                done += usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - done);
                again = 0;
            }
            Fill::Exists => {
                let page = PAGE_SIZE as usize;
                stasis_sys::mem::write_bytes(child, at, &data[done..done + page]).at(pid, st)?;
                done += page;
            }
            Fill::Done(_) | Fill::Again if again < 1000 => {
                again += 1;
                std::thread::yield_now();
            }
            other => {
                return Err(RestoreError::Refused {
                    pid,
                    stage: st,
                    what: format!("UFFDIO_COPY at {at:#x}: {other:?}"),
                })
            }
        }
    }
    Ok(())
}
