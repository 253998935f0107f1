//! Pipes: the waiting bytes fit the capacity, which is capped.

use crate::checker::Checker;
use crate::error::Result;
use crate::limits::MAX_PIPE_DATA;

pub(super) fn validate(c: &Checker<'_>, field: &str, data: &[u8], capacity: u32) -> Result<()> {
    buffer(c, field, "pipe", data, capacity)
}

/// The rules of a pipe buffer (a pipe's or a FIFO's).
pub(super) fn buffer(
    c: &Checker<'_>,
    field: &str,
    what: &str,
    data: &[u8],
    capacity: u32,
) -> Result<()> {
    c.ensure(data.len() <= capacity as usize, || {
        format!(
            "{field}.data: {} bytes in a {what} of capacity {capacity}",
            data.len()
        )
    })?;
    c.ensure(capacity as usize <= MAX_PIPE_DATA, || {
        format!("{field}.capacity: {capacity}, cap {MAX_PIPE_DATA}")
    })
}
