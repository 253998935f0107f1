//! Small raw calls used across stasis.

use crate::{check, last_errno, Pid, Result, SysError};
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

/// Does a process or thread with this id exist (in our PID namespace)?
pub fn pid_exists(pid: Pid) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid.0, 0) };
    r == 0 || last_errno() == libc::EPERM
}

/// The state letter of `pid` in /proc/PID/stat (None: no such process).
pub fn proc_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.0)).ok()?;
    // The state follows the command name, which ends with the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Whether `pid` names a process that has not exited: it exists and is not
/// a zombie (state Z or X).
pub fn is_alive(pid: Pid) -> bool {
    !matches!(proc_state(pid), None | Some('Z' | 'X'))
}

pub fn kill(pid: Pid, sig: i32) -> Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::kill(pid.0, sig) }.into(), "kill", Some(pid)).map(drop)
}

/// tgkill(2): a signal to one thread.
pub fn tgkill(tgid: Pid, tid: Pid, sig: i32) -> Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(
        unsafe { libc::syscall(libc::SYS_tgkill, tgid.0, tid.0, sig) },
        "tgkill",
        Some(tid),
    )
    .map(drop)
}

pub fn gettid() -> Pid {
    // SAFETY: gettid cannot fail.
    Pid(unsafe { libc::syscall(libc::SYS_gettid) } as i32)
}

pub fn getpid() -> Pid {
    // SAFETY: getpid cannot fail.
    Pid(unsafe { libc::syscall(libc::SYS_getpid) } as i32)
}

/// waitpid without ptrace interpretation: returns the raw status, or None with WNOHANG and nothing to report.
pub fn waitpid(pid: Pid, flags: i32) -> Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid.0, &mut status, flags) };
        if r == -1 {
            let e = last_errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(SysError::new("waitpid", Some(pid), e));
        }
        return Ok((r != 0).then_some(status));
    }
}

/// pidfd_open(2).
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: plain syscall; on success the returned fd is ours to own.
    let fd = check(
        unsafe { libc::syscall(libc::SYS_pidfd_open, pid.0, 0) },
        "pidfd_open",
        Some(pid),
    )?;
    // SAFETY: fd was just returned by the kernel and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// pidfd_getfd(2): a duplicate of another process's descriptor.
pub fn pidfd_getfd(pidfd: &OwnedFd, pid: Pid, fd: i32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall; on success the returned fd is ours to own.
    let r = check(
        unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) },
        &format!("pidfd_getfd(fd {fd})"),
        Some(pid),
    )?;
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// sched_setaffinity for one thread (0 = caller), to a single CPU or a mask.
pub fn set_affinity(tid: Pid, cpus: &[usize]) -> Result<()> {
    // SAFETY: cpu_set_t is a plain bitmask; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET only writes inside `set`; c < CPU_SETSIZE is checked by the macro.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: set is a valid cpu_set_t of the size we pass.
    let r = unsafe { libc::sched_setaffinity(tid.0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    check(r.into(), "sched_setaffinity", Some(tid)).map(drop)
}

pub fn get_affinity(tid: Pid) -> Result<Vec<usize>> {
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid out-buffer of the size we pass.
    let r =
        unsafe { libc::sched_getaffinity(tid.0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    check(r.into(), "sched_getaffinity", Some(tid))?;
    // SAFETY: CPU_ISSET only reads `set`.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Scheduling policy and real-time priority of a task.
pub fn sched_get(pid: Pid) -> Result<(u32, u32)> {
    let policy = check(
        // SAFETY: plain syscall.
        unsafe { libc::sched_getscheduler(pid.0) }.into(),
        "sched_getscheduler",
        Some(pid),
    )?;
    let mut param = libc::sched_param { sched_priority: 0 };
    check(
        // SAFETY: param is a valid out-pointer.
        unsafe { libc::sched_getparam(pid.0, &mut param) }.into(),
        "sched_getparam",
        Some(pid),
    )?;
    Ok((policy as u32, param.sched_priority as u32))
}

/// Nice value of a task.
pub fn get_nice(pid: Pid) -> Result<i32> {
    // getpriority returns 20 - nice as a raw syscall.
    // SAFETY: plain syscall.
    let r = check(
        unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, pid.0) },
        "getpriority",
        Some(pid),
    )?;
    Ok(20 - r as i32)
}

/// setpriority(PRIO_PROCESS) of one task (0: the calling thread).
pub fn set_nice(pid: Pid, nice: i32) -> Result<()> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, pid.0, nice) };
    check(r, "setpriority", Some(pid)).map(|_| ())
}

