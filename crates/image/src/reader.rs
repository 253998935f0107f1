//! Reading an image directory. Nothing read is trusted: sizes are capped
//! before allocation, names are checked so no path leaves the directory, and
//! symlinks inside the directory are refused.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{ImageError, Result};
use crate::format::{
    FileKind, Header, HEADER_LEN, INVENTORY_FILE, MAX_METADATA_LEN, PAGES_HEADER_LEN,
};
use crate::model::{Inventory, ProcessImage, ProcessRef};
use crate::validate::{
    is_plain_name, pages_len, validate_inventory, validate_process, validate_saved_refs,
};

/// An image directory opened for reading.
#[derive(Debug, Clone)]
pub struct ImageDir {
    dir: PathBuf,
}

/// A whole image, loaded and checked by [`ImageDir::load_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The inventory.
    pub inventory: Inventory,
    /// One image per inventory entry, in inventory order.
    pub processes: Vec<ProcessImage>,
}

/// Opens `path` read-only without following a final symlink and without
/// blocking on a FIFO, and checks that it is a regular file. Returns the file
/// and its size.
pub(crate) fn open_regular(path: &Path, follow: bool) -> Result<(File, u64)> {
    let mut flags = libc::O_NONBLOCK;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                ImageError::invalid(path, "is a symlink (refused)")
            } else {
                ImageError::io(path, "open", e)
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| ImageError::io(path, "stat", e))?;
    if !meta.is_file() {
        return Err(ImageError::invalid(path, "not a regular file"));
    }
    Ok((file, meta.len()))
}

/// Reads and checks the 32-byte header at the start of `file`.
pub(crate) fn read_header(
    path: &Path,
    file: &mut File,
    file_len: u64,
    needed: u64,
) -> Result<Header> {
    if file_len < needed {
        return Err(ImageError::TruncatedHeader {
            path: path.to_path_buf(),
            needed,
            actual: file_len,
        });
    }
    let mut buf = [0u8; HEADER_LEN];
    file.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ImageError::TruncatedHeader {
                path: path.to_path_buf(),
                needed,
                actual: file_len,
            }
        } else {
            ImageError::io(path, "read", e)
        }
    })?;
    Ok(Header::decode(&buf))
}

/// Compares the payload length a header declares with what the file holds.
pub(crate) fn check_len(path: &Path, declared: u64, actual: u64) -> Result<()> {
    if actual < declared {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            expected: declared,
            actual,
        });
    }
    if actual > declared {
        return Err(ImageError::TrailingData {
            path: path.to_path_buf(),
            expected: declared,
            actual,
        });
    }
    Ok(())
}

/// Checks a whole metadata file held in memory (header, length, checksum)
/// and returns its payload.
fn check_metadata_bytes<'a>(path: &Path, kind: FileKind, bytes: &'a [u8]) -> Result<&'a [u8]> {
    let Some((head, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(ImageError::TruncatedHeader {
            path: path.to_path_buf(),
            needed: HEADER_LEN as u64,
            actual: bytes.len() as u64,
        });
    };
    let header = Header::decode(head);
    header.check(path, kind)?;
    if header.payload_len > MAX_METADATA_LEN {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            len: header.payload_len,
            cap: MAX_METADATA_LEN,
        });
    }
    check_len(path, header.payload_len, payload.len() as u64)?;
    verify_checksum(path, header.checksum, crate::format::checksum(payload))?;
    Ok(payload)
}

pub(crate) fn verify_checksum(path: &Path, stored: u64, computed: u64) -> Result<()> {
    if stored != computed {
        return Err(ImageError::ChecksumMismatch {
            path: path.to_path_buf(),
            stored,
            computed,
        });
    }
    Ok(())
}

/// Parses a whole core file held in memory: header, length and checksum
/// checks, decoding, and [`validate_process`]. `path` only names the file in
/// errors.
pub fn parse_process(path: &Path, bytes: &[u8]) -> Result<ProcessImage> {
    let payload = check_metadata_bytes(path, FileKind::Core, bytes)?;
    let img = decode(path, payload)?;
    validate_process(path, &img)?;
    Ok(img)
}

/// Parses a whole inventory file held in memory: header, length and
/// checksum checks, decoding, and [`validate_inventory`].
pub fn parse_inventory(path: &Path, bytes: &[u8]) -> Result<Inventory> {
    let payload = check_metadata_bytes(path, FileKind::Inventory, bytes)?;
    let inv = decode(path, payload)?;
    validate_inventory(path, &inv)?;
    Ok(inv)
}

