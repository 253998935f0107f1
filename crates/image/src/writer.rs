//! Writing an image directory.
//!
//! Every file is first written into a private temporary subdirectory
//! `DIR/.stasis-partial-<pid>`; [`ImageWriter::commit`] fsyncs them, moves
//! them into `DIR` and renames `inventory.img` last. A directory holding
//! `inventory.img` is therefore a complete image, and an interrupted dump
//! leaves nothing that looks like one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::pagesum::PageSum;

use crate::error::{ImageError, Result};
use crate::format::{
    encode_metadata, FileKind, INVENTORY_FILE, MAX_METADATA_LEN, PAGES_HEADER_LEN,
};
use crate::model::{Inventory, ProcessImage, PAGE_SIZE};
use crate::validate::{validate_inventory, validate_process};

/// Prefix of the temporary subdirectory a writer fills.
pub const PARTIAL_PREFIX: &str = ".stasis-partial-";

/// Suffix of a page file that is still being written.
const PART_SUFFIX: &str = ".part";

/// Suffix (after [`PARTIAL_PREFIX`] and the writer's PID) of the directory
/// of page files allocated ahead ([`PageReserve`]).
const RESERVE_SUFFIX: &str = ".reserve";

/// Writes an image directory; see the module documentation for the protocol.
/// Dropping it without [`ImageWriter::commit`] removes the temporary
/// directory and everything in it.
#[derive(Debug)]
pub struct ImageWriter {
    dir: PathBuf,
    tmp: PathBuf,
    committed: bool,
    hook: Option<fn(&str)>,
    reserve: Option<PageReserve>,
}

/// File name of the core file of `pid`.
pub fn core_file_name(pid: u32) -> String {
    format!("core-{pid}.img")
}

/// File name of the page file of `pid`.
pub fn pages_file_name(pid: u32) -> String {
    format!("pages-{pid}.img")
}

fn fsync_path(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| ImageError::io(path, "open", e))?;
    f.sync_all().map_err(|e| ImageError::io(path, "fsync", e))
}

/// Creates `path` (which must not exist) with mode 0600, not following
/// symlinks.
pub(crate) fn create_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        // Readable too: a shared writable mapping needs it (page files
        // filled through mappings, PageSink::reserve).
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| ImageError::io(path, "create", e))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = create_file(path)?;
    f.write_all(bytes)
        .map_err(|e| ImageError::io(path, "write", e))
}

