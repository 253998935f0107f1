//! Compressed page files (`stasis dump --compress[=zstd[:LEVEL]]`).
//!
//! A page file is compressed after its image is committed, one file at a
//! time: the compressed copy is written beside it and renamed over it, so
//! the image is complete and readable at every moment (each page file is
//! either raw or compressed, and readers take either). Readers never map
//! a compressed file: [`crate::chain::resolve_chain`] inflates it into a
//! private temporary file first, after its checksum was verified, so
//! restore, the page server, parent images and `show` need not know.
//!
//! Layout: the usual [`PAGES_HEADER_LEN`]-byte page-file header, kind
//! [`FileKind::PagesZstd`], `payload_len` and `checksum` (xxh3-64) of the
//! *compressed* payload; at offset 32 the raw payload's length (u64 LE)
//! and xxh3-64 (u64 LE), at 48 the codec (u32 LE, 1 = zstd) and level
//! (i32 LE); zeros to 4096. The payload is one or more zstd frames whose
//! decompressed bytes are exactly the raw payload.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::error::{ImageError, Result};
use crate::format::{FileKind, Header, HEADER_LEN, PAGES_HEADER_LEN};
use crate::reader::{check_len, open_regular, read_header, verify_checksum, ImageDir};

/// Codec number of zstd in the header.
const CODEC_ZSTD: u32 = 1;

/// Size of the reads and writes that stream a page file.
const CHUNK: usize = 1 << 20;

/// zstd's default level, when `--compress` names none.
pub const DEFAULT_LEVEL: i32 = 3;

/// How page files are compressed (only zstd, at a level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// zstd level, 1 (fastest) to 19 (smallest); negative: faster still.
    pub level: i32,
}

impl Compression {
    /// Parses `--compress`'s value: none or empty (zstd at
    /// [`DEFAULT_LEVEL`]), `zstd`, or `zstd:LEVEL`.
    pub fn parse(spec: Option<&str>) -> std::result::Result<Compression, String> {
        let spec = spec.unwrap_or("");
        let (codec, level) = match spec.split_once(':') {
            Some((c, l)) => (c, Some(l)),
            None => (spec, None),
        };
        if !matches!(codec, "" | "zstd") {
            return Err(format!(
                "{spec:?}: unknown codec {codec:?} (stasis compresses with zstd only)"
            ));
        }
        let level = match level {
            None => DEFAULT_LEVEL,
            Some(l) => l
                .parse::<i32>()
                .ok()
                .filter(|l| (-7..=19).contains(l) && *l != 0)
                .ok_or_else(|| format!("{spec:?}: zstd level must be -7..-1 or 1..19"))?,
        };
        Ok(Compression { level })
    }
}

/// What compressing a file or an image did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Payload bytes before compression.
    pub raw: u64,
    /// Payload bytes after compression.
    pub stored: u64,
}

/// The fields a compressed page file adds to the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extra {
    raw_len: u64,
    raw_xxh3: u64,
    codec: u32,
    level: i32,
}

impl Extra {
    fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&self.raw_len.to_le_bytes());
        b[8..16].copy_from_slice(&self.raw_xxh3.to_le_bytes());
        b[16..20].copy_from_slice(&self.codec.to_le_bytes());
        b[20..24].copy_from_slice(&self.level.to_le_bytes());
        b
    }

    fn decode(b: &[u8; 24]) -> Extra {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        Extra {
            raw_len: u64_at(0),
            raw_xxh3: u64_at(8),
            codec: u32_at(16),
            level: i32::from_le_bytes(u32_at(20).to_le_bytes()),
        }
    }

    fn read(path: &Path, file: &File) -> Result<Extra> {
        let mut b = [0u8; 24];
        file.read_exact_at(&mut b, HEADER_LEN as u64)
            .map_err(|e| ImageError::io(path, "read", e))?;
        let x = Extra::decode(&b);
        if x.codec != CODEC_ZSTD {
            return Err(ImageError::invalid(
                path,
                format!("unknown page compression codec {}", x.codec),
            ));
        }
        Ok(x)
    }
}

