//! Rebuilding one seized process, stage by stage. Every process of the
//! tree is a copy of the restorer stopped in `pause()`, holding its
//! descriptors at their numbers; this turns it into the image's process and
//! leaves every thread stopped with its final registers.

use crate::guard::TreeGuard;
use crate::memory::{self, ServiceFds, STUB_LEN};
use crate::{affinity, attributes, creds, kinds, threads, timers, xstate};
use crate::{fault_point, At, Result, Stage};
use stasis_image::ProcessImage;
use stasis_sys::remote::{restart_fixed, RemoteThread};
use stasis_sys::{ptrace, util, Pid};

/// What [`start`] did for a process, for [`rebuild`].
pub(crate) struct Started {
    xsaves: Vec<Vec<u8>>,
    special: memory::ChildSpecial,
    /// Set by [`map_start`].
    mapped: Option<memory::Mapped>,
}

/// Starts mapping the process's areas once its tear-down is done, without
/// waiting (`memory::map_start`); `memory::map_end` waits.
pub(crate) fn map_start(
    img: &ProcessImage,
    r: &mut RemoteThread,
    svc: &ServiceFds,
    stub: u64,
    started: &mut Started,
) -> Result<()> {
    started.mapped = Some(memory::map_start(r, &img.mm, svc, stub, &started.special)?);
    Ok(())
}

/// Starts filling the pages of a process mapped by [`map_start`] without
/// waiting, when one call fills them (`memory::fill_start`);
/// `memory::fill_end` waits.
pub(crate) fn fill_start(
    img: &ProcessImage,
    r: &mut RemoteThread,
    svc: &ServiceFds,
    started: &mut Started,
) -> Result<Option<memory::Filling>> {
    match started.mapped.as_mut() {
        Some(m) => memory::fill_start(r, &img.mm, svc, m),
        None => Ok(None),
    }
}

/// The first stages of a process, up to its tear-down, which is started
/// but not waited for (see `memory::tear_down_start`): the tree's
/// processes are all started before any is waited for.
pub(crate) fn start(
    img: &ProcessImage,
    r: &mut RemoteThread,
    svc: &ServiceFds,
    stub: u64,
    layout: &memory::Inherited,
) -> Result<Started> {
    // Refused before the address space is touched if this CPU cannot hold
    // the saved register state.
    let xsaves = xstate::fit(img, r.tid())?;
    // THP and KSM modes before memory: they decide how it is populated
    // (queued: they run first in the tear-down's batch).
    crate::procattrs::before_memory(r, img)?;
    let special = memory::tear_down_start(r, svc, stub, layout)?;
    Ok(Started {
        xsaves,
        special,
        mapped: None,
    })
}

/// The stages for one process, in order, once [`start`] and
/// `memory::tear_down_end` are done. Returns its tids, leader first.
pub(crate) fn rebuild(
    img: &ProcessImage,
    mut r: RemoteThread,
    (svc, ready_fd): (&ServiceFds, i32),
    stub: u64,
    guard: &mut TreeGuard,
    k: usize,
    started: Started,
) -> Result<Vec<Pid>> {
    let pid = img.pid;
    let mut prof = Prof::new();
    let Started {
        xsaves,
        special,
        mapped,
    } = started;
    // Remote syscalls are cheapest with both on one CPU (best effort).
    let pin = util::CpuPin::new(r.tid()).ok();
    let spread = pin.as_ref().map(|p| p.original().to_vec());
    // Memory first: it replaces the restorer's copy, and PR_SET_MM_MAP
    // needs the final layout.
    memory::rebuild(
        &mut r,
        &img.mm,
        svc,
        stub,
        spread.as_deref(),
        (&special, mapped),
    )?;
    prof.mark("memory");
    crate::sysvipc::touch(&mut r, &svc.sysv_touch)?;
    fault_point(pid, Stage::Memory)?;
    attributes::attributes(&mut r, img, &svc.restorer)?;
    // The root's session keyring, which every process shares.
    if k == 0 {
        crate::keyrings::fill(&mut r, img)?;
    }
    // A deleted working directory has no name: entered by descriptor.
    kinds::saved::fchdir(&mut r, img, svc)?;
    prof.mark("attributes");
    // AMX permission before threads and altstacks (see xstate::permit).
    xstate::permit(&mut r, img)?;
    threads::thread_attributes(&mut r, pid, &img.threads[0])?;
    let mut others = threads::create_all(&mut r, img, stub, guard, k)?;
    prof.mark("threads");
    // Live tiles need one tile instruction per thread, through the stub.
    xstate::warm(&mut r, pid, &xsaves[0])?;
    for (tr, area) in others.iter_mut().zip(&xsaves[1..]) {
        xstate::warm(tr, pid, area)?;
    }
    // Timers after the threads (one may be the target of a timer's signal).
    timers::timers(&mut r, img)?;
    // pidfds and /proc entries name processes: opened by the process
    // itself now that every process exists, before epoll may watch them.
    kinds::reopen_late(&mut r, img)?;
    // Registrations name descriptor numbers, known only in the process.
    kinds::epoll::add_targets(&mut r, img)?;
    prof.mark("timers+late");
    // Per-thread settings once every thread exists.
    crate::procattrs::after_threads(&mut r, &mut others, img)?;
    prof.mark("after_threads");
    fault_point(pid, Stage::Attributes)?;
    // Seccomp filters before the credentials (installing one needs
    // CAP_SYS_ADMIN or no_new_privs); suspended for our remote calls until
    // the tree is detached.
    crate::seccomp::install(&mut r, &others, img)?;
    prof.mark("seccomp");
    // Credentials last but one: they may take away what the steps before need.
    creds::all_threads(&mut r, &mut others, img, &svc.restorer)?;
    prof.mark("creds");
    fault_point(pid, Stage::Creds)?;
    drop_service(&mut r, img, svc, ready_fd, stub)?;
    prof.mark("drop_service");
    let mut tids = vec![r.tid()];
    tids.extend(others.iter().map(|t| t.tid()));
    registers(img, &tids, &xsaves)?;
    prof.mark("registers");
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
    prof.mark("finish");
    prof.log(pid, "rebuild");
    Ok(tids)
}

