//! Reading the slow /proc files of the tree before it is frozen.
//!
//! /proc/PID/smaps and /proc/PID/numa_maps walk every present page of the
//! process (for Rss and the per-node counts the dump does not use): about
//! 0.1 s per GiB, which was the largest part of a pre-copy round's frozen
//! time. A dump of a pre-copy chain (a pre-dump, or a dump with a parent
//! image) reads them while the tree runs, and uses what it read only if
//! nothing that they report can have changed before the freeze:
//!
//! 1. The tree is frozen briefly; on every thread a perf counter is opened
//!    (`stasis_sys::perf`: completions of the system calls in [`WATCHED`],
//!    counted in that thread and in every task it creates from then on);
//!    the tree is released. Frozen, no thread can be missed.
//! 2. smaps and numa_maps are read while the tree runs.
//! 3. After the real freeze, the counters are read: a single watched call
//!    completed by any thread of the tree in between, a process or thread
//!    that was not there at step 1, or a process whose /proc/PID/maps
//!    (no page walk) differs from the header lines read at step 2: the
//!    process's files are read again while frozen, as without pre-read.
//!
//! Why this is enough (docs/architecture.md, "Pre-read of smaps"): what the
//! dump takes from smaps is the header line (checked against maps),
//! VmFlags, KernelPageSize and ProtectionKey; from numa_maps the memory
//! policies. A process changes them only by the system calls in
//! [`WATCHED`] (madvise, mlock*, mprotect/pkey_mprotect, mmap family,
//! prctl, mseal, userfaultfd ioctls, mbind/set_mempolicy, exec, io_uring
//! operations; clone, which could make a task without a counter); a call that had started before step 1 completes after it, and
//! is counted then (a thread is frozen only on its way back to user space,
//! after the exit tracepoint). Page faults change the layout only
//! (stack growth), which the maps comparison sees.

use crate::freeze::FrozenTree;
use stasis_proc::SmapsEntry;
use stasis_sys::perf::SyscallCounter;
use stasis_sys::Pid;
use std::collections::HashMap;

/// set_mempolicy_home_node, map_shadow_stack, mseal (x86_64; not in libc).
const SYS_SET_MEMPOLICY_HOME_NODE: i64 = 450;
const SYS_MAP_SHADOW_STACK: i64 = 453;
const SYS_MSEAL: i64 = 462;

/// The system calls that can change what smaps or numa_maps report for
/// an existing mapping (or the set of tasks).
pub(crate) const WATCHED: [i64; 34] = [
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_brk,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_process_madvise,
    libc::SYS_shmat,
    libc::SYS_shmdt,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_munlock,
    libc::SYS_mlockall,
    libc::SYS_munlockall,
    libc::SYS_pkey_mprotect,
    libc::SYS_remap_file_pages,
    SYS_MSEAL,
    SYS_MAP_SHADOW_STACK,
    libc::SYS_prctl,
    libc::SYS_arch_prctl,
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    SYS_SET_MEMPOLICY_HOME_NODE,
    libc::SYS_userfaultfd,
    libc::SYS_ioctl,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_fork,
    libc::SYS_vfork,
];

/// What was read of one process before the freeze.
pub(crate) struct Early {
    pub smaps: Vec<SmapsEntry>,
    /// memkinds::refuse_policies as read then.
    pub policies: Option<String>,
    /// Read before the freeze (a pre-read), not read ahead while frozen.
    pub before_freeze: bool,
    /// Read ahead only: the mappings and page plan, made as the
    /// collection would without a write tracker, when the process maps
    /// no shared anonymous object (whose pages go to the first process
    /// that maps them: planned in order by the collection).
    pub planned: Option<(Vec<stasis_image::Vma>, crate::memory::PagePlan)>,
    start_time: u64,
    tids: Vec<Pid>,
}

/// A pre-read in progress: counters open, files read.
pub(crate) struct Preread {
    counters: Vec<SyscallCounter>,
    procs: HashMap<u32, Early>,
}

/// Whether a dump with these options pre-reads (pre-copy only; the test
/// hook `STASIS_TEST_NO_PREREAD=1` turns it off, for measurements).
pub(crate) fn wanted(opts: &crate::DumpOptions) -> bool {
    (opts.pre_dump || opts.prev_images_dir.is_some() || opts.track_mem)
        && std::env::var_os("STASIS_TEST_NO_PREREAD").is_none()
}

