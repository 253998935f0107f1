//! `stasis bench --cases precopy4g`: the frozen time of a dense workload
//! (4 GiB; 4x `--size-mib`) that keeps writing 64 MiB/s, dumped without
//! pre-copy (a full dump with the tree left running) and with it (brief
//! pre-dump rounds until the dirty set stops shrinking, as `stasis
//! migrate` makes them, then the final dump), and the downtime the
//! program itself sees: the longest stall of its writing loop from the
//! final freeze until the restored copy runs again (CLOCK_MONOTONIC in the
//! program, `WORK/gaps`). The restore is lazy (`restore --lazy-pages` with
//! `stasis lazy-pages` serving each page from the image of the chain that
//! holds it): the program runs again once its tree is rebuilt, its
//! memory arriving by faults and streaming; the time until every page is
//! in place is given too.

use super::{
    dump_opts, human, min_med, ms, restore_opts, start_workload, tree_pids, verify_restored,
    wait_gone, Case,
};
use anyhow::{Context, Result};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// One round of the downtime case.
pub(super) struct DowntimeSample {
    /// Frozen time of a full dump (`-R`, no tracking) of the same process.
    full: Duration,
    /// Page bytes and frozen time of each brief pre-dump round.
    rounds: Vec<(u64, Duration)>,
    /// Wall time of all the rounds.
    precopy: Duration,
    /// Frozen time and page bytes of the final dump.
    last: Duration,
    last_bytes: u64,
    /// The lazy restore: until the tree runs, and until every page is in
    /// place (from the resume).
    restore: Duration,
    resident: Duration,
    /// From the final dump's return until the old PIDs are free (the
    /// killed tree's memory freed) and the daemon listens.
    gone: Duration,
    /// The program's longest stall from the final freeze on.
    downtime: Duration,
    /// Its longest stall during the pre-copy rounds.
    round_stall: Duration,
}

/// A brief pre-dump round of `pid` into `dir` on the parent `prev`.
pub(super) fn pre_dump_opts(
    pid: u32,
    dir: std::path::PathBuf,
    prev: Option<&str>,
) -> stasis_dump::DumpOptions {
    let mut o = dump_opts(pid, dir, prev, true);
    o.track_mem = true;
    o.pre_dump = true;
    o
}

fn now_ns() -> u64 {
    stasis_sys::util::clock_now_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
}

/// The stalls the workload recorded: (start, length) in ns.
fn gaps(work: &Path) -> Result<Vec<(u64, u64)>> {
    let text = fs::read_to_string(work.join("gaps")).context("read the workload's gaps")?;
    text.lines()
        .map(|l| {
            let mut w = l.split_whitespace().map(str::parse::<u64>);
            match (w.next(), w.next()) {
                (Some(Ok(s)), Some(Ok(n))) => Ok((s, n)),
                _ => anyhow::bail!("bad gaps line {l:?}"),
            }
        })
        .collect()
}

