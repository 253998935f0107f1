//! Restoring one process: fork it with its PID, rebuild it, resume it.

use crate::memory::{self, ServiceFds, STUB_LEN};
use crate::{affinity, xstate};
use crate::{fault_point, At, RestoreError, Result, Stage};
use stasis_image::{FdKind, ProcessImage, SavedFileKind, ThreadState, UserRegs, VmaKind, Zombie};
use stasis_sys::ptrace::{self, Regs};
use stasis_sys::remote::{restart_fixed, RemoteThread};
use stasis_sys::spawn::{self, FdPlan};
use stasis_sys::{util, Pid};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

pub(crate) fn image_to_regs(u: &UserRegs) -> Regs {
    Regs {
        r15: u.r15,
        r14: u.r14,
        r13: u.r13,
        r12: u.r12,
        rbp: u.rbp,
        rbx: u.rbx,
        r11: u.r11,
        r10: u.r10,
        r9: u.r9,
        r8: u.r8,
        rax: u.rax,
        rcx: u.rcx,
        rdx: u.rdx,
        rsi: u.rsi,
        rdi: u.rdi,
        orig_rax: u.orig_rax,
        rip: u.rip,
        cs: u.cs,
        eflags: u.eflags,
        rsp: u.rsp,
        ss: u.ss,
        fs_base: u.fs_base,
        gs_base: u.gs_base,
        ds: u.ds,
        es: u.es,
        fs: u.fs,
        gs: u.gs,
    }
}

// O_ASYNC too: open(2) records it without arming it, after which F_SETFL
// cannot arm it either (fdowner.rs sets it).
const OPEN_FLAGS_DROP: i32 =
    libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_ASYNC;

/// Every descriptor the restorer opened for the tree; shared open file
/// descriptions (same `ofd`) and pipes are opened once.
#[derive(Default)]
struct Opened {
    owned: Vec<OwnedFd>,
    by_ofd: HashMap<u64, usize>,
    /// pipe id -> (read end, write end) indices into `owned`
    pipes: HashMap<u64, (usize, usize)>,
    /// saved file id -> (index of the object's O_RDWR descriptor, seals)
    saved: HashMap<u64, (usize, u32)>,
    /// FIFO id -> index of a descriptor holding it open for reading and
    /// writing (so that opening either end never blocks).
    fifos: HashMap<u64, usize>,
    /// memfds to seal once every process has mapped them: (id, fd, seals).
    seal_later: Vec<(u64, OwnedFd, u32)>,
    /// `--shell-job`: the restorer's own terminal, which replaces the
    /// terminal the processes had.
    shell_tty: Option<String>,
    /// unix socket inode -> index of its end of a new socketpair.
    socks: HashMap<u64, usize>,
}

impl Opened {
    fn push(&mut self, fd: OwnedFd) -> usize {
        self.owned.push(fd);
        self.owned.len() - 1
    }
}

/// Descriptors one process needs, as indices into [`Opened::owned`].
struct ProcFiles {
    srcs: Vec<usize>,
    /// (index into `srcs`, target fd, close-on-exec)
    targets: Vec<(usize, i32, bool)>,
    pages_k: usize,
    exe_k: usize,
    files_k: HashMap<String, usize>,
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

/// Creates a pipe for `id` with its saved capacity and waiting bytes.
fn make_pipe(
    pid: u32,
    id: u64,
    procs: &[ProcessImage],
    opened: &mut Opened,
) -> Result<(usize, usize)> {
    let st = Stage::Fork;
    let (data, capacity) = waiting_bytes(procs, |k| match k {
        FdKind::Pipe {
            id: i,
            data,
            capacity,
            ..
        } if *i == id => Some((data.as_slice(), *capacity)),
        _ => None,
    });
    let (r, w) = util::pipe().at(pid, st)?;
    if capacity != 0 {
        util::set_pipe_capacity(&w, capacity).at(pid, st)?;
    }
    util::write_all(&w, data, &format!("fill pipe:[{id}]")).at(pid, st)?;
    let ri = opened.push(r);
    let wi = opened.push(w);
    opened.pipes.insert(id, (ri, wi));
    Ok((ri, wi))
}

const F_SEAL_SEAL: u32 = libc::F_SEAL_SEAL as u32;
const F_SEAL_WRITE_ANY: u32 = (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) as u32;

impl Opened {
    /// Creates every saved file of the image (memfds, files deleted while
    /// open) with its contents from the page file of the process that
    /// holds it, before anything is forked. Seals are added at the end
    /// ([`seal_saved`]), once every process has mapped the memfd.
    fn create_saved(&mut self, procs: &[ProcessImage], pages: &[std::path::PathBuf]) -> Result<()> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
        let st = Stage::Fork;
        for (img, pg) in procs.iter().zip(pages) {
            let pid = img.pid;
            for f in &img.saved_files {
                let io = |what: String| {
                    move |source: std::io::Error| RestoreError::Sys {
                        pid,
                        stage: st,
                        source: stasis_sys::SysError {
                            op: what,
                            pid: None,
                            source,
                        },
                    }
                };
                let (file, seals) = match &f.kind {
                    SavedFileKind::Memfd { name, seals } => {
                        let flags = if *seals == F_SEAL_SEAL {
                            0
                        } else {
                            libc::MFD_ALLOW_SEALING
                        };
                        let fd = util::memfd_create(name, flags).at(pid, st)?;
                        (std::fs::File::from(fd), *seals)
                    }
                    SavedFileKind::Deleted { path } => {
                        // Under its own name if free (the fd link then reads
                        // as before), else a temporary one; unlinked at once.
                        let p = Path::new(path);
                        let dir = p.parent().unwrap_or(Path::new("/"));
                        let mut opts = std::fs::OpenOptions::new();
                        opts.read(true)
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
                        let (file, at) = match opts.open(p) {
                            Ok(file) => (file, p.to_path_buf()),
                            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                                let at = dir.join(format!(".stasis-deleted-{pid}-{}", f.id));
                                let file = opts.open(&at).map_err(io(format!(
                                    "create {} for deleted file {path}",
                                    at.display()
                                )))?;
                                (file, at)
                            }
                            Err(e) => {
                                return Err(io(format!("recreate deleted file {path}"))(e));
                            }
                        };
                        std::fs::remove_file(&at)
                            .map_err(io(format!("unlink {}", at.display())))?;
                        (file, 0)
                    }
                };
                let what = format!("saved file {} ({:?})", f.id, f.kind);
                file.set_len(f.size)
                    .map_err(io(format!("ftruncate {what}")))?;
                let src = std::fs::File::open(pg).map_err(io(format!("open {}", pg.display())))?;
                let mut buf = vec![0u8; (1 << 20).min(f.size as usize)];
                let mut done = 0u64;
                while done < f.size {
                    let n = buf.len().min((f.size - done) as usize);
                    src.read_exact_at(
                        &mut buf[..n],
                        stasis_image::PAGES_HEADER_LEN + f.offset + done,
                    )
                    .map_err(io(format!("read {what} from {}", pg.display())))?;
                    file.write_all_at(&buf[..n], done)
                        .map_err(io(format!("fill {what}")))?;
                    done += n as u64;
                }
                file.set_permissions(std::fs::Permissions::from_mode(f.mode))
                    .map_err(io(format!("fchmod {what}")))?;
                let fd = OwnedFd::from(file);
                if seals & !F_SEAL_SEAL != 0 {
                    let dup = fd.try_clone().map_err(io(format!("dup {what}")))?;
                    self.seal_later.push((f.id, dup, seals));
                }
                let i = self.push(fd);
                self.saved.insert(f.id, (i, seals));
            }
        }
        Ok(())
    }

    /// The FIFO `path` (id `id`) held open read-write, filled with its
    /// saved bytes: opening either end then never blocks.
    fn fifo(&mut self, pid: u32, id: u64, path: &str, procs: &[ProcessImage]) -> Result<usize> {
        use std::os::unix::fs::FileTypeExt;
        if let Some(&i) = self.fifos.get(&id) {
            return Ok(i);
        }
        let st = Stage::Fork;
        let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
        if !is_fifo {
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!("{path} is no longer a FIFO"),
            });
        }
        let (data, capacity) = waiting_bytes(procs, |k| match k {
            FdKind::Fifo {
                id: i,
                data,
                capacity,
                ..
            } if *i == id => Some((data.as_slice(), *capacity)),
            _ => None,
        });
        let fd = util::open(path, libc::O_RDWR | libc::O_NONBLOCK).at(pid, st)?;
        if capacity != 0 {
            util::set_pipe_capacity(&fd, capacity).at(pid, st)?;
        }
        util::write_all(&fd, data, &format!("fill fifo {path}")).at(pid, st)?;
        let i = self.push(fd);
        self.fifos.insert(id, i);
        Ok(i)
    }
}

