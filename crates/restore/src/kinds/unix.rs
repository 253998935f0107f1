//! Unix socket pairs (connected): one `socketpair` per pair, keyed by
//! inode; a stream whose peer was outside the tree is the caller's
//! (`--inherit-fd`, [`inherited`]); an accepted connection (named as its listener) and its client
//! through a listener of that name (`through_listener`); a lone end (its peer closed at dump) gets a pair whose
//! other end is closed right away. Each end's queued data is sent into it
//! from the other end (message by message), then its options (SO_PEEK_OFF
//! after the data) and its shutdown state are set.

use super::{Cx, Opened};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::kinds::unix::{PeerCred, Queued};
use stasis_image::{FdKind, ProcessImage};
use stasis_sys::spawn::SockOp;
use stasis_sys::{sock, util};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

/// What the image holds for one end: queued data, shutdown, options, name.
type End<'a> = (
    &'a [Queued],
    u8,
    Option<&'a BTreeMap<String, i32>>,
    &'a [u8],
);

fn end<'a>(cx: &Cx<'a>, id: u64) -> End<'a> {
    cx.procs
        .iter()
        .flat_map(|p| &p.files)
        .find_map(|e| match &e.kind {
            FdKind::UnixSocket {
                id: i,
                queued,
                shutdown,
                opts,
                name,
                ..
            } if *i == id => Some((queued.as_slice(), *shutdown, Some(opts), name.as_slice())),
            _ => None,
        })
        .unwrap_or((&[], 0, None, &[]))
}

/// Sets the unix socket option `name`.
fn set_opt(cx: &Cx<'_>, fd: &OwnedFd, name: &str, v: i32) -> Result<()> {
    sock::set_named(fd, sock::UNIX_OPTS, name, v)
        .map_err(|mut e| {
            e.op = format!("fd {}: {}", cx.fd, e.op);
            e
        })
        .at(cx.pid, Stage::Fork)
}

/// Fills `to` with its queued data, sent from `from`; the descriptors in
/// flight with a message are `o`'s of their open file description.
fn fill(cx: &Cx<'_>, o: &Opened, from: &OwnedFd, queued: &[Queued], sock_type: u32) -> Result<()> {
    let stream = sock_type == libc::SOCK_STREAM as u32;
    if queued.is_empty() {
        return Ok(());
    }
    let total: usize = queued.iter().map(|q| q.data.len()).sum();
    // Room for everything in one go (the kernel doubles the value).
    let room = i32::try_from(total.saturating_mul(2) + (1 << 16)).unwrap_or(i32::MAX);
    let (pid, st) = (cx.pid, Stage::Fork);
    let was = sock::get_int(from, libc::SOL_SOCKET, libc::SO_SNDBUF).at(pid, st)?;
    sock::set_int(from, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, room).at(pid, st)?;
    for q in queued {
        if !q.rights.is_empty() {
            send_rights(cx, o, from, q, stream)?;
            continue;
        }
        sock::send_all(from, &q.data, stream)
            .map_err(|mut e| {
                e.op = format!("fd {}: {}", cx.fd, e.op);
                e
            })
            .at(pid, st)?;
    }
    // The sender's buffer back to what it was (its saved value, if any,
    // is set afterwards).
    sock::set_int(from, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, was / 2).at(pid, st)
}

/// One message with its descriptors in flight.
fn send_rights(cx: &Cx<'_>, o: &Opened, from: &OwnedFd, q: &Queued, stream: bool) -> Result<()> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let mut fds = Vec::with_capacity(q.rights.len());
    for r in &q.rights {
        let Some(&i) = o.by_ofd.get(&r.ofd) else {
            return Err(crate::RestoreError::Refused {
                pid,
                stage: st,
                what: format!(
                    "fd {}: a descriptor in flight ({}) whose file no descriptor of the tree opens",
                    cx.fd, r.link
                ),
            });
        };
        fds.push(&o.owned[i]);
    }
    sock::send_rights(from, &q.data, &fds, stream)
        .map_err(|mut e| {
            e.op = format!("fd {}: {}", cx.fd, e.op);
            e
        })
        .at(pid, st)
}

