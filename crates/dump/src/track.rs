//! Pre-copy: write tracking between dumps, without soft-dirty.
//!
//! A pre-dump has the frozen target create a userfaultfd (one remote
//! syscall), takes a duplicate with pidfd_getfd and closes the target's
//! descriptor at once: the target never sees it once it runs again. The
//! dumper enables asynchronous write-protection on it (the kernel resolves
//! write faults itself, clearing the page's uffd-wp bit), registers every
//! private mapping, and write-protects every present page with one
//! PAGEMAP_SCAN per mapping. A *holder* process (`stasis __track-hold`,
//! started by the dumper) keeps the duplicates open after the dumper exits;
//! the inventory records it (PID, start time, descriptor numbers).
//!
//! The next round takes the descriptors back from the holder
//! (pidfd_getfd) and, per mapping registered in async mode, asks which
//! present pages were not written since (PAGEMAP_SCAN with
//! PM_SCAN_CHECK_WPASYNC: EPERM on a mapping that is not registered,
//! i.e. created, replaced or moved since). Those pages, where the parent
//! chain holds them, are recorded `in_parent`; everything else is saved
//! again. Shared mappings are never tracked (a write through another
//! process or through pwrite() to a memfd leaves no mark here): their
//! pages are always saved. A process forked since, or whose tracker is
//! gone, is saved whole.

use crate::collect::Collected;
use crate::{At, DumpError, Result, Stage};
use stasis_image::chain::{self, ParentLink, TrackedProc, Tracking};
use stasis_image::{ImageDir, Vma, VmaKind};
use stasis_sys::pagemap::{
    Pagemap, Query, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING,
};
use stasis_sys::remote::RemoteThread;
use stasis_sys::{uffd, util, Pid};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// The hidden command the holder runs as.
pub const HOLD_COMMAND: &str = "__track-hold";

/// The image a dump builds on (`--prev-images-dir`).
pub(crate) struct Parent {
    /// None: no parent image, only a holder found running for the target
    /// (see [`running_holder`]).
    pub link: Option<ParentLink>,
    /// Per image PID: sorted, merged address ranges the chain holds pages of.
    covered: HashMap<u32, Vec<(u64, u64)>>,
    /// Per image PID: payload bytes of the parent's own page file (what
    /// that round saved: about what the next one will, unless that round
    /// was the first, which saved everything).
    saved: HashMap<u32, u64>,
    /// The parent has no parent of its own: a full image.
    first_round: bool,
    tracking: Option<Tracking>,
    /// A pidfd of the parent's holder, if it is still the one recorded.
    holder: Option<OwnedFd>,
}

/// Loads the parent image (inventory and core files, validated) before
/// anything is frozen: a missing or corrupt parent is refused here.
pub(crate) fn load_parent(pid: u32, images_dir: &Path, prev: &Path) -> Result<Parent> {
    let st = Stage::Check;
    // The parent is named relative to the image directory: it must exist
    // for `..` to resolve (the writer would create it anyway).
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(images_dir)
        .map_err(|source| DumpError::Io {
            pid,
            stage: st,
            what: format!("create {}", images_dir.display()),
            source,
        })?;
    let pdir = images_dir.join(prev);
    let dir = ImageDir::open(&pdir).at(pid, st)?;
    let inv = dir.load_inventory().at(pid, st)?;
    let link = ParentLink {
        dir: prev.to_string_lossy().into_owned(),
        inventory_xxh3: chain::inventory_digest(&pdir).at(pid, st)?,
    };
    let mut covered = HashMap::new();
    let mut saved = HashMap::new();
    for r in &inv.processes {
        let img = dir.load_process(r).at(pid, st)?;
        if let Ok(m) = std::fs::metadata(dir.pages_path(r)) {
            saved.insert(
                img.pid,
                m.len().saturating_sub(stasis_image::PAGES_HEADER_LEN),
            );
        }
        let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(img.mm.pages.len());
        for p in &img.mm.pages {
            let end = p.addr + p.nr_pages * stasis_image::PAGE_SIZE;
            match ranges.last_mut() {
                Some(l) if l.1 == p.addr => l.1 = end,
                _ => ranges.push((p.addr, end)),
            }
        }
        covered.insert(img.pid, ranges);
    }
    let holder = inv.tracking.as_ref().and_then(|t| match verify_holder(t) {
        Ok(fd) => Some(fd),
        Err(why) => {
            log::warn!(
                "pid {pid}: the write tracking of {} is gone ({why}): every page is saved again",
                pdir.display()
            );
            None
        }
    });
    if inv.tracking.is_none() {
        log::warn!(
            "pid {pid}: {} was dumped without write tracking: every page is saved again",
            pdir.display()
        );
    }
    Ok(Parent {
        link: Some(link),
        covered,
        saved,
        first_round: inv.parent.is_none(),
        tracking: inv.tracking,
        holder,
    })
}

