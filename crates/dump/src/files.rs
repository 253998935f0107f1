//! Open file descriptors.

use crate::{At, DumpError, Result, Stage};
use stasis_image::{EpollTarget, FdEntry, FdKind, FileId};
use std::os::unix::fs::MetadataExt;

const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const O_PATH: u32 = libc::O_PATH as u32;
const DELETED: &str = " (deleted)";

/// stat of fd `fd` through its /proc link.
fn stat(pid: u32, fd: i32, link: &str) -> Result<std::fs::Metadata> {
    std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(|source| DumpError::Io {
        pid,
        stage: Stage::Check,
        what: format!("stat fd {fd} ({link})"),
        source,
    })
}

/// Is this a terminal device (pty slave, virtual console, /dev/tty, console)?
fn is_tty(rdev: u64) -> bool {
    let major = libc::major(rdev);
    matches!(major, 4 | 5 | 136..=143)
}

/// Records every open descriptor, refusing the kinds not supported yet.
pub(crate) fn collect_fds(pid: u32, shell_job: bool) -> Result<Vec<FdEntry>> {
    let st = Stage::Check;
    let mut out = Vec::new();
    // AF_UNIX sockets of our network namespace, asked for once if needed.
    let mut unix: Option<std::collections::HashMap<u64, stasis_sys::sockdiag::UnixSocket>> = None;
    for fd in stasis_proc::list_fds(pid).at(pid, st)? {
        let link = stasis_proc::read_link(pid, &format!("fd/{fd}")).at(pid, st)?;
        let info = stasis_proc::read_fdinfo(pid, fd).at(pid, st)?;
        let unsupported = |what: String| DumpError::Unsupported {
            pid,
            stage: st,
            what,
        };
        if let Some(ino) = link
            .strip_prefix("pipe:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
        {
            let write_end = info.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            let kind = FdKind::Pipe {
                id: ino,
                write_end,
                flags: info.flags & !O_CLOEXEC,
                data: Vec::new(),
                capacity: 0,
            };
            out.push(FdEntry {
                fd,
                cloexec: info.flags & O_CLOEXEC != 0,
                kind,
                ofd: 0,
            });
            continue;
        }
        if link == "anon_inode:[eventfd]" {
            let count = info
                .get("eventfd-count")
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
            let Some(count) = count else {
                return Err(unsupported(format!(
                    "fd {fd} ({link}): no eventfd-count in fdinfo"
                )));
            };
            out.push(FdEntry {
                fd,
                cloexec: info.flags & O_CLOEXEC != 0,
                kind: FdKind::EventFd {
                    count,
                    semaphore: info.get("eventfd-semaphore").map(str::trim) == Some("1"),
                    flags: info.flags & !O_CLOEXEC,
                },
                ofd: 0,
            });
            continue;
        }
        if link == "anon_inode:[timerfd]" || link == "anon_inode:[signalfd]" {
            let bad = || unsupported(format!("fd {fd} ({link}): unexpected fdinfo"));
            let kind = if link == "anon_inode:[timerfd]" {
                // "it_value: (S, NS)" and "it_interval: (S, NS)": time left and interval.
                let pair = |key: &str| -> Option<u64> {
                    let v = info
                        .get(key)?
                        .trim()
                        .trim_start_matches('(')
                        .trim_end_matches(')')
                        .to_string();
                    let (s, ns) = v.split_once(',')?;
                    Some(
                        s.trim().parse::<u64>().ok()? * 1_000_000_000
                            + ns.trim().parse::<u64>().ok()?,
                    )
                };
                FdKind::TimerFd {
                    clock_id: info
                        .get("clockid")
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(bad)?,
                    flags: info.flags & !O_CLOEXEC,
                    value_ns: pair("it_value").ok_or_else(bad)?,
                    interval_ns: pair("it_interval").ok_or_else(bad)?,
                    ticks: info
                        .get("ticks")
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0),
                }
            } else {
                FdKind::SignalFd {
                    mask: info
                        .get("sigmask")
                        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                        .ok_or_else(bad)?,
                    flags: info.flags & !O_CLOEXEC,
                }
            };
            out.push(FdEntry {
                fd,
                cloexec: info.flags & O_CLOEXEC != 0,
                kind,
                ofd: 0,
            });
            continue;
        }
        if link == "anon_inode:[eventpoll]" {
            let mut targets = Vec::new();
            for (k, v) in info.extra.iter().filter(|(k, _)| k == "tfd") {
                let t = parse_tfd(v)
                    .ok_or_else(|| unsupported(format!("fd {fd} ({link}): fdinfo line {k}:{v}")))?;
                // The registration names the watched file by descriptor
                // number: it must still be that very file.
                let same = std::fs::metadata(format!("/proc/{pid}/fd/{}", t.0))
                    .map(|m| m.ino() == t.3)
                    .unwrap_or(false);
                if !same {
                    return Err(unsupported(format!(
                        "fd {fd} ({link}): it watches a file no longer open as fd {} (not supported yet)",
                        t.0
                    )));
                }
                targets.push(EpollTarget {
                    fd: t.0,
                    events: t.1,
                    data: t.2,
                });
            }
            out.push(FdEntry {
                fd,
                cloexec: info.flags & O_CLOEXEC != 0,
                kind: FdKind::Epoll {
                    flags: info.flags & !O_CLOEXEC,
                    targets,
                },
                ofd: 0,
            });
            continue;
        }
        if let Some(ino) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            let socks = match &unix {
                Some(u) => u,
                None => unix.insert(stasis_sys::sockdiag::unix_sockets().at(pid, st)?),
            };
            let what =
                |why: &str| unsupported(format!("fd {fd} ({link}): {why} (not supported yet)"));
            let Some(s) = socks.get(&ino) else {
                return Err(what("a socket other than AF_UNIX"));
            };
            if s.name.is_some() {
                return Err(what("a bound (named) unix socket"));
            }
            if s.state != 1 {
                return Err(what(
                    "a unix socket that is not connected (listening or unconnected)",
                ));
            }
            if s.rqueue != 0 {
                return Err(what("a unix socket with unread data queued"));
            }
            out.push(FdEntry {
                fd,
                cloexec: info.flags & O_CLOEXEC != 0,
                kind: FdKind::UnixSocket {
                    id: ino,
                    peer: s.peer,
                    sock_type: u32::from(s.sock_type),
                    flags: info.flags & !O_CLOEXEC,
                },
                ofd: 0,
            });
            continue;
        }
        let cloexec = info.flags & O_CLOEXEC != 0;
        let flags = info.flags & !O_CLOEXEC;
        let deleted = link.ends_with(DELETED);
        if flags & O_PATH != 0 {
            // An O_PATH descriptor: a reference to a name, nothing opened.
            if !link.starts_with('/') || deleted {
                return Err(unsupported(format!(
                    "fd {fd} ({link}): O_PATH descriptor of an unnamed or deleted object"
                )));
            }
            let md = stat(pid, fd, &link)?;
            out.push(FdEntry {
                fd,
                cloexec,
                kind: FdKind::Path {
                    path: link.clone(),
                    flags,
                    mode: md.mode(),
                },
                ofd: 0,
            });
            continue;
        }
        if let Some(why) = crate::memkinds::refuse_fd(&link) {
            return Err(unsupported(format!("fd {fd} ({link}): {why}")));
        }
        if !link.starts_with('/') {
            // socket:[..], anon_inode:[eventfd], ...
            return Err(unsupported(format!(
                "fd {fd} ({link}): this kind of file is not supported yet"
            )));
        }
        // stat through the /proc link: the very object the process has open.
        let md = stat(pid, fd, &link)?;
        let ft = md.file_type();
        let kind = if ft.is_file() && deleted {
            // A memfd or a file deleted while open: its contents go into
            // the image (`link_objects` identifies and sizes it).
            FdKind::Saved {
                id: 0,
                flags,
                pos: info.pos,
            }
        } else if ft.is_fifo() && !deleted {
            FdKind::Fifo {
                path: link.clone(),
                id: md.ino(),
                flags,
                data: Vec::new(),
                capacity: 0,
            }
        } else if ft.is_file() || ft.is_dir() {
            if deleted {
                return Err(unsupported(format!(
                    "fd {fd} ({link}): open deleted directories are not supported"
                )));
            }
            FdKind::Regular {
                file: FileId {
                    path: link.clone(),
                    size: md.size(),
                    mtime_sec: md.mtime(),
                    mtime_nsec: md.mtime_nsec(),
                    dev: md.dev(),
                    ino: md.ino(),
                    mode: md.mode(),
                },
                flags,
                pos: info.pos,
            }
        } else if ft.is_char_device() {
            if is_tty(md.rdev()) && !shell_job {
                return Err(unsupported(format!(
                    "fd {fd} ({link}): a terminal; use --shell-job (-j) to dump a process attached to one"
                )));
            }
            FdKind::CharDevice {
                path: link.clone(),
                rdev: md.rdev(),
                flags,
            }
        } else {
            return Err(unsupported(format!(
                "fd {fd} ({link}): file type not supported yet"
            )));
        };
        out.push(FdEntry {
            fd,
            cloexec,
            kind,
            ofd: 0,
        });
    }
    Ok(out)
}

