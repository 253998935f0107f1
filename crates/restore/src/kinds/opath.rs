//! `O_PATH` descriptors: a reference to a name, opened again by path with
//! their flags (O_PATH, and O_NOFOLLOW for a symlink itself).

use super::{Cx, Opened};
use crate::Result;

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, path: &str, flags: u32) -> Result<usize> {
    super::regular::open_path(o, cx, path, flags as i32, 0)
}
