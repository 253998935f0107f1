//! Files whose contents are in the image (`SavedFile`): memfds, files
//! deleted while open or mapped, and directories deleted while open or as
//! the working directory. Each object is created before anything is
//! forked ([`create_all`]): a memfd with `memfd_create`, a deleted file
//! under its old path if free, else as `.stasis-deleted-PID-ID` in the same
//! directory, unlinked at once (a deleted directory likewise with `mkdir`,
//! opened and removed); then sized and filled extent by extent from the
//! page file of the process that holds it (holes stay holes), and given its
//! owner, mode and times, in that order (fchown clears set-id bits, and
//! every write or fchmod moves the times; the change time cannot be set by
//! any call: it is the time of the restore). Each descriptor is a new open
//! of `/proc/self/fd/OBJ` ([`open`]), except the description an O_TMPFILE
//! file was made with (its flags show O_TMPFILE), made again by that very
//! call ([`create_tmpfile`]); mappings go through the object itself
//! ([`map_sources`]); a deleted working directory is entered by the process
//! through a service descriptor of it ([`cwd_source`], [`fchdir`]). Seals
//! come last ([`seal_all`]), once every process has mapped the memfd, and
//! the times once more ([`times_again`]), since mapping a file moves its
//! access time.

use super::{Cx, Opened, ProcFiles, OPEN_FLAGS_DROP};
use crate::memory::ServiceFds;
use crate::{At, RestoreError, Result, Stage};
use stasis_image::{FdKind, ProcessImage, SavedFile, SavedFileKind, VmaKind, PAGE_SIZE};
use stasis_sys::remote::RemoteThread;
use stasis_sys::util;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
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
    /// Saved files whose times are set again at the end.
    times_later: TimesLater,
    /// O_TMPFILE file id -> index of the description its open(O_TMPFILE)
    /// made (F_GETFL shows O_TMPFILE), for the descriptors that had it.
    tmpfile_desc: HashMap<u64, usize>,
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

    /// The files whose times are set again at the end ([`times_again`]),
    /// taken out like the seals.
    pub(crate) fn take_times(&mut self) -> TimesLater {
        std::mem::take(&mut self.times_later)
    }
}

/// Saved files whose times are set again once every process is rebuilt:
/// mapping a file (the restorer's remote mmap) moves its access time.
pub(crate) type TimesLater = Vec<(std::fs::File, SavedFile)>;

/// Key in the service descriptors of a deleted working directory.
pub(crate) const CWD_KEY: &str = "cwd-saved";

/// An error of a plain file operation on a saved object.
pub(super) fn io(pid: u32, what: String) -> impl FnOnce(std::io::Error) -> RestoreError {
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
            let (file, seals) = match &f.kind {
                SavedFileKind::Tmpfile { dir } => {
                    let (file, desc) = create_tmpfile(img.pid, dir, tmpfile_flags(procs, f.id))?;
                    if let Some(d) = desc {
                        let i = o.push(d);
                        o.saved.tmpfile_desc.insert(f.id, i);
                    }
                    (file, 0)
                }
                _ => create_object(img.pid, f)?,
            };
            fill(img.pid, f, &file, pg)?;
            set_metadata(img.pid, &file, f)?;
            if f.times.is_some() {
                let dup = file
                    .try_clone()
                    .map_err(io(img.pid, format!("dup saved file {}", f.id)))?;
                o.saved.times_later.push((dup, f.clone()));
            }
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
/// a deleted file or directory recreated and unlinked at once. Returns it
/// and its seals.
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
        // Where the tree sees the path: in a rebuilt mount namespace, from
        // a thread rooted in the rebuilt tree.
        SavedFileKind::Deleted { path } => crate::mntns::in_tree_root(pid, || {
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
        }),
        SavedFileKind::DeletedDir { path } => {
            crate::mntns::in_tree_root(pid, || Ok((deleted_dir(pid, f.id, path)?, 0)))
        }
        SavedFileKind::Tmpfile { dir } => Ok((create_tmpfile(pid, dir, None)?.0, 0)),
    }
}

/// O_TMPFILE's own bit (O_TMPFILE is it with O_DIRECTORY).
const TMPFILE_BIT: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

