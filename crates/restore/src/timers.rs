//! Interval timers and POSIX timers, created by the process itself after
//! its threads exist (a timer may signal one of them).

use crate::{At, RestoreError, Result, Stage};
use stasis_image::ProcessImage;
use stasis_sys::remote::RemoteThread;

/// PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15): timer_create takes the id to
/// use from its `created_timer_id` argument.
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;

/// `struct itimerval` / `struct itimerspec` bytes: (seconds, sub-second)
/// of the interval, then of the value; `per_sec` sub-second units a second.
fn interval_and_value(interval: u64, value: u64, per_sec: u64) -> Vec<u8> {
    [
        interval / per_sec,
        interval % per_sec,
        value / per_sec,
        value % per_sec,
    ]
    .iter()
    .flat_map(|v| v.to_le_bytes())
    .collect()
}

/// Interval timers and POSIX timers (same ids, clocks, notification,
/// interval, time left), created by the process itself.
pub(crate) fn timers(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    for t in &img.itimers {
        let b = interval_and_value(t.interval_us, t.value_us, 1_000_000);
        let at = r.write_scratch(0, &b).at(pid, st)?;
        r.call(
            libc::SYS_setitimer,
            &[u64::from(t.which), at, 0],
            &format!("setitimer({})", t.which),
        )
        .at(pid, st)?;
    }
    if img.posix_timers.is_empty() {
        return Ok(());
    }
    r.call(
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0],
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
    )
    .at(pid, st)?;
    // /proc lists the newest timer first: create them oldest first.
    for t in img.posix_timers.iter().rev() {
        let mut ev = vec![0u8; 64];
        ev[0..8].copy_from_slice(&t.sigev_value.to_le_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_le_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_le_bytes());
        ev[16..20].copy_from_slice(&t.notify_tid.to_le_bytes());
        ev.extend_from_slice(&t.id.to_le_bytes());
        let at = r.write_scratch(0, &ev).at(pid, st)?;
        r.call(
            libc::SYS_timer_create,
            &[t.clock_id as i64 as u64, at, at + 64],
            &format!("timer_create(id {})", t.id),
        )
        .at(pid, st)?;
        let got = i32::from_le_bytes(
            r.read_scratch(64, 4)
                .at(pid, st)?
                .try_into()
                .unwrap_or_default(),
        );
        if got != t.id {
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!("timer {} was created as {got}", t.id),
            });
        }
        if t.value_ns != 0 {
            let b = interval_and_value(t.interval_ns, t.value_ns, 1_000_000_000);
            let at = r.write_scratch(0, &b).at(pid, st)?;
            r.call(
                libc::SYS_timer_settime,
                &[t.id as u64, 0, at, 0],
                &format!("timer_settime({})", t.id),
            )
            .at(pid, st)?;
        }
    }
    r.call(
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0],
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
    )
    .at(pid, st)?;
    Ok(())
}
