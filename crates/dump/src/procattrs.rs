//! Per-process and per-thread settings (issue 9): read from /proc and
//! sched_getattr/ioprio_get from outside, and by remote prctl/membarrier
//! where only the process can tell. The image type is
//! [`stasis_image::ProcAttrs`]; the restore side is restore/src/procattrs.rs.

use crate::{At, DumpError, Result, Stage};
use stasis_image::{ProcAttrs, SchedAttrs, ThreadAttrs, USER_SPACE_END, VMA_ADVICE};
use stasis_proc::SmapsEntry;
use stasis_sys::remote::{le_u32, RemoteThread};
use stasis_sys::{sched, Pid};

const PR_GET_MEMORY_MERGE: u64 = 68;
const PR_GET_SPECULATION_CTRL: u64 = 52;
const PR_SPEC_PRCTL: u32 = 1;
/// PR_SPEC_STORE_BYPASS, PR_SPEC_INDIRECT_BRANCH, PR_SPEC_L1D_FLUSH.
pub(crate) const SPEC_CONTROLS: [u64; 3] = [0, 1, 2];
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE: what PR_SET_IO_FLUSHER sets.
const PF_IO_FLUSHER: u32 = 0x0008_0000 | 0x0010_0000;

/// VmFlags that mean state no mapping call can give back: refused by name.
const REFUSED_VM_FLAGS: [(&str, &str); 6] = [
    ("um", "registered with a userfaultfd (missing mode)"),
    ("uw", "registered with a userfaultfd (write-protect mode)"),
    ("ui", "registered with a userfaultfd (minor mode)"),
    ("dp", "mapped MAP_DROPPABLE"),
    ("sf", "mapped MAP_SYNC"),
    ("ss", "a shadow stack"),
];

/// The per-mapping flags of one smaps entry, by name ([`VMA_ADVICE`]), or
/// a refusal naming a flag that cannot be restored.
///
/// `uffd`: stasis's own write tracker for this process (pre-copy): a
/// write-protect registration it owns (registering again succeeds; an
/// application's own userfaultfd gives EBUSY) is not refused.
pub(crate) fn vma_advice(
    pid: u32,
    s: &SmapsEntry,
    uffd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Vec<String>> {
    let ours = |f: &str| {
        f == "uw"
            && !s.has_flag("um")
            && !s.has_flag("ui")
            && uffd.is_some_and(|u| {
                stasis_sys::uffd::register_wp(u, s.map.start, s.map.end - s.map.start).is_ok()
            })
    };
    if let Some((f, why)) = REFUSED_VM_FLAGS
        .iter()
        .find(|(f, _)| s.has_flag(f) && !ours(f))
    {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what: format!(
                "mapping {:#x}-{:#x}: it is {why} (VmFlags {f})",
                s.map.start, s.map.end
            ),
        });
    }
    Ok(VMA_ADVICE
        .iter()
        .filter(|(f, _)| s.has_flag(f))
        .map(|(_, name)| (*name).to_string())
        .collect())
}

/// Gathers [`ProcAttrs`] while the dump walks the threads.
pub(crate) struct Collector {
    pid: u32,
    attrs: ProcAttrs,
    /// A page with a free page on each side (found in the frozen
    /// process's smaps) for the mlockall probe: anything mapped there
    /// later is the probe's, so it can be removed even after an error.
    probe_at: u64,
    /// Some mapping is locked (VmFlags `lo` or `lf`): only then is the
    /// probe made (see [`Collector::probe_mlockall`]).
    any_locked: bool,
}

fn read_proc(pid: u32, path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| DumpError::Io {
        pid,
        stage: Stage::Collect,
        what: format!("read {path}"),
        source,
    })
}

fn parse<T: std::str::FromStr>(pid: u32, path: &str, text: &str) -> Result<T> {
    text.trim().parse().map_err(|_| DumpError::Unsupported {
        pid,
        stage: Stage::Collect,
        what: format!("{path}: unexpected contents {:?}", text.trim()),
    })
}

