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
    let mut used: Vec<(u64, u64)> = procs
        .iter()
        .flat_map(|p| p.mm.vmas.iter().map(|v| (v.start, v.end)))
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
