//! epoll instances: the restorer creates an empty one; every registration
//! is re-added later by the process itself ([`add_targets`], attributes
//! stage), because epoll keys a registration by the descriptor number it
//! was added from, which only exists inside the process.

use super::{Cx, Opened};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::{FdKind, ProcessImage};
use stasis_sys::remote::RemoteThread;
use stasis_sys::util;

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>) -> Result<usize> {
    Ok(o.push(util::epoll_create().at(cx.pid, Stage::Fork)?))
}

/// Re-adds what each epoll instance watched, by the process itself, so that
/// every registration has the descriptor number the process knows it by
/// (EPOLL_CTL_MOD and DEL name it). A description shared with a process
/// restored earlier is registered already (EEXIST).
pub(crate) fn add_targets(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    for e in &img.files {
        let FdKind::Epoll { targets, .. } = &e.kind else {
            continue;
        };
        for t in targets {
            // struct epoll_event is packed on x86-64: u32 events, u64 data.
            let mut ev = t.events.to_le_bytes().to_vec();
            ev.extend_from_slice(&t.data.to_le_bytes());
            let at = r.write_scratch(0, &ev).at(pid, st)?;
            let got = r
                .syscall(
                    libc::SYS_epoll_ctl,
                    &[e.fd as u64, libc::EPOLL_CTL_ADD as u64, t.fd as u64, at],
                )
                .at(pid, st)?;
            if got < 0 && got != -i64::from(libc::EEXIST) {
                return Err(RestoreError::Sys {
                    pid,
                    stage: st,
                    source: stasis_sys::SysError::new(
                        format!("remote epoll_ctl(fd {}, ADD, fd {})", e.fd, t.fd),
                        None,
                        (-got) as i32,
                    ),
                });
            }
        }
    }
    Ok(())
}
