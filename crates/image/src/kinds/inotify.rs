//! inotify instances: the image type of a watch and its rules. A watch is
//! saved as the kernel's file handle of the watched object (with the mount
//! point of its filesystem, for `open_by_handle_at`), so the restore finds
//! the very object even if its path changed.

use serde::{Deserialize, Serialize};

use crate::checker::Checker;
use crate::error::Result;
use crate::limits::{MAX_FDS, MAX_PATH_LEN};

/// Largest file handle the kernel gives (MAX_HANDLE_SZ).
pub const MAX_HANDLE_LEN: usize = 128;

/// One watch of an inotify instance, from its fdinfo line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    /// The watch descriptor the process knows it by.
    pub wd: i32,
    /// Events and flags (`IN_*`) as the kernel reports them.
    pub mask: u32,
    /// Inode of the watched object (for `show` and checks).
    pub ino: u64,
    /// Mount point (as the process saw it) of the object's filesystem.
    pub mount: String,
    /// The file handle: its type and bytes.
    pub handle_type: i32,
    #[serde(with = "crate::hex_bytes")]
    pub handle: Vec<u8>,
    /// The watched object's path (as the process saw it), found at the
    /// dump; a restore opens it when the handle is stale (a tmpfs of the
    /// tree's own, made anew). Absent: no name was found (older images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Rules of a saved object path (`path` of a watch or mark).
pub(super) fn validate_path(c: &Checker<'_>, field: &str, path: Option<&str>) -> Result<()> {
    let Some(p) = path else { return Ok(()) };
    c.string(field, p, MAX_PATH_LEN)?;
    c.ensure(p.starts_with('/'), || {
        format!("{field}: {p:?} is not absolute")
    })
}

pub(super) fn validate(c: &Checker<'_>, field: &str, watches: &[InotifyWatch]) -> Result<()> {
    c.count(&format!("{field}.watches"), watches.len(), MAX_FDS)?;
    for (k, w) in watches.iter().enumerate() {
        let f = format!("{field}.watches[{k}]");
        c.ensure(w.wd > 0, || format!("{f}.wd: {} is not positive", w.wd))?;
        c.ensure(k == 0 || watches[k - 1].wd < w.wd, || {
            format!("{f}.wd: {} not above the one before", w.wd)
        })?;
        c.string(&format!("{f}.mount"), &w.mount, MAX_PATH_LEN)?;
        validate_path(c, &format!("{f}.path"), w.path.as_deref())?;
        c.ensure(w.mount.starts_with('/'), || {
            format!("{f}.mount: {:?} is not absolute", w.mount)
        })?;
        c.ensure(
            !w.handle.is_empty() && w.handle.len() <= MAX_HANDLE_LEN,
            || {
                format!(
                    "{f}.handle: {} bytes, 1 to {MAX_HANDLE_LEN}",
                    w.handle.len()
                )
            },
        )?;
    }
    Ok(())
}
