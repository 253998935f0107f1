//! eventfd: its counter and semaphore mode, from fdinfo.

use super::Fd;
use crate::Result;
use stasis_image::FdKind;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if d.link != "anon_inode:[eventfd]" {
        return Ok(None);
    }
    let count = d
        .info
        .get("eventfd-count")
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    let Some(count) = count else {
        return Err(d.refuse("no eventfd-count in fdinfo"));
    };
    Ok(Some(FdKind::EventFd {
        count,
        semaphore: d.info.get("eventfd-semaphore").map(str::trim) == Some("1"),
        flags: d.flags(),
    }))
}