/// Adds the saved seals to every memfd, after every process has mapped it
/// (a write seal forbids new writable shared mappings).
fn seal_saved(pid: u32, seals: Vec<(u64, OwnedFd, u32)>) -> Result<()> {
    for (id, fd, s) in seals {
        util::add_seals(&fd, s).map_err(|source| RestoreError::Sys {
            pid,
            stage: Stage::Memory,
            source: stasis_sys::SysError {
                op: format!("saved file {id}: {}", source.op),
                ..source
            },
        })?;
    }
    Ok(())
}

/// Opens, in the restorer, every file a process needs: its descriptors
/// (flags, offset) and the service files (page file, exe, mapped files).
fn open_files(
    img: &ProcessImage,
    pages: &Path,
    procs: &[ProcessImage],
    opened: &mut Opened,
) -> Result<ProcFiles> {
    let pid = img.pid;
    let st = Stage::Fork;
    let mut srcs = Vec::new();
    let mut targets = Vec::new();
    for e in &img.files {
        let shared = (e.ofd != 0)
            .then(|| opened.by_ofd.get(&e.ofd).copied())
            .flatten();
        let idx = match (shared, &e.kind) {
            (Some(i), _) => i,
            (
                None,
                FdKind::Pipe {
                    id,
                    write_end,
                    flags,
                    ..
                },
            ) => {
                let (ri, wi) = match opened.pipes.get(id) {
                    Some(&p) => p,
                    None => make_pipe(pid, *id, procs, opened)?,
                };
                let i = if *write_end { wi } else { ri };
                let keep = (*flags as i32) & (libc::O_NONBLOCK | libc::O_DIRECT);
                util::set_status_flags(&opened.owned[i], keep).at(pid, st)?;
                i
            }
            (
                None,
                FdKind::UnixSocket {
                    id,
                    peer,
                    sock_type,
                    flags,
                },
            ) => {
                let i = match opened.socks.get(id) {
                    Some(&i) => i,
                    None => {
                        // One socketpair per pair; a lone end gets a closed peer.
                        let (a, b) =
                            stasis_sys::sockdiag::socketpair(*sock_type as i32).at(pid, st)?;
                        let ia = opened.push(a);
                        opened.socks.insert(*id, ia);
                        if *peer != 0 {
                            let ib = opened.push(b);
                            opened.socks.insert(*peer, ib);
                        }
                        ia
                    }
                };
                let keep = (*flags as i32) & libc::O_NONBLOCK;
                util::set_status_flags(&opened.owned[i], keep).at(pid, st)?;
                i
            }
            (
                None,
                FdKind::EventFd {
                    count,
                    semaphore,
                    flags,
                },
            ) => {
                let mut f = (*flags as i32) & libc::O_NONBLOCK;
                if *semaphore {
                    f |= libc::EFD_SEMAPHORE;
                }
                // The counter may exceed eventfd()'s 32-bit start value.
                let fd = util::eventfd(0, f).at(pid, st)?;
                if *count != 0 {
                    util::eventfd_add(&fd, *count).at(pid, st)?;
                }
                opened.push(fd)
            }
            (
                None,
                FdKind::TimerFd {
                    clock_id,
                    flags,
                    value_ns,
                    interval_ns,
                    ticks,
                },
            ) => {
                // Unread expirations cannot be set: a due timer fires again at once.
                let value = if *value_ns == 0 && *ticks > 0 {
                    1
                } else {
                    *value_ns
                };
                let keep = (*flags as i32) & libc::O_NONBLOCK;
                opened.push(util::timerfd(*clock_id, keep, value, *interval_ns).at(pid, st)?)
            }
            (None, FdKind::SignalFd { mask, flags }) => {
                let keep = (*flags as i32) & libc::O_NONBLOCK;
                opened.push(util::signalfd(*mask, keep).at(pid, st)?)
            }
            // Registered later by the process itself (`epoll_targets`):
            // epoll keys a registration by the registering descriptor number.
            (None, FdKind::Epoll { .. }) => opened.push(util::epoll_create().at(pid, st)?),
            (None, FdKind::Saved { id, flags, pos }) => {
                let &(obj, _) = opened.saved.get(id).ok_or_else(|| RestoreError::Refused {
                    pid,
                    stage: st,
                    what: format!("fd {}: saved file {id} is not in the image", e.fd),
                })?;
                // A new open file description of the same object.
                let again = format!("/proc/self/fd/{}", opened.owned[obj].as_raw_fd());
                let fd = util::open(&again, *flags as i32 & !OPEN_FLAGS_DROP).at(pid, st)?;
                if *pos != 0 {
                    util::seek_to(&fd, *pos, &format!("fd {}", e.fd)).at(pid, st)?;
                }
                opened.push(fd)
            }
            (
                None,
                FdKind::Fifo {
                    path, id, flags, ..
                },
            ) => {
                opened.fifo(pid, *id, path, procs)?;
                let flags = *flags as i32 & !OPEN_FLAGS_DROP;
                let fd = util::open(path, flags | libc::O_NONBLOCK).at(pid, st)?;
                if flags & libc::O_NONBLOCK == 0 {
                    let keep = flags & (libc::O_APPEND | libc::O_DIRECT);
                    util::set_status_flags(&fd, keep).at(pid, st)?;
                }
                opened.push(fd)
            }
            (None, kind) => {
                let (path, flags, pos) = match kind {
                    FdKind::Regular { file, flags, pos } => {
                        (file.path.as_str(), *flags as i32, *pos)
                    }
                    FdKind::CharDevice { path, flags, rdev } => {
                        let path = match &opened.shell_tty {
                            Some(tty) if is_tty(*rdev) => tty.as_str(),
                            _ => path.as_str(),
                        };
                        (path, *flags as i32, 0)
                    }
                    FdKind::Path { path, flags, .. } => (path.as_str(), *flags as i32, 0),
                    FdKind::Pipe { .. }
                    | FdKind::Saved { .. }
                    | FdKind::Fifo { .. }
                    | FdKind::UnixSocket { .. }
                    | FdKind::EventFd { .. }
                    | FdKind::TimerFd { .. }
                    | FdKind::SignalFd { .. }
                    | FdKind::Epoll { .. } => {
                        unreachable!("handled above")
                    }
                };
                let fd = util::open(path, flags & !OPEN_FLAGS_DROP).map_err(|source| {
                    RestoreError::Sys {
                        pid,
                        stage: st,
                        source: stasis_sys::SysError {
                            op: format!("fd {}: {}", e.fd, source.op),
                            ..source
                        },
                    }
                })?;
                if pos != 0 {
                    util::seek_to(&fd, pos, path).at(pid, st)?;
                }
                opened.push(fd)
            }
        };
        if e.ofd != 0 {
            opened.by_ofd.insert(e.ofd, idx);
        }
        targets.push((srcs.len(), e.fd, e.cloexec));
        srcs.push(idx);
    }
    let service =
        |path: &str, flags: i32, opened: &mut Opened, srcs: &mut Vec<usize>| -> Result<usize> {
            let fd = util::open(path, flags).at(pid, st)?;
            srcs.push(opened.push(fd));
            Ok(srcs.len() - 1)
        };
    // Never through a symlink swapped in since validation.
    let pages_k = service(
        &pages.to_string_lossy(),
        libc::O_RDONLY | libc::O_NOFOLLOW,
        opened,
        &mut srcs,
    )?;
    let exe_k = service(&img.exe.path, libc::O_RDONLY, opened, &mut srcs)?;
    let mut writes: HashMap<String, bool> = HashMap::new();
    for v in &img.mm.vmas {
        if let VmaKind::File { file } = &v.kind {
            *writes.entry(file.path.clone()).or_default() |=
                v.shared && v.prot & libc::PROT_WRITE as u32 != 0;
        }
    }
    let mut names: Vec<_> = writes.into_iter().collect();
    names.sort();
    let mut files_k = HashMap::new();
    // Saved files (memfds, deleted files) are mapped through the object
    // itself; shared read-only mappings of a write-sealed memfd through a
    // read-only descriptor.
    let mut saved: Vec<(u64, bool)> = img
        .mm
        .vmas
        .iter()
        .filter_map(|v| match v.kind {
            VmaKind::Saved { id } => Some((id, v.shared && v.prot & libc::PROT_WRITE as u32 == 0)),
            _ => None,
        })
        .collect();
    saved.sort_unstable();
    saved.dedup();
    for (id, ro_map) in saved {
        let &(obj, seals) = opened.saved.get(&id).ok_or_else(|| RestoreError::Refused {
            pid,
            stage: st,
            what: format!("mapping of saved file {id}, which is not in the image"),
        })?;
        let ro = ro_map && seals & F_SEAL_WRITE_ANY != 0;
        let key = memory::saved_key(id, ro);
        if files_k.contains_key(&key) {
            continue;
        }
        let k = if ro {
            let again = format!("/proc/self/fd/{}", opened.owned[obj].as_raw_fd());
            service(&again, libc::O_RDONLY, opened, &mut srcs)?
        } else {
            srcs.push(obj);
            srcs.len() - 1
        };
        files_k.insert(key, k);
    }
    for (path, write) in names {
        let k = service(
            &path,
            if write { libc::O_RDWR } else { libc::O_RDONLY },
            opened,
            &mut srcs,
        )?;
        files_k.insert(path, k);
    }
    Ok(ProcFiles {
        srcs,
        targets,
        pages_k,
        exe_k,
        files_k,
    })
}

