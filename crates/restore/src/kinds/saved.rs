//! Files whose contents are in the image (`SavedFile`): memfds and files
//! deleted while open or mapped. Each object is created before anything is
//! forked ([`create_all`]): a memfd with `memfd_create`, a deleted file
//! under its old path if free, else as `.stasis-deleted-PID-ID` in the same
//! directory, unlinked at once; then sized, filled from the page file of the
//! process that holds it, and given its mode. Each descriptor is a new open
//! of `/proc/self/fd/OBJ` ([`open`]); mappings go through the object itself
//! ([`map_sources`]). Seals come last ([`seal_all`]), once every process
//! has mapped the memfd.

use super::{Cx, Opened, ProcFiles, OPEN_FLAGS_DROP};
use crate::{At, RestoreError, Result, Stage};
use stasis_image::{ProcessImage, SavedFile, SavedFileKind, VmaKind};
use stasis_sys::util;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

const F_SEAL_SEAL: u32 = libc::F_SEAL_SEAL as u32;
const F_SEAL_WRITE_ANY: u32 = (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) as u32;

/// The saved objects the restorer created.
#[derive(Default)]
pub(crate) struct SavedObjects {
    /// saved file id -> (index of the object's O_RDWR descriptor, seals)
    by_id: HashMap<u64, (usize, u32)>,
    /// memfds to seal once every process has mapped them: (id, fd, seals).
    seal_later: Vec<(u64, OwnedFd, u32)>,
}

impl SavedObjects {
    /// Saved file id -> index (in the opened descriptors) of its object.
    pub(crate) fn indices(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.by_id.iter().map(|(&id, &(i, _))| (id, i))
    }

    /// The seals still to add, taken out so that every other descriptor
    /// can be closed once the tree is forked.
    pub(crate) fn take_seals(&mut self) -> Vec<(u64, OwnedFd, u32)> {
        std::mem::take(&mut self.seal_later)
    }
}

/// An error of a plain file operation on a saved object.
fn io(pid: u32, what: String) -> impl FnOnce(std::io::Error) -> RestoreError {
    move |source| RestoreError::Sys {
        pid,
        stage: Stage::Fork,
        source: stasis_sys::SysError {
            op: what,
            pid: None,
            source,
        },
    }
}

/// Creates every saved file of the image with its contents from the page
/// file of the process that holds it, before anything is forked.
pub(crate) fn create_all(o: &mut Opened, procs: &[ProcessImage], pages: &[PathBuf]) -> Result<()> {
    for (img, pg) in procs.iter().zip(pages) {
        for f in &img.saved_files {
            let (file, seals) = create_object(img.pid, f)?;
            fill(img.pid, f, &file, pg)?;
            let fd = OwnedFd::from(file);
            if seals & !F_SEAL_SEAL != 0 {
                let dup = fd
                    .try_clone()
                    .map_err(io(img.pid, format!("dup saved file {}", f.id)))?;
                o.saved.seal_later.push((f.id, dup, seals));
            }
            let i = o.push(fd);
            o.saved.by_id.insert(f.id, (i, seals));
        }
    }
    Ok(())
}

/// The empty object: a memfd (sealable unless it had only F_SEAL_SEAL), or
/// a deleted file recreated and unlinked at once. Returns it and its seals.
fn create_object(pid: u32, f: &SavedFile) -> Result<(std::fs::File, u32)> {
    use std::os::unix::fs::OpenOptionsExt;
    match &f.kind {
        SavedFileKind::Memfd { name, seals } => {
            let flags = if *seals == F_SEAL_SEAL {
                0
            } else {
                libc::MFD_ALLOW_SEALING
            };
            let fd = util::memfd_create(name, flags).at(pid, Stage::Fork)?;
            Ok((std::fs::File::from(fd), *seals))
        }
        SavedFileKind::Deleted { path } => {
            // Under its own name if free (the fd link then reads as
            // before), else a temporary one; unlinked at once.
            let p = Path::new(path);
            let dir = p.parent().unwrap_or(Path::new("/"));
            let mut opts = std::fs::OpenOptions::new();
            opts.read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
            let (file, at) = match opts.open(p) {
                Ok(file) => (file, p.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let at = dir.join(format!(".stasis-deleted-{pid}-{}", f.id));
                    let file = opts.open(&at).map_err(io(
                        pid,
                        format!("create {} for deleted file {path}", at.display()),
                    ))?;
                    (file, at)
                }
                Err(e) => return Err(io(pid, format!("recreate deleted file {path}"))(e)),
            };
            std::fs::remove_file(&at).map_err(io(pid, format!("unlink {}", at.display())))?;
            Ok((file, 0))
        }
    }
}

