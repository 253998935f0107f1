//! Named pipes (FIFOs): the restorer opens the path read-write and
//! non-blocking (refusing a path that is no longer a FIFO), sets the
//! capacity and writes the waiting bytes; then each end is opened with its
//! flags (with O_NONBLOCK, removed afterwards where the end had none, so no
//! open waits for a peer). The holder is closed once the tree is forked.

use super::{fill_pipe, waiting_bytes, Cx, Opened, OPEN_FLAGS_DROP};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::FdKind;
use stasis_sys::util;

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, path: &str, id: u64, flags: u32) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    holder(o, cx, id, path)?;
    let flags = flags as i32 & !OPEN_FLAGS_DROP;
    let fd = crate::mntns::open(path, flags | libc::O_NONBLOCK).at(pid, st)?;
    if flags & libc::O_NONBLOCK == 0 {
        let keep = flags & (libc::O_APPEND | libc::O_DIRECT);
        util::set_status_flags(&fd, keep).at(pid, st)?;
    }
    Ok(o.push(fd))
}

/// The FIFO `path` (id `id`) held open read-write, filled with its saved
/// bytes: opening either end then never blocks.
fn holder(o: &mut Opened, cx: &Cx<'_>, id: u64, path: &str) -> Result<usize> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(i) = o.object("fifo", id) {
        return Ok(i);
    }
    let (pid, st) = (cx.pid, Stage::Fork);
    let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    if !is_fifo {
        return Err(RestoreError::Refused {
            pid,
            stage: st,
            what: format!("{path} is no longer a FIFO"),
        });
    }
    let (data, capacity) = waiting_bytes(cx.procs, |k| match k {
        FdKind::Fifo {
            id: i,
            data,
            capacity,
            ..
        } if *i == id => Some((data.as_slice(), *capacity)),
        _ => None,
    });
    let fd = crate::mntns::open(path, libc::O_RDWR | libc::O_NONBLOCK).at(pid, st)?;
    fill_pipe(pid, &fd, data, capacity, &format!("fifo {path}"))?;
    let i = o.push(fd);
    o.set_object("fifo", id, i);
    Ok(i)
}
