//! fanotify groups: made by the restorer with the saved flags and event
//! flags, each inode mark added again on the object its file handle names
//! (`open_by_handle_at` on the mount point of its filesystem, then
//! `fanotify_mark` through the object's /proc/self/fd link): its mask
//! first, then its ignore mask with the same kind of ignore flags. The
//! dump refused queued events, so the queue is empty as it was.

use super::{Cx, Opened};
use crate::{At, Result, Stage};
use stasis_image::FanotifyMark;
use stasis_sys::fanotify;
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
        let what = format!("fanotify mark (inode {})", m.ino);
        let obj = super::inotify::open_handle(cx, &m.mount, m.handle_type, &m.handle, &what)?;
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
