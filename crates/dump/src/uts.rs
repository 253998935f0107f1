//! The tree's UTS namespace: when the root has one of its own (every
//! process shares it, see checks.rs), its host and domain names are saved
//! and a restore makes a new namespace with them.

use crate::{At, Result, Stage};
use stasis_image::UtsNs;
use stasis_sys::{util, Pid};
use std::os::unix::fs::MetadataExt;

fn ns_ino(task: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{task}/ns/uts"))
        .ok()
        .map(|m| m.ino())
}

/// The root's UTS namespace names, if it is not stasis's own.
pub(crate) fn collect(root: Pid) -> Result<Option<UtsNs>> {
    if ns_ino(&root.0.to_string()) == ns_ino("self") {
        return Ok(None);
    }
    let p = root.0 as u32;
    let (hostname, domainname) = util::uts_names_of(root).at(p, Stage::Collect)?;
    Ok(Some(UtsNs {
        hostname,
        domainname,
    }))
}
