//! Page-aligned anonymous memory owned by stasis itself: large I/O buffers
//! and the benchmark's raw baselines.

use crate::{last_errno, Result, SysError};

/// MADV_POPULATE_WRITE (Linux 5.14): fault in pages writable, in bulk.
pub const MADV_POPULATE_WRITE: i32 = 23;
/// MADV_POPULATE_READ (Linux 5.14): fault in pages readable, in bulk.
pub const MADV_POPULATE_READ: i32 = 22;

/// A private anonymous mapping, unmapped on drop.
pub struct AnonBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: AnonBuf owns its mapping exclusively, like a Box<[u8]>; access
// goes through &self / &mut self.
unsafe impl Send for AnonBuf {}
// SAFETY: shared access only hands out shared slices.
unsafe impl Sync for AnonBuf {}

impl std::fmt::Debug for AnonBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnonBuf({:p}, {})", self.ptr, self.len)
    }
}

impl AnonBuf {
    /// mmap(2) `len` bytes of private anonymous read-write memory (not yet
    /// faulted in; reads as zeros). `len` 0 maps one page.
    pub fn new(len: usize) -> Result<AnonBuf> {
        let map_len = len.max(1);
        // SAFETY: a fresh mapping at a kernel-chosen address aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(SysError::new(
                format!("mmap {map_len} bytes"),
                None,
                last_errno(),
            ));
        }
        Ok(AnonBuf { ptr: p.cast(), len })
    }

    /// Faults every page in, writable (MADV_POPULATE_WRITE).
    pub fn populate(&mut self) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: advice on our own live mapping; it does not change contents.
        let r = unsafe { libc::madvise(self.ptr.cast(), self.len, MADV_POPULATE_WRITE) };
        if r != 0 {
            return Err(SysError::new(
                "madvise(MADV_POPULATE_WRITE)",
                None,
                last_errno(),
            ));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is live, readable and `len` bytes long for as
        // long as `self`; no &mut alias exists while &self is held.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AnonBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping we own; no slice outlives self.
        unsafe { libc::munmap(self.ptr.cast(), self.len.max(1)) };
    }
}

/// Peak resident set size of this process in bytes (getrusage
/// RUSAGE_SELF ru_maxrss).
pub fn max_rss_self() -> u64 {
    // SAFETY: all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    u64::try_from(ru.ru_maxrss).unwrap_or(0) * 1024
}

/// A shared, writable mapping of part of a file stasis itself created and
/// writes alone (an image file still under its temporary name): writes
/// into it land straight in the page cache, without a copy through a
/// buffer. Unmapped on drop.
pub struct FileMap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: FileMap owns its mapping exclusively, like a Box<[u8]>; access
// goes through &self / &mut self.
unsafe impl Send for FileMap {}
// SAFETY: shared access only hands out shared slices.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// A read-only shared mapping of `len` bytes (> 0) of `fd` from
    /// `offset` (page-aligned), e.g. of an image's page file, to hand its
    /// pages to the kernel (`process_vm_writev`) or hash them without a
    /// copy into a buffer. Someone else writing the file meanwhile can only
    /// change the bytes seen, as with `pread`; the checksum is what makes
    /// them trusted. Use [`Self::as_slice`] only.
    pub fn read_only(fd: std::os::fd::BorrowedFd<'_>, offset: u64, len: usize) -> Result<FileMap> {
        let m = FileMap::map(fd, offset, len, libc::PROT_READ)?;
        // Page-table entries for all of it at once (the pages are in the
        // page cache): best effort, faults would do it too.
        // SAFETY: advice on our own live mapping; it does not change contents.
        unsafe { libc::madvise(m.ptr.cast(), m.len.max(1), MADV_POPULATE_READ) };
        Ok(m)
    }

    fn map(
        fd: std::os::fd::BorrowedFd<'_>,
        offset: u64,
        len: usize,
        prot: libc::c_int,
    ) -> Result<FileMap> {
        use std::os::fd::AsRawFd;
        let off = libc::off_t::try_from(offset)
            .map_err(|_| SysError::other("mmap file", None, "offset too large"))?;
        // SAFETY: a fresh mapping at a kernel-chosen address aliases nothing
        // in our address space; the fd is borrowed live for the call.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(SysError::new(
                format!("mmap {len} bytes of a file at {offset}"),
                None,
                last_errno(),
            ));
        }
        Ok(FileMap { ptr: p.cast(), len })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is live, readable and `len` bytes long for as
        // long as `self` (see `read_only` on writers), and no
        // &mut alias exists while &self is held.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping we own; no slice outlives self.
        unsafe { libc::munmap(self.ptr.cast(), self.len.max(1)) };
    }
}
