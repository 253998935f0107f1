//! Restoring a whole tree: the named stages of [`restore_tree`]. Each stage
//! is one function below, in the order they run; the reason for each
//! ordering constraint is written where the stage is called.

use crate::guard::TreeGuard;
use crate::kinds::{self, Opened, ProcFiles};
use crate::memory::{ServiceFds, STUB_LEN};
use crate::shared::SharedObjects;
use crate::{fault_point, pids, rebuild, At, RestoreError, Result, Stage};
use stasis_image::{ProcessImage, VmaKind, Zombie};
use stasis_sys::ptrace;
use stasis_sys::remote::{restart_fixed, RemoteThread};
use stasis_sys::spawn::{self, FdPlan};
use stasis_sys::{util, Pid};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// What a tree is restored into, besides its images.
pub(crate) struct Setting<'a> {
    /// In a PID namespace of its own.
    pub(crate) pid_ns: bool,
    /// criu's `--shell-job`.
    pub(crate) shell_job: bool,
    /// Its own UTS and IPC namespaces, if it had them.
    pub(crate) ns: TreeNs<'a>,
    pub(crate) cgroups: &'a crate::cgroups::Prepared,
    /// `--tcp-close`, and the network lock to release once the tree runs.
    pub(crate) net: Net<'a>,
    /// criu's `--restore-sibling`: the first process forked is our
    /// parent's child (CLONE_PARENT), for the caller to wait for.
    pub(crate) sibling: bool,
    /// criu's `--inherit-fd fd[N]:KEY`: descriptors of ours that stand in
    /// for the image's external pipes named KEY.
    pub(crate) inherit: &'a [(i32, String)],
}

/// The namespaces a restore makes for the tree besides PID and mount:
/// UTS (its names) and IPC (its objects), when the tree had its own.
#[derive(Clone, Copy)]
pub(crate) struct TreeNs<'a> {
    /// The tree's user namespace and the namespaces made in it already.
    pub user: Option<&'a crate::userns::Held>,
    pub uts: Option<&'a stasis_image::UtsNs>,
    pub time: Option<&'a stasis_image::TimeNs>,
    pub cgroup: Option<&'a stasis_image::CgroupNs>,
    pub net: Option<&'a stasis_image::NetNs>,
    pub ipc: Option<&'a stasis_image::IpcNs>,
}

