//! Semantic validation: what serde cannot check. Everything here treats the
//! input as hostile: no arithmetic can overflow, no count is trusted.

use std::collections::HashSet;
use std::path::Path;

use crate::checker::{aligned, Checker};
use crate::error::Result;
use crate::format::INVENTORY_FILE;
use crate::kinds::regular::file_id;
use crate::model::{Inventory, ProcessImage, VmaKind};

pub use crate::kinds::saved::{saved_span, validate_saved_refs};
pub use crate::limits::*;

/// Whether `name` is a plain file name that cannot leave the image
/// directory: not empty, not `.` or `..`, no `/`, no NUL, at most 255 bytes.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_NAME_LEN
        && !name.contains('/')
        && !name.contains('\0')
}

/// Pages payload length implied by the page runs of `img`: the largest
/// `offset + nr_pages * PAGE_SIZE` (0 without runs). Saturates instead of
/// overflowing on hostile input; [`validate_process`] rejects such runs.
pub fn pages_len(img: &ProcessImage) -> u64 {
    let runs = img.mm.pages.iter().filter(|r| !r.in_parent).map(|r| {
        r.offset
            .saturating_add(r.nr_pages.saturating_mul(PAGE_SIZE))
    });
    let saved = img
        .saved_files
        .iter()
        .map(|f| f.offset.saturating_add(f.payload_len()));
    runs.chain(saved).max().unwrap_or(0)
}

/// The kernel's deepest PID namespace nesting (MAX_PID_NS_LEVEL) + 1.
const MAX_PID_LEVELS: usize = 33;

/// `ns_pids` and the threads' `ns_tids`: empty, or at least two levels
/// (at most the kernel's), the first the process's (thread's) own id, no
/// zero, and every thread with as many levels as its process.
fn nested_ids(c: &Checker<'_>, img: &ProcessImage) -> Result<()> {
    let n = img.ns_pids.len();
    let ok = |ids: &[u32], own: u32| {
        ids.is_empty() || (ids.len() >= 2 && ids[0] == own && !ids.contains(&0))
    };
    c.ensure(n <= MAX_PID_LEVELS && ok(&img.ns_pids, img.pid), || {
        format!(
            "ns_pids: {:?} does not start with pid {} (2 to {MAX_PID_LEVELS} levels, none 0)",
            img.ns_pids, img.pid
        )
    })?;
    for (i, t) in img.threads.iter().enumerate() {
        c.ensure(t.ns_tids.len() == n && ok(&t.ns_tids, t.tid), || {
            format!(
                "threads[{i}].ns_tids: {:?} does not match tid {} and {n} levels",
                t.ns_tids, t.tid
            )
        })?;
    }
    Ok(())
}

