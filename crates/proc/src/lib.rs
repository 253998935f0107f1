//! Parsers for the text (and binary) files under `/proc`, plus a thin reader.
//!
//! Every parser is a pure function `fn(&[u8]) -> Result<T, ParseError>` that is
//! unit-tested on text captured from a real kernel (`tests/data/`). Parsers
//! never panic, whatever the input: malformed input gives a [`ParseError`]
//! naming the line and the field.
//!
//! Conventions shared by all parsers:
//! - Files that are lists (maps, smaps, mountinfo, timers, limits, pid lists)
//!   give an empty `Vec` for empty input; files that describe one object
//!   (stat, status, fdinfo, auxv) reject empty input.
//! - Paths (maps, mountinfo, symlinks) must be UTF-8: a path that is not is
//!   an error rather than a silently altered path. Process names (`comm`,
//!   `Name:`) are informational and decoded lossily.
//! - Unknown keys in key/value files are ignored (fdinfo keeps them in
//!   [`FdInfo::extra`]); a known key with a malformed value is an error.
//!
//! The reader functions ([`read_maps`], [`read_stat`], ...) read
//! `/proc/PID/...` and wrap failures in [`ProcError`] with the path.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auxv;
mod cgroup;
mod error;
mod fdinfo;
mod limits;
mod maps;
mod mountinfo;
mod numa_maps;
pub mod pagemap;
mod pids;
mod reader;
mod stat;
mod status;
mod timers;
mod util;

pub use auxv::parse_auxv;
pub use cgroup::{cgroup_dir, parse_cgroup};
pub use error::{ParseError, ProcError};
pub use fdinfo::{parse_fdinfo, FdInfo};
pub use limits::parse_limits;
pub use maps::{parse_maps, parse_smaps, MapEntry, SmapsEntry};
pub use mountinfo::{parse_mountinfo, MountInfo};
pub use numa_maps::parse_numa_maps;
pub use pids::parse_pid_list;
pub use reader::{
    list_fds, list_tasks, proc_path, read, read_auxv, read_children, read_fdinfo, read_limits,
    read_link, read_maps, read_mountinfo, read_numa_maps, read_smaps, read_stat, read_status,
    read_timers,
};
pub use stat::{parse_stat, Stat};
pub use status::{parse_status, Status};
pub use timers::{parse_timers, TimerInfo};
