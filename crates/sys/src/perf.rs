//! Counting the system calls of given numbers that a task (and the tasks
//! it creates) completes: a perf event on the `raw_syscalls:sys_exit`
//! tracepoint with a filter on the syscall number, one per thread, with
//! `inherit` set. Used to prove that no system call that could change a
//! process's mappings ran between a read of its /proc files and its freeze
//! (crates/dump/src/preread.rs).

use crate::{check, last_errno, Pid, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// PERF_TYPE_TRACEPOINT.
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `disabled` in perf_event_attr's bit field: enabled once the filter is
/// set (else the exit of perf_event_open itself could be counted).
const ATTR_DISABLED: u64 = 1 << 0;
/// `inherit`: count the tasks this one creates from now on too (their
/// counts are summed into this event).
const ATTR_INHERIT: u64 = 1 << 1;
/// PERF_FLAG_FD_CLOEXEC.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IOW('$', 6, char *)`.
const PERF_EVENT_IOC_SET_FILTER: libc::c_ulong = 0x4008_2406;
/// `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

/// perf_event_attr as of PERF_ATTR_SIZE_VER5 (112 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
}

/// The tracepoint id of `raw_syscalls:sys_exit`, read from tracefs: the
/// one mounted at /sys/kernel/tracing, else a detached mount of a new
/// tracefs (no mount is left anywhere). Cached.
pub fn sys_exit_tracepoint() -> Result<u64> {
    static ID: OnceLock<std::result::Result<u64, String>> = OnceLock::new();
    ID.get_or_init(|| {
        const REL: &str = "events/raw_syscalls/sys_exit/id";
        let text = match std::fs::read_to_string(format!("/sys/kernel/tracing/{REL}")) {
            Ok(t) => t,
            Err(_) => {
                let mnt = crate::mount::new_fs("tracefs", "tracefs", &[], 0)
                    .map_err(|e| e.to_string())?;
                let f =
                    crate::mount::open_in_root(std::os::fd::AsFd::as_fd(&mnt), REL, libc::O_RDONLY)
                        .map_err(|e| e.to_string())?;
                std::io::read_to_string(std::fs::File::from(f)).map_err(|e| e.to_string())?
            }
        };
        text.trim()
            .parse::<u64>()
            .map_err(|e| format!("tracepoint id {text:?}: {e}"))
    })
    .clone()
    .map_err(|m| SysError::other("find the raw_syscalls:sys_exit tracepoint", None, m))
}

/// A count of the system calls numbered in `filter` that one thread, and
/// every task it creates afterwards, completed since [`SyscallCounter::open`].
pub struct SyscallCounter {
    fd: OwnedFd,
    tid: Pid,
}

impl SyscallCounter {
    /// Starts counting the completions of the system calls `nrs` by `tid`.
    pub fn open(tid: Pid, nrs: &[i64]) -> Result<SyscallCounter> {
        let id = sys_exit_tracepoint()?;
        let attr = PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: id,
            flags: ATTR_DISABLED | ATTR_INHERIT,
            ..Default::default()
        };
        // SAFETY: attr is a valid perf_event_attr of the size it states,
        // live for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                std::ptr::addr_of!(attr),
                tid.0,
                -1i32,
                -1i32,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        let r = check(r, "perf_event_open(raw_syscalls:sys_exit)", Some(tid))?;
        // SAFETY: perf_event_open returned a new descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(r as i32) };
        let filter: Vec<String> = nrs.iter().map(|n| format!("id == {n}")).collect();
        let filter = std::ffi::CString::new(filter.join(" || "))
            .map_err(|_| SysError::other("perf filter", Some(tid), "NUL in filter"))?;
        // SAFETY: the filter string lives for the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_SET_FILTER, filter.as_ptr()) };
        check(r.into(), "ioctl(PERF_EVENT_IOC_SET_FILTER)", Some(tid))?;
        // SAFETY: integer-only ioctl on our descriptor.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) };
        check(r.into(), "ioctl(PERF_EVENT_IOC_ENABLE)", Some(tid))?;
        Ok(SyscallCounter { fd, tid })
    }

    /// The number of matching system calls completed so far.
    pub fn count(&self) -> Result<u64> {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into v.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(v).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n != std::mem::size_of::<u64>() as isize {
            return Err(SysError::new(
                "read the perf counter",
                Some(self.tid),
                if n < 0 { last_errno() } else { libc::EIO },
            ));
        }
        Ok(v)
    }
}

/// Whether counting works here: a counter on this thread must see the
/// two getppid() calls made after it was opened.
pub fn self_test() -> Result<()> {
    static OK: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    OK.get_or_init(|| {
        // SAFETY: gettid has no preconditions.
        let tid = Pid(unsafe { libc::syscall(libc::SYS_gettid) } as i32);
        let c = SyscallCounter::open(tid, &[libc::SYS_getppid]).map_err(|e| e.to_string())?;
        // SAFETY: getppid has no preconditions.
        unsafe {
            libc::syscall(libc::SYS_getppid);
            libc::syscall(libc::SYS_getppid);
        }
        match c.count().map_err(|e| e.to_string())? {
            2 => Ok(()),
            n => Err(format!("counted {n} of 2 getppid() calls")),
        }
    })
    .clone()
    .map_err(|m| SysError::other("count system calls with perf", None, m))
}
