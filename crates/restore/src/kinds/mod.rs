//! Open descriptors, one module per kind of file. The restorer opens every
//! descriptor of every process before the tree is forked (each process
//! inherits them and moves its own to their numbers), so each kind's
//! `open` runs here, in the restorer, and returns an index into
//! [`Opened::owned`]. Kinds that name processes (pidfds, /proc entries) are
//! the exception: the process opens them itself, once the whole tree
//! exists with its PIDs ([`reopen_late`], called from rebuild.rs).
//!
//! | kind (`FdKind`) | module | what restore does |
//! |---|---|---|
//! | `Regular` | [`regular`] | open by path, flags, offset |
//! | `CharDevice` | [`chardev`] | open by path (a terminal: the restorer's own with `--shell-job`) |
//! | `Path` | [`opath`] | `O_PATH` open by path |
//! | `Pipe` | [`pipe`] | one `pipe2` per pipe, capacity and waiting bytes |
//! | `Fifo` | [`fifo`] | a read-write holder with the waiting bytes, then each end |
//! | `Saved` | [`saved`] | memfd / deleted file / deleted directory recreated from the page file (holes, owner, mode, times), reopened |
//! | `UnixSocket` | [`unix`] | one `socketpair` per pair |
//! | `UnixBound` | [`unixbound`] | `socket`, options, the stale socket file removed, bind, mode and owner, listen; queued datagrams re-sent |
//! | `TcpSocket`, `UdpSocket` | [`inet`] | `socket`, options, bind, listen (backlog) or connect |
//! | `TcpConnection` | [`tcp`] | `socket`, options, the connection rebuilt in repair mode (repair off at resume), or closed |
//! | `NetlinkSocket`, `PacketSocket`, `RawSocket` | [`netsk`] | `socket`, options, bind (port id / protocol and interface / address), groups or memberships, connect |
//! | `EventFd` | [`eventfd`] | `eventfd2` with its counter |
//! | `TimerFd` | [`timerfd`] | `timerfd_create` + `timerfd_settime` |
//! | `SignalFd` | [`signalfd`] | `signalfd4` with its mask |
//! | `Epoll` | [`epoll`] | `epoll_create1`; registrations re-added by the process later |
//! | `Inotify` | [`inotify`] | `inotify_init1`; watches added on the objects their handles name |
//! | `Fanotify` | [`fanotify`] | `fanotify_init`; inode marks added on the objects their handles name |
//! | `PtyMaster`, `PtySlave` | [`pty`] | /dev/ptmx opened until the kernel hands out the saved index; termios, window size, packet mode; slaves by TIOCGPTPEER; then exclusive modes, owner, mode, lock (`pty::finish_all`) |
//! | `DevTty` | [`procfile`] | late: `openat("/dev/tty")` by the process itself (its controlling terminal is back since the fork) |
//! | `ProcFile` | [`procfile`] | late: `openat` by the process itself, offset |
//! | `Pidfd` | [`pidfd`] | late: `pidfd_open` by the process itself |
//!
//! Adding a kind: a module here with its `open`, and one arm in
//! [`open_one`] (or, for a kind the process opens itself, in [`is_late`]
//! and [`open_late`]). The dump refuses any kind it cannot identify, so
//! every kind in an image has an arm.

mod chardev;
pub(crate) mod epoll;
mod eventfd;
pub(crate) mod fanotify;
mod fifo;
mod inet;
mod inotify;
pub(crate) mod mqueue;
mod netsk;
mod opath;
mod pidfd;
mod pipe;
mod procfile;
pub(crate) mod pty;
mod regular;
pub(crate) mod saved;
mod signalfd;
pub(crate) mod tcp;
mod timerfd;
mod unix;
mod unixbound;

use crate::memory::ServiceFds;
use crate::{At, RestoreError, Result, Stage};
use stasis_image::{FdEntry, FdKind, ProcessImage, VmaKind};
use stasis_sys::remote::RemoteThread;
use stasis_sys::util;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

pub(crate) use chardev::own_tty;
pub(crate) use unix::fill_later as unix_fill_later;
pub(crate) use unixbound::connect_later as unix_connect_later;

/// Open flags that describe how a file was created, not how it is open;
/// and O_ASYNC: open(2) records it without arming it, after which F_SETFL
/// cannot arm it either (fdowner.rs sets it).
const OPEN_FLAGS_DROP: i32 =
    libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_ASYNC;

