//! A POSIX message queue descriptor (a file of the mqueue file system,
//! from mq_open): its name and flags. The queue itself, with its
//! messages, is saved with the IPC namespace (sysvipc.rs), which also
//! checks that it is a queue of the tree's own namespace.

use super::Fd;
use crate::Result;
use stasis_image::FdKind;
use std::os::unix::fs::MetadataExt;

const MQUEUE_MAGIC: i64 = 0x1980_0202;

pub(super) fn is_mqueue(d: &Fd<'_>) -> bool {
    let path = format!("/proc/{}/fd/{}", d.pid, d.fd);
    d.link.starts_with('/') && stasis_sys::fileops::fs_type(&path).ok() == Some(MQUEUE_MAGIC)
}

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if !is_mqueue(d) {
        return Ok(None);
    }
    let md = super::stat(d.pid, d.fd, d.link)?;
    if md.nlink() == 0 || d.deleted() {
        return Err(
            d.refuse("a POSIX message queue removed with mq_unlink while open (not supported)")
        );
    }
    let name = d.link.trim_start_matches('/');
    if !stasis_image::sysvipc::mq_name_ok(name) {
        return Err(d.refuse("a file of an mqueue file system that is no queue at its root"));
    }
    Ok(Some(FdKind::Mqueue {
        name: name.to_string(),
        dev: md.dev(),
        flags: d.flags(),
    }))
}
