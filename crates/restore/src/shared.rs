//! Objects the restorer creates before the fork so that every process of
//! the tree inherits them: the stub area, shared anonymous memory and
//! private memory still shared copy-on-write.

use crate::memory::{self, STUB_LEN};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::{ProcessImage, VmaKind};
use stasis_sys::spawn;
use std::collections::HashMap;
use std::os::fd::AsRawFd;

/// What the restorer maps for the tree to inherit.
pub(crate) struct SharedObjects {
    /// The stub area (`syscall` page + scratch), free in every layout.
    pub(crate) stub: u64,
    /// Shared anonymous objects: shmem id -> (address here, length).
    pub(crate) shmem: HashMap<u64, (u64, u64)>,
    /// Copy-on-write objects: (owner PID, VMA start) -> (address, length).
    pub(crate) cow: HashMap<(u32, u64), (u64, u64)>,
}

impl SharedObjects {
    /// Maps the stub area, then each shared anonymous object (of the
    /// largest size any VMA needs), then the copy-on-write objects, each
    /// at an address free in every process's layout. On error nothing
    /// stays mapped.
    /// `saved_fds`: the restorer's descriptor of each saved file (memfd,
    /// deleted file) by id, for private mappings of them shared
    /// copy-on-write.
    pub(crate) fn create(
        procs: &[ProcessImage],
        pages: &[std::path::PathBuf],
        saved_fds: &HashMap<u64, i32>,
    ) -> Result<Self> {
        let stub = map_stub(procs)?;
        let mut objs = SharedObjects {
            stub,
            shmem: HashMap::new(),
            cow: HashMap::new(),
        };
        let mut taken = vec![(stub, stub + STUB_LEN + 0x20000)];
        if let Err(e) = objs.map_shmem(procs, &mut taken) {
            objs.unmap();
            return Err(e);
        }
        match make_cow_objects(procs, pages, &mut taken, saved_fds) {
            Ok(c) => objs.cow = c,
            Err(e) => {
                objs.unmap();
                return Err(e);
            }
        }
        Ok(objs)
    }

    /// Unmaps everything from the restorer (the tree has its copies).
    pub(crate) fn unmap(self) {
        spawn::unmap_stub_area(self.stub, STUB_LEN);
        for &(a, l) in self.shmem.values().chain(self.cow.values()) {
            spawn::unmap_stub_area(a, l);
        }
    }

    fn map_shmem(&mut self, procs: &[ProcessImage], taken: &mut Vec<(u64, u64)>) -> Result<()> {
        let root_pid = procs[0].pid;
        let mut sizes: HashMap<u64, u64> = HashMap::new();
        for v in procs
            .iter()
            .flat_map(|p| &p.mm.vmas)
            .filter(|v| v.shmem != 0)
        {
            let e = sizes.entry(v.shmem).or_default();
            *e = (*e).max(v.pgoff + (v.end - v.start));
        }
        let mut ids: Vec<_> = sizes.into_iter().collect();
        ids.sort_unstable();
        for (id, len) in ids {
            // Shared hugetlb memory: an object of the same page size, at an
            // address aligned to it.
            let huge = crate::hugetlb::shared_page_size(procs, id);
            let at = if huge == 0 {
                place(procs, len, taken, spawn::map_shared_anon)
            } else {
                crate::hugetlb::aligned_candidates(procs, taken, len, huge)
                    .into_iter()
                    .find(|&a| {
                        spawn::map_shared_huge(a, len, crate::hugetlb::huge_flags(huge)).is_ok()
                    })
                    .inspect(|&a| taken.push((a, a + len + 0x10000)))
            };
            let at = at.ok_or_else(|| RestoreError::Refused {
                pid: root_pid,
                stage: Stage::Fork,
                what: format!("no free address for shared memory object {id} ({len} bytes)"),
            })?;
            self.shmem.insert(id, (at, len));
        }
        Ok(())
    }
}

/// The stub area, at an address free in every process's layout.
fn map_stub(procs: &[ProcessImage]) -> Result<u64> {
    for cand in memory::stub_candidates(&procs[0].mm) {
        let clash = procs.iter().any(|p| {
            p.mm.vmas
                .iter()
                .any(|v| v.start < cand + STUB_LEN + 0x20000 && cand < v.end)
        });
        if !clash && spawn::map_stub_area(cand, STUB_LEN).is_ok() {
            return Ok(cand);
        }
    }
    Err(RestoreError::Refused {
        pid: procs[0].pid,
        stage: Stage::Fork,
        what: "no free address for the restorer's stub area".into(),
    })
}

