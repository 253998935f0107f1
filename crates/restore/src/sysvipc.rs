//! SysV IPC: the tree's own IPC namespace made anew, with every object
//! under its old id and key, or the segments of the restorer's namespace
//! the tree had attached; and attaching a segment in a process.
//!
//! The namespace is made by the thread that forks the tree (unshare), so
//! every process inherits it; the objects are created there before the
//! fork (ids through /proc/sys/kernel/*_next_id), filled, given their
//! owner and mode (IPC_SET). After every process has attached its
//! segments, the ones marked for removal are removed again and the
//! sysctls get their saved values (shm_rmid_forced last).

use crate::{At, RestoreError, Result, Stage};
use stasis_image::sysvipc::{IpcNs, IpcPerm, ShmSegment};
use stasis_image::{Vma, PAGE_SIZE};
use stasis_sys::remote::RemoteThread;
use stasis_sys::sysvipc::{self as ipc, Kind, SHM_RDONLY, SHM_REMAP};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;

/// The IPC state being restored. Dropped before [`Ipc::done`]: goes back
/// to the restorer's namespace and removes the segments it created in it.
pub(crate) struct Ipc {
    pid: u32,
    /// The restorer's namespace while this thread is in the new one.
    back: Option<OwnedFd>,
    /// The tree's new namespace.
    ns: Option<OwnedFd>,
    /// Segments created in the restorer's own namespace (removed on failure).
    created: Vec<i32>,
    done: bool,
    image: IpcNs,
}

/// The ids an object is made with: its creator's (cuid, cgid), which the
/// kernel takes from the caller of shmget/semget/msgget only.
fn creator(p: &IpcPerm) -> (u32, u32) {
    (p.cuid, p.cgid)
}

fn refused(pid: u32, what: String) -> RestoreError {
    RestoreError::Refused {
        pid,
        stage: Stage::Preflight,
        what,
    }
}

/// In the restorer's namespace: every segment's id must be free, or hold
/// the very segment that was dumped (same key, size and creator) with
/// nobody attached (the dump killed its users), which is then used again
/// with the saved contents. Anything else is refused by name: a restore
/// never maps a different segment. Returns the ids to create.
pub(crate) fn preflight(img: &IpcNs, pid: u32) -> Result<Vec<i32>> {
    if img.own {
        return Ok(img.shm.iter().map(|s| s.id).collect());
    }
    let mut create = Vec::new();
    for s in &img.shm {
        let name = format!(
            "SysV shm segment {} (key {:#x}, {} bytes)",
            s.id, s.perm.key, s.size
        );
        match ipc::shm_stat(s.id).at(pid, Stage::Preflight)? {
            None => create.push(s.id),
            Some(now) if now.perm.key == s.perm.key && now.size == s.size && now.cpid == s.cpid => {
                if now.nattch != 0 {
                    return Err(refused(
                        pid,
                        format!(
                            "{name} still exists and is attached {} times outside the image",
                            now.nattch
                        ),
                    ));
                }
            }
            Some(now) => {
                return Err(refused(
                    pid,
                    format!(
                    "{name}: the id is taken by another segment (key {:#x}, {} bytes, creator {})",
                    now.perm.key, now.size, now.cpid
                ),
                ))
            }
        }
    }
    Ok(create)
}

