//! The tree's session keyring (saved by the dump's keyrings.rs). The root
//! joins a new keyring of its name before it forks (spawn.rs), so every
//! process of the tree inherits it, as every one shared it at the dump.
//! The join runs as nobody, so that it cannot find a keyring of that name
//! which only its owner may search (a dead container's still held by a
//! zombie); after it, in the root, the keyring is checked to be the new,
//! empty one (anything else is refused by name) and gets its keys, owners
//! and permissions (`fill`).

use crate::{At, RestoreError, Result, Stage};
use stasis_image::{Keyring, ProcessImage};
use stasis_sys::remote::RemoteThread;
use std::ffi::CString;

const KEYCTL_CHOWN: u64 = 4;
const KEYCTL_SETPERM: u64 = 5;
const KEYCTL_DESCRIBE: u64 = 6;
const KEYCTL_READ: u64 = 11;
const KEY_SPEC_SESSION_KEYRING: i64 = -3;
/// The permissions KEYCTL_JOIN_SESSION_KEYRING gives a keyring it makes:
/// KEY_POS_ALL | KEY_USR_VIEW | KEY_USR_READ | KEY_USR_LINK.
const JOINED_PERM: u32 = 0x3f13_0000;

fn refused(pid: u32, stage: Stage, k: &Keyring, what: String) -> RestoreError {
    RestoreError::Refused {
        pid,
        stage,
        what: format!("its session keyring {:?}: {what}", k.name),
    }
}

/// The name the root joins.
pub(crate) fn preflight(procs: &[ProcessImage], own_userns: bool) -> Result<Option<CString>> {
    let Some(img) = procs.first() else {
        return Ok(None);
    };
    let st = Stage::Preflight;
    // Every process inherits the root's: the image must say so.
    let serial = |p: &ProcessImage| p.session_keyring.as_ref().map(|k| k.serial);
    if let Some(p) = procs.iter().find(|p| serial(p) != serial(img)) {
        return Err(RestoreError::Refused {
            pid: p.pid,
            stage: st,
            what: format!(
                "its session keyring ({:?}) is not the root's ({:?}): every process of a tree shares the root's",
                serial(p),
                serial(img)
            ),
        });
    }
    let Some(k) = &img.session_keyring else {
        return Ok(None);
    };
    if own_userns {
        return Err(refused(img.pid, st, k, "in a tree with a user namespace of its own: not restored yet (its owner is set with KEYCTL_CHOWN, which needs CAP_SYS_ADMIN of the first user namespace)".into()));
    }
    let name = CString::new(k.name.clone())
        .map_err(|_| refused(img.pid, st, k, "a name with a NUL byte".into()))?;
    Ok(Some(name))
}

/// In the root, after the join: the keyring is the new one, then its keys
/// (added, owned, permitted), then its own owner and permissions (last:
/// they may take away the right to add).
pub(crate) fn fill(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let Some(k) = &img.session_keyring else {
        return Ok(());
    };
    let (pid, st) = (img.pid, Stage::Attributes);
    r.flush().at(pid, st)?;
    let (scratch, len) = r.scratch();
    let buf = scratch + 4096;
    let room = len - 4096;
    let n = r
        .call(
            libc::SYS_keyctl,
            &[KEYCTL_DESCRIBE, KEY_SPEC_SESSION_KEYRING as u64, buf, 4096],
            "keyctl(KEYCTL_DESCRIBE, session keyring)",
        )
        .at(pid, st)?;
    let text = r.read_scratch(4096, n as usize).at(pid, st)?;
    let text = String::from_utf8_lossy(text.strip_suffix(&[0]).unwrap_or(&text)).into_owned();
    let f: Vec<&str> = text.splitn(5, ';').collect();
    let perm = f.get(3).and_then(|p| u32::from_str_radix(p, 16).ok());
    let held = r
        .call(
            libc::SYS_keyctl,
            &[KEYCTL_READ, KEY_SPEC_SESSION_KEYRING as u64, buf, 4096],
            "keyctl(KEYCTL_READ, session keyring)",
        )
        .at(pid, st)?;
    if f.first() != Some(&"keyring")
        || f.get(4) != Some(&k.name.as_str())
        || perm != Some(JOINED_PERM)
        || held != 0
    {
        return Err(refused(pid, st, k, format!(
            "the root joined {text:?} holding {} keys, not a new keyring of that name: another keyring of that name was found",
            held / 4
        )));
    }
    for key in &k.keys {
        let what = format!(
            "key user:{} of its session keyring {:?}",
            key.description, k.name
        );
        let mut desc = key.description.clone().into_bytes();
        desc.push(0);
        if 64 + desc.len() + key.payload.len() > room as usize {
            return Err(refused(
                pid,
                st,
                k,
                format!("{what}: too large for the restorer's scratch area"),
            ));
        }
        let ty = r.write_scratch(4096, b"user\0").at(pid, st)?;
        let d = r.write_scratch(4096 + 64, &desc).at(pid, st)?;
        let p = r
            .write_scratch(4096 + 64 + desc.len() as u64, &key.payload)
            .at(pid, st)?;
        let serial = r
            .call(
                libc::SYS_add_key,
                &[
                    ty,
                    d,
                    p,
                    key.payload.len() as u64,
                    KEY_SPEC_SESSION_KEYRING as u64,
                ],
                &format!("add_key({what})"),
            )
            .at(pid, st)?;
        owner_and_perm(r, pid, serial, (key.uid, key.gid, key.perm), &what)?;
    }
    owner_and_perm(
        r,
        pid,
        KEY_SPEC_SESSION_KEYRING as u64,
        (k.uid, k.gid, k.perm),
        &format!("session keyring {:?}", k.name),
    )?;
    log::info!(
        "pid {pid}: session keyring {:?} joined anew with {} keys",
        k.name,
        k.keys.len()
    );
    Ok(())
}

/// KEYCTL_CHOWN, then KEYCTL_SETPERM (the new permissions may take away
/// the right to change the owner).
fn owner_and_perm(
    r: &mut RemoteThread,
    pid: u32,
    serial: u64,
    (uid, gid, perm): (u32, u32, u32),
    what: &str,
) -> Result<()> {
    let st = Stage::Attributes;
    r.call(
        libc::SYS_keyctl,
        &[KEYCTL_CHOWN, serial, u64::from(uid), u64::from(gid)],
        &format!("keyctl(KEYCTL_CHOWN, {what})"),
    )
    .at(pid, st)?;
    r.call(
        libc::SYS_keyctl,
        &[KEYCTL_SETPERM, serial, u64::from(perm)],
        &format!("keyctl(KEYCTL_SETPERM, {what})"),
    )
    .at(pid, st)?;
    Ok(())
}
