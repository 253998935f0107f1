//! Open descriptors, one module per kind of file. Each kind's `identify`
//! looks at one descriptor (its /proc link, fdinfo and, for a named file,
//! its stat) and either claims it, refuses it by name, or passes. Kinds that
//! span processes (a pipe's two ends, a socket pair, a saved object) also
//! have a `link` run over the whole tree once every process is collected.
//! Kinds that name processes (pidfds, /proc entries) have a `finish` run
//! once the tree's PIDs are final (after the PID namespace translation).
//!
//! | kind (`FdKind`) | module | identified by |
//! |---|---|---|
//! | `Mqueue` | [`mqueue`] | a file of the mqueue file system (statfs magic) |
//! | `Pipe` | [`pipe`] | link `pipe:[INO]` |
//! | `EventFd` | [`eventfd`] | link `anon_inode:[eventfd]` |
//! | `TimerFd` | [`timerfd`] | link `anon_inode:[timerfd]` |
//! | `SignalFd` | [`signalfd`] | link `anon_inode:[signalfd]` |
//! | `Epoll` | [`epoll`] | link `anon_inode:[eventpoll]` |
//! | `Inotify` | [`inotify`] | link `anon_inode:inotify` |
//! | `Fanotify` | [`fanotify`] | link `anon_inode:[fanotify]` |
//! | `TcpSocket`, `UdpSocket` | [`inet`] | link `socket:[INO]`, SO_DOMAIN AF_INET/AF_INET6 on a duplicate (other families refused by name) |
//! | `NetlinkSocket`, `PacketSocket`, `RawSocket` | [`netsk`] | link `socket:[INO]`, SO_DOMAIN AF_NETLINK / AF_PACKET, or AF_INET(6) with SOCK_RAW or ICMP ping |
//! | `UnixBound` | [`unixbound`] | link `socket:[INO]`, AF_UNIX in sock_diag, not connected |
//! | `UnixSocket` | [`unix`] | link `socket:[INO]`, AF_UNIX in sock_diag, connected, no name at either end |
//! | `Pidfd` | [`pidfd`] | link `anon_inode:[pidfd]` (or `pidfd:`), fdinfo `Pid:` |
//! | `ProcFile` | [`procfile`] | link `/proc/N...` on procfs (O_PATH ones too) |
//! | `Path` | [`opath`] | O_PATH in fdinfo flags |
//! | `Saved` | [`saved`] | a regular file or directory whose link ends in " (deleted)" (memfds too) |
//! | `Fifo` | [`fifo`] | a FIFO by path |
//! | `Regular` | [`regular`] | a regular file or directory by path |
//! | `PtyMaster`, `PtySlave`, `DevTty` | [`pty`] | a character device: /dev/ptmx (5:2), a pty slave (136-143:N), /dev/tty naming a pty (TIOCGDEV); a slave whose master is outside the tree becomes a `CharDevice` (`-j`) in `pty::finish` |
//! | `CharDevice` | [`chardev`] | a character device (a terminal only with --shell-job) |
//!
//! Adding a kind: a module here with its `identify` (and `link` if it spans
//! processes), one line in [`KINDS`] (and [`LINKS`], or [`FINISH`] if it
//! names processes). A descriptor no kind claims is refused in one place,
//! [`collect_fds`].

mod chardev;
mod epoll;
mod eventfd;
mod fanotify;
mod fifo;
mod in_flight;
mod inet;
pub(crate) mod inotify;
mod mqueue;
mod netsk;
mod opath;
mod pidfd;
mod pipe;
mod procfile;
mod pty;
pub(crate) mod regular;
pub(crate) mod saved;
mod signalfd;
mod tcp;
mod timerfd;
pub(crate) mod unix;
mod unixbound;

use crate::{At, DumpError, Result, Stage};
use stasis_image::{FdEntry, FdKind, ProcessImage};
use stasis_proc::FdInfo;
use stasis_sys::{util, Pid};
use std::collections::{HashMap, HashSet};

