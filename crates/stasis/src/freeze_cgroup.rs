//! criu's `--freeze-cgroup CGROUP` (runc passes its container's freezer):
//! criu freezes that cgroup before it seizes the tree. stasis freezes the
//! tree itself with ptrace, which is the same only if every process of the
//! cgroup is in the tree; one that is not (a `runc exec` process, whose
//! parent is outside) would run on while its container is dumped, so it is
//! refused by name.

use anyhow::{bail, Context, Result};

/// The parent of `pid`, from /proc/PID/stat (None if it is gone).
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

/// Refuses if a process of cgroup `cg` is not `root` or a descendant. A
/// process that is gone by the time its parents are looked up (a child
/// of the tree that exited and was reaped meanwhile, such as a shell's
/// short command) runs on nowhere: it is passed over.
pub(crate) fn check(cg: &str, root: u32) -> Result<()> {
    let procs = std::fs::read_to_string(format!("{cg}/cgroup.procs"))
        .with_context(|| format!("dump pid {root}: --freeze-cgroup {cg}: read its cgroup.procs"))?;
    'procs: for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let mut p = pid;
        // A chain longer than the PID space is a loop: give up on it.
        for _ in 0..4_194_304 {
            if p == root || p <= 1 {
                break;
            }
            match ppid(p) {
                Some(parent) => p = parent,
                None => continue 'procs,
            }
        }
        if p != root {
            bail!(
                "dump pid {root}: --freeze-cgroup {cg}: process {pid} is in the cgroup but not in the \
                 tree; stasis freezes the tree, not the cgroup, so it would run on: not supported yet"
            );
        }
    }
    log::info!("--freeze-cgroup {cg}: every process of it is in the tree (frozen by ptrace)");
    Ok(())
}