/// Restores every process of the image (parents first in `procs`) and
/// leaves them running, calling `hook` at criu's action points; returns
/// the root's PID and the PID to wait for.
pub(crate) fn restore_tree(
    procs: &[ProcessImage],
    pages: &[PathBuf],
    zombies: &[Zombie],
    setting: &Setting<'_>,
    hook: &mut crate::ActionHook<'_>,
) -> Result<(Pid, Pid)> {
    let Setting {
        pid_ns,
        shell_job,
        ns,
        cgroups,
        net,
        sibling,
        inherit,
    } = *setting;
    let mut prof = crate::rebuild::Prof::new();
    let root_pid = procs[0].pid;
    let TreeNs {
        user,
        uts,
        time,
        cgroup,
        net: net_ns,
        ipc,
    } = ns;
    if let Some(img) = ipc {
        crate::sysvipc::preflight(img, root_pid)?;
    }
    // The processes' rebuild order and who gives SysV IPC its last PIDs.
    let pid_plan = match ipc {
        Some(img) => Some(crate::sysvipc::pid_plan(
            img,
            procs,
            pid_ns,
            user.is_some(),
        )?),
        None => None,
    };
    // 0. the tree's own network namespace, entered by this thread before
    //    its sockets are made and left after the fork (netns.rs).
    let mut net_ns = match (net_ns, &net.opts.join) {
        (None, None) => None,
        (img, _) => Some(crate::netns::Net::enter(
            img,
            (net.opts, user.and_then(|u| u.net.as_ref())),
            net.lock,
            root_pid,
        )?),
    };
    // 1. open files: before the fork, so that every process inherits them
    //    and descriptions shared in the image are shared again.
    let (mut opened, files) = open_files(
        procs,
        pages,
        shell_job,
        net.tcp_close,
        inherit,
        (!pid_ns, pid_ns),
    )?;
    prof.mark("open_files");
    let (ready_r, ready_w) = util::pipe().at(root_pid, Stage::Fork)?;
    // 2. plan: who forks whom, with which descriptors, which helpers.
    let mut tree = plan_tree(procs, zombies, pid_ns, &files, &opened, &ready_w)?;
    tree.plan.sibling = sibling;
    tree.plan.sock_calls = opened.sock_calls.take().unwrap_or_default();
    if let Some(u) = user {
        for c in &mut tree.plan.sock_calls {
            u.call_ids_inside(root_pid, c)?;
        }
    }
    if let Some(sid) = tree.session_helper.filter(|_| sibling) {
        // The helper would be the root's parent, and its death would hand
        // the root to a reaper of the caller's, not to the caller.
        return Err(RestoreError::Refused {
            pid: root_pid,
            stage: Stage::Fork,
            what: format!(
                "--restore-sibling: the root's session leader {sid} is not in the tree (its session helper would be the root's parent)"
            ),
        });
    }
    // The tree's own user namespace, made first (it owns every namespace
    // made for the tree after it), and its PID namespace.
    tree.plan.user_ns = user.map(|u| u.user.as_raw_fd());
    // The tree's session keyring, joined anew by the root before it forks.
    tree.plan.session_keyring = crate::keyrings::preflight(procs, user.is_some())?;
    // The tree's own UTS namespace, made by the first process forked.
    tree.plan.uts = uts.map(|u| {
        (
            u.hostname.clone().into_bytes(),
            u.domainname.clone().into_bytes(),
        )
    });
    // The tree's own time namespace, made with its offsets and entered
    // by the first process forked.
    tree.plan.time_offsets = time.map(crate::timens::offsets_text);
    // The tree's own cgroup namespace, made by the first process forked.
    tree.plan.cgroup_ns = crate::cgroupns::plan(cgroup, cgroups, root_pid)?;
    // The tree's own mount namespace (built before the files were opened
    // in it), entered by the first process forked.
    tree.plan.mntns = crate::mntns::for_fork();
    tree.plan.late_mounts = crate::mntns::late_mounts();
    // 3. shared objects (stub area, shared anonymous memory, copy-on-write
    //    memory): before the fork, since only inheritance gives every
    //    process the very same object.
    let saved_fds: std::collections::HashMap<u64, i32> = opened
        .saved
        .indices()
        .map(|(id, i)| (id, opened.owned[i].as_raw_fd()))
        .collect();
    let shared = SharedObjects::create(procs, pages, &saved_fds)?;
    prof.mark("plan+shared");
    tree.stub = shared.stub;
    for (s, _) in &mut tree.svcs {
        s.shmem = shared.shmem.clone();
        s.cow = shared.cow.clone();
    }
    // 3b. SysV IPC: the tree's own IPC namespace (this thread enters a new
    //    one until the fork, so every process is born in it) and its
    //    objects with their ids, or the dumper's namespace's segments.
    let ipc_own = ipc.is_some_and(|i| i.own);
    // A new PID namespace: the SysV objects are made once its init exists
    //    (their helpers take PIDs there): `--new-pid-ns`'s helper init, or
    //    the root of a tree that was a namespace's init, waits on this
    //    gate before it forks the rest of the tree.
    let root_live = pid_plan.as_ref().is_some_and(|p| p.root_live);
    let gate = match ipc {
        Some(i)
            if pid_ns
                && (root_pid != 1 || root_live)
                && !(i.shm.is_empty() && i.sem.is_empty() && i.msg.is_empty()) =>
        {
            Some(util::pipe().at(root_pid, Stage::Fork)?)
        }
        _ => None,
    };
    tree.plan.gate = gate.as_ref().map(|(r, w)| (r.as_raw_fd(), w.as_raw_fd()));
    let mut ipc = match (ipc, &pid_plan) {
        (Some(img), Some(plan)) => Some(crate::sysvipc::Ipc::create(
            img,
            root_pid,
            &pages[0],
            (
                user.and_then(|u| u.ipc.as_ref()),
                user.map(|u| u.maps.clone()),
            ),
            (plan, gate.is_some()),
        )?),
        _ => None,
    };
    // POSIX message queue descriptors: their queues exist now, in the
    // namespace this thread is in until the fork.
    kinds::mqueue::open_later(&mut opened, ipc_own)?;
    if let Some(i) = &ipc {
        for (s, _) in &mut tree.svcs {
            s.sysv = i.sizes();
        }
    }
    if let Some(p) = &pid_plan {
        for (k, (s, _)) in tree.svcs.iter_mut().enumerate() {
            s.sysv_touch = p.touch[k].clone();
        }
    }
    // 3c. the restorer leaves the built mount namespace (every file is
    //     open): the first process pivots there, alone in it.
    crate::mntns::leave().at(root_pid, Stage::Fork)?;
    // 4. fork: the restorer's copies of everything go once the tree has them.
    let seals = opened.saved.take_seals();
    let times = opened.saved.take_times();
    let repaired = std::mem::take(&mut opened.repaired);
    // Events the restorer's own work queued in restored fanotify groups.
    kinds::fanotify::drain_all(&opened, root_pid)?;
    prof.mark("pre-fork");
    let forked = fork(procs, zombies, &tree, shared, (files, opened, ready_w));
    // The helper init waits at the gate: the SysV objects now, in its
    //    namespace (a failure closes the gate: it exits, the guard of
    //    `forked` ends the rest).
    if let (Some(i), Some(plan), Some((_, w)), Ok((top, _))) = (&mut ipc, &pid_plan, gate, &forked)
    {
        let init = util::pidfd_open(*top).at(root_pid, Stage::Fork)?;
        i.make_in(plan, &init)?;
        use std::io::Write;
        std::fs::File::from(w)
            .write_all(&[1])
            .map_err(|source| RestoreError::Io {
                pid: root_pid,
                stage: Stage::Fork,
                what: "open the new PID namespace's gate".into(),
                source,
            })?;
    }
    if let Some(i) = &mut ipc {
        i.leave()?;
    }
    if let Some(n) = &mut net_ns {
        n.leave()?;
    }
    let (top, mut guard) = forked?;
    prof.mark("fork");
    // 5. ready: every live process has placed its descriptors.
    wait_ready(&ready_r, tree.expected_ready, procs.len(), root_pid)?;
    prof.mark("wait_ready");
    // Outside a new PID namespace every process has its image PID (clone3
    // set_tid gives it or fails) and reported ready under it: no walk of
    // /proc needed.
    let host = if pid_ns {
        pids::host_pids(top, pid_ns).at(root_pid, Stage::Fork)?
    } else {
        procs.iter().map(|p| (p.pid, Pid(p.pid as i32))).collect()
    };
    prof.mark("host_pids");
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
    // criu's namespace points: the tree exists (stasis makes no namespace
    // but the PID and UTS ones the tree was forked into).
    crate::action(hook, "setup-namespaces", root_pid, root.0)?;
    crate::action(hook, "post-setup-namespaces", root_pid, root.0)?;
    // 6. seize every process (EXITKILL: if we die, they die).
    let mut remotes = seize_all(procs, &host_of, tree.stub, &mut guard)?;
    prof.mark("seize");
    // 6b. cgroups: each process joins its own before its memory is
    //     rebuilt (pages are charged where they are first touched) and
    //     before its threads exist (they inherit the process's).
    for img in procs {
        cgroups.join(img.pid, host_of(img.pid)?)?;
    }
    // 7. process groups: leaders first, then members; then the group
    //    helpers, whose only job was to hold a group until it was joined.
    set_process_groups(procs, &mut remotes, &tree.group_helpers)?;
    reap_group_helpers(procs, &mut remotes, &tree.group_helpers)?;
    // 7b. foreground groups of the terminals: the groups exist now.
    kinds::pty::set_foreground(procs, &mut remotes)?;
    prof.mark("cgroups+pgroups");
    // 8. rebuild each process; all stay stopped until every one is done,
    //    so a failure can still undo the whole tree.
    //    In image order, except that the last attacher of a SysV segment
    //    others attach comes after them (sysvipc::PidPlan).
    // What PID 1 recorded in SysV IPC, by the root (PID 1 of its own
    //    namespace) by remote calls, before any process attaches.
    if let (Some(i), Some(r)) = (&mut ipc, remotes.first_mut()) {
        i.by_root(r)?;
    }
    let order = pid_plan.map_or_else(|| (0..procs.len()).collect(), |p| p.order);
    //    Every process's tear-down of the restorer's copy is started
    //    first and runs at once (rebuild::start), then each is waited for.
    let mut started = Vec::with_capacity(procs.len());
    let layout = crate::memory::Inherited::read(root_pid)?;
    for (k, r) in remotes.iter_mut().enumerate() {
        started.push(Some(rebuild::start(
            &procs[k],
            r,
            &tree.svcs[k].0,
            tree.stub,
            &layout,
        )?));
    }
    for r in &mut remotes {
        crate::memory::tear_down_end(r)?;
    }
    prof.mark("tear-down all");
    //    Then every process's mappings, at once too, unless a SysV segment
    //    is attached (the order of attachments across processes is part of
    //    what is restored: sysvipc::PidPlan).
    let sysv_attached = procs.iter().any(|p| {
        p.mm.vmas
            .iter()
            .any(|v| matches!(v.kind, VmaKind::SysvShm { .. }))
    });
    if !sysv_attached {
        for (k, (r, s)) in remotes.iter_mut().zip(&mut started).enumerate() {
            if let Some(s) = s {
                rebuild::map_start(&procs[k], r, &tree.svcs[k].0, tree.stub, s)?;
            }
        }
        for r in &mut remotes {
            crate::memory::map_end(r)?;
        }
        prof.mark("map all");
        //    And their pages, at once too, where one call fills them.
        let mut filling = Vec::with_capacity(remotes.len());
        for (k, (r, s)) in remotes.iter_mut().zip(&mut started).enumerate() {
            filling.push(match s {
                Some(s) => rebuild::fill_start(&procs[k], r, &tree.svcs[k].0, s)?,
                None => None,
            });
        }
        for (r, f) in remotes.iter_mut().zip(filling) {
            if let Some(f) = f {
                crate::memory::fill_end(r, f)?;
            }
        }
        prof.mark("fill all");
    } else {
        prof.mark("map all");
    }
    let mut remotes: Vec<Option<RemoteThread>> = remotes.into_iter().map(Some).collect();
    let mut built: Vec<Vec<Pid>> = vec![Vec::new(); procs.len()];
    for k in order {
        let (svc, ready_fd) = &tree.svcs[k];
        let (Some(r), Some(s)) = (remotes[k].take(), started[k].take()) else {
            continue; // (the order names each process once)
        };
        built[k] = rebuild::rebuild(&procs[k], r, (svc, *ready_fd), tree.stub, &mut guard, k, s)?;
    }
    // 9. seals: after every process has mapped the memfds (a write seal
    //    forbids new writable shared mappings); then the saved files'
    //    times again.
    kinds::saved::seal_all(root_pid, seals)?;
    // Saved files' times once more: the remote mmaps moved access times.
    kinds::saved::times_again(root_pid, times)?;
    prof.mark("rebuild all");
    // SysV IPC last: segments marked for removal are removed once every
    // process has attached them, and the sysctls (shm_rmid_forced) set.
    if let Some(i) = &mut ipc {
        i.finish()?;
    }
    fault_point(root_pid, Stage::Registers)?;
    // The last instant a failure can still undo everything (the network
    // lock stays on: the peers wait for another try).
    crate::action(hook, "post-restore", root_pid, root.0)?;
    crate::action(hook, "pre-resume", root_pid, root.0)?;
    fault_point(root_pid, Stage::Resume)?;
    // The network lock released (in the tree's namespace when it was
    // made there), the TCP connections out of repair mode.
    if let Some(n) = &mut net_ns {
        n.release_lock()?;
    }
    kinds::tcp::go_live(root_pid, net.lock.filter(|l| !l.in_netns), repaired)?;
    // 10. resume.
    let wait_pid = resume(procs, &built, top, root, tree.stub, tree.session_helper)?;
    prof.mark("finish+resume");
    prof.log(root_pid, "restore of the tree");
    guard.armed = false;
    if let Some(i) = ipc {
        i.keep();
    }
    Ok((root, wait_pid))
}

