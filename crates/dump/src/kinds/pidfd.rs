//! pidfds (`pidfd_open`, `CLONE_PIDFD`): recorded by the PID fdinfo shows
//! (`Pid:`; -1 is a reaped process, 0 one outside our PID namespace, both
//! refused) and flags (PIDFD_NONBLOCK is O_NONBLOCK, PIDFD_THREAD O_EXCL).
//! The restored process opens them again itself, once the whole tree
//! exists with its PIDs ([`finish`] checks that each names a process,
//! thread or zombie of the tree, in the image's numbering).

use super::{Fd, Proc, Tasks};
use crate::{At, DumpError, Result, Stage};
use stasis_image::FdKind;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    if d.link != "anon_inode:[pidfd]" && !d.link.starts_with("pidfd:") {
        return Ok(None);
    }
    let target: i64 = d
        .info
        .get("Pid")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| d.refuse("no Pid in its fdinfo"))?;
    let why = match target {
        -1 => Some("a pidfd of a process that has exited and was reaped"),
        0 => Some("a pidfd of a process outside our PID namespace"),
        _ => None,
    };
    if let Some(why) = why {
        return Err(d.refuse(&format!("{why} (not supported)")));
    }
    Ok(Some(FdKind::Pidfd {
        pid: target as u32,
        flags: d.flags(),
    }))
}

/// Once the tree's PIDs are final: the image's numbering for each pidfd
/// (fdinfo `NSpid`, innermost, in a PID namespace), which must name a
/// process, thread or zombie of the tree; a pidfd of a non-leader thread
/// of another process (threads are made process by process) or one shared
/// with another process (each process opens its own) is refused.
pub(super) fn finish(procs: &mut [Proc<'_>], tasks: &Tasks, pid_ns: bool) -> Result<()> {
    let st = Stage::Check;
    for p in procs.iter_mut() {
        let (host, me) = (p.host, p.image.pid);
        for e in p.image.files.iter_mut() {
            let FdKind::Pidfd { pid, .. } = &mut e.kind else {
                continue;
            };
            let refuse = |what: String| DumpError::Unsupported {
                pid: host,
                stage: st,
                what,
            };
            if pid_ns {
                let info = stasis_proc::read_fdinfo(host, e.fd).at(host, st)?;
                *pid = info
                    .get("NSpid")
                    .and_then(|v| v.split_whitespace().last()?.parse().ok())
                    .unwrap_or(0);
            }
            if tasks.thread_of_another(me, *pid) {
                return Err(refuse(format!(
                    "fd {} (pidfd of TID {pid}): a pidfd of a thread of another process (not supported yet)",
                    e.fd
                )));
            }
            if !(tasks.is_process(*pid) || tasks.is_task(*pid) || tasks.is_zombie(*pid)) {
                return Err(refuse(format!(
                    "fd {} (pidfd of PID {pid}): a pidfd of a process outside the dumped tree (not supported: after a restore its PID may be another process's)",
                    e.fd
                )));
            }
        }
    }
    super::refuse_shared(procs, "a pidfd", |k| matches!(k, FdKind::Pidfd { .. }))
}
