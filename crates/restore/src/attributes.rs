//! Per-process attributes: cwd, root, umask, personality, name,
//! scheduling, resource limits; signal state is in signals.rs.

use crate::{At, Result, Stage};
use stasis_image::ProcessImage;
use stasis_sys::remote::RemoteThread;

fn cstr_bytes(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The attributes stage for the process (its threads follow, in
/// threads.rs): in this order since none depends on another, and all come
/// before the credentials, which may take away the right to set them.
/// `restorer`: our status before the fork, which the process inherited
/// (`ServiceFds::restorer`).
pub(crate) fn attributes(
    r: &mut RemoteThread,
    img: &ProcessImage,
    restorer: &stasis_proc::Status,
) -> Result<()> {
    dirs_and_name(r, img)?;
    scheduling(r, img)?;
    rlimits(r, img)?;
    crate::signals::dispositions(r, img, restorer.sig_cgt | restorer.sig_ign)?;
    crate::signals::drain(r, img.pid)?;
    crate::signals::queue_pending(r, img)
}

/// cwd (a deleted one is entered later by descriptor: kinds/saved.rs
/// `fchdir`), root, umask, personality, name.
fn dirs_and_name(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    if img.cwd_saved == 0 {
        let at = r.stage(&cstr_bytes(&img.cwd)).at(pid, st)?;
        r.queue(libc::SYS_chdir, &[at], format!("chdir {}", img.cwd))
            .at(pid, st)?;
    }
    if img.root != "/" {
        let at = r.stage(&cstr_bytes(&img.root)).at(pid, st)?;
        r.queue(libc::SYS_chroot, &[at], format!("chroot {}", img.root))
            .at(pid, st)?;
    }
    r.queue(libc::SYS_umask, &[u64::from(img.umask)], "umask")
        .at(pid, st)?;
    r.queue(
        libc::SYS_personality,
        &[u64::from(img.personality)],
        "personality",
    )
    .at(pid, st)?;
    crate::threads::set_name(r, pid, &img.comm)?;
    Ok(())
}

/// Scheduling policy, real-time priority and nice value.
fn scheduling(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    let policy = img.sched.policy;
    // Images with proc_attrs get every thread's full sched_setattr later.
    let old_image = img.proc_attrs.is_none();
    if old_image
        && (policy & !0x4000_0000 != libc::SCHED_OTHER as u32 || img.sched.rt_priority != 0)
    {
        let at = r.stage(&img.sched.rt_priority.to_le_bytes()).at(pid, st)?;
        r.queue(
            libc::SYS_sched_setscheduler,
            &[0, u64::from(policy), at],
            "sched_setscheduler",
        )
        .at(pid, st)?;
    }
    r.queue(
        libc::SYS_setpriority,
        &[libc::PRIO_PROCESS as u64, 0, img.sched.nice as i64 as u64],
        "setpriority",
    )
    .at(pid, st)?;
    Ok(())
}

/// Resource limits; those equal to the ones inherited from the restorer need no call.
fn rlimits(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    let pid = img.pid;
    let st = Stage::Attributes;
    // Limits equal to the ones inherited from the restorer need no call
    // (read by our PID of the process: in a PID namespace of the tree's,
    // the image's names another process here).
    let host = r.tid();
    let current = stasis_sys::util::rlimits(host)
        .or_else(|_| stasis_proc::read_limits(host.0 as u32))
        .unwrap_or_default();
    for l in &img.rlimits {
        if current.contains(&(l.resource, l.cur, l.max)) {
            continue;
        }
        let mut b = l.cur.to_le_bytes().to_vec();
        b.extend_from_slice(&l.max.to_le_bytes());
        let at = r.stage(&b).at(pid, st)?;
        r.queue(
            libc::SYS_prlimit64,
            &[0, u64::from(l.resource), at, 0],
            format!("setrlimit({})", l.resource),
        )
        .at(pid, st)?;
    }
    Ok(())
}
