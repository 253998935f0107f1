//! Regular files and directories by path, identified by the object the
//! process really has (stat through /proc), with size and mtime so the
//! restore can tell whether the file changed. [`file_id`] serves the exe
//! and mapped files too.

use super::Fd;
use crate::{DumpError, Result, Stage};
use stasis_image::{FdKind, FileId};
use std::os::unix::fs::MetadataExt;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let Some(md) = d.stat()?.cloned() else {
        return Ok(None);
    };
    let ft = md.file_type();
    if !(ft.is_file() || ft.is_dir()) {
        return Ok(None);
    }
    // (A deleted regular file or directory is a saved file, asked for
    // before this.)
    let file = id_of(d.link, &md);
    Ok(Some(FdKind::Regular {
        file,
        flags: d.flags(),
        pos: d.info.pos,
    }))
}

fn id_of(path: &str, md: &std::fs::Metadata) -> FileId {
    FileId {
        path: path.to_string(),
        size: md.size(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        dev: md.dev(),
        ino: md.ino(),
        mode: md.mode(),
    }
}

/// FileId of whatever `stat_path` (e.g. /proc/PID/map_files/..., /proc/PID/exe) resolves to.
pub(crate) fn file_id(
    pid: u32,
    stage: Stage,
    display_path: &str,
    stat_path: &str,
) -> Result<FileId> {
    let md = std::fs::metadata(stat_path).map_err(|source| DumpError::Io {
        pid,
        stage,
        what: format!("stat {display_path}"),
        source,
    })?;
    Ok(id_of(display_path, &md))
}
