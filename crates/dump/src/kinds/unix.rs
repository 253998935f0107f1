//! Unix sockets, from the kernel's sock_diag netlink interface (what
//! `ss -x` reads): a connected socket (an accepted connection with its
//! listener's name) is saved with its peer's inode, which must be in the tree, or 0 when the peer was closed
//! (with `--ext-unix-sk`, an idle stream whose peer is outside is external,
//! `external_streams`); its
//! shutdown state, the options of `sock::UNIX_OPTS` that differ from a new
//! socket's, and the data waiting in it, read without taking it (MSG_PEEK
//! walking the queue with SO_PEEK_OFF on a `pidfd_getfd` duplicate).
//! Descriptors in flight (SCM_RIGHTS) in datagram and seqpacket queues are
//! kept with their message ([`super::in_flight`]); on a stream they are
//! refused by name, like empty datagrams,
//! queued data on a socket that passes credentials (SO_PASSCRED,
//! SO_PASSPIDFD: the re-sent data would carry the restorer's); each end's
//! SO_PEERCRED and SO_PEERGROUPS; bound
//! sockets and sockets not connected are [`super::unixbound`]'s.

use super::{in_flight, Fd};
use crate::{At, DumpError, Result, Stage};
use stasis_image::kinds::unix::{PeerCred, Queued, MAX_QUEUED};
use stasis_image::{FdKind, ProcessImage};
use stasis_sys::sock;
use std::collections::{BTreeMap, HashSet};

pub(super) fn identify(d: &mut Fd<'_>) -> Result<Option<FdKind>> {
    let Some(ino) = d.socket_ino() else {
        return Ok(None);
    };
    let socks = super::unix_sockets(d.unix, d.pid)?;
    let why = match socks.get(&ino) {
        None => "a socket other than AF_UNIX",
        Some(s) if s.state != 1 => "a unix socket that is not connected (listening or unconnected)",
        Some(s) if s.shutdown != 0 && socks.values().any(|l| l.icons.contains(&ino)) => {
            "a unix socket shut down while its connection waits in a listener's accept queue"
        }
        Some(s)
            if s.name
                .as_ref()
                .is_some_and(|n| !n.is_empty() && n[0] != 0 && n[0] != b'/') =>
        {
            "a unix socket bound to a relative path"
        }
        Some(s) => {
            let (peer, sock_type, shutdown) = (s.peer, u32::from(s.sock_type), s.shutdown);
            let name = s.name.clone().unwrap_or_default();
            // A client waiting in an accept queue, or an unnamed datagram
            // socket connected to a named one: connected again by that
            // socket's restore.
            let dgram_to_named = s.sock_type == libc::SOCK_DGRAM as u8
                && s.name.is_none()
                && socks.get(&s.peer).is_some_and(|p| p.name.is_some());
            let listener = if dgram_to_named {
                s.peer
            } else {
                socks
                    .values()
                    .find(|l| l.icons.contains(&ino))
                    .map_or(0, |l| l.ino)
            };
            let pending = listener != 0 && !dgram_to_named;
            // Kept only if that socket proves to be outside the tree
            // (`link`).
            let ext_peer = match socks.get(&s.peer) {
                Some(p) if dgram_to_named && d.sockets.ext_unix(ino) => {
                    p.name.clone().unwrap_or_default()
                }
                _ => Vec::new(),
            };
            // A connected stream, kept as external only if its peer
            // proves to be outside the tree (`link`).
            let external = d.sockets.ext_unix(ino)
                && s.sock_type == libc::SOCK_STREAM as u8
                && listener == 0
                && peer != 0;
            let (queued, opts) = contents(d, sock_type, shutdown, pending)?;
            let peercred = peer_cred(d)?;
            let connector = if pending { Some(holder(d)?) } else { None };
            return Ok(Some(FdKind::UnixSocket {
                peercred,
                connector,
                id: ino,
                sock_type,
                flags: d.flags(),
                queued,
                shutdown,
                opts,
                name,
                listener,
                peer: if listener != 0 { 0 } else { peer },
                ext_peer,
                external,
            }));
        }
    };
    Err(d.refuse(&format!("{why} (not supported yet)")))
}

