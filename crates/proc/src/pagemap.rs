//! `/proc/PID/pagemap`: one native-endian `u64` per virtual page
//! (see Documentation/admin-guide/mm/pagemap.rst).

/// Bit 63: the page is present in RAM.
pub const PRESENT: u64 = 1 << 63;
/// Bit 62: the page is swapped out.
pub const SWAPPED: u64 = 1 << 62;
/// Bit 61: the page is file-backed or shared anonymous.
pub const FILE_OR_SHARED_ANON: u64 = 1 << 61;
/// Bit 56: the page is exclusively mapped (Linux >= 4.2).
pub const EXCLUSIVE: u64 = 1 << 56;
/// Bit 55: the PTE is soft-dirty.
pub const SOFT_DIRTY: u64 = 1 << 55;

/// Bits 0-54: the page frame number if present (0 without CAP_SYS_ADMIN),
/// or the swap type and offset if swapped.
pub fn pfn(e: u64) -> u64 {
    e & ((1 << 55) - 1)
}

/// Whether the page is present in RAM.
pub fn is_present(e: u64) -> bool {
    e & PRESENT != 0
}

/// Whether the page is swapped out.
pub fn is_swapped(e: u64) -> bool {
    e & SWAPPED != 0
}

/// Whether the page is file-backed or shared anonymous.
pub fn is_file_or_shared(e: u64) -> bool {
    e & FILE_OR_SHARED_ANON != 0
}

/// Decodes a buffer read from pagemap into entries. A trailing partial
/// entry (fewer than 8 bytes) is ignored.
pub fn entries(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(8).map(|c| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_ne_bytes(w)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        let e = PRESENT | FILE_OR_SHARED_ANON | SOFT_DIRTY | 0x1234;
        assert!(is_present(e) && !is_swapped(e) && is_file_or_shared(e));
        assert_eq!(pfn(e), 0x1234);
        assert_eq!(pfn(u64::MAX), (1 << 55) - 1);
        let s = SWAPPED | EXCLUSIVE;
        assert!(!is_present(s) && is_swapped(s) && !is_file_or_shared(s));
        assert_eq!(pfn(s), 0);
    }

    #[test]
    fn decode() {
        let mut b = Vec::new();
        for w in [PRESENT | 7, 0, SWAPPED] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b.push(0xff);
        assert_eq!(
            entries(&b).collect::<Vec<_>>(),
            vec![PRESENT | 7, 0, SWAPPED]
        );
        assert_eq!(entries(&[]).count(), 0);
    }
}