/// hugetlbfs's statfs magic number.
pub const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The filesystem magic number (`statfs` f_type) of what `path` names
/// (through /proc links: the object itself).
pub fn fs_magic(path: &str) -> Result<i64> {
    let c = CString::new(path)
        .map_err(|_| SysError::new(format!("statfs {path}"), None, libc::EINVAL))?;
    // SAFETY: an all-zero statfs is a valid out buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a live, writable out buffer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(SysError::new(format!("statfs {path}"), None, last_errno()));
    }
    Ok(st.f_type)
}

/// uname -r.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain bytes; zeroed is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid out-buffer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::from("unknown");
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `personality(0xffffffff)` of the caller.
pub fn personality_get() -> u32 {
    // SAFETY: query form of personality(2).
    unsafe { libc::personality(0xffff_ffff) as u32 }
}

pub fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s)
        .map_err(|_| SysError::other(what, None, format!("path contains a NUL byte: {s:?}")))
}

/// Closes every descriptor of the caller from `from` upward.
pub fn close_from(from: u32) {
    // SAFETY: close_range on our own descriptor table; callers own the decision.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0) };
}

/// open(2) with raw flags; the returned descriptor is O_CLOEXEC in the caller.
pub fn open(path: &str, flags: i32) -> Result<OwnedFd> {
    let c = cstring(path, "open")?;
    // SAFETY: c is a valid NUL-terminated path; the mode is only used with O_CREAT.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(SysError::new(format!("open {path}"), None, last_errno()));
    }
    // SAFETY: fresh descriptor from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// lseek(fd, pos, SEEK_SET).
pub fn seek_to(fd: &OwnedFd, pos: u64, what: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a descriptor we own.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), pos as libc::off_t, libc::SEEK_SET) };
    check(r, &format!("lseek {what} to {pos}"), None).map(drop)
}

/// Highest descriptor number open in the caller, or -1.
pub fn max_open_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .max()
                .unwrap_or(-1)
        })
        .unwrap_or(1024)
}

/// get_robust_list(2) of another thread: (head, length).
pub fn get_robust_list(tid: Pid) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers are valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid.0,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    check(r, "get_robust_list", Some(tid))?;
    Ok((head, len as u64))
}

/// fcntl(F_DUPFD_CLOEXEC): a new descriptor of ours for the open file
/// description of our descriptor `fd` (one inherited by number).
pub fn dup_cloexec(fd: i32) -> Result<OwnedFd> {
    // SAFETY: integer-only fcntl; the kernel checks that fd is open.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    check(r.into(), &format!("duplicate descriptor {fd}"), None)?;
    // SAFETY: r is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Whether the other side of pipe end `fd` is closed everywhere: a read
/// end without writers polls POLLHUP, a write end without readers POLLERR.
pub fn pipe_peer_gone(fd: &OwnedFd) -> Result<bool> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    check(r.into(), "poll(pipe)", None)?;
    Ok(p.revents & (libc::POLLHUP | libc::POLLERR) != 0)
}

/// pipe2(O_CLOEXEC): (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid 2-int out array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(r.into(), "pipe2", None)?;
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads up to `buf.len()` bytes, waiting at most `timeout_ms` for data.
/// Returns 0 on timeout.
pub fn read_timeout(fd: &OwnedFd, buf: &mut [u8], timeout_ms: i32) -> Result<usize> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: pfd is a valid pollfd array of length 1.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r < 0 && last_errno() == libc::EINTR {
            continue;
        }
        check(r.into(), "poll", None)?;
        if r == 0 {
            return Ok(0);
        }
        break;
    }
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    check(n as libc::c_long, "read", None).map(|n| n as usize)
}