/// The last remote calls: close the service descriptors, take the file
/// locks, unmap the inherited shared objects and the stub.
fn drop_service(
    r: &mut RemoteThread,
    img: &ProcessImage,
    svc: &ServiceFds,
    ready_fd: i32,
    stub: u64,
) -> Result<()> {
    let pid = img.pid;
    let mut svc_fds: Vec<i32> = vec![svc.pages, svc.exe, ready_fd];
    svc_fds.extend(svc.files.values().copied());
    svc_fds.sort_unstable();
    svc_fds.dedup();
    for fd in svc_fds {
        r.queue(
            libc::SYS_close,
            &[fd as u64],
            format!("close service fd {fd}"),
        )
        .at(pid, Stage::Registers)?;
    }
    // Queued: the closes run before the first call below (the owners and
    // locks), or else with the unmaps.
    // Descriptor owners and file locks: after the threads, the credentials
    // and the closes above (closing any descriptor of a file drops the
    // process's POSIX locks on it; see their modules).
    crate::fdowner::restore(r, img)?;
    crate::locks::restore(r, img)?;
    for &(a, l) in svc.shmem.values().chain(svc.cow.values()) {
        // Queued: one round trip for all of them, before the stub goes.
        r.queue(libc::SYS_munmap, &[a, l], "munmap inherited shared memory")
            .at(pid, Stage::Registers)?;
    }
    r.call(libc::SYS_munmap, &[stub, STUB_LEN], "munmap stub area")
        .at(pid, Stage::Registers)?;
    Ok(())
}

/// Blocked mask, XSAVE area (fitted to this CPU) and general registers of
/// every thread.
fn registers(img: &ProcessImage, tids: &[Pid], xsaves: &[Vec<u8>]) -> Result<()> {
    let pid = img.pid;
    for ((t, &tid), area) in img.threads.iter().zip(tids).zip(xsaves) {
        ptrace::set_sigmask(tid, t.sigmask).at(pid, Stage::Registers)?;
        if !area.is_empty() {
            ptrace::set_xstate(tid, area).at(pid, Stage::Registers)?;
        }
        // Stopped at a syscall exit, the kernel applies no restart logic: do it.
        let regs = restart_fixed(&threads::image_to_regs(&t.regs));
        ptrace::set_regs(tid, &regs).at(pid, Stage::Registers)?;
    }
    Ok(())
}

/// Time and ptrace round trips of each stage of one process's rebuild
/// (debug log).
pub(crate) struct Prof {
    at: std::time::Instant,
    trips: u64,
    parts: Vec<String>,
}

impl Prof {
    pub(crate) fn new() -> Prof {
        Prof {
            at: std::time::Instant::now(),
            trips: stasis_sys::remote::round_trips(),
            parts: Vec::new(),
        }
    }

    pub(crate) fn mark(&mut self, what: &str) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let (now, trips) = (std::time::Instant::now(), stasis_sys::remote::round_trips());
        self.parts.push(format!(
            "{what} {}us/{}",
            now.duration_since(self.at).as_micros(),
            trips - self.trips
        ));
        (self.at, self.trips) = (now, trips);
    }

    pub(crate) fn log(&self, pid: u32, what: &str) {
        log::debug!(
            "pid {pid}: {what} (us/round trips): {}",
            self.parts.join(", ")
        );
    }
}
