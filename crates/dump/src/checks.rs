//! Refusals: state the tree holds that stasis cannot restore yet, found
//! before anything is collected or written, each named in the error.
//!
//! These are the kinds of state a restore would otherwise hand back
//! silently different: namespaces other than the restorer's, kernel
//! objects shared between processes without being threads (or unshared by
//! one thread), per-thread credentials and seccomp that differ from the
//! leader's, 32-bit code, hardware debug registers and GDT TLS entries.

use crate::freeze::FrozenTree;
use crate::{At, DumpError, Result, Stage};
use stasis_sys::remote::{le_u32, RemoteThread};
use stasis_sys::util::{self, Shared};
use stasis_sys::{ptrace, Pid};
use std::collections::HashSet;

/// The namespaces a process may not hold apart from stasis's own (a PID
/// namespace is handled by the dump and restore themselves).
const NAMESPACES: [&str; 9] = [
    "mnt",
    "net",
    "uts",
    "ipc",
    "user",
    "cgroup",
    "time",
    "pid_for_children",
    "time_for_children",
];

/// The 64-bit user code segment selector; 0x23 is the 32-bit one.
const USER_CS_64: u64 = 0x33;

pub(crate) fn refuse(pid: u32, what: String) -> DumpError {
    DumpError::Unsupported {
        pid,
        stage: Stage::Check,
        what,
    }
}

/// Runs every check on every process and thread of `tree`.
pub(crate) fn check_tree(tree: &FrozenTree, shell_job: bool) -> Result<()> {
    let root = tree.procs.first().map(|f| f.pid);
    let Some(root) = root else { return Ok(()) };
    let reference = Namespaces::of(root, "self")?;
    for f in &tree.procs {
        let pid = f.pid.0 as u32;
        namespaces(pid, &reference)?;
        sharing(f.pid, shell_job)?;
        let lead = if f.tids.len() > 1 {
            Some(stasis_proc::read_status(pid).at(pid, Stage::Check)?)
        } else {
            None
        };
        for &tid in &f.tids {
            thread_arch(pid, tid)?;
            if let (Some(lead), true) = (&lead, tid != f.pid) {
                thread_differs(pid, f.pid, lead, tid)?;
            }
        }
    }
    Ok(())
}

/// Inode numbers of a task's namespaces, in [`NAMESPACES`] order (None
/// where the kernel has no such namespace).
struct Namespaces {
    /// `mnt` may differ from stasis's when the tree is a PID namespace
    /// stasis runs (`stasis run`): its private mount namespace is made
    /// anew at restore. Then every process must share the root's.
    pid_ns_tree: bool,
    ids: Vec<Option<u64>>,
    root_mnt: Option<u64>,
    /// The root's UTS namespace, which the whole tree must share (its
    /// names are saved when it is not stasis's: uts.rs).
    root_uts: Option<u64>,
    /// The root's IPC namespace, which the whole tree must share (its
    /// objects are saved when it is not stasis's: sysvipc.rs).
    root_ipc: Option<u64>,
    /// The root's time namespace, which the whole tree must share, also
    /// as the namespace of its children (offsets saved: timens.rs).
    root_time: Option<u64>,
    /// The root's cgroup namespace, which the whole tree must share (its
    /// roots are saved when it is not stasis's: cgroupns.rs).
    root_cgroup: Option<u64>,
    /// The root's network namespace, which the whole tree must share
    /// (its links, addresses and routes are saved: netns.rs).
    root_net: Option<u64>,
    /// The root's user namespace, which the whole tree must share (its
    /// maps are saved when it is not stasis's: userns.rs).
    root_user: Option<u64>,
}

/// The inode of namespace `ns` of `task` (a PID, or "self").
pub(crate) fn ns_id(task: &str, ns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{task}/ns/{ns}"))
        .ok()
        .map(|m| m.ino())
}

impl Namespaces {
    fn of(root: Pid, me: &str) -> Result<Namespaces> {
        let root_s = root.0.to_string();
        let pid_ns_tree = ns_id(&root_s, "pid") != ns_id(me, "pid");
        Ok(Namespaces {
            pid_ns_tree,
            ids: NAMESPACES.iter().map(|ns| ns_id(me, ns)).collect(),
            root_mnt: ns_id(&root_s, "mnt"),
            root_uts: ns_id(&root_s, "uts"),
            root_ipc: ns_id(&root_s, "ipc"),
            root_time: ns_id(&root_s, "time"),
            root_cgroup: ns_id(&root_s, "cgroup"),
            root_net: ns_id(&root_s, "net"),
            root_user: ns_id(&root_s, "user"),
        })
    }
}

