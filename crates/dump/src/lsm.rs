//! LSM labels (SELinux, AppArmor, Smack): /proc/PID/attr/*. A restored
//! process would carry the restorer's label, so a label that differs from
//! ours, or a label set for the next exec or for new files, sockets or
//! keys, is refused by name (criu's `--lsm-profile` is not supported yet).
//! Where no LSM offers these files (reading fails), there is nothing to
//! save.

use crate::checks::refuse;
use crate::Result;

fn attr(task: &str, name: &str) -> Option<String> {
    let v = std::fs::read(format!("/proc/{task}/attr/{name}")).ok()?;
    let s = String::from_utf8_lossy(&v)
        .trim_end_matches(['\n', '\0'])
        .to_owned();
    Some(s)
}

pub(crate) fn check(pid: u32) -> Result<()> {
    let task = pid.to_string();
    let Some(current) = attr(&task, "current") else {
        return Ok(());
    };
    let ours = attr("self", "current").unwrap_or_default();
    if current != ours {
        return Err(refuse(
            pid,
            format!("LSM label {current:?} (ours is {ours:?}): LSM labels are not restored yet"),
        ));
    }
    for name in ["exec", "fscreate", "keycreate", "sockcreate"] {
        if let Some(v) = attr(&task, name).filter(|v| !v.is_empty()) {
            return Err(refuse(
                pid,
                format!("LSM {name} label {v:?}: LSM labels are not restored yet"),
            ));
        }
    }
    Ok(())
}
