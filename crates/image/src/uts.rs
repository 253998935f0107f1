//! The UTS namespace of a tree (hostname and NIS domain name), when the
//! tree's root had one of its own: a restore creates a new one with the
//! same names.

use serde::{Deserialize, Serialize};

/// Longest host or domain name (the kernel's __NEW_UTS_LEN).
pub const MAX_UTS_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UtsNs {
    pub hostname: String,
    pub domainname: String,
}

impl UtsNs {
    /// Checks the names fit the kernel's limits and hold no NUL.
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [
            ("hostname", &self.hostname),
            ("domainname", &self.domainname),
        ] {
            if v.len() > MAX_UTS_NAME || v.contains('\0') {
                return Err(format!(
                    "uts.{what}: {} bytes or a NUL (at most {MAX_UTS_NAME}, no NUL)",
                    v.len()
                ));
            }
        }
        Ok(())
    }
}
