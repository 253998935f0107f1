//! SysV IPC: the tree's own IPC namespace (every shared memory segment,
//! semaphore set and message queue in it, and its IPC sysctls), or, in
//! the dumper's namespace, the segments the tree has attached.
//!
//! Everything is read without changing it, by a thread of the dumper that
//! joined the namespace: SHM_STAT / SEM_STAT / MSG_STAT walk the indices,
//! GETALL reads semaphores, msgrcv(MSG_COPY|IPC_NOWAIT) copies messages
//! in queue order (POSIX message queues are the exception: their
//! messages are received and sent back at once, stasis_sys::mqueue); a
//! segment's memory is read through a map_files entry
//! (its holes stay holes): of a process of the tree that has it attached;
//! for one nobody attaches, of a short read-only attachment made by its
//! last attacher (shm_lpid): a process of the tree (a remote call while
//! collecting it: [`remote_reads`]), or a helper forked with that PID
//! when it is free (`stasis_sys::sysvipc::shm_object_as`). The dumper
//! itself never attaches a segment, so shm_lpid stays what it was whether
//! the dump succeeds, fails or is killed (with `-R` too); a last attacher
//! whose PID is held outside the tree is refused before anything is read
//! ([`refuse_lpid_outside`]). Reading a segment never attached (shm_lpid
//! 0: all zeros) reads nothing. The contents go into the root's page file
//! at the end of its data.

