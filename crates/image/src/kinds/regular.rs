//! Regular files and directories opened by path.

use crate::checker::Checker;
use crate::error::Result;
use crate::model::FileId;

pub(super) fn validate(c: &Checker<'_>, field: &str, file: &FileId) -> Result<()> {
    c.file_id(&format!("{field}.file"), file)
}
