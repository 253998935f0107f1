//! tp_fanotify: fanotify groups and their inode marks survive
//! checkpoint/restore.
//!
//! Usage: `tp_fanotify WORKDIR [--corrupt] [--mounts] [--refuse queued|perm]`
//!
//! Group 1 (FAN_CLASS_NOTIF, FAN_NONBLOCK, event flags O_RDONLY|O_LARGEFILE)
//! marks WORK/fan/a for FAN_OPEN, FAN_MODIFY and FAN_CLOSE_WRITE with
//! FAN_OPEN in its ignore mask (surviving modification). Group 2
//! (FAN_REPORT_FID, blocking) marks the directory WORK/fan for FAN_CREATE
//! and FAN_DELETE (FAN_ONDIR). After go: every `fanotify` line of both
//! fdinfos is as before (flags, event flags, inode, device, mark flags,
//! masks, file handle) and the descriptors' flags too; writing a gives
//! group 1 FAN_MODIFY and FAN_CLOSE_WRITE from this process, carrying a
//! descriptor of a, and no FAN_OPEN; creating WORK/fan/b gives group 2
//! FAN_CREATE. `--corrupt` flushes group 1's marks after go.
//! `--mounts`: a tmpfs mounted at WORK/mnt with a mount mark
//! (FAN_CLOSE_WRITE) in group 1 and a filesystem mark (FAN_CREATE) in
//! group 2, both checked the same way. `--refuse` sets up what the dump
//! must refuse: an unread event, a permission-class group.

use stasis_tests::{Proto, Report};
use std::ffi::CString;
use std::os::fd::AsRawFd;

const FAN_OPEN: u64 = 0x20;
const FAN_MODIFY: u64 = 0x2;
const FAN_CLOSE_WRITE: u64 = 0x8;
const FAN_CREATE: u64 = 0x100;
const FAN_DELETE: u64 = 0x200;
const FAN_ONDIR: u64 = 0x4000_0000;
const FAN_REPORT_FID: u32 = 0x200;
const FAN_CLASS_CONTENT: u32 = 0x4;

fn init(flags: u32, event_flags: u32) -> i32 {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::fanotify_init(flags, event_flags) };
    if fd < 0 {
        stasis_tests::fatal("fanotify_init");
    }
    fd
}

fn mark(fd: i32, flags: u32, mask: u64, path: &std::path::Path) {
    let c = CString::new(path.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::fanotify_mark(fd, flags, mask, libc::AT_FDCWD, c.as_ptr()) } != 0 {
        stasis_tests::fatal("fanotify_mark");
    }
}

