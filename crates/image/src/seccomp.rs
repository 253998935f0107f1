//! Seccomp filters of a process (every thread has the same ones: a thread
//! with filters of its own is refused at dump).

use serde::{Deserialize, Serialize};

/// Longest classic BPF program the kernel takes (BPF_MAXINSNS).
pub const MAX_FILTER_INSNS: usize = 4096;
/// Most filters one process may carry here (the kernel's own bound is the
/// total size, MAX_INSNS_PER_PATH: 32768 instructions plus 4 per filter).
pub const MAX_FILTERS: usize = 1024;
/// SECCOMP_FILTER_FLAG_LOG, the one flag the kernel reports.
pub const FLAG_LOG: u64 = 1 << 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompFilter {
    /// The program: 8 bytes per instruction (`struct sock_filter`).
    #[serde(with = "crate::hex_bytes")]
    pub prog: Vec<u8>,
    /// Filter flags (SECCOMP_FILTER_FLAG_LOG).
    pub flags: u64,
}

impl SeccompFilter {
    pub fn check(&self) -> Result<(), String> {
        let n = self.prog.len() / 8;
        if self.prog.len() % 8 != 0 || n == 0 || n > MAX_FILTER_INSNS {
            return Err(format!(
                "seccomp filter of {} bytes: not 1..={MAX_FILTER_INSNS} instructions of 8 bytes",
                self.prog.len()
            ));
        }
        if self.flags & !FLAG_LOG != 0 {
            return Err(format!(
                "seccomp filter flags {:#x}: only LOG (2) is known",
                self.flags
            ));
        }
        Ok(())
    }
}

/// Checks every filter of a process and their count.
pub fn check_filters(filters: &[SeccompFilter]) -> Result<(), String> {
    if filters.len() > MAX_FILTERS {
        return Err(format!(
            "{} seccomp filters (at most {MAX_FILTERS})",
            filters.len()
        ));
    }
    filters.iter().try_for_each(SeccompFilter::check)
}