/// A pair whose queues carry descriptors in flight: filled once every
/// descriptor of the tree is open ([`fill_later`]).
pub(crate) struct Later {
    pid: u32,
    fd: i32,
    id: u64,
    peer: u64,
    sock_type: u32,
    a: usize,
    /// The other end: opened for the tree, or a lone end's peer, closed
    /// once the data is in.
    b: std::result::Result<usize, OwnedFd>,
}

/// Fills the pairs put off by [`open`], then sets their options and
/// shutdown states.
pub(crate) fn fill_later(o: &mut Opened, procs: &[ProcessImage]) -> Result<()> {
    for l in std::mem::take(&mut o.unix_later) {
        let cx = Cx {
            pid: l.pid,
            fd: l.fd,
            procs,
        };
        let ea = end(&cx, l.id);
        let a = &o.owned[l.a];
        let b = match &l.b {
            Ok(i) => &o.owned[*i],
            Err(fd) => fd,
        };
        fill(&cx, o, b, ea.0, l.sock_type)?;
        finish(&cx, a, &ea)?;
        if l.peer != 0 {
            let eb = end(&cx, l.peer);
            fill(&cx, o, a, eb.0, l.sock_type)?;
            finish(&cx, b, &eb)?;
        }
    }
    Ok(())
}

/// Options, then the shutdown state, of one end.
fn finish(cx: &Cx<'_>, fd: &OwnedFd, e: &End<'_>) -> Result<()> {
    if let Some(opts) = e.2 {
        for (name, &v) in opts {
            set_opt(cx, fd, name, v)?;
        }
    }
    if e.1 != 0 {
        sock::shutdown(fd, e.1).at(cx.pid, Stage::Fork)?;
    }
    Ok(())
}

/// In a PID namespace (`Opened::sock_calls`): a pair (`a`, `b`), or a
/// connection accepted through the image's listener, is made again by the
/// root (or a helper) with its maker's PID there: the pair's creator, the
/// connection's connector (what the accepted end reports); what waits in
/// them and their options are moved over, their shutdown states set again
/// (`spawn::SockOp`).
fn redo_in_pid_ns(
    o: &mut Opened,
    cx: &Cx<'_>,
    (id, peer, sock_type): (u64, u64, u32),
    (a, b): (&OwnedFd, &OwnedFd),
    accepted: Option<(u64, Option<i32>, &[u8])>,
) -> Result<()> {
    if o.sock_calls.is_none() || peer == 0 {
        return Ok(());
    }
    if in_flight(o, cx, [id, peer]) {
        // The dump refuses this for a tree in a PID namespace of its own;
        // here a restore into a new one (`--new-pid-ns`).
        return match cred_of(cx, id) {
            Some(c) if c.pid > 0 => Err(RestoreError::Refused {
                pid: cx.pid,
                stage: Stage::Fork,
                what: format!(
                    "fd {}: a unix socket pair in flight (SCM_RIGHTS) whose SO_PEERCRED names \
                     PID {}: it cannot be made again in the new PID namespace while a message \
                     holds it (not supported)",
                    cx.fd, c.pid
                ),
            }),
            _ => Ok(()),
        };
    }
    let raw = std::os::fd::AsRawFd::as_raw_fd;
    let ty = sock_type as i32;
    let shut = |x: u64, y: u64| [end(cx, x).1, end(cx, y).1];
    let call = match accepted {
        None => cred_of(cx, id).map(|c| {
            let op = SockOp::Pair {
                peer: raw(b),
                ty,
                shut: shut(id, peer),
            };
            (c, a, op)
        }),
        Some((server, Some(listener), name)) => {
            let other = if server == id { peer } else { id };
            let (s, c) = if server == id { (a, b) } else { (b, a) };
            let op = SockOp::Accepted {
                listener,
                client: raw(c),
                name: name.to_vec(),
                ty,
                shut: shut(server, other),
            };
            cred_of(cx, server).map(|cred| (cred, s, op))
        }
        // Its listener not open (yet): made once every descriptor is,
        // through the image's listener of that name, or one made for it,
        // in the tree's view of the name (`unixbound::accepted_later`).
        Some((server, None, name)) => {
            let other = if server == id { peer } else { id };
            let (s, c) = if server == id { (a, b) } else { (b, a) };
            if let Some(cred) = cred_of(cx, server).filter(|c| c.pid > 0) {
                let op = SockOp::Accepted {
                    listener: -1,
                    client: raw(c),
                    name: name.to_vec(),
                    ty,
                    shut: shut(server, other),
                };
                o.accepted_later.push(AcceptedLater {
                    pid: cx.pid,
                    call: super::unixbound::call(s, cred, op),
                    listened: cred_of(cx, other).cloned(),
                });
            }
            None
        }
    };
    if let (Some(calls), Some((c, fd, op))) = (&mut o.sock_calls, call) {
        if c.pid > 0 {
            calls.push(super::unixbound::call(fd, c, op));
        }
    }
    Ok(())
}