/// Maps `len` bytes with `map` at the first address free in every
/// process's layout and clear of `taken` (with a guard gap), and records it.
fn place(
    procs: &[ProcessImage],
    len: u64,
    taken: &mut Vec<(u64, u64)>,
    map: fn(u64, u64) -> stasis_sys::Result<()>,
) -> Option<u64> {
    for cand in memory::free_candidates(&procs[0].mm, len) {
        let clash = procs.iter().any(|p| {
            p.mm.vmas
                .iter()
                .any(|w| w.start < cand + len + 0x10000 && cand < w.end)
        }) || taken
            .iter()
            .any(|&(a, b)| a < cand + len + 0x10000 && cand < b);
        if !clash && map(cand, len).is_ok() {
            taken.push((cand, cand + len + 0x10000));
            return Some(cand);
        }
    }
    None
}

/// Creates, in the restorer, one private object per VMA that descendants
/// share copy-on-write with its owner, holding the owner's pages (from the
/// owner's verified page file): anonymous memory, or for a private file
/// mapping a private mapping of the same file at the same offset (memfds
/// and deleted files through `saved_fds`, regular files by path), whose
/// other pages stay the file's. Returns (owner PID, VMA start) ->
/// (address, length). On error nothing stays mapped.
fn make_cow_objects(
    procs: &[ProcessImage],
    pages: &[std::path::PathBuf],
    taken: &mut Vec<(u64, u64)>,
    saved_fds: &HashMap<u64, i32>,
) -> Result<HashMap<(u32, u64), (u64, u64)>> {
    let mut out: HashMap<(u32, u64), (u64, u64)> = HashMap::new();
    let res = (|| {
        for v in procs
            .iter()
            .flat_map(|p| &p.mm.vmas)
            .filter(|v| v.cow_owner != 0)
        {
            let key = (v.cow_owner, v.start);
            if out.contains_key(&key) {
                continue;
            }
            let Some(oi) = procs.iter().position(|p| p.pid == v.cow_owner) else {
                return Err(RestoreError::Refused {
                    pid: v.cow_owner,
                    stage: Stage::Fork,
                    what: format!(
                        "copy-on-write owner of {:#x}-{:#x} is not in the image",
                        v.start, v.end
                    ),
                });
            };
            let owner = &procs[oi];
            let Some(ov) = owner
                .mm
                .vmas
                .iter()
                .find(|w| w.start == v.start && w.end == v.end && !w.shared)
            else {
                return Err(RestoreError::Refused {
                    pid: owner.pid,
                    stage: Stage::Fork,
                    what: format!(
                        "no private mapping {:#x}-{:#x} to share copy-on-write",
                        v.start, v.end
                    ),
                });
            };
            // The file behind a private file mapping (kept open until mapped).
            let mut file_hold = None;
            let fd = match &ov.kind {
                VmaKind::Saved { id } => {
                    Some(*saved_fds.get(id).ok_or_else(|| RestoreError::Refused {
                        pid: owner.pid,
                        stage: Stage::Fork,
                        what: format!(
                            "copy-on-write mapping of saved file {id}, which is not in the image"
                        ),
                    })?)
                }
                VmaKind::File { file } => {
                    let f = crate::mntns::open(&file.path, libc::O_RDONLY)
                        .map(std::fs::File::from)
                        .map_err(|e| RestoreError::Io {
                            pid: owner.pid,
                            stage: Stage::Fork,
                            what: format!("open {} for copy-on-write memory", file.path),
                            source: e.source,
                        })?;
                    Some(file_hold.insert(f).as_raw_fd())
                }
                _ => None,
            };
            let len = v.end - v.start;
            // Many objects (every library's written pages a child still
            // shares): candidates in every gap, not a few per gap.
            let g = crate::placement::candidates(procs, taken, len)
                .into_iter()
                .find(|&a| {
                    match fd {
                        Some(fd) => spawn::map_private_file(a, len, fd, ov.pgoff),
                        None => spawn::map_private_anon(a, len),
                    }
                    .is_ok()
                })
                .ok_or_else(|| RestoreError::Refused {
                    pid: owner.pid,
                    stage: Stage::Fork,
                    what: format!("no free address for copy-on-write memory ({len} bytes)"),
                })?;
            taken.push((g, g + len + 0x10000));
            out.insert(key, (g, len));
            let file = std::fs::File::open(&pages[oi]).map_err(|source| RestoreError::Io {
                pid: owner.pid,
                stage: Stage::Fork,
                what: format!("open {}", pages[oi].display()),
                source,
            })?;
            for run in owner
                .mm
                .pages
                .iter()
                .filter(|p| p.addr >= v.start && p.addr < v.end)
            {
                spawn::fill_from_file(
                    g + (run.addr - v.start),
                    run.nr_pages * stasis_image::PAGE_SIZE,
                    &file,
                    stasis_image::PAGES_HEADER_LEN + run.offset,
                )
                .at(owner.pid, Stage::Fork)?;
            }
        }
        Ok(())
    })();
    match res {
        Ok(()) => Ok(out),
        Err(e) => {
            for &(a, l) in out.values() {
                spawn::unmap_stub_area(a, l);
            }
            Err(e)
        }
    }
}
