//! Checkpoint a running process from the outside.
//!
//! The dump runs as a flat sequence of stages (see [`dump`]):
//!
//! 1. **freeze**: PTRACE_SEIZE + PTRACE_INTERRUPT every thread; a guard
//!    ([`freeze::Frozen`]) puts every thread back as it was on every exit path.
//! 2. **check**: refuse what cannot be saved yet (threads, children,
//!    sockets, pipes, ...), naming the process and the resource, before
//!    anything is written.
//! 3. **collect**: /proc and ptrace state (maps, registers, XSAVE, fds, creds, ...);
//!    then **link**: what spans processes (shared descriptions, pipes,
//!    socket pairs, saved files, FIFOs, copy-on-write pages, PID namespace).
//!    Each kind of descriptor is a module of `kinds/`; each kind of process
//!    state has its own module (`threads.rs`, `signals.rs`, `timers.rs`,
//!    `pidns.rs`, `memory.rs`, `cow.rs`).
//! 4. **query**: state only the process can tell (sigactions, tid address,
//!    pdeath signal, ...) by self-healing remote syscalls.
//! 5. **memory**: page contents straight to the raw page file.
//! 6. **commit**: the image directory becomes complete atomically
//!    (inventory last); then the process is killed, or resumed with
//!    `leave_running`.
#![forbid(unsafe_code)]

mod affinity;
mod cgroupns;
mod cgroups;
mod checks;
mod collect;
mod cow;
mod fdowner;
pub mod freeze;
mod keyrings;
mod kinds;
mod landlock;
mod locks;
mod lsm;
mod memkinds;
mod memory;
mod mntns;
mod netlock;
mod netns;
mod pidns;
mod preread;
mod procattrs;
mod seccomp;
mod shmem;
mod signals;
mod stub_site;
mod sysvipc;
mod threads;
mod timens;
mod timers;
pub mod track;
mod userns;
mod uts;
mod write;

use stasis_image::{ImageError, ImageWriter, Inventory};
use stasis_proc::ProcError;
use stasis_sys::{Pid, SysError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to dump and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Root of the tree to dump.
    pub pid: u32,
    /// Image directory (created if missing).
    pub images_dir: PathBuf,
    /// Resume the process after the dump instead of killing it.
    pub leave_running: bool,
    /// Allow a controlling terminal and tty descriptors (criu's `--shell-job`).
    pub shell_job: bool,
    /// Save file locks and leases (criu's `--file-locks`); without it a
    /// process holding one is refused.
    pub file_locks: bool,
    /// Drop connections waiting in a listener's accept queue (criu's
    /// `--skip-in-flight`); without it such a listener is refused.
    pub skip_in_flight: bool,
    /// criu's `--ext-unix-sk`: datagram sockets connected to a named one
    /// outside the tree are saved (connected again by name at restore).
    pub ext_unix_sk: bool,
    /// criu's `--external unix[INO]`: the same for these sockets of the
    /// tree only.
    pub ext_unix_inos: Vec<u64>,
    /// criu's `--external file[MNT_ID:INODE]`: these files are saved as
    /// external, handed back with `--inherit-fd` at restore.
    pub ext_files: Vec<String>,
    /// criu's `--external dev[MAJOR/MINOR]:NAME`: a mount of that block
    /// device is saved under NAME, mounted from the device
    /// `--external dev[NAME]:DEVPATH` names at restore.
    pub ext_devs: Vec<((u32, u32), String)>,
    /// Save established TCP connections in repair mode (criu's
    /// `--tcp-established`), under a network lock.
    pub tcp_established: bool,
    /// Save TCP connections to be restored closed (criu's `--tcp-close`;
    /// no repair, no lock). Wins over `tcp_established`.
    pub tcp_close: bool,
    /// How the connections are locked (criu's `--network-lock`).
    pub network_lock: stasis_sys::netlock::Method,
    /// Give up (leaving the process running) after this long.
    pub timeout: Option<Duration>,
    /// Largest memfd or deleted file whose contents go into the image
    /// (criu's `--ghost-limit`; ours defaults to [`DEFAULT_GHOST_LIMIT`]).
    pub ghost_limit: u64,
    /// Save the tree's cgroups (false: criu's `--manage-cgroups=ignore`).
    pub cgroups: bool,
    /// The image this one builds on (criu's `--prev-images-dir`, relative
    /// to `images_dir`): pages unchanged since are recorded as in it.
    pub prev_images_dir: Option<PathBuf>,
    /// Keep tracking writes after this dump (criu's `--track-mem`; a
    /// pre-dump always does): only with `leave_running`.
    pub track_mem: bool,
    /// A pre-dump round (criu's `pre-dump`; with `leave_running` and
    /// `track_mem`): the tree is resumed as soon as the pages written since
    /// the last round are known and re-protected, and the pages are copied
    /// while it runs (see `track.rs`). The image is marked `pre_dump`: a
    /// parent for a later dump, never restored itself.
    pub pre_dump: bool,
    /// criu's `--ext-mount-map MOUNTPOINT:KEY` at dump (runc's `ext_mnt`):
    /// the mount at MOUNTPOINT of the tree's mount namespace is saved as
    /// external, to be bound at restore from what KEY is mapped to.
    pub ext_mounts: Vec<(String, String)>,
    /// When the tree is killed (not `leave_running`): free the memory of
    /// its large processes after their PIDs rather than before, so that a
    /// restore of the same PIDs right after can begin at once (`stasis
    /// migrate`; see `freeze::Frozen::keeper`). The dump then returns while
    /// that memory is still being freed, by processes sharing it.
    pub free_memory_later: bool,
}

