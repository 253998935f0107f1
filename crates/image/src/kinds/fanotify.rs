//! fanotify groups: the image type of a group's inode marks and their
//! rules. A mark is saved as the kernel's file handle of the marked
//! object (with the mount point of its filesystem, for
//! `open_by_handle_at`), like an inotify watch.

use serde::{Deserialize, Serialize};

use crate::checker::Checker;
use crate::error::Result;
use crate::kinds::inotify::MAX_HANDLE_LEN;
use crate::limits::{MAX_FDS, MAX_PATH_LEN};

/// What a mark is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FanotifyTarget {
    /// An inode (`fanotify ino:...`): `ino`, `handle` name it.
    #[default]
    Inode,
    /// The mount at `mount` (`fanotify mnt_id:...`, FAN_MARK_MOUNT).
    Mount,
    /// The filesystem mounted at `mount` (`fanotify sdev:...`,
    /// FAN_MARK_FILESYSTEM).
    Filesystem,
}

/// One mark of a fanotify group, from its fdinfo line
/// (`fanotify ino:... sdev:... mflags:... mask:... ignored_mask:...
/// fhandle-bytes:... fhandle-type:... f_handle:...`, or
/// `fanotify mnt_id:...`, `fanotify sdev:...` without a handle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanotifyMark {
    #[serde(default)]
    pub target: FanotifyTarget,
    /// Mark flags as fanotify_mark(2) takes them (FAN_MARK_EVICTABLE,
    /// FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_IGNORE).
    pub mflags: u32,
    /// Events and flags (`FAN_*`) of the mark.
    pub mask: u64,
    /// The ignore mask.
    pub ignored_mask: u64,
    /// Inode of the marked object (for `show` and checks; 0 for a mount
    /// or filesystem mark).
    pub ino: u64,
    /// Mount point (as the process saw it) of the object's filesystem, or
    /// of the marked mount or filesystem.
    pub mount: String,
    pub handle_type: i32,
    #[serde(with = "crate::hex_bytes")]
    pub handle: Vec<u8>,
    /// The marked inode's path (as the process saw it), as for an inotify
    /// watch (`InotifyWatch::path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

pub(super) fn validate(c: &Checker<'_>, field: &str, marks: &[FanotifyMark]) -> Result<()> {
    c.count(&format!("{field}.marks"), marks.len(), MAX_FDS)?;
    for (k, m) in marks.iter().enumerate() {
        let f = format!("{field}.marks[{k}]");
        c.string(&format!("{f}.mount"), &m.mount, MAX_PATH_LEN)?;
        crate::kinds::inotify::validate_path(c, &format!("{f}.path"), m.path.as_deref())?;
        c.ensure(m.mount.starts_with('/'), || {
            format!("{f}.mount: {:?} is not absolute", m.mount)
        })?;
        let inode = m.target == FanotifyTarget::Inode;
        c.ensure(
            (!m.handle.is_empty() || !inode) && m.handle.len() <= MAX_HANDLE_LEN,
            || {
                format!(
                    "{f}.handle: {} bytes, 1 to {MAX_HANDLE_LEN}",
                    m.handle.len()
                )
            },
        )?;
        c.ensure(m.mask != 0 || m.ignored_mask != 0, || {
            format!("{f}: neither a mask nor an ignore mask")
        })?;
    }
    Ok(())
}
