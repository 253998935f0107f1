//! hugetlb memory: private anonymous MAP_HUGETLB areas are mapped again
//! with their huge page size (the dump saved only the huge pages they had
//! touched; filling them faults in huge pages of the same size). Shared
//! hugetlb memory, hugetlbfs files and MFD_HUGETLB memfds are refused at
//! dump (`stasis_dump` module `memkinds`).

use stasis_image::Vma;

/// MAP_HUGE_SHIFT: the log2 of the page size goes into mmap's flags here.
const MAP_HUGE_SHIFT: u32 = 26;

/// Extra mmap flags for `v`: MAP_HUGETLB with its page size, or 0.
pub(crate) fn map_flags(v: &Vma) -> i32 {
    if v.huge_page_size == 0 {
        return 0;
    }
    let log2 = v.huge_page_size.trailing_zeros();
    libc::MAP_HUGETLB | ((log2 as i32) << MAP_HUGE_SHIFT)
}