/// Kills and reaps every process the restore created unless disarmed.
///
/// Invariant: a failed restore leaves no process of the tree behind, not
/// even a zombie. While the tree is built the restorer is a child
/// subreaper, so the orphans of every killed process are reparented to it
/// (never to whoever runs stasis) and reaped here. Only processes that are
/// descendants of our root, or our own children, *and* carry a PID of the
/// image are killed: a PID held by a foreign process (the reason a fork
/// failed) is never touched.
struct TreeGuard {
    armed: bool,
    root: Option<Pid>,
    /// Traced tasks: (process, its threads other than the leader).
    traced: Vec<(Pid, Vec<Pid>)>,
    /// Every PID of the image (processes and zombies).
    pids: std::collections::HashSet<i32>,
    /// The subreaper flag to put back when the guard ends.
    was_subreaper: bool,
}

impl TreeGuard {
    /// Descendants of `p` (not `p`) with image PIDs, as /proc shows them now.
    fn descendants(&self, p: Pid, out: &mut Vec<Pid>) {
        let mut queue = vec![p];
        while let Some(q) = queue.pop() {
            let tasks = stasis_proc::list_tasks(q.0 as u32).unwrap_or_default();
            for t in tasks {
                for c in stasis_proc::read_children(q.0 as u32, t).unwrap_or_default() {
                    let c = Pid(c as i32);
                    if self.pids.contains(&c.0) && !out.contains(&c) {
                        out.push(c);
                        queue.push(c);
                    }
                }
            }
        }
    }

    fn kill_all(&mut self) {
        let Some(root) = self.root else { return };
        log::warn!("pid {root}: killing the partly restored tree");
        // Found before anything dies, while every process is still where
        // the restore put it.
        let mut ours = vec![root];
        self.descendants(root, &mut ours);
        for &p in &ours {
            let _ = util::kill(p, libc::SIGKILL);
        }
        for (p, threads) in self.traced.iter().rev() {
            if *p != root {
                spawn::kill_and_reap_threads(*p, threads);
            }
        }
        let root_threads = self
            .traced
            .iter()
            .find(|(p, _)| *p == root)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        spawn::kill_and_reap_threads(root, &root_threads);
        // Orphans come to us as their parents die: kill (a fork may have
        // been in flight) and reap them until none of ours is left.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mine: Vec<Pid> = util::own_children()
                .into_iter()
                .filter(|c| self.pids.contains(&c.0))
                .collect();
            for &c in &mine {
                if !ours.contains(&c) {
                    ours.push(c);
                }
                self.descendants(c, &mut ours);
            }
            for &c in &ours {
                let _ = util::kill(c, libc::SIGKILL);
            }
            for &c in &mine {
                let _ = util::waitpid(c, libc::WNOHANG | libc::__WALL);
            }
            ours.retain(|&p| util::pid_exists(p));
            // Done only when a scan after the last death finds no child of
            // ours either: a process is reparented to us before its dead
            // parent can be reaped, so nothing can appear later.
            if ours.is_empty()
                && !util::own_children()
                    .iter()
                    .any(|c| self.pids.contains(&c.0))
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                log::warn!("pid {root}: processes of the failed restore still exist: {ours:?}");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if self.armed {
            self.kill_all();
        }
        if !self.was_subreaper {
            let _ = util::set_child_subreaper(false);
        }
    }
}