/// A dump without `--prev-images-dir` of a process a pre-dump still
/// tracks: the holder running for it (found by its command line), so
/// that the tracker's own registrations are recognised (not refused as
/// an application's userfaultfd) and the holder is ended by a successful
/// dump. Every page is saved.
pub(crate) fn running_holder(root: u32) -> Option<Parent> {
    let want = format!("{root}:");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(hp) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{hp}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) != Some(HOLD_COMMAND)
            || !args.get(2).is_some_and(|a| a.starts_with(&want))
        {
            continue;
        }
        let procs = args[2..]
            .iter()
            .filter_map(|a| {
                let (p, f) = a.split_once(':')?;
                let host_pid: u32 = p.parse().ok()?;
                Some(TrackedProc {
                    pid: host_pid,
                    host_pid,
                    host_start: start_time(host_pid).ok()?,
                    fd: f.parse().ok()?,
                })
            })
            .collect();
        let tracking = Tracking {
            holder_pid: hp,
            holder_start: start_time(hp).ok()?,
            procs,
        };
        let holder = verify_holder(&tracking).ok()?;
        log::info!("pid {root}: write tracking held by PID {hp} ends with this dump");
        return Some(Parent {
            link: None,
            covered: HashMap::new(),
            saved: HashMap::new(),
            first_round: false,
            tracking: Some(tracking),
            holder: Some(holder),
        });
    }
    None
}

fn start_time(pid: u32) -> std::result::Result<u64, String> {
    stasis_proc::read_stat(pid)
        .map(|s| s.start_time)
        .map_err(|e| e.to_string())
}

fn verify_holder(t: &Tracking) -> std::result::Result<OwnedFd, String> {
    let hp = t.holder_pid;
    if start_time(hp)? != t.holder_start {
        return Err(format!("PID {hp} is another process now"));
    }
    let fd = util::pidfd_open(Pid(hp as i32)).map_err(|e| e.to_string())?;
    // The pidfd names whatever had the PID when it was opened: check again.
    if start_time(hp)? != t.holder_start {
        return Err(format!("PID {hp} is another process now"));
    }
    Ok(fd)
}

/// At most this many bytes of page files are allocated ahead of a dump
/// ([`Parent::reserve`]), whatever the parent saved.
const RESERVE_MAX: u64 = 256 << 20;
/// The same after a first round: it saved the whole memory, which says
/// nothing of what was written since.
const RESERVE_MAX_FIRST: u64 = 64 << 20;

impl Parent {
    /// What to allocate ahead for a dump on top of this parent: each
    /// process's page file sized as the parent round saved of it, with a
    /// quarter and 1 MiB more (the tree writes on meanwhile), at most
    /// [`RESERVE_MAX`] in all (the largest processes first), or
    /// [`RESERVE_MAX_FIRST`] on top of a first round.
    pub(crate) fn reserve(&self) -> Vec<(u32, u64)> {
        let mut want: Vec<(u32, u64)> = self
            .saved
            .iter()
            .filter(|(_, &b)| b > 0)
            .map(|(&p, &b)| (p, (b + b / 4 + (1 << 20)) & !(stasis_image::PAGE_SIZE - 1)))
            .collect();
        want.sort_by_key(|&(p, b)| (std::cmp::Reverse(b), p));
        let mut left = if self.first_round {
            RESERVE_MAX_FIRST
        } else {
            RESERVE_MAX
        };
        want.retain_mut(|(_, b)| {
            *b = (*b).min(left);
            left -= *b;
            *b > 0
        });
        want
    }