/// Every descriptor the restorer opened for the tree; shared open file
/// descriptions (same `ofd`) and objects with an id (a pipe, a socket
/// pair, a FIFO, a saved file) are opened once.
#[derive(Default)]
pub(crate) struct Opened {
    pub(crate) owned: Vec<OwnedFd>,
    by_ofd: HashMap<u64, usize>,
    /// (kind, id) -> index into `owned` of an object shared by several
    /// descriptors (pipe ends, socket ends, FIFO holders).
    objects: HashMap<(&'static str, u64), usize>,
    /// Saved files (memfds, deleted files): see [`saved`].
    pub(crate) saved: saved::SavedObjects,
    /// `--shell-job`: the restorer's own terminal, which replaces the
    /// terminal the processes had.
    pub(crate) shell_tty: Option<String>,
    /// criu's `--tcp-close`: TCP connections come back closed.
    pub(crate) tcp_close: bool,
    /// The tree comes back with the dump's PIDs in the restorer's PID
    /// namespace: a socket pair can be made by its creator's PID
    /// ([`unix`]'s `pair`).
    pub(crate) peer_pids: bool,
    /// A tree restored into a PID namespace: the listens, pairs, accepted
    /// and waiting connections whose caller's PID SO_PEERCRED records,
    /// made again (or only: waiting connects) by the root before it forks
    /// anything (`spawn::SockCall`).
    pub(crate) sock_calls: Option<Vec<stasis_sys::spawn::SockCall>>,
    /// Accepted connections whose listener was not open when they were:
    /// their calls, once every descriptor is ([`unixbound::connect_later`]).
    pub(crate) accepted_later: Vec<unix::AcceptedLater>,
    /// The open file descriptions in flight in the image's messages
    /// (gathered once, by `unix::in_flight`).
    pub(crate) in_flight: Option<std::collections::HashSet<u64>>,
    /// Copies of the TCP connections rebuilt in repair mode, for
    /// [`tcp::go_live`].
    pub(crate) repaired: Vec<OwnedFd>,
    /// Unix socket pairs whose queues carry descriptors in flight, filled
    /// once everything is open ([`unix::fill_later`]).
    pub(crate) unix_later: Vec<unix::Later>,
    /// Clients of bound sockets, connected once everything is open
    /// ([`unixbound::connect_later`]).
    pub(crate) unix_pending: Vec<unixbound::Pending>,
    /// Slave descriptions opened: (pty index, index into `owned`).
    pub(crate) pty_slaves: Vec<(u32, usize)>,
    /// fanotify groups made (indices into `owned`), drained before the fork.
    pub(crate) fanotify: Vec<usize>,
    /// criu's `--inherit-fd fd[N]:KEY` (see [`pipe`]).
    pub(crate) inherit: Vec<(i32, String)>,
    /// POSIX message queue descriptors, opened once the queues exist
    /// ([`mqueue::open_later`]).
    pub(crate) mq_later: Vec<mqueue::Later>,
    /// Service files (executables, mapped files) by (path, open flags):
    /// opened once for the whole tree. Every process of a tree of one
    /// program maps the same libraries, and each process of the tree
    /// inherits every descriptor of the restorer before it closes all but
    /// its own: one per process and library made that quadratic.
    services: HashMap<(String, i32), usize>,
}

impl Opened {
    pub(crate) fn push(&mut self, fd: OwnedFd) -> usize {
        self.owned.push(fd);
        self.owned.len() - 1
    }

    fn object(&self, kind: &'static str, id: u64) -> Option<usize> {
        self.objects.get(&(kind, id)).copied()
    }

    fn set_object(&mut self, kind: &'static str, id: u64, i: usize) {
        self.objects.insert((kind, id), i);
    }

