//! Unix sockets that are not connected: a new socket gets its options,
//! is bound to its name and listened on (backlog; by a helper with the
//! PID and ids of the process that listened: `unix::as_saved`, so its
//! clients' SO_PEERCRED is the same); a path's file gets its
//! mode and owner back. The dead process's socket file still lies at the
//! path: it is removed only if it is a socket nobody listens on (connect
//! is refused); a live socket or another kind of file there is an error.
//! A named listener is registered for the accepted connections of the
//! image (see `unix.rs`); its waiting clients are connected once every
//! descriptor is open ([`connect_later`]: after the accepted connections
//! were made through it), each by a helper with the PID and ids of the
//! process holding it (what the accepted end will report).
//! Queued datagrams are sent to the name from a new unnamed socket;
//! SO_PEEK_OFF is set after them.

use super::{Cx, Opened};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::kinds::unix::{PeerCred, Queued};
use stasis_sys::sock;
use stasis_sys::spawn::{SockCall, SockOp};
use stasis_sys::util;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

/// One saved socket, as the image has it.
pub(super) struct Saved<'a> {
    /// Clients waiting in the accept queue, in order.
    pub(super) pending: &'a [u64],
    pub(super) sock_type: u32,
    pub(super) name: &'a [u8],
    pub(super) listen: Option<i32>,
    pub(super) owner: (u32, u32, u32),
    pub(super) queued: &'a [Queued],
    pub(super) opts: &'a BTreeMap<String, i32>,
    pub(super) flags: u32,
    /// A listener: the credentials of the process that listened.
    pub(super) peercred: Option<&'a PeerCred>,
}

/// Sets the unix socket option `name`.
fn set_opt(cx: &Cx<'_>, fd: &std::os::fd::OwnedFd, name: &str, v: i32) -> Result<()> {
    sock::set_named(fd, sock::UNIX_OPTS, name, v)
        .map_err(|mut e| {
            e.op = format!("fd {}: {}", cx.fd, e.op);
            e
        })
        .at(cx.pid, Stage::Fork)
}

/// A bound socket's clients (a listener's waiting connections, a
/// datagram socket's connected ones), connected by [`connect_later`].
pub(crate) struct Pending {
    pid: u32,
    fd: i32,
    name: Vec<u8>,
    sock_type: u32,
    clients: Vec<u64>,
}

/// Connects the clients of every bound socket, once every descriptor is
/// open: a waiting connection goes into the listener's accept queue only
/// after the connections the tree had accepted from it were made through
/// it (each by a connect and an accept, which takes the first in line).
pub(crate) fn connect_later(o: &mut Opened, procs: &[stasis_image::ProcessImage]) -> Result<()> {
    accepted_later(o)?;
    for p in std::mem::take(&mut o.unix_pending) {
        let cx = Cx {
            pid: p.pid,
            fd: p.fd,
            procs,
        };
        connect_pending(o, &cx, &p)?;
    }
    Ok(())
}