impl DumpOptions {
    /// Whether the trackers carry on after this dump (`track_mem` with the
    /// tree left running).
    fn tracking(&self) -> bool {
        self.track_mem && self.leave_running
    }

    /// Whether this is a brief pre-dump round: the tree runs again once
    /// the written set is taken, while its pages are copied.
    fn brief(&self) -> bool {
        self.pre_dump && self.tracking()
    }
}

/// Default `--ghost-limit`: 1 GiB (criu's default is 1 MiB).
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 30;

/// Figures from a completed dump.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    /// How long the process was stopped: from the freeze until it was
    /// resumed or sent SIGKILL (a brief pre-dump round: until it was
    /// resumed, before its pages were copied).
    pub frozen: Duration,
    /// Bytes of page data written.
    pub page_bytes: u64,
    /// Bytes of pages recorded as unchanged since the parent image.
    pub parent_bytes: u64,
    /// With `free_memory_later`: what holds the killed tree's memory; it
    /// is freed once every clone of this is dropped (keep it until the
    /// restore of the same PIDs has begun, or let it go at once).
    pub keepers: Option<std::sync::Arc<freeze::Keepers>>,
    pub vmas: usize,
    pub page_runs: usize,
    /// The outer ends (in our namespace) of the veths of the tree's own
    /// network namespace: the kernel removes them when the killed tree's
    /// namespace is destroyed, which it does in the background.
    pub outer_links: Vec<String>,
    /// That namespace (`net:[INODE]`).
    pub netns: Option<String>,
}

