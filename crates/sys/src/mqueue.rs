//! POSIX message queues of the calling thread's IPC namespace: listed
//! through a private (detached) instance of its mqueue file system, read
//! whole (attributes, owner, notification and every message), and made
//! again.
//!
//! A queue's messages can only be read by receiving them. [`read_all`]
//! receives them in a forked child process (of the calling thread, so in
//! its IPC namespace), which sends each back at once in the same order
//! (highest priority first, in arrival order within a priority: sending
//! them back in that order rebuilds the very queue) and only then hands
//! them over through shared memory. The child does not depend on its
//! parent: a dumper killed meanwhile leaves the child to finish putting
//! them back. Only the child itself killed in that window (microseconds
//! per queue) would lose messages.

use crate::{check, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One queue as read.
#[derive(Debug, Clone)]
pub struct Queue {
    /// Its name without the leading '/'.
    pub name: String,
    /// st_dev of the namespace's mqueue file system.
    pub dev: u64,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
    pub maxmsg: i64,
    pub msgsize: i64,
    pub curmsgs: i64,
    /// The process a notification is registered for (NOTIFY_PID; 0: none),
    /// its sigev_notify (NOTIFY) and signal (SIGNO).
    pub notify_pid: i32,
    pub notify: i32,
    pub signo: i32,
    /// (priority, text) in queue order; None when not read (see
    /// [`read_all`]).
    pub messages: Option<Vec<(u32, Vec<u8>)>>,
}

/// Most bytes of messages read from one queue.
const MAX_READ: i64 = 256 << 20;

/// A detached mount of the calling thread's namespace's mqueue file system.
pub fn mount_here() -> Result<OwnedFd> {
    let err = |op: &str| SysError::new(op, None, crate::last_errno());
    // SAFETY: raw new-mount-API calls on literal strings and descriptors
    // we own; each returned descriptor is wrapped in an OwnedFd at once.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, c"mqueue".as_ptr(), 1u32);
        if fs < 0 {
            return Err(err("fsopen(mqueue)"));
        }
        let fs = OwnedFd::from_raw_fd(fs as i32);
        let r = libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            6u32, // FSCONFIG_CMD_CREATE
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        );
        if r < 0 {
            return Err(err("fsconfig(mqueue, create)"));
        }
        let mnt = libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), 1u32, 0u32);
        if mnt < 0 {
            return Err(err("fsmount(mqueue)"));
        }
        Ok(OwnedFd::from_raw_fd(mnt as i32))
    }
}

/// The names of the queues under a [`mount_here`] mount.
pub fn names(mnt: &OwnedFd) -> Result<Vec<String>> {
    let dir = format!("/proc/self/fd/{}", mnt.as_raw_fd());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| SysError::new(format!("list {dir}"), None, e.raw_os_error().unwrap_or(0)))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The attributes (flags, maxmsg, msgsize, curmsgs) of a queue descriptor.
pub fn getattr(fd: i32) -> Result<libc::mq_attr> {
    // SAFETY: an all-zero mq_attr is a valid out buffer.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: mq_getsetattr with no new attributes and a live out buffer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mq_getsetattr,
            fd,
            std::ptr::null::<libc::mq_attr>(),
            &mut a as *mut libc::mq_attr,
        )
    };
    check(r, "mq_getsetattr", None)?;
    Ok(a)
}

/// The queue file's text (QSIZE, NOTIFY, SIGNO, NOTIFY_PID) as numbers by name.
pub fn status(fd: i32) -> Result<Vec<(String, i64)>> {
    let mut buf = [0u8; 256];
    // SAFETY: reads into a live buffer.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = check(n as libc::c_long, "read the mqueue file", None)? as usize;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once(':')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn get(st: &[(String, i64)], k: &str) -> i64 {
    st.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v)
}

