//! Page-file checksums, and checking them on every CPU (issue 14).
//!
//! A `pages` file (kind 3) carries the xxh3-64 of its whole payload: one
//! stream, which only one CPU can hash. A `pages-chunked` file (kind 5,
//! what the writer makes) records a chunk size at byte [`CHUNK_AT`] of its
//! header; its `checksum` is the xxh3-64 of the xxh3-64s of the payload's
//! consecutive `chunk`-byte pieces (the last may be shorter), each as 8
//! little-endian bytes, in order. Any CPU can hash any piece, and the
//! result is the same: a restore checks the page file from read-only
//! mappings (no copy into a buffer) on all its CPUs before anything is
//! created (docs/image-format.md, "Page file checksums").

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use xxhash_rust::xxh3::Xxh3;

use crate::error::{ImageError, Result};
use crate::format::{FileKind, Header, HEADER_LEN, PAGES_HEADER_LEN};

/// The chunk size the writer uses.
pub const CHUNK: u64 = 1 << 20;

/// Where a `pages-chunked` header keeps its chunk size (u64 LE).
pub const CHUNK_AT: usize = HEADER_LEN;

/// Smallest and largest chunk size a reader accepts (powers of two).
const CHUNK_MIN: u64 = 4096;
const CHUNK_MAX: u64 = 1 << 30;

/// Unit of work of a parallel check: one read-only mapping of this many
/// bytes (whole chunks), hashed chunk by chunk. Small, so that the
/// restorer's RSS stays flat (each thread maps one piece at a time).
const PIECE: u64 = 8 << 20;

/// Below this a payload is read and hashed on one thread.
const PARALLEL_MIN: u64 = 2 * PIECE;

/// Reads of the single-threaded path.
const READ_CHUNK: usize = 512 << 10;

/// The checksum of a page file's payload, fed in order.
#[derive(Clone)]
pub struct PageSum {
    /// 0: xxh3-64 of the whole payload (kind 3).
    chunk: u64,
    cur: Xxh3,
    in_cur: u64,
    top: Xxh3,
}

impl PageSum {
    /// The checksum of a kind 5 file of chunk size `chunk`, or of a kind 3
    /// file (`chunk` 0).
    pub fn new(chunk: u64) -> PageSum {
        PageSum {
            chunk,
            cur: Xxh3::new(),
            in_cur: 0,
            top: Xxh3::new(),
        }
    }

    /// The chunk size (0: whole payload).
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// Feeds the next payload bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        if self.chunk == 0 {
            self.cur.update(data);
            return;
        }
        while !data.is_empty() {
            let room = usize::try_from(self.chunk - self.in_cur).unwrap_or(usize::MAX);
            let n = room.min(data.len());
            self.cur.update(&data[..n]);
            self.in_cur += n as u64;
            data = &data[n..];
            if self.in_cur == self.chunk {
                self.top.update(&self.cur.digest().to_le_bytes());
                self.cur.reset();
                self.in_cur = 0;
            }
        }
    }

    /// The checksum of everything fed so far.
    pub fn digest(&self) -> u64 {
        if self.chunk == 0 {
            return self.cur.digest();
        }
        let mut top = self.top.clone();
        if self.in_cur > 0 {
            top.update(&self.cur.digest().to_le_bytes());
        }
        top.digest()
    }

    /// The file kind whose checksum this is.
    pub fn kind(&self) -> FileKind {
        if self.chunk == 0 {
            FileKind::Pages
        } else {
            FileKind::PagesChunked
        }
    }

    /// The [`PAGES_HEADER_LEN`]-byte header of a page file whose payload
    /// is `payload_len` bytes and was fed here.
    pub fn header_block(&self, payload_len: u64) -> Vec<u8> {
        let mut block = vec![0u8; PAGES_HEADER_LEN as usize];
        let h = Header::new(self.kind(), payload_len, self.digest()).encode();
        block[..HEADER_LEN].copy_from_slice(&h);
        if self.chunk != 0 {
            block[CHUNK_AT..CHUNK_AT + 8].copy_from_slice(&self.chunk.to_le_bytes());
        }
        block
    }
}

