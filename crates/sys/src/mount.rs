//! Mount namespaces and the new mount API (fsopen/fsconfig/fsmount,
//! open_tree, move_mount, mount_setattr), openat2 inside a root, and the
//! few file calls a tmpfs restore needs that std lacks.

use crate::util::cstring;
use crate::{check, last_errno, Result, SysError};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const OPEN_TREE_CLONE: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
const MOVE_MOUNT_SET_GROUP: u32 = 0x100;
const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSMOUNT_CLOEXEC: u32 = 1;
const FSOPEN_CLOEXEC: u32 = 1;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;
/// The atime mode field of MOUNT_ATTR_* (relatime is 0 in it).
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
/// Every per-mount flag stasis sets (ro, nosuid, nodev, noexec, atime
/// mode, nodiratime, nosymfollow).
pub const MOUNT_ATTRS: u64 = 0x0020_00bf;

fn owned(ret: libc::c_long, op: &str) -> Result<OwnedFd> {
    let fd = check(ret, op, None)?;
    // SAFETY: a fresh descriptor from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// unshare(CLONE_NEWNS): the caller (single-threaded) gets a private copy
/// of its mount namespace; then every mount in it is made private, so
/// nothing done here propagates back.
pub fn unshare_private() -> Result<()> {
    // SAFETY: integer-only syscall on the calling process.
    let r = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS) };
    check(r, "unshare(CLONE_NEWNS)", None)?;
    make_rprivate()
}

/// The calling thread leaves our fs_struct (unshare(CLONE_FS), as
/// setns(mnt) requires) and enters the mount namespace `ns` made for the
/// tree elsewhere (a copy of ours, by the holder of the tree's user
/// namespace: it belongs to that one); then every mount in it is made
/// private, as [`unshare_private`] does.
pub fn enter_private(ns: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: integer-only syscall on the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_FS) };
    check(r, "unshare(CLONE_FS)", None)?;
    setns_mnt(ns)?;
    make_rprivate()
}

fn make_rprivate() -> Result<()> {
    // SAFETY: mount(2) with a static path and NULL source/type/data.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    check(r.into(), "mount --make-rprivate /", None).map(drop)
}

/// The caller's mount namespace, as a descriptor for [`setns_mnt`].
pub fn own_mntns() -> Result<OwnedFd> {
    crate::util::open("/proc/self/ns/mnt", libc::O_RDONLY)
}

/// setns into the mount namespace `ns` (root and cwd become its root).
///
/// The calling thread first leaves a shared fs_struct (unshare(CLONE_FS),
/// a no-op when it is already its own): setns(mnt) refuses with EINVAL a
/// thread whose fs_struct has another user, and a thread we just joined
/// may still hold ours for a moment (a thread's exit wakes its joiner
/// before it lets go of its fs_struct).
pub fn setns_mnt(ns: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: integer-only syscall on the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_FS) };
    check(r, "unshare(CLONE_FS)", None)?;
    // SAFETY: setns on a descriptor we hold; integer arguments.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) };
    check(r.into(), "setns(mnt)", None).map(drop)
}

/// fchdir(dir).
pub fn fchdir(dir: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: fchdir on a descriptor we hold.
    check(
        unsafe { libc::fchdir(dir.as_raw_fd()) }.into(),
        "fchdir",
        None,
    )
    .map(drop)
}

/// Runs `f` on a new thread of ours whose root directory (and working
/// directory) is `root`: the thread unshares its fs information
/// (CLONE_FS) before chroot, so the rest of the process keeps its own.
/// Absolute paths in `f` name what a process rooted at `root` sees,
/// including names that take the path as given (bind of a unix socket).
pub fn on_thread_in_root<T: Send>(root: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: integer-only unshare of this thread's fs information.
            let r = unsafe { libc::unshare(libc::CLONE_FS) };
            check(r.into(), "unshare(CLONE_FS)", None)?;
            fchdir(root)?;
            // SAFETY: a NUL-terminated path; changes this thread's root only.
            let r = unsafe { libc::chroot(c".".as_ptr()) };
            check(r.into(), "chroot", None)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(crate::SysError::other("thread in a root", None, "panicked")))
    })
}

