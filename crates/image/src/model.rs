//! The metadata an image holds: plain serde structs, separate from any live
//! object. New fields must be `#[serde(default)]` so old images still load;
//! unknown fields are ignored so newer images load in older readers when the
//! format version allows it (see docs/image-format.md).

use serde::{Deserialize, Serialize};

pub use crate::hex_bytes;

pub use crate::limits::PAGE_SIZE;

/// `inventory.img`: the root of an image. It is written last, so a directory
/// without it is not an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Version of stasis that wrote the image.
    pub tool_version: String,
    /// Seconds since the epoch when the dump completed.
    pub created_unix: u64,
    /// `uname -r` of the dumping machine.
    pub kernel_release: String,
    /// PID of the root of the dumped tree.
    pub root_pid: u32,
    /// Every process of the tree, parents before children.
    pub processes: Vec<ProcessRef>,
    /// Whether the dump was taken with `--shell-job`.
    #[serde(default)]
    pub shell_job: bool,
    /// Children that had exited but were not yet reaped by their parent.
    #[serde(default)]
    pub zombies: Vec<Zombie>,
    /// The root was the init of its own PID namespace: every PID in the
    /// image is that namespace's, and a restore creates a new namespace.
    #[serde(default)]
    pub pid_ns: bool,
    /// The tree's own UTS namespace (the root's, shared by every process),
    /// when it differed from the dumper's; a restore creates a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts: Option<crate::uts::UtsNs>,
    /// The tree's own user namespace (maps, setgroups); the credentials
    /// in the process images are then as it sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ns: Option<crate::userns::UserNs>,
    /// The tree's own time namespace (the root's, shared by every
    /// process), when it differed from the dumper's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<crate::timens::TimeNs>,
    /// The tree's own network namespace (the root's, shared by every
    /// process), when it differed from the dumper's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<crate::netns::NetNs>,
    /// SysV IPC: the tree's own IPC namespace (every object and its
    /// sysctls), or the segments of the dumper's namespace the tree maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<crate::sysvipc::IpcNs>,
    /// The tree's own mount namespace (the root's, shared by every
    /// process), when it differed from the dumper's; a restore creates a
    /// new one with the same mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mntns: Option<crate::mntns::MountNs>,
    /// The cgroups of the tree's processes (absent in older images and in
    /// dumps with `--manage-cgroups=ignore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<crate::cgroups::Cgroups>,
    /// The tree's own cgroup namespace (the root's, shared by every
    /// process), when it differed from the dumper's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_ns: Option<crate::cgroupns::CgroupNs>,
    /// The image this one builds on (pre-copy): runs marked `in_parent`
    /// take their pages from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::chain::ParentLink>,
    /// Write tracking left running after this image (pre-dump): where the
    /// next round finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<crate::chain::Tracking>,
    /// A pre-dump whose pages were copied after the tree was resumed
    /// (brief round): a parent for a later dump only, never restored
    /// itself (its memory is not of one instant).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pre_dump: bool,
    /// The network lock the dump left on the tree's TCP connections; a
    /// successful restore releases it (crates/image/src/kinds/inet.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_lock: Option<crate::kinds::inet::NetLock>,
}

/// An exited, unreaped process: restored as a child that exits at once
/// with the same status, for its parent to collect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zombie {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// The wait status its parent will see (as from waitpid).
    pub exit_status: i32,
    /// Signal sent to the parent at exit (SIGCHLD normally).
    pub exit_signal: u32,
}

/// Where one process's state lives inside the image directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    /// File name of its [`ProcessImage`] (`core-PID.img`).
    pub core_file: String,
    /// File name of its raw page file (`pages-PID.img`).
    pub pages_file: String,
}

impl ProcessRef {
    /// The entry the writer produces for `pid`: `core-PID.img` and
    /// `pages-PID.img`.
    pub fn for_pid(pid: u32) -> ProcessRef {
        ProcessRef {
            pid,
            core_file: format!("core-{pid}.img"),
            pages_file: format!("pages-{pid}.img"),
        }
    }
}

