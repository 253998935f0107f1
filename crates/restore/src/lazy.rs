//! Lazy restore, the restorer's side (criu's `restore --lazy-pages`).
//!
//! Which areas are filled lazily is one pure rule ([`lazy_ranges`]), used
//! by the restorer (which registers them) and by the daemon (which serves
//! them, and in remote mode fetches every other byte of the page files
//! before the restore reads them).
//!
//! For each process, right after its areas are mapped and before any page
//! is filled, the restorer has the process create a userfaultfd (remote
//! syscall), takes a duplicate (pidfd_getfd), closes the process's own
//! descriptor again (the restored process holds no extra descriptor),
//! asks for the non-cooperative events (fork, mremap, remove, unmap) and
//! registers the lazy areas in missing mode. The daemon (`stasis
//! lazy-pages`, see `lazy_daemon.rs`) then takes its own duplicate from
//! us, by pidfd_getfd, and answers faults from then on: the restorer's
//! later remote calls that touch lazy memory (rseq, robust lists, signal
//! frames...) are served like the program's own. Eager pages are filled
//! as usual.
//!
//! The link is a unix stream socket (criu's `lazy-pages.socket` in the
//! work directory) carrying lines: `HELLO <our pid>`, then per process
//! `ADD <image pid> <host pid> <our fd> <start>-<end>,...` (answered `OK`
//! or `ERR reason`), and `RESUMED` once the tree runs (not answered: the
//! restorer closes the link right after it). A restore that
//! fails drops the link without `RESUMED`: the daemon then ends too.

use crate::{At, RestoreError, Result, Stage};
use stasis_image::{ProcessImage, Vma, VmaKind, PAGE_SIZE};
use stasis_sys::remote::RemoteThread;
use stasis_sys::uffd;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

/// The socket's file name, in the work directory (criu's).
pub const SOCKET_NAME: &str = "lazy-pages.socket";

/// The events the daemon must see to keep its page bookkeeping right.
pub(crate) const FEATURES: u64 = uffd::UFFD_FEATURE_EVENT_FORK
    | uffd::UFFD_FEATURE_EVENT_REMAP
    | uffd::UFFD_FEATURE_EVENT_REMOVE
    | uffd::UFFD_FEATURE_EVENT_UNMAP;

/// Whether `v` of process `p` can be filled on demand: private anonymous
/// memory of ordinary pages, not rebuilt from a copy-on-write object, and
/// with no flag that would touch or drop its pages behind the daemon's
/// back (mlock populates, wipe-on-fork children must read zeros, a sealed
/// area should not change after the restore). Writable only: a read-only
/// area left empty would lose VM_ACCOUNT at its mprotect (the kernel drops
/// it from an anonymous area that has no pages yet).
fn lazy_vma(v: &Vma, p: &ProcessImage, procs: &[ProcessImage]) -> bool {
    matches!(v.kind, VmaKind::Anon | VmaKind::Heap)
        && v.prot & libc::PROT_WRITE as u32 != 0
        && !v.shared
        && v.shmem == 0
        && v.huge_page_size == 0
        && v.cow_owner == 0
        && !procs.iter().any(|o| {
            o.mm.vmas
                .iter()
                .any(|w| w.cow_owner == p.pid && w.start == v.start)
        })
        && !v.advice.iter().any(|a| {
            matches!(
                a.as_str(),
                "locked" | "lockonfault" | "wipeonfork" | "dontfork" | "sealed"
            )
        })
}

/// The lazily filled areas of every process (in `procs` order): the lazy
/// VMAs that hold at least one saved page.
pub fn lazy_ranges(procs: &[ProcessImage]) -> Vec<Vec<(u64, u64)>> {
    procs
        .iter()
        .map(|p| {
            p.mm.vmas
                .iter()
                .filter(|v| lazy_vma(v, p, procs))
                .filter(|v| {
                    p.mm.pages
                        .iter()
                        .any(|r| r.addr < v.end && r.addr + r.nr_pages * PAGE_SIZE > v.start)
                })
                .map(|v| (v.start, v.end))
                .collect()
        })
        .collect()
}

/// Splits page runs by lazy areas (shared with the chain's lazy resolve).
pub use stasis_image::chain::split_runs;

/// The connection to the daemon, while a lazy restore runs.
struct Link {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    /// Image PID -> its lazy areas.
    ranges: HashMap<u32, Vec<(u64, u64)>>,
}

static LINK: Mutex<Option<Link>> = Mutex::new(None);

