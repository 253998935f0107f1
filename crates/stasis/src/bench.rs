//! `stasis bench`: dump and restore real processes and compare every time
//! with a raw baseline measured in the same run on the same filesystem.
//!
//! Each case starts `bench_workload` (crates/tests), waits until it has
//! filled its memory, dumps it through [`stasis_dump::dump`] (the process is
//! killed by the dump), restores it through [`stasis_restore::restore`],
//! releases it and requires it to verify every page it filled (PASS).
//!
//! Baselines, per case and round, for the number of page bytes the image
//! holds, each the mean of one run just before and one just after the
//! stasis operation it is compared with:
//! * raw write: an already-populated buffer written into a new file in the
//!   same directory, then fsync'd (stasis fsyncs every image file on commit);
//! * raw read: anonymous memory mmap'd and populated (MADV_POPULATE_WRITE),
//!   then the page file read into it (warm page cache, as a restore finds it).

mod downtime;

use anyhow::{bail, Context, Result};
use stasis_sys::buf::AnonBuf;
use stasis_sys::Pid;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Cases to run, comma-separated: dense1g, dense4g, dense16g (only
    /// with --scale), sparse1g, small10k, tiny, tree100, threads64,
    /// precopy1g, precopy4g, server0, conns1000, migrate4g, compress, lazy4g (default:
    /// all but dense16g). `--size-mib`, `--count`, `--procs`, `--threads` and `--conns`
    /// rescale them.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Log the dumps and restores of the run into FILE at debug level (the
    /// dump's timing of each frozen step; the time and ptrace round trips
    /// of each restore stage, per process and for the tree).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Rounds per case; min and median are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Small and fast, for CI: 64 MiB instead of 1 GiB, 256 MiB instead of
    /// 4 GiB, 1000 small mappings, one round. Checks correctness, not speed.
    #[arg(long)]
    quick: bool,
    /// Size of the "1 GiB" cases in MiB (the "4 GiB" case is 4x this).
    #[arg(long, value_name = "MIB")]
    size_mib: Option<u64>,
    /// Number of mappings in the small-mappings case.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Number of processes in the tree case (default 100; 10 with --quick).
    #[arg(long, value_name = "N")]
    procs: Option<u64>,
    /// Number of threads in the threads case (default 64; 8 with --quick).
    #[arg(long, value_name = "N")]
    threads: Option<u64>,
    /// Number of established loopback connections the server of the
    /// connections case holds (default 1000; 20 with --quick).
    #[arg(long, value_name = "N")]
    conns: Option<u64>,
    /// Directory for work and image files (default: a new directory under
    /// the system temp directory). Baselines use the same filesystem.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The bench_workload binary (default: next to this executable).
    #[arg(long, value_name = "FILE")]
    workload: Option<PathBuf>,
    /// The scale cases: dense 1, 4 and 16 GiB (16x `--size-mib`), with
    /// GB/s, cost per GiB and the dumper's and restorer's peak RSS for
    /// each. Needs `--dir` on a disk filesystem with room for the largest
    /// image, and 16 GiB of free memory besides: not for tmpfs.
    #[arg(long)]
    scale: bool,
}

struct Case {
    name: String,
    args: Vec<String>,
    /// Processes and threads in all (for the fixed costs per process and
    /// per thread).
    procs: u64,
    threads: u64,
    /// The pre-copy case ([`run_precopy_round`]).
    precopy: bool,
    /// The frozen time and downtime case (`bench/downtime.rs`).
    downtime: bool,
    /// The migration case ([`run_migrate_round`]).
    migrate: bool,
    /// The compression case: MiB of data (see `bench_migrate.rs`).
    compress_mib: Option<u64>,
    /// The lazy restore case ([`run_lazy_round`]).
    lazy: bool,
    /// A server case: the connections the bench opens to it (clients
    /// outside the tree) and keeps across the dump (`--tcp-established`).
    conns: Option<u64>,
}