/// `core-PID.img`: everything about one process except page contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessImage {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// Signal its parent gets when it exits (`clone` exit_signal; SIGCHLD normally).
    #[serde(default = "default_exit_signal")]
    pub exit_signal: u32,
    /// The process was stopped (SIGSTOP, SIGTSTP, ...) when dumped.
    #[serde(default)]
    pub stopped: bool,
    /// Process name (`/proc/PID/comm`), at most 15 bytes.
    pub comm: String,
    /// Target of `/proc/PID/exe`.
    pub exe: FileId,
    pub cwd: String,
    pub root: String,
    pub umask: u32,
    /// `personality(0xffffffff)` value.
    pub personality: u32,
    pub creds: Creds,
    pub rlimits: Vec<Rlimit>,
    pub sched: Sched,
    /// `prctl(PR_GET_PDEATHSIG)`.
    pub pdeath_signal: u32,
    /// `prctl(PR_GET_DUMPABLE)`.
    pub dumpable: u32,
    /// `arch_prctl(ARCH_GET_XCOMP_PERM)`: the XSAVE components the process
    /// may use, saved only on CPUs with components enabled on first use
    /// (AMX); 0 otherwise.
    #[serde(default)]
    pub xcomp_perm: u64,
    /// `arch_prctl(ARCH_GET_XCOMP_GUEST_PERM)`: the same for the KVM guests
    /// the process runs (a VMM asks for AMX for them), saved like
    /// `xcomp_perm`.
    #[serde(default)]
    pub xcomp_guest_perm: u64,
    /// Seccomp filters, oldest first (every thread's; empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seccomp: Vec<crate::seccomp::SeccompFilter>,
    /// One entry per signal 1..=64 whose disposition is not SIG_DFL.
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process (shared queue), oldest first.
    #[serde(default)]
    pub shared_pending: Vec<PendingSignal>,
    /// Interval timers (setitimer): real, virtual, prof.
    #[serde(default)]
    pub itimers: Vec<ITimer>,
    /// POSIX timers (timer_create), with their ids.
    #[serde(default)]
    pub posix_timers: Vec<PosixTimer>,
    /// Every thread, the thread-group leader first.
    pub threads: Vec<ThreadState>,
    pub files: Vec<FdEntry>,
    pub mm: MmState,
    /// Files whose contents the image holds (memfds, files deleted while
    /// open or mapped), each listed once in the image: in the first
    /// process that has it. Their bytes are in this process's page file.
    #[serde(default)]
    pub saved_files: Vec<SavedFile>,
    /// The controlling terminal: index N of the pseudo-terminal pair
    /// /dev/pts/N whose master is in the image (`None`: no controlling
    /// terminal, or the shell job's, which is the restorer's).
    #[serde(default)]
    pub ctty_pty: Option<u32>,
    /// File locks and leases held (dumped with `--file-locks`).
    #[serde(default)]
    pub file_locks: Vec<crate::FileLock>,
    /// Descriptors with a signal owner, a signal or O_ASYNC set.
    #[serde(default)]
    pub fd_owners: Vec<crate::FdOwner>,
    /// Per-process and per-thread settings (OOM score, THP, membarrier,
    /// sched attributes, ...); `None` in images that predate them.
    #[serde(default)]
    pub proc_attrs: Option<crate::ProcAttrs>,
    /// The working directory is a deleted directory: this [`SavedFile`] id
    /// (`SavedFileKind::DeletedDir`); 0 otherwise (`cwd` is then its path).
    #[serde(default)]
    pub cwd_saved: u64,
    /// A process in a PID namespace nested below the tree's root's: its
    /// PID at every level, from the root's namespace (`pid`, first) down
    /// to its own (last; 1 for a nested namespace's init). Empty for a
    /// process in the root's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ns_pids: Vec<u32>,
    /// Its children's PID namespace (pid_for_children) is the nested one
    /// of a child of its (unshare(CLONE_NEWPID), then fork), not its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pid_for_children_nested: bool,
    /// A session keyring of its own (joined with KEYCTL_JOIN_SESSION_KEYRING,
    /// as runc does for each container), with its keys; `None`: it uses
    /// the restorer's or its user's default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_keyring: Option<Keyring>,
}

/// A keyring as KEYCTL_DESCRIBE reports it, and the keys it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    /// Its serial at the dump: processes with the same serial shared it.
    pub serial: i32,
    /// Its description (the name KEYCTL_JOIN_SESSION_KEYRING took).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission mask (KEYCTL_SETPERM).
    pub perm: u32,
    /// Its keys, in the keyring's order.
    pub keys: Vec<Key>,
}

/// A key of type "user" held by a keyring, with its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub description: String,
    pub uid: u32,
    pub gid: u32,
    pub perm: u32,
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
}

