//! Restore a process from an image, driven from the outside.
//!
//! Named stages, in order (see [`restore`]):
//!
//! 1. **validate**: the whole image is loaded and checked (headers,
//!    checksums of metadata *and* page data, semantic rules) before
//!    anything is created.
//! 2. **preflight**: the PID must be free, every file must exist and be
//!    unchanged since the dump (size, mtime), and a free address for the
//!    restorer's syscall stub is chosen.
//! 3. **fork**: clone3 with `set_tid` creates the process with its old PID;
//!    the child places its file descriptors (plain Rust, raw syscalls only),
//!    then stops itself under ptrace (PTRACE_O_EXITKILL: if the restorer
//!    dies, the half-built process dies too).
//! 4. **memory**: by remote syscalls the child's address space is torn
//!    down and rebuilt: every mapping at its address, pages read from the
//!    page file in large preadv calls, protections, madvise, [vdso] moved,
//!    mm fields and the exe link set with PR_SET_MM_MAP.
//! 5. **attributes**: cwd, root, umask, personality, name, scheduling,
//!    rlimits, sigactions, sigaltstack, tid address, rseq.
//! 6. **creds**: credentials last but one, since they may take away the
//!    capabilities the steps before need; then dumpable and the
//!    parent-death signal, which a credential change resets.
//! 7. **registers**: blocked mask, XSAVE area, general registers (with the
//!    syscall-restart fix-up), then the process is detached and runs.
//!
//! Any failure kills the process being built and reports the stage.
//!
//! Where things are: the tree's stages in `tree.rs` (the reason for each
//! ordering constraint is written at its call), one process's stages in
//! `rebuild.rs`, each kind of descriptor in `kinds/`, and one module per
//! kind of process state (`attributes.rs`, `signals.rs`, `threads.rs`,
//! `timers.rs`, `creds.rs`, `memory.rs`, `shared.rs`).
#![forbid(unsafe_code)]

mod affinity;
mod attributes;
mod cgroupns;
mod cgroups;
mod creds;
mod creds_check;
mod fdowner;
mod fill_uffd;
mod guard;
mod hugetlb;
mod keyrings;
mod kinds;
pub mod lazy;
pub mod lazy_daemon;
pub mod lazy_source;
mod locks;
mod memory;
mod mntns;
mod netns;
mod netroute;
mod pids;
mod placement;
mod procattrs;
mod rebuild;
mod seccomp;
mod shared;
mod signals;
mod sysvipc;
mod threads;
mod timens;
mod timers;
pub mod tls;
mod tree;
mod userns;
mod xstate;

pub use cgroups::{CgroupMode, CgroupRoot};
pub use mntns::MountOptions;

/// criu's `--veth-pair IN=OUT[@BRIDGE]` / `--external veth[IN]:OUT[@BRIDGE]`:
/// the outer end of the tree's veth IN is made as OUT (in the restorer's
/// namespace) and, with a bridge, made its port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VethMap {
    pub inner: String,
    pub outer: String,
    pub bridge: Option<String>,
}

/// criu's `--external macvlan[IN]:OUT`: the tree's macvlan IN is made on
/// the restorer's device OUT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MacvlanMap {
    pub inner: String,
    pub outer: String,
}

/// How the tree's network namespace is made.
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// Outer names (and bridges) of veth pairs; unnamed ones get their
    /// saved name and bridge.
    pub veths: Vec<VethMap>,
    /// Lower devices of macvlan links; unnamed ones get their saved one.
    pub macvlans: Vec<MacvlanMap>,
    /// criu's `--join-ns net:PATH`: the tree is restored into this network
    /// namespace, taken as it is.
    pub join: Option<PathBuf>,
}

