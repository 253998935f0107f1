//! SysV IPC (shared memory, semaphores, message queues) and the IPC
//! namespace: reading every object of a namespace without changing it
//! (SHM_STAT, SEM_STAT, MSG_STAT, msgrcv with MSG_COPY), creating objects
//! with chosen ids (`/proc/sys/kernel/*_next_id`), and the namespace itself.
//!
//! IPC calls and the IPC sysctls act on the *calling thread's* IPC
//! namespace: [`in_ns`] runs code in a short-lived thread that joined one.

use crate::{check, Result, SysError};
use std::os::fd::{AsRawFd, OwnedFd};

const SHM_STAT: i32 = 13;
const SHM_INFO: i32 = 14;
pub const SHM_LOCK: i32 = 11;
/// Mode bits the kernel keeps in shm_perm.mode.
pub const SHM_DEST: u32 = 0o1000;
pub const SHM_LOCKED: u32 = 0o2000;
pub const SHM_RDONLY: u64 = 0o10000;
pub const SHM_REMAP: u64 = 0o40000;
const MSG_COPY: i32 = 0o40000;
/// hugetlbfs's magic (statfs f_type): SHM_HUGETLB segments.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Owner, permissions and key of an object (struct ipc64_perm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
}

fn perm(p: &libc::ipc_perm) -> Perm {
    Perm {
        key: p.__key,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
        mode: u32::from(p.mode),
    }
}

/// A shared memory segment as SHM_STAT / IPC_STAT show it.
#[derive(Debug, Clone, Copy)]
pub struct Shm {
    pub id: i32,
    pub perm: Perm,
    pub size: u64,
    pub nattch: u64,
    pub cpid: i32,
    /// Last attach or detach (shm_lpid).
    pub lpid: i32,
}

/// A semaphore set: id, owner, number of semaphores.
#[derive(Debug, Clone, Copy)]
pub struct Sem {
    pub id: i32,
    pub perm: Perm,
    pub nsems: u64,
    /// A semop ran on it (sem_otime is not 0).
    pub operated: bool,
}

/// A message queue: id, owner, byte limit, messages.
#[derive(Debug, Clone, Copy)]
pub struct Msq {
    pub id: i32,
    pub perm: Perm,
    pub qbytes: u64,
    pub qnum: u64,
    /// Last sender and receiver (msg_lspid, msg_lrpid).
    pub lspid: i32,
    pub lrpid: i32,
}

/// Runs `f` in a new thread that joined the IPC namespace `ns` (a
/// descriptor of /proc/PID/ns/ipc): setns changes the calling thread only.
pub fn in_ns<T: Send + 'static>(
    ns: &OwnedFd,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns
        .try_clone()
        .map_err(|e| SysError::new("dup ipc ns", None, e.raw_os_error().unwrap_or(0)))?;
    std::thread::spawn(move || -> Result<T> {
        // SAFETY: setns on a namespace descriptor we own; it changes this
        // short-lived thread only.
        let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWIPC) };
        check(r.into(), "setns(ipc)", None)?;
        f()
    })
    .join()
    .map_err(|_| SysError::other("ipc namespace thread", None, "panicked"))?
}

/// Opens a namespace file such as /proc/PID/ns/ipc.
pub fn open_ns(path: &str) -> Result<OwnedFd> {
    crate::util::open(path, libc::O_RDONLY | libc::O_CLOEXEC)
}

/// Moves the calling thread into a new IPC namespace; returns descriptors
/// of the old one and of the new one. [`join`] the old one to go back.
pub fn unshare_ipc() -> Result<(OwnedFd, OwnedFd)> {
    let old = open_ns("/proc/thread-self/ns/ipc")?;
    // SAFETY: unshare with an integer flag; affects the calling thread.
    let r = unsafe { libc::unshare(libc::CLONE_NEWIPC) };
    check(r.into(), "unshare(CLONE_NEWIPC)", None)?;
    let new = open_ns("/proc/thread-self/ns/ipc")?;
    Ok((old, new))
}

