//! Per-process and per-thread settings beyond credentials, limits and
//! signals (issue 9): OOM score, THP and KSM modes, membarrier
//! registrations, mlockall(MCL_FUTURE), the child-subreaper flag,
//! coredump filter; per thread: scheduling attributes, I/O priority, timer
//! slack, io_flusher and speculation control. Per-mapping flags (madvise,
//! mlock, mseal) are the `advice` names of each [`crate::Vma`], listed in
//! [`VMA_ADVICE`].
//!
//! `ProcessImage::proc_attrs` is `None` in images written before these
//! existed: such an image restores as it always did (these settings are
//! then whatever the restored process inherits).

use crate::error::{ImageError, Result};
use crate::model::ProcessImage;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `PR_GET_THP_DISABLE` values: off, on, on except where advised (6.18).
pub const THP_DISABLE_VALUES: [u32; 3] = [0, 1, 3];
/// `MCL_FUTURE`, alone or with `MCL_ONFAULT` (0: not set).
pub const MLOCKALL_VALUES: [u32; 3] = [0, 2, 2 | 4];
/// membarrier `REGISTER_*` command bits that `GET_REGISTRATIONS` reports:
/// GLOBAL_EXPEDITED, PRIVATE_EXPEDITED, PRIVATE_EXPEDITED_SYNC_CORE,
/// PRIVATE_EXPEDITED_RSEQ.
pub const MEMBARRIER_REGISTER_BITS: u32 = (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8);

/// Per-mapping flags an image may hold, by name, with the smaps `VmFlags`
/// mnemonic they come from. Every one is restored (madvise, mlock2,
/// mseal); a name not listed here makes the image invalid.
pub const VMA_ADVICE: [(&str, &str); 11] = [
    ("dd", "dontdump"),
    ("dc", "dontfork"),
    ("hg", "hugepage"),
    ("nh", "nohugepage"),
    ("wf", "wipeonfork"),
    ("mg", "mergeable"),
    ("rr", "random"),
    ("sr", "sequential"),
    ("lo", "locked"),
    ("lf", "lockonfault"),
    ("sl", "sealed"),
];

/// Process-wide settings (one `ProcessImage::proc_attrs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcAttrs {
    /// `/proc/PID/oom_score_adj`, -1000..=1000.
    #[serde(default)]
    pub oom_score_adj: i32,
    /// `PR_GET_THP_DISABLE`: 0, 1, or 3 (PR_THP_DISABLE_EXCEPT_ADVISED).
    #[serde(default)]
    pub thp_disable: u32,
    /// `PR_GET_MEMORY_MERGE` (KSM for every mapping).
    #[serde(default)]
    pub memory_merge: bool,
    /// `membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)`: REGISTER_* bits.
    #[serde(default)]
    pub membarrier: u32,
    /// mlockall flags in force for future mappings: 0, MCL_FUTURE (2) or
    /// MCL_FUTURE | MCL_ONFAULT (6). Mappings locked now are `locked` /
    /// `lockonfault` in their VMA's advice.
    #[serde(default)]
    pub mlockall: u32,
    /// `PR_GET_CHILD_SUBREAPER`.
    #[serde(default)]
    pub child_subreaper: bool,
    /// `/proc/PID/coredump_filter`.
    #[serde(default = "default_coredump_filter")]
    pub coredump_filter: u32,
    /// One entry per thread, in the order of `ProcessImage::threads`.
    #[serde(default)]
    pub threads: Vec<ThreadAttrs>,
    /// `/proc/PID/loginuid` (u32::MAX: unset), the audit login uid.
    #[serde(default = "unset_loginuid")]
    pub loginuid: u32,
}

fn default_coredump_filter() -> u32 {
    0x33
}

fn unset_loginuid() -> u32 {
    u32::MAX
}

