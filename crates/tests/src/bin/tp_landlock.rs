//! Landlock test program.
//!
//! Usage: `tp_landlock WORKDIR [--thread] [--corrupt]`
//!
//! Puts itself (with `--thread`: a second thread only) in a Landlock
//! domain that handles making FIFOs (LANDLOCK_ACCESS_FS_MAKE_FIFO) and
//! allows it nowhere. Before ready and after go, the restricted thread
//! checks that mkfifo in WORKDIR fails with EACCES: a restore that lost
//! the domain would let it succeed. The dump must refuse it (docs/state.md).
//! `--corrupt`: no domain at all (the negative control: the check fails).

use stasis_tests::{Proto, Report};
use std::ffi::CString;

const MAKE_FIFO: u64 = 1 << 10;

fn restrict() -> Result<(), String> {
    // struct landlock_ruleset_attr: handled_access_fs, handled_access_net,
    // scoped.
    let attr: [u64; 3] = [MAKE_FIFO, 0, 0];
    // SAFETY: attr is a live buffer of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
            0,
        )
    };
    if fd < 0 {
        return Err(format!(
            "landlock_create_ruleset: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is the ruleset made above; restricts the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0) };
    // SAFETY: closes our own descriptor.
    unsafe { libc::close(fd as i32) };
    if r != 0 {
        return Err(format!(
            "landlock_restrict_self: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Whether this thread may not make a FIFO in `dir` (EACCES).
fn fifo_denied(dir: &std::path::Path, n: u32) -> Result<bool, String> {
    let p = dir.join(format!("fifo{n}"));
    let c = CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    if r == 0 {
        let _ = std::fs::remove_file(&p);
        return Ok(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EACCES) => Ok(true),
        e => Err(format!("mkfifo: errno {e:?}")),
    }
}

/// In the restricted thread: the domain, the check before and after.
fn checked(proto: &Proto, corrupt: bool) -> Result<(), String> {
    if !corrupt {
        restrict()?;
    }
    let before = fifo_denied(proto.dir(), 1)?;
    proto.ready_and_wait();
    let after = fifo_denied(proto.dir(), 2)?;
    if before && after {
        Ok(())
    } else {
        Err(format!(
            "making a FIFO denied by the domain: before {before}, after {after}"
        ))
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let corrupt = args.corrupt();
    let r = if args.flag("thread") {
        let p = &proto;
        std::thread::scope(|s| {
            s.spawn(move || checked(p, corrupt))
                .join()
                .unwrap_or_else(|_| Err("thread panicked".into()))
        })
    } else {
        checked(&proto, corrupt)
    };
    if let Err(e) = r {
        report.fail(e);
    }
    // The main thread, never restricted with --thread, may make one.
    if args.flag("thread") && !corrupt {
        report.check(fifo_denied(proto.dir(), 3) == Ok(false), || {
            "the main thread is restricted too".into()
        });
    }
    proto.finish(&report);
}
