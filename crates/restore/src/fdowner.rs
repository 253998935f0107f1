//! Signal-driven I/O settings of each open file description: status
//! flags (F_SETFL: O_ASYNC, which open(2) ignores, O_NONBLOCK, ...),
//! signal (F_SETSIG) and owner (F_SETOWN_EX), set by the restored process
//! itself on its own descriptor after its credentials (the kernel checks
//! a signal's delivery against the credentials of whoever set the owner)
//! and after its threads exist (an owner may be one of them).

use crate::{At, RestoreError, Result, Stage};
use stasis_image::ProcessImage;
use stasis_sys::fdowner::{F_SETOWN_EX, F_SETSIG};
use stasis_sys::remote::RemoteThread;

const F_OWNER_PGRP: u32 = 2;

pub(crate) fn restore(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    for o in &img.fd_owners {
        let fd = o.fd as u64;
        let name = || format!("fd {} ({})", o.fd, crate::locks::fd_name(img, o.fd));
        let fail = |op: &str, errno: i64| RestoreError::Sys {
            pid,
            stage: st,
            source: stasis_sys::SysError::new(
                format!("{}: remote {op}", name()),
                None,
                errno as i32,
            ),
        };
        // The restore opened the file without O_ASYNC (open(2) would record
        // it unarmed): F_SETFL arms it.
        let got = r
            .syscall(
                libc::SYS_fcntl,
                &[fd, libc::F_SETFL as u64, u64::from(o.flags)],
            )
            .at(pid, st)?;
        if got < 0 {
            return Err(fail(&format!("fcntl(F_SETFL, {:#o})", o.flags), -got));
        }
        if o.signal != 0 {
            let got = r
                .syscall(libc::SYS_fcntl, &[fd, F_SETSIG as u64, u64::from(o.signal)])
                .at(pid, st)?;
            if got < 0 {
                return Err(fail(&format!("fcntl(F_SETSIG, {})", o.signal), -got));
            }
        }
        if o.owner_pid != 0 {
            // The process's own group may have another number now (a
            // group whose leader was not dumped is the restorer's).
            let owner = if o.owner_type == F_OWNER_PGRP && o.owner_pid == img.pgid {
                r.call(libc::SYS_getpgid, &[0], "getpgid").at(pid, st)? as u32
            } else {
                o.owner_pid
            };
            let mut b = o.owner_type.to_le_bytes().to_vec();
            b.extend_from_slice(&owner.to_le_bytes());
            let at = r.write_scratch(0, &b).at(pid, st)?;
            let got = r
                .syscall(libc::SYS_fcntl, &[fd, F_SETOWN_EX as u64, at])
                .at(pid, st)?;
            if got < 0 {
                return Err(fail(
                    &format!("fcntl(F_SETOWN_EX, type {}, {owner})", o.owner_type),
                    -got,
                ));
            }
        }
    }
    Ok(())
}