/// The `fanotify` lines and the flags line of fd's fdinfo, sorted.
fn fdinfo(fd: i32) -> Vec<String> {
    let t = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let mut v: Vec<String> = t
        .lines()
        .filter(|l| l.starts_with("fanotify") || l.starts_with("flags:"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Reads every event waiting (group must be non-blocking, or have some):
/// (mask, pid, path of the event's descriptor) each.
fn events(fd: i32) -> Vec<(u64, i32, String)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: reads into our own buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off + std::mem::size_of::<libc::fanotify_event_metadata>() <= n as usize {
            // SAFETY: the kernel wrote a whole metadata record at off.
            let m: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let path = if m.fd >= 0 {
                let p = std::fs::read_link(format!("/proc/self/fd/{}", m.fd))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                // SAFETY: the event's descriptor is ours to close.
                unsafe { libc::close(m.fd) };
                p
            } else {
                String::new()
            };
            out.push((m.mask, m.pid, path));
            if m.event_len == 0 {
                break;
            }
            off += m.event_len as usize;
        }
        if queued(fd) == 0 {
            break;
        }
    }
    out
}

fn queued(fd: i32) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let dir = proto.path("fan");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("mkdir fan");
    let a = dir.join("a");
    std::fs::write(&a, "before").expect("write a");
    let g1 = init(
        libc::FAN_CLASS_NOTIF | libc::FAN_NONBLOCK,
        (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
    );
    mark(
        g1,
        libc::FAN_MARK_ADD,
        FAN_OPEN | FAN_MODIFY | FAN_CLOSE_WRITE,
        &a,
    );
    mark(
        g1,
        libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORED_MASK | libc::FAN_MARK_IGNORED_SURV_MODIFY,
        FAN_OPEN,
        &a,
    );
    let g2 = init(
        libc::FAN_CLASS_NOTIF | FAN_REPORT_FID,
        libc::O_RDONLY as u32,
    );
    mark(
        g2,
        libc::FAN_MARK_ADD,
        FAN_CREATE | FAN_DELETE | FAN_ONDIR,
        &dir,
    );
    match args.get("refuse") {
        Some("queued") => std::fs::write(&a, "queued").expect("write a"),
        Some("perm") => {
            init(FAN_CLASS_CONTENT, libc::O_RDONLY as u32);
        }
        _ => {}
    }
    // A tmpfs of its own (in our mount namespace: the harness unmounts it
    // too), with a mount mark in group 1 and a filesystem mark in group 2.
    let mnt = proto.path("mnt");
    let mounts = args.flag("mounts");
    if mounts {
        let _ = std::fs::create_dir(&mnt);
        let target = CString::new(mnt.to_str().expect("utf-8")).expect("no NUL");
        // SAFETY: mount(2) with valid NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                c"tp_fanotify".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=1m".as_ptr().cast(),
            )
        };
        if r != 0 {
            stasis_tests::fatal("mount tmpfs");
        }
        mark(
            g1,
            libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT,
            FAN_CLOSE_WRITE,
            &mnt,
        );
        mark(
            g2,
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            FAN_CREATE | FAN_ONDIR,
            &mnt,
        );
    }
    let before = (fdinfo(g1), fdinfo(g2));
    proto.ready();
    proto.wait_go();
    if args.corrupt() {
        mark(g1, libc::FAN_MARK_FLUSH, 0, &a);
    }
    report.eq("group 1 fdinfo", before.0, fdinfo(g1));
    report.eq("group 2 fdinfo", before.1, fdinfo(g2));
    if args.get("refuse").is_some() {
        // The dump was refused; the process ran on with what it had.
        events(g1);
    } else {
        report.eq(
            "queued events after restore",
            (0, 0),
            (queued(g1), queued(g2)),
        );
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .expect("open a");
        use std::io::Write;
        f.write_all(b"after").expect("write a");
        let _ = f.as_raw_fd();
    }
    let ev = events(g1);
    let all = ev.iter().fold(0, |m, e| m | e.0);
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let a_s = a.display().to_string();
    report.check(
        all & (FAN_MODIFY | FAN_CLOSE_WRITE) == FAN_MODIFY | FAN_CLOSE_WRITE
            && all & FAN_OPEN == 0
            && ev.iter().all(|e| e.1 == me && e.2 == a_s),
        || format!("group 1 events after writing a: {ev:?}"),
    );
    std::fs::write(dir.join("b"), "b").expect("create b");
    let ev2 = if queued(g2) > 0 {
        events(g2)
    } else {
        Vec::new()
    };
    report.check(ev2.iter().any(|e| e.0 & FAN_CREATE != 0), || {
        format!("group 2 events after creating b: {ev2:?}")
    });
    if mounts {
        let x = mnt.join("x");
        std::fs::write(&x, "x").expect("write mnt/x");
        let ev = events(g1);
        let x_s = x.display().to_string();
        report.check(
            ev.iter().any(|e| e.0 & FAN_CLOSE_WRITE != 0 && e.2 == x_s),
            || format!("group 1 events after writing on its mount: {ev:?}"),
        );
        let ev2 = if queued(g2) > 0 {
            events(g2)
        } else {
            Vec::new()
        };
        report.check(ev2.iter().any(|e| e.0 & FAN_CREATE != 0), || {
            format!("group 2 events after creating on its filesystem: {ev2:?}")
        });
        let target = CString::new(mnt.to_str().expect("utf-8")).expect("no NUL");
        // SAFETY: unmounting our own tmpfs.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    proto.finish(&report);
}