/// openat2(root, path, RESOLVE_IN_ROOT): `path` as a process whose root
/// directory is `root` would see it (absolute symlinks stay inside).
pub fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: i32) -> Result<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let c = cstring(path, "openat2")?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u32 as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: c and how live for the call; the size is the struct's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    owned(r, &format!("open {path} in the restored mount tree"))
}

/// open_tree(OPEN_TREE_CLONE): a detached copy of the mount at `path`
/// (without the mounts below it).
pub fn clone_mount(path: &str) -> Result<OwnedFd> {
    let c = cstring(path, "open_tree")?;
    // SAFETY: c lives for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
        )
    };
    owned(r, &format!("open_tree(OPEN_TREE_CLONE) {path}"))
}

/// open_tree(OPEN_TREE_CLONE) of the mount at `path` (relative to the
/// root of process `pid`) in that process's mount namespace, without the
/// mounts below it: what they cover can be read through it (the
/// directories they are mounted on). A short-lived thread leaves our
/// fs_struct (unshare(CLONE_FS)), joins the namespace and clones there (a
/// clone of another namespace's mount is refused from outside it).
pub fn clone_mount_of(pid: crate::Pid, path: &str) -> Result<OwnedFd> {
    let root = crate::util::open(&format!("/proc/{}/root", pid.0), libc::O_PATH)?;
    let ns = crate::util::open(&format!("/proc/{}/ns/mnt", pid.0), libc::O_RDONLY)?;
    let rel = format!(".{path}");
    let c = cstring(&rel, "open_tree")?;
    let path = path.to_string();
    std::thread::spawn(move || -> Result<OwnedFd> {
        // SAFETY: unshare and setns change this short-lived thread only;
        // open_tree takes descriptors we hold and c, alive for the call.
        let r = unsafe {
            check(
                libc::syscall(libc::SYS_unshare, libc::CLONE_FS),
                "unshare(CLONE_FS)",
                Some(pid),
            )?;
            check(
                libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS).into(),
                "setns(mnt)",
                Some(pid),
            )?;
            libc::syscall(
                libc::SYS_open_tree,
                root.as_raw_fd(),
                c.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
            )
        };
        owned(
            r,
            &format!("open_tree(OPEN_TREE_CLONE) {path} of pid {}", pid.0),
        )
    })
    .join()
    .map_err(|_| SysError::other("mount clone thread", Some(pid), "panicked"))?
}

/// A new, detached mount of a new `fs_type` filesystem from `source` with
/// superblock options `options` (`key=value`, or a flag `key`) and the
/// per-mount attributes `attrs`.
pub fn new_fs(fs_type: &str, source: &str, options: &[&str], attrs: u64) -> Result<OwnedFd> {
    let t = cstring(fs_type, "fsopen")?;
    // SAFETY: t lives for the call.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), FSOPEN_CLOEXEC) };
    let fs = owned(r, &format!("fsopen {fs_type}"))?;
    new_fs_from(fs, fs_type, source, options, attrs)
}

/// [`new_fs`] from a filesystem context `fs` opened elsewhere (by the
/// holder of a user namespace: [`crate::userns::Holder::fsopen`]).
pub fn new_fs_from(
    fs: OwnedFd,
    fs_type: &str,
    source: &str,
    options: &[&str],
    attrs: u64,
) -> Result<OwnedFd> {
    let set = |cmd: u32, key: &str, value: Option<&str>| -> Result<()> {
        let k = cstring(key, "fsconfig")?;
        let v = value.map(|v| cstring(v, "fsconfig")).transpose()?;
        let vp = v.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: k and v live for the call.
        let r =
            unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, k.as_ptr(), vp, 0) };
        check(r, &format!("fsconfig {fs_type} {key}"), None).map(drop)
    };
    set(FSCONFIG_SET_STRING, "source", Some(source))?;
    for o in options {
        match o.split_once('=') {
            Some((k, v)) => set(FSCONFIG_SET_STRING, k, Some(v))?,
            None => set(FSCONFIG_SET_FLAG, o, None)?,
        }
    }
    // SAFETY: integer-only fsconfig command on our descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            0usize,
            0usize,
            0,
        )
    };
    check(r, &format!("fsconfig {fs_type} create"), None)?;
    // SAFETY: integer-only fsmount on our descriptor.
    let r = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    owned(r, &format!("fsmount {fs_type}"))
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn setattr(mnt: BorrowedFd<'_>, a: &MountAttr, what: &str) -> Result<()> {
    // SAFETY: "" with AT_EMPTY_PATH names the mount of our descriptor; a
    // lives for the call and the size is the struct's.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r, what, None).map(drop)
}