/// [`unshare_ipc`] into a namespace made elsewhere: descriptors of our
/// old namespace and of `ns`.
pub fn join_made(ns: &OwnedFd) -> Result<(OwnedFd, OwnedFd)> {
    let old = open_ns("/proc/thread-self/ns/ipc")?;
    join(ns)?;
    let new = ns.try_clone().map_err(|e| {
        SysError::new(
            "dup an IPC namespace",
            None,
            e.raw_os_error().unwrap_or(libc::EBADF),
        )
    })?;
    Ok((old, new))
}

/// Moves the calling thread into the IPC namespace `ns`.
pub fn join(ns: &OwnedFd) -> Result<()> {
    // SAFETY: setns on a namespace descriptor we own.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWIPC) };
    check(r.into(), "setns(ipc)", None).map(|_| ())
}

/// Decodes a *ctl return value: None when there is no such object
/// (EINVAL, EIDRM: a free index or a removed id).
fn present(r: libc::c_long, call: &str, id: i32, cmd: i32) -> Result<Option<i32>> {
    if r >= 0 {
        return Ok(Some(r as i32));
    }
    match crate::last_errno() {
        libc::EINVAL | libc::EIDRM => Ok(None),
        e => Err(SysError::new(format!("{call}({id}, {cmd})"), None, e)),
    }
}

fn shm_ds(id: i32, cmd: i32) -> Result<Option<(i32, libc::shmid_ds)>> {
    // SAFETY: an all-zero shmid_ds is a valid out buffer.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a live buffer of the type the command fills.
    let r = unsafe { libc::shmctl(id, cmd, &mut ds) };
    Ok(present(r.into(), "shmctl", id, cmd)?.map(|r| (r, ds)))
}

/// Every shared memory segment of the calling thread's namespace.
pub fn shm_list() -> Result<Vec<Shm>> {
    // SHM_INFO returns the highest index in use (its buffer is a shm_info,
    // smaller than a shmid_ds).
    let max = shm_ds(0, SHM_INFO)?.map_or(-1, |(r, _)| r);
    let mut out = Vec::new();
    for idx in 0..=max {
        if let Some((id, ds)) = shm_ds(idx, SHM_STAT)? {
            out.push(shm_of(id, &ds));
        }
    }
    Ok(out)
}

fn shm_of(id: i32, ds: &libc::shmid_ds) -> Shm {
    Shm {
        id,
        perm: perm(&ds.shm_perm),
        size: ds.shm_segsz as u64,
        nattch: ds.shm_nattch,
        cpid: ds.shm_cpid,
        lpid: ds.shm_lpid,
    }
}

/// The segment with this id (IPC_STAT), or None if there is none.
pub fn shm_stat(id: i32) -> Result<Option<Shm>> {
    Ok(shm_ds(id, libc::IPC_STAT)?.map(|(_, ds)| shm_of(id, &ds)))
}

/// Attaches segment `id` in this process (SHM_RDONLY or not); returns the address.
pub fn shm_attach(id: i32, rdonly: bool) -> Result<u64> {
    let flags = if rdonly { SHM_RDONLY as i32 } else { 0 };
    // SAFETY: lets the kernel choose a free address; nothing is overwritten.
    let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if p as isize == -1 {
        return Err(SysError::new(
            format!("shmat({id})"),
            None,
            crate::last_errno(),
        ));
    }
    Ok(p as u64)
}

/// Detaches the segment attached at `addr` in this process.
pub fn shm_detach(addr: u64) -> Result<()> {
    // SAFETY: addr is an attachment this process made and owns; no
    // reference into it outlives this call.
    let r = unsafe { libc::shmdt(addr as *const libc::c_void) };
    check(r.into(), "shmdt", None).map(|_| ())
}

/// A descriptor of segment `id`'s memory object (through the map_files
/// entry of an attachment, detached again): read it with pread, its holes
/// found with SEEK_DATA; `write`: open for writing (to fill it). Refuses
/// SHM_HUGETLB segments (Err with EOPNOTSUPP).
pub fn shm_object(id: i32, size: u64, write: bool) -> Result<OwnedFd> {
    let addr = shm_attach(id, !write)?;
    let end = addr + size.next_multiple_of(4096);
    let fd = shm_object_at(&format!("/proc/self/map_files/{addr:x}-{end:x}"), write);
    shm_detach(addr)?;
    fd
}

