//! Character devices by path: the stateless memory devices, and a
//! terminal only with `--shell-job`; any other device is refused by name.
//! Pseudo-terminals are claimed before, by `pty`.

use super::Fd;
use crate::Result;
use stasis_image::FdKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Is this a terminal device (pty slave, virtual console, /dev/tty, console)?
fn is_tty(rdev: u64) -> bool {
    matches!(libc::major(rdev), 4 | 5 | 136..=143)
}

/// Devices without driver state worth keeping: /dev/null, zero, full,
/// random, urandom (reopened by path, the same device again).
fn stateless(rdev: u64) -> bool {
    libc::major(rdev) == 1 && matches!(libc::minor(rdev), 3 | 5 | 7 | 8 | 9)
}

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let rdev = match d.stat()? {
        Some(md) if md.file_type().is_char_device() => md.rdev(),
        _ => return Ok(None),
    };
    if is_tty(rdev) && !d.shell_job {
        return Err(d.refuse("a terminal; use --shell-job (-j) to dump a process attached to one"));
    }
    // A shell job's terminal descriptors are all opened on the restorer's
    // one terminal: a process naming two is refused in kinds::pty::finish.
    if libc::major(rdev) == 10 && libc::minor(rdev) == 200 {
        let iff = d.info.get("iff").unwrap_or("none attached");
        return Err(d.refuse(&format!(
            "a tun/tap queue (/dev/net/tun, device {iff}): not restored (nor is its device)"
        )));
    }
    if !is_tty(rdev) && !stateless(rdev) {
        return Err(d.refuse(&format!(
            "character device {}:{}: its driver state cannot be saved (only /dev/null, zero, \
             full, random, urandom and terminals are supported)",
            libc::major(rdev),
            libc::minor(rdev)
        )));
    }
    Ok(Some(FdKind::CharDevice {
        path: d.link.to_string(),
        rdev,
        flags: d.flags(),
    }))
}