/// A file object whose contents are saved in the image: referenced by
/// `FdKind::Saved` and `VmaKind::Saved` entries (in any process) with the
/// same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    /// Unique within the image, > 0.
    pub id: u64,
    pub kind: SavedFileKind,
    /// File size in bytes; the contents are `size` bytes at payload
    /// offset `offset` of the page file (page-aligned, padded with zeros
    /// to a whole page).
    pub size: u64,
    pub offset: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Device and inode at dump time (informational).
    pub dev: u64,
    pub ino: u64,
    /// Owner, restored with fchown (absent in older images: left to the restorer).
    #[serde(default)]
    pub owner: Option<crate::kinds::saved::Owner>,
    /// Access and modification times, set after the contents.
    #[serde(default)]
    pub times: Option<crate::kinds::saved::FileTimes>,
    /// Data extents (SEEK_DATA/SEEK_HOLE), sorted, disjoint, inside `size`:
    /// only these bytes are in the page file, each extent padded to whole
    /// pages; the rest of the file is holes. Absent: the whole file is stored.
    #[serde(default)]
    pub extents: Option<Vec<crate::kinds::saved::Extent>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SavedFileKind {
    /// memfd_create(2) object: its name (without the `memfd:` prefix) and
    /// seals (`F_GET_SEALS`; F_SEAL_SEAL alone = created without
    /// MFD_ALLOW_SEALING).
    Memfd { name: String, seals: u32 },
    /// A regular file unlinked while open or mapped: the path it had
    /// (without " (deleted)"). Restored as a new file in the same
    /// directory, unlinked again.
    Deleted { path: String },
    /// A directory removed while a process had it open or as its working
    /// directory (it is empty): restored as a new directory under the same
    /// parent, opened, and removed again.
    DeletedDir { path: String },
    /// A file made with open(DIR, O_TMPFILE) and never linked (its link
    /// reads `DIR/#INODE (deleted)`): made again in `dir` with O_TMPFILE,
    /// so linkat() through /proc/self/fd still gives it a name.
    Tmpfile { dir: String },
}

fn default_exit_signal() -> u32 {
    17
}

/// Identity of a regular file when it was dumped: restore refuses a file
/// whose size or mtime changed, unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: String,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    pub dev: u64,
    pub ino: u64,
    /// File mode bits (type and permissions) as `st_mode`.
    pub mode: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    /// Real, effective, saved, filesystem.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    /// `prctl(PR_GET_SECUREBITS)`.
    #[serde(default)]
    pub securebits: u32,
    /// `prctl(PR_GET_NO_NEW_PRIVS)`.
    #[serde(default)]
    pub no_new_privs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    /// `u64::MAX` is RLIM_INFINITY.
    pub cur: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sched {
    /// `SCHED_*` policy, including SCHED_RESET_ON_FORK if set.
    pub policy: u32,
    /// Real-time priority (0 for normal policies).
    pub rt_priority: u32,
    /// Nice value, -20..=19.
    pub nice: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub signo: u32,
    /// Handler address, or 1 for SIG_IGN.
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// x86-64 `struct user_regs_struct`, field for field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    pub tid: u32,
    /// Thread name (`/proc/PID/task/TID/comm`).
    pub comm: String,
    pub regs: UserRegs,
    /// The XSAVE area as returned by PTRACE_GETREGSET(NT_X86_XSTATE).
    #[serde(with = "hex_bytes")]
    pub xsave: Vec<u8>,
    /// Blocked signal mask (bit N-1 = signal N).
    pub sigmask: u64,
    pub sigaltstack: SigAltStack,
    /// `set_tid_address` value (`prctl(PR_GET_TID_ADDRESS)`).
    pub clear_child_tid: u64,
    /// rseq registration, if any.
    pub rseq: Option<Rseq>,
    /// Signals pending for this thread only, oldest first.
    #[serde(default)]
    pub pending: Vec<PendingSignal>,
    /// `set_robust_list` head and length (0, 0 if none).
    #[serde(default)]
    pub robust_list_head: u64,
    #[serde(default)]
    pub robust_list_len: u64,
    /// CPUs the thread may run on (sched_setaffinity), when it was bound to
    /// fewer than every CPU online at the dump; empty: not bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<u32>,
    /// In a process of a nested PID namespace: the thread's id at every
    /// level, from the tree's namespace (`tid`, first) down to the
    /// process's own (last). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ns_tids: Vec<u32>,
}