use stasis_image::{FileId, ImageDir, ImageError, ProcessImage};
use stasis_sys::{Pid, SysError};
use std::path::PathBuf;
use std::time::Instant;

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub images_dir: PathBuf,
    /// Restore even if a file changed size or mtime since the dump.
    pub allow_changed_files: bool,
    /// Restore into a fresh PID namespace (with a helper init as PID 1 if
    /// the root was not an init), so PIDs taken here do not matter.
    pub new_pid_ns: bool,
    /// criu's `--shell-job`: terminal descriptors are opened on the
    /// restorer's own terminal (the processes join its session).
    pub shell_job: bool,
    /// criu's `--manage-cgroups` (default: soft, as criu's).
    pub manage_cgroups: CgroupMode,
    /// criu's `--cgroup-root`, in the order given.
    pub cgroup_roots: Vec<CgroupRoot>,
    /// criu's `--tcp-close`: TCP connections are restored closed.
    pub tcp_close: bool,
    /// criu's `--root` and `--ext-mount-map`, for a tree with its own
    /// mount namespace.
    pub mounts: MountOptions,
    /// criu's `--veth-pair`, `--external veth[...]`, `--external macvlan[...]`, `--join-ns net:PATH`.
    pub net: NetOptions,
    /// criu's `--restore-sibling`: the process to wait for (the root, or
    /// the helper init of a new PID namespace) is created as a child of
    /// our parent (CLONE_PARENT), not of ours.
    pub sibling: bool,
    /// criu's `--lazy-pages`: the socket of the lazy-pages daemon that
    /// serves the private anonymous memory on demand (lazy.rs).
    pub lazy_pages: Option<PathBuf>,
}

/// A restored, running process (a child of the caller; with `sibling`,
/// of the caller's parent).
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    /// The root of the restored tree, as seen from here.
    pub pid: Pid,
    /// Our child (with `sibling`: our parent's), to wait for: the root, or
    /// the helper init of a new PID namespace (which exits with the root's
    /// status).
    pub wait_pid: Pid,
}

/// A restore stage, named in every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Validate,
    Preflight,
    Fork,
    Memory,
    Attributes,
    Creds,
    Registers,
    Resume,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Validate => "validate",
            Stage::Preflight => "preflight",
            Stage::Fork => "fork",
            Stage::Memory => "memory",
            Stage::Attributes => "attributes",
            Stage::Creds => "credentials",
            Stage::Registers => "registers",
            Stage::Resume => "resume",
        })
    }
}

