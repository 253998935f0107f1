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
        out.push(FdEntry { fd, cloexec, kind });
    }
    Ok(out)
}

use std::os::unix::fs::FileTypeExt;
