//! Interval timers and POSIX timers, read by the process itself.

use crate::{At, Result, Stage};
use stasis_image::{ITimer, PosixTimer};
use stasis_sys::remote::{le_u64, RemoteThread};

/// A process's interval timers and POSIX timers.
pub(crate) type Timers = (Vec<ITimer>, Vec<PosixTimer>);

/// Interval timers and POSIX timers, read by the process itself
/// (getitimer, timer_gettime: queries only).
pub(crate) fn query_timers(r: &mut RemoteThread, pid: u32) -> Result<Timers> {
    let st = Stage::Query;
    let (scratch, _) = r.scratch();
    let mut itimers = Vec::new();
    for which in 0..3u32 {
        r.call(
            libc::SYS_getitimer,
            &[u64::from(which), scratch],
            "getitimer",
        )
        .at(pid, st)?;
        let b = r.read_scratch(0, 32).at(pid, st)?;
        let us = |off: usize| le_u64(&b, off) * 1_000_000 + le_u64(&b, off + 8);
        let (interval_us, value_us) = (us(0), us(16));
        if interval_us != 0 || value_us != 0 {
            itimers.push(ITimer {
                which,
                interval_us,
                value_us,
            });
        }
    }
    let mut timers = Vec::new();
    let list = match stasis_proc::read_timers(pid) {
        Ok(l) => l,
        Err(_) => return Ok((itimers, timers)), // no CONFIG_CHECKPOINT_RESTORE: no timers file
    };
    for t in list {
        r.call(
            libc::SYS_timer_gettime,
            &[t.id as u64, scratch],
            &format!("timer_gettime({})", t.id),
        )
        .at(pid, st)?;
        let b = r.read_scratch(0, 32).at(pid, st)?;
        let ns = |off: usize| le_u64(&b, off) * 1_000_000_000 + le_u64(&b, off + 8);
        let overrun = r
            .syscall(libc::SYS_timer_getoverrun, &[t.id as u64])
            .at(pid, st)?;
        let base = match t.notify.as_str() {
            "none" => 1,
            "thread" => 2,
            _ => 0,
        };
        timers.push(PosixTimer {
            id: t.id,
            clock_id: t.clock_id,
            notify: base | if t.notify_tid.is_some() { 4 } else { 0 },
            signo: t.signal.max(0) as u32,
            sigev_value: t.sigev_value,
            notify_tid: t.notify_tid.unwrap_or(0),
            interval_ns: ns(0),
            value_ns: ns(16),
            overrun: overrun.max(0) as i32,
        });
    }
    Ok((itimers, timers))
}
