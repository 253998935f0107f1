//! signalfd: its signal mask, from fdinfo.

use super::Fd;
use crate::Result;
use stasis_image::FdKind;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if d.link != "anon_inode:[signalfd]" {
        return Ok(None);
    }
    let mask = d
        .info
        .get("sigmask")
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| d.refuse("unexpected fdinfo"))?;
    Ok(Some(FdKind::SignalFd {
        mask,
        flags: d.flags(),
    }))
}