/// A segment's memory object opened through a `map_files` entry of one
/// of its attachments (`path`; any process's: opening it attaches
/// nothing, so shm_lpid stays). A segment on hugetlbfs is refused
/// (EOPNOTSUPP).
pub fn shm_object_at(path: &str, write: bool) -> Result<OwnedFd> {
    let mode = if write { libc::O_RDWR } else { libc::O_RDONLY };
    not_hugetlb(crate::util::open(path, mode | libc::O_CLOEXEC)?)
}

/// `fd` (a segment's memory object), unless it is on hugetlbfs
/// (EOPNOTSUPP).
fn not_hugetlb(fd: OwnedFd) -> Result<OwnedFd> {
    // SAFETY: an all-zero statfs is a valid out buffer.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; sf is a live buffer.
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sf) };
    check(r.into(), "fstatfs(shm)", None)?;
    if sf.f_type == HUGETLBFS_MAGIC {
        return Err(SysError::new(
            "shm segment on hugetlbfs",
            None,
            libc::EOPNOTSUPP,
        ));
    }
    Ok(fd)
}

#[repr(C)]
struct SemidDs {
    perm: libc::ipc_perm,
    otime: i64,
    _r1: u64,
    ctime: i64,
    _r2: u64,
    nsems: u64,
    _r3: u64,
    _r4: u64,
}

fn sem_ds(id: i32, cmd: i32) -> Result<Option<(i32, SemidDs)>> {
    // SAFETY: an all-zero semid64_ds is a valid out buffer.
    let mut ds: SemidDs = unsafe { std::mem::zeroed() };
    // SAFETY: raw semctl; the fourth argument points at a live buffer of
    // the size the command writes (semid64_ds, or the smaller seminfo).
    let r = unsafe { libc::syscall(libc::SYS_semctl, id, 0, cmd, &mut ds as *mut SemidDs) };
    Ok(present(r, "semctl", id, cmd)?.map(|r| (r, ds)))
}

/// Every semaphore set of the calling thread's namespace.
pub fn sem_list() -> Result<Vec<Sem>> {
    let max = sem_ds(0, libc::SEM_INFO)?.map_or(-1, |(r, _)| r);
    let mut out = Vec::new();
    for idx in 0..=max {
        if let Some((id, ds)) = sem_ds(idx, libc::SEM_STAT)? {
            out.push(Sem {
                id,
                perm: perm(&ds.perm),
                nsems: ds.nsems,
                operated: ds.otime != 0,
            });
        }
    }
    Ok(out)
}

/// The values of the `n` semaphores of set `id` (GETALL).
pub fn sem_values(id: i32, n: usize) -> Result<Vec<u16>> {
    let mut v = vec![0u16; n];
    // SAFETY: GETALL writes n u16 values into v, which holds n.
    let r = unsafe { libc::syscall(libc::SYS_semctl, id, 0, libc::GETALL, v.as_mut_ptr()) };
    check(r, "semctl(GETALL)", None)?;
    Ok(v)
}

/// The last PID to change each of the `n` semaphores of set `id` (GETPID:
/// semop, SETVAL, SETALL set it; 0 when none did).
pub fn sem_pids(id: i32, n: usize) -> Result<Vec<i32>> {
    (0..n)
        .map(|i| {
            // SAFETY: GETPID takes integer arguments only.
            let r = unsafe { libc::syscall(libc::SYS_semctl, id, i, libc::GETPID, 0) };
            check(r, "semctl(GETPID)", None).map(|p| p as i32)
        })
        .collect()
}

/// Sets every value of set `id` (SETALL).
pub fn sem_set_values(id: i32, v: &[u16]) -> Result<()> {
    // SAFETY: SETALL reads as many u16 values as the set has; v holds them.
    let r = unsafe { libc::syscall(libc::SYS_semctl, id, 0, libc::SETALL, v.as_ptr()) };
    check(r, "semctl(SETALL)", None).map(|_| ())
}

/// A semop that leaves every value as it is (semaphore `num` up and
/// down, or down and up when at 0, in one atomic call): it sets the set's
/// sem_otime, which only a semop sets, and the semaphore's sempid (the
/// caller). `value`: that semaphore's value. Raw calls only (it runs in
/// [`by_pid`] helpers); false on failure, errno set.
pub fn sem_touch_raw(id: i32, num: u16, value: u16) -> bool {
    let (a, b) = if value > 0 { (-1, 1) } else { (1, -1) };
    let mut ops = [
        libc::sembuf {
            sem_num: num,
            sem_op: a,
            sem_flg: libc::IPC_NOWAIT as i16,
        },
        libc::sembuf {
            sem_num: num,
            sem_op: b,
            sem_flg: libc::IPC_NOWAIT as i16,
        },
    ];
    // SAFETY: ops is a live array of the length passed.
    unsafe { libc::semop(id, ops.as_mut_ptr(), ops.len()) == 0 }
}