    /// The tracker of host process `host_pid`, taken back from the holder,
    /// with the process's PID in the parent image; None (logged) if the
    /// process was not tracked or its tracker is gone.
    pub(crate) fn take_over(&self, host_pid: u32) -> Option<(OwnedFd, u32)> {
        let (t, h) = (self.tracking.as_ref()?, self.holder.as_ref()?);
        let tp = t.procs.iter().find(|p| p.host_pid == host_pid)?;
        let got = (|| -> std::result::Result<OwnedFd, String> {
            if start_time(host_pid)? != tp.host_start {
                return Err("the PID is another process now".into());
            }
            let fd =
                util::pidfd_getfd(h, Pid(t.holder_pid as i32), tp.fd).map_err(|e| e.to_string())?;
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map_err(|e| e.to_string())?;
            if link.as_os_str() != "anon_inode:[userfaultfd]" {
                return Err(format!("holder fd {} is {}", tp.fd, link.display()));
            }
            Ok(fd)
        })();
        match got {
            Ok(fd) => Some((fd, tp.pid)),
            Err(why) => {
                log::warn!("pid {host_pid}: write tracking lost ({why}): every page is saved");
                None
            }
        }
    }

    /// Ends the parent's holder: its tracking is superseded (or spent).
    pub(crate) fn end_holder(&self) {
        if let Some(h) = &self.holder {
            let _ = util::pidfd_kill(h, libc::SIGKILL);
        }
    }
}

/// In the frozen target: a userfaultfd with asynchronous write-protection,
/// duplicated into the dumper; the target's own descriptor is closed again
/// before this returns.
pub(crate) fn inject(r: &mut RemoteThread, pid: u32) -> Result<OwnedFd> {
    let st = Stage::Query;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = match r.call(libc::SYS_userfaultfd, &[flags], "userfaultfd") {
        // Unprivileged target with vm.unprivileged_userfaultfd = 0.
        Err(e) if e.errno() == Some(libc::EPERM) => r.call(
            libc::SYS_userfaultfd,
            &[flags | uffd::UFFD_USER_MODE_ONLY],
            "userfaultfd(UFFD_USER_MODE_ONLY)",
        ),
        x => x,
    }
    .at(pid, st)? as i32;
    let dup = util::pidfd_open(Pid(pid as i32))
        .and_then(|pfd| util::pidfd_getfd(&pfd, Pid(pid as i32), fd));
    let closed = r.call(libc::SYS_close, &[fd as u64], "close(userfaultfd)");
    let dup = dup.at(pid, st)?;
    closed.at(pid, st)?;
    uffd::enable_wp_async(dup.as_fd()).at(pid, st)?;
    Ok(dup)
}

/// Mappings whose writes this process's tracker sees: private ones of
/// ordinary pages.
pub(crate) fn trackable(v: &Vma) -> bool {
    !v.shared
        && v.shmem == 0
        && v.huge_page_size == 0
        && matches!(
            v.kind,
            VmaKind::Anon | VmaKind::Heap | VmaKind::File { .. } | VmaKind::Saved { .. }
        )
}

/// Intersection of two sorted lists of disjoint ranges.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Marks the pages of `c` that its parent image holds unchanged.
pub(crate) fn use_parent(c: &mut Collected, parent: &Parent, parent_pid: u32) -> Result<()> {
    let pid = c.host_pid;
    if c.image.pid != parent_pid {
        log::warn!(
            "pid {pid}: PID {} in the image, {parent_pid} in the parent: every page is saved",
            c.image.pid
        );
        return Ok(());
    }
    let Some(covered) = parent.covered.get(&parent_pid) else {
        return Ok(());
    };
    // Present pages not written since the last round, of the mappings
    // still registered with the tracker (memory::plan's pass).
    c.page_plan.from_parent = intersect(&c.page_plan.unchanged, covered);
    Ok(())
}

