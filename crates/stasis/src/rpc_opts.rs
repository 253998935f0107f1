//! criu_opts as criu's command-line options: every field set in a request
//! becomes the option of the same meaning in `criu::OPTIONS`, so an RPC
//! request is judged exactly like the command line (applied, accepted with
//! a note, or refused naming the field). Fields without a command-line
//! twin are handled here: descriptors of the client, notifications, and
//! the RPC-only ones stasis refuses by name.

use crate::criu::{self, Given};
use anyhow::{anyhow, bail, Context, Result};
use stasis_rpc::{CgMode, NetworkLock, Opts, PreDumpMode};
use std::path::PathBuf;

/// One field of criu_opts and the option it stands for.
pub struct Field {
    /// The criu_opts field's name (named in refusals).
    pub rpc: &'static str,
    pub given: Given,
}

fn opt(long: &str) -> &'static criu::Opt {
    criu::OPTIONS
        .iter()
        .find(|o| o.long == long)
        .unwrap_or_else(|| unreachable!("criu option --{long} is in the table"))
}

struct Fields(Vec<Field>);

impl Fields {
    fn push(&mut self, rpc: &'static str, long: &str, value: Option<String>) {
        self.0.push(Field {
            rpc,
            given: Given {
                opt: opt(long),
                negated: false,
                value,
            },
        });
    }

    /// A boolean field: set and true is the option; false is criu's default.
    fn flag(&mut self, rpc: &'static str, long: &str, v: Option<bool>) {
        if v == Some(true) {
            self.push(rpc, long, None);
        }
    }

    fn value<T: ToString>(&mut self, rpc: &'static str, long: &str, v: &Option<T>) {
        if let Some(v) = v {
            self.push(rpc, long, Some(v.to_string()));
        }
    }

    fn values<T: ToString>(&mut self, rpc: &'static str, long: &str, vs: &[T]) {
        for v in vs {
            self.push(rpc, long, Some(v.to_string()));
        }
    }
}