/// [`sem_touch_raw`] on semaphore 0, by this process.
pub fn sem_touch(id: i32, value0: u16) -> Result<()> {
    if sem_touch_raw(id, 0, value0) {
        Ok(())
    } else {
        Err(SysError::new(
            format!("semop (sem_otime) {id}"),
            None,
            crate::last_errno(),
        ))
    }
}

/// Runs `f` (raw system calls only, see [`crate::sock::as_creator`]) in a
/// helper forked with PID `pid` and our own ids: what SysV IPC records as
/// the last PID of an operation (shm_lpid, sempid, msg_lspid, msg_lrpid)
/// is then `pid`. EEXIST: a process holds that PID here.
pub fn by_pid(pid: i32, what: &str, f: impl FnOnce() -> bool) -> Result<()> {
    let mut groups = vec![0u32; 65536];
    // SAFETY: plain calls; groups is a live array of the length passed.
    let (uid, gid) = unsafe {
        let n = libc::getgroups(groups.len() as i32, groups.as_mut_ptr());
        groups.truncate(usize::try_from(n).unwrap_or(0));
        (libc::geteuid(), libc::getegid())
    };
    let ids = crate::sock::Ids {
        uid,
        gid,
        groups: &groups,
    };
    crate::sock::as_creator(Some(pid), &ids, what, f)
}

/// A read-only descriptor of segment `id`'s memory object, opened by a
/// helper forked with PID `pid` (clone3 set_tid; EEXIST: a process holds
/// that PID here): it attaches the segment read-only, opens the map_files
/// entry of that attachment into our descriptor table (CLONE_FILES) and
/// detaches it, so the segment's shm_lpid is `pid` again, and its
/// attachment count as it was. Nothing here attaches it: a dumper killed
/// at any instant leaves shm_lpid `pid` (the helper's exit detaches it if
/// it did not).
pub fn shm_object_as(pid: i32, id: i32, size: u64) -> Result<OwnedFd> {
    let len = size.next_multiple_of(4096).max(4096) as usize;
    // The address the helper attaches at (SHM_REMAP over its copy of this
    // reservation), so that the path is known before the fork.
    // SAFETY: a fresh private PROT_NONE mapping; nothing else uses it.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(SysError::new(
            "mmap (shm reservation)",
            None,
            crate::last_errno(),
        ));
    }
    let addr = at as u64;
    let out = (|| {
        // The descriptor number the helper puts the object at.
        let slot = crate::util::open("/dev/null", libc::O_RDONLY | libc::O_CLOEXEC)?;
        let path = std::ffi::CString::new(format!(
            "/proc/self/map_files/{addr:x}-{:x}",
            addr + len as u64
        ))
        .map_err(|_| SysError::new("map_files path", None, libc::EINVAL))?;
        let (p, to) = (path.as_ptr(), slot.as_raw_fd());
        let what = format!("shmat, open and shmdt of segment {id}");
        by_pid(pid, &what, || {
            // SAFETY: raw calls; the attachment replaces this helper's copy
            // of the reservation and is removed again; p is a live string.
            unsafe {
                let flags = SHM_RDONLY | SHM_REMAP;
                if libc::syscall(libc::SYS_shmat, id, addr, flags) as u64 != addr {
                    return false;
                }
                let fd = libc::syscall(libc::SYS_openat, libc::AT_FDCWD, p, libc::O_RDONLY);
                let moved = fd >= 0
                    && libc::syscall(libc::SYS_dup3, fd, to, libc::O_CLOEXEC) == i64::from(to);
                if fd >= 0 {
                    libc::syscall(libc::SYS_close, fd);
                }
                libc::syscall(libc::SYS_shmdt, addr) == 0 && moved
            }
        })?;
        crate::hook::kill_point("sysv-read");
        // SAFETY: an all-zero stat is a valid out buffer; slot is open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let r = unsafe { libc::fstat(slot.as_raw_fd(), &mut st) };
        check(r.into(), "fstat(shm)", None)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(SysError::other(what, None, "the helper opened no segment"));
        }
        not_hugetlb(slot)
    })();
    // SAFETY: the reservation made above, unused by anything else.
    unsafe { libc::munmap(at, len) };
    out
}