/// Stage 1: every descriptor of every process (shared descriptions and
/// objects once), the saved files first since descriptors reopen them.
fn open_files(
    procs: &[ProcessImage],
    pages: &[PathBuf],
    shell_job: bool,
    tcp_close: bool,
    inherit: &[(i32, String)],
    (peer_pids, sock_calls): (bool, bool),
) -> Result<(Opened, Vec<ProcFiles>)> {
    let mut opened = Opened::default();
    opened.tcp_close = tcp_close;
    opened.inherit = inherit.to_vec();
    opened.peer_pids = peer_pids;
    opened.sock_calls = sock_calls.then(Vec::new);
    if shell_job {
        opened.shell_tty = Some(kinds::own_tty().ok_or_else(|| RestoreError::Refused {
            pid: procs[0].pid,
            stage: Stage::Fork,
            what: "--shell-job: stasis has no terminal on stdin, stdout or stderr to give the processes".into(),
        })?);
    }
    kinds::saved::create_all(&mut opened, procs, pages)?;
    let mut files = Vec::with_capacity(procs.len());
    for (img, pg) in procs.iter().zip(pages) {
        files.push(ProcFiles::open(img, pg, procs, &mut opened)?);
    }
    kinds::unix_connect_later(&mut opened, procs)?;
    kinds::unix_fill_later(&mut opened, procs)?;
    kinds::pty::finish_all(&opened, procs)?;
    Ok((opened, files))
}

