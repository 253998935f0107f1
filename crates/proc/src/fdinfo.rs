//! `/proc/PID/fdinfo/FD`.

use crate::util::{dec_u64, key_value, lines, oct_u32, utf8};
use crate::ParseError;

/// The content of `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FdInfo {
    /// `pos:` file offset.
    pub pos: u64,
    /// `flags:` open flags (`O_*`, printed in octal), including `O_CLOEXEC`
    /// for the descriptor.
    pub flags: u32,
    /// `mnt_id:` ID of the mount holding the file (see mountinfo).
    pub mnt_id: u64,
    /// `ino:` inode number (Linux >= 5.14).
    pub ino: Option<u64>,
    /// Every other line, in order, as `(key, value)` with whitespace trimmed
    /// (for example `("eventfd-count", "7")`, `("tfd", "5 events: 19 ...")`).
    /// A line without `':'` is kept whole as the key with an empty value.
    pub extra: Vec<(String, String)>,
}

impl FdInfo {
    /// The value of the first `extra` line whose key is `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `/proc/PID/fdinfo/FD`. `pos:`, `flags:` and `mnt_id:` are required.
pub fn parse_fdinfo(text: &[u8]) -> Result<FdInfo, ParseError> {
    let (mut pos, mut flags, mut mnt_id, mut ino) = (None, None, None, None);
    let mut extra = Vec::new();
    for (n, l) in lines(text) {
        let at = |e: ParseError| ParseError::new(format!("line {n}: {e}"));
        let line = utf8(l, "fdinfo line").map_err(at)?;
        let (key, v) = key_value(line).unwrap_or((line.trim(), ""));
        match key {
            "pos" if pos.is_none() => pos = Some(dec_u64(v, key).map_err(at)?),
            "flags" if flags.is_none() => flags = Some(oct_u32(v, key).map_err(at)?),
            "mnt_id" if mnt_id.is_none() => mnt_id = Some(dec_u64(v, key).map_err(at)?),
            "ino" if ino.is_none() => ino = Some(dec_u64(v, key).map_err(at)?),
            _ => extra.push((key.to_owned(), v.to_owned())),
        }
    }
    let missing = |k: &str| ParseError::new(format!("fdinfo: missing {k}"));
    Ok(FdInfo {
        pos: pos.ok_or_else(|| missing("pos"))?,
        flags: flags.ok_or_else(|| missing("flags"))?,
        mnt_id: mnt_id.ok_or_else(|| missing("mnt_id"))?,
        ino,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured() {
        let f = parse_fdinfo(include_bytes!("../tests/data/fdinfo_devnull")).unwrap();
        assert_eq!(
            (f.pos, f.flags, f.mnt_id, f.ino),
            (0, 0o100000, 24, Some(3))
        );
        assert!(f.extra.is_empty());

        let f = parse_fdinfo(include_bytes!("../tests/data/fdinfo_eventfd")).unwrap();
        // O_RDWR | O_NONBLOCK | O_CLOEXEC
        assert_eq!(f.flags, 0o2004002);
        assert_eq!(f.ino, Some(1038));
        assert_eq!(f.get("eventfd-count"), Some("7"));
        assert_eq!(f.get("eventfd-semaphore"), Some("0"));
        assert_eq!(f.extra.len(), 3);

        let f = parse_fdinfo(include_bytes!("../tests/data/fdinfo_append")).unwrap();
        // O_WRONLY | O_APPEND | O_LARGEFILE
        assert_eq!((f.pos, f.flags), (6, 0o102001));
        assert_eq!(f.flags & 0o2000, 0o2000);

        let f = parse_fdinfo(include_bytes!("../tests/data/fdinfo_deleted")).unwrap();
        assert_eq!((f.flags, f.mnt_id), (0o100002, 27));
    }

    #[test]
    fn other_formats() {
        // epoll and inotify lines have several colons; timerfd has a key with a space.
        let t = b"pos:\t0\nflags:\t02\nmnt_id:\t15\ntfd:        5 events:       19 data: 5  pos:0 ino:3 sdev:4\n\
                  inotify wd:1 ino:2 sdev:800001 mask:fff\nsettime flags: 01\nit_value: (0, 0)\nlonely\n";
        let f = parse_fdinfo(t).unwrap();
        assert_eq!(f.ino, None);
        assert_eq!(
            f.get("tfd"),
            Some("5 events:       19 data: 5  pos:0 ino:3 sdev:4")
        );
        assert_eq!(f.get("inotify wd"), Some("1 ino:2 sdev:800001 mask:fff"));
        assert_eq!(f.get("settime flags"), Some("01"));
        assert_eq!(f.get("it_value"), Some("(0, 0)"));
        assert_eq!(f.get("lonely"), Some(""));
    }

    #[test]
    fn bad() {
        assert!(parse_fdinfo(b"").is_err());
        assert!(parse_fdinfo(b"garbage").is_err());
        assert!(parse_fdinfo(b"pos:\t0\nflags:\t9\nmnt_id:\t1\n").is_err());
        assert!(parse_fdinfo(b"pos:\t-1\nflags:\t0\nmnt_id:\t1\n").is_err());
        assert!(parse_fdinfo(b"pos:\t0\nflags:\t0\n").is_err());
    }
}
