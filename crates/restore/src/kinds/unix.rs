//! Unix socket pairs (unnamed, connected, nothing queued): one
//! `socketpair` per pair, keyed by inode; a lone end (its peer closed at
//! dump) gets a pair whose other end is closed once the tree is forked.

use super::{Cx, Opened};
use crate::{At, Result, Stage};
use stasis_sys::util;

pub(super) fn open(
    o: &mut Opened,
    cx: &Cx<'_>,
    id: u64,
    peer: u64,
    sock_type: u32,
    flags: u32,
) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let i = match o.object("unix", id) {
        Some(i) => i,
        None => {
            let (a, b) = stasis_sys::sockdiag::socketpair(sock_type as i32).at(pid, st)?;
            let ia = o.push(a);
            o.set_object("unix", id, ia);
            if peer != 0 {
                let ib = o.push(b);
                o.set_object("unix", peer, ib);
            }
            ia
        }
    };
    let keep = (flags as i32) & libc::O_NONBLOCK;
    util::set_status_flags(&o.owned[i], keep).at(pid, st)?;
    Ok(i)
}
