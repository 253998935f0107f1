//! The single-stream image format: one image (and optionally the images
//! of its chain, in subdirectories) as one byte stream, for pipes and
//! object storage (`dump --to-stdout`, `restore --from-stdin`) and for the
//! page server's TCP connection.
//!
//! Integers little endian: `STASISPS` and a u32 version (2; 1 is read
//! too: it never names a subdirectory); then per file: u8 1, u16 name
//! length, the name (`NAME` or `SUB/NAME`, both plain file names), u64
//! length, the bytes; then u8 2 (end). Files are sent as they are on disk,
//! so each keeps its own header and checksum; the inventory of each
//! directory comes after its other files.
//!
//! A receiver writes everything into a private partial directory and only
//! at the end moves it into place: each subdirectory whole, then the top
//! directory's files with `inventory.img` last, so the target is an image
//! only once everything arrived. It does not verify the image: a restore
//! does that before creating anything, the page server before answering.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"STASISPS";
const VERSION: u32 = 2;
const FILE: u8 = 1;
const END: u8 = 2;
/// The copy buffer for file contents.
const COPY_BUF: usize = 1 << 20;
/// Files in one stream, at most (a guard against a hostile peer).
const MAX_FILES: usize = 3 * 4_194_304 + 1;

/// Writes one stream into `w`.
pub struct Sender<W: Write> {
    w: W,
    sent: u64,
}

impl<W: Write> Sender<W> {
    /// Starts the stream (magic and version).
    pub fn new(mut w: W) -> Result<Sender<W>> {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        Ok(Sender { w, sent: 0 })
    }