/// In a PID namespace, the accepted connections whose listener was not
/// open when they were made ([`super::unix::AcceptedLater`]), made again
/// by the root through the image's listener of that name, or else
/// through a listener made here for it: bound to the name and listened
/// on (again by the root as who listened, what the client reports), left
/// to the root, which closes it with the rest of what it does not keep,
/// and which removes its socket file after the accept.
fn accepted_later(o: &mut Opened) -> Result<()> {
    use std::os::fd::AsRawFd;
    for mut a in std::mem::take(&mut o.accepted_later) {
        let (pid, st) = (a.pid, Stage::Fork);
        // Who connects through it (the socket file is made theirs).
        let connector = (a.call.uid, a.call.gid);
        let SockOp::Accepted {
            listener, name, ty, ..
        } = &mut a.call.op
        else {
            continue;
        };
        let name = name.clone();
        let mut unlink = None;
        match o.object("unix listener", super::name_key(&name)) {
            Some(i) => *listener = o.owned[i].as_raw_fd(),
            None => {
                let l = sock::socket(libc::AF_UNIX, *ty, 0).at(pid, st)?;
                let path = super::name_path(&name);
                // A path as the root will name it after its pivot.
                crate::mntns::in_tree_root(pid, || {
                    if let Some(p) = &path {
                        sock::remove_stale_socket(p, *ty).at(pid, st)?;
                    }
                    sock::bind_unix(&l, &name).at(pid, st)?;
                    match &path {
                        Some(p) => only_for(pid, p, Some(connector)),
                        None => Ok(()),
                    }
                })?;
                if let Some(p) = path {
                    let mut z = p.into_bytes();
                    z.push(0);
                    unlink = Some(z);
                }
                sock::listen(&l, 1).at(pid, st)?;
                *listener = l.as_raw_fd();
                if let (Some(calls), Some(c)) = (
                    o.sock_calls.as_mut(),
                    a.listened.as_ref().filter(|c| c.pid > 0),
                ) {
                    calls.push(call(&l, c, SockOp::Listen(1)));
                }
                o.push(l);
            }
        }
        if let Some(calls) = o.sock_calls.as_mut() {
            calls.push(a.call);
            if let Some(path) = unlink {
                calls.push(SockCall {
                    fd: -1,
                    pid: 0,
                    uid: 0,
                    gid: 0,
                    groups: Vec::new(),
                    op: SockOp::Unlink(path),
                });
            }
        }
    }
    Ok(())
}

/// The socket file `path` of a listener made for one connection: only
/// its connector (`owner`: uid and gid, else the restorer) may connect
/// (connect needs write permission on it).
pub(super) fn only_for(pid: u32, path: &str, owner: Option<(u32, u32)>) -> Result<()> {
    let io = |what: &str, source| RestoreError::Io {
        pid,
        stage: Stage::Fork,
        what: format!("{what} {path}"),
        source,
    };
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| io("chown", e))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("chmod", e))
}

/// Connects the clients that waited in the accept queue, in order: those
/// opened already (unconnected, by `unix.rs`), or new ones registered for
/// their entries.
fn connect_pending(o: &mut Opened, cx: &Cx<'_>, s: &Pending) -> Result<()> {
    let (pid, st) = (cx.pid, Stage::Fork);
    for &cid in &s.clients {
        let i = match o.object("unix", cid) {
            Some(i) => i,
            None => {
                let c = sock::socket(libc::AF_UNIX, s.sock_type as i32, 0).at(pid, st)?;
                if let Some(opts) = client_opts(cx, cid) {
                    for (name, &v) in opts {
                        set_opt(cx, &c, name, v)?;
                    }
                }
                let i = o.push(c);
                o.set_object("unix", cid, i);
                i
            }
        };
        // Connected as the process that connected it: what the accepted
        // end reports (SO_PEERCRED, SO_PEERGROUPS).
        let connector = client_entry(cx, cid).and_then(|(_, c)| c);
        if let (Some(calls), Some(c)) = (o.sock_calls.as_mut(), connector.filter(|c| c.pid > 0)) {
            // In a PID namespace: connected by the root's helper with the
            // connector's PID there, after the listens.
            calls.push(call(&o.owned[i], c, SockOp::Connect(s.name.clone())));
            continue;
        }
        // A connection accepted through this listener is not made again
        // after this one is queued (its accept would take this one).
        if let Some(calls) = o.sock_calls.as_mut() {
            calls.retain(|c| !matches!(&c.op, SockOp::Accepted { name, .. } if *name == s.name));
        }
        let (o, client) = (&*o, &o.owned[i]);
        crate::mntns::in_tree_root(pid, || match connector {
            Some(c) => super::unix::as_saved(o, cx, c, |p, ids| {
                sock::connect_unix_as(client, &s.name, p, ids)
            }),
            None => sock::connect_unix(client, &s.name).at(pid, st),
        })?;
    }
    Ok(())
}

