//! `stasis migrate`: the whole move of a process tree in one command.
//!
//! 1. Pre-copy: pre-dump rounds (`pre-dump`, each with `--prev-images-dir`
//!    on the one before) into `DIR/round-K`, the tree running between
//!    them, until the pages written since the previous round stop
//!    shrinking (or fall under [`SMALL_ROUND`], or `--max-rounds`).
//! 2. Freeze and send the rest: the final dump into `DIR`, parent
//!    `round-K`, only the pages written since; the tree is killed.
//! 3. Restore: locally, from `DIR` (the chain resolved as for any
//!    restore); with `--page-server`, every round is sent to the page
//!    server as soon as it is written (while the tree runs), the final
//!    image last, and the destination restores from its directory
//!    (`stasis restore -D DIR`), which holds the same layout.
//!
//! The figures (bytes per round, frozen time, total) go to the log and,
//! as one JSON line, to stdout.

use crate::criu_cmd::{compress_if_asked, dump_options, restore_tree, Request};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Default `--max-rounds`.
pub const DEFAULT_ROUNDS: u32 = 8;

/// A round that saved less than this ends the pre-copy: another would
/// not shorten the final freeze noticeably.
pub const SMALL_ROUND: u64 = 1 << 20;

/// Whether another pre-copy round is worth it, given the bytes each round
/// so far saved.
pub fn another_round(saved: &[u64], max_rounds: u32) -> bool {
    match saved {
        [] => true,
        _ if saved.len() >= max_rounds as usize => false,
        [.., last] if *last < SMALL_ROUND => false,
        [.., before, last] => last < before,
        [_] => true,
    }
}

fn round_name(k: usize) -> String {
    format!("round-{k}")
}

/// What a migration did.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Page bytes each pre-copy round saved, and how long each froze the tree.
    pub rounds: Vec<u64>,
    pub round_frozen: Vec<Duration>,
    /// Page bytes of the final dump, and how long it froze the tree.
    pub final_bytes: u64,
    pub frozen: Duration,
    /// Image bytes sent to the page server (0 when local).
    pub sent: u64,
    /// From the first round to the restored tree (local; lazily: to
    /// every page in place) or the page server's OK.
    pub total: Duration,
    /// The restored root (local).
    pub restored: Option<i32>,
    /// `--lazy-pages`: from the restored tree running to every page in
    /// place (the lazy-pages daemon's end).
    pub resident: Option<Duration>,
}

/// Runs `stasis migrate` as `r` asks; prints the figures as one JSON line.
pub fn migrate(r: &Request) -> Result<ExitCode> {
    let f = run(r)?;
    let figures = serde_json::json!({
        "pid": r.tree,
        "rounds": f.rounds,
        "round_frozen_ms": f.round_frozen.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        "final_bytes": f.final_bytes,
        "frozen_ms": f.frozen.as_secs_f64() * 1e3,
        "sent_bytes": f.sent,
        "total_ms": f.total.as_secs_f64() * 1e3,
        "restored_pid": f.restored,
        "resident_ms": f.resident.map(|d| d.as_secs_f64() * 1e3),
    });
    log::info!("migrate: done: {figures}");
    println!("{figures}");
    Ok(ExitCode::SUCCESS)
}

