//! SysV IPC: the tree's own IPC namespace made anew, with every object
//! under its old id and key, or the segments of the restorer's namespace
//! the tree had attached; and attaching a segment in a process.
//!
//! The namespace is made by the thread that forks the tree (unshare), so
//! every process inherits it; the objects are created there before the
//! fork (ids through /proc/sys/kernel/*_next_id), filled, given their
//! owner and mode (IPC_SET); so are its POSIX message queues (mq_open,
//! fchown, fchmod, each message sent again in queue order). After every process has attached its
//! segments, the ones marked for removal are removed again and the
//! sysctls get their saved values (shm_rmid_forced last).

use crate::{At, RestoreError, Result, Stage};
use stasis_image::sysvipc::{IpcNs, IpcPerm, MsgQueue, SemSet, ShmSegment};
use stasis_image::userns::{to_inside, IdRange};
use stasis_image::{ProcessImage, Vma, VmaKind, PAGE_SIZE};
use stasis_sys::remote::RemoteThread;
use stasis_sys::sysvipc::{self as ipc, Kind, SHM_RDONLY, SHM_REMAP};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::Path;

/// The IPC state being restored. Dropped before [`Ipc::done`]: goes back
/// to the restorer's namespace and removes the segments it created in it.
pub(crate) struct Ipc {
    pid: u32,
    /// The restorer's namespace while this thread is in the new one.
    back: Option<OwnedFd>,
    /// The tree's new namespace.
    ns: Option<OwnedFd>,
    /// Segments created in the restorer's own namespace (removed on failure).
    created: Vec<i32>,
    done: bool,
    image: IpcNs,
    /// Segments whose last attacher (shm_lpid) is no process of the tree
    /// but which the tree attaches: (id, lpid), touched by a helper with
    /// that PID once every process has attached them.
    late: Vec<(i32, i32)>,
    /// The segments to create ([`preflight`]) and the page file holding
    /// their contents, for [`Ipc::make`].
    create: Vec<i32>,
    pages: std::path::PathBuf,
    /// A pidfd of the init of the tree's new PID namespace: the helpers
    /// that give the PIDs back are forked there.
    pid_ns: Option<OwnedFd>,
    /// What the root, PID 1 of its own namespace, does once seized
    /// ([`PidPlan::root_live`]).
    root: ByRoot,
    /// The uid and gid maps of the tree's own user namespace, if it has
    /// one: the root's calls name ids as the namespace maps them.
    inside: Option<IdMaps>,
}

/// A user namespace's uid and gid maps.
pub(crate) type IdMaps = (Vec<IdRange>, Vec<IdRange>);

/// The calls the root makes by remote calls because PID 1 recorded them:
/// segments it made (their ids), SETVALs (set, semaphore, value), queues.
#[derive(Default)]
struct ByRoot {
    shm: Vec<i32>,
    sem: Vec<(i32, i32, u16)>,
    msg: Vec<RootMsg>,
}

/// A queue's last sender or receiver was PID 1: `dummy`, an empty message
/// it sends first (and then receives); `receive`, the type of the message
/// it receives (an empty one sent before the queue's messages); `send`,
/// the messages (type, then text) it sends.
struct RootMsg {
    id: i32,
    dummy: bool,
    receive: Option<i64>,
    send: Vec<Vec<u8>>,
}

/// Where the last PIDs of the objects (shm_lpid, sempid, msg_lspid,
/// msg_lrpid; shm_cpid) come from: helpers forked with those PIDs
/// (clone3 set_tid) make the calls that record them: in the restorer's
/// PID namespace, or in a new one made for the tree (forked there once
/// its init exists, [`Ipc::make_in`]): for a tree that had none
/// (`--new-pid-ns`), or that was the init of one of its own (the dump
/// read the PIDs as that namespace numbers them; what PID 1 recorded, the
/// root redoes, [`PidPlan::root_live`]). Not with a user namespace of the
/// tree's own (the PIDs read 0 there).
pub(crate) struct PidPlan {
    /// The PIDs are given back.
    pub on: bool,
    /// Segments some process of the tree attaches.
    attached: HashSet<i32>,
    /// The order the processes are rebuilt in (image indices): a process
    /// that is the last attacher of a segment others attach comes after them.
    pub order: Vec<usize>,
    /// Per process (image index): the segments it attaches and detaches
    /// once more after its own memory (it was their last attacher).
    pub touch: Vec<Vec<i32>>,
    late: Vec<(i32, i32)>,
    /// The tree is the init of a PID namespace of its own (no user
    /// namespace): PID 1 is its root, alive while the helpers make the
    /// objects, so what PID 1 recorded is done by the root itself, by
    /// remote calls once it is seized ([`Ipc::by_root`]).
    pub root_live: bool,
}