/// The chunk size of the raw page file `file` whose header is `header`:
/// 0 for kind 3, the recorded one (checked) for kind 5.
pub(crate) fn chunk_of(path: &Path, file: &File, header: &Header) -> Result<u64> {
    if header.kind != FileKind::PagesChunked.as_u32() {
        return Ok(0);
    }
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, CHUNK_AT as u64)
        .map_err(|e| ImageError::io(path, "read", e))?;
    let chunk = u64::from_le_bytes(b);
    if !chunk.is_power_of_two() || !(CHUNK_MIN..=CHUNK_MAX).contains(&chunk) {
        return Err(ImageError::invalid(
            path,
            format!(
                "checksum chunk size {chunk} is not a power of two in {CHUNK_MIN}..={CHUNK_MAX}"
            ),
        ));
    }
    Ok(chunk)
}

/// The checksum of the `len` payload bytes of the page file `file` (from
/// byte [`PAGES_HEADER_LEN`]) as its kind defines it (`chunk` 0: the whole
/// payload's). A chunked payload of some size is hashed from read-only
/// mappings on every CPU this process may use; the rest is read on this
/// thread.
pub(crate) fn file_sum(path: &Path, file: &File, len: u64, chunk: u64) -> Result<u64> {
    // Asked once: std reads the cgroup's CPU quota files each time, and a
    // tree's restore checks a page file per process.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads =
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)));
    if chunk != 0 && len >= PARALLEL_MIN && threads > 1 && !serial() {
        if let Some(sum) = parallel_sum(path, file, len, chunk, threads)? {
            return Ok(sum);
        }
    }
    read_sum(path, file, len, chunk)
}

/// `STASIS_VERIFY_SERIAL=1`: the single-threaded read path only (for
/// comparisons).
fn serial() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("STASIS_VERIFY_SERIAL").is_ok_and(|s| s == "1"))
}

