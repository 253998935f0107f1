//! Another process's memory: process_vm_readv(2) / process_vm_writev(2).
//!
//! Reading or writing another process's memory cannot break Rust's
//! guarantees in ours, so these functions are safe.

use crate::{last_errno, Pid, Result, SysError};

/// Kernel limit on iovecs per call (UIO_MAXIOV).
pub const IOV_MAX: usize = 1024;

/// Reads the remote ranges `remote` (address, length), in order, into
/// `local`, which must be exactly as long as their sum. Returns an error on
/// a short read.
pub fn read_ranges(pid: Pid, remote: &[(u64, usize)], local: &mut [u8]) -> Result<()> {
    transfer(pid, remote, local.as_mut_ptr(), local.len(), false)
}

/// Skips `n` bytes of an iovec list: returns the remaining list and the
/// offset into its first element.
fn skip_iov(iov: &[libc::iovec], mut n: usize) -> (&[libc::iovec], usize) {
    let mut i = 0;
    while i < iov.len() && n >= iov[i].iov_len {
        n -= iov[i].iov_len;
        i += 1;
    }
    (&iov[i..], n)
}

/// Reads `len` bytes at `addr`.
pub fn read_bytes(pid: Pid, addr: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_ranges(pid, &[(addr, len)], &mut buf)?;
    Ok(buf)
}

/// Writes `data` at `addr` (pages must be writable in the target).
pub fn write_bytes(pid: Pid, addr: u64, data: &[u8]) -> Result<()> {
    write_ranges(pid, &[(addr, data.len())], data)
}

/// Writes `local` to the remote ranges `remote` (address, length), in
/// order; their lengths must add up to `local.len()`. One
/// process_vm_writev(2) per [`IOV_MAX`] ranges (more on partial transfers).
/// The pages must be writable in the target; they are written fastest when
/// already faulted in.
pub fn write_ranges(pid: Pid, remote: &[(u64, usize)], local: &[u8]) -> Result<()> {
    // The kernel only reads `local` for a write.
    transfer(pid, remote, local.as_ptr().cast_mut(), local.len(), true)
}

/// process_vm_readv / process_vm_writev between `len` bytes at `local` and
/// the remote ranges, up to IOV_MAX ranges per call, resuming after
/// partial transfers (they stop at a range boundary or a fault).
fn transfer(
    pid: Pid,
    remote: &[(u64, usize)],
    local: *mut u8,
    len: usize,
    write: bool,
) -> Result<()> {
    let op = if write {
        "process_vm_writev"
    } else {
        "process_vm_readv"
    };
    let total: usize = remote.iter().map(|r| r.1).sum();
    if total != len {
        return Err(SysError::other(op, Some(pid), "buffer size mismatch"));
    }
    let mut done = 0usize;
    for chunk in remote.chunks(IOV_MAX) {
        let want: usize = chunk.iter().map(|r| r.1).sum();
        let riov: Vec<libc::iovec> = chunk
            .iter()
            .map(|&(a, l)| libc::iovec {
                iov_base: a as usize as *mut libc::c_void,
                iov_len: l,
            })
            .collect();
        let mut got = 0usize;
        while got < want {
            let (riov_rest, skip) = skip_iov(&riov, got);
            let liov = libc::iovec {
                iov_base: local.wrapping_add(done + got).cast(),
                iov_len: want - got,
            };
            let mut first = riov_rest.to_vec();
            if let Some(f) = first.first_mut() {
                f.iov_base = (f.iov_base as usize + skip) as *mut libc::c_void;
                f.iov_len -= skip;
            }
            // SAFETY: liov lies inside the caller's buffer of `len` bytes
            // (done + want <= total == len), live for the call, writable for
            // a read; remote iovecs are only interpreted in the target.
            let n = unsafe {
                if write {
                    libc::process_vm_writev(
                        pid.0,
                        &liov,
                        1,
                        first.as_ptr(),
                        first.len() as libc::c_ulong,
                        0,
                    )
                } else {
                    libc::process_vm_readv(
                        pid.0,
                        &liov,
                        1,
                        first.as_ptr(),
                        first.len() as libc::c_ulong,
                        0,
                    )
                }
            };
            let addr = first.first().map(|f| f.iov_base as usize).unwrap_or(0);
            if n < 0 {
                return Err(SysError::new(
                    format!("{op} at {addr:#x}"),
                    Some(pid),
                    last_errno(),
                ));
            }
            if n == 0 {
                // Nothing moved: the remote range is not accessible.
                return Err(SysError::new(
                    format!("{op} at {addr:#x}"),
                    Some(pid),
                    libc::EFAULT,
                ));
            }
            got += n as usize;
        }
        done += want;
    }
    Ok(())
}

/// A traced task's memory through `/proc/TID/mem`: reads and writes
/// pages whatever their protection (FOLL_FORCE, as PTRACE_PEEKDATA and
/// PTRACE_POKEDATA do; a write to a read-only private page copies it),
/// many bytes per system call instead of a word.
#[derive(Debug)]
pub struct ForcedMem {
    file: std::fs::File,
    tid: Pid,
}

impl ForcedMem {
    /// Opens the memory of `tid`, which the caller traces.
    pub fn open(tid: Pid) -> Result<ForcedMem> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", tid.0))
            .map_err(|e| {
                SysError::new(
                    format!("open /proc/{}/mem", tid.0),
                    Some(tid),
                    e.raw_os_error().unwrap_or(libc::EIO),
                )
            })?;
        Ok(ForcedMem { file, tid })
    }

    /// Reads exactly `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, addr).map_err(|e| {
            SysError::new(
                format!("read /proc/{}/mem at {addr:#x}", self.tid.0),
                Some(self.tid),
                e.raw_os_error().unwrap_or(libc::EFAULT),
            )
        })
    }

    /// Writes all of `data` at `addr`, in one system call when it lies in
    /// one page.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, addr).map_err(|e| {
            SysError::new(
                format!("write /proc/{}/mem at {addr:#x}", self.tid.0),
                Some(self.tid),
                e.raw_os_error().unwrap_or(libc::EFAULT),
            )
        })
    }
}
