//! libcriu.so.2 answered by stasis: the C calls of criu's client library
//! (include/criu/criu.h), for programs built against it such as crun.
//!
//! A `criu_opts` is a criu_opts RPC message being filled in by the setters,
//! plus how to reach the server (`stasis swrk` started as `criu` from PATH
//! or the binary named by `criu_set_service_binary`, a service socket, or
//! a socket the caller holds) and the notify callback. A request (dump,
//! restore, check, ...) sends the message once and returns criu's answer
//! as libcriu does: 0 or a PID on success, a negative errno on failure.
//! Nothing is judged here: stasis applies or refuses each option by name,
//! and writes why into the request's log file.

mod ffi;

use stasis_rpc::{Client, Features, Notify, Opts, Req, ReqType, Resp};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The notify callback: the action's name and what [`ffi::criu_notify_pid`]
/// reads; 0 lets the dump or restore go on.
pub type NotifyCb = unsafe extern "C" fn(*mut libc::c_char, *mut CriuNotify) -> libc::c_int;

/// What a notify callback gets (opaque to C: `criu_notify_arg_t`).
pub struct CriuNotify {
    pid: i32,
}

/// How a request reaches the server (criu_service_comm).
#[derive(Clone, Debug, PartialEq)]
pub enum Service {
    /// `BIN swrk FD` on a fresh socketpair; a name without `/` is looked
    /// up in PATH.
    Binary(PathBuf),
    /// A `service --address PATH` socket.
    Address(PathBuf),
    /// A socket the caller holds, already joined to a server.
    Fd(i32),
}

/// One set of options (C: `criu_opts`).
pub struct CriuOpts {
    pub rpc: Opts,
    pub service: Service,
    pub notify: Option<NotifyCb>,
}

impl Default for CriuOpts {
    fn default() -> CriuOpts {
        CriuOpts {
            rpc: Opts {
                images_dir_fd: -1,
                ..Opts::default()
            },
            service: Service::Binary("criu".into()),
            notify: None,
        }
    }
}

/// The features struct of criu.h (`struct criu_feature_check`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FeatureCheck {
    pub mem_track: bool,
    pub lazy_pages: bool,
    pub pidfd_store: bool,
}

/// A failure of the library itself: its errno and, for stderr, why.
fn fail(errno: i32, why: impl std::fmt::Display) -> i32 {
    eprintln!("libcriu (stasis): {why}");
    -errno
}

