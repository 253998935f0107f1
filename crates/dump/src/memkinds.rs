//! Kinds of memory and kernel objects behind mappings that stasis cannot
//! save yet: each is refused by name at the check stage, before anything
//! is written, so a dump never silently loses them.
//!
//! * hugetlb memory (`ht` in VmFlags) other than anonymous memory and
//!   mappings of hugetlbfs files that still have a name (both saved, see
//!   [`huge_page_size`]): MFD_HUGETLB memfds and deleted hugetlbfs files,
//!   whose contents would have to go into the image.
//! * AIO rings (`io_setup`): a special mapping `/[aio] (deleted)` whose
//!   address is the context id the process uses.
//! * io_uring instances: the descriptor `anon_inode:[io_uring]`, the
//!   mappings of its rings, and its kernel threads in the process
//!   (`iou-sqp-*`, `iou-wrk-*`: PF_IO_WORKER), which also betray a ring
//!   kept only as a registered descriptor.
//! * memory protection keys (smaps `ProtectionKey` other than 0), and NUMA
//!   memory policies of mappings (mbind, or the task's set_mempolicy that
//!   numa_maps shows for mappings without their own, see [`refuse_policies`]).

use stasis_proc::SmapsEntry;

/// Why the mapping `s` cannot be saved, if it cannot.
pub(crate) fn refuse_mapping(s: &SmapsEntry) -> Option<String> {
    let m = &s.map;
    let range = format!("{:#x}-{:#x}", m.start, m.end);
    let path = m.path.as_deref().unwrap_or("");
    if path.starts_with("/[aio]") {
        return Some(format!(
            "mapping {range} ({path}): an AIO ring (io_setup context); AIO contexts are not supported yet"
        ));
    }
    if path.contains("[io_uring]") {
        return Some(format!(
            "mapping {range} ({path}): an io_uring ring; io_uring instances are not supported yet"
        ));
    }
    if let Some(key) = s.protection_key.filter(|&k| k != 0) {
        return Some(format!(
            "mapping {range} ({path}): protection key {key} (pkey_mprotect); protection keys are not restored yet"
        ));
    }
    if s.has_flag("ht") && huge_page_size(s).is_none() {
        let what = if path.starts_with("/memfd:") && m.is_deleted() {
            "a hugetlb memfd (MFD_HUGETLB)"
        } else if path.starts_with("/anon_hugepage") {
            "MAP_HUGETLB anonymous memory"
        } else {
            "a deleted hugetlbfs file"
        };
        return Some(format!(
            "mapping {range} ({path}): {what}; hugetlb memory is not supported yet"
        ));
    }
    None
}

/// A mapping whose NUMA memory policy is not the default (mbind, or a
/// task policy that applies to it) would come back with none: the first
/// such mapping's refusal, if any. A kernel without NUMA has no numa_maps.
pub(crate) fn refuse_policies(pid: u32) -> Option<String> {
    let maps = stasis_proc::read_numa_maps(pid).ok()?;
    let (start, policy) = maps.into_iter().find(|(_, p)| p != "default")?;
    Some(format!(
        "mapping at {start:#x}: NUMA memory policy {policy} (mbind or set_mempolicy); memory policies are not restored yet"
    ))
}

/// Why descriptor `fd` of `pid` cannot be saved because it is a hugetlb
/// memfd or a deleted hugetlbfs file (whose contents would go into the
/// image, and would come back on tmpfs), if so.
pub(crate) fn refuse_hugetlb_fd(pid: u32, fd: i32, link: &str) -> Option<String> {
    if !link.ends_with(" (deleted)") {
        return None;
    }
    let magic = stasis_sys::util::fs_magic(&format!("/proc/{pid}/fd/{fd}")).ok()?;
    (magic == stasis_sys::util::HUGETLBFS_MAGIC).then(|| {
        if link.starts_with("/memfd:") {
            "a hugetlb memfd (MFD_HUGETLB); hugetlb memfds are not supported yet".to_string()
        } else {
            "a deleted hugetlbfs file; its contents cannot be saved yet".to_string()
        }
    })
}

