//! Regular files and directories opened by path.

use crate::checker::Checker;
use crate::error::Result;
use crate::limits::MAX_PATH_LEN;
use crate::model::FileId;

pub(super) fn validate(c: &Checker<'_>, field: &str, file: &FileId) -> Result<()> {
    file_id(c, &format!("{field}.file"), file)
}

/// A file named by path (also the exe and mapped files): the path's length.
pub(crate) fn file_id(c: &Checker<'_>, field: &str, f: &FileId) -> Result<()> {
    c.string(&format!("{field}.path"), &f.path, MAX_PATH_LEN)
}