/// The highest page with a free page on each side, between two mappings,
/// in user space and not in a stack's guard gap (0: none found, let the
/// kernel choose).
fn probe_address(smaps: &[SmapsEntry]) -> u64 {
    const PAGE: u64 = 4096;
    smaps
        .windows(2)
        .rev()
        .map(|w| {
            (
                w[0].map.end + PAGE,
                w[1].map.start.min(USER_SPACE_END),
                &w[1],
            )
        })
        .find(|&(at, limit, next)| at >= 1 << 20 && at + 2 * PAGE <= limit && !next.has_flag("gd"))
        .map_or(0, |(at, _, _)| at)
}

/// Whether /proc/PID/maps has a mapping starting at `addr`.
fn mapped_at(pid: u32, addr: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| {
        m.lines().any(|l| {
            l.split('-')
                .next()
                .and_then(|a| u64::from_str_radix(a, 16).ok())
                == Some(addr)
        })
    })
}

/// `VmLck:` of /proc/PID/status, in KiB.
fn vm_locked_kb(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = read_proc(pid, &path)?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .unwrap_or("0 kB");
    parse(pid, &path, line.trim().trim_end_matches("kB"))
}

impl Collector {
    pub(crate) fn new(pid: u32, smaps: &[SmapsEntry]) -> Collector {
        Collector {
            pid,
            attrs: ProcAttrs::default(),
            probe_at: probe_address(smaps),
            any_locked: smaps.iter().any(|e| e.has_flag("lo") || e.has_flag("lf")),
        }
    }

    /// What belongs to thread `tid` (call once per thread, in image
    /// order); `r` runs in that thread.
    pub(crate) fn thread(&mut self, r: &mut RemoteThread, tid: Pid) -> Result<()> {
        let pid = self.pid;
        let st = Stage::Query;
        let a = sched::sched_getattr(tid).at(pid, Stage::Collect)?;
        let ioprio = sched::ioprio_get(tid).at(pid, Stage::Collect)?;
        // From outside that needs CAP_SYS_NICE; the thread itself can
        // always tell.
        let path = format!("/proc/{tid}/timerslack_ns");
        let timer_slack_ns = match std::fs::read_to_string(&path) {
            Ok(text) => parse(pid, &path, &text)?,
            Err(_) => r
                .call(
                    libc::SYS_prctl,
                    &[libc::PR_GET_TIMERSLACK as u64, 0, 0, 0, 0],
                    "prctl(PR_GET_TIMERSLACK)",
                )
                .at(pid, st)?,
        };
        let stat = stasis_proc::read(pid, &format!("task/{tid}/stat")).at(pid, Stage::Collect)?;
        let stat = stasis_proc::parse_stat(&stat).map_err(|e| DumpError::Unsupported {
            pid,
            stage: Stage::Collect,
            what: format!("stat of task {tid}: {e}"),
        })?;
        // A control whose value lacks PR_SPEC_PRCTL is in a global mode
        // (fixed at boot, the same for every task): asked of the first
        // thread only. Per-task ones are asked of every thread.
        let mut spec = [None; 3];
        for (k, (slot, which)) in spec.iter_mut().zip(SPEC_CONTROLS).enumerate() {
            if let Some(first) = self.attrs.threads.first() {
                if first.spec[k].is_none_or(|v| v & PR_SPEC_PRCTL == 0) {
                    *slot = first.spec[k];
                    continue;
                }
            }
            let v = r
                .syscall(libc::SYS_prctl, &[PR_GET_SPECULATION_CTRL, which, 0, 0, 0])
                .at(pid, st)?;
            // EINVAL/ENODEV: this kernel has no such control.
            *slot = u32::try_from(v).ok();
        }
        self.attrs.threads.push(ThreadAttrs {
            sched: SchedAttrs {
                policy: a.policy,
                flags: a.flags,
                nice: a.nice,
                priority: a.priority,
                runtime: a.runtime,
                deadline: a.deadline,
                period: a.period,
                util_min: a.util_min,
                util_max: a.util_max,
            },
            ioprio,
            timer_slack_ns,
            io_flusher: stat.flags & PF_IO_FLUSHER == PF_IO_FLUSHER,
            spec,
        });
        Ok(())
    }