/// Registers every trackable mapping of `c` with its tracker and
/// write-protects every present page: writes from now on are seen by the
/// next round. A mapping that cannot be registered (an application's own
/// userfaultfd: EBUSY) stays untracked and is saved whole every round.
pub(crate) fn arm(c: &Collected, fd: &OwnedFd) -> Result<()> {
    let pid = c.host_pid;
    let pm = Pagemap::open(Pid(pid as i32)).at(pid, Stage::Memory)?;
    let q = Query {
        inverted: 0,
        mask: PAGE_IS_WRITTEN,
        anyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
    };
    let mut sink = Vec::new();
    for v in c.image.mm.vmas.iter().filter(|v| trackable(v)) {
        if let Err(e) = uffd::register_wp(fd.as_fd(), v.start, v.end - v.start) {
            log::info!("pid {pid}: {:#x}-{:#x} not tracked: {e}", v.start, v.end);
            continue;
        }
        sink.clear();
        pm.scan_flags(
            v.start,
            v.end,
            q,
            PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            &mut sink,
        )
        .at(pid, Stage::Memory)?;
    }
    Ok(())
}

/// Test hook of the brief rounds' negative control:
/// `STASIS_TEST_PRECOPY_LOSE_WRITES=MS` waits MS milliseconds after the
/// pages were copied, then write-protects every page again while the
/// tree runs, which is what the brief round must never do: the writes
/// made during the copy (and the wait) lose their mark, so the next
/// round takes their stale copies from this image. A program that checks
/// its memory must then FAIL (tests/precopy.rs).
pub(crate) fn test_lose_copy_writes(collected: &[Collected]) -> Result<()> {
    let Some(ms) = std::env::var("STASIS_TEST_PRECOPY_LOSE_WRITES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return Ok(());
    };
    log::warn!("STASIS_TEST_PRECOPY_LOSE_WRITES: dropping the writes made during the copy");
    std::thread::sleep(std::time::Duration::from_millis(ms));
    for c in collected {
        if let Some(fd) = &c.uffd {
            arm(c, fd)?;
        }
    }
    Ok(())
}

/// Starts the holder of `fds` (host PID, image PID, tracker) and returns
/// the record for the inventory and a pidfd of the holder.
pub(crate) fn spawn_holder(root: u32, fds: &[(u32, u32, &OwnedFd)]) -> Result<(Tracking, OwnedFd)> {
    let st = Stage::Write;
    let mut args = vec![HOLD_COMMAND.to_string()];
    let mut procs = Vec::with_capacity(fds.len());
    for &(host_pid, pid, fd) in fds {
        let host_start = match start_time(host_pid) {
            Ok(t) => t,
            // It exited during a brief round's copy: nothing to track.
            Err(e) if crate::memory::exited(Pid(host_pid as i32)) => {
                log::debug!("pid {host_pid}: exited during the round ({e}): not tracked");
                continue;
            }
            Err(e) => return Err(io_err(root, "read stat", e)),
        };
        uffd::inheritable(fd.as_fd()).at(root, st)?;
        args.push(format!("{host_pid}:{}", fd.as_raw_fd()));
        procs.push(TrackedProc {
            pid,
            host_pid,
            host_start,
            fd: fd.as_raw_fd(),
        });
    }
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new("/proc/self/exe")
        .arg0("stasis")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| io_err(root, "start the tracking holder", e.to_string()))?;
    let hp = child.id();
    let pidfd = util::pidfd_open(Pid(hp as i32)).at(root, st)?;
    let holder_start = start_time(hp).map_err(|e| io_err(root, "read holder stat", e))?;
    log::info!("pid {root}: write tracking held by PID {hp}");
    Ok((
        Tracking {
            holder_pid: hp,
            holder_start,
            procs,
        },
        pidfd,
    ))
}

fn io_err(pid: u32, what: &str, e: String) -> DumpError {
    DumpError::Io {
        pid,
        stage: Stage::Write,
        what: what.into(),
        source: std::io::Error::other(e),
    }
}

