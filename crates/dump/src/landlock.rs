//! Landlock domains. No interface shows a thread's domain, and nothing
//! could give one back as it was (the rules are not readable either), so
//! a thread in a domain is refused by name. Found by a witness process
//! ([`stasis_sys::landlock`]): the thread, by a remote call, compares
//! itself with it (kcmp, which needs ptrace read access to both); a domain
//! makes that EPERM. One witness serves every process of the dump with
//! the same user and PID namespaces and real ids.
//!
//! In a user namespace other than ours, the witness joins it and takes
//! the ids as that namespace numbers them (/proc/PID/uid_map). Not
//! probed: a thread whose real ids differ from its leader's (the witness
//! takes the leader's; such threads are refused anyway: checks.rs), and
//! a process whose ids its namespace does not map.

use crate::checks::refuse;
use crate::{At, Result, Stage};
use stasis_proc::Status;
use stasis_sys::landlock::{self, Witness};
use stasis_sys::remote::RemoteThread;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

/// kcmp(2): compare the address spaces.
const KCMP_VM: u64 = 1;

/// A witness for the threads of the processes of one kind.
pub(crate) struct Probe {
    /// Kept alive while the threads are probed.
    _witness: Witness,
    /// The witness's PID in the process's PID namespace.
    nspid: u64,
    ids: (u32, u32),
}

fn ns(pid: &str, kind: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .map(|m| m.ino())
        .ok()
}

/// User namespace, PID namespace (their inodes), real uid and gid.
type Key = (Option<u64>, Option<u64>, u32, u32);

/// The witnesses of one dump, one per user namespace, PID namespace and
/// real ids (a fork each: the processes of a tree mostly share one).
#[derive(Default)]
pub(crate) struct Witnesses {
    /// Landlock's state on this kernel, asked once.
    enabled: Option<bool>,
    by: HashMap<Key, Option<Probe>>,
}

impl Witnesses {
    /// The witness for process `pid` (None where Landlock is off or the
    /// process is not probed: see the module's comment).
    pub(crate) fn of(&mut self, pid: u32, status: &Status) -> Result<Option<&Probe>> {
        if !*self.enabled.get_or_insert_with(landlock::enabled) {
            return Ok(None);
        }
        let p = pid.to_string();
        let key = (
            ns(&p, "user"),
            ns(&p, "pid"),
            status.uids[0],
            status.gids[0],
        );
        if let std::collections::hash_map::Entry::Vacant(e) = self.by.entry(key) {
            e.insert(start(pid, status)?);
        }
        Ok(self.by.get(&key).and_then(Option::as_ref))
    }
}

/// A new witness for process `pid` (None: not probed).
fn start(pid: u32, status: &Status) -> Result<Option<Probe>> {
    let p = pid.to_string();
    let (mut uid, mut gid) = (status.uids[0], status.gids[0]);
    let userns = if ns(&p, "user") == ns("self", "user") {
        None
    } else {
        let inside = |map: &str, id: u32| -> Option<u32> {
            let text = std::fs::read_to_string(format!("/proc/{pid}/{map}")).ok()?;
            text.lines().find_map(|l| {
                let v: Vec<u32> = l
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                match v[..] {
                    [ins, out, n] if id >= out && id - out < n => Some(ins + (id - out)),
                    _ => None,
                }
            })
        };
        let (Some(u), Some(g)) = (inside("uid_map", uid), inside("gid_map", gid)) else {
            return Ok(None);
        };
        (uid, gid) = (u, g);
        Some(stasis_sys::sysvipc::open_ns(&format!("/proc/{pid}/ns/user")).at(pid, Stage::Query)?)
    };
    let pidns = if ns(&p, "pid") == ns("self", "pid") {
        None
    } else {
        Some(stasis_sys::sysvipc::open_ns(&format!("/proc/{pid}/ns/pid")).at(pid, Stage::Query)?)
    };
    let ids = (status.uids[0], status.gids[0]);
    let witness = landlock::witness(uid, gid, pidns, userns).at(pid, Stage::Query)?;
    let st = stasis_proc::read_status(witness.pid.0 as u32).at(pid, Stage::Query)?;
    let nspid = u64::from(st.ns_pid.last().copied().unwrap_or(witness.pid.0 as u32));
    Ok(Some(Probe {
        _witness: witness,
        nspid,
        ids,
    }))
}

/// Refuses thread `r.tid()` of `pid` (`self_nspid` in its own PID
/// namespace) if it is in a Landlock domain.
pub(crate) fn probe(r: &mut RemoteThread, (pid, self_nspid): (u32, u32), p: &Probe) -> Result<()> {
    let tid = r.tid();
    let st = Stage::Query;
    let ts = stasis_proc::read_status(tid.0 as u32).at(pid, st)?;
    if (ts.uids[0], ts.gids[0]) != p.ids {
        return Ok(());
    }
    // kcmp compares two processes only if the caller may ptrace-read both
    // (itself always): one call, nothing changed.
    let got = r.call(
        libc::SYS_kcmp,
        &[u64::from(self_nspid), p.nspid, KCMP_VM, 0, 0],
        "kcmp (Landlock probe)",
    );
    match got {
        Ok(_) => Ok(()),
        Err(e) if e.errno() == Some(libc::EPERM) => Err(refuse(
            pid,
            format!(
                "thread {} in a Landlock domain (landlock_restrict_self; its rules cannot be \
                 read, and a restored thread would run unrestricted)",
                tid.0
            ),
        )),
        Err(e) => Err(e).at(pid, st),
    }
}
