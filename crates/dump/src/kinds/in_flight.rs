//! Descriptors in flight in a unix socket's queue (SCM_RIGHTS). The peek
//! that reads the queue installs them in the dumper ([`keep`] holds each
//! under a token); once the tree's open file descriptions are linked,
//! [`link`] finds, by kcmp, the descriptor of the tree sharing each one's
//! description and records its `ofd`, which the restore opens like any
//! other and sends again with the message. One no process of the tree
//! holds (a file the sender has closed since), or one the processes open
//! themselves at restore (pidfds, /proc files, /dev/tty), is refused by
//! name.

use crate::{At, DumpError, Result, Stage};
use stasis_image::kinds::unix::InFlight;
use stasis_image::{FdKind, ProcessImage};
use stasis_sys::{util, Pid};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The descriptors installed by peeks, by token, until [`link`].
static HELD: Mutex<Option<HashMap<u64, OwnedFd>>> = Mutex::new(None);

/// Holds `fd` until [`link`]; what the image records for now.
pub(super) fn keep(fd: OwnedFd) -> InFlight {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let token = NEXT.fetch_add(1, Ordering::Relaxed);
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.get_or_insert_with(HashMap::new).insert(token, fd);
    InFlight {
        ofd: 0,
        link,
        token,
    }
}

fn take(token: u64) -> Option<OwnedFd> {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.as_mut()?.remove(&token)
}

/// The `ofd` of the descriptor of the tree sharing `fd`'s description,
/// with its kind, if any.
fn holder(images: &[&mut ProcessImage], fd: &OwnedFd) -> Result<Option<(u64, bool)>> {
    let me = Pid(std::process::id() as i32);
    for img in images {
        for e in &img.files {
            if util::same_file(me, fd.as_raw_fd(), Pid(img.pid as i32), e.fd)
                .at(img.pid, Stage::Collect)?
            {
                return Ok(Some((e.ofd, super::is_opened_late(&e.kind))));
            }
        }
    }
    Ok(None)
}

/// Gives every descriptor in flight its holder's `ofd`, or refuses it.
pub(super) fn link(images: &mut [&mut ProcessImage]) -> Result<()> {
    let mut found: Vec<(usize, usize, usize, usize, u64)> = Vec::new();
    for (pi, img) in images.iter().enumerate() {
        for (fi, e) in img.files.iter().enumerate() {
            let FdKind::UnixSocket { id, queued, .. } = &e.kind else {
                continue;
            };
            for (qi, q) in queued.iter().enumerate() {
                for (ri, r) in q.rights.iter().enumerate() {
                    let refuse = |why: &str| DumpError::Unsupported {
                        pid: img.pid,
                        stage: Stage::Check,
                        what: format!(
                            "fd {} (socket:[{id}]): a descriptor in flight (SCM_RIGHTS, {}) {why}",
                            e.fd, r.link
                        ),
                    };
                    let fd = take(r.token).ok_or_else(|| refuse("lost by the dump"))?;
                    match holder(images, &fd)? {
                        Some((ofd, false)) if ofd != 0 => found.push((pi, fi, qi, ri, ofd)),
                        Some(_) => {
                            return Err(refuse(
                                "of a kind the processes reopen themselves (not supported yet)",
                            ))
                        }
                        None => {
                            return Err(refuse(
                                "that no process of the tree holds (not supported yet)",
                            ))
                        }
                    }
                }
            }
        }
    }
    for (pi, fi, qi, ri, ofd) in found {
        if let FdKind::UnixSocket { queued, .. } = &mut images[pi].files[fi].kind {
            queued[qi].rights[ri].ofd = ofd;
        }
    }
    Ok(())
}
