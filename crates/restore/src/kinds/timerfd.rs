//! timerfd: created on its clock and armed for the time it had left.

use super::{Cx, Opened};
use crate::{At, Result, Stage};
use stasis_sys::util;

pub(super) fn open(
    o: &mut Opened,
    cx: &Cx<'_>,
    clock_id: i32,
    flags: u32,
    value_ns: u64,
    interval_ns: u64,
    ticks: u64,
) -> Result<usize> {
    // Unread expirations cannot be set: a due timer fires again at once.
    let value = if value_ns == 0 && ticks > 0 {
        1
    } else {
        value_ns
    };
    let keep = (flags as i32) & libc::O_NONBLOCK;
    let fd = util::timerfd(clock_id, keep, value, interval_ns).at(cx.pid, Stage::Fork)?;
    Ok(o.push(fd))
}