/// Sets exactly the per-mount flags `attrs` (MOUNT_ATTR_*) on a mount.
pub fn set_attrs(mnt: BorrowedFd<'_>, attrs: u64) -> Result<()> {
    let a = MountAttr {
        attr_set: attrs,
        attr_clr: (MOUNT_ATTRS | MOUNT_ATTR_ATIME_MASK) & !attrs | MOUNT_ATTR_ATIME_MASK,
        propagation: 0,
        userns_fd: 0,
    };
    setattr(mnt, &a, &format!("mount_setattr {attrs:#x}"))
}

/// Makes a mount shared (`MS_SHARED`) or unbindable (`MS_UNBINDABLE`).
pub fn set_propagation(mnt: BorrowedFd<'_>, shared: bool) -> Result<()> {
    let p = if shared {
        libc::MS_SHARED
    } else {
        libc::MS_UNBINDABLE
    };
    let a = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: p,
        userns_fd: 0,
    };
    setattr(mnt, &a, "mount_setattr propagation")
}

fn move_mount(from: BorrowedFd<'_>, to: BorrowedFd<'_>, flags: u32, what: &str) -> Result<()> {
    // SAFETY: empty paths with the EMPTY_PATH flags name our descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            flags | MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(r, what, None).map(drop)
}