/// The flags of the description that open(O_TMPFILE) made for saved
/// file `id`, if a descriptor of the tree still has it (F_GETFL shows
/// O_TMPFILE; one description at most: each such open makes a new file).
fn tmpfile_flags(procs: &[ProcessImage], id: u64) -> Option<i32> {
    procs
        .iter()
        .flat_map(|p| &p.files)
        .find_map(|e| match e.kind {
            FdKind::Saved { id: i, flags, .. } if i == id && flags as i32 & TMPFILE_BIT != 0 => {
                Some(flags as i32)
            }
            _ => None,
        })
}

/// An O_TMPFILE file made again in `dir` by the very call that made it,
/// open(DIR, O_TMPFILE | flags), with the flags of its description when
/// one is in the tree (`flags`): that description is returned too, for
/// its descriptors ([`open`]); the object the restorer fills and maps is
/// a read-write reopen (the description may be write-only or append).
/// Without O_EXCL: linkable, as the dump cannot tell (docs/state.md).
fn create_tmpfile(
    pid: u32,
    dir: &str,
    flags: Option<i32>,
) -> Result<(std::fs::File, Option<OwnedFd>)> {
    let fl = flags.map_or(libc::O_RDWR, |f| f & !OPEN_FLAGS_DROP) | libc::O_TMPFILE;
    // `dir` as the tree sees it (a rebuilt mount namespace's, from a
    // thread rooted in it).
    let made = crate::mntns::in_tree_root(pid, || {
        util::open(dir, fl).map_err(|source| RestoreError::Sys {
            pid,
            stage: Stage::Fork,
            source: stasis_sys::SysError {
                op: format!("{} with O_TMPFILE (flags {fl:#o})", source.op),
                ..source
            },
        })
    })?;
    if flags.is_none() {
        return Ok((std::fs::File::from(made), None));
    }
    let again = format!("/proc/self/fd/{}", made.as_raw_fd());
    let obj = util::open(&again, libc::O_RDWR).at(pid, Stage::Fork)?;
    Ok((std::fs::File::from(obj), Some(made)))
}

/// A new directory for the deleted directory `path`: under its own name
/// if free (its links then read as before), else a unique one in the same
/// parent; opened and removed at once, so it is deleted again.
fn deleted_dir(pid: u32, id: u64, path: &str) -> Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let p = Path::new(path);
    let dir = p.parent().unwrap_or(Path::new("/"));
    let mut b = std::fs::DirBuilder::new();
    b.mode(0o700);
    let at = match b.create(p) {
        Ok(()) => p.to_path_buf(),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let at = dir.join(format!(".stasis-deleted-{pid}-{id}"));
            b.create(&at).map_err(io(
                pid,
                format!("mkdir {} for deleted directory {path}", at.display()),
            ))?;
            at
        }
        Err(e) => return Err(io(pid, format!("recreate deleted directory {path}"))(e)),
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&at);
    let removed = std::fs::remove_dir(&at);
    let file = opened.map_err(io(pid, format!("open {}", at.display())))?;
    removed.map_err(io(pid, format!("rmdir {}", at.display())))?;
    Ok(file)
}

/// Size and the saved data extents from the page file `pg` (through a
/// 1 MiB buffer) into the new, empty `file`; the rest stays holes. A
/// directory has neither.
fn fill(pid: u32, f: &SavedFile, file: &std::fs::File, pg: &Path) -> Result<()> {
    if matches!(f.kind, SavedFileKind::DeletedDir { .. }) {
        return Ok(());
    }
    let what = format!("saved file {} ({:?})", f.id, f.kind);
    file.set_len(f.size)
        .map_err(io(pid, format!("ftruncate {what}")))?;
    let ext = f.data_extents();
    if ext.is_empty() {
        return Ok(());
    }
    let src = std::fs::File::open(pg).map_err(io(pid, format!("open {}", pg.display())))?;
    copy_extents(pid, &src, f.offset, &ext, file, &what)
}

/// Copies `extents` of data stored from payload offset `payload` of the
/// page file `src` (each extent padded to whole pages there) into `dst`
/// at the extents' offsets, through a 1 MiB buffer.
pub(crate) fn copy_extents(
    pid: u32,
    src: &std::fs::File,
    mut payload: u64,
    extents: &[stasis_image::Extent],
    dst: &std::fs::File,
    what: &str,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    for e in extents {
        let mut done = 0u64;
        while done < e.len {
            let n = buf.len().min((e.len - done) as usize);
            src.read_exact_at(
                &mut buf[..n],
                stasis_image::PAGES_HEADER_LEN + payload + done,
            )
            .map_err(io(pid, format!("read {what} from the page file")))?;
            dst.write_all_at(&buf[..n], e.offset + done)
                .map_err(io(pid, format!("fill {what}")))?;
            done += n as u64;
        }
        payload += e.len.next_multiple_of(PAGE_SIZE);
    }
    Ok(())
}