/// kcmp(KCMP_FILE): do `fd1` of `pid1` and `fd2` of `pid2` share one open
/// file description?
pub fn same_file(pid1: Pid, fd1: i32, pid2: Pid, fd2: i32) -> Result<bool> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1.0, pid2.0, KCMP_FILE, fd1, fd2) };
    check(
        r,
        &format!("kcmp(fd {fd1}, pid {pid2} fd {fd2})"),
        Some(pid1),
    )
    .map(|r| r == 0)
}

/// Kernel objects two tasks may share, compared by [`same_object`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// The address space (CLONE_VM).
    Vm = 1,
    /// The descriptor table (CLONE_FILES).
    Files = 2,
    /// cwd, root and umask (CLONE_FS).
    Fs = 3,
    /// Signal handlers (CLONE_SIGHAND).
    Sighand = 4,
    /// SysV semaphore undo lists (CLONE_SYSVSEM).
    SysvSem = 6,
}

/// kcmp(2): do tasks `a` and `b` share the object `what`?
pub fn same_object(a: Pid, b: Pid, what: Shared) -> Result<bool> {
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a.0, b.0, what as i32, 0, 0) };
    check(r, &format!("kcmp({what:?}, pid {b})"), Some(a)).map(|r| r == 0)
}

/// Capacity of a pipe (F_GETPIPE_SZ).
pub fn pipe_capacity(fd: &OwnedFd) -> Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl query on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    check(r.into(), "fcntl(F_GETPIPE_SZ)", None).map(|r| r as u32)
}

/// Sets a pipe's capacity (F_SETPIPE_SZ).
pub fn set_pipe_capacity(fd: &OwnedFd, size: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    check(r.into(), "fcntl(F_SETPIPE_SZ)", None).map(drop)
}

/// Sets a descriptor's status flags (F_SETFL: O_NONBLOCK, O_APPEND, ...).
pub fn set_status_flags(fd: &OwnedFd, flags: i32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) };
    check(r.into(), "fcntl(F_SETFL)", None).map(drop)
}

/// Copies the bytes waiting in a pipe without consuming them: tee(2) into a
/// private pipe of the same capacity, then read that. `read_end` must be a
/// read end of the pipe.
pub fn pipe_peek(read_end: &OwnedFd) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let cap = pipe_capacity(read_end)?;
    let (r, w) = pipe()?;
    set_pipe_capacity(&w, cap)?;
    // SAFETY: tee between two pipe descriptors we hold; non-blocking.
    let n = unsafe {
        libc::tee(
            read_end.as_raw_fd(),
            w.as_raw_fd(),
            cap as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        let e = last_errno();
        if e == libc::EAGAIN {
            return Ok(Vec::new()); // empty pipe
        }
        return Err(SysError::new("tee pipe contents", None, e));
    }
    let mut out = vec![0u8; n as usize];
    let mut got = 0;
    while got < out.len() {
        // SAFETY: reading into the unfilled tail of `out`.
        let k = unsafe {
            libc::read(
                r.as_raw_fd(),
                out[got..].as_mut_ptr().cast(),
                out.len() - got,
            )
        };
        if k <= 0 {
            return Err(SysError::new("read teed pipe contents", None, last_errno()));
        }
        got += k as usize;
    }
    Ok(out)
}

/// Writes all of `data` to a descriptor.
pub fn write_all(fd: &OwnedFd, data: &[u8], what: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < data.len() {
        // SAFETY: writing from the live tail of `data`.
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
            )
        };
        if n <= 0 {
            return Err(SysError::new(what, None, last_errno()));
        }
        done += n as usize;
    }
    Ok(())
}

/// The caller's securebits (`prctl(PR_GET_SECUREBITS)`).
pub fn securebits() -> Result<u32> {
    // SAFETY: integer-only prctl on the calling thread.
    let r = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0u64, 0u64, 0u64, 0u64) };
    check(r.into(), "prctl(PR_GET_SECUREBITS)", None).map(|v| v as u32)
}

