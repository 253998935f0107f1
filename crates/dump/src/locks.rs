//! File locks and leases: POSIX (fcntl F_SETLK), flock, OFD
//! (F_OFD_SETLK) locks and leases (F_SETLEASE), read from the fdinfo
//! `lock:` lines of the descriptor each was taken through.
//!
//! Like criu, a process holding any is refused unless the caller passes
//! `--file-locks`; with it, each lock is recorded once with the process
//! and descriptor that re-take it at restore: a POSIX lock with the
//! process that owns it, a flock, OFD lock or lease once per open file
//! description (with the process that took it, when it has the
//! description). Between the dump's kill and the restore nobody holds the
//! locks: the caller must not run contenders in between.

use crate::collect::Collected;
use crate::{At, DumpError, Result, Stage};
use stasis_image::{FileLock, LockKind};
use stasis_sys::Pid;
use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;

/// One `lock:` line of fdinfo (or a line of /proc/locks):
/// `1: POSIX  ADVISORY  WRITE 20993 fe:00:10010659 5 14`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockLine {
    /// POSIX, FLOCK, OFDLCK, LEASE, DELEG, ...
    pub kind: String,
    /// ADVISORY, MANDATORY, ACTIVE, BREAKING, BREAKER.
    pub mode: String,
    /// READ, WRITE, UNLCK (RW / R / W for old mandatory kinds).
    pub access: String,
    pub pid: i64,
    /// (major, minor, inode) as printed.
    pub dev_ino: (u32, u32, u64),
    pub start: u64,
    /// None: to end of file.
    pub end: Option<u64>,
    /// A blocked request (`->` in /proc/locks).
    pub waiter: bool,
}

pub(crate) fn parse_lock_line(v: &str) -> Option<LockLine> {
    let mut it = v.split_whitespace();
    let id = it.next()?;
    if !id.ends_with(':') {
        return None;
    }
    let mut kind = it.next()?;
    let waiter = kind == "->";
    if waiter {
        kind = it.next()?;
    }
    let mode = it.next()?;
    let access = it.next()?;
    let pid = it.next()?.parse().ok()?;
    let mut di = it.next()?.split(':');
    let major = u32::from_str_radix(di.next()?, 16).ok()?;
    let minor = u32::from_str_radix(di.next()?, 16).ok()?;
    let ino = di.next()?.parse().ok()?;
    let start = it.next()?.parse().ok()?;
    let end = match it.next()? {
        "EOF" => None,
        e => Some(e.parse().ok()?),
    };
    Some(LockLine {
        kind: kind.to_string(),
        mode: mode.to_string(),
        access: access.to_string(),
        pid,
        dev_ino: (major, minor, ino),
        start,
        end,
        waiter,
    })
}

fn kind_name(k: LockKind) -> &'static str {
    match k {
        LockKind::Posix => "POSIX lock",
        LockKind::Flock => "flock",
        LockKind::Ofd => "OFD lock",
        LockKind::Lease => "lease",
    }
}

/// A lock found on a descriptor, before deduplication.
struct Found {
    proc_k: usize,
    fd: i32,
    ofd: u64,
    line: LockLine,
    lock: FileLock,
}

/// Records (with `file_locks`) or refuses every lock and lease held by
/// the processes of the tree, and refuses a thread blocked waiting for a
/// lock. Runs after `link_shared` (it needs the `ofd` ids).
pub(crate) fn collect(procs: &mut [Collected], file_locks: bool) -> Result<()> {
    let t0 = std::time::Instant::now();
    refuse_waiters(procs)?;
    let locked = locked_inodes(procs)?;
    let mut found = Vec::new();
    for (k, c) in procs.iter().enumerate() {
        let pid = c.host_pid;
        for e in &c.image.files {
            if e.kind_is_path()
                || locked
                    .as_ref()
                    .zip(known_ino(&e.kind))
                    .is_some_and(|(set, i)| !set.contains(&i))
            {
                continue;
            }
            let info = stasis_proc::read_fdinfo(pid, e.fd).at(pid, Stage::Collect)?;
            for (_, v) in info.extra.iter().filter(|(k, _)| k == "lock") {
                found.push(lock_line(k, pid, e, v, file_locks)?);
            }
        }
    }
    log::debug!("file locks: {} found in {:?}", found.len(), t0.elapsed());
    choose(procs, &found);
    Ok(())
}