/// One armed interval timer (`getitimer`): times in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimer {
    /// ITIMER_REAL (0), ITIMER_VIRTUAL (1) or ITIMER_PROF (2).
    pub which: u32,
    pub interval_us: u64,
    /// Time left until it next fires.
    pub value_us: u64,
}

/// One POSIX timer: how it was created and how it is armed (times in ns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    pub id: i32,
    pub clock_id: i32,
    /// Kernel `sigev_notify` (SIGEV_SIGNAL 0, SIGEV_NONE 1, | SIGEV_THREAD_ID 4).
    pub notify: u32,
    pub signo: u32,
    pub sigev_value: u64,
    /// Thread the signal goes to with SIGEV_THREAD_ID (0 otherwise).
    pub notify_tid: u32,
    pub interval_ns: u64,
    /// Time left until it next fires (0: disarmed).
    pub value_ns: u64,
    /// Overruns at dump time (not restorable: the kernel resets them).
    #[serde(default)]
    pub overrun: i32,
}

/// A queued signal with its full `siginfo_t` (128 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSignal {
    pub signo: u32,
    #[serde(with = "hex_bytes")]
    pub info: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAltStack {
    pub sp: u64,
    pub flags: u32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub signature: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdEntry {
    pub fd: i32,
    pub cloexec: bool,
    pub kind: FdKind,
    /// Open file description: entries (in any process of the image) with the
    /// same non-zero `ofd` share one (one offset, one set of flags). 0: not shared.
    #[serde(default)]
    pub ofd: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FdKind {
    /// A regular file or directory opened by path.
    Regular {
        file: FileId,
        /// `O_*` flags from fdinfo, without O_CLOEXEC.
        flags: u32,
        pos: u64,
    },
    /// A character device (/dev/null, /dev/zero, a tty with --shell-job, ...).
    CharDevice { path: String, rdev: u64, flags: u32 },
    /// One end of a pipe (both ends in the image, or `external`). `id` is the
    /// pipe's inode; the bytes waiting in it and its capacity are stored
    /// with the first entry of each pipe (empty elsewhere).
    Pipe {
        id: u64,
        write_end: bool,
        flags: u32,
        #[serde(default, with = "hex_bytes")]
        data: Vec<u8>,
        #[serde(default)]
        capacity: u32,
        /// Its other end was outside the tree (runc's stdio pipes): its
        /// bytes stay there; a restore takes the pipe the caller hands it
        /// with criu's `--inherit-fd fd[N]:pipe:[ID]`, else refuses.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        external: bool,
    },
    /// A file the caller named external at the dump (criu's `--external
    /// file[MNT_ID:INODE]`, the key, with both numbers in hex): nothing of
    /// it is saved; a restore takes the descriptor the caller hands it
    /// with `--inherit-fd fd[N]:KEY` (the same open file description, as
    /// criu does), else refuses.
    ExternalFile { key: String, flags: u32 },
    /// An open file whose contents are in the image ([`SavedFile`] `id`):
    /// reopened with these flags at this offset.
    Saved { id: u64, flags: u32, pos: u64 },
    /// An `O_PATH` descriptor (flags include O_PATH, and O_NOFOLLOW for a
    /// symlink itself); `mode` is the `st_mode` of the object.
    Path { path: String, flags: u32, mode: u32 },
    /// One end of a named pipe (FIFO) at `path`; `id` is its inode. The
    /// waiting bytes and capacity are stored with the first entry of each
    /// FIFO in the image, like [`FdKind::Pipe`].
    Fifo {
        path: String,
        id: u64,
        flags: u32,
        #[serde(default, with = "hex_bytes")]
        data: Vec<u8>,
        #[serde(default)]
        capacity: u32,
    },
    /// One end of an unnamed, connected AF_UNIX socket (a socketpair), with
    /// nothing queued. `id` is its inode; `peer` the other end's (also in
    /// the image), or 0 if the other end had been closed.
    UnixSocket {
        id: u64,
        peer: u64,
        sock_type: u32,
        flags: u32,
        /// Data waiting to be read by this end, oldest first: one entry
        /// per message (datagram, seqpacket), one for a stream.
        #[serde(default)]
        queued: Vec<crate::kinds::unix::Queued>,
        /// SHUT_* state as sock_diag shows it (1 receive, 2 send).
        #[serde(default)]
        shutdown: u8,
        /// Options that differ from a new socket pair's, by name.
        #[serde(default)]
        opts: std::collections::BTreeMap<String, i32>,
        /// The name of an accepted connection (its listener's, as
        /// sock_diag gives it), empty for an unnamed end.
        #[serde(default, with = "crate::hex_bytes")]
        name: Vec<u8>,
        /// A client whose connection waits in this listener's accept
        /// queue (the listener's `id`), 0 for none; `peer` is then 0.
        #[serde(default)]
        listener: u64,
        /// A datagram socket connected to a named socket outside the tree
        /// (criu's `--ext-unix-sk`): that socket's name (a path, or `\0`
        /// and an abstract name), connected to again at restore; `peer`
        /// and `listener` are then 0. Empty for none.
        #[serde(default, with = "crate::hex_bytes")]
        ext_peer: Vec<u8>,
        /// A stream socket whose other end was outside the tree (criu's
        /// `--ext-unix-sk`: a service's stdout to journald, a D-Bus
        /// connection), with nothing queued: a restore takes the
        /// connected socket the caller hands it with criu's
        /// `--inherit-fd fd[N]:socket:[ID]`, else refuses; `peer` and
        /// `listener` are then 0.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        external: bool,
        /// SO_PEERCRED / SO_PEERGROUPS of this end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peercred: Option<crate::kinds::unix::PeerCred>,
        /// A client waiting in an accept queue (`listener` set): the
        /// process taken as the one that connected (the one process of
        /// the tree holding this end) with its effective ids and groups:
        /// what the server's end, once accepted, reports as SO_PEERCRED /
        /// SO_PEERGROUPS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connector: Option<crate::kinds::unix::PeerCred>,
    },
    /// An AF_UNIX socket that is not connected: bound to a path or an
    /// abstract name (or not bound), listening (its backlog) or not
    /// (crates/image/src/kinds/unixbound.rs).
    UnixBound {
        /// Its inode (a listener's clients name it).
        #[serde(default)]
        id: u64,
        /// A listener: the clients (`UnixSocket` ids, all in the image)
        /// whose connections wait to be accepted, in accept order.
        #[serde(default)]
        pending: Vec<u64>,
        sock_type: u32,
        /// As sock_diag reports it: a path with its trailing NUL, an
        /// abstract name starting with NUL; empty when not bound.
        #[serde(default, with = "crate::hex_bytes")]
        name: Vec<u8>,
        #[serde(default)]
        listening: bool,
        #[serde(default)]
        backlog: i32,
        /// A path's socket file: mode (permission bits), owner, group.
        #[serde(default)]
        mode: u32,
        #[serde(default)]
        uid: u32,
        #[serde(default)]
        gid: u32,
        /// Datagrams waiting (from unnamed senders), oldest first.
        #[serde(default)]
        queued: Vec<crate::kinds::unix::Queued>,
        #[serde(default)]
        opts: std::collections::BTreeMap<String, i32>,
        flags: u32,
        /// A listener: SO_PEERCRED / SO_PEERGROUPS, the credentials of
        /// the process that called listen() (what its clients see).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peercred: Option<crate::kinds::unix::PeerCred>,
    },
    /// A TCP socket that is not connected: a listener (its backlog) or a
    /// socket not yet listening, bound (`local`) or not
    /// (crates/image/src/kinds/inet.rs).
    TcpSocket {
        /// AF_INET (2) or AF_INET6 (10).
        family: u32,
        #[serde(default)]
        local: Option<std::net::SocketAddr>,
        #[serde(default)]
        listening: bool,
        #[serde(default)]
        backlog: i32,
        /// Options that differ from a new socket's, by name.
        #[serde(default)]
        opts: std::collections::BTreeMap<String, i32>,
        /// SO_BINDTODEVICE, empty for none.
        #[serde(default)]
        device: String,
        /// Options that are not ints (SO_LINGER, TCP_CONGESTION, IP_OPTIONS).
        #[serde(
            default,
            skip_serializing_if = "crate::kinds::inet::SockExtra::is_empty"
        )]
        extra: crate::kinds::inet::SockExtra,
        flags: u32,
    },
    /// A TCP connection (`--tcp-established`): its two ends, options and,
    /// unless it was dumped with `--tcp-close`, its repair-mode state
    /// (crates/image/src/kinds/inet.rs).
    TcpConnection {
        family: u32,
        local: std::net::SocketAddr,
        peer: std::net::SocketAddr,
        /// None: restored closed (criu's `--tcp-close`).
        #[serde(default)]
        stream: Option<Box<crate::kinds::inet::TcpStream>>,
        #[serde(default)]
        opts: std::collections::BTreeMap<String, i32>,
        #[serde(default)]
        device: String,
        /// Options that are not ints (SO_LINGER, TCP_CONGESTION, IP_OPTIONS).
        #[serde(
            default,
            skip_serializing_if = "crate::kinds::inet::SockExtra::is_empty"
        )]
        extra: crate::kinds::inet::SockExtra,
        flags: u32,
    },
    /// A UDP socket, bound and/or connected, with the datagrams waiting.
    UdpSocket {
        family: u32,
        #[serde(default)]
        local: Option<std::net::SocketAddr>,
        #[serde(default)]
        peer: Option<std::net::SocketAddr>,
        #[serde(default)]
        queued: Vec<crate::kinds::inet::UdpDatagram>,
        #[serde(default)]
        opts: std::collections::BTreeMap<String, i32>,
        #[serde(default)]
        device: String,
        /// Options that are not ints (SO_LINGER, TCP_CONGESTION, IP_OPTIONS).
        #[serde(
            default,
            skip_serializing_if = "crate::kinds::inet::SockExtra::is_empty"
        )]
        extra: crate::kinds::inet::SockExtra,
        flags: u32,
        /// Multicast group memberships.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        memberships: Vec<crate::kinds::inet::Membership>,
    },
    /// A netlink socket: protocol, bound port id, multicast groups,
    /// connected peer, options (crates/image/src/kinds/netsk.rs).
    NetlinkSocket {
        /// NETLINK_ROUTE (0), NETLINK_SOCK_DIAG (4), ...
        protocol: i32,
        /// SOCK_RAW or SOCK_DGRAM.
        sock_type: i32,
        /// The port id it is bound to (kernel-assigned or chosen); 0: not bound.
        portid: u32,
        /// The multicast groups it is in (numbers from 1).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<u32>,
        /// connect(2)'s destination port id and group (0, 0: not connected).
        #[serde(default)]
        dst_portid: u32,
        #[serde(default)]
        dst_group: u32,
        /// Options that differ from a new socket's, by name.
        #[serde(default)]
        opts: std::collections::BTreeMap<String, i32>,
        /// SO_ATTACH_FILTER's instructions (8 bytes each), empty for none.
        #[serde(
            default,
            with = "crate::hex_bytes",
            skip_serializing_if = "Vec::is_empty"
        )]
        filter: Vec<u8>,
        flags: u32,
    },
    /// A packet socket (AF_PACKET): protocol, interface, memberships,
    /// options, a classic BPF filter (crates/image/src/kinds/netsk.rs).
    PacketSocket {
        /// SOCK_RAW or SOCK_DGRAM.
        sock_type: i32,
        /// socket(2)'s protocol as SO_PROTOCOL reads it (network byte order).
        protocol: i32,
        /// The protocol it is bound to (host byte order: ETH_P_ALL is 3).
        num: u16,
        /// The interface it is bound to (0: every one).
        ifindex: i32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        members: Vec<crate::kinds::netsk::PacketMember>,
        #[serde(default)]
        opts: std::collections::BTreeMap<String, i32>,
        /// SO_ATTACH_FILTER's instructions (8 bytes each), empty for none.
        #[serde(
            default,
            with = "crate::hex_bytes",
            skip_serializing_if = "Vec::is_empty"
        )]
        filter: Vec<u8>,
        /// PACKET_FANOUT as getsockopt reads it (id | (type | flags) << 16),
        /// 0 for none.
        #[serde(default)]
        fanout: u32,
        flags: u32,
    },
    /// A raw IP socket (SOCK_RAW) or an ICMP "ping" socket (SOCK_DGRAM,
    /// IPPROTO_ICMP / IPPROTO_ICMPV6) (crates/image/src/kinds/netsk.rs).
    RawSocket {
        /// AF_INET (2) or AF_INET6 (10).
        family: u32,
        sock_type: i32,
        protocol: i32,
        /// bind(2)'s address (a ping socket: its port is the identifier).
        #[serde(default)]
        local: Option<std::net::SocketAddr>,
        #[serde(default)]
        peer: Option<std::net::SocketAddr>,
        #[serde(default)]
        opts: std::collections::BTreeMap<String, i32>,
        #[serde(default)]
        device: String,
        /// ICMP_FILTER (4 bytes) or ICMP6_FILTER (32 bytes); empty: a new
        /// socket's.
        #[serde(
            default,
            with = "crate::hex_bytes",
            skip_serializing_if = "Vec::is_empty"
        )]
        icmp_filter: Vec<u8>,
        /// Options that are not ints (SO_LINGER, IP_OPTIONS, a BPF filter).
        #[serde(
            default,
            skip_serializing_if = "crate::kinds::inet::SockExtra::is_empty"
        )]
        extra: crate::kinds::inet::SockExtra,
        flags: u32,
    },
    /// An eventfd with its counter.
    EventFd {
        count: u64,
        semaphore: bool,
        flags: u32,
    },
    /// A timerfd: clock, time left and interval (ns), expirations not yet read.
    TimerFd {
        clock_id: i32,
        flags: u32,
        value_ns: u64,
        interval_ns: u64,
        ticks: u64,
        /// timerfd_settime flags: TFD_TIMER_ABSTIME (1),
        /// TFD_TIMER_CANCEL_ON_SET (2).
        #[serde(default)]
        settime_flags: u32,
        /// With TFD_TIMER_ABSTIME: the absolute expiry on `clock_id`, in ns
        /// (the timer fires then, however long the process was dumped).
        #[serde(default)]
        expires_ns: u64,
    },
    /// A signalfd and its signal mask.
    SignalFd { mask: u64, flags: u32 },
    /// An epoll instance and what it watches: each target is a descriptor
    /// number of the same process (added again from that descriptor).
    Epoll {
        flags: u32,
        targets: Vec<EpollTarget>,
    },
    /// An inotify instance and its watches (crates/image/src/kinds/inotify.rs).
    Inotify {
        flags: u32,
        watches: Vec<crate::kinds::inotify::InotifyWatch>,
    },
    /// A fanotify group: fanotify_init's flags and event flags (as fdinfo
    /// shows them) and its inode marks (crates/image/src/kinds/fanotify.rs).
    Fanotify {
        flags: u32,
        init_flags: u32,
        event_flags: u32,
        marks: Vec<crate::kinds::fanotify::FanotifyMark>,
    },
    /// A file or directory under `/proc/PID` of a process of the image
    /// (`pid`, in the image's numbering, which is the numbering of the
    /// process's own /proc): reopened by the process itself, at `path`,
    /// once every process of the tree exists again
    /// (crates/image/src/kinds/procfile.rs).
    ProcFile {
        path: String,
        pid: u32,
        flags: u32,
        pos: u64,
    },
    /// A pidfd (pidfd_open, CLONE_PIDFD) for process or thread `pid` of the
    /// image; `flags` may hold O_NONBLOCK (PIDFD_NONBLOCK) and O_EXCL
    /// (PIDFD_THREAD). Reopened by the process itself on the restored one
    /// (crates/image/src/kinds/pidfd.rs).
    Pidfd { pid: u32, flags: u32 },
    /// The master of a pseudo-terminal pair whose master is in the image
    /// (/dev/ptmx): the pair is made again with the same `index`, its
    /// state from `pty` (crates/image/src/kinds/pty.rs).
    PtyMaster {
        index: u32,
        flags: u32,
        pty: crate::kinds::pty::PtyState,
    },
    /// The slave /dev/pts/`index` of a pair whose master is in the image,
    /// reopened from the restored master (TIOCGPTPEER).
    PtySlave { index: u32, flags: u32 },
    /// /dev/tty opened by a process whose controlling terminal is the
    /// slave /dev/pts/`index` of a pair in the image: opened again by the
    /// process itself, once its controlling terminal is back.
    DevTty { index: u32, flags: u32 },
    /// A POSIX message queue of the tree's own IPC namespace, `/name`
    /// (saved with its messages in `ipc.mqueues`); `dev`: its st_dev at
    /// the dump (the namespace's mqueue file system). Opened again by
    /// name in the new namespace with the access mode and O_NONBLOCK.
    Mqueue { name: String, dev: u64, flags: u32 },
}