/// A dump stage, named in every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Freeze,
    Check,
    Collect,
    Query,
    Memory,
    Write,
    Commit,
    Finish,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Freeze => "freeze",
            Stage::Check => "check",
            Stage::Collect => "collect",
            Stage::Query => "query",
            Stage::Memory => "memory",
            Stage::Write => "write image",
            Stage::Commit => "commit",
            Stage::Finish => "finish",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("dump pid {pid}: no such process")]
    NoProcess { pid: u32 },
    #[error("dump pid {pid}: {stage}: cannot dump {what}")]
    Unsupported {
        pid: u32,
        stage: Stage,
        what: String,
    },
    #[error("dump pid {pid}: {stage}: {source}")]
    Sys {
        pid: u32,
        stage: Stage,
        #[source]
        source: SysError,
    },
    #[error("dump pid {pid}: {stage}: {source}")]
    Proc {
        pid: u32,
        stage: Stage,
        #[source]
        source: ProcError,
    },
    #[error("dump pid {pid}: {stage}: {source}")]
    Image {
        pid: u32,
        stage: Stage,
        #[source]
        source: ImageError,
    },
    #[error("dump pid {pid}: {stage}: {what}: {source}")]
    Io {
        pid: u32,
        stage: Stage,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dump pid {pid}: {stage}: timed out after {secs} s; the process was left running")]
    Timeout { pid: u32, stage: Stage, secs: u64 },
    #[error("dump pid {pid}: action {action} failed: {why}; the process was left running")]
    Action {
        pid: u32,
        action: &'static str,
        why: String,
    },
}

pub type Result<T> = std::result::Result<T, DumpError>;

/// Error-mapping helpers so each call site names its stage.
pub(crate) trait At<T> {
    fn at(self, pid: u32, stage: Stage) -> Result<T>;
}

impl<T> At<T> for std::result::Result<T, SysError> {
    fn at(self, pid: u32, stage: Stage) -> Result<T> {
        self.map_err(|source| DumpError::Sys { pid, stage, source })
    }
}

impl<T> At<T> for std::result::Result<T, ProcError> {
    fn at(self, pid: u32, stage: Stage) -> Result<T> {
        self.map_err(|source| match &source {
            ProcError::Io { source: e, .. } if e.raw_os_error() == Some(libc::ESRCH) => {
                DumpError::NoProcess { pid }
            }
            _ => DumpError::Proc { pid, stage, source },
        })
    }
}

impl<T> At<T> for std::result::Result<T, ImageError> {
    fn at(self, pid: u32, stage: Stage) -> Result<T> {
        self.map_err(|source| DumpError::Image { pid, stage, source })
    }
}

/// Checks the deadline between stages.
pub(crate) struct Deadline {
    pid: u32,
    start: Instant,
    limit: Option<Duration>,
}

impl Deadline {
    pub(crate) fn check(&self, stage: Stage) -> Result<()> {
        match self.limit {
            Some(l) if self.start.elapsed() > l => Err(DumpError::Timeout {
                pid: self.pid,
                stage,
                secs: l.as_secs(),
            }),
            _ => Ok(()),
        }
    }
}

/// Test hooks: `STASIS_FAULT=dump:<stage>` makes the dump fail right after
/// that stage, to prove that failures leave the process as it was;
/// `STASIS_KILL_AT=dump:<stage>` (spaces as `-`) SIGKILLs the dumper there.
fn fault_point(pid: u32, stage: Stage) -> Result<()> {
    stasis_sys::hook::kill_point(&format!("dump:{}", stage.to_string().replace(' ', "-")));
    if let Ok(v) = std::env::var("STASIS_FAULT") {
        if v.strip_prefix("dump:") == Some(&stage.to_string()) {
            return Err(DumpError::Io {
                pid,
                stage,
                what: "injected fault (STASIS_FAULT)".into(),
                source: std::io::Error::other("injected"),
            });
        }
    }
    Ok(())
}

/// Dumps the process `opts.pid` into `opts.images_dir`.
///
/// On success the image directory holds a complete image and the process
/// is killed (or resumed with `leave_running`). On any error the process is
/// resumed exactly as it was and the directory holds no image.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats> {
    dump_with(opts, &mut |_, _| Ok(()))
}

pub use stasis_sys::hook::ActionHook;

fn action(hook: &mut ActionHook<'_>, name: &'static str, pid: u32) -> Result<()> {
    log::info!("pid {pid}: action {name}");
    hook(name, pid as i32).map_err(|why| DumpError::Action {
        pid,
        action: name,
        why,
    })
}