    /// Sends every `*.img` file of the image directory `dir`, the
    /// inventory last, as `SUB/NAME` if `sub` is given.
    pub fn send_dir(&mut self, dir: &Path, sub: Option<&str>) -> Result<()> {
        if let Some(s) = sub {
            if !stasis_image::is_plain_name(s) {
                bail!("stream: {s:?} is not a plain directory name");
            }
        }
        let mut names: Vec<String> = fs::read_dir(dir)
            .with_context(|| format!("read {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.ends_with(".img"))
            .collect();
        names.sort_by_key(|n| (n == stasis_image::INVENTORY_FILE, n.clone()));
        if names.last().map(String::as_str) != Some(stasis_image::INVENTORY_FILE) {
            bail!("stream: {} holds no image", dir.display());
        }
        for n in &names {
            let mut f = fs::File::open(dir.join(n)).with_context(|| format!("open {n}"))?;
            let len = f.metadata()?.len();
            let name = match sub {
                Some(s) => format!("{s}/{n}"),
                None => n.clone(),
            };
            self.w.write_all(&[FILE])?;
            self.w.write_all(&(name.len() as u16).to_le_bytes())?;
            self.w.write_all(name.as_bytes())?;
            self.w.write_all(&len.to_le_bytes())?;
            // 1 MiB at a time: few writes (and, over TLS, full records).
            let mut from = std::io::BufReader::with_capacity(COPY_BUF, (&mut f).take(len));
            let copied = std::io::copy(&mut from, &mut self.w)?;
            if copied != len {
                bail!("{n}: changed while sending");
            }
            self.sent += len;
        }
        self.w.flush()?;
        Ok(())
    }

    /// Ends the stream; returns the writer and the file bytes sent.
    pub fn finish(mut self) -> Result<(W, u64)> {
        self.w.write_all(&[END])?;
        self.w.flush()?;
        Ok((self.w, self.sent))
    }
}

/// Checks a received name: `NAME` or `SUB/NAME`, both plain.
fn split_name(name: &str) -> Option<(Option<&str>, &str)> {
    let plain = |n: &str| stasis_image::is_plain_name(n) || n == stasis_image::INVENTORY_FILE;
    match name.split_once('/') {
        None if plain(name) => Some((None, name)),
        Some((s, n)) if stasis_image::is_plain_name(s) && plain(n) => Some((Some(s), n)),
        _ => None,
    }
}

/// Reads one stream from `r` into the directory `dir` (created 0700 if
/// missing); returns the file bytes received. On error nothing in `dir`
/// looks like a new image.
pub fn receive(r: &mut impl Read, dir: &Path) -> Result<u64> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head)
        .context("stream: reading its header")?;
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if &head[..8] != MAGIC || !(1..=VERSION).contains(&version) {
        bail!("not a stasis image stream (bad magic or version)");
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let inv = dir.join(stasis_image::INVENTORY_FILE);
    match fs::remove_file(&inv) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove {}", inv.display()))
        }
        _ => {}
    }
    let partial = dir.join(format!(".stasis-partial-rx-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    fs::DirBuilder::new().mode(0o700).create(&partial)?;
    let done = receive_files(r, &partial).and_then(|(names, bytes)| {
        commit(&partial, dir, &names)?;
        Ok(bytes)
    });
    let _ = fs::remove_dir_all(&partial);
    done
}

fn receive_files(r: &mut impl Read, partial: &Path) -> Result<(Vec<String>, u64)> {
    let (mut names, mut bytes) = (Vec::<String>::new(), 0u64);
    loop {
        let mut t = [0u8; 1];
        r.read_exact(&mut t)
            .context("stream ended before its end mark")?;
        match t[0] {
            END => return Ok((names, bytes)),
            FILE if names.len() < MAX_FILES => {}
            FILE => bail!("too many files"),
            other => bail!("unknown message type {other}"),
        }
        let mut l2 = [0u8; 2];
        r.read_exact(&mut l2)?;
        let mut name = vec![0u8; u16::from_le_bytes(l2) as usize];
        r.read_exact(&mut name)?;
        let name = String::from_utf8(name).context("file name")?;
        let Some((sub, _)) = split_name(&name).filter(|_| !names.contains(&name)) else {
            bail!("bad or repeated file name {name:?}");
        };
        if let Some(s) = sub {
            let d = partial.join(s);
            if !d.exists() {
                fs::DirBuilder::new().mode(0o700).create(&d)?;
            }
        }
        let mut l8 = [0u8; 8];
        r.read_exact(&mut l8)?;
        let len = u64::from_le_bytes(l8);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(partial.join(&name))?;
        let mut to = std::io::BufWriter::with_capacity(COPY_BUF, &mut f);
        let n = std::io::copy(&mut r.take(len), &mut to)?;
        to.flush()?;
        drop(to);
        if n != len {
            bail!("{name}: stream ended after {n} of {len} bytes");
        }
        f.sync_all()?;
        bytes += len;
        names.push(name);
    }
}

/// Moves the received files into `dir`: each subdirectory whole (replacing
/// one of that name), then the top files, the inventory last.
fn commit(partial: &Path, dir: &Path, names: &[String]) -> Result<()> {
    let inv = stasis_image::INVENTORY_FILE;
    if !names.iter().any(|n| n == inv) {
        bail!("no {inv} received");
    }
    let mut subs: Vec<&str> = names
        .iter()
        .filter_map(|n| split_name(n).and_then(|(s, _)| s))
        .collect();
    subs.sort_unstable();
    subs.dedup();
    for s in subs {
        if !partial.join(s).join(inv).exists() {
            bail!("no {s}/{inv} received");
        }
        let to = dir.join(s);
        match fs::symlink_metadata(&to) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&to)?,
            Ok(_) => bail!("{} exists and is not a directory", to.display()),
            Err(_) => {}
        }
        fs::rename(partial.join(s), &to).with_context(|| format!("rename {s}"))?;
    }
    for n in names
        .iter()
        .filter(|n| !n.contains('/') && *n != inv)
        .chain(std::iter::once(&inv.to_string()))
    {
        fs::rename(partial.join(n), dir.join(n)).with_context(|| format!("rename {n}"))?;
    }
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A private directory (0700) under the temporary directory, removed with
/// its contents on drop: where a streamed image lives when no `-D` is
/// given.
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    pub fn new(what: &str) -> Result<ScratchDir> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "stasis-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("create {}", p.display()))?;
        Ok(ScratchDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Keeps the directory (it holds the only copy of an image whose tree
    /// is gone); returns its path.
    pub fn keep(self) -> std::path::PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(split_name("core-1.img"), Some((None, "core-1.img")));
        assert_eq!(
            split_name("pre1/inventory.img"),
            Some((Some("pre1"), "inventory.img"))
        );
        assert_eq!(split_name("../x.img"), None);
        assert_eq!(split_name("a/b/c.img"), None);
        assert_eq!(split_name("/x.img"), None);
        assert_eq!(split_name(""), None);
    }
}
