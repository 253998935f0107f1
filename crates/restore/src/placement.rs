//! Addresses for objects the restorer maps before forking (copy-on-write
//! memory), free in every process of the image and in what it already
//! placed.

use stasis_image::ProcessImage;

const GUARD: u64 = 0x10000;
const LOW: u64 = 1 << 32;

/// Candidate addresses (64 KiB aligned) for `len` bytes: inside gaps of the
/// union of every process's VMAs and `taken`, highest first, several per
/// gap (the caller tries them in order: the restorer's own mappings may
/// still be in the way).
pub(crate) fn candidates(procs: &[ProcessImage], taken: &[(u64, u64)], len: u64) -> Vec<u64> {
    let vmas: Vec<(u64, u64)> = procs
        .iter()
        .flat_map(|p| p.mm.vmas.iter().map(|v| (v.start, v.end)))
        .collect();
    candidates_in(&vmas, taken, len)
}

/// [`candidates`] for the ranges `vmas` (every process's VMAs).
fn candidates_in(vmas: &[(u64, u64)], taken: &[(u64, u64)], len: u64) -> Vec<u64> {
    let mut used: Vec<(u64, u64)> = vmas
        .iter()
        .copied()
        .filter(|&(s, _)| s < stasis_image::USER_SPACE_END)
        .chain(taken.iter().copied())
        .collect();
    used.sort_unstable();
    let mut gaps = Vec::new();
    let mut prev = LOW;
    for (s, e) in used {
        if s > prev {
            gaps.push((prev, s));
        }
        prev = prev.max(e);
    }
    gaps.push((prev, stasis_image::USER_SPACE_END));
    let step = (len + 2 * GUARD + 0xffff) & !0xffff;
    let mut out = Vec::new();
    for (s, e) in gaps.into_iter().rev() {
        let mut top = e.saturating_sub(GUARD + len) & !0xffff;
        let mut n = 0;
        while n < 16 && top >= s + GUARD && top >= LOW {
            out.push(top);
            top = top.saturating_sub(step);
            n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_avoid_every_layout_and_each_other() {
        let vmas = [
            (0x7f00_0000_0000, 0x7f00_1000_0000),
            (0x5555_0000_0000, 0x5555_0001_0000),
        ];
        let taken = [(0x7fff_0000_0000, 0x7fff_f000_0000)];
        let len = 0x20_0000;
        let c = candidates_in(&vmas, &taken, len);
        assert!(c.len() > 16, "several candidates per gap: {}", c.len());
        for a in c {
            assert_eq!(a % 0x10000, 0);
            assert!(a >= LOW && a + len <= stasis_image::USER_SPACE_END);
            for &(s, e) in vmas.iter().chain(&taken) {
                assert!(a + len <= s || a >= e, "{a:#x} overlaps {s:#x}-{e:#x}");
            }
        }
    }
}