/// Settings the kernel keeps per thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadAttrs {
    /// `sched_getattr` of the thread.
    pub sched: SchedAttrs,
    /// `ioprio_get(IOPRIO_WHO_PROCESS, tid)`.
    pub ioprio: u32,
    /// `/proc/TID/timerslack_ns`.
    pub timer_slack_ns: u64,
    /// `PR_GET_IO_FLUSHER` (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE in stat flags).
    #[serde(default)]
    pub io_flusher: bool,
    /// `PR_GET_SPECULATION_CTRL` for PR_SPEC_STORE_BYPASS, PR_SPEC_INDIRECT_BRANCH
    /// and PR_SPEC_L1D_FLUSH (None: the kernel does not know the control).
    #[serde(default)]
    pub spec: [Option<u32>; 3],
}

/// `struct sched_attr`, field for field (util clamp only with its flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedAttrs {
    pub policy: u32,
    /// SCHED_FLAG_* (RESET_ON_FORK 1, RECLAIM 2, DL_OVERRUN 4, UTIL_CLAMP 0x60).
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    #[serde(default)]
    pub runtime: u64,
    #[serde(default)]
    pub deadline: u64,
    #[serde(default)]
    pub period: u64,
    #[serde(default)]
    pub util_min: u32,
    #[serde(default)]
    pub util_max: u32,
}

fn invalid(file: &Path, what: String) -> ImageError {
    ImageError::invalid(file, what)
}

/// Validation of `proc_attrs` and of the VMAs' advice names (called by
/// [`crate::validate_process`]).
pub(crate) fn validate(file: &Path, img: &ProcessImage) -> Result<()> {
    for (i, v) in img.mm.vmas.iter().enumerate() {
        for a in &v.advice {
            if !VMA_ADVICE.iter().any(|(_, n)| n == a) {
                return Err(invalid(
                    file,
                    format!("mm.vmas[{i}].advice: unknown flag {a:?}"),
                ));
            }
        }
    }
    let Some(p) = &img.proc_attrs else {
        return Ok(());
    };
    let ensure = |ok: bool, what: &dyn Fn() -> String| {
        if ok {
            Ok(())
        } else {
            Err(invalid(file, format!("proc_attrs.{}", what())))
        }
    };
    ensure((-1000..=1000).contains(&p.oom_score_adj), &|| {
        format!("oom_score_adj: {} outside -1000..=1000", p.oom_score_adj)
    })?;
    ensure(THP_DISABLE_VALUES.contains(&p.thp_disable), &|| {
        format!("thp_disable: {} is not 0, 1 or 3", p.thp_disable)
    })?;
    ensure(MLOCKALL_VALUES.contains(&p.mlockall), &|| {
        format!(
            "mlockall: {:#x} is not 0, MCL_FUTURE or MCL_FUTURE|MCL_ONFAULT",
            p.mlockall
        )
    })?;
    ensure(p.membarrier & !MEMBARRIER_REGISTER_BITS == 0, &|| {
        format!("membarrier: unknown registration bits {:#x}", p.membarrier)
    })?;
    ensure(p.coredump_filter <= 0x1ff, &|| {
        format!("coredump_filter: {:#x} has unknown bits", p.coredump_filter)
    })?;
    ensure(p.threads.len() == img.threads.len(), &|| {
        format!(
            "threads: {} entries for {} threads",
            p.threads.len(),
            img.threads.len()
        )
    })?;
    for (i, a) in p.threads.iter().enumerate() {
        ensure(a.sched.policy <= 6 && a.sched.policy != 4, &|| {
            format!("threads[{i}].sched.policy: {} unknown", a.sched.policy)
        })?;
        ensure((-20..=19).contains(&a.sched.nice), &|| {
            format!("threads[{i}].sched.nice: {} outside -20..=19", a.sched.nice)
        })?;
        ensure(a.sched.priority <= 99, &|| {
            format!("threads[{i}].sched.priority: {} above 99", a.sched.priority)
        })?;
    }
    Ok(())
}
