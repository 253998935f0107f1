//! Files and directories under `/proc/PID`: not opened by the restorer
//! (its /proc is not the process's, and the processes they name do not
//! exist yet before the fork) but by the process itself, by a remote
//! `openat` of the saved path once every process of the tree exists with
//! its PID ([`super::reopen_late`]), then set to the saved offset.

use super::OPEN_FLAGS_DROP;
use crate::{At, RestoreError, Result, Stage};
use stasis_sys::remote::RemoteThread;

/// Opens `path` (for descriptor `fd`) in the process, close-on-exec, at any
/// number, with the saved flags and offset; returns the new descriptor and
/// its name for messages.
pub(super) fn open(
    r: &mut RemoteThread,
    pid: u32,
    fd: i32,
    path: &str,
    flags: u32,
    pos: u64,
) -> Result<(u64, String)> {
    let st = Stage::Attributes;
    let what = format!("fd {fd} ({path})");
    let mut b = path.as_bytes().to_vec();
    b.push(0);
    let at = r.write_scratch(0, &b).at(pid, st)?;
    let fl = (flags as i32 & !OPEN_FLAGS_DROP) | libc::O_CLOEXEC;
    let new = r
        .call(
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, at, fl as u64, 0],
            &format!("open {what}"),
        )
        .at(pid, st)?;
    if pos != 0 {
        let got = r
            .call(
                libc::SYS_lseek,
                &[new, pos, libc::SEEK_SET as u64],
                &format!("lseek {what}"),
            )
            .at(pid, st)?;
        if got != pos {
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!("{what}: offset {got} instead of {pos}"),
            });
        }
    }
    Ok((new, what))
}
