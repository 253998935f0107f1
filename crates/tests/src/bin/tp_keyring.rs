//! tp_keyring: a session keyring of its own, as runc gives each container.
//!
//! The program joins a new session keyring named `stasis-tp-ring.PID`
//! (KEYCTL_JOIN_SESSION_KEYRING) and makes it searchable by its user as
//! runc does (KEYCTL_SETPERM 0x3f1b0000). It adds two user keys: `tp-a`
//! with 3000 bytes of data and the default permissions, and `tp-b`
//! ("hello") owned by group 1234 with permissions 0x3f3f0000. It forks a
//! child, which inherits the keyring. After go, the keyring must have the
//! same description (type, owner, group, permissions, name), the same keys
//! in the same order with the same descriptions and payloads, and the
//! child's session keyring must be the parent's (same serial, asked by
//! the child after go). The serial itself may change.
//!
//! `--empty`: no keys. `--unreadable`: a third key `tp-secret` whose
//! payload its possessor may not read (permissions 0x35010000: no
//! possessor read or search); the dump must refuse it by name.
//! `--timeout`: `tp-a` expires in an hour (KEYCTL_SET_TIMEOUT); the dump
//! must refuse it by name. `--corrupt`: the expected payload of `tp-a` is
//! altered, so the check must fail.
//!
//! `--holder MODE`: a holder outside the tree (a double fork into a new
//! session) keeps another keyring of the same name, made after ours,
//! with permissions 0x3f1b0000 (`owner`: only its owner may search it,
//! like a dead container's) or 0x3f1b0008 (`anybody`: anybody may), until
//! the work directory goes; `holder.ready` says it is there.
//!
//! `--child-own`: the child joins a session keyring of its own (not the
//! parent's) before ready; the dump must refuse it by name (the child's
//! check then expects its own).
//!
//! Usage: `tp_keyring WORKDIR [--empty|--unreadable|--timeout]
//! [--holder owner|anybody] [--child-own] [--corrupt]`

use stasis_tests::{Proto, Report};
use std::ffi::CString;

const KEYCTL_GET_KEYRING_ID: i64 = 0;
const KEYCTL_JOIN_SESSION_KEYRING: i64 = 1;
const KEYCTL_CHOWN: i64 = 4;
const KEYCTL_SETPERM: i64 = 5;
const KEYCTL_DESCRIBE: i64 = 6;
const KEYCTL_READ: i64 = 11;
const KEYCTL_SET_TIMEOUT: i64 = 15;
const KEY_SPEC_SESSION_KEYRING: i64 = -3;

fn keyctl(op: i64, a: i64, b: i64, c: i64) -> i64 {
    // SAFETY: keyctl with integer arguments or pointers the caller keeps
    // alive for the call.
    unsafe { libc::syscall(libc::SYS_keyctl, op, a, b, c) }
}

/// KEYCTL_DESCRIBE or KEYCTL_READ of `key` (None: refused).
fn bytes(op: i64, key: i64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = keyctl(op, key, buf.as_mut_ptr() as i64, buf.len() as i64);
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn describe(key: i64) -> String {
    let b = bytes(KEYCTL_DESCRIBE, key).unwrap_or_default();
    String::from_utf8_lossy(b.strip_suffix(&[0]).unwrap_or(&b)).into_owned()
}

/// A key's description and payload (None: unreadable).
type KeyState = (String, Option<Vec<u8>>);

/// The keyring's description, and each key's description and payload.
fn snapshot() -> (String, Vec<KeyState>) {
    let ring = describe(KEY_SPEC_SESSION_KEYRING);
    let list = bytes(KEYCTL_READ, KEY_SPEC_SESSION_KEYRING).unwrap_or_default();
    let keys = list
        .chunks_exact(4)
        .map(|c| {
            let k = i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            (describe(k), bytes(KEYCTL_READ, k))
        })
        .collect();
    (ring, keys)
}

fn add_user_key(desc: &str, payload: &[u8]) -> i64 {
    let ty = c"user";
    let d = CString::new(desc).expect("description");
    // SAFETY: NUL-terminated strings and a payload slice alive for the call.
    let k = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            ty.as_ptr(),
            d.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_SESSION_KEYRING,
        )
    };
    assert!(k > 0, "add_key {desc}");
    k
}

