//! SysV IPC objects and the IPC namespace's settings.
//!
//! `own`: the tree had an IPC namespace of its own (every process shares
//! the root's): every object of it and its IPC sysctls are saved, and a
//! restore creates a new namespace. Not `own`: the tree was in the
//! dumper's namespace; only the shared memory segments its processes map
//! are saved (a restore recreates each with its id if that id is free, or
//! uses the same segment if it is still there, unattached).
//!
//! Segment contents are in the root process's page file at `offset`
//! (payload bytes, page-aligned), only their data extents, each padded to
//! whole pages, one after the other.

use serde::{Deserialize, Serialize};

use crate::checker::{aligned, Checker};
use crate::error::Result;
use crate::kinds::saved::Extent;
use crate::limits::{MAX_EXTENTS, MAX_SAVED_FILE};

/// The IPC sysctls of a namespace (under /proc/sys), saved and written
/// back by these names only.
pub const IPC_SYSCTLS: [&str; 17] = [
    "kernel/shmmax",
    "kernel/shmall",
    "kernel/shmmni",
    "kernel/shm_rmid_forced",
    "kernel/msgmax",
    "kernel/msgmnb",
    "kernel/msgmni",
    "kernel/auto_msgmni",
    "kernel/sem",
    "kernel/shm_next_id",
    "kernel/sem_next_id",
    "kernel/msg_next_id",
    "fs/mqueue/queues_max",
    "fs/mqueue/msg_max",
    "fs/mqueue/msgsize_max",
    "fs/mqueue/msg_default",
    "fs/mqueue/msgsize_default",
];

/// Most objects of one kind (the kernel's IPCMNI limit is 32768, 16M with
/// ipcmni_extend).
pub const MAX_IPC_OBJECTS: usize = 1 << 24;
/// Most semaphores in a set (SEMMSL ceiling).
pub const MAX_SEMS: usize = 65536;
/// Most messages in one queue and bytes in one message.
pub const MAX_MESSAGES: usize = 1 << 20;
pub const MAX_MESSAGE: usize = 1 << 24;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IpcNs {
    pub own: bool,
    /// Where the IPC data ends in the root's page file (payload bytes). At
    /// least one page past the root's own data, a zero page when no
    /// segment has data: an older stasis, which knows nothing of `ipc`,
    /// then refuses the image (page file length) instead of restoring the
    /// tree without its IPC state.
    #[serde(default)]
    pub end: u64,
    /// With POSIX message queues: where the IPC data ends, one page past
    /// `end` (0 without queues). A reader older than `mqueues` computes
    /// the end from `end` and the segments only, so it refuses the root's
    /// page file by its length instead of restoring without the queues.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mq_end: u64,
    #[serde(default)]
    pub sysctls: Vec<IpcSysctl>,
    #[serde(default)]
    pub shm: Vec<ShmSegment>,
    #[serde(default)]
    pub sem: Vec<SemSet>,
    #[serde(default)]
    pub msg: Vec<MsgQueue>,
    /// The POSIX message queues of the namespace (its mqueue file system).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mqueues: Vec<PosixQueue>,
}

/// A POSIX message queue of the tree's namespace: name (without the
/// leading '/'), owner, permission bits, mq_maxmsg and mq_msgsize, and
/// every message in queue order (highest priority first, in arrival
/// order within one priority).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixQueue {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub maxmsg: i64,
    pub msgsize: i64,
    pub messages: Vec<PosixMessage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixMessage {
    pub prio: u32,
    #[serde(with = "crate::hex_bytes")]
    pub text: Vec<u8>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// MQ_PRIO_MAX: priorities are below it.
pub const MQ_PRIO_MAX: u32 = 32768;
/// The kernel's hard ceilings (HARD_MSGMAX, HARD_MSGSIZEMAX).
pub const MQ_HARD_MSGMAX: i64 = 65536;
pub const MQ_HARD_MSGSIZEMAX: i64 = 16 << 20;

/// One sysctl: its path under /proc/sys (one of [`IPC_SYSCTLS`]) and value
/// as the file shows it (without the newline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcSysctl {
    pub name: String,
    pub value: String,
}

