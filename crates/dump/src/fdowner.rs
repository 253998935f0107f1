//! Signal-driven I/O settings of each open file description: the owner
//! (F_SETOWN / F_SETOWN_EX: a thread, a process or a process group), the
//! signal (F_SETSIG) and the status flags incl. O_ASYNC. None of it is in
//! fdinfo but the flags: read with fcntl on a pidfd_getfd duplicate.

use crate::collect::Collected;
use crate::{At, DumpError, Result, Stage};
use stasis_image::{FdKind, FdOwner};
use stasis_sys::{fdowner, util, Pid};
use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;

const F_OWNER_TID: u32 = 0;
const F_OWNER_PID: u32 = 1;
const F_OWNER_PGRP: u32 = 2;

/// The innermost PID, process group and thread-group id of task `host`
/// (our PID), from its status.
fn ids(host: u32) -> Option<(u32, u32, u32)> {
    let s = stasis_proc::read_status(host).ok()?;
    Some((*s.ns_pid.last()?, *s.ns_pgid.last()?, s.tgid))
}

/// Records, once per open file description, every descriptor with an
/// owner, a signal or O_ASYNC; refuses an owner outside the tree. Runs
/// after `translate_to_pid_ns` (owners are saved in the image's PIDs).
pub(crate) fn collect(procs: &mut [Collected]) -> Result<()> {
    let tree: HashSet<u32> = procs.iter().map(|c| c.host_pid).collect();
    // Host process group -> the image's number for it.
    let mut groups: HashMap<u32, u32> = HashMap::new();
    for c in procs.iter() {
        let st = stasis_proc::read_status(c.host_pid).at(c.host_pid, Stage::Collect)?;
        if let Some(&g) = st.ns_pgid.first() {
            groups.insert(g, c.image.pgid);
        }
    }
    let t0 = std::time::Instant::now();
    let mut seen_ofd = HashSet::new();
    for c in procs.iter_mut() {
        let pid = c.host_pid;
        let mut pidfd = None;
        let mut out = Vec::new();
        for e in &c.image.files {
            if matches!(e.kind, FdKind::Path { .. }) || !seen_ofd.insert(e.ofd) {
                continue;
            }
            let pfd = match &pidfd {
                Some(p) => p,
                None => pidfd.insert(util::pidfd_open(Pid(pid as i32)).at(pid, Stage::Collect)?),
            };
            let dup = util::pidfd_getfd(pfd, Pid(pid as i32), e.fd).at(pid, Stage::Collect)?;
            let (otype, opid) = fdowner::get_owner_ex(dup.as_fd()).at(pid, Stage::Collect)?;
            let signal = fdowner::get_sig(dup.as_fd()).at(pid, Stage::Collect)?;
            let flags = e.kind.flags();
            let o_async = flags & libc::O_ASYNC as u32 != 0;
            if opid <= 0 && signal == 0 && !o_async {
                continue;
            }
            let refuse = |why: String| DumpError::Unsupported {
                pid,
                stage: Stage::Check,
                what: format!("fd {}: {why}", e.fd),
            };
            let owner_pid = if opid <= 0 {
                0
            } else {
                let h = opid as u32;
                match otype {
                    F_OWNER_PID | F_OWNER_TID => {
                        let (inner, _, tgid) = ids(h).ok_or_else(|| {
                            refuse(format!("its signal owner {h} no longer exists"))
                        })?;
                        if !tree.contains(&tgid) || (otype == F_OWNER_PID && tgid != h) {
                            return Err(refuse(format!(
                                "its signal owner (F_SETOWN) {} {h} is outside the dumped tree",
                                if otype == F_OWNER_PID { "process" } else { "thread" }
                            )));
                        }
                        inner
                    }
                    F_OWNER_PGRP => *groups.get(&h).ok_or_else(|| {
                        refuse(format!(
                            "its signal owner (F_SETOWN) process group {h} has no member in the dumped tree"
                        ))
                    })?,
                    t => return Err(refuse(format!("signal owner of unknown type {t}"))),
                }
            };
            out.push(FdOwner {
                fd: e.fd,
                owner_type: if opid <= 0 { F_OWNER_PID } else { otype },
                owner_pid,
                signal,
                flags,
            });
        }
        c.image.fd_owners = out;
    }
    log::debug!(
        "fd owners: {} open file descriptions checked in {:?}",
        seen_ofd.len(),
        t0.elapsed()
    );
    Ok(())
}