/// Decodes a JSON payload.
pub(crate) fn decode<T: DeserializeOwned>(path: &Path, payload: &[u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(|error| ImageError::Decode {
        path: path.to_path_buf(),
        error,
    })
}

/// Reads a metadata file of `kind`: header checks, the size cap before
/// allocating, exact length, checksum. Returns the payload.
pub(crate) fn read_metadata(path: &Path, kind: FileKind, follow: bool) -> Result<Vec<u8>> {
    let (mut file, file_len) = open_regular(path, follow)?;
    let header = read_header(path, &mut file, file_len, HEADER_LEN as u64)?;
    header.check(path, kind)?;
    read_payload(path, &mut file, file_len, &header)
}

fn read_payload(path: &Path, file: &mut File, file_len: u64, header: &Header) -> Result<Vec<u8>> {
    if header.payload_len > MAX_METADATA_LEN {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            len: header.payload_len,
            cap: MAX_METADATA_LEN,
        });
    }
    check_len(path, header.payload_len, file_len - HEADER_LEN as u64)?;
    // Capped above at 256 MiB, so this fits in usize.
    let len = usize::try_from(header.payload_len)
        .map_err(|_| ImageError::invalid(path, "payload length does not fit in memory"))?;
    let mut payload = vec![0u8; len];
    file.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            // The file shrank under us.
            ImageError::Truncated {
                path: path.to_path_buf(),
                expected: header.payload_len,
                actual: 0,
            }
        } else {
            ImageError::io(path, "read", e)
        }
    })?;
    // The file may have grown since fstat: refuse anything past the payload.
    let mut extra = [0u8; 1];
    match file.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => {
            return Err(ImageError::TrailingData {
                path: path.to_path_buf(),
                expected: header.payload_len,
                actual: header.payload_len.saturating_add(1),
            })
        }
        Err(e) => return Err(ImageError::io(path, "read", e)),
    }
    verify_checksum(path, header.checksum, crate::format::checksum(&payload))?;
    Ok(payload)
}

/// Reads any image file's header; for metadata files also the checked
/// payload. Used by `show`.
pub(crate) fn read_any(path: &Path, follow: bool) -> Result<(Header, u64, Option<Vec<u8>>)> {
    let (mut file, file_len) = open_regular(path, follow)?;
    let header = read_header(path, &mut file, file_len, HEADER_LEN as u64)?;
    header.check_magic_version(path)?;
    match FileKind::from_u32(header.kind) {
        Some(FileKind::Pages | FileKind::PagesZstd | FileKind::PagesChunked) => {
            Ok((header, file_len, None))
        }
        Some(_) => {
            let payload = read_payload(path, &mut file, file_len, &header)?;
            Ok((header, file_len, Some(payload)))
        }
        None => Err(ImageError::invalid(
            path,
            format!("unknown file kind {}", header.kind),
        )),
    }
}