/// Checks one process image against the rules of the format (see
/// docs/image-format.md, "Validation"). `file` names the core file in the
/// error, which is an [`ImageError::Invalid`] naming the field.
pub fn validate_process(file: &Path, img: &ProcessImage) -> Result<()> {
    let c = Checker { file };

    // Identity.
    c.ensure(img.pid > 0, || "pid: must be > 0".into())?;
    c.string("comm", &img.comm, MAX_COMM_LEN)?;
    nested_ids(&c, img)?;
    file_id(&c, "exe", &img.exe)?;
    c.string("cwd", &img.cwd, MAX_PATH_LEN)?;
    c.string("root", &img.root, MAX_PATH_LEN)?;
    if let Err(m) = crate::seccomp::check_filters(&img.seccomp) {
        c.ensure(false, || format!("seccomp: {m}"))?;
    }
    c.ensure(img.umask <= 0o777, || {
        format!("umask: {:#o} has bits outside 0o777", img.umask)
    })?;

    // Credentials and limits.
    c.count("creds.groups", img.creds.groups.len(), MAX_GROUPS)?;
    c.count("rlimits", img.rlimits.len(), MAX_RLIMITS)?;
    let mut seen = HashSet::new();
    for (i, r) in img.rlimits.iter().enumerate() {
        c.ensure(r.resource < 64, || {
            format!("rlimits[{i}].resource: {} out of range", r.resource)
        })?;
        c.ensure(seen.insert(r.resource), || {
            format!("rlimits[{i}].resource: {} listed twice", r.resource)
        })?;
        c.ensure(r.cur <= r.max, || {
            format!("rlimits[{i}]: cur {} above max {}", r.cur, r.max)
        })?;
    }
    c.ensure((-20..=19).contains(&img.sched.nice), || {
        format!("sched.nice: {} outside -20..=19", img.sched.nice)
    })?;

    // Signals.
    c.count("sigactions", img.sigactions.len(), MAX_SIGACTIONS)?;
    let mut seen = HashSet::new();
    for (i, s) in img.sigactions.iter().enumerate() {
        c.ensure((1..=64).contains(&s.signo), || {
            format!("sigactions[{i}].signo: {} outside 1..=64", s.signo)
        })?;
        c.ensure(seen.insert(s.signo), || {
            format!("sigactions[{i}].signo: {} listed twice", s.signo)
        })?;
    }

    let check_pending = |c: &Checker, what: &str, list: &[crate::PendingSignal]| -> Result<()> {
        c.count(what, list.len(), MAX_PENDING)?;
        for (i, p) in list.iter().enumerate() {
            c.ensure((1..=64).contains(&p.signo), || {
                format!("{what}[{i}].signo: {} outside 1..=64", p.signo)
            })?;
            c.ensure(p.info.len() == 128, || {
                format!("{what}[{i}].info: {} bytes, expected 128", p.info.len())
            })?;
        }
        Ok(())
    };
    check_pending(&c, "shared_pending", &img.shared_pending)?;
    c.count("itimers", img.itimers.len(), 3)?;
    for (i, t) in img.itimers.iter().enumerate() {
        c.ensure(t.which <= 2, || {
            format!("itimers[{i}].which: {} is not 0, 1 or 2", t.which)
        })?;
    }
    c.count("posix_timers", img.posix_timers.len(), MAX_TIMERS)?;
    let mut ids = HashSet::new();
    for (i, t) in img.posix_timers.iter().enumerate() {
        c.ensure(t.id >= 0 && ids.insert(t.id), || {
            format!("posix_timers[{i}].id: {} negative or listed twice", t.id)
        })?;
        c.ensure(t.signo <= 64, || {
            format!("posix_timers[{i}].signo: {} above 64", t.signo)
        })?;
        c.ensure(matches!(t.notify, 0 | 1 | 4), || {
            format!("posix_timers[{i}].notify: {} unknown", t.notify)
        })?;
    }

    // Threads.
    c.ensure(!img.threads.is_empty(), || "threads: empty".into())?;
    c.count("threads", img.threads.len(), MAX_THREADS)?;
    c.ensure(img.threads[0].tid == img.pid, || {
        format!(
            "threads[0].tid: {} is not the pid {}",
            img.threads[0].tid, img.pid
        )
    })?;
    let mut seen = HashSet::new();
    for (i, t) in img.threads.iter().enumerate() {
        c.ensure(t.tid > 0, || format!("threads[{i}].tid: must be > 0"))?;
        c.ensure(seen.insert(t.tid), || {
            format!("threads[{i}].tid: {} listed twice", t.tid)
        })?;
        c.string(&format!("threads[{i}].comm"), &t.comm, MAX_COMM_LEN)?;
        check_pending(&c, &format!("threads[{i}].pending"), &t.pending)?;
        c.ensure(t.xsave.len() <= MAX_XSAVE_LEN, || {
            format!(
                "threads[{i}].xsave: {} bytes, cap {MAX_XSAVE_LEN}",
                t.xsave.len()
            )
        })?;
        c.ensure(t.cpus.iter().all(|&cpu| cpu < MAX_CPU), || {
            format!("threads[{i}].cpus: a CPU number not below {MAX_CPU}")
        })?;
    }

    // Files.
    c.count("files", img.files.len(), MAX_FDS)?;
    let mut seen = HashSet::new();
    for (i, f) in img.files.iter().enumerate() {
        c.ensure((0..=MAX_FD).contains(&f.fd), || {
            format!("files[{i}].fd: {} outside 0..={MAX_FD}", f.fd)
        })?;
        c.ensure(seen.insert(f.fd), || {
            format!("files[{i}].fd: {} listed twice", f.fd)
        })?;
        crate::kinds::validate_fd(&c, img, i, f)?;
    }

    if let Err(m) = crate::locks::check(img) {
        c.ensure(false, || m)?;
    }
    crate::kinds::saved::validate_saved(&c, img)?;
    validate_mm(&c, img)?;
    crate::procattrs::validate(file, img)
}