fn is_own_file_name(name: &str) -> bool {
    let numbered = |rest: &str| {
        rest.strip_suffix(".img")
            .map(|n| n.strip_suffix(".merged").unwrap_or(n))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    name.strip_prefix("core-").is_some_and(numbered)
        || name.strip_prefix("pages-").is_some_and(numbered)
}

impl ImageWriter {
    /// Prepares `dir` for a new image: creates it (mode 0700) if missing;
    /// removes, before anything else is written, a stale `inventory.img`
    /// (so the directory stops looking like an image), stale
    /// `.stasis-partial-*` subdirectories and old `core-N.img` /
    /// `pages-N.img` files (and `dedup`'s `*-N.merged.img`); then creates the private temporary subdirectory
    /// (0700).
    pub fn create(dir: &Path) -> Result<ImageWriter> {
        Self::create_with(dir, None)
    }

    /// [`Self::create`] for a writer whose page files were allocated ahead
    /// in `dir` ([`PageReserve`]): [`Self::pages_writer`] writes into them
    /// instead of new files.
    pub fn create_reserved(dir: &Path, reserve: PageReserve) -> Result<ImageWriter> {
        Self::create_with(dir, Some(reserve))
    }

    fn create_with(dir: &Path, reserve: Option<PageReserve>) -> Result<ImageWriter> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ImageError::io(dir, "create dir", e))?;
        let meta = fs::metadata(dir).map_err(|e| ImageError::io(dir, "stat", e))?;
        if !meta.is_dir() {
            return Err(ImageError::invalid(dir, "not a directory"));
        }

        // The stale inventory goes first and durably: from then on the
        // directory is not an image, whatever happens next.
        let inv = dir.join(INVENTORY_FILE);
        match fs::remove_file(&inv) {
            Ok(()) => fsync_path(dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io(&inv, "remove", e)),
        }
        let entries = fs::read_dir(dir).map_err(|e| ImageError::io(dir, "read dir", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io(dir, "read dir", e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(|e| ImageError::io(&path, "stat", e))?;
            // Our own page files allocated ahead stay (a stale one goes
            // with the other partial directories).
            let ours = reserve.as_ref().is_some_and(|r| r.dir == path);
            if name.starts_with(PARTIAL_PREFIX) && ft.is_dir() && !ours {
                fs::remove_dir_all(&path).map_err(|e| ImageError::io(&path, "remove", e))?;
            } else if is_own_file_name(name) && !ft.is_dir() {
                fs::remove_file(&path).map_err(|e| ImageError::io(&path, "remove", e))?;
            }
        }

        let tmp = dir.join(format!("{PARTIAL_PREFIX}{}", std::process::id()));
        DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| ImageError::io(&tmp, "create dir", e))?;
        let writer = ImageWriter {
            dir: dir.to_path_buf(),
            tmp,
            committed: false,
            hook: None,
            reserve,
        };
        // The umask can only clear bits, but make the mode exact anyway.
        fs::set_permissions(&writer.tmp, fs::Permissions::from_mode(0o700))
            .map_err(|e| ImageError::io(&writer.tmp, "chmod", e))?;
        Ok(writer)
    }

    /// The image directory (not the temporary one).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Validates `img` and writes it as `core-PID.img`. Returns the file
    /// name, as the inventory should list it.
    pub fn write_process(&self, img: &ProcessImage) -> Result<String> {
        let name = core_file_name(img.pid);
        let final_path = self.dir.join(&name);
        validate_process(&final_path, img)?;
        let payload = serde_json::to_vec(img).map_err(|error| ImageError::Encode {
            path: final_path.clone(),
            error,
        })?;
        if payload.len() as u64 > MAX_METADATA_LEN {
            return Err(ImageError::TooLarge {
                path: final_path,
                len: payload.len() as u64,
                cap: MAX_METADATA_LEN,
            });
        }
        write_file(
            &self.tmp.join(&name),
            &encode_metadata(FileKind::Core, &payload),
        )?;
        Ok(name)
    }

    /// Starts `pages-PID.img`. Until [`PagesWriter::finish`] the file carries
    /// a `.part` suffix, and [`ImageWriter::commit`] refuses to proceed.
    /// A file allocated ahead for `pid` ([`Self::create_reserved`]) is moved
    /// in and written over.
    pub fn pages_writer(&self, pid: u32) -> Result<PagesWriter> {
        let name = pages_file_name(pid);
        let part = self.tmp.join(format!("{name}{PART_SUFFIX}"));
        let file = match self.reserve.as_ref().and_then(|r| r.take(pid, &part)) {
            Some(f) => f,
            None => create_file(&part)?,
        };
        let mut w = PagesWriter {
            file,
            part,
            final_path: self.tmp.join(&name),
            name,
            hasher: PageSum::new(crate::pagesum::CHUNK),
            hashed: 0,
            offset: 0,
            done: false,
        };
        w.write_header(0)?;
        Ok(w)
    }

    /// Completes the image: validates and writes `inventory` (whose files
    /// must all have been written), fsyncs every file and the directories,
    /// renames every file into the image directory with `inventory.img`
    /// last, and removes the temporary directory.
    /// Installs a test hook called with the name of each step of
    /// [`ImageWriter::commit`] (`commit-written`, `commit-renamed`,
    /// `commit-inventory`), e.g. to kill the writer there.
    pub fn set_hook(&mut self, hook: fn(&str)) {
        self.hook = Some(hook);
    }

    fn hook(&self, point: &str) {
        if let Some(h) = self.hook {
            h(point);
        }
    }

    pub fn commit(mut self, inventory: &Inventory) -> Result<()> {
        let inv_final = self.dir.join(INVENTORY_FILE);
        validate_inventory(&inv_final, inventory)?;

        let mut names = Vec::new();
        let entries =
            fs::read_dir(&self.tmp).map_err(|e| ImageError::io(&self.tmp, "read dir", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io(&self.tmp, "read dir", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(PART_SUFFIX) {
                return Err(ImageError::invalid(
                    &entry.path(),
                    "page file not finished (PagesWriter::finish was not called)",
                ));
            }
            names.push(name);
        }
        for p in &inventory.processes {
            for f in [&p.core_file, &p.pages_file] {
                if !names.iter().any(|n| n == f) {
                    return Err(ImageError::Missing {
                        path: self.dir.join(f),
                    });
                }
            }
        }

        let payload = serde_json::to_vec(inventory).map_err(|error| ImageError::Encode {
            path: inv_final.clone(),
            error,
        })?;
        let inv_tmp = self.tmp.join(INVENTORY_FILE);
        write_file(&inv_tmp, &encode_metadata(FileKind::Inventory, &payload))?;

        for name in &names {
            fsync_path(&self.tmp.join(name))?;
        }
        fsync_path(&inv_tmp)?;
        fsync_path(&self.tmp)?;
        self.hook("commit-written");

        for name in &names {
            let from = self.tmp.join(name);
            let to = self.dir.join(name);
            fs::rename(&from, &to).map_err(|e| ImageError::io(&to, "rename", e))?;
        }
        // Every other file is in place and durable before the inventory
        // appears.
        fsync_path(&self.dir)?;
        self.hook("commit-renamed");
        fs::rename(&inv_tmp, &inv_final).map_err(|e| ImageError::io(&inv_final, "rename", e))?;
        self.hook("commit-inventory");
        fs::remove_dir(&self.tmp).map_err(|e| ImageError::io(&self.tmp, "remove", e))?;
        self.committed = true;
        fsync_path(&self.dir)
    }
}

/// Page files allocated before a dump freezes its tree, so that the pages
/// written while it is frozen go into blocks that already exist (on tmpfs
/// the allocation is most of a write's cost). Used by a dump that follows a
/// pre-copy round, whose size the round predicts. Best effort: a file that
/// cannot be allocated is simply not reserved. Dropping it removes what
/// was not taken.
#[derive(Debug)]
pub struct PageReserve {
    dir: PathBuf,
    files: std::sync::Mutex<std::collections::HashMap<u32, (File, PathBuf)>>,
    bytes: u64,
}

impl PageReserve {
    fn path(images_dir: &Path) -> PathBuf {
        images_dir.join(format!(
            "{PARTIAL_PREFIX}{}{RESERVE_SUFFIX}",
            std::process::id()
        ))
    }

    /// Allocates, for each (image PID, payload bytes), a page file of that
    /// size in a private subdirectory of `images_dir` (which must exist).
    /// Best effort: None when the directory cannot be made; a file that
    /// cannot be made or filled is left out, and so is any beyond half of
    /// the space left on the filesystem (the dump itself needs the rest).
    pub fn new(images_dir: &Path, wanted: &[(u32, u64)]) -> Option<PageReserve> {
        let dir = Self::path(images_dir);
        let _ = fs::remove_dir_all(&dir);
        DirBuilder::new().mode(0o700).create(&dir).ok()?;
        let mut budget = stasis_sys::util::available_bytes(images_dir).unwrap_or(0) / 2;
        let mut files = std::collections::HashMap::new();
        let mut bytes = 0;
        for &(pid, want) in wanted {
            let len = PAGES_HEADER_LEN.saturating_add(want);
            if len > budget {
                continue;
            }
            let path = dir.join(pages_file_name(pid));
            let Ok(file) = create_file(&path) else {
                continue;
            };
            if Self::fill(&file, len).is_err() {
                let _ = fs::remove_file(&path);
                continue;
            }
            budget -= len;
            bytes += len;
            files.insert(pid, (file, path));
        }
        Some(PageReserve {
            dir,
            files: std::sync::Mutex::new(files),
            bytes,
        })
    }

    /// Bytes of the page files reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes `len` zero bytes into `file`: its pages then exist, and have
    /// been written once (a fallocated page of tmpfs is only allocated; on a
    /// VM the host backs it only at its first write, a cost that would
    /// otherwise fall inside the frozen copy).
    fn fill(file: &File, len: u64) -> std::io::Result<()> {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(ZEROS.len() as u64) as usize;
            file.write_all_at(&ZEROS[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }

    /// The file reserved for `pid`, renamed to `to`.
    fn take(&self, pid: u32, to: &Path) -> Option<File> {
        let (file, path) = self.files.lock().ok()?.remove(&pid)?;
        match fs::rename(&path, to) {
            Ok(()) => Some(file),
            Err(_) => {
                let _ = fs::remove_file(&path);
                None
            }
        }
    }
}

impl Drop for PageReserve {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Streams the raw page data of one process into `pages-PID.img`.
///
/// The [`PAGES_HEADER_LEN`]-byte header is written as a placeholder first
/// and rewritten by [`PagesWriter::finish`] with the final payload length
/// and the checksum, hashed as it streams by: kind `pages-chunked`, chunks
/// of [`crate::pagesum::CHUNK`] (a restore checks them on every CPU).
/// Dropping it without `finish` removes the file.
pub struct PagesWriter {
    file: File,
    part: PathBuf,
    final_path: PathBuf,
    name: String,
    hasher: PageSum,
    /// Bytes fed to `hasher`; equal to `offset` except while split.
    hashed: u64,
    offset: u64,
    done: bool,
}

/// The hashing half of a split [`PagesWriter`] (see [`PagesWriter::split`]).
pub struct PageHasher<'a> {
    hasher: &'a mut PageSum,
    hashed: &'a mut u64,
}

/// The writing half of a split [`PagesWriter`] (see [`PagesWriter::split`]).
pub struct PageSink<'a> {
    file: &'a mut File,
    part: &'a Path,
    offset: &'a mut u64,
}

impl PageHasher<'_> {
    /// Feeds the next payload bytes to the checksum; the same bytes must go,
    /// in the same order, through [`PageSink::write_all`].
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        *self.hashed += data.len() as u64;
    }
}

impl PageSink<'_> {
    /// Appends `data` (a multiple of [`PAGE_SIZE`]) without hashing it.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        if data.len() as u64 % PAGE_SIZE != 0 {
            return Err(ImageError::invalid(
                self.part,
                format!(
                    "write of {} bytes is not a multiple of the page size",
                    data.len()
                ),
            ));
        }
        self.file
            .write_all(data)
            .map_err(|e| ImageError::io(self.part, "write", e))?;
        *self.offset += data.len() as u64;
        Ok(())
    }

    /// Payload bytes written so far.
    pub fn offset(&self) -> u64 {
        *self.offset
    }

    /// The page file (payload byte `n` is at file offset
    /// [`PAGES_HEADER_LEN`] + `n`), e.g. to start its writeback early.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }
}

