//! hugetlb memory: anonymous MAP_HUGETLB areas are mapped again with their
//! huge page size (the dump saved only the huge pages they had touched;
//! filling them faults in huge pages of the same size). Shared ones are one
//! object of that page size, created before the fork like other shared
//! anonymous memory. Mappings of hugetlbfs files that still have a name are
//! mapped from the file like any file mapping. MFD_HUGETLB memfds and
//! deleted hugetlbfs files are refused at dump (`stasis_dump` module
//! `memkinds`).

use crate::{At, Result, Stage};
use stasis_image::{ProcessImage, Vma};
use stasis_sys::remote::RemoteThread;

/// MAP_HUGE_SHIFT: the log2 of the page size goes into mmap's flags here.
const MAP_HUGE_SHIFT: u32 = 26;

/// Extra mmap flags for `v`: MAP_HUGETLB with its page size, or 0. (A
/// shared one is a view of the object the restorer made: no flags.)
pub(crate) fn map_flags(v: &Vma) -> i32 {
    // A hugetlbfs file brings its page size itself.
    if v.shmem != 0 || !matches!(v.kind, stasis_image::VmaKind::Anon) {
        return 0;
    }
    huge_flags(v.huge_page_size)
}

/// MAP_HUGETLB with page size `h` (bytes), or 0 for 0.
pub(crate) fn huge_flags(h: u64) -> i32 {
    if h == 0 {
        return 0;
    }
    libc::MAP_HUGETLB | ((h.trailing_zeros() as i32) << MAP_HUGE_SHIFT)
}

/// The huge page size of shared anonymous object `id` (0: ordinary pages).
pub(crate) fn shared_page_size(procs: &[ProcessImage], id: u64) -> u64 {
    procs
        .iter()
        .flat_map(|p| &p.mm.vmas)
        .find(|v| v.shmem == id)
        .map_or(0, |v| v.huge_page_size)
}

/// Free addresses for `len` bytes aligned to `h`.
pub(crate) fn aligned_candidates(
    procs: &[ProcessImage],
    taken: &[(u64, u64)],
    len: u64,
    h: u64,
) -> Vec<u64> {
    let len = len.next_multiple_of(h);
    crate::placement::candidates(procs, taken, len + h)
        .into_iter()
        .map(|a| a.next_multiple_of(h))
        .collect()
}

/// Maps `v`, a view of the shared hugetlb object the process inherited at
/// `base` (`len` bytes), at its address: the process opens the object's
/// file through its own /proc/self/map_files entry (still with the
/// restorer's credentials), maps it MAP_SHARED|MAP_FIXED at `v.pgoff`
/// read-write (the saved protection is applied later), and closes it.
pub(crate) fn map_shared_view(r: &mut RemoteThread, v: &Vma, base: u64, len: u64) -> Result<()> {
    let pid = r.tid().0 as u32;
    let st = Stage::Memory;
    let mut path = format!("/proc/self/map_files/{:x}-{:x}", base, base + len).into_bytes();
    path.push(0);
    let at = r.write_scratch(0, &path).at(pid, st)?;
    let fd = r
        .call(
            libc::SYS_openat,
            &[
                libc::AT_FDCWD as u64,
                at,
                (libc::O_RDWR | libc::O_CLOEXEC) as u64,
                0,
            ],
            "open shared hugetlb object",
        )
        .at(pid, st)?;
    let mapped = r
        .call(
            libc::SYS_mmap,
            &[
                v.start,
                v.end - v.start,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_SHARED | libc::MAP_FIXED) as u64,
                fd,
                v.pgoff,
            ],
            &format!("mmap shared hugetlb memory {:#x}-{:#x}", v.start, v.end),
        )
        .at(pid, st);
    r.call(libc::SYS_close, &[fd], "close shared hugetlb object")
        .at(pid, st)?;
    mapped.map(drop)
}