/// Why the descriptor whose /proc link reads `link` cannot be saved, if
/// this module knows the kind.
pub(crate) fn refuse_fd(link: &str) -> Option<String> {
    (link == "anon_inode:[io_uring]")
        .then(|| "an io_uring instance; io_uring is not supported yet".to_string())
}

/// Anonymous hugetlb memory (MAP_ANONYMOUS|MAP_HUGETLB, private or shared):
/// its huge page size in bytes. Saved like anonymous memory (only the huge
/// pages present) and mapped again with the same page size.
pub(crate) fn anon_hugetlb(s: &SmapsEntry) -> Option<u64> {
    let anon = s.map.path.as_deref() == Some("/anon_hugepage (deleted)");
    huge_page_size(s).filter(|_| anon)
}

/// A hugetlb mapping stasis can save: anonymous memory, or a hugetlbfs file
/// that still has its name (a shared mapping's pages live in the file; a
/// private one's copied pages are saved like any private file mapping's):
/// its huge page size in bytes.
pub(crate) fn huge_page_size(s: &SmapsEntry) -> Option<u64> {
    let m = &s.map;
    let path = m.path.as_deref().unwrap_or("");
    let ok = path == "/anon_hugepage (deleted)" || (path.starts_with('/') && !m.is_deleted());
    (s.has_flag("ht") && ok)
        .then(|| s.kernel_page_size_kb.map(|kb| kb * 1024))
        .flatten()
        .filter(|&b| b > 4096 && b.is_power_of_two())
}

/// PF_IO_WORKER in the flags field of /proc/PID/task/TID/stat.
const PF_IO_WORKER: u64 = 0x10;

/// Why the process cannot be saved because of one of its threads, if so:
/// an io_uring kernel thread (SQPOLL or async worker) is part of it.
pub(crate) fn refuse_tasks(pid: u32, tids: &[stasis_sys::Pid]) -> Option<String> {
    tids.iter().find_map(|t| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/stat")).ok()?;
        // Fields after the parenthesised comm: state is field 3, flags 9.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(').map_or("", |x| x.1);
        let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
        (flags & PF_IO_WORKER != 0).then(|| {
            format!("thread {t} ({comm}): an io_uring kernel thread; io_uring is not supported yet")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: &str, flags: &str, page_kb: u64) -> SmapsEntry {
        let text = format!("{line}\nKernelPageSize: {page_kb} kB\nVmFlags: {flags}\n");
        stasis_proc::parse_smaps(text.as_bytes())
            .expect("smaps")
            .remove(0)
    }

    #[test]
    fn kinds_refused_and_saved() {
        let anon_huge = entry(
            "7f0000000000-7f0000800000 rw-p 00000000 00:10 1234 /anon_hugepage (deleted)",
            "rd wr mr mw me de ht",
            2048,
        );
        assert_eq!(anon_hugetlb(&anon_huge), Some(2 << 20));
        assert_eq!(refuse_mapping(&anon_huge), None);
        let shared_huge = entry(
            "7f0000000000-7f0000800000 rw-s 00000000 00:10 1234 /anon_hugepage (deleted)",
            "rd wr sh mr mw me ms de ht",
            2048,
        );
        assert_eq!(anon_hugetlb(&shared_huge), Some(2 << 20));
        assert_eq!(refuse_mapping(&shared_huge), None);
        let memfd_huge = entry(
            "7f0000000000-7f0000200000 rw-s 00000000 00:10 99 /memfd:x (deleted)",
            "rd wr sh mr mw me ms de ht",
            2048,
        );
        assert!(refuse_mapping(&memfd_huge).is_some_and(|w| w.contains("MFD_HUGETLB")));
        let aio = entry(
            "7f0000000000-7f0000001000 rw-s 00000000 00:12 5 /[aio] (deleted)",
            "rd wr sh mr mw me ms",
            4,
        );
        assert!(refuse_mapping(&aio).is_some_and(|w| w.contains("AIO ring")));
        let plain = entry(
            "7f0000000000-7f0000001000 rw-p 00000000 00:00 0",
            "rd wr mr mw me ac",
            4,
        );
        assert_eq!(refuse_mapping(&plain), None);
        assert!(refuse_fd("anon_inode:[io_uring]").is_some());
        assert!(refuse_fd("anon_inode:[eventfd]").is_none());
    }
}