/// The [`PidPlan`] of the image; two processes that each were the last
/// attacher of a segment the other attaches are refused by name (no
/// order gives both back).
pub(crate) fn pid_plan(
    img: &IpcNs,
    procs: &[ProcessImage],
    pid_ns: bool,
    user_ns: bool,
) -> Result<PidPlan> {
    // A new namespace for a tree that had none: its helper init holds PID 1.
    let new_ns = pid_ns && procs.first().is_some_and(|p| p.pid != 1);
    if new_ns {
        refuse_pid_one(img, procs.first().map_or(0, |p| p.pid))?;
    }
    // The init of its own PID namespace, with the dump's view of the PIDs
    // (an IPC namespace of its own), in a user namespace of its own or not.
    let _ = user_ns;
    let root_live = pid_ns && !new_ns && img.own;
    let pid_ns = pid_ns && !new_ns && !root_live;
    let maps: Vec<HashSet<i32>> = procs
        .iter()
        .map(|p| {
            p.mm.vmas
                .iter()
                .filter_map(|v| match v.kind {
                    VmaKind::SysvShm { id } => Some(id),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let mut plan = PidPlan {
        on: !pid_ns,
        attached: maps.iter().flatten().copied().collect(),
        order: (0..procs.len()).collect(),
        touch: vec![Vec::new(); procs.len()],
        late: Vec::new(),
        root_live,
    };
    if pid_ns {
        return Ok(plan);
    }
    let index: HashMap<u32, usize> = procs.iter().enumerate().map(|(k, p)| (p.pid, k)).collect();
    for s in &img.shm {
        // A segment the root makes once seized (it was its creator), or
        // whose last attacher was the root: touched after the fork too,
        // by that process if it is one of the tree, else by a helper.
        let after_fork = root_live && (s.cpid == 1 || s.lpid == 1);
        if s.lpid <= 0 || !(plan.attached.contains(&s.id) || after_fork) {
            continue;
        }
        match index.get(&(s.lpid as u32)) {
            Some(&k) => plan.touch[k].push(s.id),
            None => plan.late.push((s.id, s.lpid)),
        }
    }
    // Last attachers after everyone else; among them, after every one
    // that attaches a segment they were the last attacher of.
    let last: Vec<usize> = (0..procs.len())
        .filter(|&k| !plan.touch[k].is_empty())
        .collect();
    let mut order: Vec<usize> = (0..procs.len()).filter(|k| !last.contains(k)).collect();
    let mut left = last.clone();
    while !left.is_empty() {
        let free = left.iter().position(|&k| {
            left.iter()
                .all(|&o| o == k || plan.touch[k].iter().all(|id| !maps[o].contains(id)))
        });
        let Some(i) = free else {
            let (a, b) = (procs[left[0]].pid, left.get(1).map_or(0, |&k| procs[k].pid));
            return Err(RestoreError::Refused {
                pid: a,
                stage: Stage::Preflight,
                what: format!(
                    "SysV shm: processes {a} and {b} were each the last to attach a segment                      the other one attaches (no order gives both shm_lpid back)"
                ),
            });
        };
        order.push(left.remove(i));
    }
    plan.order = order;
    Ok(plan)
}

/// `--new-pid-ns` for a tree that had no PID namespace: PID 1 there is
/// the helper init's, so a PID 1 SysV IPC recorded (the host's init) cannot
/// be given back: refused by name before anything is made.
fn refuse_pid_one(img: &IpcNs, root: u32) -> Result<()> {
    let what = img
        .shm
        .iter()
        .find(|s| s.cpid == 1 || s.lpid == 1)
        .map(|s| format!("SysV shm segment {} (creator or last attacher)", s.id))
        .or_else(|| {
            img.sem
                .iter()
                .find(|s| s.pids.contains(&1))
                .map(|s| format!("SysV semaphore set {} (sempid)", s.id))
        })
        .or_else(|| {
            img.msg
                .iter()
                .find(|q| q.lspid == 1 || q.lrpid == 1)
                .map(|q| format!("SysV message queue {} (last sender or receiver)", q.id))
        });
    match what {
        Some(w) => Err(refused(
            root,
            format!(
                "{w}: PID 1, which the new PID namespace's init holds (--new-pid-ns): the PID \
                 SysV IPC recorded could not be given back"
            ),
        )),
        None => Ok(()),
    }
}

/// Runs `f` in a helper with PID `p` ([`ipc::by_pid`]); a PID that a
/// process outside the tree holds here is refused by name.
fn by_pid(pid: u32, st: Stage, p: i32, what: &str, f: impl FnOnce() -> bool) -> Result<()> {
    ipc::by_pid(p, what, f).map_err(|e| pid_error(pid, st, p, what, e))
}

fn pid_error(pid: u32, st: Stage, p: i32, what: &str, e: stasis_sys::SysError) -> RestoreError {
    if e.source.raw_os_error() == Some(libc::EEXIST) {
        RestoreError::Refused {
            pid,
            stage: st,
            what: format!(
                "{what}: PID {p}, which a process outside the tree holds here (the PID SysV IPC \
                 recorded could not be given back)"
            ),
        }
    } else {
        RestoreError::Sys {
            pid,
            stage: st,
            source: e,
        }
    }
}

/// Securebits: a change of ids leaves the capabilities alone.
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;

/// The ids an object is made with: its creator's (cuid, cgid), which the
/// kernel takes from the caller of shmget/semget/msgget only.
fn creator(p: &IpcPerm) -> (u32, u32) {
    (p.cuid, p.cgid)
}

fn refused(pid: u32, what: String) -> RestoreError {
    RestoreError::Refused {
        pid,
        stage: Stage::Preflight,
        what,
    }
}

/// In the restorer's namespace: every segment's id must be free, or hold
/// the very segment that was dumped (same key, size and creator) with
/// nobody attached (the dump killed its users), which is then used again
/// with the saved contents. Anything else is refused by name: a restore
/// never maps a different segment. Returns the ids to create.
pub(crate) fn preflight(img: &IpcNs, pid: u32) -> Result<Vec<i32>> {
    if img.own {
        return Ok(img.shm.iter().map(|s| s.id).collect());
    }
    let mut create = Vec::new();
    for s in &img.shm {
        let name = format!(
            "SysV shm segment {} (key {:#x}, {} bytes)",
            s.id, s.perm.key, s.size
        );
        match ipc::shm_stat(s.id).at(pid, Stage::Preflight)? {
            None => create.push(s.id),
            Some(now) if now.perm.key == s.perm.key && now.size == s.size && now.cpid == s.cpid => {
                if now.nattch != 0 {
                    return Err(refused(
                        pid,
                        format!(
                            "{name} still exists and is attached {} times outside the image",
                            now.nattch
                        ),
                    ));
                }
            }
            Some(now) => {
                return Err(refused(
                    pid,
                    format!(
                    "{name}: the id is taken by another segment (key {:#x}, {} bytes, creator {})",
                    now.perm.key, now.size, now.cpid
                ),
                ))
            }
        }
    }
    Ok(create)
}

impl Ipc {
    /// Makes the objects (in a new namespace this thread enters, if the
    /// tree had its own) right before the fork. `pages`: the root's page
    /// file. `made`: that namespace, made already (owned by the tree's
    /// user namespace: userns.rs), else unshared here. `plan`: the PIDs
    /// the objects' creators and last users had. `later`: only the
    /// namespace and the POSIX queues now, the SysV objects by
    /// [`Ipc::make_in`] once the tree's new PID namespace has its init.
    pub(crate) fn create(
        img: &IpcNs,
        pid: u32,
        pages: &Path,
        (made, inside): (Option<&OwnedFd>, Option<IdMaps>),
        (plan, later): (&PidPlan, bool),
    ) -> Result<Ipc> {
        let st = Stage::Fork;
        let create = preflight(img, pid)?;
        let mut me = Ipc {
            pid,
            back: None,
            ns: None,
            created: Vec::new(),
            done: false,
            image: img.clone(),
            late: plan.late.clone(),
            create,
            pages: pages.to_path_buf(),
            pid_ns: None,
            root: ByRoot::default(),
            inside,
        };
        if img.own {
            let (back, ns) = match made {
                Some(ns) => ipc::join_made(ns).at(pid, st)?,
                None => ipc::unshare_ipc().at(pid, st)?,
            };
            me.back = Some(back);
            me.ns = Some(ns);
            sysctls(pid, img, true)?;
        }
        if !later {
            me.make(plan)?;
        }
        // POSIX queues: the limits (fs/mqueue/*) were raised above.
        for q in &img.mqueues {
            posix_queue(q).at(pid, st)?;
        }
        Ok(me)
    }

    /// Right after the fork of the helper init of the tree's new PID
    /// namespace (`init`, still waiting to fork the root), by the thread
    /// still in the tree's IPC namespace: the SysV objects made by helpers
    /// forked into that PID namespace (setns CLONE_NEWPID makes it this
    /// thread's pid_for_children), where every PID of the tree is free.
    pub(crate) fn make_in(&mut self, plan: &PidPlan, init: &OwnedFd) -> Result<()> {
        let (pid, st) = (self.pid, Stage::Fork);
        let own =
            stasis_sys::util::open("/proc/thread-self/ns/pid", libc::O_RDONLY | libc::O_CLOEXEC)
                .at(pid, st)?;
        stasis_sys::nsenter::join(init, libc::CLONE_NEWPID).at(pid, st)?;
        let made = self.make(plan);
        let back = stasis_sys::nsenter::join(&own, libc::CLONE_NEWPID).at(pid, st);
        made?;
        back?;
        self.pid_ns = Some(init.try_clone().map_err(|e| RestoreError::Io {
            pid,
            stage: st,
            what: "dup a pidfd".into(),
            source: e,
        })?);
        Ok(())
    }

    /// The SysV objects of the image, with their ids, contents, owners
    /// and the PIDs [`PidPlan`] gives back.
    fn make(&mut self, plan: &PidPlan) -> Result<()> {
        let (pid, st) = (self.pid, Stage::Fork);
        let img = self.image.clone();
        let create = self.create.clone();
        let me = self;
        let saved = |p: i32| (plan.on && p > 0).then_some(p);
        let pages = &me.pages;
        let src = std::fs::File::open(pages).map_err(|source| RestoreError::Io {
            pid,
            stage: st,
            what: format!("open {}", pages.display()),
            source,
        })?;
        let by_root = |p: i32| plan.root_live && p == 1;
        for s in &img.shm {
            if create.contains(&s.id) && by_root(s.cpid) {
                me.root.shm.push(s.id);
                continue;
            }
            if create.contains(&s.id) {
                ipc::create(
                    Kind::Shm,
                    s.id,
                    s.perm.key,
                    s.size,
                    s.perm.mode,
                    creator(&s.perm),
                    saved(s.cpid),
                )
                .map_err(|e| {
                    pid_error(
                        pid,
                        st,
                        s.cpid,
                        &format!("SysV shm segment {} creator", s.id),
                        e,
                    )
                })?;
                if !img.own {
                    me.created.push(s.id);
                }
            }
            fill(pid, s, &src)?;
            ipc::set_perm(Kind::Shm, s.id, s.perm.uid, s.perm.gid, s.perm.mode, 0).at(pid, st)?;
            if s.locked() {
                ipc::shm_lock(s.id).at(pid, st)?;
            }
            // Its last attacher, when no process of the tree attaches it
            // (else see PidPlan).
            if let Some(l) =
                saved(s.lpid).filter(|&l| !plan.attached.contains(&s.id) && !by_root(l))
            {
                let what = format!("SysV shm segment {} last attacher", s.id);
                by_pid(pid, st, l, &what, || ipc::shm_touch_raw(s.id))?;
            }
        }
        for s in &img.sem {
            let n = s.values.len() as u64;
            ipc::create(
                Kind::Sem,
                s.id,
                s.perm.key,
                n,
                s.perm.mode,
                creator(&s.perm),
                None,
            )
            .at(pid, st)?;
            if plan.on && s.pids.len() == s.values.len() {
                for (num, v) in sem_by_pids(pid, s, plan.root_live)? {
                    me.root.sem.push((s.id, num, v));
                }
            } else {
                ipc::sem_set_values(s.id, &s.values).at(pid, st)?;
                if s.operated {
                    ipc::sem_touch(s.id, s.values.first().copied().unwrap_or(0)).at(pid, st)?;
                }
            }
            ipc::set_perm(Kind::Sem, s.id, s.perm.uid, s.perm.gid, s.perm.mode, 0).at(pid, st)?;
        }
        for q in &img.msg {
            let (u, g, m) = (q.perm.uid, q.perm.gid, q.perm.mode);
            ipc::create(Kind::Msg, q.id, q.perm.key, 0, m, creator(&q.perm), None).at(pid, st)?;
            // Room for every message first (the limit may have been
            // lowered below what the queue holds), the saved limit after.
            let total: u64 = q.messages.iter().map(|x| x.text.len() as u64).sum();
            ipc::set_perm(Kind::Msg, q.id, u, g, m, q.qbytes.max(total).max(1)).at(pid, st)?;
            if plan.on {
                if let Some(m) = msg_by_pids(pid, q, plan.root_live)? {
                    me.root.msg.push(m);
                }
            } else {
                for msg in &q.messages {
                    ipc::msg_send(q.id, msg.mtype, &msg.text).at(pid, st)?;
                }
            }
            ipc::set_perm(Kind::Msg, q.id, u, g, m, q.qbytes).at(pid, st)?;
        }
        Ok(())
    }

    /// Once the tree is seized, before any process is rebuilt: what PID 1
    /// recorded, done by the root (`r`), PID 1 of its own namespace, by
    /// remote calls ([`PidPlan::root_live`]): the segments it made (made
    /// now with its effective ids set to their creator's for the call,
    /// then filled by the restorer), its semaphores' SETVAL, its queues'
    /// messages.
    pub(crate) fn by_root(&mut self, r: &mut RemoteThread) -> Result<()> {
        let root = std::mem::take(&mut self.root);
        if root.shm.is_empty() && root.sem.is_empty() && root.msg.is_empty() {
            return Ok(());
        }
        let (pid, st) = (self.pid, Stage::Fork);
        let Some(ns) = &self.ns else {
            return Ok(());
        };
        // This thread works in the tree's IPC namespace meanwhile.
        let own = ipc::open_ns("/proc/thread-self/ns/ipc").at(pid, st)?;
        ipc::join(ns).at(pid, st)?;
        let done = self.root_calls(r, &root);
        let back = ipc::join(&own).at(pid, st);
        done?;
        back
    }

    fn root_calls(&self, r: &mut RemoteThread, root: &ByRoot) -> Result<()> {
        let (pid, st) = (self.pid, Stage::Fork);
        let keep = u64::from(u32::MAX);
        let src = std::fs::File::open(&self.pages).map_err(|source| RestoreError::Io {
            pid,
            stage: st,
            what: format!("open {}", self.pages.display()),
            source,
        })?;
        // In a user namespace of the tree's the root's ids of ours are
        // not mapped there, so they cannot be named to be set back: its
        // securebits stop a change of ids from touching its capabilities
        // meanwhile (SECBIT_NO_SETUID_FIXUP), and the ids it is left with
        // are the creds stage's to set.
        let fixup = match &self.inside {
            Some(_) if !root.shm.is_empty() => {
                let bits = r
                    .call(libc::SYS_prctl, &[libc::PR_GET_SECUREBITS as u64], "prctl")
                    .at(pid, st)?;
                r.call(
                    libc::SYS_prctl,
                    &[
                        libc::PR_SET_SECUREBITS as u64,
                        bits | SECBIT_NO_SETUID_FIXUP,
                    ],
                    "prctl(PR_SET_SECUREBITS, NO_SETUID_FIXUP)",
                )
                .at(pid, st)?;
                Some(bits)
            }
            _ => None,
        };
        for s in self.image.shm.iter().filter(|s| root.shm.contains(&s.id)) {
            ipc::write_next_id(Kind::Shm, s.id).at(pid, st)?;
            let euid = r.call(libc::SYS_geteuid, &[], "geteuid").at(pid, st)?;
            let egid = r.call(libc::SYS_getegid, &[], "getegid").at(pid, st)?;
            let (cuid, cgid) = self.creator_of_root(&s.perm, s.id)?;
            let what = format!("SysV shm segment {} made by PID 1 as {cuid}:{cgid}", s.id);
            r.call(libc::SYS_setresgid, &[keep, cgid.into(), keep], &what)
                .at(pid, st)?;
            r.call(libc::SYS_setresuid, &[keep, cuid.into(), keep], &what)
                .at(pid, st)?;
            let flags = libc::IPC_CREAT | libc::IPC_EXCL | (s.perm.mode & 0o777) as i32;
            let got = r.call(
                libc::SYS_shmget,
                &[s.perm.key as u32 as u64, s.size, flags as u64],
                &what,
            );
            if self.inside.is_none() {
                r.call(libc::SYS_setresuid, &[keep, euid, keep], "setresuid back")
                    .at(pid, st)?;
                r.call(libc::SYS_setresgid, &[keep, egid, keep], "setresgid back")
                    .at(pid, st)?;
            }
            let got = got.at(pid, st)?;
            if got != s.id as u64 {
                return Err(RestoreError::Refused {
                    pid,
                    stage: st,
                    what: format!("{what}: got id {got}"),
                });
            }
            fill(pid, s, &src)?;
            ipc::set_perm(Kind::Shm, s.id, s.perm.uid, s.perm.gid, s.perm.mode, 0).at(pid, st)?;
            if s.locked() {
                ipc::shm_lock(s.id).at(pid, st)?;
            }
        }
        for &(id, num, v) in &root.sem {
            let what = format!("semctl({id}, {num}, SETVAL) by PID 1 (sempid)");
            r.call(
                libc::SYS_semctl,
                &[id as u64, num as u64, libc::SETVAL as u64, v.into()],
                &what,
            )
            .at(pid, st)?;
        }
        for m in &root.msg {
            self.root_msg(r, m)?;
        }
        if let Some(bits) = fixup {
            r.call(
                libc::SYS_prctl,
                &[libc::PR_SET_SECUREBITS as u64, bits],
                "prctl(PR_SET_SECUREBITS) back",
            )
            .at(pid, st)?;
        }
        Ok(())
    }

    /// The creator's ids of segment `id` (ours) as the root names them:
    /// in the tree's user namespace, as it maps them (an unmapped one is
    /// refused by name).
    fn creator_of_root(&self, p: &IpcPerm, id: i32) -> Result<(u32, u32)> {
        let (cuid, cgid) = creator(p);
        let Some((uids, gids)) = &self.inside else {
            return Ok((cuid, cgid));
        };
        match (to_inside(uids, cuid), to_inside(gids, cgid)) {
            (Some(u), Some(g)) => Ok((u, g)),
            _ => Err(RestoreError::Refused {
                pid: self.pid,
                stage: Stage::Fork,
                what: format!(
                    "SysV shm segment {id} made by PID 1 as {cuid}:{cgid}, which the tree's user \
                     namespace does not map"
                ),
            }),
        }
    }

    /// One queue's [`RootMsg`], with room for every message meanwhile.
    fn root_msg(&self, r: &mut RemoteThread, m: &RootMsg) -> Result<()> {
        let (pid, st) = (self.pid, Stage::Fork);
        let Some(q) = self.image.msg.iter().find(|q| q.id == m.id) else {
            return Ok(());
        };
        let (u, g, mode) = (q.perm.uid, q.perm.gid, q.perm.mode);
        let total: u64 = q.messages.iter().map(|x| x.text.len() as u64).sum();
        ipc::set_perm(Kind::Msg, q.id, u, g, mode, q.qbytes.max(total).max(1)).at(pid, st)?;
        let what = format!("SysV message queue {} by PID 1", q.id);
        let nowait = libc::IPC_NOWAIT as u64;
        let send = |r: &mut RemoteThread, b: &[u8]| -> Result<()> {
            let at = r.write_scratch(0, b).at(pid, st)?;
            r.call(
                libc::SYS_msgsnd,
                &[q.id as u64, at, (b.len() - 8) as u64, nowait],
                &what,
            )
            .at(pid, st)
            .map(drop)
        };
        if m.dummy {
            send(r, &1i64.to_ne_bytes())?;
        }
        if let Some(t) = m.receive {
            let at = r.write_scratch(0, &[0u8; 16]).at(pid, st)?;
            let flags = nowait | libc::MSG_NOERROR as u64;
            r.call(
                libc::SYS_msgrcv,
                &[q.id as u64, at, 8, t as u64, flags],
                &what,
            )
            .at(pid, st)?;
        }
        for b in &m.send {
            send(r, b)?;
        }
        ipc::set_perm(Kind::Msg, q.id, u, g, mode, q.qbytes).at(pid, st)
    }

    /// Segment sizes by id, for the attachments.
    pub(crate) fn sizes(&self) -> HashMap<i32, u64> {
        self.image.shm.iter().map(|s| (s.id, s.size)).collect()
    }

    /// Right after the fork: the restorer goes back to its own namespace.
    pub(crate) fn leave(&mut self) -> Result<()> {
        if let Some(back) = self.back.take() {
            ipc::join(&back).at(self.pid, Stage::Fork)?;
        }
        Ok(())
    }

    /// Once every process has attached its segments: segments marked for
    /// removal are removed again (they live on while attached) and the
    /// sysctls take their saved values.
    pub(crate) fn finish(&mut self) -> Result<()> {
        let pid = self.pid;
        let dest: Vec<i32> = self
            .image
            .shm
            .iter()
            .filter(|s| s.dest())
            .map(|s| s.id)
            .collect();
        let img = self.image.clone();
        let late = self.late.clone();
        let pid_ns = match &self.pid_ns {
            Some(fd) => Some(fd.try_clone().map_err(|e| RestoreError::Io {
                pid,
                stage: Stage::Resume,
                what: "dup a pidfd".into(),
                source: e,
            })?),
            None => None,
        };
        let work = move || -> stasis_sys::Result<()> {
            // The helpers below are forked into the tree's new PID
            // namespace (this thread's pid_for_children meanwhile: a
            // thread cannot be made then, as the sysctls of a namespace
            // owned by the tree's user namespace need).
            let own = match &pid_ns {
                Some(ns) => {
                    let own = stasis_sys::util::open(
                        "/proc/thread-self/ns/pid",
                        libc::O_RDONLY | libc::O_CLOEXEC,
                    )?;
                    stasis_sys::nsenter::join(ns, libc::CLONE_NEWPID)?;
                    Some(own)
                }
                None => None,
            };
            let touched = late.into_iter().try_for_each(|(id, l)| {
                let what = format!("SysV shm segment {id} last attacher");
                ipc::by_pid(l, &what, || ipc::shm_touch_raw(id))
            });
            if let Some(own) = &own {
                stasis_sys::nsenter::join(own, libc::CLONE_NEWPID)?;
            }
            touched?;
            for id in dest {
                ipc::remove(Kind::Shm, id)?;
            }
            if img.own {
                write_sysctls(&img, false)?;
            }
            Ok(())
        };
        match (&self.ns, self.pid_ns.is_some()) {
            (Some(ns), _) => ipc::in_ns(ns, work),
            // A thread of its own for the PID namespace it joins.
            (None, true) => std::thread::spawn(work).join().unwrap_or_else(|_| {
                Err(stasis_sys::SysError::other(
                    "SysV IPC thread",
                    None,
                    "panicked",
                ))
            }),
            (None, false) => work(),
        }
        .map_err(|e| {
            let p = e.pid.map_or(0, |p| p.0);
            pid_error(pid, Stage::Resume, p, "SysV shm segment last attacher", e)
        })
    }

    /// The tree runs: what was created stays.
    pub(crate) fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for Ipc {
    fn drop(&mut self) {
        let _ = self.leave();
        if !self.done {
            for &id in &self.created {
                let _ = ipc::remove(Kind::Shm, id);
            }
        }
    }
}

/// Makes one POSIX queue. In a namespace owned by a user namespace of the
/// tree's, the restorer's ids have no mapping in its mqueue file system
/// (EOVERFLOW): the queue is then made by a thread with the owner's ids.
fn posix_queue(q: &stasis_image::sysvipc::PosixQueue) -> stasis_sys::Result<()> {
    let make = |q: &stasis_image::sysvipc::PosixQueue| {
        let msgs: Vec<(u32, &[u8])> = q
            .messages
            .iter()
            .map(|m| (m.prio, m.text.as_slice()))
            .collect();
        stasis_sys::mqueue::create(
            &q.name,
            (q.uid, q.gid, q.mode),
            (q.maxmsg, q.msgsize),
            &msgs,
        )
    };
    match make(q) {
        Err(e) if e.errno() == Some(libc::EOVERFLOW) => {
            let q = q.clone();
            ipc::as_ids((q.uid, q.gid), move || make(&q))
        }
        r => r,
    }
}

/// Each semaphore's value set (SETVAL) by a helper with its saved last
/// PID (sempid); a set a semop ran on gets one more (sem_otime), by the
/// last PID of the semaphore it touches. A semaphore no call changed
/// (PID 0) is left as created, at 0.
///
/// `root_live`: PID 1 is the tree's root (alive): its semaphores are set
/// by the restorer here and returned (semaphore, value) for the root to
/// set again once seized; the semop is made by a helper of another PID,
/// else by the restorer (the root's SETVAL then gives that semaphore its
/// PID back).
fn sem_by_pids(pid: u32, s: &SemSet, root_live: bool) -> Result<Vec<(i32, u16)>> {
    let st = Stage::Fork;
    let mut by: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    let mut root = Vec::new();
    for (i, (&p, &v)) in s.pids.iter().zip(&s.values).enumerate() {
        if root_live && p == 1 {
            root.push((i as i32, v));
        }
        if p > 0 && !(root_live && p == 1) {
            by.entry(p).or_default().push(i);
        } else if v != 0 && !ipc::sem_setval_raw(s.id, i as i32, v) {
            // Set by a process the dumper could not see: by the restorer.
            return Err(stasis_sys::SysError::new(
                "semctl(SETVAL)",
                None,
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ))
            .at(pid, st);
        }
    }
    for (p, idx) in &by {
        let what = format!("SysV semaphore set {} (sempid)", s.id);
        by_pid(pid, st, *p, &what, || {
            idx.iter()
                .all(|&i| ipc::sem_setval_raw(s.id, i as i32, s.values[i]))
        })?;
    }
    if s.operated {
        match s.pids.iter().position(|&p| p > 0 && !(root_live && p == 1)) {
            Some(i) => {
                let what = format!("SysV semaphore set {} (semop)", s.id);
                by_pid(pid, st, s.pids[i], &what, || {
                    ipc::sem_touch_raw(s.id, i as u16, s.values[i])
                })?;
            }
            None => ipc::sem_touch(s.id, s.values.first().copied().unwrap_or(0)).at(pid, st)?,
        }
    }
    Ok(root)
}

/// The messages sent by a helper with the saved last sender's PID
/// (msg_lspid); with a saved last receiver (msg_lrpid), an empty message
/// sent first is received by a helper with that PID.
///
/// `root_live` (PID 1 is the tree's root, alive): what PID 1 did is left
/// to the root once seized ([`RootMsg`]): as the last sender it sends
/// every message (after the last receiver took an empty one the restorer
/// sent); as the last receiver only, it takes an empty message of a type
/// no other has, sent before them.
fn msg_by_pids(pid: u32, q: &MsgQueue, root_live: bool) -> Result<Option<RootMsg>> {
    let st = Stage::Fork;
    let (s1, r1) = (root_live && q.lspid == 1, root_live && q.lrpid == 1);
    let bufs: Vec<Vec<u8>> = q
        .messages
        .iter()
        .map(|m| {
            let mut b = m.mtype.to_ne_bytes().to_vec();
            b.extend_from_slice(&m.text);
            b
        })
        .collect();
    let dummy = 1i64.to_ne_bytes();
    let send = |bufs: &[&[u8]]| -> Result<()> {
        let all = || bufs.iter().all(|b| ipc::msg_send_raw(q.id, b));
        if q.lspid > 0 {
            let what = format!("SysV message queue {} (msg_lspid)", q.id);
            by_pid(pid, st, q.lspid, &what, all)
        } else if all() {
            Ok(())
        } else {
            Err(stasis_sys::SysError::new(
                "msgsnd",
                None,
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ))
            .at(pid, st)
        }
    };
    let receive = |p: i32| {
        let what = format!("SysV message queue {} (msg_lrpid)", q.id);
        by_pid(pid, st, p, &what, || ipc::msg_receive_raw(q.id))
    };
    if s1 {
        if q.lrpid > 1 {
            if !ipc::msg_send_raw(q.id, &dummy) {
                return Err(stasis_sys::SysError::new(
                    "msgsnd",
                    None,
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
                ))
                .at(pid, st);
            }
            receive(q.lrpid)?;
        }
        return Ok(Some(RootMsg {
            id: q.id,
            dummy: r1,
            receive: r1.then_some(0),
            send: bufs,
        }));
    }
    if r1 {
        // An empty message of a type no message has, first in line.
        let t = (1i64..)
            .find(|t| q.messages.iter().all(|m| m.mtype != *t))
            .unwrap_or(1);
        let first = t.to_ne_bytes();
        let mut refs: Vec<&[u8]> = vec![&first];
        refs.extend(bufs.iter().map(Vec::as_slice));
        send(&refs)?;
        return Ok(Some(RootMsg {
            id: q.id,
            dummy: false,
            receive: Some(t),
            send: Vec::new(),
        }));
    }
    if q.lrpid > 0 {
        send(&[&dummy])?;
        receive(q.lrpid)?;
    }
    if !bufs.is_empty() {
        let refs: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        send(&refs)?;
    }
    Ok(None)
}

/// In a process of the tree, after its memory: attaches and detaches the
/// segments it was the last attacher of ([`PidPlan::touch`]).
pub(crate) fn touch(r: &mut RemoteThread, ids: &[i32]) -> Result<()> {
    let pid = r.tid().0 as u32;
    for &id in ids {
        let what = format!("shmat({id}) (shm_lpid)");
        let a = r
            .call(libc::SYS_shmat, &[id as u64, 0, SHM_RDONLY], &what)
            .at(pid, Stage::Memory)?;
        r.call(libc::SYS_shmdt, &[a], "shmdt (shm_lpid)")
            .at(pid, Stage::Memory)?;
    }
    Ok(())
}

/// The segment's saved data, written through its memory object (none
/// saved: nothing is attached, its shm_lpid stays).
fn fill(pid: u32, s: &ShmSegment, src: &std::fs::File) -> Result<()> {
    if s.extents.is_empty() {
        return Ok(());
    }
    let obj = std::fs::File::from(ipc::shm_object(s.id, s.size, true).at(pid, Stage::Fork)?);
    let what = format!("SysV shm segment {}", s.id);
    crate::kinds::saved::copy_extents(pid, src, s.offset, &s.extents, &obj, &what)
}

/// Sysctls whose value only limits what may be created: raised before the
/// objects (`raise_only`), set exactly after.
fn is_limit(name: &str) -> bool {
    !name.ends_with("_next_id") && name != "kernel/shm_rmid_forced" && name != "kernel/auto_msgmni"
}

fn sysctls(pid: u32, img: &IpcNs, raise_only: bool) -> Result<()> {
    write_sysctls(img, raise_only).at(pid, Stage::Fork)
}

/// Writes the saved sysctls in the calling thread's namespace;
/// `raise_only`: only limits, each field at least its present value.
/// shm_rmid_forced comes last, once every segment is attached. In a
/// namespace owned by a user namespace of the tree's the files belong to
/// its root, who alone may write them: written as that root then.
fn write_sysctls(img: &IpcNs, raise_only: bool) -> stasis_sys::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata("/proc/sys/kernel/shmmax")
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0));
    if owner != (0, 0) {
        let img = img.clone();
        return ipc::as_ids(owner, move || write_sysctls_here(&img, raise_only));
    }
    write_sysctls_here(img, raise_only)
}

fn write_sysctls_here(img: &IpcNs, raise_only: bool) -> stasis_sys::Result<()> {
    let mut order: Vec<_> = img.sysctls.iter().collect();
    order.sort_by_key(|s| s.name == "kernel/shm_rmid_forced");
    for s in order {
        let path = format!("/proc/sys/{}", s.name);
        let value = if raise_only {
            if !is_limit(&s.name) {
                continue;
            }
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            raised(&now, &s.value)
        } else if s.name.ends_with("_next_id") && s.value.trim() == "-1" {
            continue;
        } else {
            s.value.clone()
        };
        std::fs::write(&path, &value).map_err(|e| {
            stasis_sys::SysError::new(
                format!("write {path} = {value}"),
                None,
                e.raw_os_error().unwrap_or(0),
            )
        })?;
    }
    Ok(())
}

/// Field by field, the larger of two whitespace-separated number lists.
fn raised(now: &str, saved: &str) -> String {
    let now: Vec<&str> = now.split_whitespace().collect();
    saved
        .split_whitespace()
        .enumerate()
        .map(|(i, v)| {
            match (
                v.parse::<u64>(),
                now.get(i).and_then(|n| n.parse::<u64>().ok()),
            ) {
                (Ok(a), Some(b)) => a.max(b).to_string(),
                _ => v.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Attaches segment `id` in the process at the VMA's place (remote shmat,
/// SHM_RDONLY where the mapping could never be writable), a part of it
/// (a VMA split by mprotect or munmap) through a temporary attachment
/// moved into place; then the saved protection.
pub(crate) fn attach(
    r: &mut RemoteThread,
    v: &Vma,
    id: i32,
    sizes: &HashMap<i32, u64>,
) -> Result<()> {
    let pid = r.tid().0 as u32;
    let st = Stage::Memory;
    let size = sizes
        .get(&id)
        .ok_or_else(|| RestoreError::Refused {
            pid,
            stage: st,
            what: format!(
                "mapping {:#x}-{:#x} of SysV shm segment {id}, not in the image",
                v.start, v.end
            ),
        })?
        .next_multiple_of(PAGE_SIZE);
    let len = v.end - v.start;
    // The mappings queued before this one go first: the order of the
    // address space's changes stays the image's.
    r.flush().at(pid, st)?;
    let rdonly = if v.maywrite { 0 } else { SHM_RDONLY };
    let what = format!("shmat({id}) at {:#x}-{:#x}", v.start, v.end);
    if v.pgoff == 0 && len == size {
        let got = r
            .call(
                libc::SYS_shmat,
                &[id as u64, v.start, rdonly | SHM_REMAP],
                &what,
            )
            .at(pid, st)?;
        if got != v.start {
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!("{what} landed at {got:#x}"),
            });
        }
    } else {
        let tmp = r
            .call(libc::SYS_shmat, &[id as u64, 0, rdonly], &what)
            .at(pid, st)?;
        r.call(
            libc::SYS_mremap,
            &[
                tmp + v.pgoff,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                v.start,
            ],
            &format!("mremap part of SysV shm segment {id} to {:#x}", v.start),
        )
        .at(pid, st)?;
        r.call(
            libc::SYS_munmap,
            &[tmp, size],
            "munmap the rest of a SysV shm attachment",
        )
        .at(pid, st)?;
    }
    let given = libc::PROT_READ as u32
        | if v.maywrite {
            libc::PROT_WRITE as u32
        } else {
            0
        };
    if v.prot != given {
        r.call(
            libc::SYS_mprotect,
            &[v.start, len, u64::from(v.prot)],
            &format!("mprotect SysV shm {:#x}-{:#x}", v.start, v.end),
        )
        .at(pid, st)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_raised_field_by_field() {
        assert_eq!(
            raised("32000 1024000000 500 32000", "200 64000 40 100"),
            "32000 1024000000 500 32000"
        );
        assert_eq!(
            raised("250\t32000\t32\t128", "300 1000 64 10"),
            "300 32000 64 128"
        );
        assert_eq!(raised("8192", "9000"), "9000");
        assert_eq!(raised("", "9000"), "9000");
        assert!(is_limit("kernel/msgmax") && !is_limit("kernel/shm_next_id"));
        assert!(!is_limit("kernel/shm_rmid_forced"));
    }
}