/// Reads every queue of the calling thread's namespace. `receive(q)`
/// decides, from a queue's attributes and notification, whether its
/// messages may be received and sent back (a registered notification
/// fires when an empty queue gets a message; a full queue may have
/// senders waiting, whose message would take the place of one received);
/// a queue it declines has `messages` None.
pub fn read_all(receive: impl Fn(&Queue) -> bool) -> Result<Vec<Queue>> {
    let mnt = mount_here()?;
    let mut out = Vec::new();
    for name in names(&mnt)? {
        let c = std::ffi::CString::new(name.clone())
            .map_err(|_| SysError::other("mqueue name", None, "has a NUL"))?;
        // SAFETY: openat on a NUL-terminated name under our mount.
        let fd = unsafe {
            libc::openat(
                mnt.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        let what = format!("open POSIX message queue /{name}");
        let fd = check(fd.into(), &what, None)? as i32;
        // SAFETY: a descriptor just opened, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero stat is a valid out buffer.
        let mut sb: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat into a live buffer.
        let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut sb) };
        check(r.into(), "fstat mqueue", None)?;
        let a = getattr(fd.as_raw_fd())?;
        let st = status(fd.as_raw_fd())?;
        let mut q = Queue {
            name,
            dev: sb.st_dev,
            uid: sb.st_uid,
            gid: sb.st_gid,
            mode: sb.st_mode & 0o7777,
            maxmsg: a.mq_maxmsg,
            msgsize: a.mq_msgsize,
            curmsgs: a.mq_curmsgs,
            notify_pid: get(&st, "NOTIFY_PID") as i32,
            notify: get(&st, "NOTIFY") as i32,
            signo: get(&st, "SIGNO") as i32,
            messages: None,
        };
        if q.curmsgs == 0 {
            q.messages = Some(Vec::new());
        } else if receive(&q) {
            q.messages = Some(receive_and_return(&fd, &q)?);
        }
        out.push(q);
    }
    Ok(out)
}

/// Header of one message in the child's shared buffer: length, priority.
const HDR: usize = 16;

/// Receives every message of the queue in a child process, which sends
/// them back in the same order before anything is handed over (see the
/// module's comment).
fn receive_and_return(fd: &OwnedFd, q: &Queue) -> Result<Vec<(u32, Vec<u8>)>> {
    let slot = q.msgsize as usize + HDR;
    let len = (q.curmsgs as usize)
        .checked_mul(slot)
        .filter(|&l| (l as i64) <= MAX_READ)
        .ok_or_else(|| {
            SysError::other(
                format!("POSIX message queue /{}", q.name),
                None,
                "holds more than 256 MiB of messages",
            )
        })?
        + HDR;
    // SAFETY: a fresh shared anonymous mapping, unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(SysError::new(
            "mmap mqueue buffer",
            None,
            crate::last_errno(),
        ));
    }
    let base = base.cast::<u8>();
    let raw = fd.as_raw_fd();
    let n = q.curmsgs as usize;
    // SAFETY: the child only makes raw system calls on the mapping and the
    // descriptor, then _exit (nothing that could take a lock another
    // thread of this process held at the fork).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: see above; every pointer is inside the mapping.
        unsafe {
            let mut got = 0usize;
            while got < n {
                let h = base.add(HDR + got * slot);
                let mut prio: u32 = 0;
                let r = libc::syscall(
                    libc::SYS_mq_timedreceive,
                    raw,
                    h.add(HDR),
                    q.msgsize as usize,
                    &mut prio as *mut u32,
                    std::ptr::null::<libc::timespec>(),
                );
                if r < 0 {
                    break;
                }
                *(h as *mut u64) = r as u64;
                *(h.add(8) as *mut u64) = u64::from(prio);
                got += 1;
            }
            let mut sent = 0usize;
            while sent < got {
                let h = base.add(HDR + sent * slot);
                let r = libc::syscall(
                    libc::SYS_mq_timedsend,
                    raw,
                    h.add(HDR),
                    *(h as *const u64) as usize,
                    *(h.add(8) as *const u64) as u32,
                    std::ptr::null::<libc::timespec>(),
                );
                if r < 0 {
                    break;
                }
                sent += 1;
            }
            *(base as *mut u64) = got as u64;
            libc::_exit(if sent == got && got == n { 0 } else { 1 });
        }
    }
    // A dumper killed here leaves the child to put every message back.
    if child > 0 {
        crate::hook::kill_point("mqueue-read");
    }
    let result = if child < 0 {
        Err(SysError::new(
            "fork (mqueue reader)",
            None,
            crate::last_errno(),
        ))
    } else {
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r < 0 {
            Err(SysError::new(
                "waitpid (mqueue reader)",
                None,
                crate::last_errno(),
            ))
        } else if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            Err(SysError::other(
                format!("POSIX message queue /{}", q.name),
                None,
                format!("the reader could not receive and send back all {n} messages (status {status:#x})"),
            ))
        } else {
            // SAFETY: the child wrote `n` slots of the mapping.
            Ok((0..n)
                .map(|i| unsafe {
                    let h = base.add(HDR + i * slot);
                    let l = (*(h as *const u64) as usize).min(q.msgsize as usize);
                    let prio = *(h.add(8) as *const u64) as u32;
                    (prio, std::slice::from_raw_parts(h.add(HDR), l).to_vec())
                })
                .collect())
        }
    };
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base.cast(), len) };
    result
}

