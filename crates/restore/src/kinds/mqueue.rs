//! A POSIX message queue descriptor: a stand-in (/dev/null) before the
//! queues exist, replaced at the same number (dup3) by the queue opened by
//! name once the restorer's thread is in the tree's new IPC namespace and
//! the queues are made (sysvipc.rs), before the fork.

use super::{Cx, Opened};
use crate::{At, Result, Stage};

/// A descriptor to open later: index into `owned`, queue name, flags.
pub(crate) struct Later {
    index: usize,
    name: String,
    flags: u32,
    pid: u32,
    fd: i32,
}

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, name: &str, flags: u32) -> Result<usize> {
    let stand_in = stasis_sys::util::open("/dev/null", libc::O_RDONLY | libc::O_CLOEXEC)
        .at(cx.pid, Stage::Fork)?;
    let index = o.push(stand_in);
    o.mq_later.push(Later {
        index,
        name: name.to_string(),
        flags,
        pid: cx.pid,
        fd: cx.fd,
    });
    Ok(index)
}

/// In the tree's IPC namespace, once its queues exist: every queue
/// descriptor opened by name with its access mode and O_NONBLOCK.
pub(crate) fn open_later(o: &mut Opened, own_ns: bool) -> Result<()> {
    for l in std::mem::take(&mut o.mq_later) {
        if !own_ns {
            return Err(crate::RestoreError::Refused {
                pid: l.pid,
                stage: Stage::Preflight,
                what: format!(
                    "fd {}: POSIX message queue /{} without an IPC namespace of the tree's own in the image",
                    l.fd, l.name
                ),
            });
        }
        stasis_sys::mqueue::open_onto(&l.name, l.flags as i32, &o.owned[l.index])
            .map_err(|e| stasis_sys::SysError {
                op: format!("fd {}: {}", l.fd, e.op),
                ..e
            })
            .at(l.pid, Stage::Fork)?;
    }
    Ok(())
}
