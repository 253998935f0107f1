//! The cgroup namespace of a tree, when the tree's root had one of its
//! own: in each hierarchy, the cgroup that is the namespace's root (what
//! its processes see as `/`). A restore makes the root process join those
//! cgroups, unshare a new cgroup namespace there, and then join its own.

use crate::cgroups::CgroupPath;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupNs {
    /// One per hierarchy the root was in, as seen from the dumper.
    pub roots: Vec<CgroupPath>,
}

impl CgroupNs {
    pub fn check(&self) -> Result<(), String> {
        if self.roots.len() > 64 {
            return Err("cgroup_ns.roots: more than 64 hierarchies".into());
        }
        self.roots.iter().try_for_each(CgroupPath::check)
    }
}