/// Raises the caller's RLIMIT_NOFILE soft limit to its hard limit (a restore
/// opens every file of the process at once); returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid out-pointer for getrlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    if rl.rlim_cur < rl.rlim_max {
        let new = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: new is a valid rlimit; raising the soft limit up to the
        // hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return rl.rlim_max;
        }
    }
    rl.rlim_cur
}

/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: starts writeback of
/// `len` bytes at `off` without waiting for it, so that a later fsync finds
/// most of the data already on its way to the disk.
pub fn start_writeback(fd: std::os::fd::BorrowedFd<'_>, off: u64, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return Err(SysError::new("sync_file_range", None, libc::EINVAL));
    };
    // SAFETY: integer-only syscall on a descriptor the caller keeps open.
    let r = unsafe { libc::sync_file_range(fd.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
    check(r.into(), "sync_file_range", None).map(drop)
}

/// Bytes an unprivileged writer may still use on the filesystem of `path`
/// (statvfs(3): f_bavail blocks of f_frsize bytes).
pub fn available_bytes(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SysError::new("statvfs", None, libc::EINVAL))?;
    // SAFETY: all-zero is a valid statvfs; the kernel fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out pointer.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    check(r.into(), "statvfs", None)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The CPU the calling thread is running on (sched_getcpu(3)).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments, no memory touched.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).ok()
}

/// The calling thread and one tracee pinned to the caller's current CPU,
/// for a run of remote syscalls: a ptrace round trip costs about a third
/// as much when tracer and tracee share a CPU (no cross-CPU wake-ups).
/// [`CpuPin::release`] (or drop, for the caller only) restores the masks.
#[derive(Debug)]
pub struct CpuPin {
    original: Vec<usize>,
    tracee: Pid,
}

impl CpuPin {
    /// Pins the caller and `tracee` to the caller's current CPU. Both must
    /// have had the caller's mask (a tracee forked by the caller has).
    pub fn new(tracee: Pid) -> Result<CpuPin> {
        let original = get_affinity(Pid(0))?;
        let cpu = current_cpu()
            .filter(|c| original.contains(c))
            .ok_or_else(|| SysError::other("sched_getcpu", None, "current CPU not allowed"))?;
        set_affinity(Pid(0), &[cpu])?;
        let pin = CpuPin { original, tracee };
        set_affinity(tracee, &[cpu])?;
        Ok(pin)
    }

    /// The mask the caller had: for helper threads that should run beside
    /// the pinned pair.
    pub fn original(&self) -> &[usize] {
        &self.original
    }

    /// Gives the tracee (and the caller) the original mask back.
    pub fn release(self) -> Result<()> {
        set_affinity(self.tracee, &self.original)
        // Drop restores the caller.
    }
}

impl Drop for CpuPin {
    fn drop(&mut self) {
        let _ = set_affinity(Pid(0), &self.original);
    }
}

/// memfd_create(2): a new memory file named `name` (`flags`: MFD_*).
/// The descriptor is close-on-exec in the caller.
pub fn memfd_create(name: &str, flags: u32) -> Result<OwnedFd> {
    let c = cstring(name, "memfd_create")?;
    // SAFETY: c is a valid NUL-terminated name; integer flags.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), flags | libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SysError::new(
            format!("memfd_create {name:?}"),
            None,
            last_errno(),
        ));
    }
    // SAFETY: fresh descriptor from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fcntl(F_GET_SEALS): the seals of a memfd (EINVAL for other files).
pub fn get_seals(fd: std::os::fd::BorrowedFd<'_>) -> Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl query on a descriptor the caller holds.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    check(r.into(), "fcntl(F_GET_SEALS)", None).map(|r| r as u32)
}

/// fcntl(F_ADD_SEALS).
pub fn add_seals(fd: &OwnedFd, seals: u32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; integer argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) };
    check(r.into(), &format!("fcntl(F_ADD_SEALS, {seals:#x})"), None).map(drop)
}

/// Whether the caller is a child subreaper (PR_GET_CHILD_SUBREAPER).
pub fn is_child_subreaper() -> bool {
    let mut v: libc::c_int = 0;
    // SAFETY: v is a valid out-pointer for the int the kernel writes.
    let r = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut v as *mut libc::c_int) };
    r == 0 && v != 0
}