/// Whether the page file at `path` is compressed (its header's kind).
pub fn is_compressed(path: &Path) -> Result<bool> {
    let (mut file, len) = open_regular(path, false)?;
    let header = read_header(path, &mut file, len, HEADER_LEN as u64)?;
    Ok(header.kind == FileKind::PagesZstd.as_u32())
}

/// The raw length and codec fields of a compressed page file, for `show`.
pub fn describe(path: &Path) -> Result<serde_json::Value> {
    let (file, _) = open_regular(path, true)?;
    let x = Extra::read(path, &file)?;
    Ok(serde_json::json!({
        "codec": "zstd",
        "level": x.level,
        "raw_len": x.raw_len,
        "raw_checksum": format!("{:#018x}", x.raw_xxh3),
    }))
}

/// Checks a compressed page file whose header was read from `file`: the
/// payload length against the file, the raw length against `needed`, and
/// the xxh3-64 of the compressed payload. Called by
/// [`ImageDir::verify_pages`].
pub(crate) fn verify(
    path: &Path,
    file: &mut File,
    file_len: u64,
    header: &Header,
    needed: u64,
) -> Result<()> {
    check_len(path, header.payload_len, file_len - PAGES_HEADER_LEN)?;
    let x = Extra::read(path, file)?;
    if x.raw_len != needed {
        return Err(ImageError::invalid(
            path,
            format!(
                "raw_len: {} bytes, but the page runs need {needed}",
                x.raw_len
            ),
        ));
    }
    let digest = stream_payload(path, file, header.payload_len, |_| Ok(()))?;
    verify_checksum(path, header.checksum, digest)
}

/// Reads the `len` payload bytes of the page file `file` (from byte
/// [`PAGES_HEADER_LEN`]) in [`CHUNK`]s, handing each to `each`; returns
/// their xxh3-64.
fn stream_payload(
    path: &Path,
    file: &mut File,
    len: u64,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    file.seek(SeekFrom::Start(PAGES_HEADER_LEN))
        .map_err(|e| ImageError::io(path, "seek", e))?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(ImageError::Truncated {
                    path: path.to_path_buf(),
                    expected: len,
                    actual: len - left,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::io(path, "read", e)),
        };
        hasher.update(&buf[..n]);
        each(&buf[..n])?;
        left -= n as u64;
    }
    Ok(hasher.digest())
}

