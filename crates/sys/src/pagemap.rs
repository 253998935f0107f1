//! PAGEMAP_SCAN (Linux 6.7+): ask the kernel for the runs of pages that
//! match a category mask, instead of reading 8 bytes of pagemap per page.

use crate::{last_errno, Pid, Result, SysError};
use std::os::fd::{AsRawFd, OwnedFd};

pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
/// A guard region (MADV_GUARD_INSTALL; Linux 6.14).
pub const PAGE_IS_GUARD: u64 = 1 << 8;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// Write-protect the pages reported (get and clear "written").
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail (EPERM) on a VMA without async userfaultfd write-protection.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;

/// Which pages to report: a page matches when all `mask` bits (after
/// flipping the `inverted` bits) are set and at least one `anyof` bit is.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub inverted: u64,
    pub mask: u64,
    pub anyof: u64,
}

/// An open /proc/PID/pagemap.
pub struct Pagemap {
    fd: OwnedFd,
    pid: Pid,
}

impl Pagemap {
    pub fn open(pid: Pid) -> Result<Pagemap> {
        let path = format!("/proc/{pid}/pagemap");
        let f = std::fs::File::open(&path).map_err(|e| {
            SysError::new(
                format!("open {path}"),
                Some(pid),
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
        Ok(Pagemap { fd: f.into(), pid })
    }

    /// Appends to `out` the (start, end) runs in [start, end) matching `q`.
    /// Adjacent runs are merged.
    pub fn scan(&self, start: u64, end: u64, q: Query, out: &mut Vec<(u64, u64)>) -> Result<()> {
        self.scan_flags(start, end, q, 0, out)
    }

    /// [`Pagemap::scan`] with PM_SCAN_* `flags` ([`PM_SCAN_WP_MATCHING`]
    /// write-protects the pages it reports again, [`PM_SCAN_CHECK_WPASYNC`]
    /// fails with EPERM on a VMA not registered in async write-protect
    /// mode).
    pub fn scan_flags(
        &self,
        start: u64,
        end: u64,
        q: Query,
        flags: u64,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let ret = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | q.mask | q.anyof;
        self.scan_each(start, end, q, (flags, ret), |a, b, _| {
            match out.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => out.push((a, b)),
            }
        })
    }

    /// [`Pagemap::scan_flags`] that also gives each run's categories
    /// (of `return_mask`): appends (start, end, categories) to `out`,
    /// merging adjacent runs of equal categories.
    pub fn scan_categories(
        &self,
        (start, end): (u64, u64),
        q: Query,
        (flags, return_mask): (u64, u64),
        out: &mut Vec<(u64, u64, u64)>,
    ) -> Result<()> {
        self.scan_each(start, end, q, (flags, return_mask), |a, b, c| {
            match out.last_mut() {
                Some(last) if last.1 == a && last.2 == c => last.1 = b,
                _ => out.push((a, b, c)),
            }
        })
    }

    fn scan_each(
        &self,
        start: u64,
        end: u64,
        q: Query,
        (flags, return_mask): (u64, u64),
        mut each: impl FnMut(u64, u64, u64),
    ) -> Result<()> {
        let mut regions = vec![PageRegion::default(); 512];
        let mut cur = start;
        while cur < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags,
                start: cur,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                category_inverted: q.inverted,
                category_mask: q.mask,
                category_anyof_mask: q.anyof,
                return_mask,
                ..Default::default()
            };
            // SAFETY: arg is a valid pm_scan_arg whose `vec` points to
            // `regions`, live and writable for vec_len entries.
            let n = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    PAGEMAP_SCAN,
                    std::ptr::addr_of_mut!(arg),
                )
            };
            if n < 0 {
                return Err(SysError::new(
                    format!("ioctl(PAGEMAP_SCAN) {cur:#x}-{end:#x}"),
                    Some(self.pid),
                    last_errno(),
                ));
            }
            let got = &regions[..n as usize];
            for r in got {
                each(r.start, r.end, r.categories);
            }
            // The walk ended unless the vector is full. A full vector's
            // walk_end can lag behind what was reported (the kernel copies
            // regions out in batches): go on after both, never twice over
            // the same pages.
            if got.len() < regions.len() || arg.walk_end <= cur {
                break;
            }
            cur = got.last().map_or(arg.walk_end, |r| r.end.max(arg.walk_end));
        }
        Ok(())
    }
}