/// A [`stasis_sys::spawn::SockCall`] on `fd` as the saved caller `c`.
pub(super) fn call(fd: &std::os::fd::OwnedFd, c: &PeerCred, op: SockOp) -> SockCall {
    SockCall {
        fd: std::os::fd::AsRawFd::as_raw_fd(fd),
        pid: c.pid,
        uid: c.uid,
        gid: c.gid,
        groups: c.groups.clone(),
        op,
    }
}

/// The options saved with client `id`'s entry.
fn client_opts<'a>(cx: &Cx<'a>, id: u64) -> Option<&'a BTreeMap<String, i32>> {
    client_entry(cx, id).map(|(opts, _)| opts)
}

/// Client `id`'s entry: its options and the process that connected it.
fn client_entry<'a>(
    cx: &Cx<'a>,
    id: u64,
) -> Option<(&'a BTreeMap<String, i32>, Option<&'a PeerCred>)> {
    cx.procs
        .iter()
        .flat_map(|p| &p.files)
        .find_map(|e| match &e.kind {
            stasis_image::FdKind::UnixSocket {
                id: i,
                opts,
                connector,
                ..
            } if *i == id => Some((opts, connector.as_ref())),
            _ => None,
        })
}

pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, s: &Saved<'_>) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let fd = sock::socket(libc::AF_UNIX, s.sock_type as i32, 0).at(pid, st)?;
    for (name, &v) in s.opts {
        if name != "SO_PEEK_OFF" {
            set_opt(cx, &fd, name, v)?;
        }
    }
    let path = super::name_path(s.name);
    // A path as the tree sees it (in a rebuilt mount namespace, from a
    // thread rooted in the rebuilt tree).
    crate::mntns::in_tree_root(pid, || {
        if let Some(p) = &path {
            sock::remove_stale_socket(p, s.sock_type as i32).at(pid, st)?;
        }
        if !s.name.is_empty() {
            sock::bind_unix(&fd, s.name).at(pid, st)?;
        }
        if let Some(p) = &path {
            let io = |what: &str, source| RestoreError::Io {
                pid,
                stage: st,
                what: format!("{what} {p}"),
                source,
            };
            let (mode, uid, gid) = s.owner;
            std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|e| io("chown", e))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io("chmod", e))?;
        }
        Ok(())
    })?;
    let mut listener = false;
    if let Some(backlog) = s.listen {
        match s.peercred {
            Some(c) => {
                super::unix::as_saved(o, cx, c, |p, ids| sock::listen_as(&fd, backlog, p, ids))?;
                // In a PID namespace: listened on again by its creator's
                // PID there, before the tree's processes exist.
                if let Some(calls) = o.sock_calls.as_mut().filter(|_| c.pid > 0) {
                    calls.push(call(&fd, c, SockOp::Listen(backlog)));
                }
            }
            None => sock::listen(&fd, backlog).at(pid, st)?,
        }
        listener = !s.name.is_empty();
    }
    // A listener's waiting clients; a datagram socket's connected ones.
    if !s.name.is_empty() && !s.pending.is_empty() {
        o.unix_pending.push(Pending {
            pid,
            fd: cx.fd,
            name: s.name.to_vec(),
            sock_type: s.sock_type,
            clients: s.pending.to_vec(),
        });
    }
    if !s.queued.is_empty() {
        let from = sock::socket(libc::AF_UNIX, s.sock_type as i32, 0).at(pid, st)?;
        crate::mntns::in_tree_root(pid, || {
            for q in s.queued {
                sock::sendto_unix(&from, s.name, &q.data).at(pid, st)?;
            }
            Ok(())
        })?;
    }
    if let Some(&v) = s.opts.get("SO_PEEK_OFF") {
        set_opt(cx, &fd, "SO_PEEK_OFF", v)?;
    }
    util::set_status_flags(&fd, (s.flags as i32) & libc::O_NONBLOCK).at(pid, st)?;
    let i = o.push(fd);
    if listener {
        // Accepted connections of the image are made through it.
        o.set_object("unix listener", super::name_key(s.name), i);
    }
    Ok(i)
}