/// Owner, mode, then times: the last changes made to the object.
fn set_metadata(pid: u32, file: &std::fs::File, f: &SavedFile) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let what = format!("saved file {} ({:?})", f.id, f.kind);
    if let Some(o) = f.owner {
        std::os::unix::fs::fchown(file, Some(o.uid), Some(o.gid))
            .map_err(io(pid, format!("fchown {what} to {}:{}", o.uid, o.gid)))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(f.mode))
        .map_err(io(pid, format!("fchmod {what}")))?;
    if let Some(t) = f.times {
        let at = |s: i64, ns: i64| -> Option<std::time::SystemTime> {
            let base = std::time::UNIX_EPOCH;
            let ns = u32::try_from(ns).ok()?;
            if s >= 0 {
                base.checked_add(std::time::Duration::new(s as u64, ns))
            } else {
                base.checked_sub(std::time::Duration::from_secs(s.unsigned_abs()))?
                    .checked_add(std::time::Duration::new(0, ns))
            }
        };
        let (Some(a), Some(m)) = (at(t.atime_sec, t.atime_nsec), at(t.mtime_sec, t.mtime_nsec))
        else {
            return Err(RestoreError::Refused {
                pid,
                stage: Stage::Fork,
                what: format!("{what}: times out of range"),
            });
        };
        file.set_times(std::fs::FileTimes::new().set_accessed(a).set_modified(m))
            .map_err(io(pid, format!("futimens {what}")))?;
    }
    Ok(())
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
    let mut flags = flags as i32 & !OPEN_FLAGS_DROP;
    // The description open(O_TMPFILE) made (create_tmpfile), at its
    // offset.
    if flags & TMPFILE_BIT != 0 {
        if let Some(&i) = o.saved.tmpfile_desc.get(&id) {
            util::seek_to(&o.owned[i], pos, &format!("fd {}", cx.fd)).at(pid, st)?;
            return Ok(i);
        }
        // An image without it (a file since linked, refused at dump by
        // now): a reopen, without the bit.
        flags &= !libc::O_TMPFILE;
    }
    let fd = util::open(&o.reopen_path(obj), flags).at(pid, st)?;
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

/// The deleted working directory of `img` (`cwd_saved`), passed to the
/// process as a service descriptor ([`CWD_KEY`]) to enter ([`fchdir`]).
pub(super) fn cwd_source(img: &ProcessImage, o: &mut Opened, f: &mut ProcFiles) -> Result<()> {
    if img.cwd_saved == 0 {
        return Ok(());
    }
    let &(obj, _) = o
        .saved
        .by_id
        .get(&img.cwd_saved)
        .ok_or_else(|| RestoreError::Refused {
            pid: img.pid,
            stage: Stage::Fork,
            what: format!(
                "working directory: saved file {} is not in the image",
                img.cwd_saved
            ),
        })?;
    f.srcs.push(obj);
    f.files_k.insert(CWD_KEY.to_string(), f.srcs.len() - 1);
    Ok(())
}

/// A deleted working directory: the process enters it through the
/// descriptor the restorer passed it (the directory has no name).
pub(crate) fn fchdir(r: &mut RemoteThread, img: &ProcessImage, svc: &ServiceFds) -> Result<()> {
    if img.cwd_saved == 0 {
        return Ok(());
    }
    let pid = img.pid;
    let fd = *svc
        .files
        .get(CWD_KEY)
        .ok_or_else(|| RestoreError::Refused {
            pid,
            stage: Stage::Attributes,
            what: format!(
                "no descriptor for the deleted working directory {}",
                img.cwd
            ),
        })?;
    r.call(
        libc::SYS_fchdir,
        &[fd as u64],
        &format!("fchdir to the deleted directory {}", img.cwd),
    )
    .at(pid, Stage::Attributes)?;
    Ok(())
}

/// The saved times again, after the last mapping (see [`TimesLater`]).
pub(crate) fn times_again(pid: u32, later: TimesLater) -> Result<()> {
    for (file, mut f) in later {
        // Owner and mode are already right; only the times moved.
        f.owner = None;
        set_metadata(pid, &file, &f)?;
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