/// [`dump`], calling `hook` at criu's points: `pre-dump` before the tree
/// is frozen, `post-dump` once the image is complete and before the tree
/// is killed or resumed. A failed `post-dump` withdraws the image (its
/// inventory goes) and resumes the tree.
pub fn dump_with(opts: &DumpOptions, mut hook: ActionHook<'_>) -> Result<DumpStats> {
    let pid = opts.pid;
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(DumpError::NoProcess { pid });
    }
    if pid == std::process::id() {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what: "stasis itself".into(),
        });
    }
    let deadline = Deadline {
        pid,
        start: Instant::now(),
        limit: opts.timeout,
    };
    // The copy buffers hold the tree's memory: not kept past the dump.
    struct ClearPool;
    impl Drop for ClearPool {
        fn drop(&mut self) {
            memory::clear_pool();
        }
    }
    let _pool = ClearPool;
    let parent = match &opts.prev_images_dir {
        Some(prev) => Some(track::load_parent(pid, &opts.images_dir, prev)?),
        None => track::running_holder(pid),
    };
    action(&mut hook, "pre-dump", pid)?;
    let pre = preread::wanted(opts).then(|| preread::take(pid)).flatten();
    // A dump on top of a pre-copy round copies its pages frozen (a brief
    // round copies them while the tree runs): their files are allocated
    // now, sized by the round before, so that the frozen copy only copies.
    let reserve = match &parent {
        Some(p) if p.link.is_some() && !opts.brief() => {
            let t = Instant::now();
            let want = p.reserve();
            let r = stasis_image::PageReserve::new(&opts.images_dir, &want);
            // Two processes' pages are written at once.
            memory::warm_buffers(want.len());
            log::debug!(
                "pid {pid}: {} MiB of page files and the copy's buffers allocated ahead in {:?}",
                r.as_ref().map_or(0, |r| r.bytes()) >> 20,
                t.elapsed()
            );
            r
        }
        _ => None,
    };
    let t0 = Instant::now();
    let mut frozen = freeze::FrozenTree::freeze(Pid(pid as i32))?;
    log::info!(
        "pid {pid}: {} processes and {} zombies frozen in {:?}",
        frozen.procs.len(),
        frozen.zombies.len(),
        t0.elapsed()
    );
    let early = pre.map(|p| p.verify(&frozen)).unwrap_or_default();
    log::debug!("pid {pid}: pre-read checked at {:?}", t0.elapsed());
    // Declared after `frozen`: on error it is released (and repair mode
    // turned off) before the threads resume.
    let lock = if opts.tcp_established && !opts.tcp_close {
        netlock::lock_tree(&frozen, opts.network_lock)?
    } else {
        None
    };
    let net_lock = lock
        .as_ref()
        .filter(|_| !opts.leave_running)
        .and_then(|l| l.image());
    // On error `frozen` drops and resumes every thread as it was.
    let round = track::Round::new(parent.as_ref());
    let mut lock = lock;
    let (mut stats, trackers) = dump_frozen(
        &mut frozen,
        &mut lock,
        (t0, early),
        opts,
        &deadline,
        round,
        (net_lock, reserve),
    )?;
    if let Err(e) = action(&mut hook, "post-dump", pid) {
        let inv = opts.images_dir.join(stasis_image::INVENTORY_FILE);
        if let Err(re) = std::fs::remove_file(&inv) {
            log::error!("withdraw the image: remove {}: {re}", inv.display());
        }
        return Err(e);
    }
    stasis_sys::hook::kill_point("dump:release");
    // Stopped until released or sent SIGKILL; waiting for a killed tree to
    // be gone (its memory freed) is not frozen time.
    if stats.frozen.is_zero() {
        stats.frozen = t0.elapsed();
    }
    if opts.leave_running {
        if let Some(l) = lock {
            l.release()?;
        }
        frozen.release().at(pid, Stage::Finish)?;
        drop(trackers);
    } else {
        if opts.free_memory_later {
            let (killed, keepers) = frozen.kill_freeing_later(trackers);
            stats.keepers = Some(std::sync::Arc::new(keepers));
            killed.at(pid, Stage::Finish)?;
        } else {
            frozen.kill().at(pid, Stage::Finish)?;
            drop(trackers);
        }
        if let Some(l) = lock {
            l.keep();
        }
        if let Some(ns) = &stats.netns {
            wait_links_gone(pid, &stats.outer_links, ns);
        }
    }
    log::info!(
        "pid {pid}: dump done, process stopped for {:?} (the dump took {:?})",
        stats.frozen,
        t0.elapsed()
    );
    Ok(stats)
}

