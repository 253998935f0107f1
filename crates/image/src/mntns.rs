//! The mount namespace of a tree, when the whole tree shared one that was
//! not the dumper's: every mount as the root saw it (parents before
//! children), and how a restore makes it again (a bind of a host path,
//! a fresh pseudo filesystem, or a tmpfs with its saved contents).

use serde::{Deserialize, Serialize};

/// Most mounts a namespace may list.
pub const MAX_MOUNTS: usize = 10_000;
/// Most bytes of file contents all tmpfs mounts of an image may hold.
pub const MAX_TMPFS_BYTES: u64 = 32 << 20;
/// Most entries (files, directories, ...) all tmpfs mounts may hold.
pub const MAX_TMPFS_ENTRIES: usize = 100_000;

/// Per-mount flags, as `mount_setattr`'s MOUNT_ATTR_* bits.
pub const ATTR_RDONLY: u64 = 0x1;
pub const ATTR_NOSUID: u64 = 0x2;
pub const ATTR_NODEV: u64 = 0x4;
pub const ATTR_NOEXEC: u64 = 0x8;
pub const ATTR_NOATIME: u64 = 0x10;
pub const ATTR_STRICTATIME: u64 = 0x20;
pub const ATTR_NODIRATIME: u64 = 0x80;
pub const ATTR_NOSYMFOLLOW: u64 = 0x20_0000;
/// Every bit above.
pub const ATTR_ALL: u64 = 0x20_00bf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountNs {
    /// Parents before children, in the order the namespace listed them
    /// (so mounts stacked on one mount point stack again the same way).
    pub mounts: Vec<Mount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The mount's id in the dumped namespace, and its parent's (the
    /// root's parent is not in the list).
    pub id: u32,
    pub parent: u32,
    /// Where it is mounted, relative to the tree root's root directory.
    pub mount_point: String,
    /// The directory of its filesystem it shows (a bind mount's source).
    pub root: String,
    pub fs_type: String,
    pub source: String,
    /// MOUNT_ATTR_* bits ([`ATTR_RDONLY`], ...); relatime is 0.
    pub attrs: u64,
    /// Superblock options (`size=1024k,mode=755`), "rw"/"ro" removed.
    pub super_options: String,
    /// `st_dev` of its filesystem at the dump (major, minor).
    pub dev: (u32, u32),
    /// Peer group when shared (0: not shared).
    #[serde(default)]
    pub shared: u32,
    #[serde(default)]
    pub unbindable: bool,
    pub how: MountHow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountHow {
    /// The same filesystem and directory as a mount of the dumper's
    /// namespace (criu's external mounts): bound again from `host_path`,
    /// or from what `--ext-mount-map KEY:PATH` (or `--root`, for the root
    /// mount) names.
    External { key: String, host_path: String },
    /// A pseudo filesystem (proc, sysfs, devpts, mqueue, cgroup, cgroup2)
    /// mounted anew with its options.
    Fresh,
    /// A tmpfs mounted anew with its options and filled with `entries`.
    Tmpfs { entries: Vec<TmpfsEntry> },
    /// A second mount of a filesystem of the namespace's own: a bind of
    /// directory or file `root` (relative, "" for its root) of the
    /// earlier mount `of` (runc's read-only binds of /proc/sys, ...).
    Bind { of: u32, root: String },
    /// A filesystem on a block device the caller named external at the
    /// dump (criu's `--external dev[MAJOR/MINOR]:NAME`): mounted anew with
    /// its options from the device `--external dev[NAME]:DEVPATH` names
    /// at restore.
    Device { name: String },
}

/// One file of a saved tmpfs, parents before children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsEntry {
    /// Relative to the mount's root ("" is the root directory itself).
    pub path: String,
    /// st_mode: the type bits say what it is (dir, file, symlink, char or
    /// block device, fifo).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// A regular file's contents.
    #[serde(
        default,
        with = "crate::hex_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub data: Vec<u8>,
}

impl MountNs {
    /// Checks counts, sizes, that every parent comes before its children
    /// and that paths are absolute (mount points) or relative and without
    /// `..` (tmpfs entries).
    pub fn check(&self) -> Result<(), String> {
        if self.mounts.is_empty() || self.mounts.len() > MAX_MOUNTS {
            return Err(format!(
                "mntns.mounts: {} mounts (1..={MAX_MOUNTS})",
                self.mounts.len()
            ));
        }
        let (mut bytes, mut entries) = (0u64, 0usize);
        for (i, m) in self.mounts.iter().enumerate() {
            let w = |what: &str| format!("mntns.mounts[{i}] ({}): {what}", m.mount_point);
            if !m.mount_point.starts_with('/') || m.mount_point.split('/').any(|c| c == "..") {
                return Err(w("mount point not absolute or with .."));
            }
            if i > 0 && !self.mounts[..i].iter().any(|p| p.id == m.parent) {
                return Err(w("parent not listed before it"));
            }
            if let MountHow::Bind { of, root } = &m.how {
                if !self.mounts[..i].iter().any(|p| p.id == *of) {
                    return Err(w("bind of a mount not listed before it"));
                }
                if root.starts_with('/') || root.split('/').any(|c| c == "..") {
                    return Err(w("bind root not a plain relative path"));
                }
            }
            if matches!(&m.how, MountHow::Device { name } if name.is_empty()) {
                return Err(w("external device without a name"));
            }
            if m.attrs & !ATTR_ALL != 0 {
                return Err(w("unknown attribute bits"));
            }
            if let MountHow::Tmpfs { entries: e } = &m.how {
                for t in e {
                    if t.path.starts_with('/') || t.path.split('/').any(|c| c == "..") {
                        return Err(w(&format!(
                            "tmpfs entry {:?}: not a plain relative path",
                            t.path
                        )));
                    }
                    bytes += t.data.len() as u64;
                }
                entries += e.len();
            }
        }
        if bytes > MAX_TMPFS_BYTES || entries > MAX_TMPFS_ENTRIES {
            return Err(format!(
                "mntns: tmpfs contents of {bytes} bytes in {entries} entries \
                 (at most {MAX_TMPFS_BYTES} bytes, {MAX_TMPFS_ENTRIES} entries)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(id: u32, parent: u32, at: &str, how: MountHow) -> Mount {
        Mount {
            id,
            parent,
            mount_point: at.into(),
            root: "/".into(),
            fs_type: "tmpfs".into(),
            source: "none".into(),
            attrs: 0,
            super_options: String::new(),
            dev: (0, 1),
            shared: 0,
            unbindable: false,
            how,
        }
    }

    fn entry(path: &str, data: usize) -> TmpfsEntry {
        TmpfsEntry {
            path: path.into(),
            mode: 0o100644,
            uid: 0,
            gid: 0,
            rdev: 0,
            atime: (0, 0),
            mtime: (0, 0),
            target: String::new(),
            data: vec![0; data],
        }
    }

    #[test]
    fn checks_order_paths_and_caps() {
        let ok = MountNs {
            mounts: vec![
                mount(1, 0, "/", MountHow::Fresh),
                mount(2, 1, "/t", MountHow::Fresh),
            ],
        };
        assert!(ok.check().is_ok());
        let mut bad = ok.clone();
        bad.mounts.swap(0, 1);
        assert!(bad.check().unwrap_err().contains("parent"));
        let mut bad = ok.clone();
        bad.mounts[1].mount_point = "/a/../b".into();
        assert!(bad.check().is_err());
        let mut bad = ok.clone();
        bad.mounts[1].how = MountHow::Bind {
            of: 2,
            root: "sys".into(),
        };
        assert!(bad.check().unwrap_err().contains("bind of"));
        bad.mounts[1].how = MountHow::Bind {
            of: 1,
            root: "../sys".into(),
        };
        assert!(bad.check().is_err());
        let mut bad = ok.clone();
        bad.mounts[1].attrs = 0x40;
        assert!(bad.check().unwrap_err().contains("attribute"));
        let mut bad = ok.clone();
        bad.mounts[1].how = MountHow::Tmpfs {
            entries: vec![entry("../x", 0)],
        };
        assert!(bad.check().is_err());
        let mut big = ok;
        big.mounts[1].how = MountHow::Tmpfs {
            entries: vec![entry("a", MAX_TMPFS_BYTES as usize + 1)],
        };
        assert!(big.check().unwrap_err().contains("at most"));
        assert!(MountNs { mounts: vec![] }.check().is_err());
    }
}
