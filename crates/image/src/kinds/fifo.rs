//! FIFOs: a path, and a buffer like a pipe's.

use crate::checker::Checker;
use crate::error::Result;
use crate::limits::MAX_PATH_LEN;

pub(super) fn validate(
    c: &Checker<'_>,
    field: &str,
    path: &str,
    data: &[u8],
    capacity: u32,
) -> Result<()> {
    c.string(&format!("{field}.path"), path, MAX_PATH_LEN)?;
    super::pipe::buffer(c, field, "fifo", data, capacity)
}
