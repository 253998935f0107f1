//! Pipes whose both ends are in the image: one `pipe2` per pipe (by inode),
//! or the caller's pipe for one whose other end was outside (`--inherit-fd`),
//! with its capacity and the bytes that were waiting in it (stored with
//! its first entry); each end keeps its O_NONBLOCK / O_DIRECT.

use super::{fill_pipe, waiting_bytes, Cx, Opened};
use crate::{At, Result, Stage};
use stasis_image::FdKind;
use stasis_sys::util;

pub(super) fn open(
    o: &mut Opened,
    cx: &Cx<'_>,
    id: u64,
    write_end: bool,
    flags: u32,
) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let (ri, wi) = match (o.object("pipe:r", id), o.object("pipe:w", id)) {
        (Some(r), Some(w)) => (r, w),
        _ => make(o, cx, id)?,
    };
    let i = if write_end { wi } else { ri };
    let keep = (flags as i32) & (libc::O_NONBLOCK | libc::O_DIRECT);
    util::set_status_flags(&o.owned[i], keep).at(pid, st)?;
    Ok(i)
}

/// A pipe whose other end was outside the tree: the descriptor the caller
/// hands over with `--inherit-fd fd[N]:pipe:[ID]` ([`super::inherited`]).
pub(super) fn inherited(o: &mut Opened, cx: &Cx<'_>, id: u64) -> Result<usize> {
    match o.object("pipe:inherited", id) {
        Some(i) => Ok(i),
        None => super::inherited(o, cx, "pipe:inherited", id, &format!("pipe:[{id}]")),
    }
}

/// Creates pipe `id` with its saved capacity and waiting bytes; returns
/// its (read end, write end).
fn make(o: &mut Opened, cx: &Cx<'_>, id: u64) -> Result<(usize, usize)> {
    let (data, capacity) = waiting_bytes(cx.procs, |k| match k {
        FdKind::Pipe {
            id: i,
            data,
            capacity,
            ..
        } if *i == id => Some((data.as_slice(), *capacity)),
        _ => None,
    });
    let (r, w) = util::pipe().at(cx.pid, Stage::Fork)?;
    fill_pipe(cx.pid, &w, data, capacity, &format!("pipe:[{id}]"))?;
    let ri = o.push(r);
    let wi = o.push(w);
    o.set_object("pipe:r", id, ri);
    o.set_object("pipe:w", id, wi);
    Ok((ri, wi))
}
