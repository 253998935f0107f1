//! The tree's time namespace: the offsets its first process writes into a
//! new namespace before anything enters it (stasis_sys::timens).
//!
//! In the boot that was dumped the offsets are kept as they were: the
//! tree's CLOCK_MONOTONIC and CLOCK_BOOTTIME read as the host's plus the
//! same offsets, so they continue (the time the tree spent dumped passes
//! for it as for everyone). In another boot (a reboot, or another machine:
//! the boot ids differ) each offset is shifted by the difference between
//! the host clock at the dump and now, so the tree's clocks resume where
//! they stood at the dump, never going back (the time spent dumped does
//! not pass for the tree).

use stasis_image::timens::{Offset, TimeNs};

const NS: i64 = 1_000_000_000;

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn host_ns(clock: i32) -> i64 {
    stasis_sys::util::clock_now_ns(clock).map_or(0, |n| n as i64)
}

fn shifted(o: Offset, by_ns: i64) -> (i64, i64) {
    let total = i128::from(o.secs) * i128::from(NS) + i128::from(o.nanos) + i128::from(by_ns);
    let secs = total.div_euclid(i128::from(NS)) as i64;
    let nanos = total.rem_euclid(i128::from(NS)) as i64;
    (secs, nanos)
}

/// The offsets text for the new namespace.
pub(crate) fn offsets_text(img: &TimeNs) -> Vec<u8> {
    let same_boot = !img.boot_id.is_empty() && img.boot_id == boot_id();
    let (mono, boot) = if same_boot {
        (0, 0)
    } else {
        (
            img.host_monotonic_ns - host_ns(libc::CLOCK_MONOTONIC),
            img.host_boottime_ns - host_ns(libc::CLOCK_BOOTTIME),
        )
    };
    stasis_sys::timens::offsets_text(shifted(img.monotonic, mono), shifted(img.boottime, boot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_normalizes() {
        let o = Offset {
            secs: 10,
            nanos: 900_000_000,
        };
        assert_eq!(shifted(o, 200_000_000), (11, 100_000_000));
        assert_eq!(shifted(o, -1_000_000_000), (9, 900_000_000));
        assert_eq!(shifted(o, -11_000_000_000), (-1, 900_000_000));
    }
}