/// The holder's life: keep the inherited trackers open until every
/// tracked process has exited (or a later round ends it). Arguments:
/// `HOST_PID:FD` each.
pub fn hold(args: &[String]) -> std::result::Result<(), String> {
    let mut keep = Vec::new();
    let mut pids = Vec::new();
    for a in args {
        let (p, f) = a
            .split_once(':')
            .ok_or_else(|| format!("bad argument {a:?}"))?;
        pids.push(p.parse::<i32>().map_err(|_| format!("bad pid in {a:?}"))?);
        keep.push(f.parse::<i32>().map_err(|_| format!("bad fd in {a:?}"))?);
    }
    // Nothing but the trackers: no descriptor of the dumper's caller.
    util::close_others(&keep);
    let pidfds: Vec<OwnedFd> = pids
        .into_iter()
        .filter_map(|p| util::pidfd_open(Pid(p)).ok())
        .collect();
    util::wait_all_exit(&pidfds).map_err(|e| e.to_string())
}

/// One dump round's effect on tracking, undone if the dump fails: once
/// the parent's trackers have been re-armed, the parent's tracking no
/// longer tells what changed since the parent image, so its holder is
/// ended (a retry saves every page); a holder started for this round is
/// ended too. On success the parent's holder is ended (superseded).
pub(crate) struct Round<'a> {
    parent: Option<&'a Parent>,
    pub armed: bool,
    pub new_holder: Option<OwnedFd>,
    done: bool,
}

impl<'a> Round<'a> {
    pub(crate) fn new(parent: Option<&'a Parent>) -> Round<'a> {
        Round {
            parent,
            armed: false,
            new_holder: None,
            done: false,
        }
    }

    pub(crate) fn parent(&self) -> Option<&'a Parent> {
        self.parent
    }

    pub(crate) fn succeed(mut self) {
        self.done = true;
        if let Some(p) = self.parent {
            p.end_holder();
        }
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let (true, Some(p)) = (self.armed, self.parent) {
            p.end_holder();
        }
        if let Some(h) = &self.new_holder {
            let _ = util::pidfd_kill(h, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{intersect, Parent, RESERVE_MAX, RESERVE_MAX_FIRST};
    use std::collections::HashMap;

    #[test]
    fn intersect_sorted_ranges() {
        let a = [(0, 10), (20, 30), (40, 50)];
        let b = [(5, 25), (28, 45)];
        assert_eq!(
            intersect(&a, &b),
            vec![(5, 10), (20, 25), (28, 30), (40, 45)]
        );
        assert!(intersect(&a, &[]).is_empty());
    }

    fn parent_saving(saved: &[(u32, u64)], first_round: bool) -> Parent {
        Parent {
            link: None,
            covered: HashMap::new(),
            saved: saved.iter().copied().collect(),
            first_round,
            tracking: None,
            holder: None,
        }
    }

    #[test]
    fn reserve_sizes() {
        const MIB: u64 = 1 << 20;
        // A quarter and 1 MiB more, page-aligned; empty files left out.
        let p = parent_saving(&[(1, 8 * MIB), (2, 0), (3, 4097)], false);
        let mut got = p.reserve();
        got.sort_unstable();
        assert_eq!(got, vec![(1, 11 * MIB), (3, 4096 + MIB)]);
        // The largest first, up to the cap; what is left over goes to the next.
        let p = parent_saving(&[(1, 100 * MIB), (2, 300 * MIB)], false);
        assert_eq!(p.reserve(), vec![(2, RESERVE_MAX)]);
        let p = parent_saving(&[(1, 60 * MIB), (2, 160 * MIB)], false);
        assert_eq!(
            p.reserve(),
            vec![(2, 201 * MIB), (1, RESERVE_MAX - 201 * MIB)]
        );
        // After a first (full) round, the smaller cap.
        let p = parent_saving(&[(1, 4096 * MIB)], true);
        assert_eq!(p.reserve(), vec![(1, RESERVE_MAX_FIRST)]);
    }
}