/// Makes the caller a child subreaper or not (PR_SET_CHILD_SUBREAPER):
/// orphaned descendants are reparented to it instead of to init.
pub fn set_child_subreaper(on: bool) -> Result<()> {
    // SAFETY: integer-only prctl on our own process.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, libc::c_ulong::from(on)) };
    check(r.into(), "prctl(PR_SET_CHILD_SUBREAPER)", None).map(drop)
}

/// The children of every thread of the caller (/proc/self/task/*/children).
pub fn own_children() -> Vec<Pid> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.filter_map(std::result::Result::ok) {
        let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(s.split_whitespace().filter_map(|p| p.parse().ok()).map(Pid));
    }
    out
}

/// eventfd(2) with `count` and `flags` (EFD_NONBLOCK, EFD_SEMAPHORE);
/// close-on-exec in the caller.
pub fn eventfd(count: u64, flags: i32) -> Result<OwnedFd> {
    let init =
        u32::try_from(count).map_err(|_| SysError::other("eventfd", None, "count above 2^32-1"))?;
    // SAFETY: plain syscall; the descriptor is ours to own.
    let fd = unsafe { libc::eventfd(init, flags | libc::EFD_CLOEXEC) };
    check(fd.into(), "eventfd", None)?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds to the eventfd's counter (a write of `n`).
pub fn eventfd_add(fd: &OwnedFd, n: u64) -> Result<()> {
    write_all(fd, &n.to_ne_bytes(), "write eventfd")
}

/// epoll_create1(EPOLL_CLOEXEC).
pub fn epoll_create() -> Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is ours to own.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    check(fd.into(), "epoll_create1", None)?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// timerfd_create(clock, flags) armed (relative) with `value_ns` left and
/// `interval_ns`; close-on-exec in the caller.
pub fn timerfd(
    clock: i32,
    flags: i32,
    settime_flags: u32,
    value_ns: u64,
    interval_ns: u64,
    ticks: u64,
) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    /// `_IOW('T', 0, u64)`: sets the count of unread expirations.
    const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
    // SAFETY: plain syscall; the descriptor is ours to own.
    let fd = unsafe { libc::timerfd_create(clock, flags | libc::TFD_CLOEXEC) };
    check(fd.into(), "timerfd_create", None)?;
    // SAFETY: fresh descriptor from the kernel.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if value_ns != 0 {
        let ts = |ns: u64| libc::timespec {
            tv_sec: (ns / 1_000_000_000) as i64,
            tv_nsec: (ns % 1_000_000_000) as i64,
        };
        let its = libc::itimerspec {
            it_interval: ts(interval_ns),
            it_value: ts(value_ns),
        };
        // SAFETY: its lives for the call; no old value wanted.
        let r = unsafe {
            libc::timerfd_settime(
                fd.as_raw_fd(),
                settime_flags as i32,
                &its,
                std::ptr::null_mut(),
            )
        };
        check(r.into(), "timerfd_settime", None)?;
    }
    if ticks != 0 {
        // SAFETY: the ioctl reads one u64 that lives for the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) };
        check(r.into(), "ioctl(TFD_IOC_SET_TICKS)", None)?;
    }
    Ok(fd)
}