/// Waits (up to 10 s) until the outer ends of the killed tree's veths are
/// gone: the kernel destroys a dead network namespace `ns`, and with it
/// these links, from a work queue, and a restore right after the dump
/// would find their names taken. Not when something else holds the
/// namespace (a bind mount of ours, `ip netns add`; a process outside the
/// tree): it lives on, and its links with it.
fn wait_links_gone(pid: u32, names: &[String], ns: &str) {
    if names.is_empty() {
        return;
    }
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.contains(ns)));
    let entered = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_link(e.path().join("ns/net")).is_ok_and(|l| l.to_string_lossy() == ns)
            })
    };
    if mounted || entered() {
        return;
    }
    let end = Instant::now() + Duration::from_secs(10);
    let left = || {
        names
            .iter()
            .filter(|n| std::path::Path::new("/sys/class/net").join(n).exists())
            .count()
    };
    while left() > 0 {
        if Instant::now() > end {
            log::warn!(
                "pid {pid}: {} veth outer end(s) still there 10 s after the kill",
                left()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn dump_frozen(
    frozen: &mut freeze::FrozenTree,
    lock: &mut Option<netlock::Lock>,
    (t0, mut early): (Instant, std::collections::HashMap<u32, preread::Early>),
    opts: &DumpOptions,
    deadline: &Deadline,
    mut round: track::Round<'_>,
    (net_lock, reserve): (
        Option<stasis_image::kinds::inet::NetLock>,
        Option<stasis_image::PageReserve>,
    ),
) -> Result<(DumpStats, Vec<std::os::fd::OwnedFd>)> {
    let parent = round.parent();
    let tracking = opts.tracking();
    let root = opts.pid;
    fault_point(root, Stage::Freeze)?;
    deadline.check(Stage::Freeze)?;
    checks::check_tree(frozen, opts.shell_job)?;
    let tree_pids: Vec<u32> = frozen.procs.iter().map(|f| f.pid.0 as u32).collect();
    let zombies: Vec<u32> = frozen.zombies.iter().map(|z| z.pid).collect();
    sysvipc::refuse_lpid_outside(root, &tree_pids, &zombies)?;
    log::debug!("pid {root}: tree checked at {:?}", t0.elapsed());
    let sockets = kinds::SockOpts {
        skip_in_flight: opts.skip_in_flight,
        ext_unix_sk: opts.ext_unix_sk,
        ext_unix_inos: opts.ext_unix_inos.clone().into(),
        ext_files: opts.ext_files.clone().into(),
        tcp: match (opts.tcp_close, opts.tcp_established) {
            (true, _) => kinds::TcpMode::Close,
            (false, true) => kinds::TcpMode::Established,
            (false, false) => kinds::TcpMode::Refuse,
        },
    };
    let uts = uts::collect(Pid(root as i32))?;
    let user_ns = userns::collect(Pid(root as i32))?;
    let time = timens::collect(Pid(root as i32))?;
    let net = netns::collect(Pid(root as i32))?;
    log::debug!(
        "pid {root}: namespaces (uts, user, time, net) at {:?}",
        t0.elapsed()
    );
    let mntns = mntns::collect(
        Pid(root as i32),
        &tree_pids,
        &opts.ext_mounts,
        &opts.ext_devs,
    )?;
    // A tracker taken from the last round is re-armed with the page plan.
    round.armed = tracking && parent.is_some();
    let mut collected = Vec::with_capacity(frozen.procs.len());
    let mut shmem = shmem::Saved::default();
    let sysv_reads = sysvipc::remote_reads(root, &tree_pids)?;
    log::debug!(
        "pid {root}: mount namespace and SysV IPC at {:?}",
        t0.elapsed()
    );
    let mut witnesses = landlock::Witnesses::default();
    let ahead: Vec<u32> = tree_pids
        .iter()
        .copied()
        .filter(|p| !early.contains_key(p))
        .collect();
    std::thread::scope(|scope| -> Result<()> {
        let ahead = preread::Ahead::start(scope, ahead);
        for f in &mut frozen.procs {
            let pid = f.pid.0 as u32;
            let track = collect::TrackIn {
                taken: parent.and_then(|p| p.take_over(pid)),
                want_new: tracking,
            };
            let pre = early.remove(&pid).or_else(|| ahead.take(pid));
            collected.push(collect::collect(
                f,
                opts.shell_job,
                &sockets,
                &mut shmem,
                (track, pre),
                (
                    sysv_reads.get(&pid).map_or(&[][..], Vec::as_slice),
                    &mut witnesses,
                ),
            )?);
        }
        Ok(())
    })?;
    // The Landlock witnesses go now: one in the tree's PID namespace must
    // be reaped before that namespace's init can die.
    drop(witnesses);
    checks::parent_threads(&collected)?;
    checks::session_keyrings(&collected.iter().map(|c| &c.image).collect::<Vec<_>>())?;
    let mut ipc = sysvipc::collect(root, &collected)?;
    {
        let mut images: Vec<_> = collected.iter_mut().map(|c| &mut c.image).collect();
        kinds::link_tree(&mut images, opts.ghost_limit)?;
        kinds::inotify::refuse_unnamed_made_anew(&images, mntns.as_ref())?;
    }
    // After the open file descriptions are linked: a flock belongs to one.
    locks::collect(&mut collected, opts.file_locks)?;
    cow::find_shared(&mut collected)?;
    let pid_ns = pidns::translate_to_pid_ns(&mut collected, &mut frozen.zombies)?;
    if pid_ns {
        kinds::unix::peer_pids_in_pid_ns(&mut collected)?;
    }
    fdowner::collect(&mut collected)?;
    pidns::refuse_nested(&collected)?;
    // With the image's PIDs (final after the PID namespace translation).
    let cgroup_ns = cgroupns::collect(&frozen.procs)?;
    if let Some(u) = &user_ns {
        userns::check_owners(root)?;
        userns::refuse_with(
            root,
            &[(
                "SysV IPC objects of the dumper's IPC namespace",
                ipc.as_ref().is_some_and(|i| !i.ipc.own),
            )],
        )?;
        userns::translate_creds(&mut collected, u)?;
    }
    let cgroups = if opts.cgroups {
        let pids: Vec<u32> = collected.iter().map(|c| c.image.pid).collect();
        Some(cgroups::collect(&frozen.procs, &pids)?)
    } else {
        None
    };
    // Descriptors naming processes, once PIDs are final.
    kinds::finish_tree(
        &mut collected
            .iter_mut()
            .map(|c| kinds::Proc {
                host: c.host_pid,
                image: &mut c.image,
            })
            .collect::<Vec<_>>(),
        &frozen.zombies.iter().map(|z| z.pid).collect::<Vec<_>>(),
        pid_ns,
        opts.shell_job,
    )?;
    log::debug!("pid {root}: state collected at {:?}", t0.elapsed());
    for c in &mut collected {
        if let (Some(p), Some(pp)) = (parent, c.parent_pid) {
            track::use_parent(c, p, pp)?;
        }
    }
    log::debug!("pid {root}: unchanged pages found at {:?}", t0.elapsed());
    if tracking {
        round.armed = true;
        for c in collected.iter().filter(|c| !c.armed) {
            if let Some(fd) = &c.uffd {
                track::arm(c, fd)?;
            }
        }
        log::debug!("pid {root}: write tracking armed at {:?}", t0.elapsed());
    }
    fault_point(root, Stage::Collect)?;
    deadline.check(Stage::Collect)?;
    // A brief round: what was written since the last round is known and
    // re-protected, the layout and every other state taken: the tree runs
    // again while its pages are copied. A page it writes from now on is
    // marked written by its tracker and saved by the next round.
    let brief = opts.brief();
    let mut frozen_for = Duration::ZERO;
    if brief {
        if let Some(l) = lock.take() {
            l.release()?;
        }
        frozen.release_procs().at(root, Stage::Finish)?;
        frozen_for = t0.elapsed();
        log::info!(
            "pid {root}: tree resumed after {frozen_for:?} frozen; copying pages while it runs"
        );
    }

    // Dropping the writer on any error below removes everything it wrote.
    let mut writer = match reserve {
        Some(r) => ImageWriter::create_reserved(&opts.images_dir, r),
        None => ImageWriter::create(&opts.images_dir),
    }
    .at(root, Stage::Write)?;
    writer.set_hook(stasis_sys::hook::kill_point);
    let write::Written {
        refs,
        page_bytes,
        parent_bytes,
        vmas,
        page_runs,
    } = write::all(&writer, &mut collected, ipc.as_mut(), brief, deadline)?;
    log::debug!("pid {root}: pages written at {:?}", t0.elapsed());
    if brief {
        track::test_lose_copy_writes(&collected)?;
    }
    fault_point(root, Stage::Write)?;
    deadline.check(Stage::Write)?;
    let tracking = if tracking {
        let fds: Vec<(u32, u32, &std::os::fd::OwnedFd)> = collected
            .iter()
            .filter_map(|c| Some((c.host_pid, c.image.pid, c.uffd.as_ref()?)))
            .collect();
        let (t, holder) = track::spawn_holder(root, &fds)?;
        round.new_holder = Some(holder);
        Some(t)
    } else {
        None
    };
    let parent = parent.and_then(|p| p.link.clone());
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        kernel_release: stasis_sys::util::kernel_release(),
        root_pid: collected.first().map(|c| c.image.pid).unwrap_or(root),
        processes: refs,
        pid_ns,
        uts,
        user_ns,
        time,
        net,
        ipc: ipc.map(|s| s.ipc),
        mntns,
        cgroups,
        cgroup_ns,
        parent,
        tracking,
        pre_dump: brief,
        net_lock,
        shell_job: opts.shell_job,
        zombies: frozen
            .zombies
            .iter()
            .map(|z| stasis_image::Zombie {
                pid: z.pid,
                ppid: z.ppid,
                pgid: z.pgid,
                sid: z.sid,
                exit_status: z.exit_status,
                exit_signal: z.exit_signal,
            })
            .collect(),
    };
    fault_point(root, Stage::Commit)?;
    writer.commit(&inventory).at(root, Stage::Commit)?;
    log::debug!("pid {root}: image committed at {:?}", t0.elapsed());
    round.succeed();
    let outer_links = inventory
        .net
        .iter()
        .flat_map(|n| &n.links)
        .filter_map(|l| l.veth.as_ref().filter(|v| v.inside.is_none()))
        .map(|v| v.name.clone())
        .collect();
    let netns = std::fs::read_link(format!("/proc/{root}/ns/net"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned());
    // Our copies of the write trackers are closed only once the tree is
    // released or gone: closing the last one of a live process clears the
    // write protection of every page it tracked (a walk of its page
    // tables, about 100 ms for 4 GiB), which must not be frozen time.
    let trackers = collected.iter_mut().filter_map(|c| c.uffd.take()).collect();
    Ok((
        DumpStats {
            frozen: frozen_for,
            page_bytes,
            parent_bytes,
            keepers: None,
            vmas,
            page_runs,
            outer_links,
            netns,
        },
        trackers,
    ))
}