/// Restores every process of the image (parents first in `procs`) and
/// leaves them running; returns the root's PID.
pub(crate) fn restore_tree(
    procs: &[ProcessImage],
    pages: &[std::path::PathBuf],
    zombies: &[Zombie],
    pid_ns: bool,
    shell_job: bool,
) -> Result<(Pid, Pid)> {
    let root_pid = procs[0].pid;
    // 1. Files, opened once by the restorer and inherited through the forks.
    let mut opened = Opened::default();
    if shell_job {
        opened.shell_tty = Some(own_tty().ok_or_else(|| RestoreError::Refused {
            pid: procs[0].pid,
            stage: Stage::Fork,
            what: "--shell-job: stasis has no terminal on stdin, stdout or stderr to give the processes".into(),
        })?);
    }
    opened.create_saved(procs, pages)?;
    let mut files = Vec::with_capacity(procs.len());
    for (img, pg) in procs.iter().zip(pages) {
        files.push(open_files(img, pg, procs, &mut opened)?);
    }
    let (ready_r, ready_w) = util::pipe().at(root_pid, Stage::Fork)?;
    let max_target = procs
        .iter()
        .flat_map(|p| p.files.iter().map(|f| f.fd))
        .max()
        .unwrap_or(-1);
    let staging = util::max_open_fd().max(max_target) + 1;

    // 2. The tree plan: each process forked by its parent, zombies last.
    let index: HashMap<u32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    // A root whose session leader had exited (a daemon after a double
    // fork) gets that session back from a helper, when its PID is free.
    let tree_pids: std::collections::HashSet<u32> = procs
        .iter()
        .map(|p| p.pid)
        .chain(zombies.iter().map(|z| z.pid))
        .collect();
    let r0 = &procs[0];
    let session_helper = (!pid_ns
        && r0.sid != r0.pid
        && r0.sid != 0
        && !tree_pids.contains(&r0.sid)
        && !util::pid_exists(Pid(r0.sid as i32)))
    .then_some(r0.sid as i32);
    let mut plan = spawn::TreePlan {
        procs: Vec::new(),
        staging,
        ready_fd: ready_w.as_raw_fd(),
        new_pid_ns: pid_ns,
        session_helper,
    };
    let mut svcs = Vec::with_capacity(procs.len());
    for (img, f) in procs.iter().zip(&files) {
        let mut srcs: Vec<i32> = f
            .srcs
            .iter()
            .map(|&i| opened.owned[i].as_raw_fd())
            .collect();
        let ready_index = srcs.len();
        srcs.push(ready_w.as_raw_fd());
        let at = |i: usize| staging + i as i32;
        svcs.push((
            ServiceFds {
                pages: at(f.pages_k),
                exe: at(f.exe_k),
                files: f.files_k.iter().map(|(p, &i)| (p.clone(), at(i))).collect(),
                shmem: HashMap::new(),
                cow: HashMap::new(),
                image_pid: img.pid,
            },
            at(ready_index),
        ));
        plan.procs.push(spawn::ProcPlan {
            pid: img.pid as i32,
            exit_signal: img.exit_signal as i32,
            setsid: img.sid == img.pid,
            zombie_status: None,
            fds: FdPlan {
                staging,
                srcs,
                targets: f.targets.clone(),
            },
            ready_index,
            children: Vec::new(),
            group_helper: false,
        });
    }
    for (i, img) in procs.iter().enumerate().skip(1) {
        let parent = *index.get(&img.ppid).ok_or_else(|| RestoreError::Refused {
            pid: img.pid,
            stage: Stage::Fork,
            what: format!("parent {} is not in the image", img.ppid),
        })?;
        plan.procs[parent].children.push(i);
    }
    for z in zombies {
        let parent = *index.get(&z.ppid).ok_or_else(|| RestoreError::Refused {
            pid: z.pid,
            stage: Stage::Fork,
            what: format!("parent {} of the zombie is not in the image", z.ppid),
        })?;
        plan.procs.push(spawn::ProcPlan {
            pid: z.pid as i32,
            exit_signal: z.exit_signal as i32,
            zombie_status: Some(z.exit_status),
            ..Default::default()
        });
        let zi = plan.procs.len() - 1;
        plan.procs[parent].children.push(zi);
    }

    // Process groups whose leader had exited: a helper child of the first
    // member's parent holds the group until the members have joined it.
    let outside_group = (r0.pgid != r0.pid).then_some(r0.pgid);
    let mut group_helpers: Vec<(u32, usize)> = Vec::new();
    for img in procs.iter().skip(1) {
        let g = img.pgid;
        if g == 0
            || g == img.pid
            || tree_pids.contains(&g)
            || Some(g) == outside_group
            || Some(g as i32) == session_helper
            || group_helpers.iter().any(|h| h.0 == g)
        {
            continue;
        }
        if !pid_ns && util::pid_exists(Pid(g as i32)) {
            // Its members would end up in another group: refused, not
            // restored differently.
            return Err(RestoreError::Refused {
                pid: img.pid,
                stage: Stage::Preflight,
                what: format!(
                    "process group {g}: the PID of its exited leader is taken here, so the group \
                     cannot be recreated (free PID {g}, or restore with --new-pid-ns)"
                ),
            });
        }
        let Some(&parent) = index.get(&img.ppid) else {
            continue;
        };
        plan.procs.push(spawn::ProcPlan {
            pid: g as i32,
            exit_signal: libc::SIGCHLD,
            group_helper: true,
            fds: FdPlan {
                staging,
                srcs: vec![ready_w.as_raw_fd()],
                targets: Vec::new(),
            },
            ready_index: 0,
            ..Default::default()
        });
        let hi = plan.procs.len() - 1;
        plan.procs[parent].children.insert(0, hi);
        group_helpers.push((g, parent));
    }
    let expected_ready = procs.len() + group_helpers.len();

    // 3. The stub area, free in every process's layout, inherited by all.
    let mut stub = None;
    for cand in memory::stub_candidates(&procs[0].mm) {
        let clash = procs.iter().any(|p| {
            p.mm.vmas
                .iter()
                .any(|v| v.start < cand + STUB_LEN + 0x20000 && cand < v.end)
        });
        if !clash && spawn::map_stub_area(cand, STUB_LEN).is_ok() {
            stub = Some(cand);
            break;
        }
    }
    let stub = stub.ok_or_else(|| RestoreError::Refused {
        pid: root_pid,
        stage: Stage::Fork,
        what: "no free address for the restorer's stub area".into(),
    })?;
    // Shared anonymous objects, created here and inherited by every process.
    let mut shm_sizes: HashMap<u64, u64> = HashMap::new();
    for v in procs
        .iter()
        .flat_map(|p| &p.mm.vmas)
        .filter(|v| v.shmem != 0)
    {
        let e = shm_sizes.entry(v.shmem).or_default();
        *e = (*e).max(v.pgoff + (v.end - v.start));
    }
    let mut shmem: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut taken = vec![(stub, stub + STUB_LEN + 0x20000)];
    let mut ids: Vec<_> = shm_sizes.into_iter().collect();
    ids.sort_unstable();
    for (id, len) in ids {
        let mut placed = false;
        for cand in memory::free_candidates(&procs[0].mm, len) {
            let clash = procs.iter().any(|p| {
                p.mm.vmas
                    .iter()
                    .any(|v| v.start < cand + len + 0x10000 && cand < v.end)
            }) || taken
                .iter()
                .any(|&(a, b)| a < cand + len + 0x10000 && cand < b);
            if !clash && spawn::map_shared_anon(cand, len).is_ok() {
                shmem.insert(id, (cand, len));
                taken.push((cand, cand + len + 0x10000));
                placed = true;
                break;
            }
        }
        if !placed {
            spawn::unmap_stub_area(stub, STUB_LEN);
            for &(a, l) in shmem.values() {
                spawn::unmap_stub_area(a, l);
            }
            return Err(RestoreError::Refused {
                pid: root_pid,
                stage: Stage::Fork,
                what: format!("no free address for shared memory object {id} ({len} bytes)"),
            });
        }
    }
    // Private memory shared copy-on-write between a process and its
    // descendants: one copy, filled here with the owner's pages and
    // inherited by the whole tree through the forks.
    let cow = match make_cow_objects(procs, pages, &mut taken) {
        Ok(c) => c,
        Err(e) => {
            spawn::unmap_stub_area(stub, STUB_LEN);
            for &(a, l) in shmem.values() {
                spawn::unmap_stub_area(a, l);
            }
            return Err(e);
        }
    };
    for (s, _) in &mut svcs {
        s.shmem = shmem.clone();
        s.cow = cow.clone();
    }
    // Orphans of a failed restore must come to us (see TreeGuard).
    let was_subreaper = util::is_child_subreaper();
    if let Err(e) = util::set_child_subreaper(true) {
        log::warn!("pid {root_pid}: {e}: a failed restore may leave zombies to our parent");
    }
    let root = spawn::spawn_tree(&plan);
    spawn::unmap_stub_area(stub, STUB_LEN);
    for &(a, l) in shmem.values().chain(cow.values()) {
        spawn::unmap_stub_area(a, l);
    }
    drop(files);
    let seals = std::mem::take(&mut opened.seal_later);
    drop(opened);
    drop(ready_w);
    if root.is_err() && !was_subreaper {
        let _ = util::set_child_subreaper(false);
    }
    let top = root.map_err(|source| match source.errno() {
        Some(libc::EEXIST) => RestoreError::Refused {
            pid: root_pid,
            stage: Stage::Fork,
            what: format!("PID {root_pid} is already in use by another process"),
        },
        _ => RestoreError::Sys {
            pid: root_pid,
            stage: Stage::Fork,
            source,
        },
    })?;
    let mut guard = TreeGuard {
        armed: true,
        root: Some(top),
        traced: Vec::new(),
        pids: procs
            .iter()
            .map(|p| p.pid as i32)
            .chain(zombies.iter().map(|z| z.pid as i32))
            .collect(),
        was_subreaper,
    };
    // Helpers are ours to kill and reap on failure too.
    guard.pids.extend(
        group_helpers
            .iter()
            .map(|h| h.0 as i32)
            .chain(session_helper),
    );

    // 4. Wait until every live process reports ready (or a failure).
    let mut ready = 0;
    let mut buf = [0u8; 8 * 64];
    let mut pending: Vec<u8> = Vec::new();
    while ready < expected_ready {
        let n = util::read_timeout(&ready_r, &mut buf, 30_000).at(root_pid, Stage::Fork)?;
        if n == 0 {
            return Err(RestoreError::Refused {
                pid: root_pid,
                stage: Stage::Fork,
                what: format!(
                    "only {ready} of {} processes started within 30 s",
                    procs.len()
                ),
            });
        }
        pending.extend_from_slice(&buf[..n]);
        while pending.len() >= 8 {
            let pid = i32::from_le_bytes(pending[0..4].try_into().unwrap_or_default());
            let code = i32::from_le_bytes(pending[4..8].try_into().unwrap_or_default());
            pending.drain(..8);
            if code != 0 {
                let what = match code {
                    7 => format!("PID {pid} is already in use by another process"),
                    _ => format!(
                        "process {pid} failed to start: {}",
                        spawn::tree_failure(code)
                    ),
                };
                return Err(RestoreError::Refused {
                    pid: pid as u32,
                    stage: Stage::Fork,
                    what,
                });
            }
            ready += 1;
        }
    }
    // Our PIDs for the image's (the same ones unless in a new namespace).
    let host = host_pids(top, pid_ns).at(root_pid, Stage::Fork)?;
    let host_of = |pid: u32| -> Result<Pid> {
        host.get(&pid)
            .copied()
            .ok_or_else(|| RestoreError::Refused {
                pid,
                stage: Stage::Fork,
                what: format!("process {pid} did not appear in the restored tree"),
            })
    };
    let root = host_of(root_pid)?;
    // In a new namespace our PIDs of the tree differ from the image's.
    guard.pids.extend(host.values().map(|h| h.0));
    fault_point(root_pid, Stage::Fork)?;

    // 5. Seize every process (EXITKILL: if we die, they die).
    let mut remotes = Vec::with_capacity(procs.len());
    for img in procs {
        let p = host_of(img.pid)?;
        spawn::seize_waiting(p).at(img.pid, Stage::Fork)?;
        guard.traced.push((p, Vec::new()));
        remotes.push(
            RemoteThread::plain(p, stub, stub + 4096, STUB_LEN - 4096).at(img.pid, Stage::Fork)?,
        );
    }

    // 6. Process groups: leaders first, then members.
    let helper_groups: std::collections::HashSet<u32> = group_helpers.iter().map(|h| h.0).collect();
    set_process_groups(procs, &mut remotes, &helper_groups)?;
    // The members have joined: the group helpers go, reaped by their parents.
    for &(g, parent) in &group_helpers {
        let r = &mut remotes[parent];
        r.call(
            libc::SYS_kill,
            &[u64::from(g), libc::SIGKILL as u64],
            "kill group helper",
        )
        .at(procs[parent].pid, Stage::Attributes)?;
        r.call(
            libc::SYS_wait4,
            &[u64::from(g), 0, libc::__WALL as u64, 0],
            "reap group helper",
        )
        .at(procs[parent].pid, Stage::Attributes)?;
    }

    // 7. Rebuild each process; all stay stopped until every one is done.
    let mut built = Vec::with_capacity(procs.len());
    for (k, (img, r)) in procs.iter().zip(remotes).enumerate() {
        let threads = rebuild(img, r, &svcs[k].0, svcs[k].1, stub, &mut guard, k)?;
        built.push(threads);
    }
    seal_saved(root_pid, seals)?;
    fault_point(root_pid, Stage::Registers)?;
    // The last instant a failure can still undo everything.
    fault_point(root_pid, Stage::Resume)?;

    // The helper init of a new namespace must outlive us: clear the
    // parent-death signal that tied it to the restore until now.
    if top != root {
        release_helper(top, stub).at(root_pid, Stage::Resume)?;
    }

    // 8. Resume: children before parents; stopped processes stay stopped.
    for (img, tids) in procs.iter().zip(&built).rev() {
        for &tid in tids.iter().rev() {
            let sig = if img.stopped && tid == tids[0] {
                libc::SIGSTOP
            } else {
                0
            };
            ptrace::detach(tid, sig).at(img.pid, Stage::Resume)?;
        }
    }
    // The session helper goes last: the root is reparented to us (a child
    // subreaper while restoring), and its parent-death signal is the
    // image's by now.
    let wait_pid = if session_helper.is_some() && top != root {
        let _ = util::kill(top, libc::SIGKILL);
        let _ = util::waitpid(top, libc::__WALL);
        root
    } else {
        top
    };
    guard.armed = false;
    Ok((root, wait_pid))
}

