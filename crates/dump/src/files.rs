//! Open file descriptors.

use crate::{At, DumpError, Result, Stage};
use stasis_image::{FdEntry, FdKind, FileId};
use std::os::unix::fs::MetadataExt;

const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;

/// Is this a terminal device (pty slave, virtual console, /dev/tty, console)?
fn is_tty(rdev: u64) -> bool {
    let major = libc::major(rdev);
    matches!(major, 4 | 5 | 136..=143)
}

/// Records every open descriptor, refusing the kinds not supported yet.
pub(crate) fn collect_fds(pid: u32, shell_job: bool) -> Result<Vec<FdEntry>> {
    let st = Stage::Check;
    let mut out = Vec::new();
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
        if !link.starts_with('/') {
            // pipe:[..], socket:[..], anon_inode:[eventfd], ...
            return Err(unsupported(format!(
                "fd {fd} ({link}): this kind of file is not supported yet"
            )));
        }
        // stat through the /proc link: the very object the process has open.
        let md =
            std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(|source| DumpError::Io {
                pid,
                stage: st,
                what: format!("stat fd {fd} ({link})"),
                source,
            })?;
        let cloexec = info.flags & O_CLOEXEC != 0;
        let flags = info.flags & !O_CLOEXEC;
        let ft = md.file_type();
        let kind = if ft.is_file() || ft.is_dir() {
            if link.ends_with(" (deleted)") {
                return Err(unsupported(format!(
                    "fd {fd} ({link}): open deleted files are not supported yet"
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
