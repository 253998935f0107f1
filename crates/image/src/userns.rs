//! The user namespace of a tree, when its root had one of its own (a
//! child of the dumper's): its id maps and setgroups. A restore creates a
//! new one first, writes the maps from outside, and makes the tree's
//! other namespaces in it. The tree's credentials are then saved as the
//! namespace sees them.

use serde::{Deserialize, Serialize};

/// The kernel's limit of lines in one map (since 4.15).
pub const MAX_MAP_LINES: usize = 340;

/// One line of uid_map, gid_map or projid_map: ids `inside..inside+count`
/// of the namespace are `outside..outside+count` of its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNs {
    pub uid_map: Vec<IdRange>,
    pub gid_map: Vec<IdRange>,
    #[serde(default)]
    pub projid_map: Vec<IdRange>,
    /// /proc/PID/setgroups: "allow" (true) or "deny".
    pub setgroups_allow: bool,
}

/// Parses a map as /proc/PID/uid_map shows it.
pub fn parse_map(text: &str) -> Option<Vec<IdRange>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut w = l.split_whitespace().map(|v| v.parse::<u32>().ok());
            Some(IdRange {
                inside: w.next()??,
                outside: w.next()??,
                count: w.next()??,
            })
        })
        .collect()
}

/// A map as the kernel takes it: one "INSIDE OUTSIDE COUNT" line each.
pub fn map_text(map: &[IdRange]) -> String {
    map.iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

/// The id inside the namespace that is `outside` in its parent.
pub fn to_inside(map: &[IdRange], outside: u32) -> Option<u32> {
    map.iter().find_map(|r| {
        let off = outside.checked_sub(r.outside)?;
        (off < r.count).then(|| r.inside + off)
    })
}

impl UserNs {
    /// Checks each map fits the kernel's limits: at most
    /// [`MAX_MAP_LINES`] lines, no empty or wrapping range.
    pub fn check(&self) -> Result<(), String> {
        for (what, map) in [
            ("uid_map", &self.uid_map),
            ("gid_map", &self.gid_map),
            ("projid_map", &self.projid_map),
        ] {
            if map.len() > MAX_MAP_LINES {
                return Err(format!(
                    "user_ns.{what}: {} lines (at most {MAX_MAP_LINES})",
                    map.len()
                ));
            }
            for r in map {
                if r.count == 0
                    || r.inside.checked_add(r.count).is_none()
                    || r.outside.checked_add(r.count).is_none()
                {
                    return Err(format!("user_ns.{what}: range {r:?} is empty or wraps"));
                }
            }
        }
        if self.uid_map.is_empty() || self.gid_map.is_empty() {
            return Err("user_ns: an empty uid_map or gid_map".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_maps() {
        let m = parse_map("         0     100000      65536\n").expect("map");
        assert_eq!(m.len(), 1);
        assert_eq!(to_inside(&m, 100000), Some(0));
        assert_eq!(to_inside(&m, 100000 + 65535), Some(65535));
        assert_eq!(to_inside(&m, 0), None);
        assert_eq!(to_inside(&m, 100000 + 65536), None);
        assert_eq!(map_text(&m), "0 100000 65536\n");
        assert!(parse_map("0 1\n").is_none());
    }

    #[test]
    fn check_refuses_empty_and_wrapping() {
        let r = IdRange {
            inside: 0,
            outside: u32::MAX,
            count: 2,
        };
        let u = UserNs {
            uid_map: vec![r],
            gid_map: vec![r],
            projid_map: vec![],
            setgroups_allow: true,
        };
        assert!(u.check().is_err());
    }
}