/// setpgid in each process: group leaders first. A group whose leader is
/// not part of the tree stays the restorer's (the root's group, normally).
fn set_process_groups(
    procs: &[ProcessImage],
    remotes: &mut [RemoteThread],
    helpers: &std::collections::HashSet<u32>,
) -> Result<()> {
    let pids: std::collections::HashSet<u32> = procs.iter().map(|p| p.pid).collect();
    let root = &procs[0];
    let mut order: Vec<usize> = (0..procs.len()).collect();
    order.sort_by_key(|&i| procs[i].pgid != procs[i].pid);
    for i in order {
        let img = &procs[i];
        if img.pgid == 0 || (img.pgid == root.pgid && root.pgid != root.pid) {
            continue; // the root's outside group: inherited from the restorer
        }
        if !pids.contains(&img.pgid) && !helpers.contains(&img.pgid) {
            log::warn!(
                "pid {}: process group {} has no leader in the tree; left in the restorer's group",
                img.pid,
                img.pgid
            );
            continue;
        }
        let host = remotes[i].tid().0 as u32;
        let current = stasis_proc::read_status(host)
            .ok()
            .and_then(|s| s.ns_pgid.last().copied())
            .unwrap_or(0);
        if current == img.pgid {
            continue; // a session leader is its own group already
        }
        let arg = if img.pgid == img.pid {
            0
        } else {
            u64::from(img.pgid)
        };
        remotes[i]
            .call(
                libc::SYS_setpgid,
                &[0, arg],
                &format!("setpgid(0, {})", img.pgid),
            )
            .at(img.pid, Stage::Attributes)?;
    }
    Ok(())
}

/// Rebuilds one seized process completely and leaves every thread stopped
/// with its final registers. Returns its tids, leader first.
fn rebuild(
    img: &ProcessImage,
    mut r: RemoteThread,
    svc: &ServiceFds,
    ready_fd: i32,
    stub: u64,
    guard: &mut TreeGuard,
    k: usize,
) -> Result<Vec<Pid>> {
    let pid = img.pid;
    let child = r.tid();
    // Remote syscalls are cheapest with both on one CPU (best effort).
    let pin = util::CpuPin::new(child).ok();
    let spread = pin.as_ref().map(|p| p.original().to_vec());
    // Refused before the address space is touched if this CPU cannot hold it.
    let xsaves = xstate::fit(img, child)?;
    crate::procattrs::before_memory(&mut r, img)?;
    memory::rebuild(&mut r, &img.mm, svc, stub, spread.as_deref())?;
    fault_point(pid, Stage::Memory)?;
    attributes(&mut r, img)?;
    // AMX permission before threads and altstacks (see xstate::permit).
    xstate::permit(&mut r, img)?;
    thread_attributes(&mut r, pid, &img.threads[0])?;
    xstate::warm(&mut r, pid, &xsaves[0])?;
    // Threads, created by the leader; each then sets up what is its own.
    let mut threads = Vec::with_capacity(img.threads.len() - 1);
    for (t, area) in img.threads[1..].iter().zip(&xsaves[1..]) {
        let tid = create_thread(&mut r, pid, t.tid)?;
        guard.traced[k].1.push(tid);
        let mut tr = RemoteThread::plain(tid, stub, stub + 4096, STUB_LEN - 4096)
            .at(pid, Stage::Attributes)?;
        thread_attributes(&mut tr, pid, t)?;
        xstate::warm(&mut tr, pid, area)?;
        threads.push(tr);
    }
    // Timers after the threads (one may be the target of a timer's signal).
    timers(&mut r, img)?;
    epoll_targets(&mut r, img)?;
    crate::procattrs::after_threads(&mut r, &mut threads, img)?;
    fault_point(pid, Stage::Attributes)?;
    // Credentials are per thread in the kernel: every thread sets its own,
    // unless they are already the ones every thread inherited from us.
    let same = creds_inherited(img);
    for tr in &mut threads {
        creds(tr, img, same, false)?;
    }
    creds(&mut r, img, same, true)?;
    fault_point(pid, Stage::Creds)?;

    // The last remote calls: close service descriptors, drop the stub.
    let mut svc_fds: Vec<i32> = vec![svc.pages, svc.exe, ready_fd];
    svc_fds.extend(svc.files.values().copied());
    svc_fds.sort_unstable();
    svc_fds.dedup();
    for fd in svc_fds {
        r.call(libc::SYS_close, &[fd as u64], "close service fd")
            .at(pid, Stage::Registers)?;
    }
    // Descriptor owners and file locks: after the threads, the credentials
    // and the closes above (see their modules).
    crate::fdowner::restore(&mut r, img)?;
    crate::locks::restore(&mut r, img)?;
    for &(a, l) in svc.shmem.values().chain(svc.cow.values()) {
        r.call(libc::SYS_munmap, &[a, l], "munmap inherited shared memory")
            .at(pid, Stage::Registers)?;
    }
    r.call(libc::SYS_munmap, &[stub, STUB_LEN], "munmap stub area")
        .at(pid, Stage::Registers)?;

    let mut tids = vec![child];
    tids.extend(threads.iter().map(|t| t.tid()));
    for ((t, &tid), area) in img.threads.iter().zip(&tids).zip(&xsaves) {
        ptrace::set_sigmask(tid, t.sigmask).at(pid, Stage::Registers)?;
        if !area.is_empty() {
            ptrace::set_xstate(tid, area).at(pid, Stage::Registers)?;
        }
        // Stopped at a syscall exit, the kernel applies no restart logic: do it.
        ptrace::set_regs(tid, &restart_fixed(&image_to_regs(&t.regs))).at(pid, Stage::Registers)?;
    }
    // Threads created while pinned inherited the pin: give every one the
    // original mask back.
    if let Some(pin) = pin {
        for &tid in &tids[1..] {
            util::set_affinity(tid, pin.original()).at(pid, Stage::Resume)?;
        }
        pin.release().at(pid, Stage::Resume)?;
    }
    // Scheduling attributes first: a bound thread cannot have become
    // SCHED_DEADLINE, which needs every CPU.
    crate::procattrs::finish(img, &tids)?;
    affinity::apply(pid, &img.threads, &tids)?;
    Ok(tids)
}

