//! The two header fields every other module names: the format version and
//! the kind of file. Kept apart from `format.rs` so that the error type can
//! name them without the header code and the error type importing each other.

use std::fmt;

/// Version of the image format this code reads and writes. Bumped on every
/// incompatible change (see docs/image-format.md).
pub const FORMAT_VERSION: u32 = 1;

/// What an image file holds, stored in the header's `kind` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum FileKind {
    /// `inventory.img`: JSON [`crate::Inventory`].
    Inventory = 1,
    /// `core-PID.img`: JSON [`crate::ProcessImage`].
    Core = 2,
    /// `pages-PID.img`: raw page data.
    Pages = 3,
    /// `pages-PID.img` compressed with zstd (see `crate::compress`).
    PagesZstd = 4,
    /// `pages-PID.img`: raw page data whose checksum is computed chunk by
    /// chunk (see `crate::pagesum`).
    PagesChunked = 5,
}

impl FileKind {
    /// The kind stored as `raw` in a header, if it is one this code knows.
    pub fn from_u32(raw: u32) -> Option<FileKind> {
        match raw {
            1 => Some(FileKind::Inventory),
            2 => Some(FileKind::Core),
            3 => Some(FileKind::Pages),
            4 => Some(FileKind::PagesZstd),
            5 => Some(FileKind::PagesChunked),
            _ => None,
        }
    }

    /// The value stored in the header.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// Lowercase name, as shown by `stasis show`.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Inventory => "inventory",
            FileKind::Core => "core",
            FileKind::Pages => "pages",
            FileKind::PagesZstd => "pages-zstd",
            FileKind::PagesChunked => "pages-chunked",
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