pub(crate) use pty::pty_index;

const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const DELETED: &str = " (deleted)";

/// The unix sockets of the process's network namespace by inode, from one
/// sock_diag dump asked for on first use (`cache` is [`Fd`]'s, shared by
/// every descriptor of a process).
pub(crate) fn unix_sockets(
    cache: &mut Option<HashMap<u64, stasis_sys::sockdiag::UnixSocket>>,
    pid: u32,
) -> Result<&mut HashMap<u64, stasis_sys::sockdiag::UnixSocket>> {
    match cache {
        Some(u) => Ok(u),
        // sock_diag answers for the asking socket's network namespace:
        // the process's own (the tree's, when it has one: netns.rs).
        None => {
            let found = stasis_sys::nsenter::in_ns_of(
                stasis_sys::Pid(pid as i32),
                "net",
                libc::CLONE_NEWNET,
                stasis_sys::sockdiag::unix_sockets,
            )
            .at(pid, Stage::Check)?
            .at(pid, Stage::Check)?;
            Ok(cache.insert(found))
        }
    }
}

/// What to do with a TCP connection (criu's `--tcp-established`,
/// `--tcp-close`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum TcpMode {
    /// Refused by name.
    #[default]
    Refuse,
    /// Saved in repair mode (the tree's network lock is on).
    Established,
    /// Saved as a closed socket.
    Close,
}

/// How sockets are dumped.
#[derive(Debug, Clone, Default)]
pub(crate) struct SockOpts {
    /// criu's `--skip-in-flight`: connections waiting in a listener's
    /// accept queue are dropped instead of refused.
    pub(crate) skip_in_flight: bool,
    pub(crate) tcp: TcpMode,
    /// criu's `--ext-unix-sk`: a datagram socket connected to a named one
    /// outside the tree is saved with that name.
    pub(crate) ext_unix_sk: bool,
    /// criu's `--external unix[INO]`: the same, for these sockets only.
    pub(crate) ext_unix_inos: std::sync::Arc<[u64]>,
    /// criu's `--external file[MNT_ID:INODE]` (not a socket option, but
    /// asked for with them): these files are saved as external.
    pub(crate) ext_files: std::sync::Arc<[String]>,
}

impl SockOpts {
    /// Whether the tree's unix socket `ino` may have its other end outside.
    pub(crate) fn ext_unix(&self, ino: u64) -> bool {
        self.ext_unix_sk || self.ext_unix_inos.contains(&ino)
    }
}

/// One descriptor being identified.
pub(crate) struct Fd<'a> {
    pub(crate) pid: u32,
    pub(crate) fd: i32,
    /// Its /proc/PID/fd link.
    pub(crate) link: &'a str,
    pub(crate) info: &'a FdInfo,
    pub(crate) shell_job: bool,
    /// How sockets are dumped (criu's socket options).
    pub(crate) sockets: &'a SockOpts,
    /// stat of a named file (link starting with '/'), read once on demand.
    md: Option<std::fs::Metadata>,
    /// AF_UNIX sockets of our network namespace, asked for once if needed.
    pub(crate) unix: &'a mut Option<HashMap<u64, stasis_sys::sockdiag::UnixSocket>>,
}

/// A duplicate of descriptor `fd` of process `pid` (pidfd_getfd: the same
/// open file), for asking it what only the file can tell.
pub(crate) fn dup_of(pid: u32, fd: i32) -> Result<std::os::fd::OwnedFd> {
    let st = Stage::Check;
    let pidfd = util::pidfd_open(Pid(pid as i32)).at(pid, st)?;
    util::pidfd_getfd(&pidfd, Pid(pid as i32), fd).at(pid, st)
}