fn cstr_bytes(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn attributes(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    let at = r.write_scratch(0, &cstr_bytes(&img.cwd)).at(pid, st)?;
    r.call(libc::SYS_chdir, &[at], &format!("chdir {}", img.cwd))
        .at(pid, st)?;
    if img.root != "/" {
        let at = r.write_scratch(0, &cstr_bytes(&img.root)).at(pid, st)?;
        r.call(libc::SYS_chroot, &[at], &format!("chroot {}", img.root))
            .at(pid, st)?;
    }
    r.call(libc::SYS_umask, &[u64::from(img.umask)], "umask")
        .at(pid, st)?;
    r.call(
        libc::SYS_personality,
        &[u64::from(img.personality)],
        "personality",
    )
    .at(pid, st)?;
    let mut comm = img.comm.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    let at = r.write_scratch(0, &comm).at(pid, st)?;
    r.call(
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, at],
        "prctl(PR_SET_NAME)",
    )
    .at(pid, st)?;

    let policy = img.sched.policy;
    // Images with proc_attrs get every thread's full sched_setattr later.
    let old_image = img.proc_attrs.is_none();
    if old_image
        && (policy & !0x4000_0000 != libc::SCHED_OTHER as u32 || img.sched.rt_priority != 0)
    {
        let at = r
            .write_scratch(0, &img.sched.rt_priority.to_le_bytes())
            .at(pid, st)?;
        r.call(
            libc::SYS_sched_setscheduler,
            &[0, u64::from(policy), at],
            "sched_setscheduler",
        )
        .at(pid, st)?;
    }
    r.call(
        libc::SYS_setpriority,
        &[libc::PRIO_PROCESS as u64, 0, img.sched.nice as i64 as u64],
        "setpriority",
    )
    .at(pid, st)?;

    // Limits equal to the ones inherited from the restorer need no call.
    let current = stasis_proc::read_limits(pid).unwrap_or_default();
    for l in &img.rlimits {
        if current.contains(&(l.resource, l.cur, l.max)) {
            continue;
        }
        let mut b = l.cur.to_le_bytes().to_vec();
        b.extend_from_slice(&l.max.to_le_bytes());
        let at = r.write_scratch(0, &b).at(pid, st)?;
        r.call(
            libc::SYS_prlimit64,
            &[0, u64::from(l.resource), at, 0],
            &format!("setrlimit({})", l.resource),
        )
        .at(pid, st)?;
    }

    // Signal dispositions: the saved ones, and SIG_DFL for whatever the
    // restorer's own runtime had installed.
    let status = stasis_proc::read_status(r.tid().0 as u32).map_err(|e| RestoreError::Refused {
        pid,
        stage: st,
        what: e.to_string(),
    })?;
    let inherited = status.sig_cgt | status.sig_ign;
    for signo in 1..=64u32 {
        if signo == libc::SIGKILL as u32 || signo == libc::SIGSTOP as u32 {
            continue;
        }
        let saved = img.sigactions.iter().find(|a| a.signo == signo);
        let (h, f, rs, m) = match saved {
            Some(a) => (a.handler, a.flags, a.restorer, a.mask),
            None if inherited & (1u64 << (signo - 1)) != 0 => (0, 0, 0, 0),
            None => continue,
        };
        let mut b = Vec::with_capacity(32);
        for w in [h, f, rs, m] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let at = r.write_scratch(0, &b).at(pid, st)?;
        r.call(
            libc::SYS_rt_sigaction,
            &[u64::from(signo), at, 0, 8],
            &format!("rt_sigaction({signo})"),
        )
        .at(pid, st)?;
    }

    // Signals that arrived while the tree was built (SIGCHLD from a zombie
    // child, say) are not the process's: drain them, all are blocked.
    let all = r.write_scratch(0, &(!0u64).to_le_bytes()).at(pid, st)?;
    let zero = r.write_scratch(16, &[0u8; 16]).at(pid, st)?;
    for _ in 0..128 {
        let got = r
            .syscall(libc::SYS_rt_sigtimedwait, &[all, 0, zero, 8])
            .at(pid, st)?;
        if got < 0 {
            break;
        }
    }
    // Pending signals: queued by the process to itself (only a process may
    // queue kernel-style siginfo to itself); all signals are blocked here.
    for p in &img.shared_pending {
        let at = r.write_scratch(0, &p.info).at(pid, st)?;
        r.call(
            libc::SYS_rt_sigqueueinfo,
            &[u64::from(pid), u64::from(p.signo), at],
            "rt_sigqueueinfo",
        )
        .at(pid, st)?;
    }
    Ok(())
}

/// What belongs to one thread, executed by that thread.
fn thread_attributes(r: &mut RemoteThread, pid: u32, t: &ThreadState) -> Result<()> {
    let st = Stage::Attributes;
    let mut comm = t.comm.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    let at = r.write_scratch(0, &comm).at(pid, st)?;
    r.call(
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, at],
        "prctl(PR_SET_NAME)",
    )
    .at(pid, st)?;
    for p in &t.pending {
        let at = r.write_scratch(0, &p.info).at(pid, st)?;
        r.call(
            libc::SYS_rt_tgsigqueueinfo,
            &[u64::from(pid), u64::from(t.tid), u64::from(p.signo), at],
            "rt_tgsigqueueinfo",
        )
        .at(pid, st)?;
    }
    let ss = t.sigaltstack;
    let mut b = ss.sp.to_le_bytes().to_vec();
    // SS_ONSTACK is a report, not a setting.
    b.extend_from_slice(&(ss.flags & !(libc::SS_ONSTACK as u32)).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&ss.size.to_le_bytes());
    let at = r.write_scratch(0, &b).at(pid, st)?;
    r.call(libc::SYS_sigaltstack, &[at, 0], "sigaltstack")
        .at(pid, st)?;
    r.call(
        libc::SYS_set_tid_address,
        &[t.clear_child_tid],
        "set_tid_address",
    )
    .at(pid, st)?;
    if t.robust_list_head != 0 {
        r.call(
            libc::SYS_set_robust_list,
            &[t.robust_list_head, t.robust_list_len],
            "set_robust_list",
        )
        .at(pid, st)?;
    }
    if let Some(rs) = t.rseq {
        r.call(
            libc::SYS_rseq,
            &[rs.addr, u64::from(rs.len), 0, u64::from(rs.signature)],
            "rseq(register)",
        )
        .at(pid, st)?;
    }
    Ok(())
}