/// Size, contents (from the page file `pg`, through a 1 MiB buffer) and mode.
fn fill(pid: u32, f: &SavedFile, file: &std::fs::File, pg: &Path) -> Result<()> {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let what = format!("saved file {} ({:?})", f.id, f.kind);
    file.set_len(f.size)
        .map_err(io(pid, format!("ftruncate {what}")))?;
    let src = std::fs::File::open(pg).map_err(io(pid, format!("open {}", pg.display())))?;
    let mut buf = vec![0u8; (1 << 20).min(f.size as usize)];
    let mut done = 0u64;
    while done < f.size {
        let n = buf.len().min((f.size - done) as usize);
        src.read_exact_at(
            &mut buf[..n],
            stasis_image::PAGES_HEADER_LEN + f.offset + done,
        )
        .map_err(io(pid, format!("read {what} from {}", pg.display())))?;
        file.write_all_at(&buf[..n], done)
            .map_err(io(pid, format!("fill {what}")))?;
        done += n as u64;
    }
    file.set_permissions(std::fs::Permissions::from_mode(f.mode))
        .map_err(io(pid, format!("fchmod {what}")))
}

/// A descriptor of saved file `id`: a new open file description of the
/// object, with its flags, at its offset.
pub(super) fn open(o: &mut Opened, cx: &Cx<'_>, id: u64, flags: u32, pos: u64) -> Result<usize> {
    let (pid, st) = (cx.pid, Stage::Fork);
    let &(obj, _) = o
        .saved
        .by_id
        .get(&id)
        .ok_or_else(|| RestoreError::Refused {
            pid,
            stage: st,
            what: format!("fd {}: saved file {id} is not in the image", cx.fd),
        })?;
    let fd = util::open(&o.reopen_path(obj), flags as i32 & !OPEN_FLAGS_DROP).at(pid, st)?;
    if pos != 0 {
        util::seek_to(&fd, pos, &format!("fd {}", cx.fd)).at(pid, st)?;
    }
    Ok(o.push(fd))
}

/// Service descriptors for the mappings of saved files: the object itself,
/// or, for a shared read-only mapping of a write-sealed memfd (which the
/// kernel made unable to become writable), a read-only reopen.
pub(super) fn map_sources(img: &ProcessImage, o: &mut Opened, f: &mut ProcFiles) -> Result<()> {
    let mut saved: Vec<(u64, bool)> = img
        .mm
        .vmas
        .iter()
        .filter_map(|v| match v.kind {
            VmaKind::Saved { id } => Some((id, v.shared && v.prot & libc::PROT_WRITE as u32 == 0)),
            _ => None,
        })
        .collect();
    saved.sort_unstable();
    saved.dedup();
    for (id, ro_map) in saved {
        let &(obj, seals) = o
            .saved
            .by_id
            .get(&id)
            .ok_or_else(|| RestoreError::Refused {
                pid: img.pid,
                stage: Stage::Fork,
                what: format!("mapping of saved file {id}, which is not in the image"),
            })?;
        let ro = ro_map && seals & F_SEAL_WRITE_ANY != 0;
        let key = crate::memory::saved_key(id, ro);
        if f.files_k.contains_key(&key) {
            continue;
        }
        let k = if ro {
            let again = o.reopen_path(obj);
            f.service(img.pid, &again, libc::O_RDONLY, o)?
        } else {
            f.srcs.push(obj);
            f.srcs.len() - 1
        };
        f.files_k.insert(key, k);
    }
    Ok(())
}

/// Adds the saved seals to every memfd, after every process has mapped it
/// (a write seal forbids new writable shared mappings, and
/// F_SEAL_FUTURE_WRITE must come after the writable shared mappings it allows).
pub(crate) fn seal_all(pid: u32, seals: Vec<(u64, OwnedFd, u32)>) -> Result<()> {
    for (id, fd, s) in seals {
        util::add_seals(&fd, s).map_err(|source| RestoreError::Sys {
            pid,
            stage: Stage::Memory,
            source: stasis_sys::SysError {
                op: format!("saved file {id}: {}", source.op),
                ..source
            },
        })?;
    }
    Ok(())
}
