//! `/proc/PID/mountinfo`.

use crate::util::{dec_u32, lines, next_token, utf8};
use crate::ParseError;

/// One line of `/proc/PID/mountinfo` (see proc_pid_mountinfo(5)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MountInfo {
    /// (1) Unique ID of the mount.
    pub mount_id: u32,
    /// (2) ID of the parent mount (itself for the root of the tree).
    pub parent_id: u32,
    /// (3) Major number of `st_dev` for files on this filesystem.
    pub major: u32,
    /// (3) Minor number of `st_dev`.
    pub minor: u32,
    /// (4) Root of the mount within its filesystem, unescaped.
    pub root: String,
    /// (5) Mount point relative to the process's root, unescaped.
    pub mount_point: String,
    /// (6) Per-mount options (`rw,nosuid,relatime`).
    pub options: String,
    /// (7) Optional fields (`shared:N`, `master:N`, `propagate_from:N`, `unbindable`).
    pub optional: Vec<String>,
    /// (9) Filesystem type (`ext4`, `fuse.sshfs`), unescaped.
    pub fs_type: String,
    /// (10) Mount source (device or `none`), unescaped.
    pub source: String,
    /// (11) Per-superblock options: the rest of the line.
    pub super_options: String,
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash); other backslashes are kept.
fn unescape(s: &str, what: &str) -> Result<String, ParseError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            if let Some(d) = b.get(i + 1..i + 4) {
                if d.iter().all(|x| (b'0'..=b'7').contains(x)) {
                    let v = d.iter().fold(0u32, |a, x| a * 8 + u32::from(x - b'0'));
                    if let Ok(v) = u8::try_from(v) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ParseError::new(format!("{what}: not UTF-8 after unescaping")))
}

fn parse_line(line: &str) -> Result<MountInfo, ParseError> {
    let mut rest = line;
    let mut tok = |what: &str| -> Result<&str, ParseError> {
        let (t, r) = next_token(rest).ok_or_else(|| ParseError::new(format!("missing {what}")))?;
        rest = r;
        Ok(t)
    };
    let mount_id = dec_u32(tok("mount id")?, "mount id")?;
    let parent_id = dec_u32(tok("parent id")?, "parent id")?;
    let dev = tok("device")?;
    let root = unescape(tok("root")?, "root")?;
    let mount_point = unescape(tok("mount point")?, "mount point")?;
    let options = tok("mount options")?.to_owned();
    let mut optional = Vec::new();
    loop {
        match tok("'-' separator")? {
            "-" => break,
            o => optional.push(o.to_owned()),
        }
    }
    let fs_type = unescape(tok("filesystem type")?, "filesystem type")?;
    let source = unescape(tok("source")?, "source")?;
    let super_options = rest.trim_end().to_owned();

    let (major, minor) = dev
        .split_once(':')
        .ok_or_else(|| ParseError::new(format!("bad device {dev:?}")))?;
    Ok(MountInfo {
        mount_id,
        parent_id,
        major: dec_u32(major, "device major")?,
        minor: dec_u32(minor, "device minor")?,
        root,
        mount_point,
        options,
        optional,
        fs_type,
        source,
        super_options,
    })
}

/// Parses `/proc/PID/mountinfo`. Empty input gives an empty list.
pub fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountInfo>, ParseError> {
    lines(text)
        .map(|(n, l)| {
            utf8(l, "mountinfo line")
                .and_then(parse_line)
                .map_err(|e| ParseError::new(format!("line {n}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured() {
        let v = parse_mountinfo(include_bytes!("../tests/data/mountinfo")).unwrap();
        assert_eq!(v.len(), 20);
        let root = v.iter().find(|m| m.mount_point == "/").unwrap();
        assert_eq!(
            (root.mount_id, root.parent_id, root.major, root.minor),
            (27, 1, 254, 0)
        );
        assert_eq!(
            (root.root.as_str(), root.options.as_str()),
            ("/", "rw,relatime")
        );
        assert!(root.optional.is_empty());
        assert_eq!(
            (root.fs_type.as_str(), root.source.as_str()),
            ("ext4", "/dev/vda")
        );
        assert_eq!(
            root.super_options,
            "rw,discard,resv_strict,resuid=65534,resgid=65534"
        );
        let cg = v.iter().find(|m| m.fs_type == "cgroup2").unwrap();
        assert_eq!(cg.mount_point, "/sys/fs/cgroup/unified");
    }

    #[test]
    fn escapes_and_optional_fields() {
        let t = b"36 35 98:0 /mnt\\0401 /mnt\\0402\\134x\\9 rw,noatime master:1 shared:7 - fuse.my\\040fs /dev/my\\011disk rw,errors=continue\n";
        let m = &parse_mountinfo(t).unwrap()[0];
        assert_eq!(m.root, "/mnt 1");
        assert_eq!(m.mount_point, "/mnt 2\\x\\9");
        assert_eq!(m.optional, vec!["master:1", "shared:7"]);
        assert_eq!(m.fs_type, "fuse.my fs");
        assert_eq!(m.source, "/dev/my\tdisk");
        assert_eq!(m.super_options, "rw,errors=continue");
        // Empty super options and escapes at the very end.
        let m = &parse_mountinfo(b"1 0 0:1 / /a\\040 rw - tmpfs none").unwrap()[0];
        assert_eq!(
            (m.mount_point.as_str(), m.super_options.as_str()),
            ("/a ", "")
        );
        assert_eq!(unescape("\\400\\04", "x").unwrap(), "\\400\\04");
    }

    #[test]
    fn bad() {
        assert_eq!(parse_mountinfo(b""), Ok(vec![]));
        for t in [
            &b"garbage"[..],
            b"1 0 0:1 / / rw shared:1 tmpfs none rw",
            b"1 0 01 / / rw - tmpfs none rw",
            b"1 0 0:1 / / rw -",
            b"1 0 0:1 / / rw - tmpfs",
            b"x 0 0:1 / / rw - tmpfs none rw",
            b"1 0 0:1 /\\377 / rw - tmpfs none rw",
        ] {
            let e = parse_mountinfo(t).unwrap_err();
            assert!(e.0.starts_with("line 1: "), "{e}");
        }
    }
}