use crate::collect::Collected;
use crate::kinds::saved::{extents, write_extents};
use crate::{At, DumpError, Result, Stage};
use stasis_image::sysvipc::{
    IpcNs, IpcPerm, IpcSysctl, Message, MsgQueue, PosixMessage, PosixQueue, SemSet, ShmSegment,
    IPC_SYSCTLS,
};
use stasis_image::{FdKind, PagesWriter, VmaKind};
use stasis_sys::sysvipc::{self as ipc, Perm, SHM_DEST};
use stasis_sys::{mqueue, SysError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// The saved objects, and a descriptor of each segment's memory (in
/// `ipc.shm` order) for [`write_contents`].
pub(crate) struct Saved {
    pub ipc: IpcNs,
    objects: Vec<OwnedFd>,
}

fn unsupported(pid: u32, what: String) -> DumpError {
    DumpError::Unsupported {
        pid,
        stage: Stage::Check,
        what,
    }
}

fn perm(p: Perm) -> IpcPerm {
    IpcPerm {
        key: p.key,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
        mode: p.mode,
    }
}

/// What the namespace thread reads: segments (with their memory),
/// semaphore sets, queues, sysctls, POSIX queues.
type Raw = (
    Vec<(ipc::Shm, OwnedFd)>,
    Vec<SemSet>,
    Vec<MsgQueue>,
    Vec<IpcSysctl>,
    Vec<mqueue::Queue>,
);

/// Whether the tree (root `root`) has an IPC namespace of its own.
fn own_ns(root: u32) -> bool {
    let ino = |t: &str| {
        std::fs::metadata(format!("/proc/{t}/ns/ipc"))
            .map(|m| m.ino())
            .ok()
    };
    ino(&root.to_string()) != ino("self")
}

/// The segments of the tree's own namespace that no process has attached
/// and whose last attacher (shm_lpid) is a process of the tree, by that
/// process (host PID): (id, size). Collecting the process attaches each
/// read-only for a moment and opens it ([`crate::collect`]), so that
/// shm_lpid stays its own.
pub(crate) fn remote_reads(root: u32, tree: &[u32]) -> Result<HashMap<u32, Vec<(i32, u64)>>> {
    let mut out: HashMap<u32, Vec<(i32, u64)>> = HashMap::new();
    if !own_ns(root) {
        return Ok(out);
    }
    let ns = ipc::open_ns(&format!("/proc/{root}/ns/ipc")).at(root, Stage::Collect)?;
    for s in ipc::in_ns(&ns, ipc::shm_list).at(root, Stage::Collect)? {
        let l = s.lpid as u32;
        if s.nattch == 0 && s.lpid > 0 && tree.contains(&l) {
            out.entry(l).or_default().push((s.id, s.size));
        }
    }
    Ok(out)
}

/// Refuses, before anything in the tree is touched, a segment of the
/// tree's own namespace that nobody attaches and whose last attacher
/// (shm_lpid) is a live process outside the tree (`tree`: host PIDs).
/// Its memory can only be read through an attachment, and any attach or
/// detach makes the segment's shm_lpid the caller's: only a helper with
/// that PID reads it unchanged, and here a live process holds the PID. A
/// tree that runs on (`-R`, pre-dump, or any dump that fails after the
/// read) would find its shm_lpid changed.
/// (A zombie of the tree holds its PID the same way: `zombies`.)
pub(crate) fn refuse_lpid_outside(root: u32, tree: &[u32], zombies: &[u32]) -> Result<()> {
    if !own_ns(root) {
        return Ok(());
    }
    let ns = ipc::open_ns(&format!("/proc/{root}/ns/ipc")).at(root, Stage::Check)?;
    for s in ipc::in_ns(&ns, ipc::shm_list).at(root, Stage::Check)? {
        let l = s.lpid as u32;
        let alive = || std::path::Path::new(&format!("/proc/{l}")).exists();
        if s.nattch == 0 && s.lpid > 0 && !tree.contains(&l) && alive() {
            let who = if zombies.contains(&l) {
                "a zombie of the tree"
            } else {
                "alive outside the tree"
            };
            return Err(unsupported(
                root,
                format!(
                    "SysV shm segment {} (key {:#x}): attached by nobody, and its last attacher \
                     (shm_lpid) is PID {l}, {who}: reading it would make the segment's shm_lpid \
                     stasis's, which a tree running on (--leave-running, -R, pre-dump, or a failed \
                     dump) would see",
                    s.id, s.perm.key
                ),
            ));
        }
    }
    Ok(())
}

/// In the process `r` controls: each segment of `reads` attached
/// read-only, opened through the process's map_files entry, detached.
/// A segment it may not attach is left out (a helper with its PID would
/// read it: that PID is held, so the dump fails before reading it).
pub(crate) fn open_remote(
    r: &mut stasis_sys::remote::RemoteThread,
    pid: u32,
    reads: &[(i32, u64)],
) -> Result<Vec<(i32, OwnedFd)>> {
    let mut out = Vec::new();
    for &(id, size) in reads {
        let what = format!("shmat({id}) to read it");
        let Ok(a) = r.call(libc::SYS_shmat, &[id as u64, 0, ipc::SHM_RDONLY], &what) else {
            continue;
        };
        let end = a + size.next_multiple_of(stasis_image::PAGE_SIZE);
        let fd = ipc::shm_object_at(&format!("/proc/{pid}/map_files/{a:x}-{end:x}"), false);
        r.call(libc::SYS_shmdt, &[a], "shmdt")
            .at(pid, Stage::Query)?;
        out.push((id, fd.at(pid, Stage::Query)?));
    }
    Ok(out)
}

/// Collects the IPC state of the tree (the root's namespace, which every
/// process shares: checks.rs), or None when there is none to save.
pub(crate) fn collect(root: u32, procs: &[Collected]) -> Result<Option<Saved>> {
    let st = Stage::Collect;
    let ino = |t: &str| {
        std::fs::metadata(format!("/proc/{t}/ns/ipc"))
            .map(|m| m.ino())
            .ok()
    };
    let own = own_ns(root);
    // Attachments per segment id in the tree, and the first process with
    // each; the map_files entry of one of its attachments.
    let mut attached: BTreeMap<i32, (u64, u32)> = BTreeMap::new();
    let mut opened: HashMap<i32, Source> = HashMap::new();
    for c in procs {
        for v in &c.image.mm.vmas {
            if let VmaKind::SysvShm { id } = v.kind {
                attached.entry(id).or_insert((0, c.host_pid)).0 += 1;
                opened.entry(id).or_insert_with(|| {
                    Source::Path(format!(
                        "/proc/{}/map_files/{:x}-{:x}",
                        c.host_pid, v.start, v.end
                    ))
                });
            }
        }
    }
    for c in procs {
        for (id, fd) in &c.sysv {
            let fd = dup(fd, c.host_pid, st)?;
            opened.insert(*id, Source::Fd(fd));
        }
    }
    if !own {
        if let Some((pid, fd, name)) = mq_fds(procs).next() {
            return Err(unsupported(
                pid,
                format!(
                    "fd {fd}: POSIX message queue /{name} of stasis's IPC namespace (only the \
                     queues of an IPC namespace of the tree's own are saved)"
                ),
            ));
        }
    }
    if !own && attached.is_empty() {
        return Ok(None);
    }
    if own {
        outsiders(root, ino(&root.to_string()), procs)?;
    }
    let ns = ipc::open_ns(&format!("/proc/{root}/ns/ipc")).at(root, st)?;
    let wanted: Option<HashSet<i32>> = (!own).then(|| attached.keys().copied().collect());
    let sending = own && in_mq_send(procs);
    let (shm, sem, msg, sysctls, mqueues) =
        ipc::in_ns(&ns, move || read_ns(own, wanted.as_ref(), opened, sending)).at(root, st)?;
    for (pid, fd, name) in mq_fds(procs) {
        let dev = procs
            .iter()
            .find(|c| c.host_pid == pid)
            .and_then(|c| c.image.files.iter().find(|e| e.fd == fd))
            .and_then(|e| match e.kind {
                FdKind::Mqueue { dev, .. } => Some(dev),
                _ => None,
            });
        if !mqueues.iter().any(|q| q.name == name && Some(q.dev) == dev) {
            return Err(unsupported(
                pid,
                format!(
                    "fd {fd}: POSIX message queue /{name} of an IPC namespace not the tree's \
                     (only the tree's own are saved)"
                ),
            ));
        }
    }
    let mqueues = posix_queues(root, mqueues)?;
    let rmid_forced = sysctls
        .iter()
        .any(|s| s.name == "kernel/shm_rmid_forced" && s.value.trim() != "0");
    let mut saved = Saved {
        ipc: IpcNs {
            own,
            end: 0,
            mq_end: 0,
            sysctls,
            shm: Vec::new(),
            sem,
            msg,
            mqueues,
        },
        objects: Vec::new(),
    };
    for (s, fd) in shm {
        let (n, pid) = attached.get(&s.id).copied().unwrap_or((0, root));
        check_segment(pid, &s, n, rmid_forced)?;
        let what = format!("SysV shm segment {}", s.id);
        let ext = extents(pid, &std::fs::File::from(dup(&fd, pid, st)?), s.size, &what)?;
        saved.ipc.shm.push(ShmSegment {
            id: s.id,
            perm: perm(s.perm),
            size: s.size,
            nattch: s.nattch,
            cpid: s.cpid,
            lpid: s.lpid,
            offset: 0,
            extents: ext,
        });
        saved.objects.push(fd);
    }
    if let Some((&id, &(_, pid))) = attached
        .iter()
        .find(|(id, _)| !saved.ipc.shm.iter().any(|s| s.id == **id))
    {
        return Err(unsupported(
            pid,
            format!("a mapping of SysV shm segment {id}, which no longer exists"),
        ));
    }
    if own {
        pids_as_the_tree_sees_them(root, &ns, &mut saved.ipc)?;
    }
    Ok(Some(saved))
}

/// A tree in a PID namespace of its own: the PIDs the objects recorded as
/// that namespace numbers them (the image's PIDs are its), read by a
/// child forked into it (`ipc::pids_in_pid_ns`); the dumper's view of an
/// exited process's PID could not be translated.
fn pids_as_the_tree_sees_them(root: u32, ns: &OwnedFd, img: &mut IpcNs) -> Result<()> {
    let st = Stage::Collect;
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    if ino(&format!("/proc/{root}/ns/pid")) == ino("/proc/self/ns/pid") {
        return Ok(());
    }
    let pid_ns = ipc::open_ns(&format!("/proc/{root}/ns/pid")).at(root, st)?;
    let shm: Vec<i32> = img.shm.iter().map(|s| s.id).collect();
    let sem: Vec<(i32, usize)> = img.sem.iter().map(|s| (s.id, s.pids.len())).collect();
    let msg: Vec<i32> = img.msg.iter().map(|q| q.id).collect();
    let pids =
        ipc::in_ns(ns, move || ipc::pids_in_pid_ns(&pid_ns, &shm, &sem, &msg)).at(root, st)?;
    let mut it = pids.into_iter();
    let mut next = || it.next().unwrap_or(0);
    for s in &mut img.shm {
        s.cpid = next();
        s.lpid = next();
    }
    for s in &mut img.sem {
        for p in &mut s.pids {
            *p = next();
        }
    }
    for q in &mut img.msg {
        q.lspid = next();
        q.lrpid = next();
    }
    Ok(())
}

/// The POSIX message queues as saved, or the refusal of the first one
/// that cannot be restored as it is.
fn posix_queues(root: u32, raw: Vec<mqueue::Queue>) -> Result<Vec<PosixQueue>> {
    let mut out = Vec::new();
    for q in raw {
        let name = format!("POSIX message queue /{}", q.name);
        if q.notify_pid != 0 {
            return Err(unsupported(
                root,
                format!(
                    "{name}: an mq_notify registration (process {}, sigev_notify {}, signal {}; not supported)",
                    q.notify_pid, q.notify, q.signo
                ),
            ));
        }
        let Some(messages) = q.messages else {
            return Err(unsupported(
                root,
                format!(
                    "{name}: full ({} messages) while a process of the tree waits in mq_timedsend \
                     (reading it would let that message in)",
                    q.curmsgs
                ),
            ));
        };
        out.push(PosixQueue {
            name: q.name,
            uid: q.uid,
            gid: q.gid,
            mode: q.mode,
            maxmsg: q.maxmsg,
            msgsize: q.msgsize,
            messages: messages
                .into_iter()
                .map(|(prio, text)| PosixMessage { prio, text })
                .collect(),
        });
    }
    Ok(out)
}

/// Every POSIX message queue descriptor of the tree: (host PID, fd, name).
fn mq_fds(procs: &[Collected]) -> impl Iterator<Item = (u32, i32, String)> + '_ {
    procs.iter().flat_map(|c| {
        c.image.files.iter().filter_map(|e| match &e.kind {
            FdKind::Mqueue { name, .. } => Some((c.host_pid, e.fd, name.clone())),
            _ => None,
        })
    })
}

