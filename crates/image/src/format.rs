//! File header layout shared by every image file.
//!
//! ```text
//! offset  size  field
//!      0     8  magic        b"STASISIM"
//!      8     4  version      u32 LE, FORMAT_VERSION
//!     12     4  kind         u32 LE, FileKind
//!     16     8  payload_len  u64 LE, bytes of payload after the header
//!     24     8  checksum     u64 LE, xxh3-64 of the payload (pages-chunked:
//!                            of its chunks' xxh3-64s, see `crate::pagesum`)
//! ```
//!
//! Metadata files (inventory, core) put the payload right after these 32
//! bytes. Page files pad the header with zeros to [`PAGES_HEADER_LEN`] bytes
//! so page data stays page-aligned in the file.

use std::path::Path;

use crate::error::{ImageError, Result};
pub use crate::file_kind::{FileKind, FORMAT_VERSION};

/// First eight bytes of every image file.
pub const MAGIC: [u8; 8] = *b"STASISIM";

/// Length of the header of a metadata file; the payload follows it.
pub const HEADER_LEN: usize = 32;

/// Length of the header of a page file (the 32-byte header padded with
/// zeros to one page), so the page data that follows is page-aligned.
pub const PAGES_HEADER_LEN: u64 = 4096;

/// Largest payload a metadata file may declare (256 MiB). Checked before
/// anything is allocated.
pub const MAX_METADATA_LEN: u64 = 256 << 20;

/// File name of the inventory inside an image directory.
pub const INVENTORY_FILE: &str = "inventory.img";

/// The decoded fixed part of a file header, before any check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The magic bytes as stored.
    pub magic: [u8; 8],
    /// Format version as stored.
    pub version: u32,
    /// Raw kind as stored (see [`FileKind::from_u32`]).
    pub kind: u32,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// xxh3-64 of the payload.
    pub checksum: u64,
}

impl Header {
    /// A header of the current version for a payload of `kind`.
    pub fn new(kind: FileKind, payload_len: u64, checksum: u64) -> Header {
        Header {
            magic: MAGIC,
            version: FORMAT_VERSION,
            kind: kind.as_u32(),
            payload_len,
            checksum,
        }
    }

    /// The 32 header bytes, little endian.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&self.magic);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.kind.to_le_bytes());
        out[16..24].copy_from_slice(&self.payload_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// Decodes the 32 header bytes without checking them.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Header {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[0..8]);
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i..i + 4]);
            u32::from_le_bytes(b)
        };
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Header {
            magic,
            version: u32_at(8),
            kind: u32_at(12),
            payload_len: u64_at(16),
            checksum: u64_at(24),
        }
    }

    /// Checks magic, version and kind, in that order.
    pub fn check(&self, path: &Path, expected: FileKind) -> Result<()> {
        self.check_magic_version(path)?;
        if self.kind != expected.as_u32() {
            return Err(ImageError::WrongKind {
                path: path.to_path_buf(),
                expected,
                found: self.kind,
            });
        }
        Ok(())
    }

    /// Checks magic and version only.
    pub fn check_magic_version(&self, path: &Path) -> Result<()> {
        if self.magic != MAGIC {
            return Err(ImageError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        if self.version != FORMAT_VERSION {
            return Err(ImageError::UnsupportedVersion {
                path: path.to_path_buf(),
                version: self.version,
            });
        }
        Ok(())
    }
}

/// xxh3-64 of `data`, the checksum stored in headers.
pub fn checksum(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// A whole metadata file: header followed by `payload`.
pub fn encode_metadata(kind: FileKind, payload: &[u8]) -> Vec<u8> {
    let len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
    let header = Header::new(kind, len, checksum(payload));
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header::new(FileKind::Core, 1234, 0xdead_beef_0011_2233);
        let bytes = h.encode();
        assert_eq!(&bytes[0..8], b"STASISIM");
        assert_eq!(Header::decode(&bytes), h);
        assert!(h.check(Path::new("x"), FileKind::Core).is_ok());
        assert!(h.check(Path::new("x"), FileKind::Pages).is_err());
    }
}