/// The inodes /proc/locks lists, read only for trees with many
/// descriptors (None: read every descriptor's fdinfo).
///
/// Each descriptor's fdinfo costs ~10 µs; reading /proc/locks takes the
/// kernel's file_rwsem for writing (an RCU grace period: 5-15 ms measured
/// here, and it stalls every lock operation on the machine). So: fdinfo
/// of every descriptor for small trees; for big ones /proc/locks first,
/// and fdinfo only of descriptors of a locked inode (a lock of the frozen
/// tree cannot come or go meanwhile).
fn locked_inodes(procs: &[Collected]) -> Result<Option<HashSet<u64>>> {
    let fds: usize = procs.iter().map(|c| c.image.files.len()).sum();
    Ok(if fds > PROC_LOCKS_ABOVE {
        let text = std::fs::read_to_string("/proc/locks").map_err(|source| DumpError::Io {
            pid: procs.first().map_or(0, |c| c.host_pid),
            stage: Stage::Collect,
            what: "read /proc/locks".into(),
            source,
        })?;
        Some(
            text.lines()
                .filter_map(parse_lock_line)
                .map(|l| l.dev_ino.2)
                .collect(),
        )
    } else {
        None
    })
}

/// One fdinfo `lock:` line of descriptor `e` of process `pid` (the `k`th
/// of the tree), checked and turned into the lock to take again.
fn lock_line(
    k: usize,
    pid: u32,
    e: &stasis_image::FdEntry,
    v: &str,
    file_locks: bool,
) -> Result<Found> {
    let what = |why: String| DumpError::Unsupported {
        pid,
        stage: Stage::Check,
        what: format!("fd {} ({}): {why}", e.fd, fd_path(pid, e.fd)),
    };
    let line =
        parse_lock_line(v).ok_or_else(|| what(format!("unexpected fdinfo lock line {v:?}")))?;
    let kind = match line.kind.as_str() {
        "POSIX" => LockKind::Posix,
        "FLOCK" => LockKind::Flock,
        "OFDLCK" => LockKind::Ofd,
        "LEASE" => LockKind::Lease,
        other => return Err(what(format!("a {other} lock (not supported)"))),
    };
    if !file_locks {
        return Err(DumpError::Unsupported {
            pid,
            stage: Stage::Check,
            what: format!(
                "fd {}: it holds a {} on {}; pass --file-locks",
                e.fd,
                kind_name(kind),
                fd_path(pid, e.fd)
            ),
        });
    }
    let write = match line.access.as_str() {
        "WRITE" => true,
        "READ" => false,
        a => return Err(what(format!("a {} in state {a}", kind_name(kind)))),
    };
    match (kind, line.mode.as_str()) {
        (LockKind::Lease, "ACTIVE") | (_, "ADVISORY") => {}
        (_, m) => {
            return Err(what(format!(
                "a {} in state {m} (being broken or mandatory; not supported)",
                kind_name(kind)
            )))
        }
    }
    if kind == LockKind::Posix && line.pid != i64::from(pid) {
        return Err(what(format!(
            "a POSIX lock owned by process {} sharing its descriptor table (not supported)",
            line.pid
        )));
    }
    if kind == LockKind::Lease {
        // fdinfo and F_GETLEASE on the description must agree.
        let pidfd = stasis_sys::util::pidfd_open(Pid(pid as i32)).at(pid, Stage::Collect)?;
        let dup =
            stasis_sys::util::pidfd_getfd(&pidfd, Pid(pid as i32), e.fd).at(pid, Stage::Collect)?;
        let got = stasis_sys::fdowner::get_lease(dup.as_fd()).at(pid, Stage::Collect)?;
        let want = if write { libc::F_WRLCK } else { libc::F_RDLCK };
        if got != want {
            return Err(what(format!(
                "a lease that F_GETLEASE reports as {got}, fdinfo as {} (changing; not supported)",
                line.access
            )));
        }
    }
    let (start, len) = match (kind, line.end) {
        (LockKind::Posix | LockKind::Ofd, Some(end)) => {
            (line.start, end.saturating_sub(line.start) + 1)
        }
        (LockKind::Posix | LockKind::Ofd, None) => (line.start, 0),
        _ => (0, 0),
    };
    Ok(Found {
        proc_k: k,
        fd: e.fd,
        ofd: e.ofd,
        line,
        lock: FileLock {
            fd: e.fd,
            kind,
            write,
            start,
            len,
        },
    })
}