/// A writer that hashes and counts what passes through it.
struct Counted<W> {
    inner: W,
    hasher: Xxh3,
    len: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file removed on drop unless kept.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Compresses the raw page file at `path` in place (through a `.zst.part`
/// file renamed over it). The raw payload's checksum is verified as it is
/// read: a corrupt file is refused, not compressed. A file already
/// compressed is left as it is.
pub fn compress_file(path: &Path, c: Compression) -> Result<Sizes> {
    let (mut src, file_len) = open_regular(path, false)?;
    let header = read_header(path, &mut src, file_len, PAGES_HEADER_LEN)?;
    header.check_magic_version(path)?;
    if header.kind == FileKind::PagesZstd.as_u32() {
        let x = Extra::read(path, &src)?;
        return Ok(Sizes {
            raw: x.raw_len,
            stored: header.payload_len,
        });
    }
    if header.kind != FileKind::PagesChunked.as_u32() {
        header.check(path, FileKind::Pages)?;
    }
    let chunk = crate::pagesum::chunk_of(path, &src, &header)?;
    check_len(path, header.payload_len, file_len - PAGES_HEADER_LEN)?;
    let part_path = PathBuf::from(format!("{}.zst.part", path.display()));
    let _ = std::fs::remove_file(&part_path);
    let dst = crate::writer::create_file(&part_path)?;
    let mut part = Partial(Some(part_path.clone()));
    let io_w = |e| ImageError::io(&part_path, "write", e);
    let mut out = Counted {
        inner: io::BufWriter::with_capacity(CHUNK, &dst),
        hasher: Xxh3::new(),
        len: 0,
    };
    out.inner
        .get_mut()
        .seek(SeekFrom::Start(PAGES_HEADER_LEN))
        .map_err(io_w)?;
    let mut enc = zstd::stream::write::Encoder::new(out, c.level).map_err(io_w)?;
    // A chunked file's own checksum is checked too; the compressed file
    // records the whole payload's xxh3-64, as it always did.
    let mut chunked = (chunk != 0).then(|| crate::pagesum::PageSum::new(chunk));
    let raw_hash = stream_payload(path, &mut src, header.payload_len, |b| {
        if let Some(c) = &mut chunked {
            c.update(b);
        }
        enc.write_all(b).map_err(io_w)
    })?;
    let own = chunked.map_or(raw_hash, |c| c.digest());
    verify_checksum(path, header.checksum, own)?;
    let mut out = enc.finish().map_err(io_w)?;
    out.flush().map_err(io_w)?;
    let (stored, checksum) = (out.len, out.hasher.digest());
    drop(out);
    let x = Extra {
        raw_len: header.payload_len,
        raw_xxh3: raw_hash,
        codec: CODEC_ZSTD,
        level: c.level,
    };
    let mut head = vec![0u8; PAGES_HEADER_LEN as usize];
    head[..HEADER_LEN]
        .copy_from_slice(&Header::new(FileKind::PagesZstd, stored, checksum).encode());
    head[HEADER_LEN..HEADER_LEN + 24].copy_from_slice(&x.encode());
    dst.write_all_at(&head, 0).map_err(io_w)?;
    dst.sync_all()
        .map_err(|e| ImageError::io(&part_path, "fsync", e))?;
    std::fs::rename(&part_path, path).map_err(|e| ImageError::io(path, "rename", e))?;
    part.0 = None;
    Ok(Sizes {
        raw: header.payload_len,
        stored,
    })
}

/// Compresses every page file of the (committed) image in `dir`; returns
/// the totals. Each file is replaced atomically, so the image stays whole
/// if this stops half way.
pub fn compress_image(dir: &Path, c: Compression) -> Result<Sizes> {
    let image = ImageDir::open(dir)?;
    let inv = image.load_inventory()?;
    let mut total = Sizes::default();
    for r in &inv.processes {
        let s = compress_file(&image.pages_path(r), c)?;
        total.raw += s.raw;
        total.stored += s.stored;
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(total)
}

/// Writes `dst` (which must not exist), a raw page file holding the
/// decompressed payload of the compressed page file `src`. Refuses, and
/// removes `dst`, unless the decompressed bytes have exactly the length
/// and xxh3-64 recorded in `src`'s header.
pub fn inflate_file(src: &Path, dst: &Path) -> Result<()> {
    let (mut file, file_len) = open_regular(src, false)?;
    let header = read_header(src, &mut file, file_len, PAGES_HEADER_LEN)?;
    header.check(src, FileKind::PagesZstd)?;
    check_len(src, header.payload_len, file_len - PAGES_HEADER_LEN)?;
    let x = Extra::read(src, &file)?;
    file.seek(SeekFrom::Start(PAGES_HEADER_LEN))
        .map_err(|e| ImageError::io(src, "seek", e))?;
    let out = crate::writer::create_file(dst)?;
    let mut part = Partial(Some(dst.to_path_buf()));
    let io_w = |e| ImageError::io(dst, "write", e);
    let corrupt =
        |e: io::Error| ImageError::invalid(src, format!("compressed pages do not decompress: {e}"));
    let input = BufReader::with_capacity(CHUNK, (&mut file).take(header.payload_len));
    let mut dec = zstd::stream::read::Decoder::with_buffer(input).map_err(corrupt)?;
    let mut hasher = Xxh3::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = PAGES_HEADER_LEN;
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(e)),
        };
        if at - PAGES_HEADER_LEN + n as u64 > x.raw_len {
            return Err(ImageError::invalid(
                src,
                format!("decompresses to more than its raw_len {}", x.raw_len),
            ));
        }
        hasher.update(&buf[..n]);
        out.write_all_at(&buf[..n], at).map_err(io_w)?;
        at += n as u64;
    }
    let got = at - PAGES_HEADER_LEN;
    if got != x.raw_len {
        return Err(ImageError::Truncated {
            path: src.to_path_buf(),
            expected: x.raw_len,
            actual: got,
        });
    }
    verify_checksum(src, x.raw_xxh3, hasher.digest())?;
    let mut head = vec![0u8; PAGES_HEADER_LEN as usize];
    head[..HEADER_LEN].copy_from_slice(&Header::new(FileKind::Pages, got, x.raw_xxh3).encode());
    out.write_all_at(&head, 0).map_err(io_w)?;
    part.0 = None;
    Ok(())
}