/// Steps 1 and 2; None (the dump reads everything frozen) when counting
/// is not possible here or the tree cannot be frozen now (the real freeze
/// then reports why).
pub(crate) fn take(root: u32) -> Option<Preread> {
    if let Err(e) = stasis_sys::perf::self_test() {
        log::debug!("pid {root}: no pre-read ({e})");
        return None;
    }
    let t = std::time::Instant::now();
    let tree = match FrozenTree::freeze(Pid(root as i32)) {
        Ok(t) => t,
        Err(e) => {
            log::debug!("pid {root}: no pre-read: {e}");
            return None;
        }
    };
    let mut counters = Vec::new();
    let mut procs = HashMap::new();
    let mut failed = None;
    for f in &tree.procs {
        for &tid in &f.tids {
            match SyscallCounter::open(tid, &WATCHED) {
                Ok(c) => counters.push(c),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        let pid = f.pid.0 as u32;
        if let Ok(st) = stasis_proc::read_stat(pid) {
            procs.insert(
                pid,
                Early {
                    smaps: Vec::new(),
                    policies: None,
                    before_freeze: true,
                    planned: None,
                    start_time: st.start_time,
                    tids: f.tids.clone(),
                },
            );
        }
    }
    let stalled = t.elapsed();
    if let Err(e) = tree.release() {
        log::warn!("pid {root}: resuming after the pre-read's freeze: {e}");
        return None;
    }
    log::debug!("pid {root}: tree stopped {stalled:?} to start counting its system calls");
    if let Some(e) = failed {
        log::debug!("pid {root}: no pre-read: {e}");
        return None;
    }
    let t = std::time::Instant::now();
    for (&pid, e) in &mut procs {
        e.smaps = stasis_proc::read_smaps(pid).ok()?;
        e.policies = crate::memkinds::refuse_policies(pid);
    }
    log::debug!(
        "pid {root}: smaps and numa_maps read in {:?} before the freeze",
        t.elapsed()
    );
    test_signal(root);
    Some(Preread { counters, procs })
}

/// Test hook: `STASIS_TEST_PREREAD_SIGNAL=MS` sends SIGUSR1 to the root
/// after the pre-read and waits MS ms, so that its handler changes a
/// mapping between the pre-read and the freeze (tests/precopy.rs).
fn test_signal(root: u32) {
    let Some(ms) = std::env::var("STASIS_TEST_PREREAD_SIGNAL")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let _ = stasis_sys::util::kill(Pid(root as i32), libc::SIGUSR1);
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

impl Preread {
    /// Step 3: what may be used, per process, once `frozen` is frozen.
    pub(crate) fn verify(self, frozen: &FrozenTree) -> HashMap<u32, Early> {
        let root = frozen.procs.first().map_or(0, |f| f.pid.0);
        let t = std::time::Instant::now();
        let counted: Result<u64, _> = self.counters.iter().map(SyscallCounter::count).sum();
        let n = self.counters.len();
        // Closing the last perf event of the tracepoint waits for RCU
        // grace periods (tens of ms): not while the tree is frozen.
        let counters = self.counters;
        std::thread::spawn(move || drop(counters));
        let calls = match counted {
            Ok(c) => c,
            Err(e) => {
                log::debug!("pid {root}: pre-read not used: {e}");
                return HashMap::new();
            }
        };
        // Test hook of the negative control: trust the pre-read whatever
        // the tree did meanwhile.
        if calls > 0 && std::env::var_os("STASIS_TEST_PREREAD_TRUST").is_none() {
            log::debug!(
                "pid {root}: pre-read not used: {calls} system call(s) that may change mappings ran meanwhile"
            );
            return HashMap::new();
        }
        log::debug!("pid {root}: {n} counters read in {:?}", t.elapsed());
        let mut procs = self.procs;
        let mut ok = HashMap::new();
        for f in &frozen.procs {
            let pid = f.pid.0 as u32;
            let Some(e) = procs.remove(&pid) else {
                continue;
            };
            let same_tasks = f.tids.iter().all(|t| e.tids.contains(t))
                && stasis_proc::read_stat(pid).is_ok_and(|s| s.start_time == e.start_time);
            let same_layout = stasis_proc::read_maps(pid).is_ok_and(|m| {
                m.len() == e.smaps.len() && m.iter().zip(&e.smaps).all(|(a, b)| *a == b.map)
            });
            if same_tasks && same_layout {
                ok.insert(pid, e);
            } else {
                log::debug!(
                    "pid {pid}: pre-read not used: {}",
                    if same_tasks {
                        "its mappings changed"
                    } else {
                        "new tasks"
                    }
                );
            }
        }
        log::debug!("pid {root}: pre-read verified in {:?}", t.elapsed());
        ok
    }
}

/// Reads, on a helper thread, the smaps and numa_maps of each process of
/// `pids` (frozen) that `early` does not already hold, and makes its page
/// plan (PAGEMAP_SCAN), in order, ahead of the collection that needs
/// them: that costs the kernel page walks and takes no ptrace, so one
/// core does it while the other runs the remote queries of the process
/// before (which change nothing of another process's memory).
/// [`Ahead::take`] hands each over; a read that failed is simply not
/// handed over, and the collection reads the file itself and reports the
/// error where it always has.
pub(crate) struct Ahead {
    rx: std::sync::mpsc::Receiver<(u32, Option<Early>)>,
}

/// How many processes the helper may read ahead (bounds its memory).
const AHEAD: usize = 8;

impl Ahead {
    /// Starts the helper in `scope`.
    pub(crate) fn start<'s>(scope: &'s std::thread::Scope<'s, '_>, pids: Vec<u32>) -> Ahead {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD);
        scope.spawn(move || {
            for pid in pids {
                let early = stasis_proc::read_smaps(pid).ok().map(|smaps| {
                    let policies = crate::memkinds::refuse_policies(pid);
                    // A plan that fails (a refusal) is left to the
                    // collection, which reports it where it always has.
                    let mut objects = crate::shmem::Saved::default();
                    let planned = match crate::memory::plan(
                        pid,
                        (&smaps, policies.clone()),
                        &mut objects,
                        (None, false),
                    ) {
                        Ok(p) if objects.is_empty() => Some(p),
                        _ => None,
                    };
                    Early {
                        smaps,
                        policies,
                        before_freeze: false,
                        planned,
                        start_time: 0,
                        tids: Vec::new(),
                    }
                });
                // The collection stopped (an error): nothing more to read.
                if tx.send((pid, early)).is_err() {
                    break;
                }
            }
        });
        Ahead { rx }
    }

    /// What the helper read of `pid`, the next process it was given.
    pub(crate) fn take(&self, pid: u32) -> Option<Early> {
        match self.rx.recv() {
            Ok((p, early)) if p == pid => early,
            _ => None,
        }
    }
}