const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Creates thread `tid` in the process by a remote clone3 in its leader
/// (set_tid gives the old TID); with PTRACE_O_TRACECLONE it arrives traced
/// and stopped before running any instruction.
fn create_thread(leader: &mut RemoteThread, pid: u32, tid: u32) -> Result<Pid> {
    let st = Stage::Attributes;
    let (scratch, _) = leader.scratch();
    let mut args = Vec::with_capacity(88);
    // flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup
    for v in [CLONE_THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, scratch + 128, 1, 0] {
        args.extend_from_slice(&v.to_le_bytes());
    }
    leader.write_scratch(0, &args).at(pid, st)?;
    leader
        .write_scratch(128, &(tid as i32).to_le_bytes())
        .at(pid, st)?;
    let got = leader
        .call(
            libc::SYS_clone3,
            &[scratch, 88],
            &format!("clone3 thread {tid}"),
        )
        .at(pid, st)?;
    if got != u64::from(tid) {
        return Err(RestoreError::Refused {
            pid,
            stage: st,
            what: format!("thread {tid} was created as {got}"),
        });
    }
    let t = host_tid(leader.tid(), tid).ok_or_else(|| RestoreError::Refused {
        pid,
        stage: st,
        what: format!("new thread {tid} not found in /proc"),
    })?;
    match ptrace::wait(t).at(pid, st)? {
        ptrace::Stop::Signal(libc::SIGSTOP) | ptrace::Stop::Event { .. } => Ok(t),
        other => Err(RestoreError::Refused {
            pid,
            stage: st,
            what: format!("new thread {tid}: unexpected {other:?}"),
        }),
    }
}

const SECBIT_KEEP_CAPS: u64 = 1 << 4;
const CAP_SETPCAP: u64 = 8;

fn capset(r: &mut RemoteThread, pid: u32, eff: u64, prm: u64, inh: u64) -> Result<()> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&0x2008_0522u32.to_le_bytes()); // _LINUX_CAPABILITY_VERSION_3
    b.extend_from_slice(&0i32.to_le_bytes());
    for half in [0, 32] {
        for v in [eff, prm, inh] {
            b.extend_from_slice(&((v >> half) as u32).to_le_bytes());
        }
    }
    let at = r.write_scratch(0, &b).at(pid, Stage::Creds)?;
    r.call(libc::SYS_capset, &[at, at + 8], "capset")
        .at(pid, Stage::Creds)?;
    Ok(())
}

/// Credentials, in the order the kernel allows: bounding set and
/// securebits while we still hold CAP_SETPCAP, ids (keeping capabilities),
/// then the capability sets, ambient caps, no_new_privs; then what a
/// credential change resets (dumpable, parent-death signal).
fn creds(r: &mut RemoteThread, img: &ProcessImage, inherited: bool, leader: bool) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Creds;
    if !inherited {
        set_ids_and_caps(r, img)?;
    }
    // Dumpable belongs to the whole process; the parent-death signal to each thread.
    if leader && img.dumpable <= 1 {
        r.call(
            libc::SYS_prctl,
            &[libc::PR_SET_DUMPABLE as u64, u64::from(img.dumpable)],
            "prctl(PR_SET_DUMPABLE)",
        )
        .at(pid, st)?;
    }
    r.call(
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, u64::from(img.pdeath_signal)],
        "prctl(PR_SET_PDEATHSIG)",
    )
    .at(pid, st)?;
    Ok(())
}

/// Whether the image's credentials are exactly the ones the restored
/// process inherited from the restorer (ids, groups, every capability
/// set, securebits, no_new_privs): then there is nothing to set.
fn creds_inherited(img: &ProcessImage) -> bool {
    let Ok(s) = stasis_proc::read_status(img.pid) else {
        return false;
    };
    let c = &img.creds;
    let mut groups = s.groups.clone();
    groups.sort_unstable();
    let mut want = c.groups.clone();
    want.sort_unstable();
    s.uids == c.uids
        && s.gids == c.gids
        && groups == want
        && s.cap_inh == c.cap_inheritable
        && s.cap_prm == c.cap_permitted
        && s.cap_eff == c.cap_effective
        && s.cap_bnd == c.cap_bounding
        && s.cap_amb == c.cap_ambient
        && s.no_new_privs == c.no_new_privs
        && util::securebits().ok() == Some(c.securebits)
}

fn set_ids_and_caps(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Creds;
    let c = &img.creds;
    let last_cap: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last_cap {
        if c.cap_bounding & (1 << cap) == 0 {
            r.call(
                libc::SYS_prctl,
                &[libc::PR_CAPBSET_DROP as u64, cap],
                "prctl(PR_CAPBSET_DROP)",
            )
            .at(pid, st)?;
        }
    }
    let root_only = c.uids == [0; 4] && c.gids == [0; 4];
    let want_bits = u64::from(c.securebits);
    if !root_only || want_bits != 0 {
        r.call(
            libc::SYS_prctl,
            &[libc::PR_SET_SECUREBITS as u64, want_bits | SECBIT_KEEP_CAPS],
            "prctl(PR_SET_SECUREBITS)",
        )
        .at(pid, st)?;
    }
    let mut groups = Vec::with_capacity(c.groups.len() * 4);
    for g in &c.groups {
        groups.extend_from_slice(&g.to_le_bytes());
    }
    let at = r.write_scratch(0, &groups).at(pid, st)?;
    r.call(
        libc::SYS_setgroups,
        &[c.groups.len() as u64, at],
        "setgroups",
    )
    .at(pid, st)?;
    let [gr, ge, gs, gf] = c.gids.map(u64::from);
    r.call(libc::SYS_setresgid, &[gr, ge, gs], "setresgid")
        .at(pid, st)?;
    let [ur, ue, us, uf] = c.uids.map(u64::from);
    r.call(libc::SYS_setresuid, &[ur, ue, us], "setresuid")
        .at(pid, st)?;
    r.call(libc::SYS_setfsgid, &[gf], "setfsgid").at(pid, st)?;
    r.call(libc::SYS_setfsuid, &[uf], "setfsuid").at(pid, st)?;
    if !root_only || want_bits != 0 {
        // Keep CAP_SETPCAP effective (if permitted) long enough to put securebits back.
        let setpcap = c.cap_permitted & (1 << CAP_SETPCAP);
        capset(
            r,
            pid,
            c.cap_effective | setpcap,
            c.cap_permitted,
            c.cap_inheritable,
        )?;
        if want_bits & SECBIT_KEEP_CAPS == 0 && setpcap != 0 {
            r.call(
                libc::SYS_prctl,
                &[libc::PR_SET_SECUREBITS as u64, want_bits],
                "prctl(PR_SET_SECUREBITS)",
            )
            .at(pid, st)?;
        }
    }
    capset(r, pid, c.cap_effective, c.cap_permitted, c.cap_inheritable)?;
    for cap in 0..=last_cap {
        if c.cap_ambient & (1 << cap) != 0 {
            r.call(
                libc::SYS_prctl,
                &[
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                ],
                "prctl(PR_CAP_AMBIENT_RAISE)",
            )
            .at(pid, st)?;
        }
    }
    if c.no_new_privs {
        r.call(
            libc::SYS_prctl,
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
            "prctl(PR_SET_NO_NEW_PRIVS)",
        )
        .at(pid, st)?;
    }
    Ok(())
}

/// The innermost PID of a task (last NSpid entry), from our /proc.
fn inner_pid(host: u32, tid: u32) -> Option<u32> {
    let text = stasis_proc::read(host, &format!("task/{tid}/status")).ok()?;
    stasis_proc::parse_status(&text)
        .ok()?
        .ns_pid
        .last()
        .copied()
}

/// Our PID of thread `inner` of the process whose leader we know as `leader`.
fn host_tid(leader: Pid, inner: u32) -> Option<Pid> {
    let l = leader.0 as u32;
    stasis_proc::list_tasks(l)
        .ok()?
        .into_iter()
        .find(|&t| inner_pid(l, t) == Some(inner))
        .map(|t| Pid(t as i32))
}

/// Maps the image's PIDs of the restored tree to ours, walking the tree
/// from its root. Outside a new PID namespace they are equal.
fn host_pids(root: Pid, pid_ns: bool) -> stasis_sys::Result<HashMap<u32, Pid>> {
    let mut map = HashMap::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(h) = queue.pop_front() {
        let hu = h.0 as u32;
        let inner = if pid_ns {
            inner_pid(hu, hu).unwrap_or(hu)
        } else {
            hu
        };
        map.insert(inner, h);
        for t in stasis_proc::list_tasks(hu).unwrap_or_default() {
            for c in stasis_proc::read_children(hu, t).unwrap_or_default() {
                queue.push_back(Pid(c as i32));
            }
        }
    }
    Ok(map)
}

