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

const NS_GET_USERNS: libc::c_ulong = 0xb7 << 8 | 0x1;

/// The inode of the user namespace that owns the namespace at `path`
/// (`/proc/PID/ns/NAME`; ioctl NS_GET_USERNS), or None on error (EPERM:
/// an owner outside ours).
pub fn owner_ino(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path).ok()?;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new
    // descriptor or -1.
    let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    owner.metadata().ok().map(|m| m.ino())
}

/// A child of ours in a user namespace of its own: see [`spawn_holder`].
pub struct Holder {
    pub pid: Pid,
    pidfd: OwnedFd,
    ask: OwnedFd,
    answer: OwnedFd,
}

/// Filesystems a [`Holder`] opens a context for ([`Holder::fsopen`]).
const HOLDER_FS: [&std::ffi::CStr; 2] = [c"tmpfs", c"devpts"];

impl Holder {
    /// A filesystem context (fsopen) of `fs` ("tmpfs" or "devpts") opened
    /// by the holder, so the superblock made from it belongs to the
    /// holder's user namespace (as one mounted from inside does), taken
    /// over with pidfd_getfd. The caller configures and creates it.
    pub fn fsopen(&self, fs: &str) -> Result<OwnedFd> {
        let k = HOLDER_FS
            .iter()
            .position(|f| f.to_bytes() == fs.as_bytes())
            .ok_or_else(|| {
                SysError::other("holder fsopen", Some(self.pid), "not tmpfs or devpts")
            })?;
        let req = [k as u8];
        // SAFETY: one byte from a local to our pipe.
        if unsafe { libc::write(self.ask.as_raw_fd(), req.as_ptr().cast(), 1) } != 1 {
            return Err(SysError::new(
                "ask the holder",
                Some(self.pid),
                crate::last_errno(),
            ));
        }
        let mut b = [0u8; 4];
        // SAFETY: four bytes into a local from our pipe.
        let n = unsafe { libc::read(self.answer.as_raw_fd(), b.as_mut_ptr().cast(), 4) };
        let fd = i32::from_le_bytes(b);
        if n != 4 || fd < 0 {
            return Err(SysError::new(
                format!("fsopen {fs} in the user namespace's holder"),
                Some(self.pid),
                if n == 4 { -fd } else { libc::EIO },
            ));
        }
        // SAFETY: integer-only pidfd_getfd on the holder's descriptor.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0) };
        if r < 0 {
            return Err(SysError::new(
                "pidfd_getfd",
                Some(self.pid),
                crate::last_errno(),
            ));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
    }
}

/// A child of ours in a new user namespace with `maps`, which has
/// unshared the namespaces in `flags` (CLONE_NEW*: they belong to its
/// user namespace) and then serves [`Holder::fsopen`], dying with its
/// parent. The restorer takes the namespaces from /proc/PID/ns and kills
/// it ([`crate::spawn::kill_and_reap`]) once the tree holds them.
pub fn spawn_holder(maps: &IdMaps<'_>, flags: i32) -> Result<Holder> {
    let (go_r, go_w) = crate::util::pipe()?;
    let (done_r, done_w) = crate::util::pipe()?;
    let (gr, dw) = (go_r.as_raw_fd(), done_w.as_raw_fd());
    // SAFETY: the child makes raw syscalls only, on descriptors opened
    // before the fork.
    match unsafe { crate::clone::fork_with_pid(&[], libc::CLONE_NEWUSER as u64)? } {
        crate::clone::Forked::Child => {
            // SAFETY: raw syscalls with integer arguments or local buffers.
            unsafe {
                libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let mut b = 0u8;
                if libc::syscall(libc::SYS_read, gr, &mut b as *mut u8, 1usize) != 1 {
                    crate::clone::exit_now(1);
                }
                let code: u8 = if libc::syscall(libc::SYS_unshare, flags) == 0 {
                    0
                } else {
                    1
                };
                libc::syscall(libc::SYS_write, dw, &code as *const u8, 1usize);
                while libc::syscall(libc::SYS_read, gr, &mut b as *mut u8, 1usize) == 1 {
                    let fd = match HOLDER_FS.get(b as usize) {
                        Some(fs) => {
                            let r = libc::syscall(libc::SYS_fsopen, fs.as_ptr(), 0u32);
                            if r < 0 {
                                -*libc::__errno_location()
                            } else {
                                r as i32
                            }
                        }
                        None => -libc::EINVAL,
                    };
                    libc::syscall(libc::SYS_write, dw, &fd as *const i32, 4usize);
                }
                crate::clone::exit_now(0)
            }
        }
        crate::clone::Forked::Parent(p) => {
            drop(go_r);
            drop(done_w);
            let fail = |what: String, e: i32| {
                crate::spawn::kill_and_reap(p);
                SysError::new(what, Some(p), e)
            };
            if let Err(e) = write_maps(p, maps) {
                crate::spawn::kill_and_reap(p);
                return Err(e);
            }
            let mut b = [0u8; 1];
            // SAFETY: one byte from a local buffer to our pipe.
            let w = unsafe { libc::write(go_w.as_raw_fd(), b"g".as_ptr().cast(), 1) };
            if w != 1 {
                return Err(fail(
                    "wake the user namespace holder".into(),
                    crate::last_errno(),
                ));
            }
            // SAFETY: one byte into a local buffer from our pipe.
            let r = unsafe { libc::read(done_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            if r != 1 || b[0] != 0 {
                return Err(fail(
                    format!("unshare({flags:#x}) in the new user namespace"),
                    libc::EPERM,
                ));
            }
            // SAFETY: pidfd_open of our own child (not reaped: it is ours).
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.0, 0) };
            if fd < 0 {
                return Err(fail("pidfd_open".into(), crate::last_errno()));
            }
            Ok(Holder {
                pid: p,
                // SAFETY: a fresh descriptor nothing else owns.
                pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
                ask: go_w,
                answer: done_r,
            })
        }
    }
}

/// Runs `f` in a short-lived thread whose filesystem ids are `ids` (raw
/// setfsuid/setfsgid: that thread only), its capabilities kept (the
/// kernel drops the file ones from the effective set when the fsuid
/// leaves 0; they are raised again from the permitted set). A filesystem
/// whose superblock belongs to a user namespace takes new files only from
/// an fsuid mapped there, and a new devpts's ptmx belongs to the fsuid of
/// its creator.
pub fn with_fs_ids<T: Send>(ids: (u32, u32), f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            let mut hdr = Header {
                version: 0x2008_0522,
                pid: 0,
            };
            let mut data = [0u32; 6];
            // SAFETY: integer-only credential syscalls on this thread;
            // capget/capset on a local header and two data structs.
            unsafe {
                libc::syscall(libc::SYS_setfsgid, ids.1);
                libc::syscall(libc::SYS_setfsuid, ids.0);
                if libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 != ids.0 {
                    return Err(SysError::new("setfsuid", None, libc::EPERM));
                }
                crate::check(
                    libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()),
                    "capget",
                    None,
                )?;
                // effective = permitted, for both 32-bit halves.
                data[0] = data[1];
                data[3] = data[4];
                crate::check(
                    libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()),
                    "capset",
                    None,
                )?;
            }
            f()
        })
        .join()
        .map_err(|_| SysError::other("filesystem ids thread", None, "panicked"))?
    })
}