impl ImageDir {
    /// Opens the image directory `dir`: an error if it is missing or not a
    /// directory. Nothing inside is read yet.
    pub fn open(dir: &Path) -> Result<ImageDir> {
        let meta = std::fs::metadata(dir).map_err(|e| ImageError::io(dir, "open", e))?;
        if !meta.is_dir() {
            return Err(ImageError::invalid(dir, "not a directory"));
        }
        Ok(ImageDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The path of `name` inside the directory, refusing any name that is not
    /// a plain file name.
    fn child(&self, name: &str) -> Result<PathBuf> {
        if !is_plain_name(name) {
            return Err(ImageError::invalid(
                &self.dir.join(INVENTORY_FILE),
                format!("{name:?} is not a plain file name"),
            ));
        }
        Ok(self.dir.join(name))
    }

    /// Reads, checks and validates `inventory.img`.
    pub fn load_inventory(&self) -> Result<Inventory> {
        let path = self.dir.join(INVENTORY_FILE);
        let inv = self.read_inventory_unvalidated()?;
        validate_inventory(&path, &inv)?;
        Ok(inv)
    }

    pub(crate) fn read_inventory_unvalidated(&self) -> Result<Inventory> {
        let path = self.dir.join(INVENTORY_FILE);
        let payload = read_metadata(&path, FileKind::Inventory, false)?;
        decode(&path, &payload)
    }

    /// Reads, checks and validates the core file of `r`. Its pid must be
    /// `r.pid`.
    pub fn load_process(&self, r: &ProcessRef) -> Result<ProcessImage> {
        let path = self.child(&r.core_file)?;
        let img = self.read_process_unvalidated(r)?;
        if img.pid != r.pid {
            return Err(ImageError::invalid(
                &path,
                format!("pid: {} but the inventory says {}", img.pid, r.pid),
            ));
        }
        validate_process(&path, &img)?;
        Ok(img)
    }

    pub(crate) fn read_process_unvalidated(&self, r: &ProcessRef) -> Result<ProcessImage> {
        let path = self.child(&r.core_file)?;
        let payload = read_metadata(&path, FileKind::Core, false)?;
        decode(&path, &payload)
    }

    /// Path of the page file of `r`. The name is not checked here (a name
    /// that is not plain is refused when the file is opened).
    pub fn pages_path(&self, r: &ProcessRef) -> PathBuf {
        self.dir.join(&r.pages_file)
    }

    /// Checks the page file of `r` against `img`: header (magic, version,
    /// kind), payload length equal to the file size minus
    /// [`PAGES_HEADER_LEN`] and to [`pages_len`]`(img)`, and the checksum
    /// (`crate::pagesum`: the whole payload's xxh3-64 for kind 3, hashed on
    /// every CPU for kind 5).
    pub fn verify_pages(&self, r: &ProcessRef, img: &ProcessImage) -> Result<()> {
        self.verify_pages_with(r, img, 0)
    }

    /// [`Self::verify_pages`] for a page file that also holds `extra_end`
    /// bytes of other data (the root's: SysV shm segment contents).
    pub fn verify_pages_with(
        &self,
        r: &ProcessRef,
        img: &ProcessImage,
        extra_end: u64,
    ) -> Result<()> {
        let path = self.child(&r.pages_file)?;
        let (mut file, file_len) = open_regular(&path, false)?;
        let header = read_header(&path, &mut file, file_len, PAGES_HEADER_LEN)?;
        let needed = pages_len(img).max(extra_end);
        if header.kind == FileKind::PagesZstd.as_u32() {
            header.check_magic_version(&path)?;
            return crate::compress::verify(&path, &mut file, file_len, &header, needed);
        }
        if header.kind != FileKind::PagesChunked.as_u32() {
            header.check(&path, FileKind::Pages)?;
        }
        header.check_magic_version(&path)?;
        let chunk = crate::pagesum::chunk_of(&path, &file, &header)?;
        check_len(&path, header.payload_len, file_len - PAGES_HEADER_LEN)?;
        if header.payload_len != needed {
            return Err(ImageError::invalid(
                &path,
                format!(
                    "payload_len: {} bytes, but the page runs of {} need {needed}",
                    header.payload_len, r.core_file
                ),
            ));
        }
        let sum = crate::pagesum::file_sum(&path, &file, needed, chunk)?;
        verify_checksum(&path, header.checksum, sum)
    }

    /// Loads and checks the whole image before anything is restored: the
    /// inventory, every process (decode + [`validate_process`]), the tree
    /// (every parent other than the root's listed before its children,
    /// thread ids unique across the image), and every page file's length
    /// and checksum.
    pub fn load_all(&self) -> Result<Image> {
        self.load_all_with(true)
    }

    /// `load(r)` for every process of the inventory, on two threads when
    /// there is more than one; results in the inventory's order.
    fn load_each<T: Send>(refs: &[ProcessRef], load: impl Fn(&ProcessRef) -> T + Sync) -> Vec<T> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Mutex;
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<T>>> = refs.iter().map(|_| Mutex::new(None)).collect();
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(r) = refs.get(i) else { break };
            let got = load(r);
            if let Ok(mut s) = slots[i].lock() {
                *s = Some(got);
            }
        };
        std::thread::scope(|s| {
            if refs.len() > 1 {
                s.spawn(work);
            }
            work();
        });
        slots
            .into_iter()
            .zip(refs)
            .map(|(m, r)| m.into_inner().ok().flatten().unwrap_or_else(|| load(r)))
            .collect()
    }

    /// [`Self::load_all`] without reading the page data (`verify_pages`
    /// false): for a lazy restore, whose daemon serves the pages and checks
    /// them on its side.
    pub fn load_all_with(&self, verify_pages: bool) -> Result<Image> {
        let inventory = self.load_inventory()?;
        let inv_path = self.dir.join(INVENTORY_FILE);
        let mut processes = Vec::with_capacity(inventory.processes.len().min(1024));
        let mut seen_pids = HashSet::new();
        let mut tids = HashSet::new();
        let ipc_end = |r: &ProcessRef| match &inventory.ipc {
            Some(ipc) if r.pid == inventory.root_pid => ipc.payload_end(),
            _ => 0,
        };
        // Every process's file loaded, and its pages verified, on two
        // threads (a tree's processes are independent); the results are
        // then checked in inventory order, as one after another would be,
        // so the first error is the same.
        let loaded = Self::load_each(&inventory.processes, |r| {
            self.load_process(r).map(|img| {
                let pages = if verify_pages {
                    self.verify_pages_with(r, &img, ipc_end(r))
                } else {
                    Ok(())
                };
                (img, pages)
            })
        });
        for (r, got) in inventory.processes.iter().zip(loaded) {
            let (img, pages) = got?;
            let core = self.dir.join(&r.core_file);
            if r.pid != inventory.root_pid && !seen_pids.contains(&img.ppid) {
                return Err(ImageError::invalid(
                    &core,
                    format!(
                        "ppid: {} is not a process listed before {} in {}",
                        img.ppid,
                        r.pid,
                        inv_path.display()
                    ),
                ));
            }
            for t in &img.threads {
                if !tids.insert(t.tid) {
                    return Err(ImageError::invalid(
                        &core,
                        format!("threads: tid {} used by another process", t.tid),
                    ));
                }
            }
            seen_pids.insert(r.pid);
            pages?;
            processes.push(img);
        }
        validate_saved_refs(&inv_path, &processes)?;
        Ok(Image {
            inventory,
            processes,
        })
    }
}