impl Fd<'_> {
    /// A duplicate of this descriptor ([`dup_of`]).
    pub(crate) fn dup(&self) -> Result<std::os::fd::OwnedFd> {
        dup_of(self.pid, self.fd)
    }

    /// A duplicate of this socket, refused by name if a BPF filter is
    /// attached to it (not saved).
    pub(crate) fn socket_dup(&self) -> Result<std::os::fd::OwnedFd> {
        let dup = self.dup()?;
        if stasis_sys::sock::filter_len(&dup).at(self.pid, Stage::Check)? != 0 {
            return Err(self.refuse("a socket with a BPF filter (SO_ATTACH_FILTER, not supported)"));
        }
        Ok(dup)
    }

    /// The open flags without O_CLOEXEC (kept in `FdEntry::cloexec`).
    pub(crate) fn flags(&self) -> u32 {
        self.info.flags & !O_CLOEXEC
    }

    /// The inode of a socket descriptor (`socket:[INO]`), if it is one.
    pub(crate) fn socket_ino(&self) -> Option<u64> {
        self.link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
    }

    /// Whether the link names a deleted file.
    pub(crate) fn deleted(&self) -> bool {
        self.link.ends_with(DELETED)
    }

    /// Refuses a named file the restore could not reopen as the same
    /// object by its path: one on a detached mount (open_tree, fsmount:
    /// its link reads `/`, its mount is in no mount table). POSIX message
    /// queues are opened by name ([`mqueue`]).
    pub(crate) fn refuse_unreachable(&self) -> Result<()> {
        if mqueue::is_mqueue(self) {
            return Ok(());
        }
        if self.link == "/" {
            let text = stasis_proc::read(self.pid, "mountinfo").at(self.pid, Stage::Collect)?;
            let known = stasis_proc::parse_mountinfo(&text)
                .map(|m| m.iter().any(|m| u64::from(m.mount_id) == self.info.mnt_id))
                .unwrap_or(true);
            if !known {
                return Err(self.refuse(&format!(
                    "a detached mount (open_tree or fsmount; mount {} is in no mount table)",
                    self.info.mnt_id
                )));
            }
        }
        Ok(())
    }

    /// stat through the /proc link (the very object the process has open),
    /// for a descriptor whose link is a path; None for anything else.
    pub(crate) fn stat(&mut self) -> Result<Option<&std::fs::Metadata>> {
        if !self.link.starts_with('/') {
            return Ok(None);
        }
        if self.md.is_none() {
            self.md = Some(stat(self.pid, self.fd, self.link)?);
        }
        Ok(self.md.as_ref())
    }

    /// "cannot dump fd N (LINK): why" for this descriptor.
    pub(crate) fn refuse(&self, why: &str) -> DumpError {
        DumpError::Unsupported {
            pid: self.pid,
            stage: Stage::Check,
            what: format!("fd {} ({}): {why}", self.fd, self.link),
        }
    }
}

/// stat of fd `fd` through its /proc link.
pub(crate) fn stat(pid: u32, fd: i32, link: &str) -> Result<std::fs::Metadata> {
    std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(|source| DumpError::Io {
        pid,
        stage: Stage::Check,
        what: format!("stat fd {fd} ({link})"),
        source,
    })
}

