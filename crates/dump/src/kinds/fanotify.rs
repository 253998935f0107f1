//! fanotify groups: the group's flags and event flags from its fdinfo
//! (`fanotify flags:%x event-flags:%x`), each inode mark from its line
//! (`fanotify ino:%lx sdev:%x mflags:%x mask:%x ignored_mask:%x
//! fhandle-bytes:%x fhandle-type:%x f_handle:%02x...`), saved with the
//! file handle of the marked object and the mount point of its
//! filesystem; mount marks (`fanotify mnt_id:`) and filesystem marks
//! (`fanotify sdev:`) with the mount point of that mount or filesystem.
//! Refused by name: groups of a permission class (their pending
//! responses cannot be saved), and a group with events waiting to be read.

use super::Fd;
use crate::{At, Result, Stage};
use stasis_image::{FanotifyMark, FanotifyTarget, FdKind};
use std::collections::HashMap;

/// FAN_CLASS_CONTENT | FAN_CLASS_PRE_CONTENT.
const PERMISSION_CLASSES: u32 = 0x4 | 0x8;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if d.link != "anon_inode:[fanotify]" {
        return Ok(None);
    }
    let mut group = None;
    let mut marks = Vec::new();
    for (k, v) in &d.info.extra {
        let Some(first) = k.strip_prefix("fanotify ") else {
            continue;
        };
        let text = format!("{first}:{v}");
        let f = fields(&text).ok_or_else(|| d.refuse(&format!("fdinfo line {k}:{v}")))?;
        let hex = |name: &str| f.get(name).and_then(|x| u64::from_str_radix(x, 16).ok());
        let line = || d.refuse(&format!("fdinfo line {k}:{v}"));
        if first == "flags" {
            group = Some((
                hex("flags").ok_or_else(line)? as u32,
                hex("event-flags").ok_or_else(line)? as u32,
            ));
        } else if first == "ino" {
            let sdev = hex("sdev").ok_or_else(line)?;
            let handle = f
                .get("f_handle")
                .and_then(|h| {
                    (0..h.len() / 2)
                        .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()
                })
                .unwrap_or_default();
            let ino = hex("ino").ok_or_else(line)?;
            if handle.is_empty() {
                return Err(d.refuse(&format!(
                    "fanotify mark on inode {ino}: the kernel gives no file handle for it"
                )));
            }
            let mount = super::inotify::mount_point(d.pid, sdev)?.ok_or_else(|| {
                d.refuse(&format!(
                    "fanotify mark on inode {ino}: no mount of device {sdev:#x}"
                ))
            })?;
            let handle_type = f
                .get("fhandle-type")
                .and_then(|x| i32::from_str_radix(x, 16).ok())
                .ok_or_else(line)?;
            let path = super::inotify::object_path(d.pid, &mount, handle_type, &handle);
            marks.push(FanotifyMark {
                target: FanotifyTarget::Inode,
                mflags: hex("mflags").ok_or_else(line)? as u32,
                mask: hex("mask").ok_or_else(line)?,
                ignored_mask: hex("ignored_mask").ok_or_else(line)?,
                ino,
                mount,
                handle_type,
                handle,
                path,
            });
        } else if first == "mnt_id" || first == "sdev" {
            let (target, mount) = if first == "mnt_id" {
                let id = hex("mnt_id").ok_or_else(line)?;
                let mounts = stasis_proc::read_mountinfo(d.pid).at(d.pid, Stage::Check)?;
                let m = mounts.into_iter().find(|m| u64::from(m.mount_id) == id);
                (FanotifyTarget::Mount, m.map(|m| m.mount_point))
            } else {
                let sdev = hex("sdev").ok_or_else(line)?;
                let m = super::inotify::mount_point(d.pid, sdev)?;
                (FanotifyTarget::Filesystem, m)
            };
            let mount = mount.ok_or_else(|| {
                d.refuse(&format!("fanotify {k}:{v}: not a mount the process sees"))
            })?;
            marks.push(FanotifyMark {
                target,
                mflags: hex("mflags").ok_or_else(line)? as u32,
                mask: hex("mask").ok_or_else(line)?,
                ignored_mask: hex("ignored_mask").ok_or_else(line)?,
                ino: 0,
                mount,
                handle_type: 0,
                handle: Vec::new(),
                path: None,
            });
        }
    }
    let (init_flags, event_flags) =
        group.ok_or_else(|| d.refuse("a fanotify group without its flags in fdinfo"))?;
    if init_flags & PERMISSION_CLASSES != 0 {
        return Err(d.refuse(&format!(
            "a fanotify group of a permission class (flags {init_flags:#x}): permission events and their pending responses are not restored"
        )));
    }
    if queued(d)? != 0 {
        return Err(d.refuse("a fanotify group with unread events (not supported yet)"));
    }
    Ok(Some(FdKind::Fanotify {
        flags: d.flags(),
        init_flags,
        event_flags,
        marks,
    }))
}

/// Bytes of events waiting in the group, asked of a duplicate.
fn queued(d: &Fd<'_>) -> Result<u32> {
    let dup = d.dup()?;
    stasis_sys::inotify::queued_bytes(&dup).at(d.pid, Stage::Check)
}

/// `key:value` tokens of an fdinfo line.
fn fields(line: &str) -> Option<HashMap<&str, &str>> {
    line.split_whitespace().map(|t| t.split_once(':')).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_of_a_mark_line() {
        let f = super::fields(
            "ino:98c095 sdev:fe00000 mflags:0 mask:28 ignored_mask:1 fhandle-bytes:8 fhandle-type:1 f_handle:95c09800559801c6",
        )
        .expect("fields");
        assert_eq!(f["mask"], "28");
        assert_eq!(f["f_handle"], "95c09800559801c6");
        assert!(super::fields("ino 12").is_none());
    }
}