    /// `/proc/self/fd/N` of descriptor `i`: a new open file description of
    /// the same object.
    fn reopen_path(&self, i: usize) -> String {
        format!("/proc/self/fd/{}", self.owned[i].as_raw_fd())
    }
}

/// The key under which an object outside the tree was saved (criu's
/// external key, `--inherit-fd fd[N]:KEY`), for a descriptor whose object
/// only the caller can hand over: a pipe or a unix stream socket whose
/// other end was outside, a file named external at the dump.
fn external_key(kind: &FdKind) -> Option<(String, &'static str)> {
    match kind {
        FdKind::Pipe {
            id, external: true, ..
        } => Some((format!("pipe:[{id}]"), "the pipe")),
        FdKind::UnixSocket {
            id, external: true, ..
        } => Some((format!("socket:[{id}]"), "a connected unix stream socket")),
        FdKind::ExternalFile { key, .. } => Some((key.clone(), "the file")),
        _ => None,
    }
}

/// The refusal of descriptor `fd` of `pid`, whose external object `key`
/// the caller did not hand over.
fn not_inherited(pid: u32, stage: Stage, fd: i32, key: &str, what: &str) -> RestoreError {
    RestoreError::Refused {
        pid,
        stage,
        what: format!(
            "fd {fd}: {key} is external (outside the tree, or named so at the dump): give {what} to use with --inherit-fd fd[N]:{key}"
        ),
    }
}

/// Before anything is made: every external object of the image is one
/// the caller hands over with `--inherit-fd`.
pub(crate) fn check_inherited(procs: &[ProcessImage], inherit: &[(i32, String)]) -> Result<()> {
    for p in procs {
        for e in &p.files {
            if let Some((key, what)) = external_key(&e.kind) {
                if !inherit.iter().any(|(_, k)| *k == key) {
                    return Err(not_inherited(p.pid, Stage::Preflight, e.fd, &key, what));
                }
            }
        }
    }
    Ok(())
}

/// The caller's descriptor for the external object `key` (criu's
/// `--inherit-fd fd[N]:KEY`): a duplicate of it, the same open file
/// description, as criu does; kept as `kind` `id` among the objects.
fn inherited(o: &mut Opened, cx: &Cx<'_>, kind: &'static str, id: u64, key: &str) -> Result<usize> {
    let Some(&(fd, _)) = o.inherit.iter().find(|(_, k)| *k == key) else {
        return Err(not_inherited(cx.pid, Stage::Fork, cx.fd, key, "it"));
    };
    let dup = util::dup_cloexec(fd).at(cx.pid, Stage::Fork)?;
    let i = o.push(dup);
    o.set_object(kind, id, i);
    Ok(i)
}

/// The key of a unix socket name among [`Opened`]'s objects.
fn name_key(name: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// The file system path a unix socket name stands for (its trailing NUL
/// dropped), or None for an abstract or empty name.
fn name_path(name: &[u8]) -> Option<String> {
    name.first()
        .is_some_and(|&c| c != 0)
        .then(|| String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).into_owned())
}

/// What every kind's `open` gets: the process and descriptor being opened
/// (for errors) and the whole image (objects stored with another entry).
pub(crate) struct Cx<'a> {
    pub(crate) pid: u32,
    pub(crate) fd: i32,
    pub(crate) procs: &'a [ProcessImage],
}

