//! Writing each process's page file and core file, two processes at a time.
//!
//! Writes into one file serialize on its inode lock (tmpfs and ext4
//! alike), so a second thread helps only with a second file: a tree's
//! processes, whose files are independent, are written by two workers,
//! each taking the next process in inventory order. The results keep
//! that order, and the error reported is the one of the first process
//! that failed, as when they were written one after another (a worker
//! takes no new process once one has failed).

use crate::collect::Collected;
use crate::{fault_point, kinds, memory, sysvipc, At, Deadline, Result, Stage};
use stasis_image::{ImageWriter, ProcessRef, PAGE_SIZE};
use stasis_sys::Pid;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What the processes' files came to.
#[derive(Default)]
pub(crate) struct Written {
    pub(crate) refs: Vec<ProcessRef>,
    pub(crate) page_bytes: u64,
    pub(crate) parent_bytes: u64,
    pub(crate) vmas: usize,
    pub(crate) page_runs: usize,
}

/// One process's files, and what they hold.
struct One {
    r: ProcessRef,
    page_bytes: u64,
    parent_bytes: u64,
}

/// Writes the files of every process of `collected` (in inventory
/// order); the SysV shm segments' contents (`ipc`) go into the root's
/// page file. `brief`: the tree runs meanwhile (a pre-dump round).
pub(crate) fn all(
    writer: &ImageWriter,
    collected: &mut [Collected],
    ipc: Option<&mut sysvipc::Saved>,
    brief: bool,
    deadline: &Deadline,
) -> Result<Written> {
    let n = collected.len();
    let ipc = Mutex::new(ipc);
    let queue = Mutex::new(collected.iter_mut().enumerate());
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<One>>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let work = || loop {
        if failed.load(Ordering::Relaxed) {
            break;
        }
        let next = queue.lock().ok().and_then(|mut q| q.next());
        let Some((i, state)) = next else { break };
        let ipc_of_root = if i == 0 {
            ipc.lock().ok().and_then(|mut g| g.take())
        } else {
            None
        };
        let got = one(writer, state, ipc_of_root, brief, deadline);
        if got.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        if let Ok(mut s) = slots[i].lock() {
            *s = Some(got);
        }
    };
    std::thread::scope(|s| {
        if n > 1 {
            s.spawn(work);
        }
        work();
    });
    let mut out = Written {
        refs: Vec::with_capacity(n),
        ..Written::default()
    };
    for (slot, state) in slots.into_iter().zip(collected.iter()) {
        // Not reached: a process after the first that failed.
        let Some(got) = slot.into_inner().ok().flatten() else {
            break;
        };
        let one = got?;
        out.page_bytes += one.page_bytes;
        out.parent_bytes += one.parent_bytes;
        out.vmas += state.image.mm.vmas.len();
        out.page_runs += state.image.mm.pages.len();
        out.refs.push(one.r);
    }
    Ok(out)
}

/// The page file, then the core file, of one process.
fn one(
    writer: &ImageWriter,
    state: &mut Collected,
    ipc: Option<&mut sysvipc::Saved>,
    brief: bool,
    deadline: &Deadline,
) -> Result<One> {
    let pid = state.image.pid;
    let mut pages = writer.pages_writer(pid).at(pid, Stage::Write)?;
    memory::dump_pages(
        Pid(state.host_pid as i32),
        &mut state.image.mm,
        &state.page_plan,
        &mut pages,
        brief,
    )?;
    match kinds::saved::write_saved(&mut state.image, state.host_pid, &mut pages) {
        // A brief round's tree runs: a process that exited meanwhile
        // is in no later dump, which takes nothing of it from here.
        Err(e) if brief && memory::exited(Pid(state.host_pid as i32)) => {
            log::debug!("pid {pid}: exited while its files were saved ({e})");
        }
        r => r?,
    }
    if let Some(saved) = ipc {
        // Segment contents: in the root's page file.
        sysvipc::write_contents(saved, state.host_pid, &mut pages)?;
    }
    let page_bytes = pages.offset();
    let parent_bytes = state
        .image
        .mm
        .pages
        .iter()
        .filter(|r| r.in_parent)
        .map(|r| r.nr_pages * PAGE_SIZE)
        .sum::<u64>();
    let pages_file = pages.finish().at(pid, Stage::Memory)?;
    fault_point(pid, Stage::Memory)?;
    deadline.check(Stage::Memory)?;
    let core_file = writer.write_process(&state.image).at(pid, Stage::Write)?;
    Ok(One {
        r: ProcessRef {
            pid,
            core_file,
            pages_file,
        },
        page_bytes,
        parent_bytes,
    })
}