/// shmat and shmdt of segment `id` (read-only, anywhere): shm_lpid becomes
/// the caller. Raw calls only.
pub fn shm_touch_raw(id: i32) -> bool {
    // SAFETY: the kernel picks a free address; the attachment is removed
    // again at once and never used.
    unsafe {
        let a = libc::shmat(id, std::ptr::null(), SHM_RDONLY as i32);
        a as isize != -1 && libc::shmdt(a) == 0
    }
}

/// SETVAL of semaphore `num` of set `id` (the caller becomes its sempid).
/// Raw calls only.
pub fn sem_setval_raw(id: i32, num: i32, value: u16) -> bool {
    // SAFETY: SETVAL takes integer arguments only.
    unsafe { libc::syscall(libc::SYS_semctl, id, num, libc::SETVAL, i64::from(value)) == 0 }
}

/// msgsnd of a prepared message (`buf`: the 8-byte type, then the text),
/// IPC_NOWAIT. Raw calls only.
pub fn msg_send_raw(id: i32, buf: &[u8]) -> bool {
    // SAFETY: buf holds the type and buf.len() - 8 bytes of text.
    unsafe {
        libc::msgsnd(
            id,
            buf.as_ptr().cast(),
            buf.len().saturating_sub(8),
            libc::IPC_NOWAIT,
        ) == 0
    }
}

/// Receives (and drops) the first message of queue `id`, IPC_NOWAIT,
/// MSG_NOERROR: the caller becomes msg_lrpid. Raw calls only.
pub fn msg_receive_raw(id: i32) -> bool {
    let mut buf = [0u8; 16];
    // SAFETY: buf holds the type and 8 bytes of text (longer ones are cut).
    unsafe {
        libc::msgrcv(
            id,
            buf.as_mut_ptr().cast(),
            8,
            0,
            libc::IPC_NOWAIT | libc::MSG_NOERROR,
        ) >= 0
    }
}

fn msq_ds(id: i32, cmd: i32) -> Result<Option<(i32, libc::msqid_ds)>> {
    // SAFETY: an all-zero msqid_ds is a valid out buffer.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a live buffer at least the size the command writes.
    let r = unsafe { libc::msgctl(id, cmd, &mut ds) };
    Ok(present(r.into(), "msgctl", id, cmd)?.map(|r| (r, ds)))
}

/// Every message queue of the calling thread's namespace.
pub fn msq_list() -> Result<Vec<Msq>> {
    let max = msq_ds(0, libc::MSG_INFO)?.map_or(-1, |(r, _)| r);
    let mut out = Vec::new();
    for idx in 0..=max {
        if let Some((id, ds)) = msq_ds(idx, libc::MSG_STAT)? {
            out.push(Msq {
                id,
                perm: perm(&ds.msg_perm),
                qbytes: ds.msg_qbytes,
                qnum: ds.msg_qnum,
                lspid: ds.msg_lspid,
                lrpid: ds.msg_lrpid,
            });
        }
    }
    Ok(out)
}

/// Message number `i` (from 0) of queue `id`, copied without removing it
/// (MSG_COPY|IPC_NOWAIT): its type and text. `max` bounds the text.
pub fn msg_copy(id: i32, i: u64, max: usize) -> Result<(i64, Vec<u8>)> {
    let mut buf = vec![0u8; 8 + max];
    // SAFETY: buf holds the 8-byte type and `max` bytes of text.
    let n = unsafe {
        libc::msgrcv(
            id,
            buf.as_mut_ptr().cast(),
            max,
            i as i64,
            MSG_COPY | libc::IPC_NOWAIT,
        )
    };
    let n = check(n as libc::c_long, "msgrcv(MSG_COPY)", None)? as usize;
    let mtype = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
    Ok((mtype, buf[8..8 + n].to_vec()))
}

