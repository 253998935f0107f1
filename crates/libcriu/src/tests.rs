//! The setters against the criu_opts message they fill in.

use crate::ffi::*;
use crate::{CriuOpts, FeatureCheck, Service};
use stasis_rpc::{InheritFd, KeyVal, ReqType};
use std::ffi::CString;

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// A fresh local set, filled in by `f`, read back.
fn filled(f: impl FnOnce(*mut CriuOpts)) -> CriuOpts {
    let mut p = std::ptr::null_mut();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { criu_local_init_opts(&mut p) }, 0);
    f(p);
    // SAFETY: `p` came from criu_local_init_opts and is freed once.
    let b = unsafe { Box::from_raw(p) };
    *b
}

#[test]
fn crun_dump_options_map_to_criu_opts() {
    let (log, root, fz, mnt, ext) = (
        c("dump.log"),
        c("/b/rootfs"),
        c("/sys/fs/cgroup/x"),
        c("/proc/kcore"),
        c("net[4026531840]:extRootNetNS"),
    );
    // SAFETY: live set, valid C strings (crun's dump calls, in its order).
    let o = filled(|p| unsafe {
        criu_local_set_images_dir_fd(p, 7);
        criu_local_set_log_level(p, 4);
        assert_eq!(criu_local_set_log_file(p, log.as_ptr()), 0);
        criu_local_set_pid(p, 1234);
        criu_local_set_work_dir_fd(p, 8);
        assert_eq!(criu_local_set_root(p, root.as_ptr()), 0);
        assert_eq!(criu_local_add_ext_mount(p, mnt.as_ptr(), mnt.as_ptr()), 0);
        assert_eq!(criu_local_add_external(p, ext.as_ptr()), 0);
        assert_eq!(criu_local_set_freeze_cgroup(p, fz.as_ptr()), 0);
        criu_local_set_leave_running(p, true);
        criu_local_set_ext_unix_sk(p, false);
        criu_local_set_shell_job(p, false);
        criu_local_set_tcp_established(p, true);
        criu_local_set_file_locks(p, false);
        criu_local_set_orphan_pts_master(p, true);
        criu_local_set_manage_cgroups_mode(p, 3);
        criu_local_set_manage_cgroups(p, true);
    });
    let r = &o.rpc;
    assert_eq!(r.images_dir_fd, 7);
    assert_eq!(r.work_dir_fd, Some(8));
    assert_eq!(r.log_level, Some(4));
    assert_eq!(r.log_file.as_deref(), Some("dump.log"));
    assert_eq!(r.pid, Some(1234));
    assert_eq!(r.root.as_deref(), Some("/b/rootfs"));
    assert_eq!(
        r.ext_mnt,
        [KeyVal {
            key: "/proc/kcore".into(),
            val: "/proc/kcore".into()
        }]
    );
    assert_eq!(r.external, ["net[4026531840]:extRootNetNS"]);
    assert_eq!(r.freeze_cgroup.as_deref(), Some("/sys/fs/cgroup/x"));
    assert_eq!(r.leave_running, Some(true));
    assert_eq!(r.ext_unix_sk, Some(false));
    assert_eq!(r.tcp_established, Some(true));
    assert_eq!(r.orphan_pts_master, Some(true));
    assert_eq!(r.manage_cgroups_mode, Some(3));
    assert_eq!(r.manage_cgroups, Some(true));
    // Not set: not sent.
    assert_eq!(r.track_mem, None);
    assert_eq!(r.parent_img, None);
    let req = o.request(ReqType::Dump, None);
    assert_eq!(req.r#type, ReqType::Dump as i32);
    assert_eq!(req.opts.as_ref(), Some(r));
    assert_eq!(o.service, Service::Binary("criu".into()));
}

unsafe extern "C" fn cb(_: *mut libc::c_char, _: *mut crate::CriuNotify) -> libc::c_int {
    0
}

#[test]
fn restore_options_notify_and_service() {
    let (key, bin) = (c("pipe:[1234]"), c("/usr/local/bin/stasis"));
    // SAFETY: live set, valid C strings.
    let o = filled(|p| unsafe {
        assert_eq!(criu_local_add_inherit_fd(p, 1, key.as_ptr()), 0);
        criu_local_set_notify_cb(p, Some(cb));
        assert_eq!(criu_local_set_service_binary(p, bin.as_ptr()), 0);
    });
    assert_eq!(
        o.rpc.inherit_fd,
        [InheritFd {
            key: "pipe:[1234]".into(),
            fd: 1
        }]
    );
    assert_eq!(o.service, Service::Binary("/usr/local/bin/stasis".into()));
    let req = o.request(ReqType::Restore, None);
    let opts = req.opts.expect("opts");
    assert_eq!(opts.notify_scripts, Some(true));
    // VERSION and FEATURE_CHECK carry no options.
    assert!(o.request(ReqType::Version, None).opts.is_none());
    assert!(o.request(ReqType::FeatureCheck, None).opts.is_none());
}

#[test]
fn bad_arguments_are_refused() {
    // SAFETY: null strings and out-of-range enums, on a live set.
    let o = filled(|p| unsafe {
        assert_eq!(criu_local_set_root(p, std::ptr::null()), -libc::EINVAL);
        assert_eq!(
            criu_local_add_ext_mount(p, std::ptr::null(), std::ptr::null()),
            -libc::EINVAL
        );
        assert_eq!(criu_local_set_pre_dump_mode(p, 9), -libc::EINVAL);
        assert_eq!(criu_local_set_network_lock(p, 0), -libc::EINVAL);
        assert_eq!(criu_local_set_network_lock(p, 2), 0);
    });
    assert_eq!(o.rpc.root, None);
    assert!(o.rpc.ext_mnt.is_empty());
    assert_eq!(o.rpc.pre_dump_mode, None);
    assert_eq!(o.rpc.network_lock, Some(2));
    // A null set: setters do nothing, requests say EINVAL.
    // SAFETY: null is allowed.
    unsafe {
        criu_local_set_pid(std::ptr::null_mut(), 1);
        assert_eq!(criu_local_dump(std::ptr::null_mut()), -libc::EINVAL);
        let mut f = FeatureCheck::default();
        assert_eq!(
            criu_local_feature_check(std::ptr::null_mut(), &mut f, 64),
            -libc::EINVAL
        );
    }
}

#[test]
fn global_set_follows_init_and_free() {
    let root = c("/r");
    criu_free_opts();
    // SAFETY: the process-wide set, null then live.
    unsafe {
        assert_eq!(criu_set_root(root.as_ptr()), -libc::EINVAL);
        assert_eq!(criu_dump(), -libc::EINVAL);
        assert_eq!(criu_init_opts(), 0);
        assert_eq!(criu_set_root(root.as_ptr()), 0);
    }
    criu_free_opts();
}

#[test]
fn an_unstartable_worker_is_a_comm_error() {
    let bin = c("/nonexistent/criu");
    // SAFETY: live set, valid C string.
    let o = filled(|p| unsafe {
        criu_local_set_service_binary(p, bin.as_ptr());
    });
    assert_eq!(o.check(), -libc::ECOMM);
    assert_eq!(o.check_version(1), -libc::ECOMM);
}