/// An accepted connection made again in a PID namespace once every
/// descriptor is open ([`redo_in_pid_ns`]): its call (its listener to be
/// found), and who listened (what its client reports) if that was a
/// process of the namespace.
pub(crate) struct AcceptedLater {
    pub(crate) pid: u32,
    pub(crate) call: stasis_sys::spawn::SockCall,
    pub(crate) listened: Option<PeerCred>,
}

/// Whether one of the sockets `ends` is itself in flight: the message
/// keeps the socket it was sent as, so such a pair is not made again.
/// (Descriptors in flight in their queues move over with the data.) The
/// descriptions in flight are gathered once per restore.
fn in_flight(o: &mut Opened, cx: &Cx<'_>, ends: [u64; 2]) -> bool {
    let sent = o.in_flight.get_or_insert_with(|| {
        stasis_image::kinds::unix::ofds_in_flight(cx.procs.iter().flat_map(|p| &p.files))
    });
    cx.procs.iter().flat_map(|p| &p.files).any(|e| {
        matches!(&e.kind, FdKind::UnixSocket { id, .. } if ends.contains(id))
            && e.ofd != 0
            && sent.contains(&e.ofd)
    })
}

/// The saved SO_PEERCRED / SO_PEERGROUPS of end `id`.
fn cred_of<'a>(cx: &Cx<'a>, id: u64) -> Option<&'a PeerCred> {
    cx.procs
        .iter()
        .flat_map(|p| &p.files)
        .find_map(|e| match &e.kind {
            FdKind::UnixSocket {
                id: i, peercred, ..
            } if *i == id => peercred.as_ref(),
            _ => None,
        })
}

/// Runs `f` (a socket call by an `sock::as_creator` helper) as the saved
/// creator `c`: its PID when the tree keeps the dump's PIDs
/// ([`Opened::peer_pids`]), its ids. A PID taken here by a process outside
/// the tree is refused by name.
pub(super) fn as_saved<T>(
    o: &Opened,
    cx: &Cx<'_>,
    c: &PeerCred,
    f: impl FnOnce(Option<i32>, &sock::Ids<'_>) -> stasis_sys::Result<T>,
) -> Result<T> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let creator = (o.peer_pids && c.pid > 0).then_some(c.pid);
    let ids = sock::Ids {
        uid: c.uid,
        gid: c.gid,
        groups: &c.groups,
    };
    f(creator, &ids).map_err(|e| {
        if e.source.raw_os_error() == Some(libc::EEXIST) {
            RestoreError::Refused {
                pid,
                stage: st,
                what: format!(
                    "fd {}: a unix socket made by PID {}, which a process outside the tree \
                     holds here (its SO_PEERCRED could not be given back)",
                    cx.fd, c.pid
                ),
            }
        } else {
            RestoreError::Sys {
                pid,
                stage: st,
                source: e,
            }
        }
    })
}