/// The helper init waits in wait4 with PR_SET_PDEATHSIG(SIGKILL), so that
/// it dies if the restore fails. Once the tree is whole: seize it, clear
/// that, drop the inherited stub area, and let it go back to waiting.
fn release_helper(helper: Pid, stub: u64) -> stasis_sys::Result<()> {
    spawn::seize_waiting(helper)?;
    let orig = ptrace::get_regs(helper)?;
    let mut r = RemoteThread::plain(helper, stub, stub + 4096, STUB_LEN - 4096)?;
    r.call(
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, 0],
        "prctl(PR_SET_PDEATHSIG, 0)",
    )?;
    r.call(libc::SYS_munmap, &[stub, STUB_LEN], "munmap stub area")?;
    // Back into its interrupted wait4, restarted as the kernel would.
    ptrace::set_regs(helper, &restart_fixed(&orig))?;
    ptrace::detach(helper, 0)
}

/// PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15): timer_create takes the id to
/// use from its `created_timer_id` argument.
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;

/// `struct itimerval` / `struct itimerspec` bytes: (seconds, sub-second)
/// of the interval, then of the value; `per_sec` sub-second units a second.
fn interval_and_value(interval: u64, value: u64, per_sec: u64) -> Vec<u8> {
    [
        interval / per_sec,
        interval % per_sec,
        value / per_sec,
        value % per_sec,
    ]
    .iter()
    .flat_map(|v| v.to_le_bytes())
    .collect()
}

/// Interval timers and POSIX timers (same ids, clocks, notification,
/// interval, time left), created by the process itself.
fn timers(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    for t in &img.itimers {
        let b = interval_and_value(t.interval_us, t.value_us, 1_000_000);
        let at = r.write_scratch(0, &b).at(pid, st)?;
        r.call(
            libc::SYS_setitimer,
            &[u64::from(t.which), at, 0],
            &format!("setitimer({})", t.which),
        )
        .at(pid, st)?;
    }
    if img.posix_timers.is_empty() {
        return Ok(());
    }
    r.call(
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0],
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
    )
    .at(pid, st)?;
    // /proc lists the newest timer first: create them oldest first.
    for t in img.posix_timers.iter().rev() {
        let mut ev = vec![0u8; 64];
        ev[0..8].copy_from_slice(&t.sigev_value.to_le_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_le_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_le_bytes());
        ev[16..20].copy_from_slice(&t.notify_tid.to_le_bytes());
        ev.extend_from_slice(&t.id.to_le_bytes());
        let at = r.write_scratch(0, &ev).at(pid, st)?;
        r.call(
            libc::SYS_timer_create,
            &[t.clock_id as i64 as u64, at, at + 64],
            &format!("timer_create(id {})", t.id),
        )
        .at(pid, st)?;
        let got = i32::from_le_bytes(
            r.read_scratch(64, 4)
                .at(pid, st)?
                .try_into()
                .unwrap_or_default(),
        );
        if got != t.id {
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!("timer {} was created as {got}", t.id),
            });
        }
        if t.value_ns != 0 {
            let b = interval_and_value(t.interval_ns, t.value_ns, 1_000_000_000);
            let at = r.write_scratch(0, &b).at(pid, st)?;
            r.call(
                libc::SYS_timer_settime,
                &[t.id as u64, 0, at, 0],
                &format!("timer_settime({})", t.id),
            )
            .at(pid, st)?;
        }
    }
    r.call(
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0],
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
    )
    .at(pid, st)?;
    Ok(())
}

/// Creates, in the restorer, one private anonymous object per VMA that
/// descendants share copy-on-write with its owner, holding the owner's
/// pages (from the owner's verified page file). Returns (owner PID, VMA
/// start) -> (address, length). On error nothing stays mapped.
fn make_cow_objects(
    procs: &[ProcessImage],
    pages: &[std::path::PathBuf],
    taken: &mut Vec<(u64, u64)>,
) -> Result<HashMap<(u32, u64), (u64, u64)>> {
    let mut out: HashMap<(u32, u64), (u64, u64)> = HashMap::new();
    let res = (|| {
        for v in procs
            .iter()
            .flat_map(|p| &p.mm.vmas)
            .filter(|v| v.cow_owner != 0)
        {
            let key = (v.cow_owner, v.start);
            if out.contains_key(&key) {
                continue;
            }
            let Some(oi) = procs.iter().position(|p| p.pid == v.cow_owner) else {
                return Err(RestoreError::Refused {
                    pid: v.cow_owner,
                    stage: Stage::Fork,
                    what: format!(
                        "copy-on-write owner of {:#x}-{:#x} is not in the image",
                        v.start, v.end
                    ),
                });
            };
            let owner = &procs[oi];
            if !owner
                .mm
                .vmas
                .iter()
                .any(|w| w.start == v.start && w.end == v.end && !w.shared)
            {
                return Err(RestoreError::Refused {
                    pid: owner.pid,
                    stage: Stage::Fork,
                    what: format!(
                        "no private mapping {:#x}-{:#x} to share copy-on-write",
                        v.start, v.end
                    ),
                });
            }
            let len = v.end - v.start;
            let mut placed = None;
            for cand in memory::free_candidates(&procs[0].mm, len) {
                let clash = procs.iter().any(|p| {
                    p.mm.vmas
                        .iter()
                        .any(|w| w.start < cand + len + 0x10000 && cand < w.end)
                }) || taken
                    .iter()
                    .any(|&(a, b)| a < cand + len + 0x10000 && cand < b);
                if !clash && spawn::map_private_anon(cand, len).is_ok() {
                    placed = Some(cand);
                    break;
                }
            }
            let g = placed.ok_or_else(|| RestoreError::Refused {
                pid: owner.pid,
                stage: Stage::Fork,
                what: format!("no free address for copy-on-write memory ({len} bytes)"),
            })?;
            taken.push((g, g + len + 0x10000));
            out.insert(key, (g, len));
            let file = std::fs::File::open(&pages[oi]).map_err(|source| RestoreError::Io {
                pid: owner.pid,
                stage: Stage::Fork,
                what: format!("open {}", pages[oi].display()),
                source,
            })?;
            for run in owner
                .mm
                .pages
                .iter()
                .filter(|p| p.addr >= v.start && p.addr < v.end)
            {
                spawn::fill_from_file(
                    g + (run.addr - v.start),
                    run.nr_pages * stasis_image::PAGE_SIZE,
                    &file,
                    stasis_image::PAGES_HEADER_LEN + run.offset,
                )
                .at(owner.pid, Stage::Fork)?;
            }
        }
        Ok(())
    })();
    match res {
        Ok(()) => Ok(out),
        Err(e) => {
            for &(a, l) in out.values() {
                spawn::unmap_stub_area(a, l);
            }
            Err(e)
        }
    }
}

/// Is this a terminal device (pty slave, virtual console, /dev/tty, console)?
fn is_tty(rdev: u64) -> bool {
    matches!(libc::major(rdev), 4 | 5 | 136..=143)
}

/// The terminal on our stdin, stdout or stderr, by path.
fn own_tty() -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    (0..3).find_map(|fd| {
        let md = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
        (md.file_type().is_char_device() && is_tty(md.rdev()))
            .then(|| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
            .flatten()
            .and_then(|p| p.to_str().map(str::to_string))
    })
}

/// Re-adds what each epoll instance watched, by the process itself, so that
/// every registration has the descriptor number the process knows it by
/// (EPOLL_CTL_MOD and DEL name it). A description shared with a process
/// restored earlier is registered already (EEXIST).
fn epoll_targets(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    for e in &img.files {
        let FdKind::Epoll { targets, .. } = &e.kind else {
            continue;
        };
        for t in targets {
            // struct epoll_event is packed on x86-64: u32 events, u64 data.
            let mut ev = t.events.to_le_bytes().to_vec();
            ev.extend_from_slice(&t.data.to_le_bytes());
            let at = r.write_scratch(0, &ev).at(pid, st)?;
            let got = r
                .syscall(
                    libc::SYS_epoll_ctl,
                    &[e.fd as u64, libc::EPOLL_CTL_ADD as u64, t.fd as u64, at],
                )
                .at(pid, st)?;
            if got < 0 && got != -i64::from(libc::EEXIST) {
                return Err(RestoreError::Sys {
                    pid,
                    stage: st,
                    source: stasis_sys::SysError::new(
                        format!("remote epoll_ctl(fd {}, ADD, fd {})", e.fd, t.fd),
                        None,
                        (-got) as i32,
                    ),
                });
            }
        }
    }
    Ok(())
}