fn cases(a: &BenchArgs) -> Result<Vec<Case>> {
    let unit = a.size_mib.unwrap_or(if a.quick { 64 } else { 1024 });
    let count = a.count.unwrap_or(if a.quick { 1000 } else { 10_000 });
    let procs = a.procs.unwrap_or(if a.quick { 10 } else { 100 }).max(1);
    let threads = a.threads.unwrap_or(if a.quick { 8 } else { 64 }).max(1);
    let conns = a.conns.unwrap_or(if a.quick { 20 } else { 1000 });
    let all = [
        "dense1g",
        "dense4g",
        "dense16g",
        "sparse1g",
        "small10k",
        "tiny",
        "tree100",
        "threads64",
        "precopy1g",
        "precopy4g",
        "server0",
        "conns1000",
        "migrate4g",
        "compress",
        "lazy4g",
    ];
    let chosen: Vec<String> = if !a.cases.is_empty() {
        a.cases.clone()
    } else if a.scale {
        ["dense1g", "dense4g", "dense16g"]
            .map(String::from)
            .to_vec()
    } else {
        // All but the scale case, which needs --scale.
        all.iter()
            .filter(|c| **c != "dense16g")
            .map(|s| s.to_string())
            .collect()
    };
    if chosen.iter().any(|c| c == "dense16g") && !a.scale {
        bail!("the case dense16g needs --scale (and --dir on a disk filesystem)");
    }
    let dense = |mib: u64| -> Vec<String> {
        vec![
            "--shape".into(),
            "dense".into(),
            "--size-mib".into(),
            mib.to_string(),
        ]
    };
    let writing = |mib: u64| -> Vec<String> {
        let mut v = dense(mib);
        v.extend(["--write-mib-s".into(), PRECOPY_MIB_S.to_string()]);
        v
    };
    let mut out = Vec::new();
    for c in chosen {
        let (name, args): (String, Vec<String>) = match c.as_str() {
            "dense1g" => (format!("dense {}", human(unit << 20)), dense(unit)),
            "dense4g" => (
                format!("dense {}", human((4 * unit) << 20)),
                dense(4 * unit),
            ),
            "dense16g" => (
                format!("dense {}", human((16 * unit) << 20)),
                dense(16 * unit),
            ),
            "sparse1g" => (
                format!("sparse {} 1/16", human(unit << 20)),
                vec![
                    "--shape".into(),
                    "sparse".into(),
                    "--size-mib".into(),
                    unit.to_string(),
                    "--stride".into(),
                    "16".into(),
                ],
            ),
            "small10k" => (
                format!("{count} small maps"),
                vec![
                    "--shape".into(),
                    "small".into(),
                    "--count".into(),
                    count.to_string(),
                ],
            ),
            "tiny" => ("tiny process".into(), vec!["--shape".into(), "tiny".into()]),
            "tree100" => (
                format!("tree of {procs} processes"),
                vec![
                    "--shape".into(),
                    "tree".into(),
                    "--count".into(),
                    procs.to_string(),
                ],
            ),
            "threads64" => (
                format!("{threads} threads"),
                vec![
                    "--shape".into(),
                    "threads".into(),
                    "--count".into(),
                    threads.to_string(),
                ],
            ),
            "precopy1g" => (
                format!("pre-copy {} at {PRECOPY_MIB_S} MiB/s", human(unit << 20)),
                writing(unit),
            ),
            "precopy4g" => (
                format!(
                    "pre-copy {} at {PRECOPY_MIB_S} MiB/s, downtime",
                    human((4 * unit) << 20)
                ),
                writing(4 * unit),
            ),
            "server0" => (
                "server, no connection".into(),
                vec![
                    "--shape".into(),
                    "conns".into(),
                    "--count".into(),
                    "0".into(),
                ],
            ),
            "conns1000" => (
                format!("server, {conns} conns"),
                vec![
                    "--shape".into(),
                    "conns".into(),
                    "--count".into(),
                    conns.to_string(),
                ],
            ),
            "migrate4g" => (
                format!(
                    "migrate {} at {PRECOPY_MIB_S} MiB/s",
                    human((4 * unit) << 20)
                ),
                writing(4 * unit),
            ),
            "compress" => ("compress".into(), vec![]),
            "lazy4g" => (format!("lazy {}", human((4 * unit) << 20)), dense(4 * unit)),
            other => bail!("unknown case {other:?}; known: {}", all.join(", ")),
        };
        let (p, t) = match c.as_str() {
            "tree100" => (procs, procs),
            "threads64" => (1, threads),
            _ => (1, 1),
        };
        out.push(Case {
            name,
            args,
            procs: p,
            threads: t,
            precopy: c == "precopy1g",
            downtime: c == "precopy4g",
            migrate: c == "migrate4g",
            compress_mib: (c == "compress").then_some(if a.quick { 32 } else { 256 }),
            lazy: c == "lazy4g",
            conns: match c.as_str() {
                "server0" => Some(0),
                "conns1000" => Some(conns),
                _ => None,
            },
        });
    }
    Ok(out)
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes & ((1 << 30) - 1) == 0 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// One round of one case.
#[derive(Default, Clone)]
struct Sample {
    dump: Duration,
    frozen: Duration,
    restore: Duration,
    raw_write: Duration,
    raw_read: Duration,
    image_bytes: u64,
    page_bytes: u64,
    filled: u64,
    dump_hwm: u64,
    /// VmHWM of the bench process while it restores.
    restore_hwm: u64,
    /// Remote system calls the restore made, and the ptrace round trips
    /// they took (batched calls share one).
    remote_calls: u64,
    round_trips: u64,
}

struct Running {
    child: Child,
    work: PathBuf,
    /// A server case's client connections (outside the dumped tree).
    clients: Vec<std::net::TcpStream>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_file(path: &Path, child: &mut Child, timeout: Duration) -> Result<String> {
    let t = Instant::now();
    loop {
        if let Ok(s) = fs::read_to_string(path) {
            if s.ends_with('\n') {
                return Ok(s);
            }
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "workload exited early ({st}) before writing {}",
                path.display()
            );
        }
        if t.elapsed() > timeout {
            bail!("timed out waiting for {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn release_go(work: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(work.join("go"))?;
    f.write_all_at(b"1", 0)?;
    Ok(())
}

fn read_hwm() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn reset_hwm() {
    // "5" resets the peak RSS (VmHWM) of the process.
    let _ = fs::write("/proc/self/clear_refs", "5");
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        n += e.metadata()?.len();
    }
    Ok(n)
}

/// Baselines above this size stream through a window of this size (the
/// scale cases: the machine could not hold the whole baseline buffer beside
/// the workload or the page cache of the image).
const RAW_WINDOW: u64 = 1 << 30;
const RAW_WINDOWED_ABOVE: u64 = 4 << 30;

/// Writes `bytes` from an already-populated buffer into a new file and
/// fsyncs it; above [`RAW_WINDOWED_ABOVE`] one [`RAW_WINDOW`] buffer is
/// written again and again.
fn raw_write(dir: &Path, bytes: u64) -> Result<Duration> {
    let window = if bytes > RAW_WINDOWED_ABOVE {
        RAW_WINDOW
    } else {
        bytes
    };
    let mut buf = AnonBuf::new(usize::try_from(window)?)?;
    buf.populate()?;
    // Non-zero content, like page data.
    for (i, b) in buf.as_mut_slice().iter_mut().step_by(4096).enumerate() {
        *b = i as u8 | 1;
    }
    let path = dir.join("raw-write.tmp");
    let _ = fs::remove_file(&path);
    let t = Instant::now();
    let mut f = File::create(&path)?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(window))?;
        // 8 MiB writes: much faster here than one huge write.
        for c in buf.as_slice()[..n].chunks(8 << 20) {
            f.write_all(c)?;
        }
        left -= n as u64;
    }
    f.sync_all()?;
    let d = t.elapsed();
    drop(f);
    fs::remove_file(&path)?;
    Ok(d)
}

/// [`raw_read`] for the scale cases: each [`RAW_WINDOW`] of the page file
/// read into fresh populated memory, unmapped before the next.
fn raw_read_windowed(pages: &[PathBuf]) -> Result<Duration> {
    let t = Instant::now();
    for p in pages {
        let mut f = File::open(p)?;
        let mut left = f
            .metadata()?
            .len()
            .saturating_sub(stasis_image::PAGES_HEADER_LEN);
        f.seek(SeekFrom::Start(stasis_image::PAGES_HEADER_LEN))?;
        while left > 0 {
            let n = usize::try_from(left.min(RAW_WINDOW))?;
            let mut buf = AnonBuf::new(n)?;
            buf.populate()?;
            f.read_exact(&mut buf.as_mut_slice()[..n])?;
            left -= n as u64;
        }
    }
    Ok(t.elapsed())
}

/// Populates `bytes` of memory and reads the page files (one per process)
/// into it, one after another.
fn raw_read(pages: &[PathBuf], bytes: u64) -> Result<Duration> {
    if bytes > RAW_WINDOWED_ABOVE {
        return raw_read_windowed(pages);
    }
    let len = usize::try_from(bytes)?;
    let t = Instant::now();
    let mut buf = AnonBuf::new(len.max(1))?;
    buf.populate()?;
    let mut at = 0;
    for p in pages {
        let mut f = File::open(p)?;
        let n = usize::try_from(
            f.metadata()?
                .len()
                .saturating_sub(stasis_image::PAGES_HEADER_LEN),
        )?;
        let n = n.min(len - at);
        f.seek(SeekFrom::Start(stasis_image::PAGES_HEADER_LEN))?;
        f.read_exact(&mut buf.as_mut_slice()[at..at + n])?;
        at += n;
    }
    Ok(t.elapsed())
}

/// Every process of the tree under `root`, root first.
fn tree_pids(root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        out.push(p);
        for t in stasis_proc::list_tasks(p).unwrap_or_default() {
            queue.extend(stasis_proc::read_children(p, t).unwrap_or_default());
        }
    }
    out
}