/// The tree's TCP connections: criu's `--tcp-close`, and the network lock
/// the dump left, to release before the tree resumes.
#[derive(Clone, Copy)]
pub(crate) struct Net<'a> {
    pub(crate) tcp_close: bool,
    pub(crate) lock: Option<&'a stasis_image::kinds::inet::NetLock>,
    pub(crate) opts: &'a crate::NetOptions,
}

/// The tree to fork and what each process will find.
struct Tree {
    plan: spawn::TreePlan,
    /// Per process: its service descriptors and its end of the ready pipe.
    svcs: Vec<(ServiceFds, i32)>,
    /// Group helpers: (process group, index of the parent that forks it).
    group_helpers: Vec<(u32, usize)>,
    session_helper: Option<i32>,
    expected_ready: usize,
    /// Where the stub area is (set when the shared objects are made).
    stub: u64,
}

/// Stage 2: each process forked by its parent, zombies last, and the
/// helpers that hold a session or a process group whose leader had exited.
fn plan_tree(
    procs: &[ProcessImage],
    zombies: &[Zombie],
    pid_ns: bool,
    files: &[ProcFiles],
    opened: &Opened,
    ready_w: &OwnedFd,
) -> Result<Tree> {
    let max_target = procs
        .iter()
        .flat_map(|p| p.files.iter().map(|f| f.fd))
        .max()
        .unwrap_or(-1);
    let staging = util::max_open_fd().max(max_target) + 1;
    let tree_pids: HashSet<u32> = procs
        .iter()
        .map(|p| p.pid)
        .chain(zombies.iter().map(|z| z.pid))
        .collect();
    // A root whose session leader had exited (a daemon after a double
    // fork) gets that session back from a helper, when its PID is free.
    let r0 = &procs[0];
    let session_helper = (!pid_ns
        && r0.sid != r0.pid
        && r0.sid != 0
        && !tree_pids.contains(&r0.sid)
        && !util::pid_exists(Pid(r0.sid as i32)))
    .then_some(r0.sid as i32);
    let mut tree = Tree {
        plan: spawn::TreePlan {
            procs: Vec::new(),
            staging,
            ready_fd: ready_w.as_raw_fd(),
            new_pid_ns: pid_ns,
            session_helper,
            uts: None,
            time_offsets: None,
            cgroup_ns: None,
            mntns: None,
            late_mounts: Vec::new(),
            sibling: false,
            user_ns: None,
            session_keyring: None,
            gate: None,
            sock_calls: Vec::new(),
        },
        svcs: Vec::with_capacity(procs.len()),
        group_helpers: Vec::new(),
        session_helper,
        expected_ready: 0,
        stub: 0,
    };
    // Our signal dispositions and credentials, which the fork gives every
    // process.
    let me = stasis_proc::read_status(std::process::id()).map_err(|e| RestoreError::Refused {
        pid: procs[0].pid,
        stage: Stage::Fork,
        what: format!("the restorer's own signal dispositions and credentials: {e}"),
    })?;
    let me = std::sync::Arc::new(me);
    for (img, f) in procs.iter().zip(files) {
        let mut srcs: Vec<i32> = f
            .srcs
            .iter()
            .map(|&i| opened.owned[i].as_raw_fd())
            .collect();
        let ready_index = srcs.len();
        srcs.push(ready_w.as_raw_fd());
        tree.svcs.push((
            f.service_fds(img, staging, me.clone()),
            staging + ready_index as i32,
        ));
        tree.plan.procs.push(spawn::ProcPlan {
            pid: img.pid as i32,
            exit_signal: img.exit_signal as i32,
            setsid: img.sid == img.pid,
            // The leader of a session with a pty of the tree as its
            // controlling terminal takes it right after setsid, before
            // forking: its children inherit it (a controlling terminal is
            // per process, copied at fork).
            ctty_fd: img
                .ctty_pty
                .filter(|_| img.sid == img.pid)
                .and_then(|n| kinds::pty::master_fd(opened, n)),
            zombie_status: None,
            fds: FdPlan {
                staging,
                srcs,
                targets: f.targets.clone(),
            },
            ready_index,
            children: Vec::new(),
            group_helper: false,
            nested_pids: img.ns_pids.iter().rev().map(|&p| p as i32).collect(),
            nested_init: img.ns_pids.len() > 1 && img.ns_pids.last() == Some(&1),
            pid_for_children_nested: img.pid_for_children_nested,
        });
    }
    link_parents(procs, zombies, &mut tree.plan)?;
    crate::pids::order_nested(procs, &mut tree.plan)?;
    plan_group_helpers(procs, pid_ns, &tree_pids, &mut tree, ready_w)?;
    tree.expected_ready = procs.len() + tree.group_helpers.len();
    Ok(tree)
}

