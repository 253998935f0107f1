//! Shared helpers for the stasis test programs (`src/bin/tp_*.rs`).
//!
//! # Protocol between the harness and a test program
//!
//! Every program takes its work directory as the first argument, followed by
//! `--key value` options and flags. It runs single-threaded, with no children,
//! pipes or sockets; stdin is /dev/null and stdout/stderr go to `WORK/out.log`.
//!
//! 1. The program sets up the state it tests.
//! 2. It writes `WORK/ready` (a temporary file renamed into place, content
//!    `READY <pid>\n`). The harness treats the file as present once it ends with
//!    a newline, so writers that cannot rename (bash) write it in one `printf`.
//! 3. It waits for *go*: the file `WORK/go` exists and its byte 0 is `'1'`.
//!    The harness releases go by opening `go` with `O_CREAT` (no truncation) and
//!    `pwrite`-ing `"1"` at offset 0, so a program may also create `go` itself
//!    beforehand with a zero byte and watch it through a `MAP_SHARED` mapping.
//! 4. It verifies everything it set up against values captured before `ready`
//!    and writes `WORK/result` (again via rename): `PASS\n`, `FAIL: <what
//!    differed>\n` or `SKIP: <missing feature>\n`, and exits 0 (PASS, SKIP) or
//!    1 (FAIL).
//!
//! The flag `--corrupt` asks a program to damage one piece of its own state
//! after go and before verifying: the negative control that proves its checks
//! can fail.
//!
//! Between taking its "before" snapshot and verifying, a program must not
//! change its own memory layout; [`Proto::ready`] and [`Proto::wait_go`]
//! therefore make no allocations and only use raw system calls.

pub mod inet;

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Name of the readiness file in the work directory.
pub const READY_FILE: &str = "ready";
/// Name of the go file in the work directory.
pub const GO_FILE: &str = "go";
/// Name of the result file in the work directory.
pub const RESULT_FILE: &str = "result";
/// Polling interval while waiting for go.
pub const POLL_NS: i64 = 10_000_000;

/// The work directory and its protocol files, with every path prepared in
/// advance so the protocol steps do not allocate.
pub struct Proto {
    dir: PathBuf,
    dir_c: CString,
    ready_tmp: CString,
    ready: CString,
    go: CString,
    result_tmp: CString,
    result: CString,
    ready_line: Vec<u8>,
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

impl Proto {
    /// The protocol for the work directory `dir`.
    pub fn new(dir: &Path) -> Proto {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        Proto {
            dir: dir.to_path_buf(),
            dir_c: cpath(dir),
            ready_tmp: cpath(&dir.join("ready.tmp")),
            ready: cpath(&dir.join(READY_FILE)),
            go: cpath(&dir.join(GO_FILE)),
            result_tmp: cpath(&dir.join("result.tmp")),
            result: cpath(&dir.join(RESULT_FILE)),
            ready_line: format!("READY {pid}\n").into_bytes(),
        }
    }

    /// Parses the command line: the work directory, then options.
    pub fn from_args() -> (Proto, Args) {
        let mut argv = std::env::args_os().skip(1);
        let Some(dir) = argv.next() else {
            eprintln!("usage: PROGRAM WORKDIR [--key value | --flag]...");
            std::process::exit(2);
        };
        let rest = argv.map(|a| a.to_string_lossy().into_owned()).collect();
        (Proto::new(Path::new(&dir)), Args { rest })
    }