/// A socket pair whose ends report the saved SO_PEERCRED and
/// SO_PEERGROUPS (made by [`as_saved`]).
fn pair(o: &Opened, cx: &Cx<'_>, id: u64, sock_type: u32) -> Result<(OwnedFd, OwnedFd)> {
    match cred_of(cx, id) {
        Some(c) => as_saved(o, cx, c, |p, ids| {
            sock::socketpair_as(sock_type as i32, p, ids)
        }),
        None => stasis_sys::sockdiag::socketpair(sock_type as i32).at(cx.pid, Stage::Fork),
    }
}

/// An accepted connection named `name` and its client: connected through
/// the image's listener of that name if it was opened already, else
/// through a listener made for the purpose and closed again (its socket
/// file removed if it made one).
///
/// SO_PEERCRED: the accepted end reports the process that connected, the
/// client the one that listened; each call is made by [`as_saved`] with
/// the credentials the other end saved (`server`, `client`).
fn through_listener(
    o: &Opened,
    cx: &Cx<'_>,
    name: &[u8],
    sock_type: u32,
    (server, client_id): (u64, u64),
) -> Result<(OwnedFd, OwnedFd, Option<i32>)> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let ty = sock_type as i32;
    let client = sock::socket(libc::AF_UNIX, ty, 0).at(pid, st)?;
    let connect = |client: &OwnedFd| match cred_of(cx, server) {
        Some(c) => as_saved(o, cx, c, |p, ids| {
            sock::connect_unix_as(client, name, p, ids)
        }),
        None => sock::connect_unix(client, name).at(pid, st),
    };
    if let Some(i) = o.object("unix listener", super::name_key(name)) {
        let l = &o.owned[i];
        crate::mntns::in_tree_root(pid, || connect(&client))?;
        let lfd = std::os::fd::AsRawFd::as_raw_fd(l);
        return Ok((sock::accept(l).at(pid, st)?, client, Some(lfd)));
    }
    let path = super::name_path(name);
    // The name as the tree sees it: in a rebuilt mount namespace, from a
    // thread rooted in the rebuilt tree (the helpers it forks too).
    let accepted = crate::mntns::in_tree_root(pid, || {
        if let Some(p) = &path {
            sock::remove_stale_socket(p, ty).at(pid, st)?;
        }
        let l = sock::socket(libc::AF_UNIX, ty, 0).at(pid, st)?;
        sock::bind_unix(&l, name).at(pid, st)?;
        if let Some(p) = &path {
            super::unixbound::only_for(pid, p, cred_of(cx, server).map(|c| (c.uid, c.gid)))?;
        }
        let r = match cred_of(cx, client_id) {
            Some(c) => as_saved(o, cx, c, |p, ids| sock::listen_as(&l, 1, p, ids)),
            None => sock::listen(&l, 1).at(pid, st),
        }
        .and_then(|()| connect(&client))
        .and_then(|()| sock::accept(&l).at(pid, st));
        if let Some(p) = &path {
            let _ = std::fs::remove_file(p);
        }
        r
    })?;
    Ok((accepted, client, None))
}

/// A stream socket whose peer was outside the tree (criu's
/// `--ext-unix-sk`): the connected unix stream socket the caller hands
/// over with `--inherit-fd fd[N]:socket:[ID]` ([`super::inherited`]),
/// given the saved options, shutdown state and O_NONBLOCK.
pub(super) fn inherited(o: &mut Opened, cx: &Cx<'_>, id: u64, flags: u32) -> Result<usize> {
    if let Some(i) = o.object("unix", id) {
        return Ok(i);
    }
    let (pid, st) = (cx.pid, Stage::Fork);
    let key = format!("socket:[{id}]");
    let i = super::inherited(o, cx, "unix", id, &key)?;
    let fd = &o.owned[i];
    let domain = sock::get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
    let ty = sock::get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE);
    if domain.ok() != Some(libc::AF_UNIX) || ty.ok() != Some(libc::SOCK_STREAM) {
        return Err(RestoreError::Refused {
            pid,
            stage: st,
            what: format!(
                "fd {}: --inherit-fd for {key} gives a descriptor that is not a unix stream socket",
                cx.fd
            ),
        });
    }
    finish(cx, fd, &end(cx, id))?;
    util::set_status_flags(fd, (flags as i32) & libc::O_NONBLOCK).at(pid, st)?;
    Ok(i)
}