/// clock_gettime(clock) in nanoseconds.
pub fn clock_now_ns(clock: i32) -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    check(r.into(), "clock_gettime", None)?;
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// signalfd(-1, mask, flags); close-on-exec in the caller.
pub fn signalfd(mask: u64, flags: i32) -> Result<OwnedFd> {
    // SAFETY: raw syscall with an 8-byte kernel sigset that lives for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            8usize,
            flags | libc::SFD_CLOEXEC,
        )
    };
    check(fd, "signalfd", None)?;
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Closes descriptor `fd` of the caller (criu's `--close FD`); false if it
/// was not open.
pub fn close_fd(fd: i32) -> bool {
    // SAFETY: closing a descriptor number the caller names; nothing in this
    // process owns it as an OwnedFd at that point (called before anything runs).
    unsafe { libc::close(fd) == 0 }
}

/// The host name and domain name in the UTS namespace of process `pid`
/// (read by a short-lived thread that joins that namespace: setns changes
/// only the calling thread's).
pub fn uts_names_of(pid: Pid) -> Result<(String, String)> {
    crate::nsenter::in_ns_of(pid, "uts", libc::CLONE_NEWUTS, move || {
        // SAFETY: an all-zero utsname is a valid out buffer.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: u is a live buffer of the right type.
        let r = unsafe { libc::uname(&mut u) };
        check(r.into(), "uname", Some(pid))?;
        let text = |f: &[libc::c_char]| {
            let b: Vec<u8> = f
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&b).into_owned()
        };
        Ok((text(&u.nodename), text(&u.domainname)))
    })?
}

/// keyctl(KEYCTL_GET_KEYRING_ID, spec, 0) for the calling thread: the
/// serial of one of its keyrings (`spec` is KEY_SPEC_*), or None if it has
/// none.
pub fn own_keyring(spec: i64) -> Option<i64> {
    // SAFETY: integer-only syscall.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, 0i64, spec, 0i64) };
    (r >= 0).then_some(r)
}

/// pidfd_send_signal(2): a signal to exactly the process `pidfd` names.
pub fn pidfd_kill(pidfd: &OwnedFd, sig: i32) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a pidfd we hold; no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(r, "pidfd_send_signal", None).map(|_| ())
}

/// Waits until every process of `pidfds` has exited (a pidfd polls
/// readable once its process is gone).
pub fn wait_all_exit(pidfds: &[OwnedFd]) -> Result<()> {
    use std::os::fd::AsFd;
    let mut left: Vec<std::os::fd::BorrowedFd<'_>> = pidfds.iter().map(|f| f.as_fd()).collect();
    while !left.is_empty() {
        let mut ready = poll_in(&left, -1)?.into_iter();
        left.retain(|_| !ready.next().unwrap_or(false));
    }
    Ok(())
}

/// poll(2) for input on `fds` (-1: wait forever); which are readable (or
/// hung up).
pub fn poll_in(fds: &[std::os::fd::BorrowedFd<'_>], timeout_ms: i32) -> Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(f),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `p` is a valid array of `p.len()` pollfd structs.
        let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = crate::last_errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(SysError::new("poll", None, e));
        }
        return Ok(p.iter().map(|x| x.revents != 0).collect());
    }
}

/// Closes every descriptor of this process but those in `keep` (for a
/// helper that must hold nothing else; call before anything owns one).
pub fn close_others(keep: &[i32]) {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in open.into_iter().filter(|f| !keep.contains(f)) {
        close_fd(fd);
    }
}

/// getpgid(2): the process group of `pid`, as our PID namespace numbers it.
pub fn getpgid(pid: Pid) -> Result<i32> {
    // SAFETY: integer argument only.
    check(unsafe { libc::getpgid(pid.0) }.into(), "getpgid", Some(pid)).map(|g| g as i32)
}

/// Every resource limit of process `pid` as (resource, soft, hard), by
/// prlimit64 without a new value: a few system calls where
/// /proc/PID/limits is a text file to open, format and parse. Needs what
/// reading needs (the same ids, or CAP_SYS_RESOURCE).
pub fn rlimits(pid: Pid) -> Result<Vec<(u32, u64, u64)>> {
    // RLIMIT_CPU (0) to RLIMIT_RTTIME (15), the lines of /proc/PID/limits.
    (0..16u32)
        .map(|res| {
            let mut old = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: no new limit; `old` is a live out-parameter of the
            // kernel's struct rlimit64.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_prlimit64,
                    pid.0,
                    res,
                    std::ptr::null::<libc::rlimit64>(),
                    &mut old as *mut libc::rlimit64,
                )
            };
            check(r, "prlimit64", Some(pid)).map(|_| (res, old.rlim_cur, old.rlim_max))
        })
        .collect()
}

/// Gives the memory malloc holds free back to the kernel (malloc_trim).
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe { libc::malloc_trim(0) };
}