/// SO_PEERCRED and SO_PEERGROUPS of the socket (None: it has none).
pub(super) fn peer_cred(d: &Fd<'_>) -> Result<Option<PeerCred>> {
    Ok(sock::peer_cred(&d.dup()?)
        .at(d.pid, Stage::Check)?
        .map(|c| PeerCred {
            pid: c.pid,
            uid: c.uid,
            gid: c.gid,
            groups: c.groups,
        }))
}

/// A client waiting in an accept queue: its connection has no descriptor
/// yet, so what SO_PEERCRED will report on the server's end (the process
/// that called connect, its effective ids and groups then) cannot be
/// read. The one process of the tree holding the client is taken as that
/// process ([`link`] refuses a client held by several): its PID and its
/// effective ids and groups now.
fn holder(d: &Fd<'_>) -> Result<PeerCred> {
    let text = stasis_proc::read(d.pid, "status").at(d.pid, Stage::Check)?;
    let st = stasis_proc::parse_status(&text).map_err(|e| DumpError::Unsupported {
        pid: d.pid,
        stage: Stage::Check,
        what: format!("status: {e}"),
    })?;
    Ok(PeerCred {
        pid: d.pid as i32,
        uid: st.uids[1],
        gid: st.gids[1],
        groups: st.groups,
    })
}

