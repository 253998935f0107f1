//! Restoring one process: fork it with its PID, rebuild it, resume it.

use crate::memory::{self, ServiceFds, STUB_LEN};
use crate::{fault_point, At, RestoreError, Result, Stage};
use stasis_image::{FdKind, ProcessImage, UserRegs, VmaKind};
use stasis_sys::ptrace::{self, Regs};
use stasis_sys::remote::{restart_fixed, RemoteThread};
use stasis_sys::spawn::{self, FdPlan};
use stasis_sys::{util, Pid};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Kills the half-built child unless disarmed.
struct ChildGuard(Option<Pid>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            log::warn!("pid {p}: killing the partly restored process");
            spawn::kill_and_reap(p);
        }
    }
}

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

const OPEN_FLAGS_DROP: i32 =
    libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC;

/// Opens, in the restorer, every file the child needs; returns the fd plan.
fn open_files(img: &ProcessImage, pages: &Path) -> Result<(Vec<OwnedFd>, FdPlan, ServiceFds)> {
    let pid = img.pid;
    let st = Stage::Fork;
    let mut owned: Vec<OwnedFd> = Vec::new();
    let mut plan = FdPlan::default();
    for e in &img.files {
        let (path, flags, pos) = match &e.kind {
            FdKind::Regular { file, flags, pos } => (file.path.as_str(), *flags as i32, *pos),
            FdKind::CharDevice { path, flags, .. } => (path.as_str(), *flags as i32, 0),
        };
        let fd =
            util::open(path, flags & !OPEN_FLAGS_DROP).map_err(|source| RestoreError::Sys {
                pid,
                stage: st,
                source: stasis_sys::SysError {
                    op: format!("fd {}: {}", e.fd, source.op),
                    ..source
                },
            })?;
        if pos != 0 {
            util::seek_to(&fd, pos, path).at(pid, st)?;
        }
        plan.targets.push((owned.len(), e.fd, e.cloexec));
        owned.push(fd);
    }
    let service = |path: &str, flags: i32, owned: &mut Vec<OwnedFd>| -> Result<usize> {
        let fd = util::open(path, flags).at(pid, st)?;
        owned.push(fd);
        Ok(owned.len() - 1)
    };
    let pages_i = service(&pages.to_string_lossy(), libc::O_RDONLY, &mut owned)?;
    let exe_i = service(&img.exe.path, libc::O_RDONLY, &mut owned)?;
    let mut files_i = HashMap::new();
    for v in &img.mm.vmas {
        if let VmaKind::File { file } = &v.kind {
            let needs_write = v.shared && v.prot & libc::PROT_WRITE as u32 != 0;
            let entry = files_i
                .entry(file.path.clone())
                .or_insert((usize::MAX, false));
            entry.1 |= needs_write;
        }
    }
    let mut files_idx = HashMap::new();
    let mut names: Vec<_> = files_i.into_iter().collect();
    names.sort();
    for (path, (_, write)) in names {
        let i = service(
            &path,
            if write { libc::O_RDWR } else { libc::O_RDONLY },
            &mut owned,
        )?;
        files_idx.insert(path, i);
    }
    let max_target = img.files.iter().map(|f| f.fd).max().unwrap_or(-1);
    plan.staging = util::max_open_fd().max(max_target) + 1;
    plan.srcs = owned.iter().map(|f| f.as_raw_fd()).collect();
    let at = |i: usize| plan.staging + i as i32;
    let svc = ServiceFds {
        pages: at(pages_i),
        exe: at(exe_i),
        files: files_idx.into_iter().map(|(p, i)| (p, at(i))).collect(),
    };
    Ok((owned, plan, svc))
}