fn validate_mm(c: &Checker<'_>, img: &ProcessImage) -> Result<()> {
    let mm = &img.mm;
    c.count("mm.auxv", mm.auxv.len(), MAX_AUXV_WORDS)?;
    c.ensure(mm.auxv.len() % 2 == 0, || {
        format!("mm.auxv: {} words, not (type, value) pairs", mm.auxv.len())
    })?;
    for (name, lo, hi) in [
        ("code", mm.start_code, mm.end_code),
        ("data", mm.start_data, mm.end_data),
        ("brk", mm.start_brk, mm.brk),
        ("arg", mm.arg_start, mm.arg_end),
        ("env", mm.env_start, mm.env_end),
    ] {
        c.ensure(lo <= hi, || {
            format!("mm: {name} range {lo:#x}..{hi:#x} ends before it starts")
        })?;
    }

    // VMAs: sorted, non-overlapping, page-aligned, inside user space.
    c.count("mm.vmas", mm.vmas.len(), MAX_VMAS)?;
    let mut prev_end = 0u64;
    for (i, v) in mm.vmas.iter().enumerate() {
        let field = format!("mm.vmas[{i}]");
        c.ensure(v.start < v.end, || {
            format!("{field}: start {:#x} not below end {:#x}", v.start, v.end)
        })?;
        c.ensure(aligned(v.start) && aligned(v.end), || {
            format!("{field}: {:#x}-{:#x} not page-aligned", v.start, v.end)
        })?;
        c.ensure(
            v.end <= USER_SPACE_END || matches!(v.kind, VmaKind::Vsyscall),
            || {
                format!(
                    "{field}: end {:#x} above user space ({USER_SPACE_END:#x})",
                    v.end
                )
            },
        )?;
        c.ensure(i == 0 || v.start >= prev_end, || {
            format!(
                "{field}: start {:#x} overlaps or precedes the previous vma (ends {prev_end:#x})",
                v.start
            )
        })?;
        c.ensure(v.prot & !7 == 0, || {
            format!("{field}.prot: {:#x} has bits other than rwx", v.prot)
        })?;
        c.ensure(aligned(v.pgoff), || {
            format!("{field}.pgoff: {:#x} not page-aligned", v.pgoff)
        })?;
        c.ensure(v.pgoff.checked_add(v.end - v.start).is_some(), || {
            format!("{field}.pgoff: {:#x} + length overflows", v.pgoff)
        })?;
        if v.huge_page_size != 0 {
            let h = v.huge_page_size;
            c.ensure(
                h.is_power_of_two()
                    && h > crate::limits::PAGE_SIZE
                    && h <= 1 << 30
                    && v.start % h == 0
                    && v.end % h == 0
                    && v.pgoff % h == 0
                    && match v.kind {
                        VmaKind::Anon => v.shared == (v.shmem != 0),
                        VmaKind::File { .. } => true,
                        _ => false,
                    },
                || format!("{field}.huge_page_size: {h:#x} not a huge page size this VMA can have"),
            )?;
        }
        c.count(&format!("{field}.advice"), v.advice.len(), 16)?;
        for (j, a) in v.advice.iter().enumerate() {
            c.string(&format!("{field}.advice[{j}]"), a, 32)?;
        }
        if let VmaKind::File { file } = &v.kind {
            file_id(c, &format!("{field}.kind.file"), file)?;
        }
        prev_end = v.end;
    }

    // Page runs: sorted by address, each inside one VMA, page-aligned
    // offsets, no two runs sharing bytes of the page file.
    c.count("mm.pages", mm.pages.len(), MAX_PAGE_RUNS)?;
    let mut prev_addr_end = 0u64;
    let mut prev_off_end = 0u64;
    let mut offsets_monotonic = true;
    let mut vma_idx = 0usize;
    for (i, r) in mm.pages.iter().enumerate() {
        let field = format!("mm.pages[{i}]");
        c.ensure(r.nr_pages > 0, || format!("{field}.nr_pages: 0"))?;
        let len = r
            .nr_pages
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| c.err(format!("{field}.nr_pages: {} too large", r.nr_pages)))?;
        c.ensure(aligned(r.addr), || {
            format!("{field}.addr: {:#x} not page-aligned", r.addr)
        })?;
        c.ensure(aligned(r.offset), || {
            format!("{field}.offset: {:#x} not page-aligned", r.offset)
        })?;
        let end = r
            .addr
            .checked_add(len)
            .ok_or_else(|| c.err(format!("{field}: {:#x} + length overflows", r.addr)))?;
        let off_end = r.offset.checked_add(len).ok_or_else(|| {
            c.err(format!(
                "{field}.offset: {:#x} + length overflows",
                r.offset
            ))
        })?;
        c.ensure(i == 0 || r.addr >= prev_addr_end, || {
            format!(
                "{field}.addr: {:#x} overlaps or precedes the previous run (ends {prev_addr_end:#x})",
                r.addr
            )
        })?;
        // Find the VMA holding the start; runs and VMAs are both sorted.
        while vma_idx < mm.vmas.len() && mm.vmas[vma_idx].end <= r.addr {
            vma_idx += 1;
        }
        let inside = mm
            .vmas
            .get(vma_idx)
            .is_some_and(|v| v.start <= r.addr && end <= v.end);
        c.ensure(inside, || {
            format!("{field}: {:#x}-{end:#x} not inside a single vma", r.addr)
        })?;
        prev_addr_end = end;
        if r.in_parent {
            // In the parent image: no bytes of this page file.
            c.ensure(r.offset == 0, || {
                format!("{field}.offset: not 0 in a run in the parent")
            })?;
            continue;
        }
        if r.offset < prev_off_end {
            offsets_monotonic = false;
        }
        prev_off_end = off_end;
    }
    if !offsets_monotonic {
        // The dumper writes runs in order; anything else must at least not
        // share file bytes between two runs.
        let mut spans: Vec<(u64, u64, usize)> = mm
            .pages
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.in_parent)
            .map(|(i, r)| (r.offset, r.offset + r.nr_pages * PAGE_SIZE, i))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            c.ensure(w[1].0 >= w[0].1, || {
                format!(
                    "mm.pages[{}].offset: {:#x} overlaps mm.pages[{}] in the page file",
                    w[1].2, w[1].0, w[0].2
                )
            })?;
        }
    }
    c.count("mm.cow_pages", mm.cow_pages.len(), MAX_PAGE_RUNS)?;
    let mut prev_end = 0u64;
    for (i, r) in mm.cow_pages.iter().enumerate() {
        let end = r
            .nr_pages
            .checked_mul(crate::PAGE_SIZE)
            .and_then(|l| r.addr.checked_add(l));
        c.ensure(
            r.nr_pages > 0 && r.addr % crate::PAGE_SIZE == 0 && r.addr >= prev_end && end.is_some(),
            || format!("mm.cow_pages[{i}]: empty, unaligned, unsorted or overflowing"),
        )?;
        let end = end.unwrap_or(0);
        c.ensure(
            mm.vmas
                .iter()
                .any(|v| v.cow_owner != 0 && v.start <= r.addr && end <= v.end),
            || format!("mm.cow_pages[{i}]: not inside a VMA shared copy-on-write"),
        )?;
        prev_end = end;
    }
    Ok(())
}