/// Starts the holder (see the module doc) and waits until it is there.
fn hold(proto: &Proto, name: &CString, perm: i64) {
    // SAFETY: fork in a single-threaded program.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: plain calls in the child, which leaves with _exit.
        unsafe {
            libc::setsid();
            if libc::fork() == 0 {
                // As nobody, the join cannot find ours: it makes another.
                libc::syscall(libc::SYS_setfsuid, 65534);
                let k = keyctl(KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr() as i64, 0, 0);
                libc::syscall(libc::SYS_setfsuid, 0);
                if k > 0 && keyctl(KEYCTL_SETPERM, k, perm, 0) == 0 {
                    let _ = std::fs::write(proto.path("holder.ready"), k.to_string());
                }
                let start = std::time::Instant::now();
                while proto.dir().exists() && start.elapsed().as_secs() < 300 {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
            libc::_exit(0);
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    let start = std::time::Instant::now();
    while !proto.path("holder.ready").exists() {
        assert!(start.elapsed().as_secs() < 20, "the holder did not start");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let name = CString::new(format!("stasis-tp-ring.{}", std::process::id())).expect("name");
    let ring = keyctl(KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr() as i64, 0, 0);
    assert!(ring > 0, "KEYCTL_JOIN_SESSION_KEYRING");
    assert_eq!(
        keyctl(KEYCTL_SETPERM, ring, 0x3f1b_0000, 0),
        0,
        "setperm ring"
    );
    if !args.flag("empty") {
        let a: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        let ka = add_user_key("tp-a", &a);
        let kb = add_user_key("tp-b", b"hello");
        assert_eq!(keyctl(KEYCTL_CHOWN, kb, -1, 1234), 0, "chown tp-b");
        assert_eq!(
            keyctl(KEYCTL_SETPERM, kb, 0x3f3f_0000, 0),
            0,
            "setperm tp-b"
        );
        if args.flag("unreadable") {
            let ks = add_user_key("tp-secret", b"secret");
            assert_eq!(
                keyctl(KEYCTL_SETPERM, ks, 0x3501_0000, 0),
                0,
                "setperm tp-secret"
            );
        }
        if args.flag("timeout") {
            assert_eq!(keyctl(KEYCTL_SET_TIMEOUT, ka, 3600, 0), 0, "timeout tp-a");
        }
    }
    if let Some(mode) = args.get("holder") {
        let perm = if mode == "anybody" {
            0x3f1b_0008
        } else {
            0x3f1b_0000
        };
        hold(&proto, &name, perm);
    }
    let mut before = snapshot();
    if args.corrupt() {
        if let Some((_, Some(p))) = before.1.first_mut() {
            p[0] ^= 1;
        } else {
            before.0.push('!');
        }
    }
    // The child reports its session keyring's serial after go.
    // SAFETY: fork in a single-threaded program.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        if args.flag("child-own") {
            let own =
                CString::new(format!("stasis-tp-child.{}", std::process::id())).expect("name");
            let k = keyctl(KEYCTL_JOIN_SESSION_KEYRING, own.as_ptr() as i64, 0, 0);
            let _ = std::fs::write(proto.path("child.own"), k.to_string());
        }
        proto.wait_go();
        let k = keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0, 0);
        let _ = std::fs::write(proto.path("child.ring"), k.to_string());
        // SAFETY: leave at once.
        unsafe { libc::_exit(0) };
    }
    // The child's own keyring joined before ready (`--child-own`).
    let start = std::time::Instant::now();
    while args.flag("child-own") && !proto.path("child.own").exists() {
        assert!(
            start.elapsed().as_secs() < 20,
            "the child did not join its keyring"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    proto.ready_and_wait();
    let after = snapshot();
    report.eq("session keyring", before.0, after.0);
    report.eq("number of keys", before.1.len(), after.1.len());
    for (b, a) in before.1.iter().zip(&after.1) {
        report.eq("key", &b.0, &a.0);
        report.check(b.1 == a.1, || format!("payload of {} differs", b.0));
    }
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    let ours = match std::fs::read_to_string(proto.path("child.own")) {
        Ok(own) => own.trim().parse().unwrap_or(0),
        Err(_) => keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0, 0),
    };
    let theirs = std::fs::read_to_string(proto.path("child.ring")).unwrap_or_default();
    report.eq("the child's session keyring", ours.to_string(), theirs);
    proto.finish(&report);
}
