//! A process's session keyring of its own (runc joins a new one for each
//! container): read through remote syscalls in the process itself, since
//! what a key allows its possessor only the process has. Keys of type
//! "user" are saved with their payload; any other key, one whose payload
//! the process may not read, or one that expires is refused by name.

use crate::checks::refuse;
use crate::{At, Result, Stage};
use stasis_image::{Key, Keyring};
use stasis_sys::remote::RemoteThread;

const KEYCTL_DESCRIBE: u64 = 6;
const KEYCTL_READ: u64 = 11;
/// Room for a description (at most 4 KiB), a user key's payload (at most
/// 32767 bytes) or a keyring's list of serials.
const BUF: u64 = 64 * 1024;

/// What KEYCTL_DESCRIBE reports: type, uid, gid, permissions, description.
struct Described {
    kind: String,
    uid: u32,
    gid: u32,
    perm: u32,
    desc: String,
}

fn errno_text(e: i64) -> String {
    std::io::Error::from_raw_os_error((-e) as i32).to_string()
}

/// Reads the session keyring `serial` of the process `r` runs in.
pub(crate) fn read_session(r: &mut RemoteThread, pid: u32, serial: i64) -> Result<Keyring> {
    let st = Stage::Query;
    let buf = r
        .call(
            libc::SYS_mmap,
            &[
                0,
                BUF,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
            "mmap (keyring buffer)",
        )
        .at(pid, st)?;
    let out = read_with(r, pid, serial, buf);
    // Whatever happened, the buffer goes before this returns.
    r.call(libc::SYS_munmap, &[buf, BUF], "munmap (keyring buffer)")
        .at(pid, st)?;
    out
}

/// KEYCTL_DESCRIBE or KEYCTL_READ of `serial` into `buf`: the bytes, or
/// the negative errno.
fn keyctl_bytes(
    r: &mut RemoteThread,
    pid: u32,
    op: u64,
    serial: i64,
    buf: u64,
) -> Result<std::result::Result<Vec<u8>, i64>> {
    let n = r
        .syscall(libc::SYS_keyctl, &[op, serial as u64, buf, BUF])
        .at(pid, Stage::Query)?;
    if n < 0 {
        return Ok(Err(n));
    }
    if n as u64 > BUF {
        return Ok(Err(-i64::from(libc::E2BIG)));
    }
    let bytes = stasis_sys::mem::read_bytes(r.tid(), buf, n as usize).at(pid, Stage::Query)?;
    Ok(Ok(bytes))
}

fn describe(
    r: &mut RemoteThread,
    pid: u32,
    serial: i64,
    buf: u64,
) -> Result<std::result::Result<Described, String>> {
    let bytes = match keyctl_bytes(r, pid, KEYCTL_DESCRIBE, serial, buf)? {
        Ok(b) => b,
        Err(e) => return Ok(Err(format!("KEYCTL_DESCRIBE: {}", errno_text(e)))),
    };
    let text = String::from_utf8_lossy(bytes.strip_suffix(&[0]).unwrap_or(&bytes)).into_owned();
    let mut f = text.splitn(5, ';');
    let mut next = || f.next().unwrap_or("").to_string();
    let (kind, uid, gid, perm, desc) = (next(), next(), next(), next(), next());
    let parsed = (
        uid.parse::<u32>(),
        gid.parse::<u32>(),
        u32::from_str_radix(&perm, 16),
    );
    Ok(match parsed {
        (Ok(uid), Ok(gid), Ok(perm)) => Ok(Described {
            kind,
            uid,
            gid,
            perm,
            desc,
        }),
        _ => Err(format!("KEYCTL_DESCRIBE said {text:?}")),
    })
}

/// The expiry column of /proc/keys for each key we may view ("perm": none).
fn expiries() -> std::collections::HashMap<i64, String> {
    let text = std::fs::read_to_string("/proc/keys").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let serial = i64::from_str_radix(w.next()?, 16).ok()?;
            let expiry = w.nth(2)?.to_string();
            Some((serial, expiry))
        })
        .collect()
}

fn read_with(r: &mut RemoteThread, pid: u32, serial: i64, buf: u64) -> Result<Keyring> {
    let ring = describe(r, pid, serial, buf)?
        .map_err(|e| refuse(pid, format!("its session keyring (key {serial}): {e}")))?;
    let name = ring.desc.clone();
    let expiry = expiries();
    let temporary = |k: i64, what: &str| -> Result<()> {
        match expiry.get(&k).map(String::as_str) {
            Some("perm") => Ok(()),
            Some(e) => Err(refuse(pid, format!("{what} expires ({e} left in /proc/keys): keys with a timeout are not restored yet"))),
            None => Err(refuse(pid, format!("{what} is not listed in our /proc/keys, so whether it expires cannot be told: not restored"))),
        }
    };
    let what_ring = format!("its session keyring {name:?} (key {serial})");
    temporary(serial, &what_ring)?;
    let list = keyctl_bytes(r, pid, KEYCTL_READ, serial, buf)?.map_err(|e| {
        refuse(
            pid,
            format!(
                "{what_ring}: its keys cannot be listed (KEYCTL_READ: {})",
                errno_text(e)
            ),
        )
    })?;
    let mut keys = Vec::new();
    for c in list.chunks_exact(4) {
        let k = i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let d = describe(r, pid, k, buf)?
            .map_err(|e| refuse(pid, format!("key {k} in {what_ring}: {e}")))?;
        let what = format!("key {k} ({}:{}) in {what_ring}", d.kind, d.desc);
        if d.kind != "user" {
            return Err(refuse(
                pid,
                format!(
                    "{what}: a key of type {}: only keys of type user are restored yet",
                    d.kind
                ),
            ));
        }
        temporary(k, &what)?;
        let payload = keyctl_bytes(r, pid, KEYCTL_READ, k, buf)?.map_err(|e| {
            refuse(
                pid,
                format!(
                    "{what}: its payload cannot be read (KEYCTL_READ: {}), so it cannot be restored",
                    errno_text(e)
                ),
            )
        })?;
        keys.push(Key {
            description: d.desc,
            uid: d.uid,
            gid: d.gid,
            perm: d.perm,
            payload,
        });
    }
    Ok(Keyring {
        serial: serial as i32,
        name,
        uid: ring.uid,
        gid: ring.gid,
        perm: ring.perm,
        keys,
    })
}
