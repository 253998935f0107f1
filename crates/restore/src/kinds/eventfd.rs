//! eventfd: created with its semaphore mode, its counter written in.

use super::{Cx, Opened};
use crate::{At, Result, Stage};
use stasis_sys::util;

pub(super) fn open(
    o: &mut Opened,
    cx: &Cx<'_>,
    count: u64,
    semaphore: bool,
    flags: u32,
) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let mut f = (flags as i32) & libc::O_NONBLOCK;
    if semaphore {
        f |= libc::EFD_SEMAPHORE;
    }
    // The counter may exceed eventfd()'s 32-bit start value.
    let fd = util::eventfd(0, f).at(pid, st)?;
    if count != 0 {
        util::eventfd_add(&fd, count).at(pid, st)?;
    }
    Ok(o.push(fd))
}
