//! Per-process and per-thread settings (issue 9), put back in four places
//! of a process's rebuild, each for a reason:
//!
//! 1. [`preflight`], before anything exists: an OOM score the restorer
//!    cannot give (lowering it needs CAP_SYS_RESOURCE) and io_flusher
//!    without CAP_SYS_RESOURCE are refused by name.
//! 2. [`before_memory`]: THP disable and KSM merge-any shape how the pages
//!    about to be filled are backed, so they come first.
//! 3. [`vma`], per mapping after its pages are filled: random/sequential
//!    advice, mlock (populates, so after the fill) and mseal (last for
//!    that mapping: a sealed mapping refuses mprotect and madvise).
//! 4. [`after_threads`], remote, once every thread exists: the subreaper
//!    flag, membarrier registrations, timer slack (each thread its own), MADV_UNMERGEABLE where a merge-any
//!    process had opted a mapping out, mlockall(MCL_FUTURE) (after the last
//!    mapping the restore creates), io_flusher, and last the speculation
//!    controls (force-disable is one-way).
//! 5. [`finish`], from outside, after the CPU pin is released: sched
//!    attributes (SCHED_DEADLINE needs the full affinity mask, and a
//!    deadline thread could not have created the other threads; a
//!    real-time policy also gives the thread its timer slack of 0), I/O
//!    priority, OOM score and coredump filter.
//!
//! Old images (`proc_attrs: None`) skip all but the per-mapping flags.

use crate::{At, RestoreError, Result, Stage};
use stasis_image::{ProcAttrs, ProcessImage, Vma, VmaKind};
use stasis_sys::remote::{BatchCall, RemoteThread};
use stasis_sys::sched::{self, SchedAttr};
use stasis_sys::Pid;

const PR_SET_MEMORY_MERGE: u64 = 67;
const PR_GET_SPECULATION_CTRL: u64 = 52;
const PR_SET_SPECULATION_CTRL: u64 = 53;
const PR_SET_IO_FLUSHER: u64 = 57;
const PR_SPEC_PRCTL: u32 = 1;
const SPEC_NAMES: [&str; 3] = [
    "speculation control PR_SPEC_STORE_BYPASS",
    "speculation control PR_SPEC_INDIRECT_BRANCH",
    "speculation control PR_SPEC_L1D_FLUSH",
];
const SYS_MSEAL: i64 = 462;
const MLOCK_ONFAULT: u64 = 1;
/// SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX.
const SCHED_FLAG_UTIL_CLAMP: u64 = 0x20 | 0x40;
/// Flags sched_getattr reports that sched_setattr takes back:
/// RESET_ON_FORK, RECLAIM, DL_OVERRUN.
const SCHED_FLAGS_KEPT: u64 = 1 | 2 | 4;
const CAP_SYS_RESOURCE: u32 = 24;

fn refused(pid: u32, stage: Stage, what: String) -> RestoreError {
    RestoreError::Refused { pid, stage, what }
}

