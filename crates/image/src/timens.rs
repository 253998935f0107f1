//! The time namespace of a tree (its CLOCK_MONOTONIC and CLOCK_BOOTTIME
//! offsets), when the tree's root had one of its own: a restore creates a
//! new one with offsets that keep both clocks continuous.

use serde::{Deserialize, Serialize};

/// A clock offset: seconds and nanoseconds (0..1e9), as in
/// /proc/PID/timens_offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offset {
    pub secs: i64,
    pub nanos: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeNs {
    pub monotonic: Offset,
    pub boottime: Offset,
    /// The dumping machine's /proc/sys/kernel/random/boot_id: a restore in
    /// the same boot keeps the offsets as they are.
    #[serde(default)]
    pub boot_id: String,
    /// The host's CLOCK_MONOTONIC and CLOCK_BOOTTIME (nanoseconds) when
    /// the offsets were read: a restore in another boot shifts the
    /// offsets by the difference, so the tree's clocks resume where they
    /// stood at the dump.
    #[serde(default)]
    pub host_monotonic_ns: i64,
    #[serde(default)]
    pub host_boottime_ns: i64,
}

impl TimeNs {
    /// Checks the nanoseconds are normalized and the boot id is short.
    pub fn check(&self) -> Result<(), String> {
        for (what, o) in [("monotonic", self.monotonic), ("boottime", self.boottime)] {
            if !(0..1_000_000_000).contains(&o.nanos) {
                return Err(format!("time.{what}.nanos: {} outside 0..1e9", o.nanos));
            }
        }
        if self.boot_id.len() > 64 {
            return Err(format!(
                "time.boot_id: {} bytes (at most 64)",
                self.boot_id.len()
            ));
        }
        Ok(())
    }
}
