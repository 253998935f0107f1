//! Where the self-healing syscall stub goes (see `stasis_sys::remote`).
//!
//! Normally the zero padding at the end of the target's `[vdso]`. A process
//! may have unmapped its vDSO (and [vvar]); then the stub goes into the
//! zero padding past the end of an executable ELF segment, in the last page
//! of its mapping: those bytes map file contents that belong to no segment
//! at that address (with GNU ld's separate-code layout, the zeros that pad
//! the text segment to a page boundary), so the program never executes or
//! reads them there. PTRACE_POKEDATA copies that one page on write; the
//! healing area is zeroed again at the end, so the bytes are as they were.
//! A candidate is used only if its 320 bytes are zero, or what a killed
//! dumper left (`remote::padding_is_ours`), as for the vDSO padding.

use stasis_proc::SmapsEntry;
use stasis_sys::remote::{padding_is_ours, HEAL_AREA_LEN};
use std::os::unix::fs::FileExt;

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;

/// The healing site for process `pid`: `(start, end)`, the healing area
/// going into its last `HEAL_AREA_LEN` (320) bytes; `(0, 0)` if there is
/// none (the healing setup then refuses the dump by name).
pub(crate) fn find(pid: u32, smaps: &[SmapsEntry]) -> (u64, u64) {
    if let Some(s) = smaps
        .iter()
        .find(|s| s.map.path.as_deref() == Some("[vdso]"))
    {
        return (s.map.start, s.map.end);
    }
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok();
    for s in smaps {
        let m = &s.map;
        let path = m.path.as_deref().unwrap_or("");
        if !m.exec || m.shared || !path.starts_with('/') {
            continue;
        }
        let Some(boundary) = segment_end(pid, s) else {
            continue;
        };
        if m.end < boundary + HEAL_AREA_LEN {
            continue;
        }
        // The bytes themselves: zero padding (or a killed dumper's stub).
        let mut buf = [0u8; HEAL_AREA_LEN as usize];
        let read = mem
            .as_ref()
            .is_some_and(|f| f.read_exact_at(&mut buf, m.end - HEAL_AREA_LEN).is_ok());
        let words: Vec<u64> = buf
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        if read && padding_is_ours(&words) {
            log::info!(
                "pid {pid}: no [vdso]: healing stub at {:#x} (past the executable segment of {path})",
                m.end - HEAL_AREA_LEN
            );
            return (boundary, m.end);
        }
    }
    (0, 0)
}

/// The address in mapping `s` where its executable ELF segment's file bytes
/// end, if the segment ends inside the mapping (in its last page).
fn segment_end(pid: u32, s: &SmapsEntry) -> Option<u64> {
    let m = &s.map;
    let f = std::fs::File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end)).ok()?;
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).ok()?;
    // ELF, 64-bit, little-endian.
    if eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let phoff = u64::from_le_bytes(eh[0x20..0x28].try_into().ok()?);
    let phentsize = u64::from(u16_at(&eh, 0x36));
    let phnum = u64::from(u16_at(&eh, 0x38));
    if phentsize < 56 || phnum == 0 || phnum > 256 {
        return None;
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.read_exact_at(&mut ph, phoff).ok()?;
    let len = m.end - m.start;
    for p in ph.chunks_exact(phentsize as usize) {
        let word = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().unwrap_or_default());
        let p_type = u32::from_le_bytes(p[0..4].try_into().ok()?);
        let p_flags = u32::from_le_bytes(p[4..8].try_into().ok()?);
        let (offset, filesz, memsz) = (word(8), word(32), word(40));
        if p_type != PT_LOAD || p_flags & PF_X == 0 || filesz != memsz {
            continue;
        }
        let end = offset.checked_add(filesz)?;
        // This segment is the one mapped here: it starts in the mapping's
        // first page and ends within its last page.
        let first = offset & !0xfff;
        if first != m.offset || end <= m.offset || end > m.offset + len {
            continue;
        }
        if m.offset + len - end >= 4096 {
            continue;
        }
        return Some(m.start + (end - m.offset));
    }
    None
}