/// Keeps each lock once and records it in its process's image.
fn choose(procs: &mut [Collected], found: &[Found]) {
    // POSIX: once per (process, lock); the others once per open file
    // description, preferring the process that took it (/proc/locks then
    // shows the same PID after restore).
    let host: Vec<u32> = procs.iter().map(|c| c.host_pid).collect();
    type Key = (bool, u64, u64, LockKind, bool, u64, u64);
    let mut chosen: HashMap<Key, usize> = HashMap::new();
    for (i, f) in found.iter().enumerate() {
        let l = &f.lock;
        let key = if l.kind == LockKind::Posix {
            (
                true,
                f.proc_k as u64,
                f.line.dev_ino.2,
                l.kind,
                l.write,
                l.start,
                l.len,
            )
        } else {
            (false, f.ofd, 0, l.kind, l.write, l.start, l.len)
        };
        match chosen.get(&key) {
            Some(&j) => {
                let j_taker = i64::from(host[found[j].proc_k]) == found[j].line.pid;
                let i_taker = i64::from(host[f.proc_k]) == f.line.pid;
                if i_taker && !j_taker {
                    chosen.insert(key, i);
                }
            }
            None => {
                chosen.insert(key, i);
            }
        }
    }
    let mut picks: Vec<usize> = chosen.into_values().collect();
    picks.sort_unstable();
    for i in picks {
        let f = &found[i];
        log::debug!(
            "pid {}: fd {}: {:?} {} {}+{}",
            host[f.proc_k],
            f.fd,
            f.lock.kind,
            if f.lock.write { "write" } else { "read" },
            f.lock.start,
            f.lock.len
        );
        procs[f.proc_k].image.file_locks.push(f.lock.clone());
    }
}

/// Descriptors in the tree above which /proc/locks is read first.
const PROC_LOCKS_ABOVE: usize = 512;

/// `fcntl` commands that wait for a lock, and flock without LOCK_NB.
const F_SETLKW: u64 = 7;
const F_OFD_SETLKW: u64 = 38;

/// A thread stopped inside a blocking lock request (rax = -ERESTART*,
/// orig_rax = fcntl(F_SETLKW / F_OFD_SETLKW) or flock without LOCK_NB):
/// refused by name, the queue of waiters is not restored.
fn refuse_waiters(procs: &[Collected]) -> Result<()> {
    for c in procs {
        for t in &c.image.threads {
            let r = &t.regs;
            let rax = r.rax as i64;
            if !(-516..=-512).contains(&rax) {
                continue;
            }
            let nr = r.orig_rax as i64;
            let what = if nr == libc::SYS_fcntl && matches!(r.rsi, F_SETLKW | F_OFD_SETLKW) {
                let cmd = if r.rsi == F_SETLKW {
                    "F_SETLKW"
                } else {
                    "F_OFD_SETLKW"
                };
                format!("fcntl({cmd})")
            } else if nr == libc::SYS_flock && r.rsi & libc::LOCK_NB as u64 == 0 {
                "flock".to_string()
            } else {
                continue;
            };
            return Err(DumpError::Unsupported {
                pid: c.host_pid,
                stage: Stage::Check,
                what: format!(
                    "thread {}, blocked waiting for a file lock ({what} on fd {}, {}; not supported)",
                    t.tid,
                    r.rdi as i32,
                    fd_path(c.host_pid, r.rdi as i32)
                ),
            });
        }
    }
    Ok(())
}

/// The inode of a descriptor's file, where the image records it.
fn known_ino(k: &stasis_image::FdKind) -> Option<u64> {
    use stasis_image::FdKind;
    match k {
        FdKind::Regular { file, .. } => Some(file.ino),
        FdKind::Pipe { id, .. } | FdKind::Fifo { id, .. } | FdKind::UnixSocket { id, .. } => {
            Some(*id)
        }
        _ => None,
    }
}

/// The path of a descriptor, for messages.
fn fd_path(pid: u32, fd: i32) -> String {
    stasis_proc::read_link(pid, &format!("fd/{fd}")).unwrap_or_else(|_| "?".into())
}

trait PathKind {
    fn kind_is_path(&self) -> bool;
}

impl PathKind for stasis_image::FdEntry {
    /// O_PATH descriptors hold no locks (and fcntl on them is refused).
    fn kind_is_path(&self) -> bool {
        matches!(self.kind, stasis_image::FdKind::Path { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let l = parse_lock_line("1: POSIX  ADVISORY  WRITE 20993 fe:00:10010659 5 14").unwrap();
        assert_eq!(
            (l.kind.as_str(), l.access.as_str(), l.pid, l.start, l.end),
            ("POSIX", "WRITE", 20993, 5, Some(14))
        );
        assert_eq!(l.dev_ino, (0xfe, 0, 10010659));
        let l = parse_lock_line("2: OFDLCK ADVISORY  READ -1 08:01:77 0 EOF").unwrap();
        assert_eq!((l.pid, l.end, l.waiter), (-1, None, false));
        let l = parse_lock_line("5: -> POSIX  ADVISORY  WRITE 21034 fe:00:10010659 12 14").unwrap();
        assert!(l.waiter);
        let l = parse_lock_line("1: LEASE  ACTIVE    READ 20993 fe:00:10010705 0 EOF").unwrap();
        assert_eq!((l.kind.as_str(), l.mode.as_str()), ("LEASE", "ACTIVE"));
        assert_eq!(parse_lock_line("garbage"), None);
        assert_eq!(
            parse_lock_line("1: POSIX ADVISORY WRITE x fe:00:1 0 EOF"),
            None
        );
    }
}
