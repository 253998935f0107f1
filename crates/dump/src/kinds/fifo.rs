//! Named pipes (FIFOs) by path and inode; their waiting bytes are read
//! with `tee` through a non-blocking reader the dumper opens itself (so no
//! end needs to be readable and nothing is consumed), saved with the first
//! entry of each FIFO.

use super::Fd;
use crate::{At, Result, Stage};
use stasis_image::{FdKind, ProcessImage};
use stasis_sys::util;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let deleted = d.deleted();
    let id = match d.stat()? {
        Some(md) if md.file_type().is_fifo() && !deleted => md.ino(),
        _ => return Ok(None),
    };
    Ok(Some(FdKind::Fifo {
        path: d.link.to_string(),
        id,
        flags: d.flags(),
        data: Vec::new(),
        capacity: 0,
    }))
}

/// The waiting bytes of each FIFO, read without consuming them through a
/// reader of our own (non-blocking: it never waits for a writer).
pub(super) fn link(images: &mut [&mut ProcessImage]) -> Result<()> {
    let mut fifos = std::collections::HashSet::new();
    for img in images.iter_mut() {
        let pid = img.pid;
        for e in img.files.iter_mut() {
            let FdKind::Fifo {
                id, data, capacity, ..
            } = &mut e.kind
            else {
                continue;
            };
            if !fifos.insert(*id) {
                continue;
            }
            let src = format!("/proc/{pid}/fd/{}", e.fd);
            let r = util::open(&src, libc::O_RDONLY | libc::O_NONBLOCK).at(pid, Stage::Collect)?;
            *capacity = util::pipe_capacity(&r).at(pid, Stage::Collect)?;
            *data = util::pipe_peek(&r).at(pid, Stage::Collect)?;
        }
    }
    Ok(())
}
