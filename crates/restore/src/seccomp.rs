//! Seccomp filters, installed by the process itself (remote seccomp(2)),
//! oldest first, with TSYNC when it has several threads (they all had the
//! same filters: checked at dump).
//!
//! Before the credentials: installing a filter needs CAP_SYS_ADMIN or
//! no_new_privs, and the restored credentials may have neither (the
//! original process installed its filters before dropping them). Every
//! thread is first traced with PTRACE_O_SUSPEND_SECCOMP, so the filters do
//! not apply to the remote calls that follow; they act once the tree is
//! detached.

use crate::{At, RestoreError, Result, Stage};
use stasis_image::ProcessImage;
use stasis_sys::remote::RemoteThread;
use stasis_sys::{mem, ptrace, spawn};

const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;

pub(crate) fn install(
    r: &mut RemoteThread,
    others: &[RemoteThread],
    img: &ProcessImage,
) -> Result<()> {
    if img.seccomp.is_empty() {
        return Ok(());
    }
    let pid = img.pid;
    let tids: Vec<_> = std::iter::once(r.tid())
        .chain(others.iter().map(RemoteThread::tid))
        .collect();
    for &tid in &tids {
        ptrace::set_options(
            tid,
            spawn::RESTORE_PTRACE_OPTIONS | ptrace::PTRACE_O_SUSPEND_SECCOMP,
        )
        .at(pid, Stage::Creds)?;
    }
    // struct sock_fprog { u16 len; (pad); const struct sock_filter *filter; }
    // at the start of a scratch mapping, the program after it.
    let longest = img.seccomp.iter().map(|f| f.prog.len()).max().unwrap_or(0) as u64;
    let len = (16 + longest).div_ceil(4096) * 4096;
    let area = r
        .call(
            libc::SYS_mmap,
            &[
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
            "mmap for seccomp programs",
        )
        .at(pid, Stage::Creds)?;
    let sync = if tids.len() > 1 {
        SECCOMP_FILTER_FLAG_TSYNC
    } else {
        0
    };
    for (i, f) in img.seccomp.iter().enumerate() {
        let insns = (f.prog.len() / ptrace::BPF_INSN_LEN) as u64;
        let mut fprog = [0u8; 16];
        fprog[..2].copy_from_slice(&(insns as u16).to_le_bytes());
        fprog[8..].copy_from_slice(&(area + 16).to_le_bytes());
        mem::write_bytes(r.tid(), area, &fprog).at(pid, Stage::Creds)?;
        mem::write_bytes(r.tid(), area + 16, &f.prog).at(pid, Stage::Creds)?;
        let res = r
            .syscall(
                libc::SYS_seccomp,
                &[SECCOMP_SET_MODE_FILTER, f.flags | sync, area],
            )
            .at(pid, Stage::Creds)?;
        if res != 0 {
            let why = if res > 0 {
                format!("thread {res} could not be synchronized")
            } else {
                std::io::Error::from_raw_os_error((-res) as i32).to_string()
            };
            return Err(RestoreError::Refused {
                pid,
                stage: Stage::Creds,
                what: format!(
                    "installing seccomp filter {} of {} ({insns} instructions): {why}",
                    i + 1,
                    img.seccomp.len()
                ),
            });
        }
    }
    r.call(libc::SYS_munmap, &[area, len], "munmap seccomp programs")
        .at(pid, Stage::Creds)?;
    Ok(())
}