    /// For a program run in a rootfs (WORKDIR its root), whose stdio the
    /// harness's files outside it would make a dump refuse: stdin on the
    /// program's own copy WORKDIR/NAME, stdout and stderr on
    /// WORKDIR/NAME.log.
    pub fn stdio_in_workdir(&self, name: &str) {
        use std::os::fd::AsRawFd;
        let (i, o) = (
            std::fs::File::open(self.path(name)).expect("open stdin"),
            std::fs::File::create(self.path(&format!("{name}.log"))).expect("create log"),
        );
        // SAFETY: dup2 of descriptors we hold onto 0, 1, 2.
        unsafe {
            libc::dup2(i.as_raw_fd(), 0);
            libc::dup2(o.as_raw_fd(), 1);
            libc::dup2(o.as_raw_fd(), 2);
        }
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path inside the work directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Path of the temporary file renamed to `ready` (for programs that do the
    /// rename themselves, e.g. from inline assembly).
    pub fn ready_tmp_cpath(&self) -> &CStr {
        &self.ready_tmp
    }

    /// Path of `ready`.
    pub fn ready_cpath(&self) -> &CStr {
        &self.ready
    }

    /// Path of `go`.
    pub fn go_cpath(&self) -> &CStr {
        &self.go
    }

    /// Writes `ready.tmp` without renaming it (see [`Proto::ready_tmp_cpath`]).
    pub fn write_ready_tmp(&self) {
        write_file_raw(&self.ready_tmp, &self.ready_line).expect("write ready.tmp");
    }

    /// Announces that the state is set up. Does not allocate.
    pub fn ready(&self) {
        self.write_ready_tmp();
        // SAFETY: both paths are valid NUL-terminated strings.
        if unsafe { libc::rename(self.ready_tmp.as_ptr(), self.ready.as_ptr()) } != 0 {
            fatal("rename ready.tmp to ready");
        }
    }

    /// Whether go has been released. Does not allocate.
    pub fn go_released(&self) -> bool {
        // SAFETY: valid path; the fd is closed below.
        let fd = unsafe { libc::open(self.go.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return false;
        }
        let mut b = 0u8;
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::pread(fd, (&raw mut b).cast(), 1, 0) };
        // SAFETY: fd was opened above and is not used afterwards.
        unsafe { libc::close(fd) };
        n == 1 && b == b'1'
    }

    /// Sleeps in 10 ms steps until go is released. Does not allocate.
    /// Exits with status 3 if the work directory disappears (the harness is
    /// gone), so an abandoned program never polls forever.
    pub fn wait_go(&self) {
        while !self.go_released() {
            // SAFETY: valid NUL-terminated path.
            if unsafe { libc::access(self.dir_c.as_ptr(), libc::F_OK) } != 0 {
                std::process::exit(3);
            }
            nap(POLL_NS);
        }
    }

    /// Writes the result file and exits: 0 on PASS or SKIP, 1 on FAIL.
    pub fn finish(&self, report: &Report) -> ! {
        let (line, code) = report.verdict();
        let written = write_file_raw(&self.result_tmp, line.as_bytes()).is_ok()
            // SAFETY: both paths are valid NUL-terminated strings.
            && unsafe { libc::rename(self.result_tmp.as_ptr(), self.result.as_ptr()) } == 0
            // Two restored copies of one image share this directory and
            // race on the temporary name: then write the result in place.
            || write_file_raw(&self.result, line.as_bytes()).is_ok();
        if !written {
            fatal("write result");
        }
        std::process::exit(code);
    }

    /// Convenience for the usual flow: ready, wait for go.
    pub fn ready_and_wait(&self) {
        self.ready();
        self.wait_go();
    }
}

/// Options after the work directory.
pub struct Args {
    rest: Vec<String>,
}

impl Args {
    /// Whether `--name` is present.
    pub fn flag(&self, name: &str) -> bool {
        self.rest.iter().any(|a| a.strip_prefix("--") == Some(name))
    }

    /// The value following `--name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let pos = self
            .rest
            .iter()
            .position(|a| a.strip_prefix("--") == Some(name))?;
        self.rest.get(pos + 1).map(String::as_str)
    }

    /// `--name N` parsed as a number, or `default`.
    pub fn num(&self, name: &str, default: u64) -> u64 {
        self.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{name} {v}: not a number"))
        })
    }

    /// The `--corrupt` negative-control flag.
    pub fn corrupt(&self) -> bool {
        self.flag("corrupt")
    }
}

/// Collected check results of one program.
#[derive(Default)]
pub struct Report {
    failures: Vec<String>,
    skip: Option<String>,
}

