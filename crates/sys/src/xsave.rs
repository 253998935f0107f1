//! The XSAVE area: its layout on this CPU and the conversions stasis needs.
//!
//! Nothing here assumes one CPU's layout. Every component's offset, size and
//! whether it is enabled on first use (XFD, e.g. AMX tile data) comes from
//! CPUID leaf 0xD; which components the kernel hands to user space comes
//! from the area ptrace returns (its software-reserved bytes hold that mask,
//! and its length is the kernel's full user size on this CPU).
//!
//! ptrace (`NT_X86_XSTATE`) always returns, and `PTRACE_SETREGSET` only
//! accepts, the full size for every feature the kernel supports on this
//! CPU (11,008 bytes with AMX, whatever the task has used), so a saved area
//! is rewritten for the restoring CPU ([`adapt`]).

/// Offset of the software-reserved bytes of the legacy area; ptrace stores
/// the kernel's user feature mask (XCR0 as exposed to user space) there,
/// a signal frame its `_fpx_sw_bytes`.
pub const SW_RESERVED_OFF: usize = 464;
/// Offset of the XSAVE header: `xstate_bv` (which components are not in
/// their initial state), then `xcomp_bv`.
pub const HEADER_OFF: usize = 512;
/// End of the header: the first extended component starts here or later.
pub const HEADER_END: usize = 576;
/// Legacy x87 and SSE: always present, always in the first 512 bytes.
const LEGACY: u64 = 0b11;

/// AMX tile data: the one component the kernel enables on first use.
pub const XFEATURE_XTILEDATA: u32 = 18;

/// One component of the standard (non-compacted) format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    pub offset: usize,
    pub size: usize,
    /// Supports extended feature disable: the kernel enables it only after
    /// the process asked (ARCH_REQ_XCOMP_PERM) and first used it.
    pub xfd: bool,
}

/// CPUID.(EAX=0xD, ECX=i) for component `i` >= 2, read once per component
/// (CPUID traps to the hypervisor in a virtual machine, and every thread
/// of every process dumped or restored asks).
pub fn component(i: u32) -> Component {
    static TABLE: std::sync::OnceLock<[Component; 64]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        std::array::from_fn(|i| {
            let r = core::arch::x86_64::__cpuid_count(0xd, i as u32);
            Component {
                offset: r.ebx as usize,
                size: r.eax as usize,
                xfd: r.ecx & 0b100 != 0,
            }
        })
    });
    table[(i & 63) as usize]
}

/// The user feature mask ptrace stored in an area it returned.
pub fn features(area: &[u8]) -> u64 {
    word(area, SW_RESERVED_OFF)
}

/// `xstate_bv`: the components of `area` that are not in their initial state.
pub fn xstate_bv(area: &[u8]) -> u64 {
    word(area, HEADER_OFF)
}

