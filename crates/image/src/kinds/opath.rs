//! `O_PATH` descriptors: a path, and flags that must include O_PATH.

use crate::checker::Checker;
use crate::error::Result;
use crate::limits::MAX_PATH_LEN;

const O_PATH: u32 = 0o10_000_000;

pub(super) fn validate(c: &Checker<'_>, field: &str, path: &str, flags: u32) -> Result<()> {
    c.string(&format!("{field}.path"), path, MAX_PATH_LEN)?;
    c.ensure(flags & O_PATH != 0, || {
        format!("{field}.flags: {flags:#o} without O_PATH")
    })
}