/// Compresses `data` in memory (for `stasis bench`).
pub fn compress_bytes(data: &[u8], c: Compression) -> io::Result<Vec<u8>> {
    zstd::bulk::compress(data, c.level)
}

/// Decompresses what [`compress_bytes`] made, of known raw length.
pub fn decompress_bytes(data: &[u8], raw_len: usize) -> io::Result<Vec<u8>> {
    zstd::bulk::decompress(data, raw_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(Compression::parse(None).unwrap().level, DEFAULT_LEVEL);
        assert_eq!(Compression::parse(Some("zstd")).unwrap().level, 3);
        assert_eq!(Compression::parse(Some("zstd:1")).unwrap().level, 1);
        assert_eq!(Compression::parse(Some("zstd:-3")).unwrap().level, -3);
        assert!(Compression::parse(Some("lz4")).is_err());
        assert!(Compression::parse(Some("zstd:0")).is_err());
        assert!(Compression::parse(Some("zstd:40")).is_err());
        assert!(Compression::parse(Some("zstd:x")).is_err());
    }

    fn raw_file(dir: &Path, payload: &[u8]) -> PathBuf {
        let p = dir.join("pages-1.img");
        let mut head = vec![0u8; PAGES_HEADER_LEN as usize];
        let h = Header::new(
            FileKind::Pages,
            payload.len() as u64,
            crate::format::checksum(payload),
        );
        head[..HEADER_LEN].copy_from_slice(&h.encode());
        head.extend_from_slice(payload);
        std::fs::write(&p, head).unwrap();
        p
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("stasis-compress-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_corruption() {
        let d = tmp("rt");
        let mut payload = vec![0u8; 64 * 4096];
        for (i, b) in payload.iter_mut().enumerate().skip(8 * 4096) {
            *b = (i * 7 % 251) as u8;
        }
        let p = raw_file(&d, &payload);
        let before = std::fs::read(&p).unwrap();
        let s = compress_file(&p, Compression { level: 1 }).unwrap();
        assert_eq!(s.raw, payload.len() as u64);
        assert!(s.stored < s.raw / 4, "{s:?}");
        assert!(is_compressed(&p).unwrap());
        // Compressing twice is a no-op.
        assert_eq!(compress_file(&p, Compression { level: 1 }).unwrap(), s);
        let out = d.join("inflated.img");
        inflate_file(&p, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), before);

        // A flipped byte in the compressed payload: refused by the
        // checksum, and by the decompressor even with the checksum mended.
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x55;
        std::fs::write(&p, &bytes).unwrap();
        let (mut f, len) = open_regular(&p, false).unwrap();
        let h = read_header(&p, &mut f, len, PAGES_HEADER_LEN).unwrap();
        let e = verify(&p, &mut f, len, &h, payload.len() as u64).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        let fixed = Header::new(
            FileKind::PagesZstd,
            h.payload_len,
            crate::format::checksum(&bytes[PAGES_HEADER_LEN as usize..]),
        );
        bytes[..HEADER_LEN].copy_from_slice(&fixed.encode());
        std::fs::write(&p, &bytes).unwrap();
        let out2 = d.join("inflated2.img");
        assert!(inflate_file(&p, &out2).is_err());
        assert!(!out2.exists(), "a failed inflate leaves nothing");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_raw_file_is_not_compressed() {
        let d = tmp("raw");
        let p = raw_file(&d, &[7u8; 8192]);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[5000] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(compress_file(&p, Compression { level: 1 }).is_err());
        assert!(!is_compressed(&p).unwrap());
        let _ = std::fs::remove_dir_all(&d);
    }
}