/// Opens one descriptor: the table of kinds.
fn open_one(o: &mut Opened, cx: &Cx<'_>, kind: &FdKind) -> Result<usize> {
    match kind {
        FdKind::Regular { file, flags, pos } => regular::open(o, cx, &file.path, *flags, *pos),
        FdKind::CharDevice { path, flags, rdev } => chardev::open(o, cx, path, *flags, *rdev),
        FdKind::Path { path, flags, .. } => opath::open(o, cx, path, *flags),
        FdKind::ExternalFile { key, .. } => {
            inherited(o, cx, "external file", name_key(key.as_bytes()), key)
        }
        FdKind::Pipe {
            id, external: true, ..
        } => pipe::inherited(o, cx, *id),
        FdKind::Pipe {
            id,
            write_end,
            flags,
            ..
        } => pipe::open(o, cx, *id, *write_end, *flags),
        FdKind::Fifo {
            path, id, flags, ..
        } => fifo::open(o, cx, path, *id, *flags),
        FdKind::Saved { id, flags, pos } => saved::open(o, cx, *id, *flags, *pos),
        FdKind::UnixSocket {
            id,
            peer,
            sock_type,
            flags,
            listener,
            ext_peer,
            external,
            ..
        } => match (ext_peer.is_empty(), external) {
            (_, true) => unix::inherited(o, cx, *id, *flags),
            (true, _) => unix::open(o, cx, *id, *peer, *sock_type, *flags, *listener),
            (false, _) => unix::open_external(o, cx, *id, *sock_type, *flags, ext_peer),
        },
        FdKind::EventFd {
            count,
            semaphore,
            flags,
        } => eventfd::open(o, cx, *count, *semaphore, *flags),
        k @ FdKind::TimerFd { .. } => timerfd::open(o, cx, k),
        FdKind::SignalFd { mask, flags } => signalfd::open(o, cx, *mask, *flags),
        FdKind::Epoll { .. } => epoll::open(o, cx),
        FdKind::Inotify { flags, watches } => inotify::open(o, cx, *flags, watches),
        FdKind::Fanotify {
            flags,
            init_flags,
            event_flags,
            marks,
        } => fanotify::open(o, cx, *flags, (*init_flags, *event_flags), marks),
        FdKind::UnixBound {
            pending,
            sock_type,
            name,
            listening,
            backlog,
            mode,
            uid,
            gid,
            queued,
            opts,
            flags,
            peercred,
            ..
        } => {
            let s = unixbound::Saved {
                pending,
                sock_type: *sock_type,
                name,
                listen: listening.then_some(*backlog),
                owner: (*mode, *uid, *gid),
                queued,
                opts,
                flags: *flags,
                peercred: peercred.as_ref(),
            };
            unixbound::open(o, cx, &s)
        }
        FdKind::TcpSocket {
            family,
            local,
            listening,
            backlog,
            opts,
            device,
            extra,
            flags,
        } => {
            let s = inet::Saved {
                family: *family,
                local: local.as_ref(),
                peer: None,
                listen: listening.then_some(*backlog),
                opts,
                extra,
                device,
                flags: *flags,
                queued: &[],
                memberships: &[],
            };
            inet::open(o, cx, &s, true)
        }
        FdKind::TcpConnection {
            family,
            local,
            peer,
            stream,
            opts,
            device,
            extra,
            flags,
        } => {
            let s = tcp::Saved {
                family: *family,
                local,
                peer,
                stream: stream.as_deref(),
                opts,
                extra,
                device,
                flags: *flags,
            };
            tcp::open(o, cx, &s)
        }
        FdKind::UdpSocket {
            family,
            local,
            peer,
            opts,
            device,
            extra,
            flags,
            queued,
            memberships,
        } => {
            let s = inet::Saved {
                queued,
                memberships,
                family: *family,
                local: local.as_ref(),
                peer: peer.as_ref(),
                listen: None,
                opts,
                extra,
                device,
                flags: *flags,
            };
            inet::open(o, cx, &s, false)
        }
        FdKind::NetlinkSocket {
            protocol,
            sock_type,
            portid,
            groups,
            dst_portid,
            dst_group,
            opts,
            filter,
            flags,
        } => {
            let s = netsk::Netlink {
                protocol: *protocol,
                sock_type: *sock_type,
                portid: *portid,
                groups,
                dst: (*dst_portid, *dst_group),
                opts,
                filter,
                flags: *flags,
            };
            netsk::open_netlink(o, cx, &s)
        }
        FdKind::PacketSocket {
            sock_type,
            protocol,
            num,
            ifindex,
            members,
            opts,
            filter,
            fanout,
            flags,
        } => {
            let s = netsk::Packet {
                sock_type: *sock_type,
                protocol: *protocol,
                num: *num,
                ifindex: *ifindex,
                members,
                opts,
                filter,
                fanout: *fanout,
                flags: *flags,
            };
            netsk::open_packet(o, cx, &s)
        }
        FdKind::RawSocket {
            family,
            sock_type,
            protocol,
            local,
            peer,
            opts,
            device,
            icmp_filter,
            extra,
            flags,
        } => {
            let s = netsk::Raw {
                family: *family,
                sock_type: *sock_type,
                protocol: *protocol,
                local: local.as_ref(),
                peer: peer.as_ref(),
                opts,
                device,
                icmp_filter,
                extra,
                flags: *flags,
            };
            netsk::open_raw(o, cx, &s)
        }
        FdKind::Mqueue { name, flags, .. } => mqueue::open(o, cx, name, *flags),
        FdKind::PtyMaster { index, .. } => pty::open_master(o, cx, *index),
        FdKind::PtySlave { index, flags } => pty::open_slave(o, cx, *index, *flags),
        FdKind::ProcFile { .. } | FdKind::Pidfd { .. } | FdKind::DevTty { .. } => {
            Err(RestoreError::Refused {
                pid: cx.pid,
                stage: Stage::Fork,
                what: format!(
                    "fd {}: opened by the process itself, not before the fork",
                    cx.fd
                ),
            })
        }
    }
}