/// Key, owner and mode of an object (`mode`: the kernel's shm_perm.mode,
/// permission bits plus SHM_DEST 0o1000 / SHM_LOCKED 0o2000 for segments).
/// The creator (cuid, cgid): IPC_SET cannot set it; the restore makes the
/// object from a helper with those ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcPerm {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmSegment {
    pub id: i32,
    pub perm: IpcPerm,
    pub size: u64,
    /// Attachments at dump (every one a mapping of the tree).
    pub nattch: u64,
    /// Creator PID as the dumper saw it (to tell the same segment again
    /// in the dumper's namespace).
    #[serde(default)]
    pub cpid: i32,
    /// Last PID to attach or detach it (shm_lpid; 0: none, or an image
    /// older than this field).
    #[serde(default)]
    pub lpid: i32,
    /// Payload offset of the contents in the root's page file.
    pub offset: u64,
    pub extents: Vec<Extent>,
}

impl IpcNs {
    /// Where the IPC data ends in the root's page file.
    pub fn payload_end(&self) -> u64 {
        self.end.max(self.data_end()).max(self.mq_end)
    }

    /// Where the segments' contents end in the root's page file.
    fn data_end(&self) -> u64 {
        self.shm
            .iter()
            .map(|s| {
                s.extents.iter().fold(s.offset, |acc, e| {
                    acc.saturating_add(e.len.next_multiple_of(crate::PAGE_SIZE))
                })
            })
            .max()
            .unwrap_or(0)
    }
}