impl Ipc {
    /// Makes the objects (in a new namespace this thread enters, if the
    /// tree had its own) right before the fork. `pages`: the root's page
    /// file. `made`: that namespace, made already (owned by the tree's
    /// user namespace: userns.rs), else unshared here.
    pub(crate) fn create(
        img: &IpcNs,
        pid: u32,
        pages: &Path,
        made: Option<&OwnedFd>,
    ) -> Result<Ipc> {
        let st = Stage::Fork;
        let create = preflight(img, pid)?;
        let mut me = Ipc {
            pid,
            back: None,
            ns: None,
            created: Vec::new(),
            done: false,
            image: img.clone(),
        };
        if img.own {
            let (back, ns) = match made {
                Some(ns) => ipc::join_made(ns).at(pid, st)?,
                None => ipc::unshare_ipc().at(pid, st)?,
            };
            me.back = Some(back);
            me.ns = Some(ns);
            sysctls(pid, img, true)?;
        }
        let src = std::fs::File::open(pages).map_err(|source| RestoreError::Io {
            pid,
            stage: st,
            what: format!("open {}", pages.display()),
            source,
        })?;
        for s in &img.shm {
            if create.contains(&s.id) {
                ipc::create(
                    Kind::Shm,
                    s.id,
                    s.perm.key,
                    s.size,
                    s.perm.mode,
                    creator(&s.perm),
                )
                .at(pid, st)?;
                if !img.own {
                    me.created.push(s.id);
                }
            }
            fill(pid, s, &src)?;
            ipc::set_perm(Kind::Shm, s.id, s.perm.uid, s.perm.gid, s.perm.mode, 0).at(pid, st)?;
            if s.locked() {
                ipc::shm_lock(s.id).at(pid, st)?;
            }
        }
        for s in &img.sem {
            let n = s.values.len() as u64;
            ipc::create(
                Kind::Sem,
                s.id,
                s.perm.key,
                n,
                s.perm.mode,
                creator(&s.perm),
            )
            .at(pid, st)?;
            ipc::sem_set_values(s.id, &s.values).at(pid, st)?;
            if s.operated {
                ipc::sem_touch(s.id, s.values.first().copied().unwrap_or(0)).at(pid, st)?;
            }
            ipc::set_perm(Kind::Sem, s.id, s.perm.uid, s.perm.gid, s.perm.mode, 0).at(pid, st)?;
        }
        for q in &img.msg {
            let (u, g, m) = (q.perm.uid, q.perm.gid, q.perm.mode);
            ipc::create(Kind::Msg, q.id, q.perm.key, 0, m, creator(&q.perm)).at(pid, st)?;
            // Room for every message first (the limit may have been
            // lowered below what the queue holds), the saved limit after.
            let total: u64 = q.messages.iter().map(|x| x.text.len() as u64).sum();
            ipc::set_perm(Kind::Msg, q.id, u, g, m, q.qbytes.max(total)).at(pid, st)?;
            for msg in &q.messages {
                ipc::msg_send(q.id, msg.mtype, &msg.text).at(pid, st)?;
            }
            ipc::set_perm(Kind::Msg, q.id, u, g, m, q.qbytes).at(pid, st)?;
        }
        Ok(me)
    }

    /// Segment sizes by id, for the attachments.
    pub(crate) fn sizes(&self) -> HashMap<i32, u64> {
        self.image.shm.iter().map(|s| (s.id, s.size)).collect()
    }

    /// Right after the fork: the restorer goes back to its own namespace.
    pub(crate) fn leave(&mut self) -> Result<()> {
        if let Some(back) = self.back.take() {
            ipc::join(&back).at(self.pid, Stage::Fork)?;
        }
        Ok(())
    }

    /// Once every process has attached its segments: segments marked for
    /// removal are removed again (they live on while attached) and the
    /// sysctls take their saved values.
    pub(crate) fn finish(&mut self) -> Result<()> {
        let pid = self.pid;
        let dest: Vec<i32> = self
            .image
            .shm
            .iter()
            .filter(|s| s.dest())
            .map(|s| s.id)
            .collect();
        let img = self.image.clone();
        let work = move || -> stasis_sys::Result<()> {
            for id in dest {
                ipc::remove(Kind::Shm, id)?;
            }
            if img.own {
                write_sysctls(&img, false)?;
            }
            Ok(())
        };
        match &self.ns {
            Some(ns) => ipc::in_ns(ns, work),
            None => work(),
        }
        .at(pid, Stage::Resume)
    }

    /// The tree runs: what was created stays.
    pub(crate) fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for Ipc {
    fn drop(&mut self) {
        let _ = self.leave();
        if !self.done {
            for &id in &self.created {
                let _ = ipc::remove(Kind::Shm, id);
            }
        }
    }
}

/// The segment's saved data, written through its memory object.
fn fill(pid: u32, s: &ShmSegment, src: &std::fs::File) -> Result<()> {
    let obj = std::fs::File::from(ipc::shm_object(s.id, s.size, true).at(pid, Stage::Fork)?);
    let what = format!("SysV shm segment {}", s.id);
    crate::kinds::saved::copy_extents(pid, src, s.offset, &s.extents, &obj, &what)
}

/// Sysctls whose value only limits what may be created: raised before the
/// objects (`raise_only`), set exactly after.
fn is_limit(name: &str) -> bool {
    !name.ends_with("_next_id") && name != "kernel/shm_rmid_forced" && name != "kernel/auto_msgmni"
}

fn sysctls(pid: u32, img: &IpcNs, raise_only: bool) -> Result<()> {
    write_sysctls(img, raise_only).at(pid, Stage::Fork)
}

/// Writes the saved sysctls in the calling thread's namespace;
/// `raise_only`: only limits, each field at least its present value.
/// shm_rmid_forced comes last, once every segment is attached. In a
/// namespace owned by a user namespace of the tree's the files belong to
/// its root, who alone may write them: written as that root then.
fn write_sysctls(img: &IpcNs, raise_only: bool) -> stasis_sys::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata("/proc/sys/kernel/shmmax")
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0));
    if owner != (0, 0) {
        let img = img.clone();
        return ipc::as_ids(owner, move || write_sysctls_here(&img, raise_only));
    }
    write_sysctls_here(img, raise_only)
}