/// Whether a thread of the tree is in mq_timedsend (blocked on a full queue).
fn in_mq_send(procs: &[Collected]) -> bool {
    let nr = libc::SYS_mq_timedsend.to_string();
    procs.iter().any(|c| {
        std::fs::read_dir(format!("/proc/{}/task", c.host_pid))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("syscall"))
                    .is_ok_and(|s| s.split_whitespace().next() == Some(nr.as_str()))
            })
    })
}

/// A process outside the tree in the tree's own IPC namespace would share
/// objects the restore gives only to the tree: refused by name.
fn outsiders(root: u32, ns: Option<u64>, procs: &[Collected]) -> Result<()> {
    let tree: HashSet<u32> = procs.iter().map(|c| c.host_pid).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Ok(());
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/ipc"))
            .map(|m| m.ino())
            .ok();
        if theirs.is_some() && theirs == ns && !tree.contains(&pid) {
            return Err(unsupported(
                root,
                format!("its IPC namespace, which process {pid} outside the tree shares"),
            ));
        }
    }
    Ok(())
}

/// Every attachment of a segment must be a mapping of the tree (an
/// outside one would be lost), and with shm_rmid_forced a segment nobody
/// attaches would die with the restorer that recreates it.
fn check_segment(pid: u32, s: &ipc::Shm, in_tree: u64, rmid_forced: bool) -> Result<()> {
    let name = format!("SysV shm segment {} (key {:#x})", s.id, s.perm.key);
    if s.nattch != in_tree {
        return Err(unsupported(
            pid,
            format!(
                "{name}: attached {} times, {in_tree} of them by the tree: a process outside \
                 the tree has it attached",
                s.nattch
            ),
        ));
    }
    if rmid_forced && s.nattch == 0 {
        return Err(unsupported(
            pid,
            format!("{name}: not attached while kernel.shm_rmid_forced is 1 (its creator's life decides it)"),
        ));
    }
    if s.perm.mode & SHM_DEST != 0 && s.nattch == 0 {
        return Err(unsupported(pid, format!("{name}: being destroyed")));
    }
    Ok(())
}