/// A tree in a PID namespace of its own: every saved SO_PEERCRED PID as
/// that namespace numbers it (read by a child forked there: the creator
/// may have exited, so NSpid cannot translate it), and a waiting client's
/// connector, the process holding it, by its PID there.
pub(crate) fn peer_pids_in_pid_ns(procs: &mut [crate::collect::Collected]) -> Result<()> {
    let Some(root) = procs.first().map(|c| c.host_pid) else {
        return Ok(());
    };
    let mut socks = Vec::new();
    let mut at = Vec::new();
    for (k, c) in procs.iter().enumerate() {
        for (j, e) in c.image.files.iter().enumerate() {
            if let FdKind::UnixSocket {
                peercred: Some(p), ..
            }
            | FdKind::UnixBound {
                peercred: Some(p), ..
            } = &e.kind
            {
                if p.pid > 0 {
                    socks.push(super::dup_of(c.host_pid, e.fd)?);
                    at.push((k, j));
                }
            }
        }
    }
    if !socks.is_empty() {
        let ns = stasis_sys::util::open(
            &format!("/proc/{root}/ns/pid"),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
        .at(root, Stage::Check)?;
        let pids = sock::peer_pids_in_pid_ns(&ns, &socks).at(root, Stage::Check)?;
        for ((k, j), pid) in at.into_iter().zip(pids) {
            if let FdKind::UnixSocket {
                peercred: Some(p), ..
            }
            | FdKind::UnixBound {
                peercred: Some(p), ..
            } = &mut procs[k].image.files[j].kind
            {
                p.pid = pid;
            }
        }
    }
    for c in procs.iter_mut() {
        let me = c.image.pid as i32;
        for e in &mut c.image.files {
            if let FdKind::UnixSocket {
                connector: Some(x), ..
            } = &mut e.kind
            {
                x.pid = me;
            }
        }
    }
    refuse_sent_with_peer_pid(procs)
}

/// In a PID namespace a pair's SO_PEERCRED PID is given back by making
/// the pair again in the namespace (restore `kinds::unix`); a message in
/// flight keeps the socket it was sent as, so a pair one end of which is
/// itself in flight (SCM_RIGHTS) cannot be made again: refused by name
/// when that PID is one the namespace numbers.
fn refuse_sent_with_peer_pid(procs: &[crate::collect::Collected]) -> Result<()> {
    let entries = || {
        procs
            .iter()
            .flat_map(|c| c.image.files.iter().map(move |e| (c, e)))
    };
    let sent = stasis_image::kinds::unix::ofds_in_flight(entries().map(|(_, e)| e));
    let flying: HashSet<u64> = entries()
        .filter_map(|(_, e)| match e.kind {
            FdKind::UnixSocket { id, .. } if e.ofd != 0 && sent.contains(&e.ofd) => Some(id),
            _ => None,
        })
        .collect();
    for (c, e) in entries() {
        if let FdKind::UnixSocket {
            id,
            peer,
            peercred: Some(p),
            ..
        } = &e.kind
        {
            if p.pid > 0 && peer != &0 && (flying.contains(id) || flying.contains(peer)) {
                return Err(refused(
                    c.image.pid,
                    e.fd,
                    *id,
                    &format!(
                        "a unix socket pair in flight (SCM_RIGHTS) whose SO_PEERCRED names PID {} \
                         of the tree's PID namespace (not supported: the pair cannot be made again \
                         there with that PID while a message holds it)",
                        p.pid
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The other end of each socket is in the tree, or was closed; the
/// listener or named datagram socket a client is connected to is in it.
pub(super) fn link(images: &mut [&mut ProcessImage]) -> Result<()> {
    external_datagrams(images)?;
    let mut socks: HashSet<u64> = HashSet::new();
    let mut named: HashSet<u64> = HashSet::new();
    for e in images.iter().flat_map(|img| img.files.iter()) {
        match e.kind {
            FdKind::UnixSocket { id, .. } => {
                socks.insert(id);
            }
            FdKind::UnixBound { id, .. } => {
                named.insert(id);
            }
            _ => {}
        }
    }
    external_streams(images, &socks)?;
    one_connector(images)?;
    for img in images.iter() {
        for e in &img.files {
            if let FdKind::UnixSocket {
                id, peer, listener, ..
            } = e.kind
            {
                let outside = (peer != 0 && !socks.contains(&peer))
                    || (listener != 0 && !named.contains(&listener));
                if outside {
                    return Err(refused(
                        img.pid,
                        e.fd,
                        id,
                        "the other end of this unix socket is outside the dumped tree",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `--ext-unix-sk`: a datagram socket connected to a named socket outside
/// the tree keeps that name (and no listener); one connected to a socket
/// of the tree forgets it. Datagrams waiting in one connected outside
/// came from outside and cannot be sent again as their sender: refused.
fn external_datagrams(images: &mut [&mut ProcessImage]) -> Result<()> {
    let named: HashSet<u64> = images
        .iter()
        .flat_map(|img| img.files.iter())
        .filter_map(|e| match e.kind {
            FdKind::UnixBound { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    for img in images.iter_mut() {
        let pid = img.pid;
        for e in &mut img.files {
            if let FdKind::UnixSocket {
                id,
                listener,
                ext_peer,
                queued,
                ..
            } = &mut e.kind
            {
                if ext_peer.is_empty() {
                    continue;
                }
                if named.contains(listener) {
                    ext_peer.clear();
                    continue;
                }
                if !queued.is_empty() {
                    return Err(refused(
                        pid,
                        e.fd,
                        *id,
                        "datagrams waiting in a unix socket connected outside the dumped tree \
                         (--ext-unix-sk cannot send them again as their sender)",
                    ));
                }
                *listener = 0;
            }
        }
    }
    Ok(())
}

/// The refusal of socket `id`, descriptor `fd` of `pid`, at link time.
/// A client waiting in an accept queue held by several processes: which
/// of them connected (what the accepted end would report) cannot be read.
fn one_connector(images: &[&mut ProcessImage]) -> Result<()> {
    let mut seen: std::collections::HashMap<u64, i32> = std::collections::HashMap::new();
    for img in images {
        for e in &img.files {
            if let FdKind::UnixSocket {
                id,
                connector: Some(c),
                ..
            } = &e.kind
            {
                match seen.insert(*id, c.pid) {
                    Some(other) if other != c.pid => {
                        return Err(refused(
                            img.pid,
                            e.fd,
                            *id,
                            &format!(
                                "a client waiting in an accept queue held by processes {other} \
                                 and {} (which one connected, whose credentials the accepted \
                                 end reports as SO_PEERCRED, cannot be read)",
                                c.pid
                            ),
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

fn refused(pid: u32, fd: i32, id: u64, why: &str) -> DumpError {
    DumpError::Unsupported {
        pid,
        stage: Stage::Check,
        what: format!("fd {fd} (socket:[{id}]): {why}"),
    }
}

/// `--ext-unix-sk`: a stream socket whose peer is outside the tree is
/// kept as external (restored from the caller's `--inherit-fd
/// fd[N]:socket:[ID]`), if nothing waits in it: data there came from
/// outside and cannot be put into a socket the restore does not make.
/// One whose peer is in the tree is an ordinary pair.
fn external_streams(images: &mut [&mut ProcessImage], socks: &HashSet<u64>) -> Result<()> {
    for img in images.iter_mut() {
        let pid = img.pid;
        for e in &mut img.files {
            let FdKind::UnixSocket {
                id,
                peer,
                queued,
                external,
                ..
            } = &mut e.kind
            else {
                continue;
            };
            if !*external || socks.contains(peer) {
                *external = false;
                continue;
            }
            if !queued.is_empty() {
                return Err(refused(
                    pid,
                    e.fd,
                    *id,
                    "data queued in a unix stream socket connected outside the dumped tree \
                     (--ext-unix-sk cannot put it back into the socket the caller hands over)",
                ));
            }
            log::info!(
                "pid {pid}: fd {} (socket:[{id}]): its peer is outside the tree; restore it with --inherit-fd fd[N]:socket:[{id}]",
                e.fd
            );
            *peer = 0;
        }
    }
    Ok(())
}

/// The data waiting in the socket and its options that differ from a new
/// socket pair's.
fn contents(
    d: &Fd<'_>,
    sock_type: u32,
    shutdown: u8,
    pending: bool,
) -> Result<(Vec<Queued>, BTreeMap<String, i32>)> {
    let (pid, st) = (d.pid, Stage::Check);
    let dup = d.socket_dup()?;
    let (fresh, _) = stasis_sys::sockdiag::socketpair(sock_type as i32).at(pid, st)?;
    let opts = sock::changed_unix_options(&dup, &fresh);
    // A waiting client's sent data sits in the server side's queue, which
    // has no descriptor to read it through: only an idle client is kept
    // (SIOCOUTQ counts what it sent and nobody read).
    if pending && sock::outq(&dup).at(pid, st)? != 0 {
        return Err(d.refuse(
            "a unix socket whose connection waits in a listener's accept queue with data \
             sent (not supported yet)",
        ));
    }
    let stream = sock_type == libc::SOCK_STREAM as u32;
    // The out-of-band byte is not in the peeked stream.
    if stream && sock::has_oob(&dup).at(pid, st)? {
        return Err(d.refuse(
            "a unix stream socket with an out-of-band byte waiting (MSG_OOB, not supported yet)",
        ));
    }
    // An empty read is the end of the data once the reading side is shut
    // down (a seqpacket's EOF); otherwise an empty message.
    let eof = stream || shutdown & 1 != 0;
    let p = sock::peek_queue(&dup, MAX_QUEUED, eof).map_err(|e| {
        d.refuse(&format!(
            "a unix socket whose queued data cannot be read: {e}"
        ))
    })?;
    // A peek of a stream glues the bytes before a piece sent with
    // descriptors to it (and a peek of any byte before it returns them):
    // where they sit in the byte stream cannot be read.
    if p.rights && stream {
        return Err(d.refuse(
            "a unix stream socket with descriptors in flight (SCM_RIGHTS: where they sit \
             in the byte stream cannot be read)",
        ));
    }
    if p.odd {
        return Err(d.refuse("a unix socket with an empty or truncated message queued"));
    }
    if !p.msgs.is_empty() && (opts.contains_key("SO_PASSCRED") || opts.contains_key("SO_PASSPIDFD"))
    {
        return Err(d.refuse(
            "a unix socket with data queued for a reader of credentials (SO_PASSCRED: \
             re-sent data would carry the restorer's)",
        ));
    }
    let mut queued: Vec<Queued> = p.msgs.into_iter().map(Queued::plain).collect();
    for (i, fds) in p.fds {
        if let Some(q) = queued.get_mut(i) {
            q.rights = fds.into_iter().map(in_flight::keep).collect();
        }
    }
    if stream && queued.len() > 1 {
        let data = queued.drain(..).flat_map(|q| q.data).collect();
        queued.push(Queued::plain(data));
    }
    Ok((queued, opts))
}