    /// What belongs to the whole process; `r` runs in its leader.
    pub(crate) fn process(&mut self, r: &mut RemoteThread) -> Result<()> {
        let pid = self.pid;
        let st = Stage::Query;
        let (scratch, _) = r.scratch();
        let a = &mut self.attrs;
        a.thp_disable = r
            .call(
                libc::SYS_prctl,
                &[libc::PR_GET_THP_DISABLE as u64, 0, 0, 0, 0],
                "prctl(PR_GET_THP_DISABLE)",
            )
            .at(pid, st)? as u32;
        // EINVAL: a kernel without KSM, where nothing can be merged.
        a.memory_merge = r
            .syscall(libc::SYS_prctl, &[PR_GET_MEMORY_MERGE, 0, 0, 0, 0])
            .at(pid, st)?
            == 1;
        a.membarrier = r
            .call(
                libc::SYS_membarrier,
                &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0],
                "membarrier(GET_REGISTRATIONS)",
            )
            .at(pid, st)? as u32;
        r.call(
            libc::SYS_prctl,
            &[libc::PR_GET_CHILD_SUBREAPER as u64, scratch],
            "prctl(PR_GET_CHILD_SUBREAPER)",
        )
        .at(pid, st)?;
        a.child_subreaper = le_u32(&r.read_scratch(0, 4).at(pid, st)?, 0) != 0;
        let mlockall = self.probe_mlockall(r)?;
        self.attrs.mlockall = mlockall;
        Ok(())
    }

    /// mlockall(MCL_FUTURE) is not shown anywhere: map one probe page
    /// and see whether it came out locked (VmLck grows), and if so whether
    /// on fault (smaps `lf`); then unmap it. Free pages on both sides, so
    /// it merges with nothing.
    ///
    /// A dumper killed between the two calls would leave this page mapped,
    /// against the promise that a killed dumper leaves the process as it
    /// was. So the probe is made only in a process that has locked memory
    /// already: under MCL_FUTURE every mapping made since is locked, so a
    /// process without any locked mapping has made none since (or has no
    /// MCL_FUTURE), and the narrow case missed is MCL_FUTURE set after the
    /// last mapping the process made.
    fn probe_mlockall(&self, r: &mut RemoteThread) -> Result<u32> {
        let pid = self.pid;
        let st = Stage::Query;
        if !self.any_locked {
            return Ok(0);
        }
        let before = vm_locked_kb(pid)?;
        let at = self.probe_at;
        let flags = if at == 0 {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
        } else {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE
        };
        let mapped = r.syscall(
            libc::SYS_mmap,
            &[at, 4096, libc::PROT_EXEC as u64, flags as u64, u64::MAX, 0],
        );
        let addr = match mapped {
            Ok(a) => a,
            Err(e) => {
                // The call may have run before the error: take the page
                // back if it is there (it was free while we are frozen).
                if at != 0 && mapped_at(pid, at) {
                    let _ = r.syscall(libc::SYS_munmap, &[at, 4096]);
                }
                return Err(DumpError::Sys {
                    pid,
                    stage: st,
                    source: e,
                });
            }
        };
        if addr == -i64::from(libc::EAGAIN) {
            return Err(DumpError::Unsupported {
                pid,
                stage: Stage::Check,
                what: "mlockall(MCL_FUTURE) with RLIMIT_MEMLOCK exhausted (a probe mapping was refused with EAGAIN)".into(),
            });
        }
        if (-4095..0).contains(&addr) {
            return Err(DumpError::Sys {
                pid,
                stage: st,
                source: stasis_sys::SysError::new(
                    "remote mmap (mlockall probe)",
                    Some(r.tid()),
                    (-addr) as i32,
                ),
            });
        }
        let addr = addr as u64;
        // Whatever happens, the probe goes before this returns.
        let found = (|| -> Result<u32> {
            if vm_locked_kb(pid)? <= before {
                return Ok(0);
            }
            let onfault = stasis_proc::read_smaps(pid)
                .at(pid, Stage::Collect)?
                .iter()
                .any(|e| e.map.start <= addr && addr < e.map.end && e.has_flag("lf"));
            Ok(if onfault {
                (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u32
            } else {
                libc::MCL_FUTURE as u32
            })
        })();
        r.call(libc::SYS_munmap, &[addr, 4096], "munmap (mlockall probe)")
            .at(pid, st)?;
        found
    }

    /// The settings read from /proc of the process; the whole record.
    pub(crate) fn finish(mut self) -> Result<ProcAttrs> {
        let pid = self.pid;
        let path = format!("/proc/{pid}/oom_score_adj");
        self.attrs.oom_score_adj = parse(pid, &path, &read_proc(pid, &path)?)?;
        let path = format!("/proc/{pid}/coredump_filter");
        let text = read_proc(pid, &path)?;
        self.attrs.coredump_filter =
            u32::from_str_radix(text.trim(), 16).map_err(|_| DumpError::Unsupported {
                pid,
                stage: Stage::Collect,
                what: format!("{path}: unexpected contents {:?}", text.trim()),
            })?;
        let path = format!("/proc/{pid}/loginuid");
        self.attrs.loginuid = parse(pid, &path, &read_proc(pid, &path)?)?;
        Ok(self.attrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(flags: &str) -> SmapsEntry {
        let text = format!(
            "7f0000000000-7f0000004000 rw-p 00000000 00:00 0 \nRss: 16 kB\nVmFlags: {flags} \n"
        );
        stasis_proc::parse_smaps(text.as_bytes())
            .unwrap()
            .pop()
            .unwrap()
    }

    #[test]
    fn advice_names_from_vmflags() {
        let got = vma_advice(1, &entry("rd wr mr mw me lo lf ac rr dc mg sl sd"), None).unwrap();
        assert_eq!(
            got,
            [
                "dontfork",
                "mergeable",
                "random",
                "locked",
                "lockonfault",
                "sealed"
            ]
        );
        assert!(vma_advice(1, &entry("rd wr mr mw me ac"), None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn probe_goes_between_mappings_with_free_pages_around() {
        let text = "0000555555554000-0000555555556000 r-xp 00000000 00:00 0 \nVmFlags: rd ex \n\
                    00007f0000000000-00007f0000001000 rw-p 00000000 00:00 0 \nVmFlags: rd wr \n\
                    00007f0000004000-00007f0000005000 rw-p 00000000 00:00 0 \nVmFlags: rd wr \n\
                    00007ffc00000000-00007ffc00021000 rw-p 00000000 00:00 0 [stack]\nVmFlags: rd wr gd \n\
                    00007ffc00100000-00007ffc00102000 r-xp 00000000 00:00 0 [vdso]\nVmFlags: rd ex \n\
                    ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\nVmFlags: ex \n";
        let smaps = stasis_proc::parse_smaps(text.as_bytes()).unwrap();
        // Above the vDSO (below the end of user space), not under the stack.
        assert_eq!(probe_address(&smaps), 0x7ffc_0010_3000);
        // Without the vDSO: above the stack (it grows down).
        let smaps: Vec<_> = smaps
            .into_iter()
            .filter(|s| s.map.start != 0x7ffc_0010_0000)
            .collect();
        assert_eq!(probe_address(&smaps), 0x7ffc_0002_2000);
        // Nothing above the stack: between the two anonymous pages, not
        // in the gap below [stack].
        let smaps: Vec<_> = smaps.into_iter().take(4).collect();
        assert_eq!(probe_address(&smaps), 0x7f00_0000_2000);
    }

    #[test]
    fn unrestorable_vmflags_refused_by_name() {
        for (f, word) in [
            ("dp", "MAP_DROPPABLE"),
            ("um", "userfaultfd"),
            ("sf", "MAP_SYNC"),
        ] {
            let e = vma_advice(7, &entry(&format!("rd wr {f}")), None).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(word) && msg.contains("7f0000000000"), "{msg}");
        }
    }
}