fn has_cap(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

fn read_i64(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_proc(pid: u32, path: &str, value: &str, what: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| RestoreError::Io {
        pid,
        stage: Stage::Attributes,
        what: format!("{what}: write {value} to {path}"),
        source,
    })
}

/// Refusals that can be known before anything is created.
pub(crate) fn preflight(img: &ProcessImage) -> Result<()> {
    let Some(a) = &img.proc_attrs else {
        return Ok(());
    };
    let pid = img.pid;
    let st = Stage::Preflight;
    // The restored process starts with our OOM score and our floor
    // (oom_score_adj_min): anything at or above the floor can be written,
    // below it only with CAP_SYS_RESOURCE. The floor is not shown, so try
    // it on ourselves and put ours back (raising is always allowed).
    let own = "/proc/self/oom_score_adj";
    let ours = read_i64(own).unwrap_or(0);
    if i64::from(a.oom_score_adj) < ours {
        match std::fs::write(own, a.oom_score_adj.to_string()) {
            Ok(()) => {
                let _ = std::fs::write(own, ours.to_string());
            }
            Err(e) => {
                return Err(refused(
                    pid,
                    st,
                    format!(
                        "oom_score_adj {} cannot be restored: it is below the restorer's \
                         ({ours}) and lowering it needs CAP_SYS_RESOURCE ({e})",
                        a.oom_score_adj
                    ),
                ))
            }
        }
    }
    if let Some(i) = a.threads.iter().position(|t| t.io_flusher) {
        if !has_cap(CAP_SYS_RESOURCE) {
            return Err(refused(
                pid,
                st,
                format!(
                    "thread {}: io_flusher (PR_SET_IO_FLUSHER) cannot be restored without \
                     CAP_SYS_RESOURCE",
                    img.threads.get(i).map_or(0, |t| t.tid)
                ),
            ));
        }
    }
    Ok(())
}

/// THP disable and KSM merge-any, before the memory is rebuilt.
pub(crate) fn before_memory(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let Some(a) = &img.proc_attrs else {
        return Ok(());
    };
    let pid = img.pid;
    let st = Stage::Memory;
    // 3 = disabled except where madvise(MADV_HUGEPAGE) asks (6.18's
    // PR_THP_DISABLE_EXCEPT_ADVISED, flag 1 << 1).
    let (on, flags) = match a.thp_disable {
        0 => (0, 0),
        1 => (1, 0),
        _ => (1, 1 << 1),
    };
    // Queued: they run first in the tear-down's round trip.
    r.queue(
        libc::SYS_prctl,
        &[libc::PR_SET_THP_DISABLE as u64, on, flags, 0, 0],
        format!("prctl(PR_SET_THP_DISABLE, {on}, {flags})"),
    )
    .at(pid, st)?;
    if a.memory_merge {
        r.queue(
            libc::SYS_prctl,
            &[PR_SET_MEMORY_MERGE, 1, 0, 0, 0],
            "prctl(PR_SET_MEMORY_MERGE, 1)",
        )
        .at(pid, st)?;
    }
    Ok(())
}

/// Advice, locks and seals of one mapping whose pages are in place (the
/// names [`stasis_image::VMA_ADVICE`] lists beyond what memory.rs applies).
pub(crate) fn vma(r: &mut RemoteThread, v: &Vma) -> Result<()> {
    let pid = r.tid().0 as u32;
    let st = Stage::Memory;
    let len = v.end - v.start;
    let has = |n: &str| v.advice.iter().any(|a| a == n);
    for (name, advice) in [
        ("random", libc::MADV_RANDOM),
        ("sequential", libc::MADV_SEQUENTIAL),
    ] {
        if has(name) {
            r.queue(
                libc::SYS_madvise,
                &[v.start, len, advice as u64],
                format!("madvise({name}) {:#x}-{:#x}", v.start, v.end),
            )
            .at(pid, st)?;
        }
    }
    if has("locked") || has("lockonfault") {
        let flags = if has("lockonfault") { MLOCK_ONFAULT } else { 0 };
        r.queue(
            libc::SYS_mlock2,
            &[v.start, len, flags],
            format!("mlock2 {:#x}-{:#x}", v.start, v.end),
        )
        .at(pid, st)?;
    }
    if has("sealed") {
        r.queue(
            SYS_MSEAL,
            &[v.start, len, 0],
            format!("mseal {:#x}-{:#x}", v.start, v.end),
        )
        .at(pid, st)?;
    }
    Ok(())
}

/// Remote settings, once every thread exists: `r` is the leader,
/// `threads` the others in image order.
pub(crate) fn after_threads(
    r: &mut RemoteThread,
    threads: &mut [RemoteThread],
    img: &ProcessImage,
) -> Result<()> {
    let Some(a) = &img.proc_attrs else {
        return Ok(());
    };
    let pid = img.pid;
    process_wide(r, a, img)?;
    let mut all: Vec<&mut RemoteThread> = Vec::with_capacity(threads.len() + 1);
    all.push(r);
    all.extend(threads.iter_mut());
    let current = per_thread(&mut all, a, pid)?;
    speculation(&mut all, a, pid, current)
}

/// The process's own settings: subreaper, membarrier, KSM opt-outs,
/// mlockall (after the last mapping the restore makes), the audit login
/// uid.
fn process_wide(r: &mut RemoteThread, a: &ProcAttrs, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    loginuid(r, a, pid)?;
    // Queued: one round trip with the queries of `per_thread`.
    if a.child_subreaper {
        r.queue(
            libc::SYS_prctl,
            &[libc::PR_SET_CHILD_SUBREAPER as u64, 1],
            "prctl(PR_SET_CHILD_SUBREAPER, 1)",
        )
        .at(pid, st)?;
    }
    for bit in 0..32 {
        let cmd = 1u64 << bit;
        if u64::from(a.membarrier) & cmd != 0 {
            r.queue(
                libc::SYS_membarrier,
                &[cmd, 0, 0],
                format!("membarrier(register {cmd:#x})"),
            )
            .at(pid, st)?;
        }
    }
    // Under KSM merge-any every new mapping came out mergeable; the ones
    // the process had opted out (MADV_UNMERGEABLE) opt out again.
    if a.memory_merge {
        for v in img.mm.vmas.iter().filter(|v| {
            // Shared mappings are never mergeable.
            !v.shared
                && !v.advice.iter().any(|x| x == "mergeable")
                && matches!(
                    v.kind,
                    VmaKind::Anon | VmaKind::Heap | VmaKind::File { .. } | VmaKind::Saved { .. }
                )
        }) {
            r.queue(
                libc::SYS_madvise,
                &[v.start, v.end - v.start, libc::MADV_UNMERGEABLE as u64],
                format!("madvise(unmergeable) {:#x}-{:#x}", v.start, v.end),
            )
            .at(pid, st)?;
        }
    }
    // After the last mapping the restore makes in this process.
    if a.mlockall != 0 {
        r.queue(
            libc::SYS_mlockall,
            &[u64::from(a.mlockall)],
            format!("mlockall({:#x})", a.mlockall),
        )
        .at(pid, st)?;
    }
    Ok(())
}

/// io_flusher and timer slack, set by each thread itself.
fn per_thread(all: &mut [&mut RemoteThread], a: &ProcAttrs, pid: u32) -> Result<[Option<u32>; 3]> {
    let st = Stage::Attributes;
    // What every thread inherited from the leader, asked in one round
    // trip with the leader's queued calls: its timer slack, then its three
    // speculation controls (see `speculation`).
    let mut asked = vec![BatchCall::new(
        libc::SYS_prctl,
        &[libc::PR_GET_TIMERSLACK as u64, 0, 0, 0, 0],
    )];
    asked.extend(
        (0u64..3).map(|which| {
            BatchCall::new(libc::SYS_prctl, &[PR_GET_SPECULATION_CTRL, which, 0, 0, 0])
        }),
    );
    let got = all[0].queries(&asked).at(pid, st)?;
    let inherited = match got.first() {
        Some(&v) if v >= 0 => v as u64,
        v => {
            return Err(refused(
                pid,
                st,
                format!("remote prctl(PR_GET_TIMERSLACK) failed: {v:?}"),
            ))
        }
    };
    let mut current = [None; 3];
    for (c, &v) in current.iter_mut().zip(got.iter().skip(1)) {
        *c = u32::try_from(v).ok();
    }
    // Queued: each thread's calls run with its credentials' round trip.
    for (t, ta) in all.iter_mut().zip(&a.threads) {
        if ta.io_flusher {
            let what = format!("prctl(PR_SET_IO_FLUSHER) in thread {}", t.tid());
            t.queue(libc::SYS_prctl, &[PR_SET_IO_FLUSHER, 1, 0, 0, 0], what)
                .at(pid, st)?;
        }
    }
    // Timer slack, by each thread itself (from outside it needs
    // CAP_SYS_NICE). Every thread has the leader's so far. 0 is what
    // real-time threads have, and the policy set in `finish` gives it back
    // (PR_SET_TIMERSLACK 0 would mean "the default" instead).
    for (t, ta) in all.iter_mut().zip(&a.threads) {
        if ta.timer_slack_ns != 0 && ta.timer_slack_ns != inherited {
            let what = format!(
                "prctl(PR_SET_TIMERSLACK, {}) in thread {}",
                ta.timer_slack_ns,
                t.tid()
            );
            t.queue(
                libc::SYS_prctl,
                &[libc::PR_SET_TIMERSLACK as u64, ta.timer_slack_ns, 0, 0, 0],
                what,
            )
            .at(pid, st)?;
        }
    }
    Ok(current)
}

/// Speculation controls of every thread; `current`: the leader's, which
/// every thread inherited.
fn speculation(
    all: &mut [&mut RemoteThread],
    a: &ProcAttrs,
    pid: u32,
    current: [Option<u32>; 3],
) -> Result<()> {
    let st = Stage::Attributes;
    // Speculation controls last: force-disable cannot be undone. Every
    // thread was created by the leader, so all have the leader's values.
    for (t, ta) in all.iter_mut().zip(&a.threads) {
        for (which, (&want, &have)) in ta.spec.iter().zip(&current).enumerate() {
            if want == have {
                continue;
            }
            let name = SPEC_NAMES[which];
            let tid = t.tid();
            let Some(w) = want.filter(|w| w & PR_SPEC_PRCTL != 0) else {
                return Err(refused(
                    pid,
                    st,
                    format!(
                        "thread {tid}: {name} was {} and is {} here, \
                         and this kernel does not let a task change it",
                        spec_text(want),
                        spec_text(have)
                    ),
                ));
            };
            t.call(
                libc::SYS_prctl,
                &[
                    PR_SET_SPECULATION_CTRL,
                    which as u64,
                    u64::from(w & !PR_SPEC_PRCTL),
                    0,
                    0,
                ],
                &format!("prctl(PR_SET_SPECULATION_CTRL) {name} = {w:#x} in thread {tid}"),
            )
            .at(pid, st)?;
        }
    }
    Ok(())
}

/// A PR_GET_SPECULATION_CTRL value for a message.
fn spec_text(v: Option<u32>) -> String {
    v.map_or_else(|| "unknown to the kernel".into(), |v| format!("{v:#x}"))
}

fn sched_attr(a: &stasis_image::SchedAttrs) -> SchedAttr {
    let clamp = a.util_max != 0 && (a.util_min != 0 || a.util_max != 1024);
    SchedAttr {
        policy: a.policy,
        flags: (a.flags & SCHED_FLAGS_KEPT) | if clamp { SCHED_FLAG_UTIL_CLAMP } else { 0 },
        nice: a.nice,
        priority: a.priority,
        runtime: a.runtime,
        deadline: a.deadline,
        period: a.period,
        util_min: a.util_min,
        util_max: a.util_max,
    }
}

/// Settings written from outside, per thread (`tids`: host TIDs, image
/// order) and per process, after the CPU pin is gone.
pub(crate) fn finish(img: &ProcessImage, tids: &[Pid]) -> Result<()> {
    let Some(a) = &img.proc_attrs else {
        return Ok(());
    };
    let pid = img.pid;
    let st = Stage::Attributes;
    for (&tid, ta) in tids.iter().zip(&a.threads) {
        let want = sched_attr(&ta.sched);
        sched::sched_setattr(tid, &want).map_err(|e| {
            refused(
                pid,
                st,
                format!(
                    "thread {tid}: scheduling attributes (policy {}, priority {}, nice {}, \
                     flags {:#x}, runtime/deadline/period {}/{}/{} ns) cannot be restored: {e}",
                    want.policy,
                    want.priority,
                    want.nice,
                    want.flags,
                    want.runtime,
                    want.deadline,
                    want.period
                ),
            )
        })?;
        if sched::ioprio_get(tid).at(pid, st)? != ta.ioprio {
            sched::ioprio_set(tid, ta.ioprio).map_err(|e| {
                refused(
                    pid,
                    st,
                    format!(
                        "thread {tid}: ioprio {:#x} cannot be restored: {e}",
                        ta.ioprio
                    ),
                )
            })?;
        }
    }
    let host = tids.first().map_or(0, |t| t.0);
    write_proc(
        pid,
        &format!("/proc/{host}/coredump_filter"),
        &format!("{:#x}", a.coredump_filter),
        "coredump_filter",
    )?;
    oom_score_adj(pid, host, a)
}

/// The audit login uid, when it differs from the one the process
/// inherited from the restorer: only the process itself may write its
/// /proc/self/loginuid (with CAP_AUDIT_CONTROL, before its credentials are
/// set).
fn loginuid(r: &mut RemoteThread, a: &ProcAttrs, pid: u32) -> Result<()> {
    let st = Stage::Attributes;
    let inherited = read_i64(&format!("/proc/{}/loginuid", r.tid().0));
    if inherited == Some(i64::from(a.loginuid)) {
        return Ok(());
    }
    let path = r.write_scratch(0, b"/proc/self/loginuid\0").at(pid, st)?;
    let value = a.loginuid.to_string();
    let buf = r.write_scratch(64, value.as_bytes()).at(pid, st)?;
    let fd = r
        .call(
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, path, libc::O_WRONLY as u64],
            "open /proc/self/loginuid",
        )
        .at(pid, st)?;
    let w = r.syscall(libc::SYS_write, &[fd, buf, value.len() as u64]);
    r.call(libc::SYS_close, &[fd], "close /proc/self/loginuid")
        .at(pid, st)?;
    let w = w.at(pid, st)?;
    if w < 0 {
        return Err(refused(
            pid,
            st,
            format!(
                "audit login uid {} cannot be restored: {}",
                a.loginuid,
                std::io::Error::from_raw_os_error((-w) as i32)
            ),
        ));
    }
    Ok(())
}

fn oom_score_adj(pid: u32, host: i32, a: &ProcAttrs) -> Result<()> {
    let path = format!("/proc/{host}/oom_score_adj");
    if read_i64(&path) == Some(i64::from(a.oom_score_adj)) {
        return Ok(());
    }
    std::fs::write(&path, a.oom_score_adj.to_string()).map_err(|e| {
        refused(
            pid,
            Stage::Attributes,
            format!(
                "oom_score_adj {} cannot be restored ({e}); lowering it needs CAP_SYS_RESOURCE",
                a.oom_score_adj
            ),
        )
    })
}
