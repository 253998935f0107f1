//! Unix sockets, from the kernel's sock_diag netlink interface (what
//! `ss -x` reads): an unnamed, connected socket with nothing queued is
//! saved with its peer's inode, which must be in the tree, or 0 when the
//! peer was closed; everything else is refused.

use super::Fd;
use crate::{At, DumpError, Result, Stage};
use stasis_image::{FdKind, ProcessImage};
use std::collections::HashSet;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let Some(ino) = d
        .link
        .strip_prefix("socket:[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return Ok(None);
    };
    let socks = match d.unix {
        Some(u) => u,
        None => d
            .unix
            .insert(stasis_sys::sockdiag::unix_sockets().at(d.pid, Stage::Check)?),
    };
    let why = match socks.get(&ino) {
        None => "a socket other than AF_UNIX",
        Some(s) if s.name.is_some() => "a bound (named) unix socket",
        Some(s) if s.state != 1 => "a unix socket that is not connected (listening or unconnected)",
        Some(s) if s.rqueue != 0 => "a unix socket with unread data queued",
        Some(s) => {
            let (peer, sock_type) = (s.peer, u32::from(s.sock_type));
            return Ok(Some(FdKind::UnixSocket {
                id: ino,
                peer,
                sock_type,
                flags: d.flags(),
            }));
        }
    };
    Err(d.refuse(&format!("{why} (not supported yet)")))
}

/// The other end of each socket is in the tree, or was closed.
pub(super) fn link(images: &mut [&mut ProcessImage]) -> Result<()> {
    let socks: HashSet<u64> = images
        .iter()
        .flat_map(|img| img.files.iter())
        .filter_map(|e| match e.kind {
            FdKind::UnixSocket { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    for img in images.iter() {
        for e in &img.files {
            if let FdKind::UnixSocket { id, peer, .. } = e.kind {
                if peer != 0 && !socks.contains(&peer) {
                    return Err(DumpError::Unsupported {
                        pid: img.pid,
                        stage: Stage::Check,
                        what: format!(
                            "fd {} (socket:[{id}]): the other end of this unix socket is outside the dumped tree",
                            e.fd
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}