/// Kinds the process opens itself, by remote calls, once every process of
/// the tree exists with its PID: they name processes, which the restorer
/// cannot reach before the fork (nor through its own /proc and PID
/// namespace). See [`reopen_late`].
pub(crate) fn is_late(k: &FdKind) -> bool {
    matches!(
        k,
        FdKind::ProcFile { .. } | FdKind::Pidfd { .. } | FdKind::DevTty { .. }
    )
}

/// Opens one late descriptor in the process: the table of late kinds.
/// Returns the new descriptor (close-on-exec, at any number) and its name
/// for messages.
fn open_late(r: &mut RemoteThread, pid: u32, e: &FdEntry) -> Result<Option<(u64, String)>> {
    match &e.kind {
        FdKind::ProcFile {
            path, flags, pos, ..
        } => procfile::open(r, pid, e.fd, path, *flags, *pos).map(Some),
        FdKind::Pidfd { pid: target, flags } => {
            pidfd::open(r, pid, e.fd, *target, *flags).map(Some)
        }
        // Its controlling terminal since the fork (sys/spawn.rs).
        FdKind::DevTty { flags, .. } => {
            procfile::open(r, pid, e.fd, "/dev/tty", *flags, 0).map(Some)
        }
        _ => Ok(None),
    }
}

/// Reopens every late descriptor of `img` ([`is_late`]) at its number, by
/// the process itself. Two descriptors of the process sharing an open file
/// description stay shared (dup3); sharing across processes is refused at
/// dump.
pub(crate) fn reopen_late(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    // ofd -> the descriptor already opened for it.
    let mut first: HashMap<u64, i32> = HashMap::new();
    for e in img.files.iter().filter(|e| is_late(&e.kind)) {
        let cloexec = if e.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        if let Some(&src) = first.get(&e.ofd) {
            r.call(
                libc::SYS_dup3,
                &[src as u64, e.fd as u64, cloexec],
                &format!("dup3({src}, {})", e.fd),
            )
            .at(pid, st)?;
            continue;
        }
        let Some((tmp, what)) = open_late(r, pid, e)? else {
            continue;
        };
        if tmp == e.fd as u64 {
            // Opened at its own number already (always close-on-exec).
            if !e.cloexec {
                r.call(libc::SYS_fcntl, &[tmp, libc::F_SETFD as u64, 0], &what)
                    .at(pid, st)?;
            }
        } else {
            r.call(libc::SYS_dup3, &[tmp, e.fd as u64, cloexec], &what)
                .at(pid, st)?;
            r.call(libc::SYS_close, &[tmp], &what).at(pid, st)?;
        }
        first.insert(e.ofd, e.fd);
    }
    Ok(())
}

/// The bytes waiting in a pipe or FIFO and its capacity, stored with the
/// one entry (of any process) that `pick` accepts with a capacity set.
fn waiting_bytes<'a>(
    procs: &'a [ProcessImage],
    pick: impl Fn(&'a FdKind) -> Option<(&'a [u8], u32)>,
) -> (&'a [u8], u32) {
    procs
        .iter()
        .flat_map(|p| &p.files)
        .filter_map(|e| pick(&e.kind))
        .find(|&(_, c)| c != 0)
        .unwrap_or((&[], 0))
}

/// A new pipe (or FIFO holder) `fd` gets its capacity and waiting bytes.
fn fill_pipe(pid: u32, fd: &OwnedFd, data: &[u8], capacity: u32, what: &str) -> Result<()> {
    let st = Stage::Fork;
    if capacity != 0 {
        util::set_pipe_capacity(fd, capacity).at(pid, st)?;
    }
    util::write_all(fd, data, &format!("fill {what}")).at(pid, st)
}

/// Descriptors one process needs, as indices into [`Opened::owned`].
pub(crate) struct ProcFiles {
    pub(crate) srcs: Vec<usize>,
    /// (index into `srcs`, target fd, close-on-exec)
    pub(crate) targets: Vec<(usize, i32, bool)>,
    pub(crate) pages_k: usize,
    pub(crate) exe_k: usize,
    pub(crate) files_k: HashMap<String, usize>,
}

