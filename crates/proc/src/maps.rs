//! `/proc/PID/maps` and `/proc/PID/smaps`.

use crate::util::{dec_u64, err, hex_u32, hex_u64, key_value, lines, next_token, utf8};
use crate::ParseError;

const DELETED_SUFFIX: &str = " (deleted)";

/// One line of `/proc/PID/maps`: a virtual memory area.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapEntry {
    /// First address of the area.
    pub start: u64,
    /// One past the last address of the area.
    pub end: u64,
    /// `r`: readable.
    pub read: bool,
    /// `w`: writable.
    pub write: bool,
    /// `x`: executable.
    pub exec: bool,
    /// `s` (shared) rather than `p` (private, copy-on-write).
    pub shared: bool,
    /// Offset into the mapped file (for anonymous areas, usually 0 or the pgoff).
    pub offset: u64,
    /// Major number of the device holding the file (0 for anonymous areas).
    pub dev_major: u32,
    /// Minor number of the device holding the file.
    pub dev_minor: u32,
    /// Inode of the mapped file (0 for anonymous areas).
    pub inode: u64,
    /// Everything after the inode column with leading whitespace removed, or
    /// `None` if empty: a file path (which may contain spaces and end in
    /// `" (deleted)"`), or a pseudo-path such as `[heap]`, `[stack]`,
    /// `[vdso]`, `[vvar]`, `[vvar_vclock]`, `[vsyscall]`, `[anon:name]`.
    pub path: Option<String>,
}

impl MapEntry {
    /// Whether the mapped file has been unlinked (path ends in `" (deleted)"`).
    pub fn is_deleted(&self) -> bool {
        self.path
            .as_deref()
            .is_some_and(|p| p.starts_with('/') && p.ends_with(DELETED_SUFFIX))
    }

    /// The path of the mapped file without the `" (deleted)"` suffix, if the
    /// area maps a file (its path starts with `/`); `None` for anonymous and
    /// special areas.
    ///
    /// The kernel's output is ambiguous for a file really named `"x (deleted)"`;
    /// compare the inode with the file found at the path to be sure.
    pub fn file_path(&self) -> Option<&str> {
        let p = self.path.as_deref()?;
        if !p.starts_with('/') {
            return None;
        }
        Some(p.strip_suffix(DELETED_SUFFIX).unwrap_or(p))
    }

    /// Length of the area in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the area is empty (never true for areas parsed from the kernel).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Parses one maps line: `start-end perms offset major:minor inode [path]`.
fn parse_map_line(line: &str) -> Result<MapEntry, ParseError> {
    let missing = |f: &str| ParseError::new(format!("missing {f}"));
    let (range, rest) = next_token(line).ok_or_else(|| missing("address range"))?;
    let (perms, rest) = next_token(rest).ok_or_else(|| missing("permissions"))?;
    let (offset, rest) = next_token(rest).ok_or_else(|| missing("offset"))?;
    let (dev, rest) = next_token(rest).ok_or_else(|| missing("device"))?;
    let (inode, rest) = next_token(rest).ok_or_else(|| missing("inode"))?;

    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| ParseError::new(format!("bad address range {range:?}")))?;
    let start = hex_u64(start, "start address")?;
    let end = hex_u64(end, "end address")?;
    if start >= end {
        return err(format!("empty or inverted address range {range:?}"));
    }

    let p = perms.as_bytes();
    let flag = |i: usize, yes: u8, no: u8| -> Result<bool, ParseError> {
        match p.get(i) {
            Some(&c) if c == yes => Ok(true),
            Some(&c) if c == no => Ok(false),
            _ => err(format!("bad permissions {perms:?}")),
        }
    };
    if p.len() != 4 {
        return err(format!("bad permissions {perms:?}"));
    }
    let read = flag(0, b'r', b'-')?;
    let write = flag(1, b'w', b'-')?;
    let exec = flag(2, b'x', b'-')?;
    let shared = flag(3, b's', b'p')?;

    let offset = hex_u64(offset, "offset")?;
    let (major, minor) = dev
        .split_once(':')
        .ok_or_else(|| ParseError::new(format!("bad device {dev:?}")))?;
    let dev_major = hex_u32(major, "device major")?;
    let dev_minor = hex_u32(minor, "device minor")?;
    let inode = dec_u64(inode, "inode")?;
    let path = (!rest.is_empty()).then(|| rest.to_owned());

    Ok(MapEntry {
        start,
        end,
        read,
        write,
        exec,
        shared,
        offset,
        dev_major,
        dev_minor,
        inode,
        path,
    })
}

/// Parses `/proc/PID/maps`. Empty input (a kernel thread) gives an empty list.
pub fn parse_maps(text: &[u8]) -> Result<Vec<MapEntry>, ParseError> {
    lines(text)
        .map(|(n, l)| {
            utf8(l, "maps line")
                .and_then(parse_map_line)
                .map_err(|e| ParseError::new(format!("line {n}: {e}")))
        })
        .collect()
}