fn namespaces(pid: u32, reference: &Namespaces) -> Result<()> {
    let task = pid.to_string();
    let own_pid_ns = ns_id(&task, "pid");
    for (i, ns) in NAMESPACES.iter().enumerate() {
        let id = ns_id(&task, ns);
        let want = match *ns {
            // The root's, saved when it is not stasis's (mntns.rs).
            "mnt" => reference.root_mnt,
            "uts" => reference.root_uts,
            "ipc" => reference.root_ipc,
            "time" | "time_for_children" => reference.root_time,
            "cgroup" => reference.root_cgroup,
            "net" => reference.root_net,
            // The root's, saved when it is not stasis's (userns.rs).
            "user" => reference.root_user,
            // A process that unshared its children's PID namespace.
            "pid_for_children" if reference.pid_ns_tree => own_pid_ns,
            _ => reference.ids[i],
        };
        if id != want
            && *ns == "pid_for_children"
            && reference.pid_ns_tree
            && child_has_pid_ns(pid, id)
        {
            // unshare(CLONE_NEWPID) then fork: its children's namespace is
            // the nested one of a child (pidns.rs saves the levels).
            continue;
        }
        if id != want && *ns == "time_for_children" && ns_id(&task, "time") == want {
            return Err(refuse(pid, crate::timens::unentered(id)));
        }
        if id != want {
            return Err(refuse(
                pid,
                format!(
                    "a {ns} namespace of its own ({ns}:[{}]): only the PID namespace, and UTS, \
                     IPC, mount, time, cgroup, network and user namespaces the whole tree shares with its root, are restored yet",
                    id.unwrap_or(0)
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a child of `pid` (any thread's) lives in PID namespace `ns`.
fn child_has_pid_ns(pid: u32, ns: Option<u64>) -> bool {
    stasis_proc::list_tasks(pid)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|t| stasis_proc::read_children(pid, t).unwrap_or_default())
        .any(|c| ns.is_some() && ns_id(&c.to_string(), "pid") == ns)
}

/// A controlling terminal (without `--shell-job`), and objects a process
/// shares with its parent without being a thread of it
/// (clone with CLONE_VM, CLONE_FILES, CLONE_FS, CLONE_SIGHAND, or a
/// parent stopped in vfork). Compared with the parent only: that is how
/// such sharing arises.
fn sharing(pid: Pid, shell_job: bool) -> Result<()> {
    let p = pid.0 as u32;
    let stat = stasis_proc::read_stat(p).at(p, Stage::Check)?;
    // A controlling terminal is the restorer's after a restore, or none:
    // only a shell job may change it (criu's --shell-job).
    // A pty slave is checked with the descriptors (kinds::pty::finish): its
    // master may be in the tree.
    let pty = crate::kinds::pty_index(u64::from(stat.tty_nr)).is_some();
    if stat.tty_nr != 0 && !shell_job && !pty {
        return Err(refuse(
            p,
            format!(
                "a controlling terminal (tty {}:{}); use --shell-job (-j) to dump a process attached to one",
                libc::major(u64::from(stat.tty_nr)),
                libc::minor(u64::from(stat.tty_nr))
            ),
        ));
    }
    let parent = Pid(stat.ppid as i32);
    if stat.ppid == 0 || !std::path::Path::new(&format!("/proc/{}/task", stat.ppid)).exists() {
        return Ok(());
    }
    for (what, name) in [
        (Shared::Vm, "its address space (CLONE_VM or vfork)"),
        (Shared::Files, "its descriptor table (CLONE_FILES)"),
        (Shared::Fs, "its cwd, root and umask (CLONE_FS)"),
        (Shared::Sighand, "its signal handlers (CLONE_SIGHAND)"),
    ] {
        // The parent may be outside the tree (the root's parent): kcmp
        // works on any task we may ptrace.
        match util::same_object(pid, parent, what) {
            Ok(true) => {
                return Err(refuse(
                    p,
                    format!("shares {name} with its parent {}", parent.0),
                ))
            }
            Ok(false) => {}
            Err(e) if e.errno() == Some(libc::EPERM) || e.errno() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e).at(p, Stage::Check),
        }
    }
    Ok(())
}

/// Per-thread x86 state outside the registers stasis saves.
fn thread_arch(pid: u32, tid: Pid) -> Result<()> {
    let regs = ptrace::get_regs(tid).at(pid, Stage::Check)?;
    if regs.cs != USER_CS_64 {
        return Err(refuse(
            pid,
            format!(
                "thread {tid} runs 32-bit or other non-64-bit code (cs {:#x})",
                regs.cs
            ),
        ));
    }
    // DR7's enable bits (L0-G3): a hardware breakpoint or watchpoint.
    let dr7 = ptrace::debug_reg(tid, 7).at(pid, Stage::Check)?;
    if dr7 & 0xff != 0 {
        return Err(refuse(
            pid,
            format!("thread {tid} has hardware breakpoints set (debug register DR7 {dr7:#x})"),
        ));
    }
    if ptrace::syscall_user_dispatch_on(tid).at(pid, Stage::Check)? {
        return Err(refuse(
            pid,
            format!("thread {tid} uses syscall user dispatch (PR_SET_SYSCALL_USER_DISPATCH)"),
        ));
    }
    for entry in 12..=14 {
        if ptrace::thread_area_used(tid, entry).at(pid, Stage::Check)? {
            return Err(refuse(
                pid,
                format!("thread {tid} has a GDT TLS entry {entry} (set_thread_area)"),
            ));
        }
    }
    Ok(())
}

/// A thread whose credentials, seccomp mode or unshared fs/files differ
/// from its leader's: stasis restores these per process.
fn thread_differs(pid: u32, leader: Pid, lead: &stasis_proc::Status, tid: Pid) -> Result<()> {
    for (what, name) in [
        (Shared::Files, "unshared its descriptor table"),
        (Shared::Fs, "unshared its cwd, root and umask"),
    ] {
        if !util::same_object(leader, tid, what).at(pid, Stage::Check)? {
            return Err(refuse(pid, format!("thread {tid} {name} (unshare)")));
        }
    }
    let path = format!("/proc/{pid}/task/{}/status", tid.0);
    let text = std::fs::read(&path).map_err(|source| DumpError::Io {
        pid,
        stage: Stage::Check,
        what: format!("read {path}"),
        source,
    })?;
    let t = stasis_proc::parse_status(&text).map_err(|e| refuse(pid, format!("{path}: {e}")))?;
    // Filters are installed once for every thread (seccomp.rs): a thread
    // in another mode than its leader has filters of its own.
    if t.seccomp != lead.seccomp {
        return Err(refuse(
            pid,
            format!(
                "thread {tid} has seccomp filters of its own (mode {}, the leader's {}): not restored yet",
                t.seccomp, lead.seccomp
            ),
        ));
    }
    let creds = |s: &stasis_proc::Status| {
        (
            s.uids,
            s.gids,
            s.groups.clone(),
            [s.cap_inh, s.cap_prm, s.cap_eff, s.cap_bnd, s.cap_amb],
            s.no_new_privs,
        )
    };
    if creds(&t) != creds(lead) {
        return Err(refuse(
            pid,
            format!("thread {tid} has credentials of its own (ids, groups or capabilities differ from the leader's)"),
        ));
    }
    Ok(())
}

/// Per-thread state only the thread itself can report (remote syscalls
/// through its healing area): a NUMA memory policy other than the default,
/// a thread keyring. Returns the thread's parent-death signal, which the
/// caller compares with the leader's (a restore sets the leader's in every
/// thread).
pub(crate) fn query_thread(r: &mut RemoteThread, pid: u32) -> Result<u32> {
    let (scratch, _) = r.scratch();
    r.call(
        libc::SYS_get_mempolicy,
        &[scratch, 0, 0, 0, 0],
        "get_mempolicy",
    )
    .at(pid, Stage::Query)?;
    let mode = le_u32(&r.read_scratch(0, 4).at(pid, Stage::Query)?, 0);
    if mode != MPOL_DEFAULT {
        return Err(refuse(
            pid,
            format!(
                "thread {} has a NUMA memory policy (set_mempolicy mode {mode})",
                r.tid()
            ),
        ));
    }
    let keyring = r
        .syscall(
            libc::SYS_keyctl,
            &[KEYCTL_GET_KEYRING_ID, KEY_SPEC_THREAD_KEYRING as u64, 0],
        )
        .at(pid, Stage::Query)?;
    if keyring >= 0 {
        return Err(refuse(
            pid,
            format!("thread {} has a thread keyring (key {keyring})", r.tid()),
        ));
    }
    r.call(
        libc::SYS_prctl,
        &[libc::PR_GET_PDEATHSIG as u64, scratch],
        "prctl(PR_GET_PDEATHSIG)",
    )
    .at(pid, Stage::Query)?;
    Ok(le_u32(&r.read_scratch(0, 4).at(pid, Stage::Query)?, 0))
}

/// The keyrings a restored process inherits are the restorer's, except a
/// session keyring of its own (a joined one), which is read and saved
/// (keyrings.rs); a process keyring is refused. A process without a
/// session keyring reports its user's default one, which a restored
/// process of that user finds again by itself. (Asking installs that
/// default as the process's session keyring, as the kernel does on any
/// access: the same keyring its lookups fell back to.)
fn keyrings(r: &mut RemoteThread, pid: u32) -> Result<Option<stasis_image::Keyring>> {
    let mut id = |spec: i64| -> Result<Option<i64>> {
        let k = r
            .syscall(libc::SYS_keyctl, &[KEYCTL_GET_KEYRING_ID, spec as u64, 0])
            .at(pid, Stage::Query)?;
        Ok((k >= 0).then_some(k))
    };
    if let Some(k) = id(KEY_SPEC_PROCESS_KEYRING)? {
        return Err(refuse(
            pid,
            format!("a process keyring of its own (key {k}): not restored yet"),
        ));
    }
    let session = id(KEY_SPEC_SESSION_KEYRING)?;
    let user_default = id(KEY_SPEC_USER_SESSION_KEYRING)?;
    log::debug!(
        "pid {pid}: session keyring {session:?}, user default {user_default:?}, ours {:?}",
        stasis_sys::util::own_keyring(KEY_SPEC_SESSION_KEYRING)
    );
    match session {
        Some(k)
            if session != user_default
                && session != stasis_sys::util::own_keyring(KEY_SPEC_SESSION_KEYRING) =>
        {
            crate::keyrings::read_session(r, pid, k).map(Some)
        }
        _ => Ok(None),
    }
}

/// Every process of the tree has the same session keyring: the root's
/// own one (the restored root joins it anew and every other process
/// inherits it), or none of its own.
pub(crate) fn session_keyrings(images: &[&stasis_image::ProcessImage]) -> Result<()> {
    let Some(root) = images.first() else {
        return Ok(());
    };
    let serial = |i: &stasis_image::ProcessImage| i.session_keyring.as_ref().map(|k| k.serial);
    let name = |i: &stasis_image::ProcessImage| {
        i.session_keyring.as_ref().map_or(
            "none of its own (ours or its user's default)".to_string(),
            |k| format!("{:?} (key {})", k.name, k.serial),
        )
    };
    if let Some(other) = images.iter().find(|i| serial(i) != serial(root)) {
        return Err(refuse(
            other.pid,
            format!(
                "its session keyring {} is not the tree root's {}: only a tree sharing one session keyring is restored yet",
                name(other),
                name(root)
            ),
        ));
    }
    Ok(())
}

/// An autogroup nice value other than 0: the restored sessions get new
/// autogroups (or share the restorer's), at nice 0.
fn autogroup(pid: u32) -> Result<()> {
    // "/autogroup-123 nice 5"
    let text = std::fs::read_to_string(format!("/proc/{pid}/autogroup")).unwrap_or_default();
    let nice = text
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if nice != 0 {
        return Err(refuse(
            pid,
            format!("an autogroup nice value ({nice}): not restored yet"),
        ));
    }
    Ok(())
}

/// Per-process state only the process can report: keyrings of its own, an
/// autogroup nice value, a local descriptor table (modify_ldt),
/// memory-deny-write-execute, a trapping TSC, a machine-check kill policy
/// and CPUID faulting (ARCH_SET_CPUID 0).
pub(crate) fn query_process(
    r: &mut RemoteThread,
    pid: u32,
) -> Result<Option<stasis_image::Keyring>> {
    let keyring = keyrings(r, pid)?;
    autogroup(pid)?;
    let (scratch, _) = r.scratch();
    let ldt = r
        .call(libc::SYS_modify_ldt, &[0, scratch, 16], "modify_ldt(read)")
        .at(pid, Stage::Query)?;
    if ldt != 0 {
        return Err(refuse(pid, "a local descriptor table (modify_ldt)".into()));
    }
    let mdwe = r
        .call(
            libc::SYS_prctl,
            &[PR_GET_MDWE, 0, 0, 0, 0],
            "prctl(PR_GET_MDWE)",
        )
        .at(pid, Stage::Query)?;
    if mdwe != 0 {
        return Err(refuse(
            pid,
            format!("memory-deny-write-execute (PR_SET_MDWE {mdwe:#x})"),
        ));
    }
    r.call(libc::SYS_prctl, &[PR_GET_TSC, scratch], "prctl(PR_GET_TSC)")
        .at(pid, Stage::Query)?;
    let tsc = le_u32(&r.read_scratch(0, 4).at(pid, Stage::Query)?, 0);
    if tsc != PR_TSC_ENABLE {
        return Err(refuse(
            pid,
            "a trapping time-stamp counter (PR_SET_TSC PR_TSC_SIGSEGV)".into(),
        ));
    }
    let mce = r
        .call(
            libc::SYS_prctl,
            &[PR_MCE_KILL_GET, 0, 0, 0, 0],
            "prctl(PR_MCE_KILL_GET)",
        )
        .at(pid, Stage::Query)?;
    if mce != PR_MCE_KILL_DEFAULT {
        return Err(refuse(
            pid,
            format!("a machine-check kill policy (PR_MCE_KILL {mce})"),
        ));
    }
    let cpuid = r
        .syscall(libc::SYS_arch_prctl, &[ARCH_GET_CPUID, 0])
        .at(pid, Stage::Query)?;
    if cpuid == 0 {
        return Err(refuse(
            pid,
            "CPUID faulting (arch_prctl ARCH_SET_CPUID 0)".into(),
        ));
    }
    Ok(keyring)
}

const MPOL_DEFAULT: u32 = 0;
const KEYCTL_GET_KEYRING_ID: u64 = 0;
const KEY_SPEC_THREAD_KEYRING: i64 = -1;
const KEY_SPEC_PROCESS_KEYRING: i64 = -2;
const KEY_SPEC_SESSION_KEYRING: i64 = -3;
const KEY_SPEC_USER_SESSION_KEYRING: i64 = -5;
const PR_GET_TSC: u64 = 25;
const PR_TSC_ENABLE: u32 = 1;
const PR_MCE_KILL_GET: u64 = 34;
const PR_MCE_KILL_DEFAULT: u64 = 2;
const PR_GET_MDWE: u64 = 66;
const ARCH_GET_CPUID: u64 = 0x1011;

/// A child with a parent-death signal whose parent is a non-leader thread:
/// the signal fires when that thread exits, but a restore forks every
/// child from its parent's leader. Refused by name. (Without a
/// parent-death signal the forking thread is visible only to a `wait`
/// with `__WNOTHREAD`, and is not kept.)
pub(crate) fn parent_threads(collected: &[crate::collect::Collected]) -> Result<()> {
    let in_tree: HashSet<u32> = collected.iter().map(|c| c.host_pid).collect();
    for c in collected {
        let img = &c.image;
        if img.pdeath_signal == 0 || !in_tree.contains(&img.ppid) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", img.ppid)) else {
            continue;
        };
        for t in tasks.filter_map(std::result::Result::ok) {
            let tid = t.file_name().to_string_lossy().into_owned();
            if tid == img.ppid.to_string() {
                continue;
            }
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            if kids.split_whitespace().any(|k| k == c.host_pid.to_string()) {
                return Err(refuse(
                    c.host_pid,
                    format!(
                        "its parent-death signal {} is tied to thread {tid} of its parent {}, \
                         not the leader; a restore forks children from the leader",
                        img.pdeath_signal, img.ppid
                    ),
                ));
            }
        }
    }
    Ok(())
}
