//! Files and directories under `/proc/PID` of a process of the image
//! (`FdKind::ProcFile`): reopened by the process itself once the tree
//! exists, so the path must stay under the process it names.

use crate::checker::Checker;
use crate::error::Result;
use crate::limits::MAX_PATH_LEN;

pub(super) fn validate(c: &Checker<'_>, field: &str, path: &str, pid: u32) -> Result<()> {
    c.string(&format!("{field}.path"), path, MAX_PATH_LEN)?;
    c.ensure(path.starts_with(&format!("/proc/{pid}")), || {
        format!("{field}.path: {path:?} is not under /proc/{pid}")
    })
}