/// Creates queue `/name` (exclusively) in the calling thread's namespace
/// with its attributes, owner and mode, and sends it `messages` in order.
pub fn create(
    name: &str,
    owner: (u32, u32, u32),
    attrs: (i64, i64),
    messages: &[(u32, &[u8])],
) -> Result<()> {
    let what = format!("POSIX message queue /{name}");
    let c = std::ffi::CString::new(name)
        .map_err(|_| SysError::other(what.clone(), None, "name has a NUL"))?;
    // SAFETY: an all-zero mq_attr, then the two fields mq_open reads.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    a.mq_maxmsg = attrs.0;
    a.mq_msgsize = attrs.1;
    // SAFETY: mq_open with a NUL-terminated name and a live attribute buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_mq_open,
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NONBLOCK | libc::O_CLOEXEC,
            owner.2 & 0o7777,
            &a as *const libc::mq_attr,
        )
    };
    let fd = check(fd, &format!("mq_open({what})"), None)? as i32;
    // SAFETY: a descriptor just opened, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    // SAFETY: integer-only calls on our descriptor.
    let r = unsafe { libc::fchown(raw, owner.0, owner.1) };
    check(r.into(), &format!("fchown {what}"), None)?;
    // SAFETY: as above.
    let r = unsafe { libc::fchmod(raw, owner.2 & 0o7777) };
    check(r.into(), &format!("fchmod {what}"), None)?;
    for (prio, text) in messages {
        // SAFETY: sends from a live slice.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mq_timedsend,
                raw,
                text.as_ptr(),
                text.len(),
                *prio,
                std::ptr::null::<libc::timespec>(),
            )
        };
        check(r, &format!("mq_timedsend to {what}"), None)?;
    }
    Ok(())
}

/// Opens the existing queue `/name` of the calling thread's namespace with
/// `flags` (access mode, O_NONBLOCK; close-on-exec) onto descriptor
/// number `at` (dup3), which the caller owns.
pub fn open_onto(name: &str, flags: i32, at: &OwnedFd) -> Result<()> {
    let what = format!("mq_open(/{name})");
    let c = std::ffi::CString::new(name)
        .map_err(|_| SysError::other(what.clone(), None, "name has a NUL"))?;
    let flags = (flags & (libc::O_ACCMODE | libc::O_NONBLOCK)) | libc::O_CLOEXEC;
    // SAFETY: mq_open of an existing queue by a NUL-terminated name.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_mq_open,
            c.as_ptr(),
            flags,
            0,
            std::ptr::null::<libc::mq_attr>(),
        )
    };
    let fd = check(fd, &what, None)? as i32;
    // SAFETY: a descriptor just opened, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: dup3 onto a descriptor the caller owns (it stays owned).
    let r = unsafe { libc::dup3(fd.as_raw_fd(), at.as_raw_fd(), libc::O_CLOEXEC) };
    check(r.into(), "dup3 (mqueue)", None).map(|_| ())
}
