//! The stasis image directory: file format, metadata model, validation.
//!
//! An image is a directory holding `inventory.img`, one `core-PID.img` and
//! one `pages-PID.img` per process. Every file starts with a header (magic,
//! format version, kind, payload length, xxh3-64 checksum); metadata files
//! carry JSON, page files raw page-aligned memory. [`ImageWriter`] writes an
//! image atomically, [`ImageDir`] reads one without trusting it. The format
//! is specified in docs/image-format.md.
#![forbid(unsafe_code)]

pub mod cgroupns;
pub mod cgroups;
pub mod chain;
mod checker;
pub mod compress;
pub mod dedup;
pub mod error;
mod file_kind;
pub mod format;
pub mod hex_bytes;
pub mod kinds;
pub mod limits;
pub mod locks;
pub mod mntns;
pub mod model;
pub mod netns;
pub mod pagesum;
pub mod procattrs;
pub mod progress;
pub mod reader;
pub mod seccomp;
pub mod show;
pub mod sysvipc;
pub mod timens;
pub mod userns;
pub mod uts;
pub mod validate;
pub mod writer;

pub use cgroupns::CgroupNs;
pub use cgroups::{CgroupDir, CgroupPath, CgroupSet, Cgroups};
pub use error::{ImageError, Result};
pub use format::{
    encode_metadata, FileKind, Header, FORMAT_VERSION, HEADER_LEN, INVENTORY_FILE, MAGIC,
    MAX_METADATA_LEN, PAGES_HEADER_LEN,
};
pub use kinds::fanotify::{FanotifyMark, FanotifyTarget};
pub use kinds::inotify::InotifyWatch;
pub use kinds::pty::{PtyState, Termios};
pub use kinds::saved::{Extent, FileTimes, Owner};
pub use locks::{FdOwner, FileLock, LockKind};
pub use mntns::{Mount, MountHow, MountNs, TmpfsEntry};
pub use model::*;
pub use netns::NetNs;
pub use procattrs::{ProcAttrs, SchedAttrs, ThreadAttrs, VMA_ADVICE};
pub use reader::{parse_inventory, parse_process, Image, ImageDir};
pub use seccomp::SeccompFilter;
pub use show::{show_dir, show_file};
pub use sysvipc::IpcNs;
pub use timens::TimeNs;
pub use userns::UserNs;
pub use uts::UtsNs;
pub use validate::{
    is_plain_name, pages_len, saved_span, validate_inventory, validate_process,
    validate_saved_refs, MAX_SAVED_FILE, USER_SPACE_END,
};
pub use writer::{
    core_file_name, pages_file_name, ImageWriter, PageHasher, PageReserve, PageSink, PagesWriter,
};

#[cfg(test)]
mod tests;