impl std::fmt::Debug for PagesWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagesWriter")
            .field("path", &self.part)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl PagesWriter {
    fn write_header(&mut self, payload_len: u64) -> Result<()> {
        let block = self.hasher.header_block(payload_len);
        self.file
            .write_all_at(&block, 0)
            .map_err(|e| ImageError::io(&self.part, "write", e))?;
        if self.offset == 0 {
            // Position the cursor after the header for the streamed data.
            use std::io::{Seek, SeekFrom};
            self.file
                .seek(SeekFrom::Start(PAGES_HEADER_LEN))
                .map_err(|e| ImageError::io(&self.part, "seek", e))?;
        }
        Ok(())
    }

    /// Payload bytes written so far: the offset the next run will have.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len as u64 % PAGE_SIZE != 0 {
            return Err(ImageError::invalid(
                &self.part,
                format!("write of {len} bytes is not a multiple of the page size"),
            ));
        }
        Ok(())
    }

    /// Appends `data`, whose length must be a multiple of [`PAGE_SIZE`].
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.check_len(data.len())?;
        self.file
            .write_all(data)
            .map_err(|e| ImageError::io(&self.part, "write", e))?;
        self.hasher.update(data);
        self.hashed += data.len() as u64;
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Splits the writer into a hashing half and a writing half, so that
    /// checksumming and writing can run on different threads (one reads
    /// and hashes the next batch while the other writes the last one).
    /// Every byte must pass through both halves in the same order;
    /// [`PagesWriter::finish`] refuses a file where they differ.
    pub fn split(&mut self) -> (PageHasher<'_>, PageSink<'_>) {
        (
            PageHasher {
                hasher: &mut self.hasher,
                hashed: &mut self.hashed,
            },
            PageSink {
                file: &mut self.file,
                part: &self.part,
                offset: &mut self.offset,
            },
        )
    }

    /// Appends several buffers with vectored writes; their total length
    /// must be a multiple of [`PAGE_SIZE`].
    pub fn write_vectored_all(&mut self, bufs: &[&[u8]]) -> Result<()> {
        let total = bufs
            .iter()
            .try_fold(0usize, |acc, b| acc.checked_add(b.len()))
            .ok_or_else(|| ImageError::invalid(&self.part, "vectored write length overflows"))?;
        self.check_len(total)?;
        let mut slices: Vec<IoSlice<'_>> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| IoSlice::new(b))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => {
                    return Err(ImageError::io(
                        &self.part,
                        "write",
                        std::io::ErrorKind::WriteZero.into(),
                    ))
                }
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ImageError::io(&self.part, "write", e)),
            }
        }
        for b in bufs {
            self.hasher.update(b);
        }
        self.hashed += total as u64;
        self.offset += total as u64;
        Ok(())
    }

    /// Writes the final header and gives the file its name. Returns the
    /// file name, as the inventory should list it.
    pub fn finish(mut self) -> Result<String> {
        if self.hashed != self.offset {
            return Err(ImageError::invalid(
                &self.part,
                format!("{} bytes written but {} hashed", self.offset, self.hashed),
            ));
        }
        self.write_header(self.offset)?;
        // A file allocated ahead may be longer than what was written.
        self.file
            .set_len(PAGES_HEADER_LEN + self.offset)
            .map_err(|e| ImageError::io(&self.part, "truncate", e))?;
        fs::rename(&self.part, &self.final_path)
            .map_err(|e| ImageError::io(&self.final_path, "rename", e))?;
        self.done = true;
        Ok(std::mem::take(&mut self.name))
    }
}

impl Drop for PagesWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.part);
        }
    }
}