/// The fields of `o` that map to command-line options, in field order.
/// Descriptors (images_dir_fd, work_dir_fd), pid, log_level, log_file and
/// notify_scripts are read by the caller.
pub fn fields(o: &Opts) -> Result<Vec<Field>> {
    let mut f = Fields(Vec::new());
    f.flag("leave_running", "leave-running", o.leave_running);
    f.flag("ext_unix_sk", "ext-unix-sk", o.ext_unix_sk);
    f.flag("tcp_established", "tcp-established", o.tcp_established);
    f.flag("evasive_devices", "evasive-devices", o.evasive_devices);
    f.flag("shell_job", "shell-job", o.shell_job);
    f.flag("file_locks", "file-locks", o.file_locks);
    if let Some(ps) = &o.ps {
        // Dump: send the image there (with lazy_pages: serve its pages
        // there, criu's `dump --lazy-pages --address --port`);
        // PAGE_SERVER: listen there.
        if o.lazy_pages != Some(true) {
            f.push("ps", "page-server", None);
        }
        f.value("ps.address", "address", &ps.address);
        f.value("ps.port", "port", &ps.port.filter(|p| *p != 0));
    }
    f.value("root", "root", &o.root);
    f.value("parent_img", "prev-images-dir", &o.parent_img);
    f.flag("track_mem", "track-mem", o.track_mem);
    f.flag("auto_dedup", "auto-dedup", o.auto_dedup);
    f.flag("link_remap", "link-remap", o.link_remap);
    for v in &o.veths {
        f.push("veths", "veth-pair", Some(format!("{}={}", v.key, v.val)));
    }
    if o.cpu_cap.is_some() {
        // A bit mask here, names on the command line: either way stasis
        // checks the XSAVE layout of every image against this CPU.
        f.push("cpu_cap", "cpu-cap", None);
    }
    f.flag("force_irmap", "force-irmap", o.force_irmap);
    if !o.exec_cmd.is_empty() {
        f.push("exec_cmd", "exec-cmd", None);
    }
    for m in &o.ext_mnt {
        f.push(
            "ext_mnt",
            "ext-mount-map",
            Some(format!("{}:{}", m.key, m.val)),
        );
    }
    // The old boolean: true is criu's default mode (soft), false ignore.
    match (o.manage_cgroups, o.manage_cgroups_mode) {
        (Some(true), None) => f.push("manage_cgroups", "manage-cgroups", None),
        (Some(false), None) => f.push("manage_cgroups", "manage-cgroups", Some("ignore".into())),
        _ => {}
    }
    for c in &o.cg_root {
        let v = match &c.ctrl {
            Some(ctrl) => format!("{ctrl}:{}", c.path),
            None => c.path.clone(),
        };
        f.push("cg_root", "cgroup-root", Some(v));
    }
    f.flag("rst_sibling", "restore-sibling", o.rst_sibling);
    for i in &o.inherit_fd {
        f.push(
            "inherit_fd",
            "inherit-fd",
            Some(format!("fd[{}]:{}", i.fd, i.key)),
        );
    }
    if o.auto_ext_mnt == Some(true) {
        f.push("auto_ext_mnt", "ext-mount-map", Some("auto".into()));
    }
    f.flag("ext_sharing", "enable-external-sharing", o.ext_sharing);
    f.flag("ext_masters", "enable-external-masters", o.ext_masters);
    f.values("skip_mnt", "skip-mnt", &o.skip_mnt);
    f.values("enable_fs", "enable-fs", &o.enable_fs);
    for u in &o.unix_sk_ino {
        f.push(
            "unix_sk_ino",
            "external",
            Some(format!("unix[{}]", u.inode)),
        );
    }
    if let Some(m) = o.manage_cgroups_mode {
        let name = match CgMode::try_from(m) {
            Ok(CgMode::Ignore) => "ignore",
            Ok(CgMode::CgNone) => "none",
            Ok(CgMode::Props) => "props",
            Ok(CgMode::Soft | CgMode::Default) => "soft",
            Ok(CgMode::Full) => "full",
            Ok(CgMode::Strict) => "strict",
            Err(_) => bail!("criu_opts.manage_cgroups_mode: unknown mode {m}"),
        };
        f.push("manage_cgroups_mode", "manage-cgroups", Some(name.into()));
    }
    f.value("ghost_limit", "ghost-limit", &o.ghost_limit);
    f.values("irmap_scan_paths", "irmap-scan-path", &o.irmap_scan_paths);
    f.values("external", "external", &o.external);
    if o.empty_ns.is_some_and(|n| n != 0) {
        f.push("empty_ns", "empty-ns", Some("net".into()));
    }
    for j in &o.join_ns {
        f.push(
            "join_ns",
            "join-ns",
            Some(format!("{}:{}", j.ns, j.ns_file)),
        );
    }
    f.value("cgroup_props", "cgroup-props", &o.cgroup_props);
    f.value(
        "cgroup_props_file",
        "cgroup-props-file",
        &o.cgroup_props_file,
    );
    f.values(
        "cgroup_dump_controller",
        "cgroup-dump-controller",
        &o.cgroup_dump_controller,
    );
    f.value("freeze_cgroup", "freeze-cgroup", &o.freeze_cgroup);
    f.value("timeout", "timeout", &o.timeout.filter(|t| *t != 0));
    f.flag("tcp_skip_in_flight", "skip-in-flight", o.tcp_skip_in_flight);
    f.flag("weak_sysctls", "weak-sysctls", o.weak_sysctls);
    f.flag("lazy_pages", "lazy-pages", o.lazy_pages);
    f.value("status_fd", "status-fd", &o.status_fd);
    f.value("config_file", "config", &o.config_file);
    f.flag("tcp_close", "tcp-close", o.tcp_close);
    f.value("lsm_profile", "lsm-profile", &o.lsm_profile);
    f.value("tls_cacert", "tls-cacert", &o.tls_cacert);
    f.value("tls_cacrl", "tls-cacrl", &o.tls_cacrl);
    f.value("tls_cert", "tls-cert", &o.tls_cert);
    f.value("tls_key", "tls-key", &o.tls_key);
    f.flag("tls", "tls", o.tls);
    f.flag("tls_no_cn_verify", "tls-no-cn-verify", o.tls_no_cn_verify);
    f.value("cgroup_yard", "cgroup-yard", &o.cgroup_yard);
    if let Some(m) = o.pre_dump_mode {
        let name = match PreDumpMode::try_from(m) {
            Ok(PreDumpMode::Splice) => "splice",
            Ok(PreDumpMode::VmRead) => "read",
            Err(_) => bail!("criu_opts.pre_dump_mode: unknown mode {m}"),
        };
        f.push("pre_dump_mode", "pre-dump-mode", Some(name.into()));
    }
    f.value(
        "lsm_mount_context",
        "lsm-mount-context",
        &o.lsm_mount_context,
    );
    if let Some(m) = o.network_lock {
        let name = match NetworkLock::try_from(m) {
            Ok(NetworkLock::Iptables) => "iptables",
            Ok(NetworkLock::Nftables) => "nftables",
            Ok(NetworkLock::Skip) => "skip",
            Err(_) => bail!("criu_opts.network_lock: unknown method {m}"),
        };
        f.push("network_lock", "network-lock", Some(name.into()));
    }
    f.flag(
        "mntns_compat_mode",
        "mntns-compat-mode",
        o.mntns_compat_mode,
    );
    f.flag(
        "skip_file_rwx_check",
        "skip-file-rwx-check",
        o.skip_file_rwx_check,
    );
    f.flag("unprivileged", "unprivileged", o.unprivileged);
    Ok(f.0)
}

