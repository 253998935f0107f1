//! fanotify groups: made by the restorer with the saved flags and event
//! flags, each inode mark added again on the object its file handle names
//! (`open_by_handle_at` on the mount point of its filesystem, then
//! `fanotify_mark` through the object's /proc/self/fd link): its mask
//! first, then its ignore mask with the same kind of ignore flags. The
//! dump refused queued events, so the queue is empty as it was.

use super::{Cx, Opened};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::FanotifyMark;
use stasis_sys::{fanotify, inotify};
use std::os::fd::AsRawFd;

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;
const FAN_NONBLOCK: u32 = 0x2;

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
        let mnt = crate::mntns::open(&m.mount, libc::O_RDONLY | libc::O_DIRECTORY).at(pid, st)?;
        let obj = inotify::open_by_handle(&mnt, m.handle_type, &m.handle, libc::O_PATH).map_err(
            |source| RestoreError::Sys {
                pid,
                stage: st,
                source: stasis_sys::SysError {
                    op: format!(
                        "fd {}: fanotify mark (inode {}): {}",
                        cx.fd, m.ino, source.op
                    ),
                    ..source
                },
            },
        )?;
        let path = format!("/proc/self/fd/{}", obj.as_raw_fd());
        let evictable = m.mflags & FAN_MARK_EVICTABLE;
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
    Ok(o.push(g))
}