fn refused(pid: u32, stage: Stage, what: String) -> RestoreError {
    RestoreError::Refused { pid, stage, what }
}

impl Link {
    fn ask(&mut self, line: &str, pid: u32) -> Result<()> {
        let io = |e: std::io::Error| RestoreError::Io {
            pid,
            stage: Stage::Memory,
            what: "lazy-pages daemon".into(),
            source: e,
        };
        self.stream.write_all(line.as_bytes()).map_err(io)?;
        let mut answer = String::new();
        self.reader.read_line(&mut answer).map_err(io)?;
        match answer.trim_end() {
            "OK" => Ok(()),
            "" => Err(refused(
                pid,
                Stage::Memory,
                "lazy-pages daemon closed the connection".into(),
            )),
            a => Err(refused(
                pid,
                Stage::Memory,
                format!("lazy-pages daemon: {}", a.strip_prefix("ERR ").unwrap_or(a)),
            )),
        }
    }
}

/// While held, a failed restore drops the link (the daemon then ends with
/// an error instead of waiting).
pub(crate) struct Connected;

impl Drop for Connected {
    fn drop(&mut self) {
        abandon();
    }
}

/// Connects to the daemon listening at `socket` (before anything is
/// created: no daemon, no restore).
pub(crate) fn connect(socket: &Path, procs: &[ProcessImage]) -> Result<Connected> {
    let root = procs.first().map_or(0, |p| p.pid);
    let stream = UnixStream::connect(socket).map_err(|source| RestoreError::Io {
        pid: root,
        stage: Stage::Preflight,
        what: format!(
            "--lazy-pages: no lazy-pages daemon at {} (start `stasis lazy-pages -D DIR` first)",
            socket.display()
        ),
        source,
    })?;
    let reader = BufReader::new(stream.try_clone().map_err(|source| RestoreError::Io {
        pid: root,
        stage: Stage::Preflight,
        what: "lazy-pages socket".into(),
        source,
    })?);
    let ranges = procs
        .iter()
        .map(|p| p.pid)
        .zip(lazy_ranges(procs))
        .collect();
    let mut link = Link {
        stream,
        reader,
        ranges,
    };
    link.ask(&format!("HELLO {}\n", std::process::id()), root)?;
    *LINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
    Ok(Connected)
}

/// Whether this restore is lazy (a daemon link is open).
pub(crate) fn active() -> bool {
    LINK.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// In process `image_pid` (mapped, nothing filled yet): a userfaultfd
/// over its lazy areas, handed to the daemon. Returns the areas (empty
/// when no lazy restore runs).
pub(crate) fn register(r: &mut RemoteThread, image_pid: u32) -> Result<Vec<(u64, u64)>> {
    let mut guard = LINK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(link) = guard.as_mut() else {
        return Ok(Vec::new());
    };
    let ranges = link.ranges.get(&image_pid).cloned().unwrap_or_default();
    if ranges.is_empty() {
        return Ok(ranges);
    }
    let st = Stage::Memory;
    let host = r.tid();
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let dup = crate::fill_uffd::take_uffd(r, image_pid, flags)?;
    uffd::enable_features(dup.as_fd(), FEATURES).at(image_pid, st)?;
    for &(s, e) in &ranges {
        uffd::register_missing(dup.as_fd(), s, e - s).at(image_pid, st)?;
    }
    let list: Vec<String> = ranges.iter().map(|(s, e)| format!("{s:x}-{e:x}")).collect();
    link.ask(
        &format!(
            "ADD {image_pid} {} {} {}\n",
            host.0,
            dup.as_raw_fd(),
            list.join(",")
        ),
        image_pid,
    )?;
    log::debug!(
        "pid {image_pid}: {} lazy areas handed to the lazy-pages daemon",
        ranges.len()
    );
    Ok(ranges)
}

/// The tree runs: the daemon may stream the rest. Ends the link without
/// waiting for an answer (the daemon acknowledged every process already;
/// the restore returns as soon as the tree runs).
pub(crate) fn resumed(root: u32) -> Result<()> {
    let link = LINK.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut l) = link {
        l.stream
            .write_all(b"RESUMED\n")
            .map_err(|source| RestoreError::Io {
                pid: root,
                stage: Stage::Resume,
                what: "lazy-pages daemon".into(),
                source,
            })?;
    }
    Ok(())
}

/// Drops the link (a failed restore: the daemon ends too).
pub(crate) fn abandon() {
    LINK.lock().unwrap_or_else(|e| e.into_inner()).take();
}
