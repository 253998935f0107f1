//! timerfd: clock, time left, interval and unread expirations, from fdinfo.

use super::Fd;
use crate::Result;
use stasis_image::FdKind;

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
    Ok(Some(FdKind::TimerFd {
        clock_id: info
            .get("clockid")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(bad)?,
        flags: d.flags(),
        value_ns: pair("it_value").ok_or_else(bad)?,
        interval_ns: pair("it_interval").ok_or_else(bad)?,
        ticks: info
            .get("ticks")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    }))
}
