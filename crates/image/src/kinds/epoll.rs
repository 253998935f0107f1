//! epoll instances: every target is another descriptor of the process.

use crate::checker::Checker;
use crate::error::Result;
use crate::limits::MAX_FDS;
use crate::model::{EpollTarget, ProcessImage};

pub(super) fn validate(
    c: &Checker<'_>,
    field: &str,
    img: &ProcessImage,
    fd: i32,
    targets: &[EpollTarget],
) -> Result<()> {
    c.count(&format!("{field}.targets"), targets.len(), MAX_FDS)?;
    for (k, t) in targets.iter().enumerate() {
        c.ensure(img.files.iter().any(|g| g.fd == t.fd && g.fd != fd), || {
            format!(
                "{field}.targets[{k}].fd: {} is not another descriptor of the process",
                t.fd
            )
        })?;
    }
    Ok(())
}
