//! Scheduling attributes and I/O priority of another task, from outside:
//! `sched_getattr(2)` / `sched_setattr(2)` and `ioprio_get(2)` /
//! `ioprio_set(2)` take a TID and need no help from the task.

use crate::{check, Pid, Result};

/// `struct sched_attr` (SCHED_ATTR_SIZE_VER1: 56 bytes, util clamp included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedAttr {
    pub policy: u32,
    /// `SCHED_FLAG_*` (RESET_ON_FORK 1, RECLAIM 2, DL_OVERRUN 4, UTIL_CLAMP_MIN 0x20, ...).
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}

const ATTR_SIZE: usize = 56;

fn encode(a: &SchedAttr) -> [u8; ATTR_SIZE] {
    let mut b = [0u8; ATTR_SIZE];
    b[0..4].copy_from_slice(&(ATTR_SIZE as u32).to_ne_bytes());
    b[4..8].copy_from_slice(&a.policy.to_ne_bytes());
    b[8..16].copy_from_slice(&a.flags.to_ne_bytes());
    b[16..20].copy_from_slice(&a.nice.to_ne_bytes());
    b[20..24].copy_from_slice(&a.priority.to_ne_bytes());
    b[24..32].copy_from_slice(&a.runtime.to_ne_bytes());
    b[32..40].copy_from_slice(&a.deadline.to_ne_bytes());
    b[40..48].copy_from_slice(&a.period.to_ne_bytes());
    b[48..52].copy_from_slice(&a.util_min.to_ne_bytes());
    b[52..56].copy_from_slice(&a.util_max.to_ne_bytes());
    b
}

fn decode(b: &[u8; ATTR_SIZE]) -> SchedAttr {
    let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    SchedAttr {
        policy: u32_at(4),
        flags: u64_at(8),
        nice: u32_at(16) as i32,
        priority: u32_at(20),
        runtime: u64_at(24),
        deadline: u64_at(32),
        period: u64_at(40),
        util_min: u32_at(48),
        util_max: u32_at(52),
    }
}

/// `sched_getattr(tid, ..., 56, 0)`.
pub fn sched_getattr(tid: Pid) -> Result<SchedAttr> {
    let mut b = [0u8; ATTR_SIZE];
    check(
        // SAFETY: `b` is a writable buffer of exactly the size passed.
        unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                tid.0,
                b.as_mut_ptr(),
                ATTR_SIZE as libc::c_uint,
                0 as libc::c_uint,
            )
        },
        "sched_getattr",
        Some(tid),
    )?;
    Ok(decode(&b))
}

/// `sched_setattr(tid, attr, 0)`.
pub fn sched_setattr(tid: Pid, attr: &SchedAttr) -> Result<()> {
    let b = encode(attr);
    check(
        // SAFETY: `b` is a readable sched_attr whose size field says 56.
        unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                tid.0,
                b.as_ptr(),
                0 as libc::c_uint,
            )
        },
        "sched_setattr",
        Some(tid),
    )?;
    Ok(())
}

const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// `ioprio_get(IOPRIO_WHO_PROCESS, tid)`.
pub fn ioprio_get(tid: Pid) -> Result<u32> {
    let r = check(
        // SAFETY: plain syscall with integer arguments.
        unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid.0) },
        "ioprio_get",
        Some(tid),
    )?;
    Ok(r as u32)
}

/// `ioprio_set(IOPRIO_WHO_PROCESS, tid, value)`.
pub fn ioprio_set(tid: Pid, value: u32) -> Result<()> {
    check(
        // SAFETY: plain syscall with integer arguments.
        unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                tid.0,
                value as libc::c_int,
            )
        },
        "ioprio_set",
        Some(tid),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_roundtrip() {
        let a = SchedAttr {
            policy: 6,
            flags: 1,
            nice: -3,
            priority: 0,
            runtime: 10_000_000,
            deadline: 30_000_000,
            period: 100_000_000,
            util_min: 0,
            util_max: 1024,
        };
        assert_eq!(decode(&encode(&a)), a);
    }

    #[test]
    fn own_attrs_read() {
        let me = crate::util::gettid();
        let a = sched_getattr(me).unwrap();
        assert!(a.policy <= 6, "{a:?}");
        assert!(ioprio_get(me).is_ok());
    }
}
