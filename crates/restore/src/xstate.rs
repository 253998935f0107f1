//! Extended register state (XSAVE): fitted to this CPU, and AMX brought back.
//!
//! Each thread's XSAVE area was saved in the dumping CPU's layout. It is set
//! through PTRACE_SETREGSET, which accepts only this CPU's full size, so
//! every area is first rewritten for this CPU ([`xsave::adapt`]); live state
//! of a component this CPU lacks is refused, never dropped.
//!
//! AMX: a process that asked for tile state (ARCH_REQ_XCOMP_PERM) gets the
//! permission back before its threads are created, and every thread whose
//! tiles were live runs one tile instruction first, since the kernel only
//! accepts live tile data from ptrace once the thread has used AMX.

use crate::{At, RestoreError, Result, Stage};
use stasis_image::ProcessImage;
use stasis_sys::remote::RemoteThread;
use stasis_sys::{ptrace, xsave, Pid};

/// arch_prctl: ask for permission to use an XSAVE component.
const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
/// arch_prctl: the same for the process's KVM guests.
const ARCH_REQ_XCOMP_GUEST_PERM: u64 = 0x1025;

/// This CPU's XSAVE areas, one per thread of `img` (same order), ready for
/// PTRACE_SETREGSET. `child` is any traced task of ours: its area gives
/// this CPU's size and feature mask. Threads saved without an area get an
/// empty one (nothing is set).
pub(crate) fn fit(img: &ProcessImage, child: Pid) -> Result<Vec<Vec<u8>>> {
    let pid = img.pid;
    if img.threads.iter().all(|t| t.xsave.is_empty()) {
        return Ok(vec![Vec::new(); img.threads.len()]);
    }
    let local = ptrace::get_xstate(child).at(pid, Stage::Registers)?;
    let features = xsave::features(&local);
    img.threads
        .iter()
        .map(|t| {
            if t.xsave.is_empty() {
                return Ok(Vec::new());
            }
            xsave::adapt(&t.xsave, local.len(), features).map_err(|what| RestoreError::Refused {
                pid,
                stage: Stage::Registers,
                what: format!("thread {}: {what}", t.tid),
            })
        })
        .collect()
}

/// Gives the process back its permission for dynamically enabled XSAVE
/// components (AMX tile data), and the one it asked for its KVM guests.
/// Before threads are created: permission is per process, and the kernel
/// checks every thread's sigaltstack against the larger signal frame it
/// implies.
pub(crate) fn permit(r: &mut RemoteThread, img: &ProcessImage) -> Result<()> {
    request(
        r,
        img,
        img.xcomp_perm,
        ARCH_REQ_XCOMP_PERM,
        "ARCH_REQ_XCOMP_PERM",
    )?;
    request(
        r,
        img,
        img.xcomp_guest_perm,
        ARCH_REQ_XCOMP_GUEST_PERM,
        "ARCH_REQ_XCOMP_GUEST_PERM",
    )
}

/// Asks (`code`, named `call`) for each dynamic component in `perm`.
fn request(
    r: &mut RemoteThread,
    img: &ProcessImage,
    perm: u64,
    code: u64,
    call: &str,
) -> Result<()> {
    let dynamic = xsave::dynamic(perm);
    for i in (0..64u32).filter(|i| dynamic & (1u64 << i) != 0) {
        let res = r
            .syscall(libc::SYS_arch_prctl, &[code, u64::from(i)])
            .at(img.pid, Stage::Attributes)?;
        if res < 0 {
            return Err(RestoreError::Refused {
                pid: img.pid,
                stage: Stage::Attributes,
                what: format!(
                    "the process may use XSAVE component {} ({call}) but this machine refuses it: {}",
                    xsave::names(1u64 << i),
                    std::io::Error::from_raw_os_error((-res) as i32)
                ),
            });
        }
    }
    Ok(())
}

/// Makes the kernel enable AMX for the thread `r` if `area` (fitted by
/// [`fit`]) holds live tile data.
pub(crate) fn warm(r: &mut RemoteThread, pid: u32, area: &[u8]) -> Result<()> {
    let live = xsave::xstate_bv(area) & xsave::dynamic(xsave::features(area));
    if live == 0 {
        return Ok(());
    }
    if live != 1u64 << xsave::XFEATURE_XTILEDATA {
        return Err(RestoreError::Refused {
            pid,
            stage: Stage::Registers,
            what: format!(
                "live state of XSAVE component {}: only AMX tile data can be enabled",
                xsave::names(live)
            ),
        });
    }
    r.amx_warmup().at(pid, Stage::Registers)
}
