//! Unix sockets that are not connected: bound to a path or an abstract
//! name, or not bound; listening (backlog) or not; with their options and,
//! for a datagram socket, the datagrams waiting (MSG_PEEK with SO_PEEK_OFF
//! on a duplicate). A path must still name this very socket (its inode, as
//! sock_diag's VFS attribute gives it); the file's mode and owner are kept.
//!
//! A listener's connections waiting to be accepted are saved as the list
//! of their clients (each must be in the tree, idle: see `super::unix`).
//! Refused by name: a path that was unlinked or replaced, a relative path,
//! a waiting connection whose client was closed or is outside the tree, a connected socket with a name at
//! both ends or a datagram socket connected to a named one, datagrams from
//! named senders, descriptors in flight. Connected pairs (an accepted
//! connection and its client among them) are [`super::unix`]'s.

use super::Fd;
use crate::{At, DumpError, Result, Stage};
use stasis_image::kinds::unix::{Queued, MAX_QUEUED};
use stasis_image::{FdKind, ProcessImage};
use stasis_sys::sock;
use stasis_sys::sockdiag::UnixSocket;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

const ESTABLISHED: u8 = 1;
const LISTEN: u8 = 10;

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let Some(ino) = d.socket_ino() else {
        return Ok(None);
    };
    let socks = super::unix_sockets(d.unix, d.pid)?;
    let Some(s) = socks.get(&ino).cloned() else {
        return Ok(None);
    };
    let peer_named = socks.get(&s.peer).is_some_and(|p| p.name.is_some());
    let dgram = s.sock_type == libc::SOCK_DGRAM as u8;
    // A named datagram socket others connected to shows ESTABLISHED but
    // has no peer itself: a receiver, this kind's.
    let receiver = dgram && s.peer == 0 && s.name.is_some();
    if (s.state == ESTABLISHED && !receiver) || s.peer != 0 {
        // An accepted connection (its name is the listener's) and its
        // client are a pair, and an unnamed datagram socket connected to
        // a named one a client: `super::unix`'s; refused when both ends
        // are named, or a named datagram socket is connected.
        if (s.name.is_some() && peer_named) || (dgram && s.name.is_some()) {
            return Err(d.refuse(
                "a connected unix socket with a name at both ends, or a named datagram \
                 socket connected to another (not supported yet)",
            ));
        }
        return Ok(None);
    }
    let listening = match s.state {
        LISTEN if s.rqueue as usize != s.icons.len() || s.icons.contains(&0) => {
            return Err(d.refuse(&format!(
                "a listening unix socket with {} connection(s) waiting to be accepted whose \
                 client was closed (not supported)",
                s.rqueue
            )))
        }
        LISTEN => true,
        7 => false,
        ESTABLISHED if receiver => false,
        st => return Err(d.refuse(&format!("a unix socket in state {st} (not supported)"))),
    };
    let (mode, uid, gid) = path_owner(d, &s)?;
    let (queued, opts) = contents(d, &s, listening)?;
    Ok(Some(FdKind::UnixBound {
        id: ino,
        pending: s.icons.clone(),
        sock_type: u32::from(s.sock_type),
        name: s.name.clone().unwrap_or_default(),
        listening,
        backlog: if listening { s.wqueue as i32 } else { 0 },
        mode,
        uid,
        gid,
        queued,
        opts,
        flags: d.flags(),
        peercred: super::unix::peer_cred(d)?,
    }))
}

/// A path name: it must still be this socket's file; its mode and owner.
fn path_owner(d: &Fd<'_>, s: &UnixSocket) -> Result<(u32, u32, u32)> {
    let Some(name) = s.name.as_deref().filter(|n| n.first() != Some(&0)) else {
        return Ok((0, 0, 0));
    };
    let path = String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).into_owned();
    if !path.starts_with('/') {
        return Err(d.refuse(&format!(
            "a unix socket bound to the relative path {path:?} (not supported)"
        )));
    }
    let seen = std::fs::symlink_metadata(format!("/proc/{}/root{path}", d.pid));
    let same = match (&seen, s.vfs) {
        (Ok(m), Some((ino, kdev))) => {
            let dev = m.dev();
            let kernel = ((libc::major(dev) as u64) << 20) | libc::minor(dev) as u64;
            m.file_type().is_socket() && m.ino() == ino && kernel == u64::from(kdev)
        }
        _ => false,
    };
    match seen {
        Ok(m) if same => Ok((m.mode() & 0o7777, m.uid(), m.gid())),
        _ => Err(d.refuse(&format!(
            "a unix socket whose path {path} was unlinked or replaced (not supported)"
        ))),
    }
}