/// A datagram socket connected to a named socket outside the tree
/// (criu's `--ext-unix-sk`): connected to that name again.
pub(super) fn open_external(
    o: &mut Opened,
    cx: &Cx<'_>,
    id: u64,
    sock_type: u32,
    flags: u32,
    ext_peer: &[u8],
) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let c = sock::socket(libc::AF_UNIX, sock_type as i32, 0).at(pid, st)?;
    finish(cx, &c, &end(cx, id))?;
    // The path as the tree sees it (a container's /dev/log is the bind
    // its mount namespace has there).
    crate::mntns::in_tree_root(pid, || {
        sock::connect_unix(&c, ext_peer)
            .map_err(|mut e| {
                e.op = format!(
                    "fd {}: connecting to {} outside the tree (--ext-unix-sk): {}",
                    cx.fd,
                    String::from_utf8_lossy(ext_peer),
                    e.op
                );
                e
            })
            .at(pid, st)
    })?;
    util::set_status_flags(&c, (flags as i32) & libc::O_NONBLOCK).at(pid, st)?;
    let i = o.push(c);
    o.set_object("unix", id, i);
    Ok(i)
}

pub(super) fn open(
    o: &mut Opened,
    cx: &Cx<'_>,
    id: u64,
    peer: u64,
    sock_type: u32,
    flags: u32,
    listener: u64,
) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let i = match o.object("unix", id) {
        Some(i) => i,
        None if listener != 0 => {
            // A client waiting in an accept queue: connected by its
            // listener's open (see unixbound.rs), whichever comes first.
            let c = sock::socket(libc::AF_UNIX, sock_type as i32, 0).at(pid, st)?;
            finish(cx, &c, &end(cx, id))?;
            let i = o.push(c);
            o.set_object("unix", id, i);
            i
        }
        None => {
            let ea = end(cx, id);
            let eb = if peer != 0 {
                end(cx, peer)
            } else {
                (&[][..], 0, None, &[][..])
            };
            // (server id, listener's descriptor, name) of an accepted
            // connection.
            let mut accepted = None;
            let (a, b) = if !ea.3.is_empty() {
                let (server, client, l) = through_listener(o, cx, ea.3, sock_type, (id, peer))?;
                accepted = Some((id, l, ea.3));
                (server, client)
            } else if !eb.3.is_empty() {
                let (server, client, l) = through_listener(o, cx, eb.3, sock_type, (peer, id))?;
                accepted = Some((peer, l, eb.3));
                (client, server)
            } else {
                pair(o, cx, id, sock_type)?
            };
            redo_in_pid_ns(o, cx, (id, peer, sock_type), (&a, &b), accepted)?;
            let rights = ea.0.iter().chain(eb.0).any(|q| !q.rights.is_empty());
            if !rights {
                fill(cx, o, &b, ea.0, sock_type)?;
                fill(cx, o, &a, eb.0, sock_type)?;
                finish(cx, &a, &ea)?;
                if peer != 0 {
                    finish(cx, &b, &eb)?;
                }
            }
            let ia = o.push(a);
            o.set_object("unix", id, ia);
            let b = if peer != 0 {
                let ib = o.push(b);
                o.set_object("unix", peer, ib);
                Ok(ib)
            } else {
                Err(b)
            };
            if rights {
                o.unix_later.push(Later {
                    pid,
                    fd: cx.fd,
                    id,
                    peer,
                    sock_type,
                    a: ia,
                    b,
                });
            }
            ia
        }
    };
    let keep = (flags as i32) & libc::O_NONBLOCK;
    util::set_status_flags(&o.owned[i], keep).at(pid, st)?;
    Ok(i)
}
