//! Credentials, set last but one in every thread (they may take away the
//! capabilities every earlier step needs), then what a credential change
//! resets (dumpable, parent-death signal). The unprivileged-restore check
//! of the preflight is in `creds_check.rs`.

use crate::{At, Result, Stage};
use stasis_image::ProcessImage;
use stasis_sys::remote::RemoteThread;
use stasis_sys::util;

const SECBIT_KEEP_CAPS: u64 = 1 << 4;
const CAP_SETPCAP: u64 = 8;

fn capset(r: &mut RemoteThread, pid: u32, eff: u64, prm: u64, inh: u64) -> Result<()> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&0x2008_0522u32.to_le_bytes()); // _LINUX_CAPABILITY_VERSION_3
    b.extend_from_slice(&0i32.to_le_bytes());
    for half in [0, 32] {
        for v in [eff, prm, inh] {
            b.extend_from_slice(&((v >> half) as u32).to_le_bytes());
        }
    }
    let at = r.stage(&b).at(pid, Stage::Creds)?;
    r.queue(libc::SYS_capset, &[at, at + 8], "capset")
        .at(pid, Stage::Creds)?;
    Ok(())
}

/// Credentials of every thread (per thread in the kernel), the leader
/// last; nothing but dumpable and the parent-death signal when they are
/// already the ones every thread inherited from the restorer.
/// `restorer`: our status before the fork (what a process in our user
/// namespace inherited).
pub(crate) fn all_threads(
    leader: &mut RemoteThread,
    others: &mut [RemoteThread],
    img: &ProcessImage,
    restorer: &stasis_proc::Status,
) -> Result<()> {
    // In the tree's own user namespace the ids are the namespace's.
    let same =
        !crate::userns::other_than_ours(leader.tid().0 as u32) && creds_inherited(img, restorer);
    // One thread at a time: the threads of a process share the stub
    // area, where each batch's records and data are.
    for tr in others.iter_mut() {
        creds(tr, img, same, false)?;
        tr.flush().at(img.pid, Stage::Creds)?;
    }
    // The leader's credential calls are queued: they run first in the
    // next round trip (the service descriptors' closes, rebuild.rs),
    // in order, and a failure there names its call.
    creds(leader, img, same, true)
}

/// Credentials, in the order the kernel allows: bounding set and
/// securebits while we still hold CAP_SETPCAP, ids (keeping capabilities),
/// then the capability sets, ambient caps, no_new_privs; then what a
/// credential change resets (dumpable, parent-death signal).
fn creds(r: &mut RemoteThread, img: &ProcessImage, inherited: bool, leader: bool) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Creds;
    if !inherited {
        set_ids_and_caps(r, img)?;
    }
    // Dumpable belongs to the whole process; the parent-death signal to each thread.
    if leader && img.dumpable <= 1 {
        r.queue(
            libc::SYS_prctl,
            &[libc::PR_SET_DUMPABLE as u64, u64::from(img.dumpable)],
            "prctl(PR_SET_DUMPABLE)",
        )
        .at(pid, st)?;
    }
    r.queue(
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, u64::from(img.pdeath_signal)],
        "prctl(PR_SET_PDEATHSIG)",
    )
    .at(pid, st)?;
    // Queued: the caller runs this thread's calls in one round trip.
    Ok(())
}

/// Whether the image's credentials are exactly the ones the restored
/// process inherited from the restorer (ids, groups, every capability
/// set, securebits, no_new_privs): then there is nothing to set. `s`:
/// our status before the fork, which a process in our user namespace
/// inherited.
fn creds_inherited(img: &ProcessImage, s: &stasis_proc::Status) -> bool {
    let c = &img.creds;
    let mut groups = s.groups.clone();
    groups.sort_unstable();
    let mut want = c.groups.clone();
    want.sort_unstable();
    s.uids == c.uids
        && s.gids == c.gids
        && groups == want
        && s.cap_inh == c.cap_inheritable
        && s.cap_prm == c.cap_permitted
        && s.cap_eff == c.cap_effective
        && s.cap_bnd == c.cap_bounding
        && s.cap_amb == c.cap_ambient
        && s.no_new_privs == c.no_new_privs
        && util::securebits().ok() == Some(c.securebits)
}

fn set_ids_and_caps(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Creds;
    let c = &img.creds;
    let last_cap: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last_cap {
        if c.cap_bounding & (1 << cap) == 0 {
            r.queue(
                libc::SYS_prctl,
                &[libc::PR_CAPBSET_DROP as u64, cap],
                "prctl(PR_CAPBSET_DROP)",
            )
            .at(pid, st)?;
        }
    }
    let root_only = c.uids == [0; 4] && c.gids == [0; 4];
    let want_bits = u64::from(c.securebits);
    if !root_only || want_bits != 0 {
        r.queue(
            libc::SYS_prctl,
            &[libc::PR_SET_SECUREBITS as u64, want_bits | SECBIT_KEEP_CAPS],
            "prctl(PR_SET_SECUREBITS)",
        )
        .at(pid, st)?;
    }
    let mut groups = Vec::with_capacity(c.groups.len() * 4);
    for g in &c.groups {
        groups.extend_from_slice(&g.to_le_bytes());
    }
    let at = r.stage(&groups).at(pid, st)?;
    r.queue(
        libc::SYS_setgroups,
        &[c.groups.len() as u64, at],
        "setgroups",
    )
    .at(pid, st)?;
    let [gr, ge, gs, gf] = c.gids.map(u64::from);
    r.queue(libc::SYS_setresgid, &[gr, ge, gs], "setresgid")
        .at(pid, st)?;
    let [ur, ue, us, uf] = c.uids.map(u64::from);
    r.queue(libc::SYS_setresuid, &[ur, ue, us], "setresuid")
        .at(pid, st)?;
    r.queue(libc::SYS_setfsgid, &[gf], "setfsgid").at(pid, st)?;
    r.queue(libc::SYS_setfsuid, &[uf], "setfsuid").at(pid, st)?;
    if !root_only || want_bits != 0 {
        // Keep CAP_SETPCAP effective (if permitted) long enough to put securebits back.
        let setpcap = c.cap_permitted & (1 << CAP_SETPCAP);
        capset(
            r,
            pid,
            c.cap_effective | setpcap,
            c.cap_permitted,
            c.cap_inheritable,
        )?;
        if want_bits & SECBIT_KEEP_CAPS == 0 && setpcap != 0 {
            r.queue(
                libc::SYS_prctl,
                &[libc::PR_SET_SECUREBITS as u64, want_bits],
                "prctl(PR_SET_SECUREBITS)",
            )
            .at(pid, st)?;
        }
    }
    capset(r, pid, c.cap_effective, c.cap_permitted, c.cap_inheritable)?;
    for cap in 0..=last_cap {
        if c.cap_ambient & (1 << cap) != 0 {
            r.queue(
                libc::SYS_prctl,
                &[
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                ],
                "prctl(PR_CAP_AMBIENT_RAISE)",
            )
            .at(pid, st)?;
        }
    }
    if c.no_new_privs {
        r.queue(
            libc::SYS_prctl,
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
            "prctl(PR_SET_NO_NEW_PRIVS)",
        )
        .at(pid, st)?;
    }
    Ok(())
}