/// Options that differ from a new socket's; datagrams waiting.
fn contents(
    d: &Fd<'_>,
    s: &UnixSocket,
    listening: bool,
) -> Result<(Vec<Queued>, BTreeMap<String, i32>)> {
    let (pid, st) = (d.pid, Stage::Check);
    let dup = d.socket_dup()?;
    let fresh = sock::socket(libc::AF_UNIX, i32::from(s.sock_type), 0).at(pid, st)?;
    let opts = sock::changed_unix_options(&dup, &fresh);
    // A listener cannot be peeked (EINVAL); an unconnected stream socket
    // has no queue.
    if listening || s.sock_type != libc::SOCK_DGRAM as u8 {
        return Ok((Vec::new(), opts));
    }
    let p = sock::peek_queue(&dup, MAX_QUEUED, s.shutdown & 1 != 0).map_err(|e| {
        d.refuse(&format!(
            "a unix socket whose queued data cannot be read: {e}"
        ))
    })?;
    let why = if p.rights {
        "a unix socket with descriptors in flight (SCM_RIGHTS, not supported yet)"
    } else if p.odd {
        "a unix socket with an empty or truncated message queued"
    } else if p.named_sender {
        "a unix datagram socket with datagrams queued from a named sender (not supported yet)"
    } else if !p.msgs.is_empty() && s.name.is_none() {
        "an unbound unix datagram socket with datagrams queued"
    } else if !p.msgs.is_empty()
        && (opts.contains_key("SO_PASSCRED") || opts.contains_key("SO_PASSPIDFD"))
    {
        "a unix socket with data queued for a reader of credentials (SO_PASSCRED: \
         re-sent data would carry the restorer's)"
    } else {
        let queued = p.msgs.into_iter().map(Queued::plain).collect();
        return Ok((queued, opts));
    };
    Err(d.refuse(why))
}

/// Every client waiting in a listener's accept queue is in the tree (only
/// those can be connected again); a named datagram socket gets the list of
/// the datagram sockets connected to it.
pub(super) fn link(images: &mut [&mut ProcessImage]) -> Result<()> {
    let mut socks: HashSet<u64> = HashSet::new();
    let mut clients: HashMap<u64, Vec<u64>> = HashMap::new();
    for e in images.iter().flat_map(|img| img.files.iter()) {
        if let FdKind::UnixSocket { id, listener, .. } = e.kind {
            socks.insert(id);
            if listener != 0 {
                clients.entry(listener).or_default().push(id);
            }
        }
    }
    for img in images.iter_mut() {
        for e in img.files.iter_mut() {
            if let FdKind::UnixBound {
                id,
                pending,
                sock_type,
                ..
            } = &mut e.kind
            {
                if *sock_type == libc::SOCK_DGRAM as u32 {
                    let mut c = clients.get(id).cloned().unwrap_or_default();
                    c.sort_unstable();
                    c.dedup();
                    *pending = c;
                }
            }
        }
    }
    for img in images.iter() {
        for e in &img.files {
            if let FdKind::UnixBound { id, pending, .. } = &e.kind {
                if let Some(c) = pending.iter().find(|c| !socks.contains(c)) {
                    return Err(DumpError::Unsupported {
                        pid: img.pid,
                        stage: Stage::Check,
                        what: format!(
                            "fd {} (socket:[{id}]): a connection waiting to be accepted comes \
                             from socket:[{c}] outside the dumped tree",
                            e.fd
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}
