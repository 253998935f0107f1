//! Caps on every count and length an image may declare: checked before
//! anything is allocated or trusted (see docs/image-format.md).

/// Page size the image format is defined for (x86-64).
pub const PAGE_SIZE: u64 = 4096;

/// First address above x86-64 user space (47-bit, minus the guard page).
/// Only a `[vsyscall]` VMA may lie above it.
pub const USER_SPACE_END: u64 = 0x7fff_ffff_f000;

/// Most VMAs a process image may hold.
pub const MAX_VMAS: usize = 1_000_000;
/// Most page runs a process image may hold.
pub const MAX_PAGE_RUNS: usize = 10_000_000;
/// Most file descriptors a process image may hold.
pub const MAX_FDS: usize = 1_000_000;
/// Highest file descriptor number accepted (the kernel's `nr_open` ceiling).
pub const MAX_FD: i32 = 1 << 20;
/// Most threads a process image may hold.
pub const MAX_THREADS: usize = 100_000;
/// Most POSIX timers per process an image may hold.
pub const MAX_TIMERS: usize = 1 << 20;
/// Largest pipe buffer the image may hold (the kernel's pipe-max-size is 1 MiB by default).
pub const MAX_PIPE_DATA: usize = 64 << 20;
/// Cap on queued signals per queue (the kernel's RLIMIT_SIGPENDING is per user).
pub const MAX_PENDING: usize = 1 << 20;
/// Largest saved file (memfd, deleted file) the image may hold: the
/// ceiling of `dump --ghost-limit` (1 TiB).
pub const MAX_SAVED_FILE: u64 = 1 << 40;
/// Most saved files one process image may hold.
pub const MAX_SAVED_FILES: usize = 100_000;
/// Most data extents one saved file may list.
pub const MAX_EXTENTS: usize = 1 << 20;
/// Longest memfd name (memfd_create allows 249 bytes).
pub const MAX_MEMFD_NAME: usize = 249;
/// Most auxv words.
pub const MAX_AUXV_WORDS: usize = 1024;
/// Most supplementary groups (NGROUPS_MAX).
pub const MAX_GROUPS: usize = 65536;
/// Most rlimit entries.
pub const MAX_RLIMITS: usize = 64;
/// Most sigaction entries (one per signal 1..=64).
pub const MAX_SIGACTIONS: usize = 64;
/// CPU numbers accepted in an affinity list (glibc's CPU_SETSIZE).
pub const MAX_CPU: u32 = 1024;
/// Largest XSAVE area accepted, in bytes.
pub const MAX_XSAVE_LEN: usize = 64 << 10;
/// Most processes an inventory may list (the kernel's PID_MAX_LIMIT).
pub const MAX_PROCESSES: usize = 4 << 20;
/// Longest path string accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest comm string accepted, in bytes.
pub const MAX_COMM_LEN: usize = 64;
/// Longest plain file name accepted inside the image directory.
pub const MAX_NAME_LEN: usize = 255;
