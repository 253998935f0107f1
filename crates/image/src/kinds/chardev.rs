//! Character devices (and terminals with --shell-job) opened by path.

use crate::checker::Checker;
use crate::error::Result;
use crate::limits::MAX_PATH_LEN;

pub(super) fn validate(c: &Checker<'_>, field: &str, path: &str) -> Result<()> {
    c.string(&format!("{field}.path"), path, MAX_PATH_LEN)
}