pub(crate) fn restore_one(img: &ProcessImage, pages: &Path) -> Result<Pid> {
    let pid = img.pid;
    let (owned, plan, svc) = open_files(img, pages)?;

    // The stub area, inherited by the child through the fork.
    let mut stub = None;
    for cand in memory::stub_candidates(&img.mm) {
        if spawn::map_stub_area(cand, STUB_LEN).is_ok() {
            stub = Some(cand);
            break;
        }
    }
    let stub = stub.ok_or_else(|| RestoreError::Refused {
        pid,
        stage: Stage::Fork,
        what: "no free address for the restorer's stub area".into(),
    })?;
    let child = spawn::spawn_stopped(pid as i32, &plan);
    spawn::unmap_stub_area(stub, STUB_LEN);
    drop(owned);
    let child = child.map_err(|source| match source.errno() {
        Some(libc::EEXIST) => RestoreError::Refused {
            pid,
            stage: Stage::Fork,
            what: format!("PID {pid} is already in use by another process"),
        },
        _ => RestoreError::Sys {
            pid,
            stage: Stage::Fork,
            source,
        },
    })?;
    let mut guard = ChildGuard(Some(child));
    fault_point(pid, Stage::Fork)?;

    let mut r =
        RemoteThread::plain(child, stub, stub + 4096, STUB_LEN - 4096).at(pid, Stage::Fork)?;
    // Remote syscalls are cheapest with both on one CPU (best effort).
    let pin = util::CpuPin::new(child).ok();
    let spread = pin.as_ref().map(|p| p.original().to_vec());
    memory::rebuild(&mut r, &img.mm, &svc, stub, spread.as_deref())?;
    fault_point(pid, Stage::Memory)?;
    attributes(&mut r, img)?;
    fault_point(pid, Stage::Attributes)?;
    creds(&mut r, img)?;
    fault_point(pid, Stage::Creds)?;

    // The last remote calls: close service descriptors, drop the stub.
    let mut svc_fds: Vec<i32> = vec![svc.pages, svc.exe];
    svc_fds.extend(svc.files.values().copied());
    svc_fds.sort_unstable();
    svc_fds.dedup();
    for fd in svc_fds {
        r.call(libc::SYS_close, &[fd as u64], "close service fd")
            .at(pid, Stage::Registers)?;
    }
    r.call(libc::SYS_munmap, &[stub, STUB_LEN], "munmap stub area")
        .at(pid, Stage::Registers)?;

    let t = &img.threads[0];
    ptrace::set_sigmask(child, t.sigmask).at(pid, Stage::Registers)?;
    if !t.xsave.is_empty() {
        ptrace::set_xstate(child, &t.xsave).at(pid, Stage::Registers)?;
    }
    // Stopped at a syscall exit, the kernel applies no restart logic: do it.
    ptrace::set_regs(child, &restart_fixed(&image_to_regs(&t.regs))).at(pid, Stage::Registers)?;
    fault_point(pid, Stage::Registers)?;
    if let Some(pin) = pin {
        pin.release().at(pid, Stage::Resume)?;
    }
    ptrace::detach(child, 0).at(pid, Stage::Resume)?;
    guard.0 = None;
    Ok(child)
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
    if policy & !0x4000_0000 != libc::SCHED_OTHER as u32 || img.sched.rt_priority != 0 {
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

    for l in &img.rlimits {
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
    let status = stasis_proc::read_status(pid).map_err(|e| RestoreError::Refused {
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

    // Pending signals: queued by the process to itself (only a process may
    // queue kernel-style siginfo to itself); all signals are blocked here.
    let t = &img.threads[0];
    for (p, shared) in img
        .shared_pending
        .iter()
        .map(|p| (p, true))
        .chain(t.pending.iter().map(|p| (p, false)))
    {
        let at = r.write_scratch(0, &p.info).at(pid, st)?;
        if shared {
            r.call(
                libc::SYS_rt_sigqueueinfo,
                &[u64::from(pid), u64::from(p.signo), at],
                "rt_sigqueueinfo",
            )
            .at(pid, st)?;
        } else {
            r.call(
                libc::SYS_rt_tgsigqueueinfo,
                &[u64::from(pid), u64::from(t.tid), u64::from(p.signo), at],
                "rt_tgsigqueueinfo",
            )
            .at(pid, st)?;
        }
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
fn creds(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
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
    if img.dumpable <= 1 {
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