/// Appends a message to queue `id` (IPC_NOWAIT: never blocks).
pub fn msg_send(id: i32, mtype: i64, text: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(8 + text.len());
    buf.extend_from_slice(&mtype.to_ne_bytes());
    buf.extend_from_slice(text);
    // SAFETY: buf holds the type and text.len() bytes of text.
    let r = unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) };
    check(r.into(), "msgsnd", None).map(|_| ())
}

/// Which kind of object for [`create`] and [`set_perm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Shm,
    Sem,
    Msg,
}

impl Kind {
    fn next_id(self) -> &'static str {
        match self {
            Kind::Shm => "/proc/sys/kernel/shm_next_id",
            Kind::Sem => "/proc/sys/kernel/sem_next_id",
            Kind::Msg => "/proc/sys/kernel/msg_next_id",
        }
    }
}

/// Creates an object with exactly `id` and `key` (IPC_CREAT|IPC_EXCL, the
/// id through *_next_id): `size` bytes (shm) or semaphores (sem), made by
/// a helper process with effective ids `creator` (uid, gid): what the
/// kernel records as its creator (cuid, cgid), which no call sets
/// afterwards; with PID `pid` when given (a segment's shm_cpid). A
/// different id (a race) removes it again and fails with EEXIST.
/// The id the next object of `kind` made in the calling thread's IPC
/// namespace gets (/proc/sys/kernel/*_next_id).
pub fn write_next_id(kind: Kind, id: i32) -> Result<()> {
    std::fs::write(kind.next_id(), id.to_string()).map_err(|e| {
        SysError::new(
            format!("write {} = {id}", kind.next_id()),
            None,
            e.raw_os_error().unwrap_or(0),
        )
    })
}

pub fn create(
    kind: Kind,
    id: i32,
    key: i32,
    size: u64,
    mode: u32,
    creator: (u32, u32),
    pid: Option<i32>,
) -> Result<()> {
    write_next_id(kind, id)?;
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32;
    let ids = crate::sock::Ids {
        uid: creator.0,
        gid: creator.1,
        groups: &[],
    };
    let what = format!("create {kind:?} id {id} key {key:#x}");
    // The helper forked from this thread is in its IPC namespace.
    crate::sock::as_creator(pid, &ids, &what, || {
        // SAFETY: integer-only syscalls (in the forked helper).
        unsafe {
            let got = match kind {
                Kind::Shm => libc::shmget(key, size as usize, flags),
                Kind::Sem => libc::semget(key, size as i32, flags),
                Kind::Msg => libc::msgget(key, flags),
            };
            if got >= 0 && got != id {
                // Another id (a race): removed again, a failure.
                match kind {
                    Kind::Shm => libc::shmctl(got, libc::IPC_RMID, std::ptr::null_mut()),
                    Kind::Sem => libc::semctl(got, 0, libc::IPC_RMID),
                    Kind::Msg => libc::msgctl(got, libc::IPC_RMID, std::ptr::null_mut()),
                };
            }
            got == id
        }
    })
}

/// IPC_RMID.
pub fn remove(kind: Kind, id: i32) -> Result<()> {
    // SAFETY: IPC_RMID ignores the buffer argument.
    let r = unsafe {
        match kind {
            Kind::Shm => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            Kind::Sem => libc::semctl(id, 0, libc::IPC_RMID),
            Kind::Msg => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
        }
    };
    check(r.into(), &format!("IPC_RMID {kind:?} {id}"), None).map(|_| ())
}

/// IPC_SET: owner, mode (low 9 bits) and, for a queue, its byte limit.
pub fn set_perm(kind: Kind, id: i32, uid: u32, gid: u32, mode: u32, qbytes: u64) -> Result<()> {
    let what = format!("IPC_SET {kind:?} {id}");
    let set = |p: &mut libc::ipc_perm| {
        p.uid = uid;
        p.gid = gid;
        p.mode = (mode & 0o777) as u16;
    };
    // SAFETY: each buffer is fetched with IPC_STAT first, then handed back.
    let r = unsafe {
        match kind {
            Kind::Shm => {
                let (_, mut ds) = shm_ds(id, libc::IPC_STAT)?.ok_or_else(|| gone(&what))?;
                set(&mut ds.shm_perm);
                libc::shmctl(id, libc::IPC_SET, &mut ds)
            }
            Kind::Sem => {
                let (_, mut ds) = sem_ds(id, libc::IPC_STAT)?.ok_or_else(|| gone(&what))?;
                set(&mut ds.perm);
                libc::syscall(
                    libc::SYS_semctl,
                    id,
                    0,
                    libc::IPC_SET,
                    &mut ds as *mut SemidDs,
                ) as i32
            }
            Kind::Msg => {
                let (_, mut ds) = msq_ds(id, libc::IPC_STAT)?.ok_or_else(|| gone(&what))?;
                set(&mut ds.msg_perm);
                ds.msg_qbytes = qbytes;
                libc::msgctl(id, libc::IPC_SET, &mut ds)
            }
        }
    };
    check(r.into(), &what, None).map(|_| ())
}