/// Releases the restored workload and requires its PASS.
fn verify_restored(case: &Case, run: &Running, wait_pid: Pid) -> Result<()> {
    release_go(&run.work)?;
    let status = stasis_sys::util::waitpid(wait_pid, 0)?;
    let result = fs::read_to_string(run.work.join("result")).unwrap_or_default();
    if !result.starts_with("PASS") {
        bail!(
            "{}: restored process did not verify: {} (wait status {status:?}); see {}",
            case.name,
            result.trim(),
            run.work.join("out.log").display()
        );
    }
    Ok(())
}

/// Opens `n` connections to the server the workload runs (its port in
/// `WORK/port`), each sending one byte the server leaves unread.
fn connect_clients(run: &mut Running, n: u64) -> Result<Vec<std::net::TcpStream>> {
    let port = wait_file(
        &run.work.join("port"),
        &mut run.child,
        Duration::from_secs(60),
    )?;
    let port: u16 = port.trim().parse().context("server port")?;
    (0..n)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
            c.write_all(b"x")?;
            Ok(c)
        })
        .collect()
}

/// After the restored server answered: every client reads its `y`.
fn check_clients(case: &Case, run: &mut Running) -> Result<()> {
    for (i, c) in run.clients.iter_mut().enumerate() {
        let mut b = [0u8; 1];
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.read_exact(&mut b)
            .with_context(|| format!("{}: client {i} after restore", case.name))?;
        if b != *b"y" {
            bail!("{}: client {i} read {:?} after restore", case.name, b);
        }
    }
    Ok(())
}