/// Attaches the detached mount `mnt` on the directory `target` (an O_PATH
/// descriptor).
pub fn attach(mnt: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<()> {
    move_mount(mnt, target, 0, "move_mount")
}

/// Puts mount `to` into the peer group of mount `from`
/// (MOVE_MOUNT_SET_GROUP).
pub fn join_peer_group(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<()> {
    move_mount(
        from,
        to,
        MOVE_MOUNT_SET_GROUP,
        "move_mount(MOVE_MOUNT_SET_GROUP)",
    )
}

/// umount2(path, MNT_DETACH).
pub fn detach(path: &str) -> Result<()> {
    let c = cstring(path, "umount2")?;
    // SAFETY: c lives for the call.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    check(r.into(), &format!("umount2 {path}"), None).map(drop)
}

/// mknod(path, mode, rdev): a device node or fifo.
pub fn mknod(path: &str, mode: u32, rdev: u64) -> Result<()> {
    let c = cstring(path, "mknod")?;
    // SAFETY: c lives for the call.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, rdev) };
    check(r.into(), &format!("mknod {path}"), None).map(drop)
}

/// Access and modification times of `path` itself (a symlink is not
/// followed), as (seconds, nanoseconds).
pub fn set_times_nofollow(path: &str, atime: (i64, i64), mtime: (i64, i64)) -> Result<()> {
    let c = cstring(path, "utimensat")?;
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: c and ts live for the call.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(r.into(), &format!("utimensat {path}"), None).map(drop)
}

/// Length of the extended attribute name list of `path` itself (0: none).
pub fn xattr_names_len(path: &str) -> Result<usize> {
    let c = cstring(path, "llistxattr")?;
    // SAFETY: size 0 asks only for the length; no buffer is written.
    let r = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if r < 0 {
        return Err(SysError::new(
            format!("llistxattr {path}"),
            None,
            last_errno(),
        ));
    }
    Ok(r as usize)
}

/// In a freshly forked child of the restore (raw syscalls only): enter the
/// mount namespace `ns`, make `late` in the directory `root` (a mount of
/// it; see [`make_late_mounts`]), then make `root` its root with
/// pivot_root, detaching the old root. The late mounts come before the
/// detach: in a mount namespace owned by another user namespace than the
/// initial one, a new proc or sysfs is refused unless one is already
/// fully visible in the namespace (the kernel's mount_too_revealing), and
/// the old root holds the restorer's. Returns 0, or the failure code of
/// [`crate::spawn::tree_failure`] (12, 15).
pub fn enter_and_pivot(ns: i32, root: i32, late: &[LateMount]) -> i64 {
    // SAFETY: integer-only syscalls and static NUL-terminated strings.
    unsafe {
        if libc::syscall(libc::SYS_setns, ns, libc::CLONE_NEWNS) < 0
            || libc::syscall(libc::SYS_fchdir, root) < 0
        {
            return 12;
        }
        if make_late_mounts(late) >= 0 {
            return 15;
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) < 0
            || libc::syscall(libc::SYS_umount2, c".".as_ptr(), libc::MNT_DETACH) < 0
            || libc::syscall(libc::SYS_chdir, c"/".as_ptr()) < 0
        {
            return 12;
        }
    }
    0
}

/// An absolute path of the new tree as a path relative to its root (the
/// working directory before the pivot): "/" is ".", "/a/b" is "a/b".
fn relative(path: &std::ffi::CStr) -> *const libc::c_char {
    match path.to_bytes() {
        b"/" | b"" => c".".as_ptr(),
        // SAFETY: one byte past the leading '/' is still inside the string
        // (at worst its NUL).
        [b'/', ..] => unsafe { path.as_ptr().add(1) },
        _ => path.as_ptr(),
    }
}

/// A mount the first process of a restored tree makes itself, after it
/// entered the tree's namespaces and pivoted (proc, sysfs, mqueue and
/// cgroup filesystems belong to the PID, network, IPC or cgroup namespace
/// of the process that creates them), with every mount stacked on one.
/// Paths are absolute in the new root (made before the pivot, relative to
/// the new root, the working directory then); strings are prepared before
/// the fork, so the child only makes raw calls.
#[derive(Debug, Clone)]
pub enum LateMount {
    /// Attach our detached mount `fd` (attributes already set) at `at`.
    Attach { fd: i32, at: std::ffi::CString },
    /// A new filesystem: fsopen(`fs`), its source and superblock options
    /// (`key=value` or a flag `key`), fsmount with `attrs`, attached at `at`.
    Fresh {
        fs: std::ffi::CString,
        source: std::ffi::CString,
        options: Vec<(std::ffi::CString, Option<std::ffi::CString>)>,
        attrs: u64,
        at: std::ffi::CString,
    },
    /// A bind of `from` (a path of the new tree) with `attrs`, at `at`.
    Bind {
        from: std::ffi::CString,
        attrs: u64,
        at: std::ffi::CString,
    },
}

impl LateMount {
    /// The mount point, for errors.
    pub fn at(&self) -> &std::ffi::CStr {
        match self {
            LateMount::Attach { at, .. }
            | LateMount::Fresh { at, .. }
            | LateMount::Bind { at, .. } => at,
        }
    }
}

/// A new, detached bind of the file or directory our descriptor `fd`
/// (O_PATH) names, without the mounts below it.
pub fn clone_mount_at(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    // SAFETY: "" with AT_EMPTY_PATH names our descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | libc::AT_EMPTY_PATH as u32,
        )
    };
    owned(
        r,
        "open_tree(OPEN_TREE_CLONE) of a path in the restored tree",
    )
}

/// In a freshly forked child of the restore (raw syscalls only, on data
/// prepared before the fork): makes `mounts` in order. Returns the index
/// of the first that failed, or -1 when all were made.
pub fn make_late_mounts(mounts: &[LateMount]) -> i64 {
    for (i, m) in mounts.iter().enumerate() {
        // SAFETY: raw syscalls on prepared NUL-terminated strings and
        // descriptors; every descriptor opened here is closed here.
        let ok = unsafe { late_mount(m) };
        if !ok {
            return i as i64;
        }
    }
    -1
}