/// One thread, [`READ_CHUNK`] reads: each is hashed from the CPU's cache.
fn read_sum(path: &Path, file: &File, len: u64, chunk: u64) -> Result<u64> {
    let mut sum = PageSum::new(chunk);
    let mut buf = vec![
        0u8;
        usize::try_from(len.min(READ_CHUNK as u64))
            .unwrap_or(READ_CHUNK)
            .max(1)
    ];
    let mut at = 0u64;
    while at < len {
        let want = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match file.read_at(&mut buf[..want], PAGES_HEADER_LEN + at) {
            Ok(0) => {
                return Err(ImageError::Truncated {
                    path: path.to_path_buf(),
                    expected: len,
                    actual: at,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::io(path, "read", e)),
        };
        sum.update(&buf[..n]);
        at += n as u64;
    }
    // The file may have grown since it was measured: nothing may follow.
    let mut extra = [0u8; 1];
    if matches!(file.read_at(&mut extra, PAGES_HEADER_LEN + len), Ok(n) if n > 0) {
        return Err(ImageError::TrailingData {
            path: path.to_path_buf(),
            expected: len,
            actual: len.saturating_add(1),
        });
    }
    Ok(sum.digest())
}

/// Every chunk hashed from read-only mappings, [`PIECE`] by [`PIECE`],
/// by `threads` threads; None if the file cannot be mapped (the caller
/// reads it instead).
fn parallel_sum(
    path: &Path,
    file: &File,
    len: u64,
    chunk: u64,
    threads: usize,
) -> Result<Option<u64>> {
    let piece = PIECE.max(chunk);
    let nchunks = usize::try_from(len.div_ceil(chunk))
        .map_err(|_| ImageError::invalid(path, "payload too large for this machine"))?;
    let npieces = usize::try_from(len.div_ceil(piece)).unwrap_or(usize::MAX);
    let per_piece = usize::try_from(piece / chunk).unwrap_or(1);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let unmappable = AtomicBool::new(false);
    let work = || -> Result<Vec<(usize, u64)>> {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let p = next.fetch_add(1, Ordering::Relaxed);
            if p >= npieces {
                break;
            }
            let off = p as u64 * piece;
            let n = usize::try_from(piece.min(len - off)).unwrap_or(usize::MAX);
            let map = match stasis_sys::buf::FileMap::read_only(
                file.as_fd(),
                PAGES_HEADER_LEN + off,
                n,
            ) {
                Ok(m) => m,
                Err(_) => {
                    unmappable.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            };
            let csize = usize::try_from(chunk).unwrap_or(usize::MAX);
            for (i, c) in map.as_slice().chunks(csize).enumerate() {
                out.push((p * per_piece + i, xxhash_rust::xxh3::xxh3_64(c)));
            }
        }
        Ok(out)
    };
    let results: Vec<Result<Vec<(usize, u64)>>> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads.min(npieces)).map(|_| s.spawn(work)).collect();
        let mut all = vec![work()];
        for h in helpers {
            all.push(
                h.join()
                    .unwrap_or_else(|_| Err(ImageError::invalid(path, "checksum thread panicked"))),
            );
        }
        all
    });
    if unmappable.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut sums = vec![0u64; nchunks];
    for r in results {
        for (i, d) in r? {
            if let Some(slot) = sums.get_mut(i) {
                *slot = d;
            }
        }
    }
    let mut top = Xxh3::new();
    for d in &sums {
        top.update(&d.to_le_bytes());
    }
    Ok(Some(top.digest()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    fn reference(data: &[u8], chunk: usize) -> u64 {
        let mut top = Xxh3::new();
        for c in data.chunks(chunk) {
            top.update(&xxhash_rust::xxh3::xxh3_64(c).to_le_bytes());
        }
        top.digest()
    }

    #[test]
    fn streamed_sum_is_the_chunked_definition() {
        let data = payload((3 << 20) + 8192);
        for split in [1usize, 4096, 1000, 1 << 20, 5 << 20] {
            let mut s = PageSum::new(CHUNK);
            for part in data.chunks(split) {
                s.update(part);
            }
            assert_eq!(
                s.digest(),
                reference(&data, CHUNK as usize),
                "split {split}"
            );
        }
        let mut whole = PageSum::new(0);
        whole.update(&data);
        assert_eq!(whole.digest(), xxhash_rust::xxh3::xxh3_64(&data));
        assert_eq!(PageSum::new(CHUNK).digest(), Xxh3::new().digest());
    }

    #[test]
    fn parallel_and_read_paths_agree_and_catch_a_flipped_byte() {
        let dir = std::env::temp_dir().join(format!("stasis-pagesum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pages.img");
        let mut data = payload((PARALLEL_MIN + (3 << 20) + 4096) as usize);
        let mut bytes = vec![0u8; PAGES_HEADER_LEN as usize];
        bytes.extend_from_slice(&data);
        std::fs::write(&path, &bytes).unwrap();
        let f = File::open(&path).unwrap();
        let len = data.len() as u64;
        let want = reference(&data, CHUNK as usize);
        assert_eq!(parallel_sum(&path, &f, len, CHUNK, 2).unwrap(), Some(want));
        assert_eq!(parallel_sum(&path, &f, len, CHUNK, 3).unwrap(), Some(want));
        assert_eq!(read_sum(&path, &f, len, CHUNK).unwrap(), want);
        assert_eq!(file_sum(&path, &f, len, CHUNK).unwrap(), want);
        assert_eq!(
            file_sum(&path, &f, len, 0).unwrap(),
            xxhash_rust::xxh3::xxh3_64(&data)
        );
        data[(len - 1) as usize] ^= 1;
        let mut bytes = vec![0u8; PAGES_HEADER_LEN as usize];
        bytes.extend_from_slice(&data);
        std::fs::write(&path, &bytes).unwrap();
        let f = File::open(&path).unwrap();
        assert_ne!(file_sum(&path, &f, len, CHUNK).unwrap(), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