/// Each process and zombie becomes a child of its parent in the plan.
fn link_parents(
    procs: &[ProcessImage],
    zombies: &[Zombie],
    plan: &mut spawn::TreePlan,
) -> Result<()> {
    let index: HashMap<u32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
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
    Ok(())
}

/// Process groups whose leader had exited: a helper child of the first
/// member's parent holds the group until the members have joined it.
fn plan_group_helpers(
    procs: &[ProcessImage],
    pid_ns: bool,
    tree_pids: &HashSet<u32>,
    tree: &mut Tree,
    ready_w: &OwnedFd,
) -> Result<()> {
    let index: HashMap<u32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let r0 = &procs[0];
    let outside_group = (r0.pgid != r0.pid).then_some(r0.pgid);
    for img in procs.iter().skip(1) {
        let g = img.pgid;
        if g == 0
            || g == img.pid
            || tree_pids.contains(&g)
            || Some(g) == outside_group
            || Some(g as i32) == tree.session_helper
            || tree.group_helpers.iter().any(|h| h.0 == g)
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
        tree.plan.procs.push(spawn::ProcPlan {
            pid: g as i32,
            exit_signal: libc::SIGCHLD,
            group_helper: true,
            fds: FdPlan {
                staging: tree.plan.staging,
                srcs: vec![ready_w.as_raw_fd()],
                targets: Vec::new(),
            },
            ready_index: 0,
            ..Default::default()
        });
        let hi = tree.plan.procs.len() - 1;
        tree.plan.procs[parent].children.insert(0, hi);
        tree.group_helpers.push((g, parent));
    }
    Ok(())
}

