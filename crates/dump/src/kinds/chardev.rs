//! Character devices by path; a terminal only with `--shell-job`.

use super::Fd;
use crate::Result;
use stasis_image::FdKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Is this a terminal device (pty slave, virtual console, /dev/tty, console)?
fn is_tty(rdev: u64) -> bool {
    matches!(libc::major(rdev), 4 | 5 | 136..=143)
}

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let rdev = match d.stat()? {
        Some(md) if md.file_type().is_char_device() => md.rdev(),
        _ => return Ok(None),
    };
    if is_tty(rdev) && !d.shell_job {
        return Err(d.refuse("a terminal; use --shell-job (-j) to dump a process attached to one"));
    }
    Ok(Some(FdKind::CharDevice {
        path: d.link.to_string(),
        rdev,
        flags: d.flags(),
    }))
}
