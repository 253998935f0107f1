//! Character devices (/dev/null, /dev/zero, ...) and terminals. A terminal
//! is only in an image taken with `--shell-job`; restored with
//! `--shell-job` it becomes the restorer's own terminal.

use super::{Cx, Opened};
use crate::Result;

/// Is this a terminal device (pty slave, virtual console, /dev/tty, console)?
pub(crate) fn is_tty(rdev: u64) -> bool {
    matches!(libc::major(rdev), 4 | 5 | 136..=143)
}

pub(super) fn open(
    o: &mut Opened,
    cx: &Cx<'_>,
    path: &str,
    flags: u32,
    rdev: u64,
) -> Result<usize> {
    let path = match &o.shell_tty {
        Some(tty) if is_tty(rdev) => tty.clone(),
        _ => path.to_string(),
    };
    super::regular::open_path(o, cx, &path, flags as i32, 0)
}

/// The terminal on our stdin, stdout or stderr, by path.
pub(crate) fn own_tty() -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    (0..3).find_map(|fd| {
        let md = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
        (md.file_type().is_char_device() && is_tty(md.rdev()))
            .then(|| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
            .flatten()
            .and_then(|p| p.to_str().map(str::to_string))
    })
}