impl Report {
    pub fn new() -> Report {
        Report::default()
    }

    /// Records a failure.
    pub fn fail(&mut self, msg: impl Into<String>) {
        self.failures.push(msg.into());
    }

    /// Records a failure unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    /// Records a failure naming `what` unless `before == after`.
    pub fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, before: T, after: T) {
        if before != after {
            self.failures
                .push(format!("{what}: before {before:?}, after {after:?}"));
        }
    }

    /// Marks the program as skipped (a missing feature, not a failure).
    pub fn skip(&mut self, why: impl Into<String>) {
        self.skip = Some(why.into());
    }

    /// Whether nothing failed so far.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The result line and the exit code.
    pub fn verdict(&self) -> (String, i32) {
        if !self.failures.is_empty() {
            let mut msg = self.failures.join("; ").replace('\n', " ");
            if msg.len() > 4000 {
                let mut cut = 4000;
                while !msg.is_char_boundary(cut) {
                    cut -= 1;
                }
                msg.truncate(cut);
                msg.push_str(" ...");
            }
            (format!("FAIL: {msg}\n"), 1)
        } else if let Some(why) = &self.skip {
            (format!("SKIP: {why}\n"), 0)
        } else {
            ("PASS\n".to_string(), 0)
        }
    }
}

/// Prints `what` with errno to stderr and exits with status 2.
pub fn fatal(what: &str) -> ! {
    let err = std::io::Error::last_os_error();
    eprintln!("fatal: {what}: {err}");
    std::process::exit(2);
}

/// CLOCK_MONOTONIC in nanoseconds (the same clock across a checkpoint
/// and restore on one machine, outside a time namespace).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// nanosleep for `ns` nanoseconds (EINTR ends the nap early).
pub fn nap(ns: i64) {
    let ts = libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    };
    // SAFETY: ts is a valid timespec; a null remainder is allowed.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// Creates or truncates `path` and writes `data` with raw calls (no allocation).
pub fn write_file_raw(path: &CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: valid path; fd closed below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut done = 0;
    let mut res = Ok(());
    while done < data.len() {
        // SAFETY: the pointer and length describe the unwritten tail of data.
        let n = unsafe { libc::write(fd, data[done..].as_ptr().cast(), data.len() - done) };
        if n <= 0 {
            res = Err(std::io::Error::last_os_error());
            break;
        }
        done += n.unsigned_abs();
    }
    // SAFETY: fd was opened above and is not used afterwards.
    unsafe { libc::close(fd) };
    res
}

/// Reads the whole file `path` into `buf` (cleared first) without growing it,
/// so a buffer allocated in advance keeps the address space unchanged.
/// Fails with `ENOBUFS` if the file does not fit.
pub fn read_file_raw(path: &CStr, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    // SAFETY: valid path; fd closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let res = loop {
        let spare = buf.capacity() - buf.len();
        if spare == 0 {
            break Err(std::io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        // SAFETY: writes at most `spare` bytes into the buffer's spare capacity.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().add(buf.len()).cast(), spare) };
        if n < 0 {
            break Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break Ok(());
        }
        // SAFETY: the kernel initialised n more bytes.
        unsafe { buf.set_len(buf.len() + n.unsigned_abs()) };
    };
    // SAFETY: fd was opened above and is not used afterwards.
    unsafe { libc::close(fd) };
    res
}

/// Touches `bytes` of stack so that later, deeper calls do not grow the stack
/// mapping (which would change /proc/self/maps between two snapshots).
#[inline(never)]
pub fn grow_stack(bytes: usize) {
    let mut chunk = [0u8; 64 * 1024];
    std::hint::black_box(&mut chunk);
    if bytes > chunk.len() {
        grow_stack(bytes - chunk.len());
    }
    std::hint::black_box(&mut chunk);
}

/// splitmix64: a fast, well-mixed PRNG for filling memory reproducibly.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let last = self.next_u64().to_le_bytes();
            let n = tail.len();
            tail.copy_from_slice(&last[..n]);
        }
    }
}