use std::os::unix::fs::FileTypeExt;

/// Identity key for finding shared open file descriptions.
fn key(k: &FdKind) -> (u8, u64, u64) {
    match k {
        FdKind::Regular { file, .. } => (0, file.dev, file.ino),
        FdKind::CharDevice { rdev, .. } => (1, *rdev, 0),
        FdKind::Pipe { id, write_end, .. } => (2, *id, u64::from(*write_end)),
        // Identified later (by kcmp within the bucket).
        FdKind::Saved { .. } => (3, 0, 0),
        FdKind::Path { .. } => (4, 0, 0),
        FdKind::Fifo { id, .. } => (5, *id, 0),
        FdKind::UnixSocket { id, .. } => (6, *id, 0),
        FdKind::EventFd { .. } => (7, 0, 0),
        FdKind::TimerFd { .. } => (9, 0, 0),
        FdKind::SignalFd { .. } => (10, 0, 0),
        FdKind::Epoll { .. } => (8, 0, 0),
    }
}

/// Links the descriptors of all processes of the tree: entries sharing an
/// open file description (kcmp) get the same `ofd` id; every pipe must
/// have both ends in the tree, and its waiting bytes are saved (tee, not
/// consumed) with its first entry.
pub(crate) fn link_shared(procs: &mut [(u32, &mut Vec<FdEntry>)]) -> Result<()> {
    use std::collections::HashMap;
    // Per identity key: the (pid, fd, ofd id) of each distinct description seen.
    type Seen = Vec<(u32, i32, u64)>;
    let mut reps: HashMap<(u8, u64, u64), Seen> = HashMap::new();
    let mut next = 1u64;
    for (pid, fds) in procs.iter_mut() {
        for e in fds.iter_mut() {
            let cands = reps.entry(key(&e.kind)).or_default();
            let mut found = None;
            for &(p2, fd2, id) in cands.iter() {
                if util::same_file(Pid(*pid as i32), e.fd, Pid(p2 as i32), fd2)
                    .at(*pid, Stage::Collect)?
                {
                    found = Some(id);
                    break;
                }
            }
            e.ofd = match found {
                Some(id) => id,
                None => {
                    let id = next;
                    next += 1;
                    cands.push((*pid, e.fd, id));
                    id
                }
            };
        }
    }
    // Unix socket pairs: the other end is in the tree, or was closed.
    let socks: std::collections::HashSet<u64> = procs
        .iter()
        .flat_map(|(_, fds)| fds.iter())
        .filter_map(|e| match e.kind {
            FdKind::UnixSocket { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    for (pid, fds) in procs.iter() {
        for e in fds.iter() {
            if let FdKind::UnixSocket { id, peer, .. } = e.kind {
                if peer != 0 && !socks.contains(&peer) {
                    return Err(DumpError::Unsupported {
                        pid: *pid,
                        stage: Stage::Check,
                        what: format!(
                            "fd {} (socket:[{id}]): the other end of this unix socket is outside the dumped tree",
                            e.fd
                        ),
                    });
                }
            }
        }
    }
    // Pipes: both ends present, contents saved once.
    let mut ends: HashMap<u64, (Option<(u32, i32)>, bool)> = HashMap::new();
    for (pid, fds) in procs.iter() {
        for e in fds.iter() {
            if let FdKind::Pipe { id, write_end, .. } = e.kind {
                let slot = ends.entry(id).or_default();
                if write_end {
                    slot.1 = true;
                } else if slot.0.is_none() {
                    slot.0 = Some((*pid, e.fd));
                }
            }
        }
    }
    let mut saved = std::collections::HashSet::new();
    for (pid, fds) in procs.iter_mut() {
        for e in fds.iter_mut() {
            let FdKind::Pipe {
                id, data, capacity, ..
            } = &mut e.kind
            else {
                continue;
            };
            let (reader, writer) = ends.get(id).copied().unwrap_or_default();
            let Some((rpid, rfd)) = reader.filter(|_| writer) else {
                return Err(DumpError::Unsupported {
                    pid: *pid,
                    stage: Stage::Check,
                    what: format!(
                        "fd {} (pipe:[{id}]): the other end of this pipe is outside the dumped tree",
                        e.fd
                    ),
                });
            };
            if !saved.insert(*id) {
                continue;
            }
            let pidfd = util::pidfd_open(Pid(rpid as i32)).at(rpid, Stage::Collect)?;
            let dup = util::pidfd_getfd(&pidfd, Pid(rpid as i32), rfd).at(rpid, Stage::Collect)?;
            *capacity = util::pipe_capacity(&dup).at(rpid, Stage::Collect)?;
            *data = util::pipe_peek(&dup).at(rpid, Stage::Collect)?;
        }
    }
    Ok(())
}

use stasis_sys::{util, Pid};

/// Where the dumper can open saved-file object `id` of process `img`: a
/// descriptor or a mapping of it, through /proc.
fn saved_source(img: &ProcessImage, pid: u32, id: u64) -> Option<String> {
    img.files
        .iter()
        .find_map(|e| match e.kind {
            FdKind::Saved { id: i, .. } if i == id => Some(format!("/proc/{pid}/fd/{}", e.fd)),
            _ => None,
        })
        .or_else(|| {
            img.mm.vmas.iter().find_map(|v| match v.kind {
                VmaKind::Saved { id: i } if i == id => {
                    Some(format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end))
                }
                _ => None,
            })
        })
}

/// Identifies, across the tree, the objects whose contents go into the
/// image (memfds, files deleted while open or mapped: `Saved` fds and
/// VMAs, found by collection with id 0) by device and inode, gives each an
/// id and records it once, in the first process that has it; and saves
/// the bytes waiting in every FIFO (with its first entry).
pub(crate) fn link_objects(images: &mut [&mut ProcessImage], ghost_limit: u64) -> Result<()> {
    use std::collections::HashMap;
    let mut ids: HashMap<(u64, u64), u64> = HashMap::new();
    let mut fifos = std::collections::HashSet::new();
    for img in images.iter_mut() {
        let pid = img.pid;
        let st = Stage::Collect;
        let mut srcs: Vec<(String, usize, bool)> = Vec::new();
        for (i, e) in img.files.iter().enumerate() {
            if let FdKind::Saved { .. } = e.kind {
                srcs.push((format!("/proc/{pid}/fd/{}", e.fd), i, true));
            }
        }
        for (i, v) in img.mm.vmas.iter().enumerate() {
            if let VmaKind::Saved { .. } = v.kind {
                let src = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
                srcs.push((src, i, false));
            }
        }
        for (src, i, is_fd) in srcs {
            let io = |what: String| {
                move |source| DumpError::Io {
                    pid,
                    stage: st,
                    what,
                    source,
                }
            };
            let link = std::fs::read_link(&src)
                .map_err(io(format!("readlink {src}")))?
                .to_string_lossy()
                .into_owned();
            let md = std::fs::metadata(&src).map_err(io(format!("stat {src} ({link})")))?;
            let next = ids.len() as u64 + 1;
            let id = *ids.entry((md.dev(), md.ino())).or_insert(next);
            if id == next {
                let what = if is_fd {
                    format!("fd {} ({link})", img.files[i].fd)
                } else {
                    let v = &img.mm.vmas[i];
                    format!("mapping {:#x}-{:#x} ({link})", v.start, v.end)
                };
                if md.size() > ghost_limit.min(MAX_SAVED_FILE) {
                    return Err(DumpError::Unsupported {
                        pid,
                        stage: Stage::Check,
                        what: format!(
                            "{what}: {} bytes, above the ghost limit of {} bytes for a memfd or deleted file (raise it with --ghost-limit SIZE)",
                            md.size(),
                            ghost_limit.min(MAX_SAVED_FILE)
                        ),
                    });
                }
                let name = link.strip_suffix(DELETED).unwrap_or(&link);
                let file = std::fs::File::open(&src).map_err(io(format!("open {what}")))?;
                let seals = name
                    .strip_prefix("/memfd:")
                    .and_then(|n| Some((n, util::get_seals(file.as_fd()).ok()?)));
                let kind = match seals {
                    Some((n, seals)) => SavedFileKind::Memfd {
                        name: n.to_string(),
                        seals,
                    },
                    None => SavedFileKind::Deleted {
                        path: name.to_string(),
                    },
                };
                log::debug!(
                    "pid {pid}: {what}: saved file {id} ({kind:?}, {} bytes)",
                    md.size()
                );
                img.saved_files.push(SavedFile {
                    id,
                    kind,
                    size: md.size(),
                    offset: 0,
                    mode: md.mode() & 0o7777,
                    dev: md.dev(),
                    ino: md.ino(),
                });
            }
            if is_fd {
                if let FdKind::Saved { id: slot, .. } = &mut img.files[i].kind {
                    *slot = id;
                }
            } else {
                img.mm.vmas[i].kind = VmaKind::Saved { id };
            }
        }
        // FIFOs: the waiting bytes, read without consuming them through a
        // reader of our own (non-blocking: it never waits for a writer).
        for e in img.files.iter_mut() {
            let FdKind::Fifo {
                id, data, capacity, ..
            } = &mut e.kind
            else {
                continue;
            };
            if !fifos.insert(*id) {
                continue;
            }
            let src = format!("/proc/{pid}/fd/{}", e.fd);
            let r = util::open(&src, libc::O_RDONLY | libc::O_NONBLOCK).at(pid, st)?;
            *capacity = util::pipe_capacity(&r).at(pid, st)?;
            *data = util::pipe_peek(&r).at(pid, st)?;
        }
    }
    Ok(())
}

/// Appends the contents of the saved files recorded in `img` to its page
/// file, each at a page-aligned offset, padded to whole pages.
/// `host_pid` is the process's PID in our namespace (for /proc).
pub(crate) fn write_saved(
    img: &mut ProcessImage,
    host_pid: u32,
    pages: &mut PagesWriter,
) -> Result<()> {
    use std::io::Read;
    let pid = host_pid;
    let st = Stage::Memory;
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    for k in 0..img.saved_files.len() {
        let (id, size) = (img.saved_files[k].id, img.saved_files[k].size);
        let src = saved_source(img, pid, id).ok_or_else(|| DumpError::Unsupported {
            pid,
            stage: st,
            what: format!("saved file {id}: no descriptor or mapping of it"),
        })?;
        let io = |what: &str| {
            let what = format!("{what} {src} (saved file {id})");
            move |source| DumpError::Io {
                pid,
                stage: st,
                what,
                source,
            }
        };
        let mut f = std::fs::File::open(&src).map_err(io("open"))?;
        img.saved_files[k].offset = pages.offset();
        let mut left = size;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            f.read_exact(&mut buf[..want]).map_err(io("read"))?;
            let padded = want.next_multiple_of(PAGE_SIZE as usize);
            buf[want..padded].fill(0);
            pages.write_all(&buf[..padded]).at(pid, st)?;
            left -= want as u64;
        }
    }
    Ok(())
}

use stasis_image::{
    PagesWriter, ProcessImage, SavedFile, SavedFileKind, VmaKind, MAX_SAVED_FILE, PAGE_SIZE,
};
use std::os::fd::AsFd;

/// One `tfd:` line of an epoll's fdinfo: (fd, events, data, inode).
/// The kernel prints `tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x`.
fn parse_tfd(v: &str) -> Option<(i32, u32, u64, u64)> {
    let mut it = v.split_whitespace();
    let fd = it.next()?.parse().ok()?;
    let (mut events, mut data, mut ino) = (None, None, None);
    while let Some(tok) = it.next() {
        match tok {
            "events:" => events = u32::from_str_radix(it.next()?, 16).ok(),
            "data:" => data = u64::from_str_radix(it.next()?, 16).ok(),
            t if t.starts_with("ino:") => ino = u64::from_str_radix(&t[4..], 16).ok(),
            _ => {}
        }
    }
    Some((fd, events?, data?, ino?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_tfd_lines() {
        assert_eq!(
            super::parse_tfd(
                "       5 events: 80000019 data:                5  pos:0 ino:11289f sdev:f"
            ),
            Some((5, 0x8000_0019, 5, 0x11289f))
        );
        assert_eq!(super::parse_tfd("garbage"), None);
    }
}
