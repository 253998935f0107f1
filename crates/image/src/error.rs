//! The error type of the image crate. Every variant names the file.

use std::io;
use std::path::{Path, PathBuf};

use crate::file_kind::{FileKind, FORMAT_VERSION};

/// Everything that can go wrong reading, writing or checking an image.
/// Messages are lowercase and start with `image file PATH:`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A system call on `path` failed; `op` names it ("open", "read",
    /// "write", "rename", "fsync", ...).
    #[error("image file {}: {op}: {error}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        error: io::Error,
    },
    /// The file (or directory) does not exist.
    #[error("image file {}: missing", path.display())]
    Missing { path: PathBuf },
    /// The file does not start with [`crate::MAGIC`].
    #[error("image file {}: bad magic", path.display())]
    BadMagic { path: PathBuf },
    /// The header's format version is not [`FORMAT_VERSION`].
    #[error(
        "image file {}: format version {version} not supported (this stasis reads {FORMAT_VERSION})",
        path.display()
    )]
    UnsupportedVersion { path: PathBuf, version: u32 },
    /// The header's kind is not the one expected for this file.
    #[error("image file {}: wrong file kind (expected {expected}, found {found})", path.display())]
    WrongKind {
        path: PathBuf,
        expected: FileKind,
        found: u32,
    },
    /// The file is shorter than its header or than the payload it declares.
    #[error("image file {}: truncated: header says {expected} payload bytes, file has {actual}", path.display())]
    Truncated {
        path: PathBuf,
        /// Payload bytes the header declares (0 when the header itself is cut).
        expected: u64,
        /// Payload bytes actually present (file size minus header).
        actual: u64,
    },
    /// The file is shorter than its fixed header.
    #[error("image file {}: truncated: {actual} bytes, shorter than the {needed}-byte header", path.display())]
    TruncatedHeader {
        path: PathBuf,
        needed: u64,
        actual: u64,
    },
    /// The file holds more bytes than its header declares.
    #[error("image file {}: trailing data: header says {expected} payload bytes, file has {actual}", path.display())]
    TrailingData {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// The declared payload is larger than the cap for this kind of file.
    #[error("image file {}: too large ({len} bytes, cap {cap})", path.display())]
    TooLarge { path: PathBuf, len: u64, cap: u64 },
    /// The payload's xxh3-64 does not match the header.
    #[error("image file {}: checksum mismatch (stored {stored:#018x}, computed {computed:#018x})", path.display())]
    ChecksumMismatch {
        path: PathBuf,
        stored: u64,
        computed: u64,
    },
    /// The payload is not valid JSON for the expected type.
    #[error("image file {}: decode: {error}", path.display())]
    Decode {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// Serialising a structure failed.
    #[error("image file {}: encode: {error}", path.display())]
    Encode {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// The content decoded but breaks a rule of the format; `what` names
    /// the field.
    #[error("image file {}: invalid: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

/// Result with an [`ImageError`].
pub type Result<T> = std::result::Result<T, ImageError>;

impl ImageError {
    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            ImageError::Io { path, .. }
            | ImageError::Missing { path }
            | ImageError::BadMagic { path }
            | ImageError::UnsupportedVersion { path, .. }
            | ImageError::WrongKind { path, .. }
            | ImageError::Truncated { path, .. }
            | ImageError::TruncatedHeader { path, .. }
            | ImageError::TrailingData { path, .. }
            | ImageError::TooLarge { path, .. }
            | ImageError::ChecksumMismatch { path, .. }
            | ImageError::Decode { path, .. }
            | ImageError::Encode { path, .. }
            | ImageError::Invalid { path, .. } => path,
        }
    }

    /// An [`ImageError::Io`] for `op` on `path`; a missing file becomes
    /// [`ImageError::Missing`].
    pub(crate) fn io(path: &Path, op: &'static str, error: io::Error) -> ImageError {
        if error.kind() == io::ErrorKind::NotFound && op == "open" {
            return ImageError::Missing {
                path: path.to_path_buf(),
            };
        }
        ImageError::Io {
            path: path.to_path_buf(),
            op,
            error,
        }
    }

    /// An [`ImageError::Invalid`].
    pub(crate) fn invalid(path: &Path, what: impl Into<String>) -> ImageError {
        ImageError::Invalid {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}