/// The longest stall that ended in (`from`, `to`].
fn longest(gaps: &[(u64, u64)], from: u64, to: u64) -> Duration {
    let ns = gaps
        .iter()
        .filter(|(s, n)| s + n > from && s + n <= to)
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

pub(super) fn run_downtime_round(
    case: &Case,
    workload: &Path,
    base: &Path,
    round: usize,
) -> Result<DowntimeSample> {
    let work = base.join(format!("downtime-{round}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (mut run, pid) = start_workload(case, workload, &work)?;
    let pids = tree_pids(pid);
    let mut full = dump_opts(pid, work.join("full"), None, true);
    full.track_mem = false;
    let full_frozen = stasis_dump::dump(&full)?.frozen;
    fs::remove_dir_all(work.join("full"))?;
    // The full dump's stall has surely ended (the loop ticks every 10 ms).
    std::thread::sleep(Duration::from_millis(100));
    let t_pre = now_ns();
    let t = Instant::now();
    let mut saved = Vec::new();
    let mut rounds = Vec::new();
    while crate::migrate::another_round(&saved, crate::migrate::DEFAULT_ROUNDS) {
        let k = saved.len() + 1;
        let prev = (k > 1).then(|| format!("../round-{}", k - 1));
        let s = stasis_dump::dump(&pre_dump_opts(
            pid,
            work.join(format!("round-{k}")),
            prev.as_deref(),
        ))?;
        saved.push(s.page_bytes);
        rounds.push((s.page_bytes, s.frozen));
    }
    let precopy = t.elapsed();
    let t_final = now_ns();
    let parent = format!("../round-{}", saved.len());
    // As `stasis migrate` makes it: the PIDs free at once, the memory
    // held until the restored tree runs.
    let mut o = dump_opts(pid, work.join("img"), Some(&parent), false);
    o.free_memory_later = true;
    let mut last = stasis_dump::dump(&o)?;
    let keepers = last.keepers.take();
    let t_dumped = Instant::now();
    let _ = run.child.wait();
    let img = work.join("img");
    let socket = img.join(stasis_restore::lazy::SOCKET_NAME);
    let mut daemon = crate::migrate::LazyDaemon::start(&img, &img, &socket)?;
    let restored = (|| {
        wait_gone(&pids)?;
        daemon.listening()?;
        let gone = t_dumped.elapsed();
        let t = Instant::now();
        let mut o = restore_opts(img.clone());
        o.lazy_pages = Some(socket.clone());
        let restored = stasis_restore::restore(&o);
        let took = t.elapsed();
        drop(keepers);
        Ok::<_, anyhow::Error>((restored?, took, gone))
    })();
    let (restored, restore, gone) = match restored {
        Ok(v) => v,
        Err(e) => {
            daemon.stop();
            return Err(e);
        }
    };
    let t = Instant::now();
    daemon.wait()?;
    let resident = t.elapsed();
    verify_restored(case, &run, restored.wait_pid)?;
    let g = gaps(&work)?;
    let end = now_ns();
    fs::remove_dir_all(&work)?;
    Ok(DowntimeSample {
        full: full_frozen,
        rounds,
        precopy,
        last: last.frozen,
        last_bytes: last.page_bytes,
        restore,
        resident,
        gone,
        downtime: longest(&g, t_final, end),
        round_stall: longest(&g, t_pre, t_final),
    })
}

pub(super) fn line(s: &DowntimeSample) -> String {
    format!(
        "full dump frozen {} ms; {} brief rounds in {} ms (frozen {} ms at most, program stalled {} ms at most); final dump frozen {} ms ({}); old tree gone and daemon listening {} ms later; lazy restore {} ms (every page in place {} ms later); program down {} ms",
        ms(s.full),
        s.rounds.len(),
        ms(s.precopy),
        ms(s.rounds.iter().map(|r| r.1).max().unwrap_or_default()),
        ms(s.round_stall),
        ms(s.last),
        human(s.last_bytes),
        ms(s.gone),
        ms(s.restore),
        ms(s.resident),
        ms(s.downtime)
    )
}

pub(super) fn print(name: &str, v: &[DowntimeSample]) {
    let med = |f: fn(&DowntimeSample) -> Duration| min_med(v.iter().map(f).collect()).1;
    let (full, last, down) = (med(|s| s.full), med(|s| s.last), med(|s| s.downtime));
    let s = &v[v.len() / 2];
    let rounds: Vec<String> = s
        .rounds
        .iter()
        .map(|(b, f)| format!("{} frozen {} ms", human(*b), ms(*f)))
        .collect();
    println!(
        "\n{name} (medians): frozen without pre-copy {} ms, with pre-copy {} ms = {:.3} of it (final dump {} of pages); downtime seen by the program {} ms (old tree gone {} ms after the final dump, lazy restore {} ms to running, every page in place {} ms after); rounds of the median run: {}; program's longest stall during them {} ms",
        ms(full),
        ms(last),
        last.as_secs_f64() / full.as_secs_f64().max(1e-9),
        human(s.last_bytes),
        ms(down),
        ms(med(|s| s.gone)),
        ms(med(|s| s.restore)),
        ms(med(|s| s.resident)),
        rounds.join(", "),
        ms(med(|s| s.round_stall))
    );
}