/// Where a segment's memory is opened from without attaching it here.
enum Source {
    /// A map_files entry of an attachment in the tree.
    Path(String),
    /// Opened while collecting its last attacher ([`open_remote`]).
    Fd(OwnedFd),
}

/// A segment's memory object, opened without changing its shm_lpid
/// (see the module's comment).
fn object(s: &ipc::Shm, from: Option<Source>) -> stasis_sys::Result<OwnedFd> {
    match from {
        Some(Source::Fd(fd)) => Ok(fd),
        Some(Source::Path(p)) => ipc::shm_object_at(&p, false),
        // Never attached: all zeros, an empty file of its size stands in.
        None if s.lpid == 0 => {
            let f = stasis_sys::util::memfd_create("sysv-never-attached", libc::MFD_CLOEXEC)?;
            std::fs::File::from(
                f.try_clone()
                    .map_err(|e| SysError::new("dup memfd", None, e.raw_os_error().unwrap_or(0)))?,
            )
            .set_len(s.size)
            .map_err(|e| SysError::new("ftruncate memfd", None, e.raw_os_error().unwrap_or(0)))?;
            Ok(f)
        }
        // Read by a helper with its last attacher's PID (a process
        // outside the tree that holds it was refused before,
        // [`refuse_lpid_outside`]; EEXIST: taken since, nothing read).
        None => ipc::shm_object_as(s.lpid, s.id, s.size),
    }
}