/// # Safety
/// Only raw syscalls: callable right after a fork.
unsafe fn late_mount(m: &LateMount) -> bool {
    let attach = |fd: i64, at: &std::ffi::CStr| -> bool {
        // SAFETY: fd is a detached mount of ours, at a prepared string.
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd as i32,
                c"".as_ptr(),
                libc::AT_FDCWD,
                relative(at),
                MOVE_MOUNT_F_EMPTY_PATH,
            ) == 0
        }
    };
    // SAFETY: see the function's contract.
    unsafe {
        match m {
            LateMount::Attach { fd, at } => attach(i64::from(*fd), at),
            LateMount::Fresh {
                fs,
                source,
                options,
                attrs,
                at,
            } => {
                let f = libc::syscall(libc::SYS_fsopen, fs.as_ptr(), FSOPEN_CLOEXEC);
                if f < 0 {
                    return false;
                }
                let set = |cmd: u32, k: &std::ffi::CStr, v: Option<&std::ffi::CString>| {
                    let vp = v.map_or(std::ptr::null(), |v| v.as_ptr());
                    libc::syscall(libc::SYS_fsconfig, f as i32, cmd, k.as_ptr(), vp, 0) == 0
                };
                let mut ok = set(FSCONFIG_SET_STRING, c"source", Some(source));
                for (k, v) in options {
                    if !ok {
                        break;
                    }
                    let cmd = if v.is_some() {
                        FSCONFIG_SET_STRING
                    } else {
                        FSCONFIG_SET_FLAG
                    };
                    ok = set(cmd, k, v.as_ref());
                }
                ok = ok
                    && libc::syscall(
                        libc::SYS_fsconfig,
                        f as i32,
                        FSCONFIG_CMD_CREATE,
                        0usize,
                        0usize,
                        0,
                    ) == 0;
                let mnt = if ok {
                    libc::syscall(libc::SYS_fsmount, f as i32, FSMOUNT_CLOEXEC, *attrs)
                } else {
                    -1
                };
                libc::syscall(libc::SYS_close, f as i32);
                let done = mnt >= 0 && attach(mnt, at);
                if mnt >= 0 {
                    libc::syscall(libc::SYS_close, mnt as i32);
                }
                done
            }
            LateMount::Bind { from, attrs, at } => {
                let t = libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    relative(from),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
                );
                if t < 0 {
                    return false;
                }
                let a = MountAttr {
                    attr_set: *attrs,
                    attr_clr: (MOUNT_ATTRS | MOUNT_ATTR_ATIME_MASK) & !*attrs
                        | MOUNT_ATTR_ATIME_MASK,
                    propagation: 0,
                    userns_fd: 0,
                };
                let done = libc::syscall(
                    libc::SYS_mount_setattr,
                    t as i32,
                    c"".as_ptr(),
                    libc::AT_EMPTY_PATH,
                    &a as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ) == 0
                    && attach(t, at);
                libc::syscall(libc::SYS_close, t as i32);
                done
            }
        }
    }
}

/// Makes the filesystem of mount `mnt` read-only (fspick, then
/// fsconfig "ro" and FSCONFIG_CMD_RECONFIGURE): a tmpfs saved with the
/// superblock option `ro` is filled first, then made so.
pub fn reconfigure_read_only(mnt: BorrowedFd<'_>) -> Result<()> {
    const FSPICK_CLOEXEC: u32 = 1;
    const FSPICK_EMPTY_PATH: u32 = 8;
    const FSCONFIG_CMD_RECONFIGURE: u32 = 7;
    // SAFETY: "" with FSPICK_EMPTY_PATH names our descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fspick,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            FSPICK_CLOEXEC | FSPICK_EMPTY_PATH,
        )
    };
    let fs = owned(r, "fspick")?;
    // SAFETY: a static key, no value; then an integer-only command.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_FLAG,
            c"ro".as_ptr(),
            0usize,
            0,
        )
    };
    check(r, "fsconfig ro", None)?;
    // SAFETY: integer-only fsconfig command on our descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_RECONFIGURE,
            0usize,
            0usize,
            0,
        )
    };
    check(r, "fsconfig reconfigure", None).map(drop)
}
