//! signalfd: created with its signal mask.

use super::{Cx, Opened};
use crate::{At, Result, Stage};
use stasis_sys::util;

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, mask: u64, flags: u32) -> Result<usize> {
    let keep = (flags as i32) & libc::O_NONBLOCK;
    Ok(o.push(util::signalfd(mask, keep).at(cx.pid, Stage::Fork)?))
}
