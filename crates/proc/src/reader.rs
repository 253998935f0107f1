//! The thin reader: reads `/proc/PID/...` and hands the bytes to a parser.

use std::path::{Path, PathBuf};

use crate::{
    parse_auxv, parse_fdinfo, parse_limits, parse_maps, parse_mountinfo, parse_pid_list,
    parse_smaps, parse_stat, parse_status, parse_timers, FdInfo, MapEntry, MountInfo, ParseError,
    ProcError, SmapsEntry, Stat, Status, TimerInfo,
};

/// `/proc/PID/name`, for example `proc_path(1, "fdinfo/3")`.
pub fn proc_path(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

fn io_err(path: &Path, source: std::io::Error) -> ProcError {
    ProcError::Io {
        path: path.to_owned(),
        source,
    }
}

fn parse_err(path: &Path, e: ParseError) -> ProcError {
    ProcError::Parse {
        path: path.to_owned(),
        msg: e.0,
    }
}

/// Reads the whole of `/proc/PID/name`.
pub fn read(pid: u32, name: &str) -> Result<Vec<u8>, ProcError> {
    use std::io::Read;
    let path = proc_path(pid, name);
    // /proc files report no size: start with room for most of them, so
    // that a file is read in a few system calls, not a dozen growing ones.
    let mut buf = Vec::with_capacity(16 << 10);
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| io_err(&path, e))?;
    Ok(buf)
}

fn read_parse<T>(
    pid: u32,
    name: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, ParseError>,
) -> Result<T, ProcError> {
    let bytes = read(pid, name)?;
    parse(&bytes).map_err(|e| parse_err(&proc_path(pid, name), e))
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: u32) -> Result<Vec<MapEntry>, ProcError> {
    read_parse(pid, "maps", parse_maps)
}

/// Reads and parses `/proc/PID/numa_maps`.
pub fn read_numa_maps(pid: u32) -> Result<Vec<(u64, String)>, ProcError> {
    read_parse(pid, "numa_maps", crate::parse_numa_maps)
}

/// Reads and parses `/proc/PID/smaps`.
pub fn read_smaps(pid: u32) -> Result<Vec<SmapsEntry>, ProcError> {
    read_parse(pid, "smaps", parse_smaps)
}

/// Reads and parses `/proc/PID/stat`.
pub fn read_stat(pid: u32) -> Result<Stat, ProcError> {
    read_parse(pid, "stat", parse_stat)
}

/// Reads and parses `/proc/PID/status`.
pub fn read_status(pid: u32) -> Result<Status, ProcError> {
    read_parse(pid, "status", parse_status)
}

/// Reads and parses `/proc/PID/fdinfo/FD`.
pub fn read_fdinfo(pid: u32, fd: i32) -> Result<FdInfo, ProcError> {
    read_parse(pid, &format!("fdinfo/{fd}"), parse_fdinfo)
}

/// Reads and parses `/proc/PID/limits`.
pub fn read_limits(pid: u32) -> Result<Vec<(u32, u64, u64)>, ProcError> {
    read_parse(pid, "limits", parse_limits)
}

/// Reads and parses `/proc/PID/auxv`.
pub fn read_auxv(pid: u32) -> Result<Vec<u64>, ProcError> {
    read_parse(pid, "auxv", parse_auxv)
}

/// Reads and parses `/proc/PID/mountinfo`.
pub fn read_mountinfo(pid: u32) -> Result<Vec<MountInfo>, ProcError> {
    read_parse(pid, "mountinfo", parse_mountinfo)
}

/// Reads and parses `/proc/PID/timers` (needs CONFIG_CHECKPOINT_RESTORE).
pub fn read_timers(pid: u32) -> Result<Vec<TimerInfo>, ProcError> {
    read_parse(pid, "timers", parse_timers)
}

/// Reads and parses `/proc/PID/task/TID/children` (needs CONFIG_PROC_CHILDREN).
pub fn read_children(pid: u32, tid: u32) -> Result<Vec<u32>, ProcError> {
    read_parse(pid, &format!("task/{tid}/children"), parse_pid_list)
}

/// The numeric entries of the directory `/proc/PID/name`, sorted.
/// Entries whose names are not numbers are skipped.
fn list_numeric<T: std::str::FromStr + Ord>(pid: u32, name: &str) -> Result<Vec<T>, ProcError> {
    let path = proc_path(pid, name);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(|e| io_err(&path, e))? {
        let entry = entry.map_err(|e| io_err(&path, e))?;
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The thread IDs in `/proc/PID/task`, sorted.
pub fn list_tasks(pid: u32) -> Result<Vec<u32>, ProcError> {
    list_numeric(pid, "task")
}

/// The open file descriptors in `/proc/PID/fd`, sorted.
pub fn list_fds(pid: u32) -> Result<Vec<i32>, ProcError> {
    list_numeric(pid, "fd")
}

/// readlink of `/proc/PID/name` (`exe`, `cwd`, `root`, `fd/N`, `ns/pid`, ...).
/// A target that is not UTF-8 is a [`ProcError::Parse`].
pub fn read_link(pid: u32, name: &str) -> Result<String, ProcError> {
    let path = proc_path(pid, name);
    let target = std::fs::read_link(&path).map_err(|e| io_err(&path, e))?;
    target
        .into_os_string()
        .into_string()
        .map_err(|_| parse_err(&path, ParseError::new("link target is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn paths() {
        assert_eq!(
            proc_path(12, "fdinfo/3"),
            PathBuf::from("/proc/12/fdinfo/3")
        );
    }

    #[test]
    fn read_self() {
        let pid = me();
        let stat = read_stat(pid).unwrap();
        assert_eq!(stat.pid, pid);
        let status = read_status(pid).unwrap();
        assert_eq!((status.tgid, status.ppid), (pid, stat.ppid));
        let maps = read_maps(pid).unwrap();
        assert!(maps.iter().any(|m| m.path.as_deref() == Some("[stack]")));
        assert!(read_smaps(pid)
            .unwrap()
            .iter()
            .any(|s| s.map.path.as_deref() == Some("[stack]")));
        assert_eq!(read_limits(pid).unwrap().len(), 16);
        assert!(read_auxv(pid).unwrap().len() >= 2);
        assert!(!read_mountinfo(pid).unwrap().is_empty());
        let tasks = list_tasks(pid).unwrap();
        assert!(tasks.contains(&pid));
        assert!(tasks.windows(2).all(|w| w[0] < w[1]));
        let fds = list_fds(pid).unwrap();
        assert!(fds.windows(2).all(|w| w[0] < w[1]));
        if let Some(&fd) = fds.first() {
            read_fdinfo(pid, fd).unwrap();
        }
        assert!(read_link(pid, "exe").unwrap().starts_with('/'));
        // Either supported or missing (CONFIG_CHECKPOINT_RESTORE / CONFIG_PROC_CHILDREN).
        match read_timers(pid) {
            Ok(_) | Err(ProcError::Io { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        match read_children(pid, pid) {
            Ok(_) | Err(ProcError::Io { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn errors_name_the_path() {
        let e = read_stat(u32::MAX).unwrap_err();
        assert!(matches!(e, ProcError::Io { .. }));
        assert!(
            e.to_string().starts_with("read /proc/4294967295/stat: "),
            "{e}"
        );
        let e = parse_err(Path::new("/proc/1/stat"), ParseError::new("bad"));
        assert_eq!(e.to_string(), "parse /proc/1/stat: bad");
    }
}