/// A kind's answer for one descriptor: claimed (`Some`), refused (`Err`),
/// or not this kind (`None`).
type Identify = fn(&mut Fd<'_>) -> Result<Option<FdKind>>;

/// The kinds, asked in this order: those known by their link first (a
/// /proc entry before O_PATH: an O_PATH descriptor of one is reopened like
/// any other), then O_PATH (any object can be opened so), then those known
/// by stat.
const KINDS: &[(&str, Identify)] = &[
    ("POSIX message queue", mqueue::identify),
    ("pipe", pipe::identify),
    ("eventfd", eventfd::identify),
    ("timerfd", timerfd::identify),
    ("signalfd", signalfd::identify),
    ("epoll", epoll::identify),
    ("inotify", inotify::identify),
    ("fanotify", fanotify::identify),
    ("TCP/UDP socket", inet::identify),
    ("unix socket (not connected)", unixbound::identify),
    ("unix socket", unix::identify),
    ("pidfd", pidfd::identify),
    ("/proc entry", procfile::identify),
    ("pseudo-terminal", pty::identify),
    ("O_PATH", opath::identify),
    ("saved file", saved::identify),
    ("fifo", fifo::identify),
    ("regular file", regular::identify),
    ("character device", chardev::identify),
];

/// Records every open descriptor; a descriptor no kind claims is refused.
pub(crate) fn collect_fds(pid: u32, shell_job: bool, sockets: &SockOpts) -> Result<Vec<FdEntry>> {
    let st = Stage::Check;
    let mut out = Vec::new();
    let mut unix = None;
    for fd in stasis_proc::list_fds(pid).at(pid, st)? {
        let link = stasis_proc::read_link(pid, &format!("fd/{fd}")).at(pid, st)?;
        let info = stasis_proc::read_fdinfo(pid, fd).at(pid, st)?;
        let mut d = Fd {
            pid,
            fd,
            link: &link,
            info: &info,
            shell_job,
            sockets,
            md: None,
            unix: &mut unix,
        };
        if let Some(key) = external_file(pid, fd, &link, &info, sockets) {
            out.push(FdEntry {
                fd,
                cloexec: info.flags & O_CLOEXEC != 0,
                kind: FdKind::ExternalFile {
                    key,
                    flags: d.flags(),
                },
                ofd: 0,
            });
            continue;
        }
        if let Some(why) = crate::memkinds::refuse_hugetlb_fd(pid, fd, &link) {
            return Err(d.refuse(&why));
        }
        if link.starts_with('/') {
            d.refuse_unreachable()?;
        }
        let mut kind = None;
        for (name, identify) in KINDS {
            kind = identify(&mut d)?;
            if let Some(k) = &kind {
                // A connection's queues may be megabytes: its own module
                // logs them by size.
                if matches!(k, FdKind::TcpConnection { .. }) {
                    log::trace!("pid {pid}: fd {fd} ({link}): {name}");
                } else {
                    log::trace!("pid {pid}: fd {fd} ({link}): {name} {k:?}");
                }
                break;
            }
        }
        let Some(kind) = kind else {
            if let Some(why) = crate::memkinds::refuse_fd(&link) {
                return Err(d.refuse(&why));
            }
            return Err(d.refuse(if link.starts_with('/') {
                "file type not supported yet"
            } else {
                "this kind of file is not supported yet"
            }));
        };
        out.push(FdEntry {
            fd,
            cloexec: info.flags & O_CLOEXEC != 0,
            kind,
            ofd: 0,
        });
    }
    Ok(out)
}

/// The key of descriptor `fd` if the caller named its file external
/// (criu's `file[MNT_ID:INODE]`, both in hex).
fn external_file(
    pid: u32,
    fd: i32,
    link: &str,
    info: &stasis_proc::FdInfo,
    opts: &SockOpts,
) -> Option<String> {
    if opts.ext_files.is_empty() || !link.starts_with('/') {
        return None;
    }
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
        .ok()?
        .ino();
    let key = format!("file[{:x}:{ino:x}]", info.mnt_id);
    opts.ext_files.contains(&key).then_some(key)
}

/// A kind's pass over the whole tree (every process collected).
type Link = fn(&mut [&mut ProcessImage]) -> Result<()>;

/// What links the descriptors of the whole tree, in this order: open file
/// descriptions first (every later step sees shared entries), then the
/// kinds whose objects span processes.
const LINKS: &[(&str, Link)] = &[
    ("open file descriptions", link_descriptions),
    ("descriptors in flight", in_flight::link),
    ("unix socket pairs", unix::link),
    ("unix listeners' waiting clients", unixbound::link),
    ("pipes", pipe::link),
    ("saved files", saved::link),
    ("fifos", fifo::link),
];

/// Links the descriptors and objects of every process of the tree.
pub(crate) fn link_tree(images: &mut [&mut ProcessImage], ghost_limit: u64) -> Result<()> {
    for (name, link) in LINKS {
        log::trace!("linking {name}");
        link(images)?;
    }
    saved::check_ghost_limit(images, ghost_limit)
}

/// A hash of a socket address for [`key`] (0: none).
fn addr_key(a: Option<&std::net::SocketAddr>) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(a) = a else { return 0 };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    a.hash(&mut h);
    h.finish()
}