/// One area of `/proc/PID/smaps`: the maps line plus the fields stasis uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SmapsEntry {
    /// The header line, as in `/proc/PID/maps`.
    pub map: MapEntry,
    /// The two-letter `VmFlags:` mnemonics (`rd`, `wr`, `sh`, `gd`, `dd`, `hg`, ...).
    pub vm_flags: Vec<String>,
    /// `Rss:` in KiB.
    pub rss_kb: u64,
    /// `Anonymous:` in KiB.
    pub anonymous_kb: u64,
    /// `Swap:` in KiB.
    pub swap_kb: u64,
    /// `AnonHugePages:` in KiB.
    pub anon_huge_kb: u64,
    /// `THPeligible:`, if the kernel prints it.
    pub thp_eligible: Option<bool>,
    /// `KernelPageSize:` in KiB (2048 for 2 MiB hugetlb pages), if printed.
    pub kernel_page_size_kb: Option<u64>,
    /// `ProtectionKey:` (pkey_mprotect), printed only where the CPU and
    /// kernel have protection keys.
    pub protection_key: Option<u32>,
}

impl SmapsEntry {
    /// Whether `VmFlags:` contains the mnemonic `f` (for example `"dd"`: VM_DONTDUMP).
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
}

/// `"132 kB"` -> 132.
fn parse_kb(v: &str, key: &str) -> Result<u64, ParseError> {
    let num = v.strip_suffix("kB").unwrap_or(v).trim_end();
    dec_u64(num, key)
}

/// Applies one `Key: value` line of smaps to `e`. Unknown keys are ignored.
fn apply_smaps_field(e: &mut SmapsEntry, key: &str, value: &str) -> Result<(), ParseError> {
    match key {
        "Rss" => e.rss_kb = parse_kb(value, key)?,
        "Anonymous" => e.anonymous_kb = parse_kb(value, key)?,
        "Swap" => e.swap_kb = parse_kb(value, key)?,
        "AnonHugePages" => e.anon_huge_kb = parse_kb(value, key)?,
        "KernelPageSize" => e.kernel_page_size_kb = Some(parse_kb(value, key)?),
        "ProtectionKey" => e.protection_key = Some(dec_u64(value, key)? as u32),
        "THPeligible" => {
            e.thp_eligible = Some(match value {
                "0" => false,
                "1" => true,
                _ => return err(format!("THPeligible: bad value {value:?}")),
            })
        }
        "VmFlags" => e.vm_flags = value.split_whitespace().map(str::to_owned).collect(),
        _ => {}
    }
    Ok(())
}