/// Stage 4: forks the tree from the plan. Every object the restorer made
/// for it (files, shared memory, the stub area) is dropped here, right
/// after, whatever the outcome. Returns our child (the root, or a helper
/// above it) and the guard that kills the tree on any later error.
fn fork(
    procs: &[ProcessImage],
    zombies: &[Zombie],
    tree: &Tree,
    shared: SharedObjects,
    inherited: (Vec<ProcFiles>, Opened, OwnedFd),
) -> Result<(Pid, TreeGuard)> {
    let root_pid = procs[0].pid;
    // Orphans of a failed restore must come to us (see TreeGuard).
    let was_subreaper = util::is_child_subreaper();
    if let Err(e) = util::set_child_subreaper(true) {
        log::warn!("pid {root_pid}: {e}: a failed restore may leave zombies to our parent");
    }
    // Free heap memory goes back to the kernel first: every process of
    // the tree is a copy of the restorer, whose anonymous pages the fork
    // copies page by page and the rebuild unmaps again in each.
    util::trim_heap();
    let root = spawn::spawn_tree(&tree.plan);
    shared.unmap();
    drop(inherited);
    if root.is_err() && !was_subreaper {
        let _ = util::set_child_subreaper(false);
    }
    let (top, top_fd) = root.map_err(|source| match source.errno() {
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
        sibling: tree.plan.sibling.then_some(top_fd),
    };
    // Helpers are ours to kill and reap on failure too.
    guard.pids.extend(
        tree.group_helpers
            .iter()
            .map(|h| h.0 as i32)
            .chain(tree.session_helper),
    );
    Ok((top, guard))
}

/// Stage 5: one `[pid, code]` record per live process (30 s limit); a
/// non-zero code is a process that failed to start.
fn wait_ready(ready_r: &OwnedFd, expected: usize, procs: usize, root_pid: u32) -> Result<()> {
    let mut ready = 0;
    let mut buf = [0u8; 8 * 64];
    let mut pending: Vec<u8> = Vec::new();
    while ready < expected {
        let n = util::read_timeout(ready_r, &mut buf, 30_000).at(root_pid, Stage::Fork)?;
        if n == 0 {
            return Err(RestoreError::Refused {
                pid: root_pid,
                stage: Stage::Fork,
                what: format!("only {ready} of {procs} processes started within 30 s"),
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
    Ok(())
}

/// Stage 6: seizes every process (PTRACE_O_EXITKILL) and gets a remote
/// thread for its leader.
fn seize_all(
    procs: &[ProcessImage],
    host_of: &dyn Fn(u32) -> Result<Pid>,
    stub: u64,
    guard: &mut TreeGuard,
) -> Result<Vec<RemoteThread>> {
    let mut remotes = Vec::with_capacity(procs.len());
    // Every process seized and interrupted first, then each waited for:
    // they all go to their stops at once.
    let mut hosts = Vec::with_capacity(procs.len());
    for img in procs {
        let p = host_of(img.pid)?;
        spawn::seize_interrupt(p).at(img.pid, Stage::Fork)?;
        guard.traced.push((p, Vec::new()));
        hosts.push(p);
    }
    for (img, &p) in procs.iter().zip(&hosts) {
        spawn::wait_seized(p).at(img.pid, Stage::Fork)?;
        remotes.push(
            RemoteThread::plain(p, stub, stub + 4096, STUB_LEN - 4096).at(img.pid, Stage::Fork)?,
        );
    }
    Ok(remotes)
}

/// Stage 7: setpgid in each process, group leaders first. A group whose
/// leader is not part of the tree stays the restorer's (the root's group,
/// normally).
fn set_process_groups(
    procs: &[ProcessImage],
    remotes: &mut [RemoteThread],
    group_helpers: &[(u32, usize)],
) -> Result<()> {
    let helpers: HashSet<u32> = group_helpers.iter().map(|h| h.0).collect();
    let pids: HashSet<u32> = procs.iter().map(|p| p.pid).collect();
    let root = &procs[0];
    let mut order: Vec<usize> = (0..procs.len()).collect();
    order.sort_by_key(|&i| procs[i].pgid != procs[i].pid);
    // The tree's namespace level in our /proc's NSpid.
    let level = crate::pids::tree_level(remotes.first().map(|r| r.tid()));
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
        let current = if level == 0 {
            // Our namespace's number is the tree's: no /proc read.
            util::getpgid(Pid(host as i32)).map_or(0, |g| g as u32)
        } else {
            stasis_proc::read_status(host)
                .ok()
                .and_then(|s| s.ns_pgid.get(level).copied())
                .unwrap_or(0)
        };
        if current == img.pgid {
            continue; // a session leader is its own group already
        }
        let arg = if img.pgid == img.pid {
            0
        } else {
            u64::from(crate::pids::seen_by(procs, img, img.pgid)?)
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

/// The members have joined: the group helpers go, killed and reaped by
/// their parents.
fn reap_group_helpers(
    procs: &[ProcessImage],
    remotes: &mut [RemoteThread],
    group_helpers: &[(u32, usize)],
) -> Result<()> {
    for &(g, parent) in group_helpers {
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
    Ok(())
}

/// Stage 10: detach children before parents (a stopped process with
/// SIGSTOP, so it stays stopped). The helper init of a new namespace must
/// outlive us, the session helper must not. Returns the PID to wait for.
fn resume(
    procs: &[ProcessImage],
    built: &[Vec<Pid>],
    top: Pid,
    root: Pid,
    stub: u64,
    session_helper: Option<i32>,
) -> Result<Pid> {
    let root_pid = procs[0].pid;
    // Clear the parent-death signal that tied the helper init to the
    // restore until now.
    if top != root {
        release_helper(top, stub).at(root_pid, Stage::Resume)?;
    }
    for (img, tids) in procs.iter().zip(built).rev() {
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
    if session_helper.is_some() && top != root {
        let _ = util::kill(top, libc::SIGKILL);
        let _ = util::waitpid(top, libc::__WALL);
        return Ok(root);
    }
    Ok(top)
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