/// 64-bit hash of a byte slice (XXH3).
pub fn hash(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).expect("page size")
}

/// An anonymous or file mapping owned by a test program. It is never unmapped:
/// the programs exit after verifying.
pub struct Mapping {
    pub addr: *mut u8,
    pub len: usize,
}

impl Mapping {
    /// `mmap(NULL, len, prot, flags, fd, off)`, exiting on failure.
    pub fn new(len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> Mapping {
        // SAFETY: a fresh mapping at a kernel-chosen address cannot alias Rust objects.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, off) };
        if p == libc::MAP_FAILED {
            fatal("mmap");
        }
        Mapping {
            addr: p.cast(),
            len,
        }
    }

    /// Private anonymous read-write memory.
    pub fn anon(len: usize) -> Mapping {
        Mapping::new(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    }

    /// Start address as an integer.
    pub fn start(&self) -> usize {
        self.addr as usize
    }

    /// The mapping as a byte slice. The caller must know it is readable.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is live for the rest of the program and readable
        // by the caller's contract; no &mut alias exists while this is held.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }

    /// The mapping as a mutable byte slice. The caller must know it is writable.
    #[allow(clippy::mut_from_ref)]
    pub fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: as for bytes(); callers use one slice at a time.
        unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) }
    }
}

/// Creates `path` with `len` bytes from `Rng::new(seed)` and returns the bytes.
pub fn make_data_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    Rng::new(seed).fill(&mut data);
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    data
}

/// `errno` of the last failed call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Lines of /proc/self/status starting with `key:`.
pub fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// Waits (at most 10 s) until process `pid` is in a `ns` namespace
/// (`uts`, `ipc`, ...) other than ours: a child that unshares after the
/// fork must have done so before the program reports ready.
pub fn await_other_ns(pid: i32, ns: &str) -> bool {
    let link = |p: String| std::fs::read_link(p).ok();
    let ours = link(format!("/proc/self/ns/{ns}"));
    for _ in 0..1000 {
        let theirs = link(format!("/proc/{pid}/ns/{ns}"));
        if theirs.is_some() && theirs != ours {
            return true;
        }
        nap(POLL_NS);
    }
    false
}

/// In a mount namespace just copied from the harness's: detaches its nsfs
/// mounts (another test's `ip netns add` binds under /run/netns, caught
/// by the copy): they are not the program's, and a dump would record them
/// as external mounts that are gone by the restore (as `stasis run` does
/// for its trees).
pub fn detach_nsfs_mounts() {
    for _ in 0..16 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let points: Vec<String> = info
            .lines()
            .filter_map(|l| {
                let (a, b) = l.split_once(" - ")?;
                b.starts_with("nsfs ")
                    .then(|| a.split(' ').nth(4).map(|p| p.replace("\\040", " ")))?
            })
            .collect();
        if points.is_empty() {
            return;
        }
        for p in points {
            let c = std::ffi::CString::new(p).expect("no NUL");
            // SAFETY: umount2 with a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Every inotify event waiting in `fd` as (wd, mask, name); `fd` must not block
/// (or must have events waiting).
pub fn inotify_events(fd: i32) -> Vec<(i32, u32, String)> {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD into n; then a read into our buffer.
    let len = unsafe {
        libc::ioctl(fd, libc::FIONREAD, &mut n);
        if n == 0 {
            return out;
        }
        libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
    };
    let mut at = 0usize;
    while at + 16 <= len.max(0) as usize {
        let i32_at = |o: usize| i32::from_ne_bytes(buf[o..o + 4].try_into().unwrap_or_default());
        let (wd, mask, nlen) = (i32_at(at), i32_at(at + 4) as u32, i32_at(at + 12) as usize);
        let name = buf[at + 16..at + 16 + nlen]
            .split(|&b| b == 0)
            .next()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default();
        out.push((wd, mask, name));
        at += 16 + nlen;
    }
    out
}