impl ProcFiles {
    /// Opens, in the restorer, every file a process needs: its descriptors
    /// (flags, offset) and the service files (page file, exe, mapped files).
    pub(crate) fn open(
        img: &ProcessImage,
        pages: &Path,
        procs: &[ProcessImage],
        opened: &mut Opened,
    ) -> Result<ProcFiles> {
        let mut f = ProcFiles {
            srcs: Vec::new(),
            targets: Vec::new(),
            pages_k: 0,
            exe_k: 0,
            files_k: HashMap::new(),
        };
        // Late kinds are opened by the process itself (reopen_late).
        for e in img.files.iter().filter(|e| !is_late(&e.kind)) {
            f.descriptor(img.pid, e, procs, opened)?;
        }
        // Never through a symlink swapped in since validation.
        let (pid, o) = (img.pid, libc::O_RDONLY);
        // The page file is the restorer's; the rest is the tree's (in its
        // own mount namespace when it has one: mntns.rs).
        let pg = util::open(&pages.to_string_lossy(), o | libc::O_NOFOLLOW).at(pid, Stage::Fork)?;
        f.srcs.push(opened.push(pg));
        f.pages_k = f.srcs.len() - 1;
        f.exe_k = f.service(pid, &img.exe.path, o, opened)?;
        saved::map_sources(img, opened, &mut f)?;
        saved::cwd_source(img, opened, &mut f)?;
        f.mapped_files(img, opened)
    }

    /// One descriptor: the open file description it shares with an entry
    /// opened before, or a new one of its kind.
    fn descriptor(
        &mut self,
        pid: u32,
        e: &FdEntry,
        procs: &[ProcessImage],
        opened: &mut Opened,
    ) -> Result<()> {
        let shared = (e.ofd != 0)
            .then(|| opened.by_ofd.get(&e.ofd).copied())
            .flatten();
        let idx = match shared {
            Some(i) => i,
            None => open_one(
                opened,
                &Cx {
                    pid,
                    fd: e.fd,
                    procs,
                },
                &e.kind,
            )?,
        };
        if e.ofd != 0 {
            opened.by_ofd.insert(e.ofd, idx);
        }
        self.targets.push((self.srcs.len(), e.fd, e.cloexec));
        self.srcs.push(idx);
        Ok(())
    }

    /// A service descriptor: opened here, closed by the process at the end.
    /// The description is shared by every process that maps the file so:
    /// only mmap, PR_SET_MM_EXE_FILE and close use it, never its offset.
    fn service(&mut self, pid: u32, path: &str, flags: i32, opened: &mut Opened) -> Result<usize> {
        let key = (path.to_owned(), flags);
        let idx = match opened.services.get(&key) {
            Some(&i) => i,
            None => {
                let fd = crate::mntns::open(path, flags).at(pid, Stage::Fork)?;
                let i = opened.push(fd);
                opened.services.insert(key, i);
                i
            }
        };
        self.srcs.push(idx);
        Ok(self.srcs.len() - 1)
    }

    /// Every mapped file: read-only, and read-write where a shared mapping
    /// is or may become writable (so VM_MAYWRITE comes back exactly).
    fn mapped_files(mut self, img: &ProcessImage, opened: &mut Opened) -> Result<ProcFiles> {
        let mut needed: Vec<(String, bool)> = img
            .mm
            .vmas
            .iter()
            .filter_map(|v| match &v.kind {
                VmaKind::File { file } => {
                    Some((file.path.clone(), crate::memory::maps_writable(v)))
                }
                _ => None,
            })
            .collect();
        needed.sort();
        needed.dedup();
        for (path, write) in needed {
            let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
            let k = self.service(img.pid, &path, flags, opened)?;
            self.files_k
                .insert(crate::memory::file_key(&path, write), k);
        }
        Ok(self)
    }

    /// The service descriptors of this process as the child will number
    /// them (staging range starting at `staging`).
    /// `restorer`: our status before the fork (`ServiceFds::restorer`).
    pub(crate) fn service_fds(
        &self,
        img: &ProcessImage,
        staging: i32,
        restorer: std::sync::Arc<stasis_proc::Status>,
    ) -> ServiceFds {
        let at = |i: usize| staging + i as i32;
        ServiceFds {
            pages: at(self.pages_k),
            exe: at(self.exe_k),
            files: self
                .files_k
                .iter()
                .map(|(p, &i)| (p.clone(), at(i)))
                .collect(),
            shmem: HashMap::new(),
            cow: HashMap::new(),
            image_pid: img.pid,
            sysv: HashMap::new(),
            sysv_touch: Vec::new(),
            restorer,
        }
    }
}