/// Checks an inventory: processes non-empty and capped, pids > 0 and unique,
/// the root among them, file names plain and unique.
pub fn validate_inventory(file: &Path, inv: &Inventory) -> Result<()> {
    let c = Checker { file };
    c.ensure(!inv.processes.is_empty(), || "processes: empty".into())?;
    c.count("processes", inv.processes.len(), MAX_PROCESSES)?;
    c.string("tool_version", &inv.tool_version, MAX_PATH_LEN)?;
    c.string("kernel_release", &inv.kernel_release, MAX_PATH_LEN)?;
    if let Some(ipc) = &inv.ipc {
        crate::sysvipc::validate(&c, ipc)?;
    }
    if let Some(u) = &inv.user_ns {
        if let Err(m) = u.check() {
            c.ensure(false, || m)?;
        }
    }
    if let Some(uts) = &inv.uts {
        if let Err(m) = uts.check() {
            c.ensure(false, || m)?;
        }
    }
    if let Some(m) = &inv.mntns {
        if let Err(m) = m.check() {
            c.ensure(false, || m)?;
        }
    }
    if let Some(n) = &inv.cgroup_ns {
        if let Err(m) = n.check() {
            c.ensure(false, || m)?;
        }
    }
    if let Some(n) = &inv.net {
        if let Err(m) = n.check() {
            c.ensure(false, || m)?;
        }
    }
    if let Some(t) = &inv.time {
        if let Err(m) = t.check() {
            c.ensure(false, || m)?;
        }
    }
    if let Some(cg) = &inv.cgroups {
        if let Err(m) = cg.check() {
            c.ensure(false, || m)?;
        }
    }
    if let Some(l) = &inv.net_lock {
        crate::kinds::inet::validate_lock(&c, l)?;
    }
    let mut pids = HashSet::new();
    let mut names = HashSet::new();
    for (i, p) in inv.processes.iter().enumerate() {
        c.ensure(p.pid > 0, || format!("processes[{i}].pid: must be > 0"))?;
        c.ensure(pids.insert(p.pid), || {
            format!("processes[{i}].pid: {} listed twice", p.pid)
        })?;
        for (field, name) in [("core_file", &p.core_file), ("pages_file", &p.pages_file)] {
            c.ensure(is_plain_name(name) && name != INVENTORY_FILE, || {
                format!("processes[{i}].{field}: {name:?} is not a plain file name")
            })?;
            c.ensure(names.insert(name.as_str()), || {
                format!("processes[{i}].{field}: {name:?} used twice")
            })?;
        }
    }
    c.ensure(pids.contains(&inv.root_pid), || {
        format!("root_pid: {} is not among the processes", inv.root_pid)
    })?;
    c.count("zombies", inv.zombies.len(), MAX_PROCESSES)?;
    for (i, z) in inv.zombies.iter().enumerate() {
        c.ensure(z.pid > 0 && pids.insert(z.pid), || {
            format!("zombies[{i}].pid: {} is 0 or listed twice", z.pid)
        })?;
        c.ensure(inv.processes.iter().any(|p| p.pid == z.ppid), || {
            format!(
                "zombies[{i}].ppid: {} is not a process of the image",
                z.ppid
            )
        })?;
        c.ensure((1..=64).contains(&z.exit_signal), || {
            format!("zombies[{i}].exit_signal: {} outside 1..=64", z.exit_signal)
        })?;
    }
    Ok(())
}
