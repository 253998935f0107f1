//! The tree's cgroup namespace. Its root in each hierarchy is the cgroup
//! its creator was in when it unshared, so the first process stasis forks
//! joins the saved roots, unshares (stasis_sys::cgroupns), and only then
//! is forked the rest of the tree, which inherits the namespace. Each
//! process is moved into its own cgroups afterwards, from outside, with
//! the others (cgroups.rs `Prepared::join`, after the seize; with a
//! namespace it also joins the cgroups it would otherwise have inherited
//! from stasis, since the root left them). The roots exist by then: they
//! are ancestors of the root's cgroups, which `cgroups::prepare` made.

use crate::cgroups::Prepared;
use crate::{RestoreError, Result, Stage};
use stasis_image::CgroupNs;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

/// The `cgroup.procs` files the first process writes itself to.
pub(crate) fn plan(
    ns: Option<&CgroupNs>,
    prepared: &Prepared,
    root_pid: u32,
) -> Result<Option<Vec<CString>>> {
    let Some(ns) = ns else { return Ok(None) };
    if prepared.ns_roots.len() != ns.roots.len() || ns.roots.is_empty() {
        return Err(RestoreError::Refused {
            pid: root_pid,
            stage: Stage::Preflight,
            what: "the tree's own cgroup namespace needs its cgroups (an image dumped and \
                   restored without --manage-cgroups=ignore)"
                .into(),
        });
    }
    let files = prepared
        .ns_roots
        .iter()
        .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| RestoreError::Refused {
            pid: root_pid,
            stage: Stage::Preflight,
            what: "a cgroup path holds a NUL".into(),
        })?;
    Ok(Some(files))
}
