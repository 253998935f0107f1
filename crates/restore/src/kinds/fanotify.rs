//! fanotify groups: made by the restorer with the saved flags and event
//! flags, each inode mark added again on the object its file handle names
//! (`open_by_handle_at` on the mount point of its filesystem, or on a
//! filesystem made anew the path the dump found, then `fanotify_mark`
//! through the object's /proc/self/fd link): its mask
//! first, then its ignore mask with the same kind of ignore flags; a
//! mount or filesystem mark on the mount point it was saved with
//! (FAN_MARK_MOUNT, FAN_MARK_FILESYSTEM). The dump refused queued events:
//! what the restorer's own work queued is read away right before the
//! fork ([`drain_all`]), so the queue is empty as it was.

use super::{Cx, Opened};
use crate::{At, Result, Stage};
use stasis_image::{FanotifyMark, FanotifyTarget};
use stasis_sys::fanotify;
use std::os::fd::AsRawFd;

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;
const FAN_NONBLOCK: u32 = 0x2;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_FILESYSTEM: u32 = 0x100;

pub(super) fn open(
    o: &mut Opened,
    cx: &Cx<'_>,
    flags: u32,
    (init_flags, event_flags): (u32, u32),
    marks: &[FanotifyMark],
) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let g = fanotify::init(init_flags, event_flags).at(pid, st)?;
    for m in marks {
        let (obj, kind) = match m.target {
            FanotifyTarget::Inode => {
                let what = format!("fanotify mark (inode {})", m.ino);
                let obj = super::inotify::open_handle(
                    cx,
                    &m.mount,
                    m.handle_type,
                    &m.handle,
                    (&what, None, m.path.as_deref()),
                )?;
                (obj, 0)
            }
            FanotifyTarget::Mount | FanotifyTarget::Filesystem => {
                let obj =
                    crate::mntns::open(&m.mount, libc::O_PATH | libc::O_DIRECTORY).at(pid, st)?;
                let kind = if m.target == FanotifyTarget::Mount {
                    FAN_MARK_MOUNT
                } else {
                    FAN_MARK_FILESYSTEM
                };
                (obj, kind)
            }
        };
        let path = format!("/proc/self/fd/{}", obj.as_raw_fd());
        let evictable = m.mflags & FAN_MARK_EVICTABLE | kind;
        if m.mask != 0 {
            fanotify::mark(&g, FAN_MARK_ADD | evictable, m.mask, &path).at(pid, st)?;
        }
        if m.ignored_mask != 0 {
            let how = if m.mflags & FAN_MARK_IGNORE != 0 {
                FAN_MARK_IGNORE
            } else {
                FAN_MARK_IGNORED_MASK
            };
            let surv = m.mflags & FAN_MARK_IGNORED_SURV_MODIFY;
            fanotify::mark(
                &g,
                FAN_MARK_ADD | evictable | how | surv,
                m.ignored_mask,
                &path,
            )
            .at(pid, st)?;
        }
    }
    // The descriptor's O_NONBLOCK may have been changed after fanotify_init.
    let want = flags & libc::O_NONBLOCK as u32 != 0;
    if want != (init_flags & FAN_NONBLOCK != 0) {
        stasis_sys::util::set_status_flags(&g, flags as i32 & libc::O_NONBLOCK).at(pid, st)?;
    }
    let i = o.push(g);
    o.fanotify.push(i);
    Ok(i)
}

/// Reads away every event the restorer's own work (opening the tree's
/// files) queued in the restored groups: right before the fork.
pub(crate) fn drain_all(o: &Opened, root: u32) -> Result<()> {
    for &i in &o.fanotify {
        fanotify::drain(&o.owned[i]).at(root, Stage::Fork)?;
    }
    Ok(())
}