/// The migration itself (see the module documentation).
pub fn run(r: &Request) -> Result<Figures> {
    let pid = r
        .tree
        .context("migrate: the tree to move must be given with -t PID")?;
    if r.to_stdout || r.from_stdin {
        bail!("migrate pid {pid}: --to-stdout/--from-stdin: migrate sends its images itself");
    }
    if r.prev_images_dir.is_some() {
        bail!("migrate pid {pid}: --prev-images-dir: migrate makes its own pre-copy rounds");
    }
    if r.leave_running {
        bail!("migrate pid {pid}: --leave-running: a migrated tree runs at the destination only");
    }
    if r.lazy_pages && r.page_server {
        // The destination restores: migrate only sends the chain there.
        bail!(
            "migrate pid {pid}: --lazy-pages with --page-server: the destination restores, there: \
             `stasis lazy-pages -D DIR` and `stasis restore --lazy-pages -D DIR`"
        );
    }
    let scratch = match &r.images_dir {
        None => Some(crate::stream::ScratchDir::new("migrate")?),
        Some(_) => None,
    };
    let dir = scratch
        .as_ref()
        .map(|s| s.path().to_path_buf())
        .unwrap_or_else(|| r.images_dir());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    r.setup_log(None)?;
    let t0 = Instant::now();
    // Connected before anything is done: no destination, no migration.
    let mut tx = match (r.page_server, r.port) {
        (false, _) => None,
        (true, None) => bail!("migrate pid {pid}: --page-server needs --port"),
        (true, Some(port)) => Some(crate::stream::Sender::new(
            crate::page_server::connect(r.address.as_deref(), port, r.tls())
                .with_context(|| format!("migrate pid {pid}"))?,
        )?),
    };
    let max_rounds = r.max_rounds.unwrap_or(DEFAULT_ROUNDS);
    let mut saved: Vec<u64> = Vec::new();
    let mut round_frozen: Vec<Duration> = Vec::new();
    while max_rounds > 0 && another_round(&saved, max_rounds) {
        let k = saved.len() + 1;
        let name = round_name(k);
        let rdir = dir.join(&name);
        let prev = (k > 1).then(|| PathBuf::from("..").join(round_name(k - 1)));
        let opts = dump_options(r, pid, rdir.clone(), prev, true);
        let stats = stasis_dump::dump_with(&opts, &mut |_, _| Ok(()))
            .with_context(|| format!("migrate pid {pid}: pre-copy round {k}"))?;
        compress_if_asked(r, pid, &rdir)?;
        if let Some(tx) = &mut tx {
            tx.send_dir(&rdir, Some(&name))
                .with_context(|| format!("migrate pid {pid}: sending {name}"))?;
        }
        log::info!(
            "migrate pid {pid}: round {k}: {} bytes of pages saved, {} unchanged, stopped {:?}",
            stats.page_bytes,
            stats.parent_bytes,
            stats.frozen
        );
        saved.push(stats.page_bytes);
        round_frozen.push(stats.frozen);
    }
    let prev = (!saved.is_empty()).then(|| PathBuf::from(round_name(saved.len())));
    let mut opts = dump_options(r, pid, dir.clone(), prev, false);
    opts.track_mem = false;
    // The PIDs free at once; the memory is freed while the restore runs.
    opts.free_memory_later = true;
    let mut last = stasis_dump::dump_with(&opts, &mut |_, _| Ok(()))
        .with_context(|| format!("migrate pid {pid}: final dump"))?;
    let keepers = last.keepers.take();
    log::info!(
        "migrate pid {pid}: final dump: {} bytes of pages, stopped {:?}",
        last.page_bytes,
        last.frozen
    );
    // The tree is gone from here on: if the image cannot be delivered, it
    // is kept (even a private directory) and named.
    let (restored, sent, resident) = match deliver(r, pid, &dir, tx, keepers) {
        Ok(v) => v,
        Err(e) => {
            let kept = scratch.map(|s| s.keep()).unwrap_or(dir);
            return Err(e.context(format!(
                "migrate pid {pid}: the image is complete in {}",
                kept.display()
            )));
        }
    };
    Ok(Figures {
        rounds: saved,
        round_frozen,
        final_bytes: last.page_bytes,
        frozen: last.frozen,
        sent,
        total: t0.elapsed(),
        restored,
        resident,
    })
}

/// After the final dump: compresses if asked, then sends the final image
/// and waits for the page server's OK, or restores here. Returns the
/// restored PID (local) and the bytes sent (page server).
/// `keepers` hold the dumped tree's memory: let go at once unless the
/// restore is here and lazy (then once the restored tree runs).
fn deliver(
    r: &Request,
    pid: u32,
    dir: &Path,
    tx: Option<crate::stream::Sender<stasis_restore::tls::Conn>>,
    keepers: Option<Keepers>,
) -> Result<(Option<i32>, u64, Option<Duration>)> {
    let keepers = if tx.is_none() && r.lazy_pages {
        keepers
    } else {
        drop(keepers);
        None
    };
    compress_if_asked(r, pid, dir)?;
    match tx {
        Some(mut tx) => {
            tx.send_dir(dir, None)
                .with_context(|| format!("migrate pid {pid}: sending the final image"))?;
            let sent = crate::page_server::finish(tx).with_context(|| {
                format!("migrate pid {pid}: the page server did not take the image")
            })?;
            log::info!("migrate pid {pid}: {sent} bytes sent to the page server");
            Ok((None, sent, None))
        }
        None => {
            let (restored, resident) = restore_here(r, dir, keepers)?;
            Ok((Some(restored), 0, resident))
        }
    }
}

/// What holds a killed tree's memory until dropped (stasis_dump::DumpStats).
type Keepers = std::sync::Arc<stasis_dump::freeze::Keepers>;

/// How long a local migration waits for the dumped tree's PIDs to be
/// freed (its parent must reap it; PID 1 does so about a second late).
const PID_FREE_WAIT: Duration = Duration::from_secs(10);

