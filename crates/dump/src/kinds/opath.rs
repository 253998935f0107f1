//! `O_PATH` descriptors: a reference to a name, nothing opened; recorded
//! by path with their flags and the object's mode.

use super::Fd;
use crate::Result;
use stasis_image::FdKind;
use std::os::unix::fs::MetadataExt;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if d.flags() & libc::O_PATH as u32 == 0 {
        return Ok(None);
    }
    if !d.link.starts_with('/') || d.deleted() {
        return Err(d.refuse("O_PATH descriptor of an unnamed or deleted object"));
    }
    let mode = d.stat()?.map(|m| m.mode()).unwrap_or_default();
    Ok(Some(FdKind::Path {
        path: d.link.to_string(),
        flags: d.flags(),
        mode,
    }))
}
