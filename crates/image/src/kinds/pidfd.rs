//! pidfds (`FdKind::Pidfd`): the process or thread they name, in the
//! image's numbering, is never 0.

use crate::checker::Checker;
use crate::error::Result;

pub(super) fn validate(c: &Checker<'_>, field: &str, pid: u32) -> Result<()> {
    c.ensure(pid > 0, || format!("{field}.pid: 0"))
}