/// criu_opts fields that have no command-line twin and that stasis does
/// not implement: refused by name when set.
/// (orphan_pts_master, which runc always sets, asks for the master of a
/// pty whose master was outside the tree; stasis refuses such a pty at the
/// dump, so it changes nothing: see [`notes_rpc_only`].)
pub fn refused_rpc_only(o: &Opts) -> Option<&'static str> {
    if o.pidfd_store_sk.is_some() {
        return Some("pidfd_store_sk");
    }
    // criu's --ps-socket: a socket already connected to the page server.
    if o.ps.as_ref().is_some_and(|p| p.fd.is_some()) {
        return Some("ps.fd");
    }
    None
}

/// Notes for the log on criu_opts fields without a command-line twin that
/// are accepted because they change nothing here.
pub fn notes_rpc_only(o: &Opts) -> Vec<String> {
    let mut v = Vec::new();
    if o.orphan_pts_master == Some(true) {
        v.push(
            "criu_opts.orphan_pts_master: accepted; a pty whose master is outside the tree is \
             refused at the dump, so there is no orphan master to hand back"
                .into(),
        );
    }
    v
}

/// The path behind descriptor `fd` of the client `peer` (criu reads the
/// client's images_dir_fd and work_dir_fd through /proc the same way).
pub fn client_dir(peer: i32, fd: i32, field: &str) -> Result<PathBuf> {
    if fd < 0 {
        bail!("criu_opts.{field}: {fd} is not a descriptor");
    }
    let link = format!("/proc/{peer}/fd/{fd}");
    let path = std::fs::read_link(&link)
        .with_context(|| format!("criu_opts.{field}: descriptor {fd} of the client {peer}"))?;
    if !path.is_dir() {
        return Err(anyhow!(
            "criu_opts.{field}: descriptor {fd} of the client ({}) is not a directory",
            path.display()
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use stasis_rpc::{CgroupRoot, InheritFd, JoinNamespace, KeyVal, PageServerInfo, UnixSk};

    /// Every criu_opts field set at once.
    fn everything() -> Opts {
        let s = || Some("x".to_string());
        let kv = || KeyVal {
            key: "k".into(),
            val: "v".into(),
        };
        Opts {
            images_dir_fd: 3,
            pid: Some(1),
            leave_running: Some(true),
            ext_unix_sk: Some(true),
            tcp_established: Some(true),
            evasive_devices: Some(true),
            shell_job: Some(true),
            file_locks: Some(true),
            log_level: Some(4),
            log_file: s(),
            ps: Some(PageServerInfo::default()),
            notify_scripts: Some(true),
            root: s(),
            parent_img: s(),
            track_mem: Some(true),
            auto_dedup: Some(true),
            work_dir_fd: Some(3),
            link_remap: Some(true),
            veths: vec![kv()],
            cpu_cap: Some(1),
            force_irmap: Some(true),
            exec_cmd: vec!["x".into()],
            ext_mnt: vec![kv()],
            manage_cgroups: Some(true),
            cg_root: vec![CgroupRoot {
                ctrl: None,
                path: "/".into(),
            }],
            rst_sibling: Some(true),
            inherit_fd: vec![InheritFd {
                key: "k".into(),
                fd: 3,
            }],
            auto_ext_mnt: Some(true),
            ext_sharing: Some(true),
            ext_masters: Some(true),
            skip_mnt: vec!["/m".into()],
            enable_fs: vec!["nfs".into()],
            unix_sk_ino: vec![UnixSk { inode: 1 }],
            manage_cgroups_mode: Some(CgMode::Soft as i32),
            ghost_limit: Some(1),
            irmap_scan_paths: vec!["/".into()],
            external: vec!["x".into()],
            empty_ns: Some(1),
            join_ns: vec![JoinNamespace {
                ns: "net".into(),
                ns_file: "/f".into(),
                extra_opt: None,
            }],
            cgroup_props: s(),
            cgroup_props_file: s(),
            cgroup_dump_controller: vec!["cpu".into()],
            freeze_cgroup: s(),
            timeout: Some(1),
            tcp_skip_in_flight: Some(true),
            weak_sysctls: Some(true),
            lazy_pages: Some(true),
            status_fd: Some(1),
            orphan_pts_master: Some(true),
            config_file: s(),
            tcp_close: Some(true),
            lsm_profile: s(),
            tls_cacert: s(),
            tls_cacrl: s(),
            tls_cert: s(),
            tls_key: s(),
            tls: Some(true),
            tls_no_cn_verify: Some(true),
            cgroup_yard: s(),
            pre_dump_mode: Some(PreDumpMode::VmRead as i32),
            pidfd_store_sk: Some(1),
            lsm_mount_context: s(),
            network_lock: Some(NetworkLock::Skip as i32),
            mntns_compat_mode: Some(true),
            skip_file_rwx_check: Some(true),
            unprivileged: Some(true),
        }
    }

    /// Every field of criu_opts has a home: a command-line option (and so
    /// the table's fate), the caller (descriptors, pid, log, notify), or
    /// a refusal by name. None is dropped.
    #[test]
    fn every_field_has_a_fate() {
        let o = everything();
        let numbers: Vec<u32> = stasis_rpc::wire::fields(&o.encode_to_vec())
            .expect("fields")
            .iter()
            .map(|f| f.0)
            .collect();
        let want: Vec<u32> = Opts::KNOWN_FIELDS.filter(|n| *n != 40).collect();
        let mut got = numbers.clone();
        got.dedup();
        assert_eq!(got, want, "the test sets every field");
        // (With lazy_pages, ps is where the pages are served: no
        // --page-server; without, it is.)
        let eager = Opts {
            lazy_pages: None,
            ..o.clone()
        };
        let mapped: std::collections::BTreeSet<&str> = fields(&o)
            .expect("fields")
            .iter()
            .chain(fields(&eager).expect("fields").iter())
            .map(|f| f.rpc)
            .collect();
        let by_caller = [
            "images_dir_fd",
            "pid",
            "log_level",
            "log_file",
            "notify_scripts",
            "work_dir_fd",
            // With manage_cgroups_mode set, the mode speaks for both.
            "manage_cgroups",
        ];
        let refused = ["orphan_pts_master", "pidfd_store_sk"];
        assert_eq!(refused_rpc_only(&o), Some("pidfd_store_sk"));
        assert_eq!(notes_rpc_only(&o).len(), 1);
        assert_eq!(
            mapped.len() + by_caller.len() + refused.len(),
            want.len(),
            "mapped: {mapped:?}"
        );
        let alone = Opts {
            manage_cgroups: Some(true),
            ..Opts::default()
        };
        assert_eq!(fields(&alone).expect("fields")[0].rpc, "manage_cgroups");
    }
}