/// Identity key for finding shared open file descriptions: only entries
/// with the same key are compared with kcmp.
fn key(k: &FdKind) -> (u8, u64, u64) {
    match k {
        FdKind::Regular { file, .. } => (0, file.dev, file.ino),
        FdKind::CharDevice { rdev, .. } => (1, *rdev, 0),
        FdKind::Pipe { id, write_end, .. } => (2, *id, u64::from(*write_end)),
        // Identified later (by kcmp within the bucket).
        FdKind::Saved { .. } => (3, 0, 0),
        FdKind::Path { .. } => (4, 0, 0),
        FdKind::Fifo { id, .. } => (5, *id, 0),
        FdKind::UnixSocket { id, .. } => (6, *id, 0),
        FdKind::EventFd { .. } => (7, 0, 0),
        FdKind::TimerFd { .. } => (9, 0, 0),
        FdKind::SignalFd { .. } => (10, 0, 0),
        FdKind::Epoll { .. } => (8, 0, 0),
        FdKind::Inotify { .. } => (11, 0, 0),
        FdKind::Fanotify { .. } => (21, 0, 0),
        // Sockets by address: a server's thousands of connections would
        // otherwise be compared pairwise.
        FdKind::TcpSocket { local, .. } => (14, addr_key(local.as_ref()), 0),
        FdKind::TcpConnection { local, peer, .. } => {
            (20, addr_key(Some(local)), addr_key(Some(peer)))
        }
        FdKind::UdpSocket { local, .. } => (15, addr_key(local.as_ref()), 0),
        FdKind::UnixBound { .. } => (16, 0, 0),
        FdKind::NetlinkSocket { portid, .. } => (22, u64::from(*portid), 0),
        FdKind::PacketSocket { .. } => (23, 0, 0),
        FdKind::RawSocket { .. } => (24, 0, 0),
        FdKind::ProcFile { .. } => (12, 0, 0),
        FdKind::Pidfd { .. } => (13, 0, 0),
        FdKind::PtyMaster { index, .. } => (17, u64::from(*index), 0),
        FdKind::PtySlave { index, .. } => (18, u64::from(*index), 0),
        FdKind::DevTty { index, .. } => (19, u64::from(*index), 0),
        FdKind::Mqueue { dev, .. } => (25, *dev, 0),
        FdKind::ExternalFile { .. } => (22, 0, 0),
    }
}

/// Kinds the processes open themselves at restore, once the tree exists
/// (they name processes): not in the restorer's hands before the fork.
fn is_opened_late(k: &FdKind) -> bool {
    matches!(
        k,
        FdKind::ProcFile { .. } | FdKind::Pidfd { .. } | FdKind::DevTty { .. }
    )
}

/// Entries sharing an open file description (kcmp) get the same `ofd` id.
fn link_descriptions(images: &mut [&mut ProcessImage]) -> Result<()> {
    // Per identity key: the (pid, fd, ofd id) of each distinct description seen.
    type Seen = Vec<(u32, i32, u64)>;
    let mut reps: HashMap<(u8, u64, u64), Seen> = HashMap::new();
    let mut next = 1u64;
    for img in images.iter_mut() {
        let pid = img.pid;
        for e in img.files.iter_mut() {
            let cands = reps.entry(key(&e.kind)).or_default();
            let mut found = None;
            for &(p2, fd2, id) in cands.iter() {
                if util::same_file(Pid(pid as i32), e.fd, Pid(p2 as i32), fd2)
                    .at(pid, Stage::Collect)?
                {
                    found = Some(id);
                    break;
                }
            }
            e.ofd = match found {
                Some(id) => id,
                None => {
                    let id = next;
                    next += 1;
                    cands.push((pid, e.fd, id));
                    id
                }
            };
        }
    }
    Ok(())
}