impl Stage {
    fn parse(s: &str) -> Option<Stage> {
        [
            Stage::Validate,
            Stage::Preflight,
            Stage::Fork,
            Stage::Memory,
            Stage::Attributes,
            Stage::Creds,
            Stage::Registers,
            Stage::Resume,
        ]
        .into_iter()
        .find(|st| st.to_string() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restore: validate: {0}")]
    Image(#[from] ImageError),
    #[error("restore pid {pid}: {stage}: {what}")]
    Refused {
        pid: u32,
        stage: Stage,
        what: String,
    },
    #[error("restore pid {pid}: {stage}: {source}")]
    Sys {
        pid: u32,
        stage: Stage,
        #[source]
        source: SysError,
    },
    #[error("restore pid {pid}: {stage}: {what}: {source}")]
    Io {
        pid: u32,
        stage: Stage,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("restore pid {pid}: action {action} failed: {why}; nothing was restored")]
    Action {
        pid: u32,
        action: &'static str,
        why: String,
    },
}

pub type Result<T> = std::result::Result<T, RestoreError>;

pub use stasis_sys::hook::ActionHook;

/// Runs the action `name` (`pid`: the image's root, `host`: its PID here).
pub(crate) fn action(
    hook: &mut ActionHook<'_>,
    name: &'static str,
    pid: u32,
    host: i32,
) -> Result<()> {
    log::info!("pid {pid}: action {name}");
    hook(name, host).map_err(|why| RestoreError::Action {
        pid,
        action: name,
        why,
    })
}

pub(crate) trait At<T> {
    fn at(self, pid: u32, stage: Stage) -> Result<T>;
}

impl<T> At<T> for std::result::Result<T, SysError> {
    fn at(self, pid: u32, stage: Stage) -> Result<T> {
        self.map_err(|source| RestoreError::Sys { pid, stage, source })
    }
}

/// Test hook: `STASIS_FAULT=restore:<stage>` fails the restore right after
/// that stage, to prove a failure leaves nothing behind.
pub(crate) fn fault_point(pid: u32, stage: Stage) -> Result<()> {
    if let Ok(v) = std::env::var("STASIS_FAULT") {
        if v.strip_prefix("restore:").and_then(Stage::parse) == Some(stage) {
            return Err(RestoreError::Refused {
                pid,
                stage,
                what: "injected fault (STASIS_FAULT)".into(),
            });
        }
    }
    Ok(())
}

/// Test hook: `STASIS_FAULT=restore:skip-pid-check` skips the preflight's
/// free-PID check, so a PID taken after the preflight (a race) can be
/// tested: the fork stage must then fail and leave nothing.
fn skip_pid_check() -> bool {
    std::env::var("STASIS_FAULT").is_ok_and(|v| v == "restore:skip-pid-check")
}

/// Checks that a file the image refers to is still the one that was dumped.
fn check_file(pid: u32, f: &FileId, allow_changed: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = mntns::metadata(&f.path).map_err(|source| RestoreError::Io {
        pid,
        stage: Stage::Preflight,
        what: format!("file {}", f.path),
        source,
    })?;
    let is_reg = md.file_type().is_file();
    // An archive (tar, podman's checkpoint --export) keeps whole seconds:
    // the same size and second with no nanoseconds at all is that file
    // come back through one (a write would have set nanoseconds).
    let archived = md.mtime_nsec() == 0 && f.mtime_nsec != 0;
    let mtime_same = md.mtime() == f.mtime_sec && (md.mtime_nsec() == f.mtime_nsec || archived);
    if is_reg && archived && mtime_same && md.size() == f.size {
        log::info!(
            "pid {pid}: file {}: its mtime lost its nanoseconds ({}.{:09} -> {}.0), as an archive restores it: taken as the same file",
            f.path,
            f.mtime_sec,
            f.mtime_nsec,
            md.mtime()
        );
    }
    if is_reg && !allow_changed && (md.size() != f.size || !mtime_same) {
        return Err(RestoreError::Refused {
            pid,
            stage: Stage::Preflight,
            what: format!(
                "file {} changed since the dump (size {} -> {}, mtime {}.{:09} -> {}.{:09}); \
                 use --allow-changed-files to restore anyway",
                f.path,
                f.size,
                md.size(),
                f.mtime_sec,
                f.mtime_nsec,
                md.mtime(),
                md.mtime_nsec()
            ),
        });
    }
    Ok(())
}

/// Preflight checks on what the image asks for, before anything exists:
/// credentials an unprivileged caller could not obtain itself (see
/// creds_check.rs), and descriptor numbers no process can have.
fn preflight_image(
    img: &ProcessImage,
    core: &std::path::Path,
    caller: &creds_check::Caller,
) -> Result<()> {
    let pid = img.pid;
    let refused = |what: String| RestoreError::Refused {
        pid,
        stage: Stage::Preflight,
        what,
    };
    if !caller.is_root() {
        if let Some(why) = creds_check::refusal(caller, &img.creds) {
            return Err(refused(format!(
                "credentials refused: {why}; only root may restore credentials \
                 the caller could not obtain itself"
            )));
        }
    }
    let nofile = stasis_sys::util::raise_nofile();
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let limit = nofile.min(nr_open);
    // Room for the staging range the restorer moves descriptors through.
    let needed = img.files.len() as u64 * 2 + 64;
    if let Some(f) = img.files.iter().find(|f| f.fd as u64 + needed >= limit) {
        return Err(refused(format!(
            "{}: fd {} cannot be restored: the descriptor limit is {limit} \
             (RLIMIT_NOFILE hard limit / fs.nr_open)",
            core.display(),
            f.fd
        )));
    }
    Ok(())
}

/// Files [`preflight`] found unchanged: (path, size, mtime) as an image
/// names them. The processes of a tree map the same libraries: each is
/// looked at once.
type Checked = std::collections::HashSet<(String, u64, i64, i64)>;

fn preflight(
    img: &ProcessImage,
    opts: &RestoreOptions,
    pid_ns: bool,
    checked: &mut Checked,
) -> Result<()> {
    let pid = img.pid;
    // In a new PID namespace the image's PIDs cannot clash with ours.
    if !pid_ns && !skip_pid_check() && stasis_sys::util::pid_exists(Pid(pid as i32)) {
        return Err(RestoreError::Refused {
            pid,
            stage: Stage::Preflight,
            what: format!("PID {pid} is already in use by another process"),
        });
    }
    let mapped = img.mm.vmas.iter().filter_map(|v| match &v.kind {
        stasis_image::VmaKind::File { file } => Some(file),
        _ => None,
    });
    let open = img.files.iter().filter_map(|fd| match &fd.kind {
        stasis_image::FdKind::Regular { file, .. } => Some(file),
        _ => None,
    });
    for file in std::iter::once(&img.exe).chain(mapped).chain(open) {
        let key = (
            file.path.clone(),
            file.size,
            file.mtime_sec,
            file.mtime_nsec,
        );
        if !checked.contains(&key) {
            check_file(pid, file, opts.allow_changed_files)?;
            checked.insert(key);
        }
    }
    Ok(())
}

/// Builds the image's mount namespace, if it has one (mntns.rs).
fn mntns_first(
    image: &stasis_image::Image,
    opts: &RestoreOptions,
    held: Option<&userns::Held>,
) -> Result<Option<mntns::Built>> {
    let root = image.inventory.root_pid;
    let Some(ns) = image.inventory.mntns.as_ref() else {
        return Ok(None);
    };
    let cg = image.inventory.cgroups.as_ref();
    let remap = |m: &stasis_image::mntns::Mount, given: &str| {
        (m.fs_type == "cgroup" && opts.manage_cgroups != CgroupMode::Ignore)
            .then(|| {
                cgroups::bind_source(
                    cg,
                    &opts.cgroup_roots,
                    root,
                    (&m.super_options, &m.root),
                    given,
                )
            })
            .flatten()
            .map(|p| p.to_string_lossy().into_owned())
    };
    mntns::build(Some(ns), (&opts.mounts, held), &remap, root)
}

/// Restores the image in `opts.images_dir`. Returns once the process runs,
/// as a child of the caller. On error nothing of the restore is left.
pub fn restore(opts: &RestoreOptions) -> Result<Restored> {
    restore_with(opts, &mut |_, _| Ok(()))
}

/// [`restore`], calling `hook` at criu's points: `pre-restore` before
/// anything is done; `setup-namespaces` and `post-setup-namespaces` once
/// the tree's processes exist; `post-restore` and `pre-resume` when every
/// process is rebuilt and still stopped (a failure there still undoes the
/// whole tree); `post-resume` once it runs (a failure is only logged, as
/// in criu).
pub fn restore_with(opts: &RestoreOptions, mut hook: ActionHook<'_>) -> Result<Restored> {
    let t0 = Instant::now();
    let dir = ImageDir::open(&opts.images_dir)?;
    // A brief pre-dump round's memory was copied while the tree ran: it
    // is only ever a parent (the dump made on it is what restores).
    let inv = dir.load_inventory()?;
    if inv.pre_dump {
        return Err(RestoreError::Refused {
            pid: inv.root_pid,
            stage: Stage::Validate,
            what: format!(
                "{} is a pre-dump (its pages were copied while the tree ran): restore the dump made with --prev-images-dir on it",
                opts.images_dir.display()
            ),
        });
    }
    // A pre-copy image: its parents are loaded and verified too, and each
    // process gets one page file again (temporary, removed when `chain`
    // drops), before anything is created.
    let chain = match &opts.lazy_pages {
        Some(_) => stasis_image::chain::resolve_lazy(&dir, lazy::lazy_ranges)?,
        None => stasis_image::chain::resolve_chain(&dir)?,
    };
    let image = &chain.image;
    log::info!("image validated in {:?}", t0.elapsed());
    let root = image.inventory.root_pid;
    if image.processes.first().map(|p| p.pid) != Some(root) {
        return Err(RestoreError::Refused {
            pid: root,
            stage: Stage::Validate,
            what: "the root is not listed first".into(),
        });
    }
    // Objects outside the tree the caller must hand over (--inherit-fd).
    kinds::check_inherited(&image.processes, &opts.mounts.inherit)?;
    // The lazy-pages daemon first: any failure from here on ends it too.
    let _lazy = match &opts.lazy_pages {
        Some(socket) => Some(lazy::connect(socket, &image.processes)?),
        None => None,
    };
    fault_point(root, Stage::Validate)?;
    action(&mut hook, "pre-restore", root, -1)?;
    // Cgroups checked, and the missing ones made, before the mount
    // namespace: a cgroup v1 mount of the tree binds the tree's own cgroup,
    // which crun (unlike runc) makes only after the restore. Removed again
    // if the restore fails (dropped after the namespace and the tree).
    let mut cgroups = cgroups::prepare(
        image.inventory.cgroups.as_ref(),
        image.inventory.cgroup_ns.as_ref(),
        opts.manage_cgroups,
        &opts.cgroup_roots,
        root,
    )?;
    // The tree's user namespace before any namespace it owns (userns.rs).
    let user = userns::check(&image.inventory, opts)?;
    let held = match user {
        Some(u) => Some(userns::hold(&image.inventory, u)?),
        None => None,
    };
    // The tree's mount namespace next: the preflight looks for its files
    // inside it (and the restorer leaves it again on every error).
    let mnt = mntns_first(image, opts, held.as_ref())?;
    let mut checked = Checked::new();
    let caller = creds_check::Caller::current().map_err(|e| RestoreError::Refused {
        pid: image.inventory.root_pid,
        stage: Stage::Preflight,
        what: format!("reading the caller's credentials: {e}"),
    })?;
    for (img, r) in image.processes.iter().zip(&image.inventory.processes) {
        preflight_image(img, &dir.path().join(&r.core_file), &caller)?;
        preflight(
            img,
            opts,
            image.inventory.pid_ns || opts.new_pid_ns,
            &mut checked,
        )?;
        procattrs::preflight(img)?;
    }
    for z in image
        .inventory
        .zombies
        .iter()
        .filter(|_| !image.inventory.pid_ns && !opts.new_pid_ns)
    {
        if !skip_pid_check() && stasis_sys::util::pid_exists(Pid(z.pid as i32)) {
            return Err(RestoreError::Refused {
                pid: z.pid,
                stage: Stage::Preflight,
                what: format!("PID {} is already in use by another process", z.pid),
            });
        }
    }
    fault_point(root, Stage::Preflight)?;
    let pages: Vec<PathBuf> = chain.pages.clone();
    let calls0 = stasis_sys::remote::remote_syscalls();
    let trips0 = stasis_sys::remote::round_trips();
    let tree = tree::restore_tree(
        &image.processes,
        &pages,
        &image.inventory.zombies,
        &tree::Setting {
            pid_ns: image.inventory.pid_ns || opts.new_pid_ns,
            shell_job: opts.shell_job,
            ns: tree::TreeNs {
                user: held.as_ref(),
                uts: image.inventory.uts.as_ref(),
                time: image.inventory.time.as_ref(),
                cgroup: image.inventory.cgroup_ns.as_ref(),
                net: image.inventory.net.as_ref(),
                ipc: image.inventory.ipc.as_ref(),
            },
            cgroups: &cgroups,
            net: tree::Net {
                tcp_close: opts.tcp_close,
                lock: image.inventory.net_lock.as_ref(),
                opts: &opts.net,
            },
            sibling: opts.sibling,
            inherit: &opts.mounts.inherit,
        },
        &mut hook,
    );
    let (pid, wait_pid) = tree?;
    // The tree runs: the daemon streams the rest of the lazy pages.
    lazy::resumed(root)?;
    drop(mnt);
    cgroups.keep();
    if let Err(e) = hook("post-resume", pid.0) {
        log::error!("pid {pid}: action post-resume failed: {e} (the tree runs on)");
    }
    let threads: usize = image.processes.iter().map(|p| p.threads.len()).sum();
    log::info!("pid {pid}: restored in {:?}", t0.elapsed());
    log::debug!(
        "pid {pid}: {} remote syscalls in {} round trips for {} processes, {threads} threads, {} mappings",
        stasis_sys::remote::remote_syscalls() - calls0,
        stasis_sys::remote::round_trips() - trips0,
        image.processes.len(),
        image
            .processes
            .iter()
            .map(|p| p.mm.vmas.len())
            .sum::<usize>()
    );
    Ok(Restored { pid, wait_pid })
}