/// Parses `/proc/PID/smaps`: a maps line followed by `Key: value` lines for
/// each area. Unknown keys are ignored; missing known keys stay 0 / empty / `None`.
pub fn parse_smaps(text: &[u8]) -> Result<Vec<SmapsEntry>, ParseError> {
    let mut out: Vec<SmapsEntry> = Vec::new();
    for (n, l) in lines(text) {
        let at = |e: ParseError| ParseError::new(format!("line {n}: {e}"));
        let line = utf8(l, "smaps line").map_err(at)?;
        let first = next_token(line).map(|(t, _)| t).unwrap_or("");
        if first.ends_with(':') {
            let Some(entry) = out.last_mut() else {
                return Err(at(ParseError::new("field before the first area")));
            };
            // `first` ends with ':', so the line contains one.
            let (key, value) = key_value(line).unwrap_or_default();
            apply_smaps_field(entry, key, value).map_err(at)?;
        } else {
            let map = parse_map_line(line).map_err(at)?;
            out.push(SmapsEntry {
                map,
                vm_flags: Vec::new(),
                rss_kb: 0,
                anonymous_kb: 0,
                swap_kb: 0,
                anon_huge_kb: 0,
                thp_eligible: None,
                kernel_page_size_kb: None,
                protection_key: None,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &[u8] = include_bytes!("../tests/data/maps");
    const SMAPS: &[u8] = include_bytes!("../tests/data/smaps");

    fn find<'a>(v: &'a [MapEntry], path: &str) -> &'a MapEntry {
        v.iter()
            .find(|m| m.path.as_deref() == Some(path))
            .unwrap_or_else(|| panic!("no {path}"))
    }

    #[test]
    fn captured_maps() {
        let v = parse_maps(MAPS).unwrap();
        assert_eq!(v.len(), MAPS.iter().filter(|&&b| b == b'\n').count());
        let heap = find(&v, "[heap]");
        assert_eq!((heap.start, heap.end), (0x555805d43000, 0x555805d64000));
        assert!(heap.read && heap.write && !heap.exec && !heap.shared);
        assert_eq!(heap.inode, 0);
        assert_eq!(heap.file_path(), None);
        assert!(!heap.is_deleted());

        let sp = find(&v, "/tmp/cap/out/map with spaces");
        assert_eq!((sp.dev_major, sp.dev_minor, sp.inode), (0xfe, 0, 10010879));
        assert_eq!(sp.file_path(), Some("/tmp/cap/out/map with spaces"));
        assert!(sp.read && !sp.write && !sp.shared);

        let del = find(&v, "/tmp/cap/out/deleted-me (deleted)");
        assert!(del.is_deleted() && del.shared && del.write);
        assert_eq!(del.file_path(), Some("/tmp/cap/out/deleted-me"));

        for p in ["[vdso]", "[vvar]", "[vvar_vclock]", "[stack]"] {
            find(&v, p);
        }
        let vsys = find(&v, "[vsyscall]");
        assert_eq!(vsys.start, 0xffffffffff600000);
        assert!(vsys.exec && !vsys.read);
        assert_eq!(vsys.len(), 4096);
        // Anonymous areas without a name have no path.
        assert!(v.iter().any(|m| m.path.is_none()));
    }

    #[test]
    fn edge_cases() {
        assert_eq!(parse_maps(b""), Ok(vec![]));
        let m = parse_maps(b"7f00-7f01 rw-p 00000000 00:00 0    [anon:my name]\n").unwrap();
        assert_eq!(m[0].path.as_deref(), Some("[anon:my name]"));
        assert_eq!(m[0].file_path(), None);
        // Several spaces inside and at the end of a path are kept.
        let m = parse_maps(b"1000-2000 r-xs 0000f000 08:01 42 /a  b /c \n").unwrap();
        assert_eq!(m[0].path.as_deref(), Some("/a  b /c "));
        assert_eq!(m[0].offset, 0xf000);
        assert_eq!((m[0].dev_major, m[0].dev_minor), (8, 1));
        assert!(m[0].exec && m[0].shared);
        // No trailing newline, no path.
        let m = parse_maps(b"1000-2000 ---p 00000000 00:00 0").unwrap();
        assert_eq!(m[0].path, None);
        assert!(!m[0].read && !m[0].write && !m[0].exec);

        for bad in [
            &b"garbage"[..],
            b"1000-2000 rw-p 0 00:00",
            b"1000-2000 rwxq 0 00:00 0",
            b"1000-2000 rw 0 00:00 0",
            b"2000-1000 rw-p 0 00:00 0",
            b"1000 rw-p 0 00:00 0",
            b"1000-2000 rw-p 0 0000 0",
            b"1000-2000 rw-p 0 00:00 -1",
            b"1000-2000 rw-p 0 00:00 0 /\xff",
            b"10000000000000000-10000000000000001 rw-p 0 00:00 0",
        ] {
            let e = parse_maps(bad).unwrap_err();
            assert!(e.0.starts_with("line 1: "), "{e}");
        }
    }

    #[test]
    fn captured_smaps() {
        let v = parse_smaps(SMAPS).unwrap();
        let maps = parse_maps(MAPS).unwrap();
        assert_eq!(v.len(), maps.len());
        for (s, m) in v.iter().zip(&maps) {
            assert_eq!(&s.map, m);
            assert!(!s.vm_flags.is_empty(), "{s:?}");
            assert!(s.thp_eligible.is_some());
        }
        let heap = v
            .iter()
            .find(|s| s.map.path.as_deref() == Some("[heap]"))
            .unwrap();
        assert!(heap.has_flag("rd") && heap.has_flag("wr") && !heap.has_flag("ex"));
        assert!(heap.anonymous_kb > 0 && heap.rss_kb >= heap.anonymous_kb);
        let del = v.iter().find(|s| s.map.is_deleted()).unwrap();
        assert!(del.has_flag("sh"));
        let vdso = v
            .iter()
            .find(|s| s.map.path.as_deref() == Some("[vdso]"))
            .unwrap();
        assert!(vdso.has_flag("ex"));
    }

    #[test]
    fn smaps_edge_cases() {
        assert_eq!(parse_smaps(b""), Ok(vec![]));
        let t = b"1000-2000 rw-p 00000000 00:00 0 /x y\n\
                  Rss:                 8 kB\n\
                  Anonymous:           4 kB\n\
                  Swap:                2 kB\n\
                  AnonHugePages:       0 kB\n\
                  SomethingNew:        9 kB\n\
                  THPeligible:    1\n\
                  VmFlags: rd wr mr mw me dd \n\
                  3000-4000 r--p 00000000 00:00 0 \n";
        let v = parse_smaps(t).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].map.path.as_deref(), Some("/x y"));
        assert_eq!((v[0].rss_kb, v[0].anonymous_kb, v[0].swap_kb), (8, 4, 2));
        assert_eq!(v[0].thp_eligible, Some(true));
        assert!(v[0].has_flag("dd") && !v[0].has_flag("d"));
        assert_eq!(v[1].vm_flags, Vec::<String>::new());
        assert_eq!(v[1].thp_eligible, None);

        assert!(parse_smaps(b"Rss: 4 kB\n").is_err());
        assert!(parse_smaps(b"1000-2000 rw-p 0 00:00 0\nRss: lots kB\n").is_err());
        assert!(parse_smaps(b"1000-2000 rw-p 0 00:00 0\nTHPeligible: maybe\n").is_err());
        assert!(parse_smaps(b"1000-2000 rw-p 0 00:00 0\n: 4\n").is_ok());
        assert!(parse_smaps(b"garbage\n").is_err());
    }
}