impl CriuOpts {
    fn connect(&self) -> Result<Client, i32> {
        match &self.service {
            Service::Binary(bin) => Client::swrk(bin).map_err(|e| fail(libc::ECOMM, e)),
            Service::Address(path) => Client::connect(path).map_err(|e| fail(libc::ECOMM, e)),
            Service::Fd(fd) => {
                // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor that only
                // the returned OwnedFd owns; the caller keeps its own.
                let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return Err(fail(libc::EBADF, format!("service fd {fd}: not open")));
                }
                // SAFETY: `dup` is a fresh descriptor owned by nobody else.
                Ok(Client::from_socket(unsafe {
                    <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup)
                }))
            }
        }
    }

    /// The request of type `ty` as it goes on the wire: the options (but
    /// for VERSION and FEATURE_CHECK, which take none) with notify_scripts
    /// set when there is a callback, and rst_sibling for restore_child.
    pub fn request(&self, ty: ReqType, features: Option<Features>) -> Req {
        let opts = match ty {
            ReqType::Version | ReqType::FeatureCheck => None,
            _ => {
                let mut o = self.rpc.clone();
                if self.notify.is_some() {
                    o.notify_scripts = Some(true);
                }
                Some(o)
            }
        };
        Req {
            r#type: ty as i32,
            opts,
            features,
            ..Req::default()
        }
    }

    /// Sends `req`, answering notifications through the callback, and
    /// returns the final response once the worker (if we started one) has
    /// exited; `Err(-errno)` when there was no valid response.
    pub fn call(&self, req: &Req) -> Result<Resp, i32> {
        let client = self.connect()?;
        let notify = self.notify;
        let r = client.call(req, |n: &Notify| match notify {
            None => true,
            Some(cb) => {
                let mut name: Vec<u8> = n.script.clone().unwrap_or_default().into_bytes();
                name.retain(|&b| b != 0);
                name.push(0);
                let mut arg = CriuNotify {
                    pid: n.pid.unwrap_or(0),
                };
                // SAFETY: the callback was registered by the C caller for
                // exactly this signature; both pointers live across it.
                unsafe { cb(name.as_mut_ptr().cast(), &mut arg) == 0 }
            }
        });
        let status = client.close();
        let resp = r.map_err(|e| fail(libc::ECOMM, e))?;
        if resp.r#type != req.r#type {
            return Err(fail(
                libc::EBADMSG,
                format!(
                    "answer of type {} to a request of type {}",
                    resp.r#type, req.r#type
                ),
            ));
        }
        if let Ok(Some(st)) = &status {
            if !st.success() && resp.success {
                return Err(fail(
                    libc::ECOMM,
                    format!("the criu worker answered success but exited with {st}"),
                ));
            }
        }
        Ok(resp)
    }

    /// A request whose only answer is success (CHECK, PRE_DUMP): 0 or
    /// -EBADE, as libcriu.
    fn simple(&self, ty: ReqType) -> i32 {
        match self.call(&self.request(ty, None)) {
            Ok(r) if r.success => 0,
            Ok(r) => failed(&r),
            Err(e) => e,
        }
    }

    pub fn check(&self) -> i32 {
        self.simple(ReqType::Check)
    }

    pub fn pre_dump(&self) -> i32 {
        self.simple(ReqType::PreDump)
    }

    /// 0, or 1 when the tree was restored after the dump (criu's
    /// `restored` flag).
    pub fn dump(&self) -> i32 {
        match self.call(&self.request(ReqType::Dump, None)) {
            Ok(r) if r.success => i32::from(r.dump.and_then(|d| d.restored) == Some(true)),
            Ok(r) => failed(&r),
            Err(e) => e,
        }
    }

    /// The PID of the restored root; `sibling`: it becomes our child
    /// (criu_restore_child), not the worker's.
    pub fn restore(&self, sibling: bool) -> i32 {
        let mut req = self.request(ReqType::Restore, None);
        if sibling {
            if let Some(o) = req.opts.as_mut() {
                o.rst_sibling = Some(true);
            }
        }
        match self.call(&req) {
            Ok(r) if r.success => match r.restore {
                Some(x) if x.pid > 0 => x.pid,
                _ => fail(libc::EBADMSG, "a RESTORE answer without the PID"),
            },
            Ok(r) => failed(&r),
            Err(e) => e,
        }
    }

    /// criu's version as one number: major * 10000 + minor * 100 +
    /// sublevel.
    pub fn version(&self) -> i32 {
        match self.call(&self.request(ReqType::Version, None)) {
            Ok(Resp {
                success: true,
                version: Some(v),
                ..
            }) => v.major_number * 10000 + v.minor_number * 100 + v.sublevel.unwrap_or(0),
            Ok(r) => failed(&r),
            Err(e) => e,
        }
    }

    /// 1 when the server is at least `minimum`, 0 when older.
    pub fn check_version(&self, minimum: i32) -> i32 {
        match self.version() {
            v if v < 0 => v,
            v => i32::from(v >= minimum),
        }
    }

    /// Each feature asked (true in `f`) answered; the others stay false.
    pub fn feature_check(&self, f: &mut FeatureCheck) -> i32 {
        let ask = |b: bool| b.then_some(true);
        let asked = Features {
            mem_track: ask(f.mem_track),
            lazy_pages: ask(f.lazy_pages),
            pidfd_store: ask(f.pidfd_store),
        };
        match self.call(&self.request(ReqType::FeatureCheck, Some(asked))) {
            Ok(r) if r.success => {
                let got = r.features.unwrap_or_default();
                f.mem_track &= got.mem_track == Some(true);
                f.lazy_pages &= got.lazy_pages == Some(true);
                f.pidfd_store &= got.pidfd_store == Some(true);
                0
            }
            Ok(r) => failed(&r),
            Err(e) => e,
        }
    }
}

/// A request the server answered with failure: libcriu's -EBADE (the
/// reason is in the request's log file; also on stderr here).
fn failed(r: &Resp) -> i32 {
    let kind = ReqType::try_from(r.r#type).map_or("?", |t| t.name());
    fail(
        libc::EBADE,
        format!(
            "criu {kind} failed (errno {}): {}",
            r.cr_errno.unwrap_or(0),
            r.cr_errmsg.as_deref().unwrap_or("no message")
        ),
    )
}

#[cfg(test)]
mod tests;
