//! timerfd: created on its clock, armed for the time it had left (or at
//! its absolute expiry), with its settime flags and unread expirations.

use super::{Cx, Opened};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::FdKind;
use stasis_sys::util;

/// TFD_TIMER_ABSTIME.
const ABSTIME: u32 = 1;

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, kind: &FdKind) -> Result<usize> {
    let &FdKind::TimerFd {
        clock_id,
        flags,
        value_ns,
        interval_ns,
        ticks,
        settime_flags,
        expires_ns,
    } = kind
    else {
        return Err(RestoreError::Refused {
            pid: cx.pid,
            stage: Stage::Fork,
            what: "timerfd::open called for another kind of descriptor".into(),
        });
    };
    let keep = (flags as i32) & libc::O_NONBLOCK;
    // An absolute timer is armed at its absolute expiry (already past: it
    // fires at once, as it would have). Unread expirations are set as
    // they were (TFD_IOC_SET_TICKS).
    let value = if settime_flags & ABSTIME != 0 && value_ns != 0 {
        expires_ns
    } else {
        value_ns
    };
    let fd = util::timerfd(clock_id, keep, settime_flags, value, interval_ns, ticks)
        .at(cx.pid, Stage::Fork)?;
    Ok(o.push(fd))
}