impl ShmSegment {
    pub fn locked(&self) -> bool {
        self.perm.mode & 0o2000 != 0
    }
    /// Marked for removal (IPC_RMID while attached).
    pub fn dest(&self) -> bool {
        self.perm.mode & 0o1000 != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemSet {
    pub id: i32,
    pub perm: IpcPerm,
    pub values: Vec<u16>,
    /// A semop ran on it (sem_otime not 0: programs test this to see
    /// whether a set was initialised); the restore runs one that changes
    /// no value.
    #[serde(default)]
    pub operated: bool,
    /// Each semaphore's last PID (GETPID, sempid; 0: none). Empty in an
    /// image older than this field.
    #[serde(default)]
    pub pids: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgQueue {
    pub id: i32,
    pub perm: IpcPerm,
    pub qbytes: u64,
    /// In queue order.
    pub messages: Vec<Message>,
    /// Last sender and receiver (msg_lspid, msg_lrpid; 0: none).
    #[serde(default)]
    pub lspid: i32,
    #[serde(default)]
    pub lrpid: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub mtype: i64,
    #[serde(with = "crate::hex_bytes")]
    pub text: Vec<u8>,
}

/// The rules serde cannot check.
pub(crate) fn validate(c: &Checker, ipc: &IpcNs) -> Result<()> {
    c.count("ipc.sysctls", ipc.sysctls.len(), IPC_SYSCTLS.len())?;
    for s in &ipc.sysctls {
        c.ensure(IPC_SYSCTLS.contains(&s.name.as_str()), || {
            format!("ipc.sysctls: {:?} is not an IPC sysctl", s.name)
        })?;
        c.string("ipc.sysctls.value", &s.value, 256)?;
    }
    c.ensure(
        ipc.own || (ipc.sysctls.is_empty() && ipc.sem.is_empty() && ipc.msg.is_empty()),
        || "ipc: sysctls, semaphores or queues of a namespace not the tree's own".into(),
    )?;
    c.ensure(ipc.own || ipc.mqueues.is_empty(), || {
        "ipc: POSIX message queues of a namespace not the tree's own".into()
    })?;
    validate_mqueues(c, &ipc.mqueues)?;
    c.ensure(
        aligned(ipc.mq_end) && (ipc.mqueues.is_empty() || ipc.mq_end > ipc.end),
        || format!("ipc.mq_end: {:#x} not page-aligned, or not past the other IPC data with POSIX queues", ipc.mq_end),
    )?;
    c.ensure(aligned(ipc.end), || {
        format!("ipc.end: {:#x} not page-aligned", ipc.end)
    })?;
    c.count("ipc.shm", ipc.shm.len(), MAX_IPC_OBJECTS)?;
    c.count("ipc.sem", ipc.sem.len(), MAX_IPC_OBJECTS)?;
    c.count("ipc.msg", ipc.msg.len(), MAX_IPC_OBJECTS)?;
    let ids = |v: Vec<i32>, what: &str| {
        let mut seen = std::collections::HashSet::new();
        for id in v {
            c.ensure(id >= 0 && seen.insert(id), || {
                format!("ipc.{what}: id {id} negative or twice")
            })?;
        }
        Ok::<(), crate::ImageError>(())
    };
    ids(ipc.shm.iter().map(|s| s.id).collect(), "shm")?;
    ids(ipc.sem.iter().map(|s| s.id).collect(), "sem")?;
    ids(ipc.msg.iter().map(|s| s.id).collect(), "msg")?;
    for s in &ipc.shm {
        c.ensure(
            s.size > 0 && s.size <= MAX_SAVED_FILE && aligned(s.offset),
            || {
                format!(
                    "ipc.shm {}: size {} or offset {:#x}",
                    s.id, s.size, s.offset
                )
            },
        )?;
        c.count("ipc.shm.extents", s.extents.len(), MAX_EXTENTS)?;
        let mut end = 0u64;
        for e in &s.extents {
            let stop = e.offset.checked_add(e.len);
            c.ensure(
                e.len > 0 && e.offset >= end && stop.is_some_and(|x| x <= s.size),
                || format!("ipc.shm {}: extent {e:?} out of order or outside", s.id),
            )?;
            end = stop.unwrap_or(u64::MAX);
        }
    }
    for s in &ipc.sem {
        c.ensure(!s.values.is_empty() && s.values.len() <= MAX_SEMS, || {
            format!("ipc.sem {}: {} semaphores", s.id, s.values.len())
        })?;
        c.ensure(s.pids.is_empty() || s.pids.len() == s.values.len(), || {
            format!(
                "ipc.sem {}: {} PIDs for {} semaphores",
                s.id,
                s.pids.len(),
                s.values.len()
            )
        })?;
    }
    for q in &ipc.msg {
        c.count("ipc.msg.messages", q.messages.len(), MAX_MESSAGES)?;
        for m in &q.messages {
            c.ensure(m.mtype > 0 && m.text.len() <= MAX_MESSAGE, || {
                format!(
                    "ipc.msg {}: message type {} of {} bytes",
                    q.id,
                    m.mtype,
                    m.text.len()
                )
            })?;
        }
    }
    Ok(())
}

/// A queue name as the mqueue file system holds it (without the '/').
pub fn mq_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains(['/', '\0'])
        && name != "."
        && name != ".."
}

fn validate_mqueues(c: &Checker, qs: &[PosixQueue]) -> Result<()> {
    c.count("ipc.mqueues", qs.len(), MAX_IPC_OBJECTS)?;
    let mut seen = std::collections::HashSet::new();
    for q in qs {
        c.ensure(mq_name_ok(&q.name) && seen.insert(q.name.as_str()), || {
            format!("ipc.mqueues: name {:?} invalid or twice", q.name)
        })?;
        c.ensure(
            (1..=MQ_HARD_MSGMAX).contains(&q.maxmsg)
                && (1..=MQ_HARD_MSGSIZEMAX).contains(&q.msgsize)
                && q.mode <= 0o7777
                && q.messages.len() as i64 <= q.maxmsg,
            || {
                format!(
                    "ipc.mqueues /{}: maxmsg {}, msgsize {}, mode {:o}, {} messages",
                    q.name,
                    q.maxmsg,
                    q.msgsize,
                    q.mode,
                    q.messages.len()
                )
            },
        )?;
        let mut last = u32::MAX;
        for m in &q.messages {
            c.ensure(
                m.prio < MQ_PRIO_MAX && m.prio <= last && m.text.len() as i64 <= q.msgsize,
                || {
                    format!(
                        "ipc.mqueues /{}: message of priority {} ({} bytes) out of order or too big",
                        q.name,
                        m.prio,
                        m.text.len()
                    )
                },
            )?;
            last = m.prio;
        }
    }
    Ok(())
}
