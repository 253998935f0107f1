//! timerfd: clock, time left (or absolute expiry), interval, settime flags
//! and unread expirations, from fdinfo.

use super::Fd;
use crate::Result;
use stasis_image::FdKind;
use stasis_sys::util;

const TFD_TIMER_ABSTIME: u32 = 1;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if d.link != "anon_inode:[timerfd]" {
        return Ok(None);
    }
    let info = d.info;
    let bad = || d.refuse("unexpected fdinfo");
    // "it_value: (S, NS)" and "it_interval: (S, NS)": time left and interval.
    let pair = |key: &str| -> Option<u64> {
        let v = info
            .get(key)?
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .to_string();
        let (s, ns) = v.split_once(',')?;
        Some(s.trim().parse::<u64>().ok()? * 1_000_000_000 + ns.trim().parse::<u64>().ok()?)
    };
    let clock_id: i32 = info
        .get("clockid")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(bad)?;
    // "settime flags: 0%o"
    let settime_flags = info
        .get("settime flags")
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0);
    let value_ns = pair("it_value").ok_or_else(bad)?;
    // fdinfo shows the time left; an absolute timer keeps its absolute
    // expiry, on the clock it was set on.
    let expires_ns = if settime_flags & TFD_TIMER_ABSTIME != 0 && value_ns != 0 {
        util::clock_now_ns(clock_id).map_err(|e| d.refuse(&format!("clock {clock_id}: {e}")))?
            + value_ns
    } else {
        0
    };
    Ok(Some(FdKind::TimerFd {
        clock_id,
        flags: d.flags(),
        value_ns,
        interval_ns: pair("it_interval").ok_or_else(bad)?,
        ticks: info
            .get("ticks")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
        settime_flags,
        expires_ns,
    }))
}