fn word(area: &[u8], off: usize) -> u64 {
    area.get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

fn put(area: &mut [u8], off: usize, v: u64) {
    area[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Extended components (>= 2) set in `mask`.
fn extended(mask: u64) -> impl Iterator<Item = u32> {
    (2..64).filter(move |i| mask & (1u64 << i) != 0)
}

/// The components of `features` that the kernel enables only on first use.
pub fn dynamic(features: u64) -> u64 {
    extended(features)
        .filter(|&i| component(i).xfd)
        .fold(0, |m, i| m | 1u64 << i)
}

/// Size of a standard-format area holding the components in `mask`.
pub fn size_for(mask: u64) -> usize {
    extended(mask)
        .map(component)
        .map(|c| c.offset + c.size)
        .fold(HEADER_END, usize::max)
}

/// A readable name for an XSAVE component, for error messages.
pub fn component_name(i: u32) -> &'static str {
    match i {
        0 => "x87",
        1 => "SSE",
        2 => "AVX",
        3 | 4 => "MPX",
        5 => "AVX-512 opmask",
        6 => "AVX-512 ZMM_Hi256",
        7 => "AVX-512 Hi16_ZMM",
        9 => "PKRU",
        11 | 12 => "CET",
        14 => "UINTR",
        17 => "AMX TILECFG",
        18 => "AMX TILEDATA",
        19 => "APX",
        _ => "unknown",
    }
}

/// Names of the components in `mask`, e.g. "5 (AVX-512 opmask), 18 (AMX TILEDATA)".
pub fn names(mask: u64) -> String {
    (0..64)
        .filter(|i| mask & (1u64 << i) != 0)
        .map(|i| format!("{i} ({})", component_name(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rewrites a saved area for this CPU, whose ptrace area has length
/// `local_len` and feature mask `local_features`. Returns the area to hand
/// to `PTRACE_SETREGSET`, or a message naming the components this CPU
/// cannot hold.
///
/// The standard format places each component at the offset CPUID gives;
/// CPUs that implement a component agree on it (it is part of the
/// architecture as implemented by Intel and AMD), so a component is copied
/// from and to this CPU's offset. Live state of a component this CPU lacks
/// is refused rather than dropped.
pub fn adapt(saved: &[u8], local_len: usize, local_features: u64) -> Result<Vec<u8>, String> {
    if saved.len() < HEADER_END {
        return Err(format!("saved XSAVE area is only {} bytes", saved.len()));
    }
    let bv = xstate_bv(saved);
    let missing = bv & !local_features & !LEGACY;
    if missing != 0 {
        return Err(format!(
            "the thread holds XSAVE state this CPU lacks: component {}",
            names(missing)
        ));
    }
    if saved.len() == local_len && features(saved) == local_features {
        return Ok(saved.to_vec());
    }
    let mut out = vec![0u8; local_len.max(HEADER_END)];
    out[..HEADER_END].copy_from_slice(&saved[..HEADER_END]);
    put(&mut out, SW_RESERVED_OFF, local_features);
    put(&mut out, HEADER_OFF, bv);
    put(&mut out, HEADER_OFF + 8, 0);
    for i in extended(bv) {
        let c = component(i);
        let end = c.offset + c.size;
        if c.size == 0 || end > saved.len() || end > out.len() {
            return Err(format!(
                "XSAVE component {} does not fit: offset {} size {} in areas of {} and {} bytes",
                names(1u64 << i),
                c.offset,
                c.size,
                saved.len(),
                out.len()
            ));
        }
        out[c.offset..end].copy_from_slice(&saved[c.offset..end]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(len: usize, features: u64, bv: u64) -> Vec<u8> {
        let mut a = vec![0u8; len];
        put(&mut a, SW_RESERVED_OFF, features);
        put(&mut a, HEADER_OFF, bv);
        a
    }

    #[test]
    fn sizes_come_from_cpuid() {
        // AVX is on every x86-64 CPU this project runs on.
        let avx = component(2);
        assert_eq!(avx.offset, 576);
        assert_eq!(avx.size, 256);
        assert_eq!(size_for(0b111), 832);
        assert_eq!(size_for(0b11), HEADER_END);
    }

    #[test]
    fn adapt_same_layout_is_identity_and_refuses_missing() {
        let a = area(832, 0b111, 0b111);
        assert_eq!(adapt(&a, 832, 0b111).unwrap(), a);
        let e = adapt(&a, 576, 0b11).unwrap_err();
        assert!(e.contains("2 (AVX)"), "{e}");
    }

    #[test]
    fn adapt_moves_components_to_a_bigger_area() {
        let mut a = area(832, 0b111, 0b111);
        a[600] = 0x5a;
        let b = adapt(&a, 1024, 0b111 | 1 << 9).unwrap();
        assert_eq!(b.len(), 1024);
        assert_eq!(b[600], 0x5a);
        assert_eq!(features(&b), 0b111 | 1 << 9);
        assert_eq!(xstate_bv(&b), 0b111);
    }
}