fn write_sysctls_here(img: &IpcNs, raise_only: bool) -> stasis_sys::Result<()> {
    let mut order: Vec<_> = img.sysctls.iter().collect();
    order.sort_by_key(|s| s.name == "kernel/shm_rmid_forced");
    for s in order {
        let path = format!("/proc/sys/{}", s.name);
        let value = if raise_only {
            if !is_limit(&s.name) {
                continue;
            }
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            raised(&now, &s.value)
        } else if s.name.ends_with("_next_id") && s.value.trim() == "-1" {
            continue;
        } else {
            s.value.clone()
        };
        std::fs::write(&path, &value).map_err(|e| {
            stasis_sys::SysError::new(
                format!("write {path} = {value}"),
                None,
                e.raw_os_error().unwrap_or(0),
            )
        })?;
    }
    Ok(())
}

/// Field by field, the larger of two whitespace-separated number lists.
fn raised(now: &str, saved: &str) -> String {
    let now: Vec<&str> = now.split_whitespace().collect();
    saved
        .split_whitespace()
        .enumerate()
        .map(|(i, v)| {
            match (
                v.parse::<u64>(),
                now.get(i).and_then(|n| n.parse::<u64>().ok()),
            ) {
                (Ok(a), Some(b)) => a.max(b).to_string(),
                _ => v.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Attaches segment `id` in the process at the VMA's place (remote shmat,
/// SHM_RDONLY where the mapping could never be writable), a part of it
/// (a VMA split by mprotect or munmap) through a temporary attachment
/// moved into place; then the saved protection.
pub(crate) fn attach(
    r: &mut RemoteThread,
    v: &Vma,
    id: i32,
    sizes: &HashMap<i32, u64>,
) -> Result<()> {
    let pid = r.tid().0 as u32;
    let st = Stage::Memory;
    let size = sizes
        .get(&id)
        .ok_or_else(|| RestoreError::Refused {
            pid,
            stage: st,
            what: format!(
                "mapping {:#x}-{:#x} of SysV shm segment {id}, not in the image",
                v.start, v.end
            ),
        })?
        .next_multiple_of(PAGE_SIZE);
    let len = v.end - v.start;
    // The mappings queued before this one go first: the order of the
    // address space's changes stays the image's.
    r.flush().at(pid, st)?;
    let rdonly = if v.maywrite { 0 } else { SHM_RDONLY };
    let what = format!("shmat({id}) at {:#x}-{:#x}", v.start, v.end);
    if v.pgoff == 0 && len == size {
        let got = r
            .call(
                libc::SYS_shmat,
                &[id as u64, v.start, rdonly | SHM_REMAP],
                &what,
            )
            .at(pid, st)?;
        if got != v.start {
            return Err(RestoreError::Refused {
                pid,
                stage: st,
                what: format!("{what} landed at {got:#x}"),
            });
        }
    } else {
        let tmp = r
            .call(libc::SYS_shmat, &[id as u64, 0, rdonly], &what)
            .at(pid, st)?;
        r.call(
            libc::SYS_mremap,
            &[
                tmp + v.pgoff,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                v.start,
            ],
            &format!("mremap part of SysV shm segment {id} to {:#x}", v.start),
        )
        .at(pid, st)?;
        r.call(
            libc::SYS_munmap,
            &[tmp, size],
            "munmap the rest of a SysV shm attachment",
        )
        .at(pid, st)?;
    }
    let given = libc::PROT_READ as u32
        | if v.maywrite {
            libc::PROT_WRITE as u32
        } else {
            0
        };
    if v.prot != given {
        r.call(
            libc::SYS_mprotect,
            &[v.start, len, u64::from(v.prot)],
            &format!("mprotect SysV shm {:#x}-{:#x}", v.start, v.end),
        )
        .at(pid, st)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_raised_field_by_field() {
        assert_eq!(
            raised("32000 1024000000 500 32000", "200 64000 40 100"),
            "32000 1024000000 500 32000"
        );
        assert_eq!(
            raised("250\t32000\t32\t128", "300 1000 64 10"),
            "300 32000 64 128"
        );
        assert_eq!(raised("8192", "9000"), "9000");
        assert_eq!(raised("", "9000"), "9000");
        assert!(is_limit("kernel/msgmax") && !is_limit("kernel/shm_next_id"));
        assert!(!is_limit("kernel/shm_rmid_forced"));
    }
}