/// Starts the workload of `case` in `work` and waits until it is ready.
fn start_workload(case: &Case, workload: &Path, work: &Path) -> Result<(Running, u32)> {
    let log = File::create(work.join("out.log"))?;
    let child = Command::new(workload)
        .arg(work)
        .args(&case.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", workload.display()))?;
    let mut run = Running {
        child,
        work: work.to_path_buf(),
        clients: Vec::new(),
    };
    let pid = run.child.id();
    if let Some(n) = case.conns {
        run.clients = connect_clients(&mut run, n)?;
    }
    wait_file(
        &work.join("ready"),
        &mut run.child,
        Duration::from_secs(300),
    )?;
    Ok((run, pid))
}

fn run_round(case: &Case, workload: &Path, base: &Path, round: usize) -> Result<Sample> {
    let work = base.join(format!("{}-{round}", case.name.replace([' ', '/'], "_")));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let img = work.join("img");
    let (mut run, pid) = start_workload(case, workload, &work)?;
    let filled: u64 = fs::read_to_string(work.join("filled"))?.trim().parse()?;
    let pids = tree_pids(pid);

    // Baselines run both before and after the stasis operation and are
    // averaged: freeing and reallocating gigabytes costs differently
    // depending on how recently the memory was freed (on a VM whose
    // balloon takes freed pages back), and neither order should favour
    // either side.
    let write_before = raw_write(&work, filled.div_ceil(4096).max(1) * 4096)?;

    reset_hwm();
    let mut opts = dump_opts(pid, img.clone(), None, false);
    if case.conns.is_some() {
        // nftables: one `nft -f` for every connection (iptables runs a
        // command per rule).
        opts.tcp_established = true;
        opts.network_lock = stasis_sys::netlock::Method::Nftables;
    }
    let t = Instant::now();
    let stats = stasis_dump::dump(&opts)?;
    let dump = t.elapsed();
    let dump_hwm = read_hwm();
    // The dump killed it: reap it so its PID is free again; its orphaned
    // children are reaped by init.
    let _ = run.child.wait();
    wait_gone(&pids)?;

    let image_bytes = dir_bytes(&img)?;
    let pages: Vec<PathBuf> = pids
        .iter()
        .map(|&p| img.join(stasis_image::pages_file_name(p)))
        .collect();

    let read_before = raw_read(&pages, stats.page_bytes)?;
    let calls0 = stasis_sys::remote::remote_syscalls();
    let trips0 = stasis_sys::remote::round_trips();
    reset_hwm();
    let t = Instant::now();
    let restored = stasis_restore::restore(&restore_opts(img.clone()))?;
    let restore = t.elapsed();
    let restore_hwm = read_hwm();
    let remote_calls = stasis_sys::remote::remote_syscalls() - calls0;
    let round_trips = stasis_sys::remote::round_trips() - trips0;
    verify_restored(case, &run, restored.wait_pid)?;
    check_clients(case, &mut run)?;

    let raw_write = (write_before + raw_write(&work, stats.page_bytes)?) / 2;
    let raw_read = (read_before + raw_read(&pages, stats.page_bytes)?) / 2;
    fs::remove_dir_all(&work)?;
    Ok(Sample {
        dump,
        frozen: stats.frozen,
        restore,
        raw_write,
        raw_read,
        image_bytes,
        page_bytes: stats.page_bytes,
        filled,
        dump_hwm,
        restore_hwm,
        remote_calls,
        round_trips,
    })
}

/// Write rate of the pre-copy case's workload.
const PRECOPY_MIB_S: u64 = 64;
/// How long the pre-copy workload writes between pre-dump and dump.
const PRECOPY_GAP: Duration = Duration::from_secs(1);

/// One round of the pre-copy case.
struct PrecopySample {
    /// Frozen time of a full dump (`-R`) of the same process.
    full: Duration,
    /// Frozen time of the pre-dump.
    pre: Duration,
    /// Frozen time of the final dump after the pre-dump.
    last: Duration,
    last_bytes: u64,
    parent_bytes: u64,
}

/// The restore options every case uses: stasis's defaults.
pub(crate) fn restore_opts(dir: PathBuf) -> stasis_restore::RestoreOptions {
    stasis_restore::RestoreOptions {
        images_dir: dir,
        allow_changed_files: false,
        new_pid_ns: false,
        shell_job: false,
        manage_cgroups: stasis_restore::CgroupMode::default(),
        cgroup_roots: Vec::new(),
        tcp_close: false,
        mounts: stasis_restore::MountOptions::default(),
        net: stasis_restore::NetOptions::default(),
        sibling: false,
        lazy_pages: None,
    }
}

fn dump_opts(pid: u32, dir: PathBuf, prev: Option<&str>, leave: bool) -> stasis_dump::DumpOptions {
    stasis_dump::DumpOptions {
        pid,
        images_dir: dir,
        leave_running: leave,
        shell_job: false,
        file_locks: false,
        skip_in_flight: false,
        ext_unix_sk: false,
        ext_unix_inos: Vec::new(),
        ext_files: Vec::new(),
        ext_devs: Vec::new(),
        tcp_established: false,
        tcp_close: false,
        network_lock: stasis_sys::netlock::Method::Skip,
        timeout: None,
        ghost_limit: stasis_dump::DEFAULT_GHOST_LIMIT,
        prev_images_dir: prev.map(PathBuf::from),
        track_mem: leave && prev.is_none(),
        pre_dump: false,
        cgroups: true,
        ext_mounts: Vec::new(),
        free_memory_later: false,
    }
}

/// A dense area written at [`PRECOPY_MIB_S`]: a full dump with the
/// process left running, then a (brief) pre-dump, [`PRECOPY_GAP`] of writing, and
/// the final dump against it; restored through the chain and verified.
fn run_precopy_round(
    case: &Case,
    workload: &Path,
    base: &Path,
    round: usize,
) -> Result<PrecopySample> {
    let work = base.join(format!("precopy-{round}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (mut run, pid) = start_workload(case, workload, &work)?;
    let full = stasis_dump::dump(&dump_opts(pid, work.join("full"), None, true))?.frozen;
    fs::remove_dir_all(work.join("full"))?;
    let pre = stasis_dump::dump(&downtime::pre_dump_opts(pid, work.join("pre"), None))?.frozen;
    std::thread::sleep(PRECOPY_GAP);
    let last = stasis_dump::dump(&dump_opts(pid, work.join("img"), Some("../pre"), false))?;
    let _ = run.child.wait();
    let restored = stasis_restore::restore(&restore_opts(work.join("img")))?;
    verify_restored(case, &run, restored.wait_pid)?;
    fs::remove_dir_all(&work)?;
    Ok(PrecopySample {
        full,
        pre,
        last: last.frozen,
        last_bytes: last.page_bytes,
        parent_bytes: last.parent_bytes,
    })
}

/// One round of the migration case (see `bench_migrate.rs`): the frozen
/// time of a full dump without pre-copy, then `stasis migrate` to a page
/// server over loopback, the restore there (verified), and the raw copy.
fn run_migrate_round(
    case: &Case,
    workload: &Path,
    base: &Path,
    round: usize,
) -> Result<crate::bench_migrate::MigrateSample> {
    let work = base.join(format!("migrate-{round}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (mut run, pid) = start_workload(case, workload, &work)?;
    // Left running, and no write tracking left behind for migrate to meet.
    let mut full = dump_opts(pid, work.join("full"), None, true);
    full.track_mem = false;
    let full_frozen = stasis_dump::dump(&full)?.frozen;
    fs::remove_dir_all(work.join("full"))?;
    let figures = crate::bench_migrate::migrate_over_loopback(&work, pid)?;
    // The final dump killed it: reaped, its PID is free again.
    let _ = run.child.wait();
    let dest = work.join("dest");
    let t = Instant::now();
    let restored = stasis_restore::restore(&restore_opts(dest.clone()))?;
    let restore = t.elapsed();
    verify_restored(case, &run, restored.wait_pid)?;
    fs::remove_dir_all(&dest)?;
    let raw_copy = crate::bench_migrate::raw_tcp_copy(&work, figures.sent)?;
    fs::remove_dir_all(&work)?;
    Ok(crate::bench_migrate::MigrateSample {
        full_frozen,
        figures,
        restore,
        raw_copy,
    })
}

/// One round of the lazy case.
struct LazySample {
    /// A full restore of the image (every page in place when it returns).
    full: Duration,
    /// `restore --lazy-pages`: until the tree runs (its first instruction).
    first: Duration,
    /// From the same start until the daemon has every page in place.
    resident: Duration,
    page_bytes: u64,
}

/// Waits until no process of `pids` exists (10 s at most).
fn wait_gone(pids: &[u32]) -> Result<()> {
    let t = Instant::now();
    while pids
        .iter()
        .any(|&p| stasis_sys::util::pid_exists(Pid(p as i32)))
    {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("processes of the dumped tree still exist after 10 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// A dense area dumped once, restored in full (verified), then restored
/// lazily from the same image with a `stasis lazy-pages` daemon: the time
/// to the first instruction, and until every page is in place (then
/// verified).
fn run_lazy_round(case: &Case, workload: &Path, base: &Path, round: usize) -> Result<LazySample> {
    let work = base.join(format!("lazy-{round}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let img = work.join("img");
    let (mut run, pid) = start_workload(case, workload, &work)?;
    let pids = tree_pids(pid);
    let stats = stasis_dump::dump(&dump_opts(pid, img.clone(), None, false))?;
    let _ = run.child.wait();
    wait_gone(&pids)?;
    let t = Instant::now();
    let restored = stasis_restore::restore(&restore_opts(img.clone()))?;
    let full = t.elapsed();
    verify_restored(case, &run, restored.wait_pid)?;
    // Again from the same image: go back to waiting.
    {
        use std::os::unix::fs::FileExt;
        fs::OpenOptions::new()
            .write(true)
            .open(work.join("go"))?
            .write_all_at(b"0", 0)?;
    }
    let _ = fs::remove_file(work.join("result"));
    wait_gone(&pids)?;
    let socket = work.join(stasis_restore::lazy::SOCKET_NAME);
    let mut daemon = Command::new(std::env::current_exe()?)
        .args(["lazy-pages", "-D"])
        .arg(&img)
        .arg("-W")
        .arg(&work)
        .stdin(Stdio::null())
        .spawn()
        .context("start stasis lazy-pages")?;
    let t = Instant::now();
    while !socket.exists() {
        if daemon.try_wait()?.is_some() || t.elapsed() > Duration::from_secs(30) {
            let _ = daemon.kill();
            let _ = daemon.wait();
            bail!("{}: the lazy-pages daemon did not start", case.name);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut opts = restore_opts(img);
    opts.lazy_pages = Some(socket);
    let t = Instant::now();
    let restored = match stasis_restore::restore(&opts) {
        Ok(r) => r,
        Err(e) => {
            let _ = daemon.kill();
            let _ = daemon.wait();
            return Err(e.into());
        }
    };
    let first = t.elapsed();
    let st = daemon.wait()?;
    let resident = t.elapsed();
    if !st.success() {
        bail!("{}: the lazy-pages daemon failed ({st})", case.name);
    }
    verify_restored(case, &run, restored.wait_pid)?;
    fs::remove_dir_all(&work)?;
    Ok(LazySample {
        full,
        first,
        resident,
        page_bytes: stats.page_bytes,
    })
}

fn print_lazy(name: &str, v: &[LazySample]) {
    let (_, full) = min_med(v.iter().map(|s| s.full).collect());
    let (_, first) = min_med(v.iter().map(|s| s.first).collect());
    let (_, resident) = min_med(v.iter().map(|s| s.resident).collect());
    println!(
        "\n{name} (medians, {} of pages): lazy restore to the first instruction {} ms; every page in place after {} ms; full restore {} ms",
        human(v[0].page_bytes),
        ms(first),
        ms(resident),
        ms(full)
    );
}

fn print_precopy(name: &str, v: &[PrecopySample]) {
    let (_, full) = min_med(v.iter().map(|s| s.full).collect());
    let (_, pre) = min_med(v.iter().map(|s| s.pre).collect());
    let (_, last) = min_med(v.iter().map(|s| s.last).collect());
    let s = &v[v.len() / 2];
    println!(
        "\n{name} (medians): full dump frozen {} ms; pre-dump frozen {} ms; final dump frozen {} ms = {:.3} of the full dump; final image {} of pages, {} in the parent",
        ms(full),
        ms(pre),
        ms(last),
        last.as_secs_f64() / full.as_secs_f64().max(1e-9),
        human(s.last_bytes),
        human(s.parent_bytes)
    );
}

fn min_med(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2])
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn gbps(bytes: u64, d: Duration) -> String {
    if bytes < (16 << 20) {
        return "-".into();
    }
    format!("{:.2}", bytes as f64 / d.as_secs_f64() / 1e9)
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if let Some(f) = &a.log_file {
        crate::logger::init(Some(f), Some(4))?;
    }
    let cases = cases(a)?;
    let rounds = if a.quick { 1 } else { a.rounds.max(1) };
    let workload = match &a.workload {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("bench_workload"),
    };
    if !workload.exists() {
        bail!(
            "{} not found: build it (`cargo build --release --workspace`) or pass --workload",
            workload.display()
        );
    }
    let (base, own_base) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("stasis-bench-{}", std::process::id())),
            true,
        ),
    };
    fs::create_dir_all(&base)?;
    eprintln!(
        "stasis bench: {} rounds, work in {} ({})",
        rounds,
        base.display(),
        if cfg!(debug_assertions) {
            "DEBUG build: numbers are not representative"
        } else {
            "release build"
        }
    );
    let mut rows = Vec::new();
    let mut failed = None;
    let mut precopy = Vec::new();
    for case in cases.iter().filter(|c| c.precopy) {
        let v = run_rounds(
            case,
            rounds,
            &mut failed,
            |r| run_precopy_round(case, &workload, &base, r),
            |s| {
                format!(
                    "full dump frozen {} ms, pre-dump {} ms, final dump {} ms",
                    ms(s.full),
                    ms(s.pre),
                    ms(s.last)
                )
            },
        );
        if !v.is_empty() {
            precopy.push((case.name.clone(), v));
        }
    }
    let mut downtimes = Vec::new();
    for case in cases.iter().filter(|c| c.downtime) {
        let v = run_rounds(
            case,
            rounds,
            &mut failed,
            |r| downtime::run_downtime_round(case, &workload, &base, r),
            downtime::line,
        );
        if !v.is_empty() {
            downtimes.push((case.name.clone(), v));
        }
    }
    let mut migrations = Vec::new();
    for case in cases.iter().filter(|c| c.migrate) {
        let v = run_rounds(
            case,
            rounds,
            &mut failed,
            |r| run_migrate_round(case, &workload, &base, r),
            |s| {
                format!(
                    "full dump frozen {} ms; migrate: {} rounds, final frozen {} ms, total {} ms + restore {} ms; raw TCP copy {} ms",
                    ms(s.full_frozen),
                    s.figures.rounds.len(),
                    ms(s.figures.frozen),
                    ms(s.figures.total),
                    ms(s.restore),
                    ms(s.raw_copy)
                )
            },
        );
        if !v.is_empty() {
            migrations.push((case.name.clone(), v));
        }
    }
    let mut compressions = Vec::new();
    for case in cases.iter() {
        let Some(mib) = case.compress_mib else {
            continue;
        };
        match crate::bench_migrate::run_compress(mib) {
            Ok(v) => compressions.push((mib, v)),
            Err(e) => {
                eprintln!("  compress: FAILED: {e:#}");
                failed = Some(e);
            }
        }
    }
    let mut lazy = Vec::new();
    for case in cases.iter().filter(|c| c.lazy) {
        let v = run_rounds(
            case,
            rounds,
            &mut failed,
            |r| run_lazy_round(case, &workload, &base, r),
            |s| {
                format!(
                    "lazy first instruction {} ms, resident {} ms, full restore {} ms",
                    ms(s.first),
                    ms(s.resident),
                    ms(s.full)
                )
            },
        );
        if !v.is_empty() {
            lazy.push((case.name.clone(), v));
        }
    }
    for case in cases
        .iter()
        .filter(|c| !c.precopy && !c.downtime && !c.migrate && !c.lazy && c.compress_mib.is_none())
    {
        let samples = run_rounds(
            case,
            rounds,
            &mut failed,
            |r| run_round(case, &workload, &base, r),
            |s| {
                format!(
                    "dump {} ms (frozen {} ms), restore {} ms; raw write {} ms, raw read {} ms",
                    ms(s.dump),
                    ms(s.frozen),
                    ms(s.restore),
                    ms(s.raw_write),
                    ms(s.raw_read)
                )
            },
        );
        if !samples.is_empty() {
            rows.push((case.name.clone(), samples));
        }
    }
    if own_base {
        let _ = fs::remove_dir_all(&base);
    }
    print_table(&rows);
    if a.scale {
        print_scale(&rows);
    }
    print_fixed_costs(&cases, &rows);
    for (name, v) in &precopy {
        print_precopy(name, v);
    }
    for (name, v) in &downtimes {
        downtime::print(name, v);
    }
    for (name, v) in &migrations {
        crate::bench_migrate::print_migrate(name, v);
    }
    for (mib, v) in &compressions {
        crate::bench_migrate::print_compress(*mib, v);
    }
    for (name, v) in &lazy {
        print_lazy(name, v);
    }
    if let Some(e) = failed {
        return Err(e.context("a benchmark case failed"));
    }
    Ok(())
}

/// Runs `rounds` rounds of `case`, printing a line for each; stops at the
/// first failure, which goes into `failed`.
fn run_rounds<S>(
    case: &Case,
    rounds: usize,
    failed: &mut Option<anyhow::Error>,
    run: impl Fn(usize) -> Result<S>,
    line: impl Fn(&S) -> String,
) -> Vec<S> {
    let mut v = Vec::new();
    for r in 0..rounds {
        match run(r) {
            Ok(s) => {
                eprintln!("  {:<22} round {}: {}", case.name, r + 1, line(&s));
                v.push(s);
            }
            Err(e) => {
                eprintln!("  {:<22} round {}: FAILED: {e:#}", case.name, r + 1);
                *failed = Some(e);
                break;
            }
        }
    }
    v
}

/// Cost of one more process or thread: (case - tiny) / (extra tasks), on
/// the medians; and remote syscalls per restore, with their round trips.
fn print_fixed_costs(cases: &[Case], rows: &[(String, Vec<Sample>)]) {
    let med = |name: &str, f: fn(&Sample) -> Duration| {
        rows.iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| min_med(s.iter().map(f).collect()).1)
    };
    println!();
    println!("remote syscalls per restore (ptrace round trips):");
    for (name, s) in rows {
        println!(
            "  {:<22} {} ({})",
            name, s[0].remote_calls, s[0].round_trips
        );
    }
    print_conn_costs(cases, rows);
    let Some(tiny) = cases.iter().find(|c| c.args.iter().any(|a| a == "tiny")) else {
        return;
    };
    for c in cases {
        let extra = if c.procs > 1 {
            (c.procs - 1, "process")
        } else if c.threads > 1 {
            (c.threads - 1, "thread")
        } else {
            continue;
        };
        let n = extra.0 as f64;
        let per = |f: fn(&Sample) -> Duration| match (med(&c.name, f), med(&tiny.name, f)) {
            (Some(a), Some(b)) => format!("{:.2}", (a.as_secs_f64() - b.as_secs_f64()) * 1e3 / n),
            _ => "-".into(),
        };
        println!(
            "fixed cost per extra {} ({}): dump {} ms, frozen {} ms, restore {} ms (medians, minus the tiny process)",
            extra.1,
            c.name,
            per(|x| x.dump),
            per(|x| x.frozen),
            per(|x| x.restore)
        );
    }
}

/// Cost of one established connection: (server with N - server with
/// none) / N, on the medians of the same run, and the ratio of the two.
fn print_conn_costs(cases: &[Case], rows: &[(String, Vec<Sample>)]) {
    let med = |name: &str, f: fn(&Sample) -> Duration| {
        rows.iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| min_med(s.iter().map(f).collect()).1)
    };
    let Some(base) = cases.iter().find(|c| c.conns == Some(0)) else {
        return;
    };
    for c in cases.iter().filter(|c| c.conns.is_some_and(|n| n > 0)) {
        let n = c.conns.unwrap_or(1) as f64;
        let per = |f: fn(&Sample) -> Duration| match (med(&c.name, f), med(&base.name, f)) {
            (Some(a), Some(b)) => format!(
                "{:.3} ms ({:.1}x the server without connections)",
                (a.as_secs_f64() - b.as_secs_f64()) * 1e3 / n,
                a.as_secs_f64() / b.as_secs_f64().max(1e-9)
            ),
            _ => "-".into(),
        };
        println!(
            "cost per established connection ({}): dump {}, frozen {}, restore {} (medians, minus the server without connections)",
            c.name,
            per(|x| x.dump),
            per(|x| x.frozen),
            per(|x| x.restore)
        );
    }
}

/// The scale view: rates and cost per GiB of page data (medians), which
/// should not grow with the size, and the peak RSS of the dumper and the
/// restorer (the bench process while it dumps, while it restores), which
/// should stay flat.
fn print_scale(rows: &[(String, Vec<Sample>)]) {
    println!();
    println!("scale (medians; per GiB of page data; peak RSS of the bench process):");
    println!(
        "  {:<16} {:>9} {:>9} {:>11} {:>11} {:>12} {:>12}",
        "case",
        "dump GB/s",
        "rest GB/s",
        "dump ms/GiB",
        "rest ms/GiB",
        "dumper MiB",
        "restorer MiB"
    );
    for (name, s) in rows {
        let (_, dump) = min_med(s.iter().map(|x| x.dump).collect());
        let (_, restore) = min_med(s.iter().map(|x| x.restore).collect());
        let bytes = s[0].page_bytes;
        let gib = bytes as f64 / (1u64 << 30) as f64;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "  {:<16} {:>9} {:>9} {:>11.0} {:>11.0} {:>12.1} {:>12.1}",
            name,
            gbps(bytes, dump),
            gbps(bytes, restore),
            dump.as_secs_f64() * 1e3 / gib.max(1e-9),
            restore.as_secs_f64() * 1e3 / gib.max(1e-9),
            mib(s.iter().map(|x| x.dump_hwm).max().unwrap_or(0)),
            mib(s.iter().map(|x| x.restore_hwm).max().unwrap_or(0)),
        );
    }
}

fn print_table(rows: &[(String, Vec<Sample>)]) {
    println!(
        "{:<22} {:>10} {:>9} {:>15} {:>15} {:>15} {:>7} {:>7} {:>13} {:>13} {:>9}",
        "case",
        "image MiB",
        "over KiB",
        "dump ms",
        "frozen ms",
        "restore ms",
        "dump",
        "rest.",
        "dump/raw",
        "restore/raw",
        "dump RSS"
    );
    println!(
        "{:<22} {:>10} {:>9} {:>15} {:>15} {:>15} {:>7} {:>7} {:>13} {:>13} {:>9}",
        "",
        "",
        "",
        "min / med",
        "min / med",
        "min / med",
        "GB/s",
        "GB/s",
        "min / med",
        "min / med",
        "MiB"
    );
    for (name, s) in rows {
        let pick = |f: fn(&Sample) -> Duration| min_med(s.iter().map(f).collect());
        let dump = pick(|x| x.dump);
        let frozen = pick(|x| x.frozen);
        let restore = pick(|x| x.restore);
        let rw = pick(|x| x.raw_write);
        let rr = pick(|x| x.raw_read);
        let image = s[0].image_bytes;
        let over = image.saturating_sub(s[0].filled);
        let bytes = s[0].page_bytes;
        let ratio = |a: Duration, b: Duration| {
            if b.is_zero() {
                0.0
            } else {
                a.as_secs_f64() / b.as_secs_f64()
            }
        };
        let hwm = s.iter().map(|x| x.dump_hwm).max().unwrap_or(0);
        println!(
            "{:<22} {:>10.1} {:>9} {:>15} {:>15} {:>15} {:>7} {:>7} {:>13} {:>13} {:>9.1}",
            name,
            image as f64 / (1 << 20) as f64,
            over >> 10,
            format!("{} / {}", ms(dump.0), ms(dump.1)),
            format!("{} / {}", ms(frozen.0), ms(frozen.1)),
            format!("{} / {}", ms(restore.0), ms(restore.1)),
            gbps(bytes, dump.1),
            gbps(bytes, restore.1),
            format!("{:.2} / {:.2}", ratio(dump.0, rw.0), ratio(dump.1, rw.1)),
            format!(
                "{:.2} / {:.2}",
                ratio(restore.0, rr.0),
                ratio(restore.1, rr.1)
            ),
            hwm as f64 / (1 << 20) as f64,
        );
    }
    println!();
    println!("raw baselines (same bytes, same filesystem, same run):");
    for (name, s) in rows {
        let rw = min_med(s.iter().map(|x| x.raw_write).collect());
        let rr = min_med(s.iter().map(|x| x.raw_read).collect());
        println!(
            "  {:<22} write+fsync {} / {} ms, populate+read {} / {} ms (min / med)",
            name,
            ms(rw.0),
            ms(rw.1),
            ms(rr.0),
            ms(rr.1)
        );
    }
}