/// One process for the passes once PIDs are final: its PID in our
/// namespace (for /proc) and its image (in the image's numbering).
pub(crate) struct Proc<'a> {
    pub(crate) host: u32,
    pub(crate) image: &'a mut ProcessImage,
}

/// The tasks of the tree in the image's numbering: each process's thread
/// ids (its own PID included), and the zombies.
pub(crate) struct Tasks {
    procs: HashMap<u32, HashSet<u32>>,
    zombies: HashSet<u32>,
}

impl Tasks {
    fn new(procs: &[Proc<'_>], zombies: &[u32]) -> Tasks {
        Tasks {
            procs: procs
                .iter()
                .map(|p| (p.image.pid, p.image.threads.iter().map(|t| t.tid).collect()))
                .collect(),
            zombies: zombies.iter().copied().collect(),
        }
    }

    /// `pid` is a (live) process of the tree.
    fn is_process(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// The thread ids of process `pid`.
    fn tids(&self, pid: u32) -> Option<&HashSet<u32>> {
        self.procs.get(&pid)
    }

    /// `tid` is a thread (a leader too) of some process of the tree.
    fn is_task(&self, tid: u32) -> bool {
        self.procs.values().any(|s| s.contains(&tid))
    }

    fn is_zombie(&self, pid: u32) -> bool {
        self.zombies.contains(&pid)
    }

    /// `t` is a non-leader thread of a process other than `me`: it may
    /// not exist yet when `me` reopens its descriptors, since threads are
    /// made process by process.
    fn thread_of_another(&self, me: u32, t: u32) -> bool {
        !self.procs.contains_key(&t) && self.procs.iter().any(|(p, s)| *p != me && s.contains(&t))
    }
}

/// A descriptor of a kind the process reopens itself (`is_kind`) that
/// shares its open file description with another process (inherited
/// across fork) is refused: each process would open its own.
fn refuse_shared(procs: &[Proc<'_>], noun: &str, is_kind: fn(&FdKind) -> bool) -> Result<()> {
    let mut owners: HashMap<u64, HashSet<u32>> = HashMap::new();
    for p in procs {
        for e in p.image.files.iter().filter(|e| is_kind(&e.kind)) {
            owners.entry(e.ofd).or_default().insert(p.image.pid);
        }
    }
    for p in procs {
        for e in p.image.files.iter().filter(|e| is_kind(&e.kind)) {
            if owners.get(&e.ofd).is_some_and(|o| o.len() > 1) {
                return Err(DumpError::Unsupported {
                    pid: p.host,
                    stage: Stage::Check,
                    what: format!(
                        "fd {}: {noun} shared with another process (inherited across fork; not supported yet)",
                        e.fd
                    ),
                });
            }
        }
    }
    Ok(())
}

/// A kind's pass once the tree's PIDs are final (`pid_ns`: the tree is in
/// a PID namespace of its own).
type Finish = fn(&mut [Proc<'_>], &Tasks, bool) -> Result<()>;

/// The kinds whose descriptors name processes: each must name one of the
/// tree, in the image's numbering.
const FINISH: &[(&str, Finish)] = &[
    ("pidfds", pidfd::finish),
    ("/proc entries", procfile::finish),
];

/// Runs every kind's [`FINISH`] pass, after the PID namespace translation
/// (`zombies`: their PIDs, translated too).
pub(crate) fn finish_tree(
    procs: &mut [Proc<'_>],
    zombies: &[u32],
    pid_ns: bool,
    shell_job: bool,
) -> Result<()> {
    // Terminals: PIDs (sessions, groups) final, every descriptor known.
    pty::finish(procs, shell_job)?;
    let tasks = Tasks::new(procs, zombies);
    for (name, finish) in FINISH {
        log::trace!("checking {name}");
        finish(procs, &tasks, pid_ns)?;
    }
    Ok(())
}
