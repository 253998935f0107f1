//! `/proc/PID/cgroup` and the cgroup hierarchies of a mount table.

use crate::error::ParseError;
use crate::MountInfo;

/// (controllers, path) per hierarchy, from `/proc/PID/cgroup` lines
/// `ID:CONTROLLERS:PATH` (`0::/a` for cgroup v2, `4:cpu,cpuacct:/b`,
/// `1:name=systemd:/`). Sorted by controllers.
pub fn parse_cgroup(text: &[u8]) -> Result<Vec<(String, String)>, ParseError> {
    let text = std::str::from_utf8(text).map_err(|_| ParseError::new("cgroup: not UTF-8"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ParseError::new(format!(
                "cgroup line {}: expected ID:CONTROLLERS:PATH",
                n + 1
            )));
        };
        out.push((ctrl.to_owned(), path.to_owned()));
    }
    out.sort();
    Ok(out)
}

/// Mount options of a v1 cgroup mount that are not controllers.
const NOT_CONTROLLERS: &[&str] = &[
    "rw",
    "ro",
    "noprefix",
    "xattr",
    "clone_children",
    "cpuset_v2_mode",
    "favordynmods",
    "nofavordynmods",
];

/// The controllers a cgroup mount carries, in /proc/PID/cgroup's spelling
/// when compared as a set: `""` for cgroup2, `None` for other filesystems.
fn controllers_of(m: &MountInfo) -> Option<Vec<String>> {
    match m.fs_type.as_str() {
        "cgroup2" => Some(Vec::new()),
        "cgroup" => {
            let mut v: Vec<String> = m
                .super_options
                .split(',')
                .filter(|o| !NOT_CONTROLLERS.contains(o) && !o.starts_with("release_agent="))
                .map(str::to_owned)
                .collect();
            v.sort();
            Some(v)
        }
        _ => None,
    }
}

/// Where the hierarchy named `controllers` (as in /proc/PID/cgroup) shows
/// the cgroup `path`: the mount of that hierarchy whose root holds it,
/// joined with the rest of the path.
pub fn cgroup_dir(
    mounts: &[MountInfo],
    controllers: &str,
    path: &str,
) -> Option<std::path::PathBuf> {
    let mut want: Vec<String> = controllers
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    want.sort();
    mounts
        .iter()
        .filter(|m| controllers_of(m).as_ref() == Some(&want))
        .filter_map(|m| {
            let rest = if m.root == "/" {
                path
            } else {
                path.strip_prefix(m.root.as_str())
                    .filter(|r| r.is_empty() || r.starts_with('/'))?
            };
            Some(std::path::Path::new(&m.mount_point).join(rest.trim_start_matches('/')))
        })
        .min_by_key(|p| p.as_os_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_mountinfo;

    #[test]
    fn lines_and_mounts() {
        let v =
            parse_cgroup(b"9:name=systemd:/\n4:memory:/p/x\n1:cpu,cpuacct:/\n0::/a b\n").unwrap();
        assert_eq!(v[0], (String::new(), "/a b".to_owned()));
        assert_eq!(v[1], ("cpu,cpuacct".to_owned(), "/".to_owned()));
        assert_eq!(v[3], ("name=systemd".to_owned(), "/".to_owned()));
        assert!(parse_cgroup(b"0:/x\n").is_err());
        let mi = parse_mountinfo(
            b"32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpuacct,cpu\n\
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
50 31 0:36 /sub /mnt/pids rw,relatime - cgroup cgroup rw,pids\n",
        )
        .unwrap();
        let d = |c: &str, p: &str| cgroup_dir(&mi, c, p).map(|p| p.display().to_string());
        assert_eq!(
            d("cpu,cpuacct", "/a").as_deref(),
            Some("/sys/fs/cgroup/cpu,cpuacct/a")
        );
        assert_eq!(
            d("name=systemd", "/").as_deref(),
            Some("/sys/fs/cgroup/systemd/")
        );
        assert_eq!(d("", "/x/y").as_deref(), Some("/sys/fs/cgroup/unified/x/y"));
        assert_eq!(d("pids", "/sub/k").as_deref(), Some("/mnt/pids/k"));
        assert_eq!(d("pids", "/other"), None);
        assert_eq!(d("memory", "/"), None);
    }
}
