//! Regular files and directories: opened again by path with their flags,
//! at their offset. (The preflight has checked they did not change.)

use super::{Cx, Opened, OPEN_FLAGS_DROP};
use crate::{At, RestoreError, Result, Stage};
use stasis_sys::util;

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, path: &str, flags: u32, pos: u64) -> Result<usize> {
    open_path(o, cx, path, flags as i32, pos)
}

/// Opens `path` with the saved flags (less the creation flags) and seeks
/// to `pos`; errors name the descriptor. Shared by the kinds opened by path.
pub(super) fn open_path(
    o: &mut Opened,
    cx: &Cx<'_>,
    path: &str,
    flags: i32,
    pos: u64,
) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let fd =
        crate::mntns::open(path, flags & !OPEN_FLAGS_DROP).map_err(|source| RestoreError::Sys {
            pid,
            stage: st,
            source: stasis_sys::SysError {
                op: format!("fd {}: {}", cx.fd, source.op),
                ..source
            },
        })?;
    if pos != 0 {
        util::seek_to(&fd, pos, path).at(pid, st)?;
    }
    Ok(o.push(fd))
}
