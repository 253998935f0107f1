//! User namespaces: the id maps of a child's new user namespace, written
//! from outside (by its parent, in the parent user namespace), and the
//! parent of a namespace (NS_GET_PARENT).

use crate::{Pid, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The maps of a user namespace as /proc/PID/{uid,gid,projid}_map show
/// them to a reader in its parent namespace ("INSIDE OUTSIDE COUNT"
/// lines), and /proc/PID/setgroups ("allow" or "deny").
#[derive(Debug, Clone, Default)]
pub struct IdMaps<'a> {
    pub uid_map: &'a str,
    pub gid_map: &'a str,
    pub projid_map: &'a str,
    pub setgroups: &'a str,
}

/// Writes the maps of the new user namespace process `pid` was created
/// in: setgroups first (the kernel refuses it once gid_map is written),
/// then uid_map, gid_map and projid_map (each can be written once; an
/// empty map is left unwritten).
pub fn write_maps(pid: Pid, maps: &IdMaps<'_>) -> Result<()> {
    let files = [
        ("setgroups", maps.setgroups),
        ("uid_map", maps.uid_map),
        ("gid_map", maps.gid_map),
        ("projid_map", maps.projid_map),
    ];
    for (name, text) in files {
        if text.trim().is_empty() {
            continue;
        }
        let path = format!("/proc/{}/{name}", pid.0);
        std::fs::write(&path, text.as_bytes()).map_err(|e| {
            SysError::new(
                format!("write {path}"),
                Some(pid),
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })?;
    }
    Ok(())
}

const NS_GET_PARENT: libc::c_ulong = 0xb7 << 8 | 0x2;

/// The inode of the parent of the user namespace `/proc/PID/ns/user` names
/// (ioctl NS_GET_PARENT), or None for the initial one (EPERM: outside
/// ours) or on error.
pub fn parent_ino(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(format!("/proc/{pid}/ns/user")).ok()?;
    // SAFETY: NS_GET_PARENT takes no argument and returns a new
    // descriptor or -1.
    let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_PARENT) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let parent = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    parent.metadata().ok().map(|m| m.ino())
}