fn gone(what: &str) -> SysError {
    SysError::new(what, None, libc::EIDRM)
}

/// SHM_LOCK on segment `id`.
pub fn shm_lock(id: i32) -> Result<()> {
    // SAFETY: SHM_LOCK ignores the buffer argument.
    let r = unsafe { libc::shmctl(id, SHM_LOCK, std::ptr::null_mut()) };
    check(r.into(), "shmctl(SHM_LOCK)", None).map(|_| ())
}

/// Runs `f` in a short-lived thread of the calling thread's namespaces
/// whose effective uid and gid are `ids` (raw setresuid/setresgid change
/// that thread only): the IPC sysctls of a namespace owned by another
/// user namespace are writable by that namespace's root alone (the
/// kernel's ipc_permissions compares the euid, capabilities aside).
pub fn as_ids<T: Send + 'static>(
    ids: (u32, u32),
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || -> Result<T> {
        let keep = u32::MAX as libc::c_long;
        // SAFETY: integer-only credential syscalls on this thread.
        unsafe {
            check(
                libc::syscall(libc::SYS_setresgid, keep, ids.1 as libc::c_long, keep),
                "setresgid",
                None,
            )?;
            check(
                libc::syscall(libc::SYS_setresuid, keep, ids.0 as libc::c_long, keep),
                "setresuid",
                None,
            )?;
        }
        f()
    })
    .join()
    .map_err(|_| SysError::other("sysctl thread", None, "panicked"))?
}

/// The PIDs SysV IPC recorded, as a process of the PID namespace `pid_ns`
/// (a descriptor of it, or a pidfd of a process in it) sees them: each
/// segment's (shm_cpid, shm_lpid) of `shm`, each semaphore's sempid of
/// the sets `sem` (id, count), each queue's (msg_lspid, msg_lrpid) of
/// `msg`, in that order, flattened. The kernel translates a recorded PID
/// into the caller's PID namespace (0 for one outside it), so a child
/// forked into that namespace (this thread's pid_for_children; the thread
/// must be one of its own, in the objects' IPC namespace) reads them with
/// raw calls and writes them to a pipe: even the PIDs of processes that
/// have exited come out as the namespace numbered them.
pub fn pids_in_pid_ns(
    pid_ns: &OwnedFd,
    shm: &[i32],
    sem: &[(i32, usize)],
    msg: &[i32],
) -> Result<Vec<i32>> {
    let n = shm.len() * 2 + sem.iter().map(|s| s.1).sum::<usize>() + msg.len() * 2;
    crate::nsenter::ints_in_pid_ns(pid_ns, n, "SysV IPC PIDs", |out| {
        let mut k = 0;
        // SAFETY: raw calls; the ds buffers live on this stack, `out` has
        // room for every value.
        unsafe {
            for &id in shm {
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                if libc::shmctl(id, libc::IPC_STAT, &mut ds) < 0 {
                    return false;
                }
                out[k] = ds.shm_cpid;
                out[k + 1] = ds.shm_lpid;
                k += 2;
            }
            for &(id, count) in sem {
                for i in 0..count {
                    let p = libc::syscall(libc::SYS_semctl, id, i, libc::GETPID, 0);
                    if p < 0 {
                        return false;
                    }
                    out[k] = p as i32;
                    k += 1;
                }
            }
            for &id in msg {
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                if libc::msgctl(id, libc::IPC_STAT, &mut ds) < 0 {
                    return false;
                }
                out[k] = ds.msg_lspid;
                out[k + 1] = ds.msg_lrpid;
                k += 2;
            }
        }
        true
    })
}
