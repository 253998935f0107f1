//! The tree's time namespace: when the root has one of its own (every
//! process shares it and none has unshared another for its children, see
//! checks.rs), its CLOCK_MONOTONIC and CLOCK_BOOTTIME offsets are saved,
//! with the host's clocks and boot id to place them at restore.

use crate::{DumpError, Result, Stage};
use stasis_image::timens::{Offset, TimeNs};
use stasis_sys::Pid;
use std::os::unix::fs::MetadataExt;

fn ns_ino(task: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{task}/ns/time"))
        .ok()
        .map(|m| m.ino())
}

fn failed(pid: u32, what: String) -> DumpError {
    DumpError::Unsupported {
        pid,
        stage: Stage::Collect,
        what,
    }
}

/// Parses /proc/PID/timens_offsets ("monotonic SECS NANOS" and
/// "boottime SECS NANOS" lines).
pub(crate) fn parse_offsets(text: &str) -> Option<(Offset, Offset)> {
    let mut mono = None;
    let mut boot = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (name, secs, nanos) = (it.next()?, it.next()?, it.next()?);
        let o = Offset {
            secs: secs.parse().ok()?,
            nanos: nanos.parse().ok()?,
        };
        match name {
            "monotonic" | "1" => mono = Some(o),
            "boottime" | "7" => boot = Some(o),
            _ => return None,
        }
    }
    Some((mono?, boot?))
}

/// The root's time namespace offsets, if it is not stasis's own. The
/// offsets file shows the namespace of the root's children, which
/// checks.rs made sure is the root's own.
pub(crate) fn collect(root: Pid) -> Result<Option<TimeNs>> {
    let p = root.0 as u32;
    if ns_ino(&p.to_string()) == ns_ino("self") {
        return Ok(None);
    }
    let path = format!("/proc/{p}/timens_offsets");
    let text = std::fs::read_to_string(&path).map_err(|e| failed(p, format!("{path}: {e}")))?;
    let (monotonic, boottime) =
        parse_offsets(&text).ok_or_else(|| failed(p, format!("{path}: unexpected {text:?}")))?;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Ok(Some(TimeNs {
        monotonic,
        boottime,
        boot_id,
        host_monotonic_ns: host_ns(libc::CLOCK_MONOTONIC),
        host_boottime_ns: host_ns(libc::CLOCK_BOOTTIME),
    }))
}

fn host_ns(clock: i32) -> i64 {
    stasis_sys::util::clock_now_ns(clock).map_or(0, |n| n as i64)
}

/// The refusal of a process that unshared a time namespace for its
/// children without entering it: its offsets may still be written, and
/// no restored process could be in it.
pub(crate) fn unentered(id: Option<u64>) -> String {
    format!(
        "a time namespace for its children it has not entered (time_for_children:[{}]): \
         unshare(CLONE_NEWTIME) without a fork or setns since",
        id.unwrap_or(0)
    )
}