/// Waits until no process of the image in `dir` exists any more, so the
/// restore can take their PIDs again.
fn wait_pids_free(dir: &Path) -> Result<()> {
    let inv = stasis_image::ImageDir::open(dir)?.load_inventory()?;
    if inv.pid_ns {
        // Restored into a new PID namespace: the old PIDs never clash.
        return Ok(());
    }
    let deadline = Instant::now() + PID_FREE_WAIT;
    for p in &inv.processes {
        while Path::new(&format!("/proc/{}", p.pid)).exists() {
            if Instant::now() > deadline {
                bail!(
                    "migrate: pid {} still exists {PID_FREE_WAIT:?} after the final dump killed it \
                     (its parent has not reaped it): cannot restore it here",
                    p.pid
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// Restores the tree from `dir` here, detached (it outlives us).
/// Restores the tree from `dir` here; with `--lazy-pages`, lazily: the
/// lazy-pages daemon (a child, `stasis lazy-pages`, its socket and log
/// `lazy-pages.log` in the work directory) is started first, the tree
/// resumes as soon as it is rebuilt, and migrate waits for the daemon to
/// have every page in place. Returns the restored PID and, lazily, the
/// time from the resume to every page in place.
/// `keepers` (the dumped tree's memory) are let go once the tree runs.
fn restore_here(
    r: &Request,
    dir: &Path,
    keepers: Option<Keepers>,
) -> Result<(i32, Option<Duration>)> {
    let rr = Request {
        command: "restore".into(),
        images_dir: Some(dir.to_path_buf()),
        detached: true,
        work_dir: Some(r.work_dir.clone().unwrap_or_else(|| r.images_dir())),
        notes: vec![],
        ..r.clone()
    };
    let mut daemon = match r.lazy_pages {
        true => Some(LazyDaemon::start(
            dir,
            rr.work_dir.as_deref().unwrap_or(dir),
            &crate::criu_cmd::lazy_socket(&rr),
        )?),
        false => None,
    };
    let res = (|| {
        wait_pids_free(dir)?;
        if let Some(d) = &mut daemon {
            d.listening()?;
        }
        restore_tree(&rr, &mut |_, _| Ok(()))
            .with_context(|| format!("migrate: restore from {}", dir.display()))
    })();
    drop(keepers);
    let restored = match (res, daemon) {
        (Ok(t), None) => return Ok((t.pid.0, None)),
        (Ok(t), Some(d)) => (t, d),
        (Err(e), Some(mut d)) => {
            d.stop();
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    let (t, mut d) = restored;
    let t0 = Instant::now();
    d.wait()?;
    Ok((t.pid.0, Some(t0.elapsed())))
}

/// The lazy-pages daemon of `migrate --lazy-pages` (and of the bench's
/// downtime case): `stasis lazy-pages` as a child.
pub(crate) struct LazyDaemon {
    child: std::process::Child,
    socket: PathBuf,
}

impl LazyDaemon {
    /// Starts it for the image in `dir`, working in `work` (its log
    /// `lazy-pages.log` there) and listening at `socket` (in `work`).
    pub(crate) fn start(dir: &Path, work: &Path, socket: &Path) -> Result<LazyDaemon> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let socket = socket.to_path_buf();
        let child = Command::new("/proc/self/exe")
            .arg0("stasis")
            .arg("lazy-pages")
            .arg("-D")
            .arg(dir)
            .arg("-W")
            .arg(work)
            .args(["-o", "lazy-pages.log", "-v4"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .context("migrate: start the lazy-pages daemon")?;
        Ok(LazyDaemon { child, socket })
    }

    /// Waits until the daemon listens (or fails: it ended).
    pub(crate) fn listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + PID_FREE_WAIT;
        while !self.socket.exists() {
            if let Some(st) = self.child.try_wait()? {
                bail!("migrate: the lazy-pages daemon ended before listening ({st})");
            }
            if Instant::now() > deadline {
                bail!("migrate: the lazy-pages daemon did not listen within {PID_FREE_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Every page in place (exit 0), or the daemon failed (it killed the
    /// lazy tree and said why on stderr).
    pub(crate) fn wait(&mut self) -> Result<()> {
        let st = self.child.wait().context("migrate: wait for lazy-pages")?;
        if !st.success() {
            bail!("migrate: the lazy-pages daemon failed ({st}): the restored tree was killed");
        }
        Ok(())
    }

    /// The restore failed: the daemon goes too.
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_stop_when_the_dirty_set_stops_shrinking() {
        let m = 1u64 << 20;
        assert!(another_round(&[], 8));
        assert!(another_round(&[100 * m], 8));
        assert!(another_round(&[100 * m, 10 * m], 8));
        assert!(!another_round(&[100 * m, 10 * m, 10 * m], 8));
        assert!(!another_round(&[100 * m, 10 * m, 12 * m], 8));
        assert!(!another_round(&[100 * m, m / 2], 8));
        assert!(!another_round(&[100 * m, 50 * m], 2));
    }
}