/// In a thread inside the namespace: every object (or, in the dumper's
/// namespace, the `wanted` segments only).
fn read_ns(
    own: bool,
    wanted: Option<&HashSet<i32>>,
    mut opened: HashMap<i32, Source>,
    sending: bool,
) -> stasis_sys::Result<Raw> {
    let mut shm = Vec::new();
    for s in ipc::shm_list()? {
        if wanted.is_some_and(|w| !w.contains(&s.id)) {
            continue;
        }
        let fd = object(&s, opened.remove(&s.id)).map_err(|e| SysError {
            op: format!(
                "SysV shm segment {} (key {:#x}): {}",
                s.id, s.perm.key, e.op
            ),
            ..e
        })?;
        shm.push((s, fd));
    }
    if !own {
        return Ok((shm, Vec::new(), Vec::new(), Vec::new(), Vec::new()));
    }
    let mut sem = Vec::new();
    for s in ipc::sem_list()? {
        sem.push(SemSet {
            id: s.id,
            perm: perm(s.perm),
            values: ipc::sem_values(s.id, s.nsems as usize)?,
            operated: s.operated,
            pids: ipc::sem_pids(s.id, s.nsems as usize)?,
        });
    }
    let mut msg = Vec::new();
    for q in ipc::msq_list()? {
        msg.push(MsgQueue {
            id: q.id,
            perm: perm(q.perm),
            qbytes: q.qbytes,
            messages: messages(q.id, q.qnum)?,
            lspid: q.lspid,
            lrpid: q.lrpid,
        });
    }
    let sysctls = IPC_SYSCTLS
        .iter()
        .filter_map(|name| {
            let v = std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?;
            Some(IpcSysctl {
                name: name.to_string(),
                value: v.trim_end().to_string(),
            })
        })
        .collect();
    // A queue with a notification registered is not received from (the
    // messages sent back would fire it); nor a full one while a process
    // of the tree waits to send (its message would fill the gap).
    let queues = mqueue::read_all(|q| q.notify_pid == 0 && !(sending && q.curmsgs >= q.maxmsg))?;
    Ok((shm, sem, msg, sysctls, queues))
}

/// The `n` messages of queue `id`, in order, copied (MSG_COPY).
fn messages(id: i32, n: u64) -> stasis_sys::Result<Vec<Message>> {
    let mut out = Vec::new();
    let mut max = 1usize << 16;
    let mut i = 0;
    while i < n {
        match ipc::msg_copy(id, i, max) {
            Ok((mtype, text)) => {
                out.push(Message { mtype, text });
                i += 1;
            }
            Err(e)
                if e.errno() == Some(libc::E2BIG) && max < stasis_image::sysvipc::MAX_MESSAGE =>
            {
                max *= 4;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn dup(fd: &OwnedFd, pid: u32, stage: Stage) -> Result<OwnedFd> {
    fd.try_clone().map_err(|source| DumpError::Io {
        pid,
        stage,
        what: "dup a SysV shm segment descriptor".into(),
        source,
    })
}

/// Appends every segment's data to the root's page file.
pub(crate) fn write_contents(saved: &mut Saved, pid: u32, pages: &mut PagesWriter) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let start = pages.offset();
    for (s, fd) in saved.ipc.shm.iter_mut().zip(&saved.objects) {
        let f = std::fs::File::from(dup(fd, pid, Stage::Memory)?);
        let what = format!("SysV shm segment {}", s.id);
        s.offset = write_extents(pid, &f, &s.extents, pages, &mut buf, &what)?;
    }
    // At least one page of IPC data, so that a reader that does not know
    // `ipc` refuses the root's page file rather than ignore the namespace.
    if pages.offset() == start {
        buf[..stasis_image::PAGE_SIZE as usize].fill(0);
        pages
            .write_all(&buf[..stasis_image::PAGE_SIZE as usize])
            .at(pid, Stage::Memory)?;
    }
    saved.ipc.end = pages.offset();
    // One page more with POSIX queues (IpcNs::mq_end): a reader that does
    // not know them refuses the page file.
    if !saved.ipc.mqueues.is_empty() {
        buf[..stasis_image::PAGE_SIZE as usize].fill(0);
        pages
            .write_all(&buf[..stasis_image::PAGE_SIZE as usize])
            .at(pid, Stage::Memory)?;
        saved.ipc.mq_end = pages.offset();
    }
    Ok(())
}