impl FdKind {
    /// The open file status flags the descriptor had (fdinfo `flags:`
    /// without O_CLOEXEC). Every kind records them.
    pub fn flags(&self) -> u32 {
        match self {
            FdKind::Regular { flags, .. }
            | FdKind::CharDevice { flags, .. }
            | FdKind::Pipe { flags, .. }
            | FdKind::Saved { flags, .. }
            | FdKind::Path { flags, .. }
            | FdKind::Fifo { flags, .. }
            | FdKind::UnixSocket { flags, .. }
            | FdKind::TcpSocket { flags, .. }
            | FdKind::TcpConnection { flags, .. }
            | FdKind::UnixBound { flags, .. }
            | FdKind::UdpSocket { flags, .. }
            | FdKind::NetlinkSocket { flags, .. }
            | FdKind::PacketSocket { flags, .. }
            | FdKind::RawSocket { flags, .. }
            | FdKind::EventFd { flags, .. }
            | FdKind::TimerFd { flags, .. }
            | FdKind::SignalFd { flags, .. }
            | FdKind::Epoll { flags, .. }
            | FdKind::Inotify { flags, .. }
            | FdKind::Fanotify { flags, .. }
            | FdKind::ProcFile { flags, .. }
            | FdKind::Pidfd { flags, .. }
            | FdKind::PtyMaster { flags, .. }
            | FdKind::PtySlave { flags, .. }
            | FdKind::DevTty { flags, .. }
            | FdKind::Mqueue { flags, .. }
            | FdKind::ExternalFile { flags, .. } => *flags,
        }
    }
}

