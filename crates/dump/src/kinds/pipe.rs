//! Pipes. A pipe whose other end is outside the tree is saved as
//! external (restored only from the caller's `--inherit-fd`); the bytes waiting in a pipe are
//! copied without consuming them (`tee` from a `pidfd_getfd` duplicate of a
//! read end into a private pipe of the same capacity) and saved with its
//! first entry.

use super::Fd;
use crate::{At, DumpError, Result, Stage};
use stasis_image::{FdKind, ProcessImage};
use stasis_sys::{util, Pid};
use std::collections::{HashMap, HashSet};

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let Some(ino) = d
        .link
        .strip_prefix("pipe:[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
    else {
        return Ok(None);
    };
    Ok(Some(FdKind::Pipe {
        id: ino,
        write_end: d.info.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32,
        flags: d.flags(),
        data: Vec::new(),
        capacity: 0,
        external: false,
    }))
}

/// Both ends present, contents saved once.
pub(super) fn link(images: &mut [&mut ProcessImage]) -> Result<()> {
    let mut ends: HashMap<u64, (Option<(u32, i32)>, bool)> = HashMap::new();
    // Pipes with an end in packet mode (O_DIRECT).
    let mut packets = HashSet::new();
    for img in images.iter() {
        for e in &img.files {
            if let FdKind::Pipe {
                id,
                write_end,
                flags,
                ..
            } = e.kind
            {
                if flags & libc::O_DIRECT as u32 != 0 {
                    packets.insert(id);
                }
                let slot = ends.entry(id).or_default();
                if write_end {
                    slot.1 = true;
                } else if slot.0.is_none() {
                    slot.0 = Some((img.pid, e.fd));
                }
            }
        }
    }
    let mut saved = HashSet::new();
    for img in images.iter_mut() {
        let pid = img.pid;
        for e in img.files.iter_mut() {
            let FdKind::Pipe {
                id,
                data,
                capacity,
                external,
                ..
            } = &mut e.kind
            else {
                continue;
            };
            let (reader, writer) = ends.get(id).copied().unwrap_or_default();
            // The other end missing from the tree: closed everywhere (a
            // pipe like any other, restored with that end closed again),
            // or held outside.
            let peer_gone = !(reader.is_some() && writer) && {
                let pidfd = util::pidfd_open(Pid(pid as i32)).at(pid, Stage::Collect)?;
                let dup =
                    util::pidfd_getfd(&pidfd, Pid(pid as i32), e.fd).at(pid, Stage::Collect)?;
                util::pipe_peer_gone(&dup).at(pid, Stage::Collect)?
            };
            if peer_gone && reader.is_none() {
                // A write end nobody can read from: nothing to save.
                saved.insert(*id);
                continue;
            }
            let Some((rpid, rfd)) = reader.filter(|_| writer || peer_gone) else {
                // The other end is the caller's (runc's stdio): the pipe
                // and its bytes stay with it; a restore needs it back
                // through --inherit-fd (restore/kinds/pipe.rs).
                *external = true;
                log::info!(
                    "pid {pid}: fd {} (pipe:[{id}]): its other end is outside the tree; restore it with --inherit-fd fd[N]:pipe:[{id}]",
                    e.fd
                );
                continue;
            };
            if !saved.insert(*id) {
                continue;
            }
            let pidfd = util::pidfd_open(Pid(rpid as i32)).at(rpid, Stage::Collect)?;
            let dup = util::pidfd_getfd(&pidfd, Pid(rpid as i32), rfd).at(rpid, Stage::Collect)?;
            *capacity = util::pipe_capacity(&dup).at(rpid, Stage::Collect)?;
            *data = util::pipe_peek(&dup).at(rpid, Stage::Collect)?;
            // Queued packets would come back as one: their boundaries are
            // not visible from outside.
            if !data.is_empty() && packets.contains(id) {
                return Err(DumpError::Unsupported {
                    pid,
                    stage: Stage::Check,
                    what: format!(
                        "fd {} (pipe:[{id}]): a packet-mode pipe (O_DIRECT) with {} bytes queued; \
                         the packet boundaries cannot be saved",
                        e.fd,
                        data.len()
                    ),
                });
            }
        }
    }
    Ok(())
}
