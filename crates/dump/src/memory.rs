//! Memory: which mappings exist, which of their pages must be saved, and
//! streaming those pages into the page file.

use crate::collect::file_id;
use crate::{At, DumpError, Result, Stage};
use stasis_image::{MmState, PageRun, PagesWriter, Vma, VmaKind, PAGE_SIZE};
use stasis_proc::SmapsEntry;
use stasis_sys::pagemap::{
    Pagemap, Query, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED,
};
use stasis_sys::{mem, Pid};
use std::os::unix::fs::FileExt;

/// Runs of pages to save, in address order.
pub(crate) struct PagePlan {
    /// (start, end, readable through process_vm_readv)
    pub runs: Vec<(u64, u64, bool)>,
}

const ADVICE_FLAGS: [(&str, &str); 6] = [
    ("dd", "dontdump"),
    ("dc", "dontfork"),
    ("hg", "hugepage"),
    ("nh", "nohugepage"),
    ("wf", "wipeonfork"),
    ("mg", "mergeable"),
];

/// Classifies every mapping and finds the pages worth saving.
pub(crate) fn plan(pid: u32, smaps: &[SmapsEntry]) -> Result<(Vec<Vma>, PagePlan)> {
    let st = Stage::Collect;
    let pm = Pagemap::open(Pid(pid as i32)).at(pid, st)?;
    let mut vmas = Vec::with_capacity(smaps.len());
    let mut runs = Vec::new();
    for s in smaps {
        let m = &s.map;
        let unsupported = |what: String| DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what,
        };
        let range = format!("{:#x}-{:#x}", m.start, m.end);
        let kind = match m.path.as_deref() {
            Some("[vdso]") => VmaKind::Vdso,
            Some("[vvar]") => VmaKind::Vvar,
            Some("[vvar_vclock]") => VmaKind::VvarVclock,
            Some("[vsyscall]") => VmaKind::Vsyscall,
            Some("[heap]") => VmaKind::Heap,
            None | Some("[stack]") => VmaKind::Anon,
            Some(p) if p.starts_with("[anon:") => VmaKind::Anon,
            Some("/dev/zero (deleted)") if m.shared && m.inode != 0 => VmaKind::Anon,
            Some(p) if p.starts_with("[anon_shmem:") && m.shared => VmaKind::Anon,
            Some(p) if p.starts_with('/') => {
                if m.is_deleted() {
                    return Err(unsupported(format!(
                        "mapping {range} of deleted file {p} (not supported yet)"
                    )));
                }
                let file = file_id(
                    pid,
                    st,
                    p,
                    &format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end),
                )?;
                if file.mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(unsupported(format!(
                        "mapping {range} of {p}: not a regular file"
                    )));
                }
                VmaKind::File { file }
            }
            Some(p) => {
                return Err(unsupported(format!(
                    "mapping {range} ({p}) is not supported yet"
                )))
            }
        };
        let prot = (if m.read { libc::PROT_READ } else { 0 })
            | (if m.write { libc::PROT_WRITE } else { 0 })
            | (if m.exec { libc::PROT_EXEC } else { 0 });
        let is_file = matches!(kind, VmaKind::File { .. });
        let q = match (&kind, m.shared) {
            (VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall, _) => None,
            // Shared file mappings live in the file itself.
            (VmaKind::File { .. }, true) => None,
            // Private file mappings: only pages copied on write (anonymous).
            (VmaKind::File { .. }, false) => Some(Query {
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
        };
        if let Some(q) = q {
            let mut found = Vec::new();
            pm.scan(m.start, m.end, q, &mut found).at(pid, st)?;
            runs.extend(found.into_iter().map(|(a, b)| (a, b, m.read)));
        }
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            prot: prot as u32,
            shared: m.shared,
            pgoff: if is_file || (m.shared && m.inode != 0) {
                m.offset
            } else {
                0
            },
            kind,
            growsdown: s.has_flag("gd"),
            noreserve: s.has_flag("nr"),
            shmem: if m.shared && !is_file { m.inode } else { 0 },
            advice: ADVICE_FLAGS
                .iter()
                .filter(|(f, _)| s.has_flag(f))
                .map(|(_, name)| (*name).to_string())
                .collect(),
        });
    }
    Ok((vmas, PagePlan { runs }))
}

/// Bytes read from the target per batch.
const CHUNK: usize = 8 << 20;

/// Streams every planned page into `out`, recording page runs in `mm.pages`.
pub(crate) fn dump_pages(
    pid: Pid,
    mm: &mut MmState,
    plan: &PagePlan,
    out: &mut PagesWriter,
) -> Result<()> {
    let p = pid.0 as u32;
    let st = Stage::Memory;
    let mut buf = vec![0u8; CHUNK];
    let mut pending: Vec<(u64, usize)> = Vec::new();
    let mut filled = 0usize;
    let mut mem_file: Option<std::fs::File> = None;

    let flush = |pending: &mut Vec<(u64, usize)>,
                 filled: &mut usize,
                 buf: &mut [u8],
                 out: &mut PagesWriter|
     -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        mem::read_ranges(pid, pending, &mut buf[..*filled]).at(p, st)?;
        out.write_all(&buf[..*filled]).at(p, st)?;
        pending.clear();
        *filled = 0;
        Ok(())
    };

    for &(start, end, readable) in &plan.runs {
        let offset = out.offset() + filled as u64;
        mm.pages.push(PageRun {
            addr: start,
            nr_pages: (end - start) / PAGE_SIZE,
            offset,
        });
        if !readable {
            // PROT_NONE and other unreadable areas: /proc/PID/mem reads
            // them with FOLL_FORCE where process_vm_readv cannot.
            flush(&mut pending, &mut filled, &mut buf, out)?;
            let f = match &mut mem_file {
                Some(f) => f,
                None => mem_file.insert(std::fs::File::open(format!("/proc/{p}/mem")).map_err(
                    |source| DumpError::Io {
                        pid: p,
                        stage: st,
                        what: format!("open /proc/{p}/mem"),
                        source,
                    },
                )?),
            };
            let mut a = start;
            while a < end {
                let n = ((end - a) as usize).min(CHUNK);
                f.read_exact_at(&mut buf[..n], a)
                    .map_err(|source| DumpError::Io {
                        pid: p,
                        stage: st,
                        what: format!("read /proc/{p}/mem at {a:#x}"),
                        source,
                    })?;
                out.write_all(&buf[..n]).at(p, st)?;
                a += n as u64;
            }
            continue;
        }
        let mut a = start;
        while a < end {
            let n = ((end - a) as usize).min(CHUNK - filled);
            pending.push((a, n));
            filled += n;
            a += n as u64;
            if filled == CHUNK || pending.len() == mem::IOV_MAX {
                flush(&mut pending, &mut filled, &mut buf, out)?;
            }
        }
    }
    flush(&mut pending, &mut filled, &mut buf, out)?;
    Ok(())
}