/// One registration of an epoll instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollTarget {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// Memory layout and the mm fields set with PR_SET_MM_MAP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmState {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// `/proc/PID/auxv` as (type, value) words, AT_NULL included.
    pub auxv: Vec<u64>,
    /// Every mapping, sorted by address, non-overlapping.
    pub vmas: Vec<Vma>,
    /// Runs of saved pages, sorted by address, each inside one VMA.
    pub pages: Vec<PageRun>,
    /// Pages (of VMAs with a `cow_owner`) that are the owner's, shared
    /// copy-on-write: not in this process's page file. Sorted.
    #[serde(default)]
    pub cow_pages: Vec<CowRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC bits.
    pub prot: u32,
    pub shared: bool,
    /// File offset for file mappings, else 0.
    pub pgoff: u64,
    pub kind: VmaKind,
    /// Mapping grows down (MAP_GROWSDOWN, the main stack).
    #[serde(default)]
    pub growsdown: bool,
    /// Mapped with MAP_NORESERVE (no swap accounting).
    #[serde(default)]
    pub noreserve: bool,
    /// A shared file mapping that may be made writable (VmFlags `mw`): the
    /// file was mapped through a descriptor open for writing, so it is
    /// mapped through one again, even when the mapping is read-only now.
    #[serde(default)]
    pub maywrite: bool,
    /// Private anonymous memory whose pages marked in `MmState::cow_pages`
    /// are still shared copy-on-write with this ancestor's VMA at the same
    /// address (PID in the image's numbering; 0: none). Restored from one
    /// copy, so memory is not doubled.
    #[serde(default)]
    pub cow_owner: u32,
    /// Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, /dev/zero): the
    /// kernel object's inode; every VMA with the same id, in any process,
    /// maps the same memory (at byte offset `pgoff`). 0: not shared.
    #[serde(default)]
    pub shmem: u64,
    /// Per-mapping flags (madvise, mlock, mseal) by name: see [`crate::VMA_ADVICE`].
    #[serde(default)]
    pub advice: Vec<String>,
    /// hugetlb memory (MAP_HUGETLB): its page size in bytes; 0: ordinary pages.
    #[serde(default)]
    pub huge_page_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VmaKind {
    /// Anonymous memory (private, or MAP_SHARED anonymous / /dev/zero).
    Anon,
    /// The brk heap (anonymous).
    Heap,
    /// A file mapping.
    File {
        file: FileId,
    },
    /// A mapping of a [`SavedFile`] (memfd, deleted file) at `pgoff`.
    Saved {
        id: u64,
    },
    Vdso,
    Vvar,
    VvarVclock,
    Vsyscall,
    /// An attachment (shmat) of the SysV shared memory segment `id` (in
    /// `Inventory::ipc`), `pgoff` bytes into it; `maywrite` false: attached
    /// SHM_RDONLY.
    SysvShm {
        id: i32,
    },
}

/// `nr_pages` pages at `addr` shared copy-on-write with an ancestor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CowRun {
    pub addr: u64,
    pub nr_pages: u64,
}

/// `nr_pages` pages at `addr`, stored at `offset` bytes into the page file's
/// payload (page-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    pub addr: u64,
    pub nr_pages: u64,
    pub offset: u64,
    /// The pages were not written since the parent image (pre-copy): their
    /// contents are the parent's pages at the same addresses, of the process
    /// with the same PID (`Inventory.parent`); `offset` is 0 and the run
    /// takes no bytes of this page file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_parent: bool,
}
