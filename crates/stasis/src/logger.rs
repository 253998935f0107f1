//! A small `log` backend: to a file (criu's `-o`) or to stderr.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// The one logger; `init` may be called again (one RPC connection serves
/// several requests, each with its own log file) and swaps its output.
struct Logger {
    out: Mutex<Box<dyn Write + Send>>,
    start: Instant,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = self.start.elapsed();
        if let Ok(mut o) = self.out.lock() {
            let _ = writeln!(
                o,
                "({:>4}.{:06}) {:<5} {}: {}",
                t.as_secs(),
                t.subsec_micros(),
                r.level(),
                r.target(),
                r.args()
            );
        }
    }

    fn flush(&self) {
        if let Ok(mut o) = self.out.lock() {
            let _ = o.flush();
        }
    }
}

fn level(v: u8) -> log::LevelFilter {
    match v {
        0 => log::LevelFilter::Error,
        1 => log::LevelFilter::Warn,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

static TO_FILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the log goes to a file (else to stderr, or nowhere yet).
pub fn to_file() -> bool {
    TO_FILE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Logs to `file` (appending; created 0600) at `verbosity` (default 2), or
/// to stderr (default: warnings).
pub fn init(file: Option<&Path>, verbosity: Option<u8>) -> Result<()> {
    let (out, lvl): (Box<dyn Write + Send>, _) = match file {
        Some(p) if p.as_os_str() != "-" => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("open log file {}", p.display()))?;
            TO_FILE.store(true, std::sync::atomic::Ordering::Relaxed);
            (Box::new(f), level(verbosity.unwrap_or(2)))
        }
        _ => {
            TO_FILE.store(false, std::sync::atomic::Ordering::Relaxed);
            (Box::new(std::io::stderr()), level(verbosity.unwrap_or(1)))
        }
    };
    static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();
    let mut fresh = Some(out);
    let logger = LOGGER.get_or_init(|| Logger {
        out: Mutex::new(fresh.take().unwrap_or_else(|| Box::new(std::io::sink()))),
        start: Instant::now(),
    });
    if let Some(out) = fresh {
        // Installed before: swap the output.
        if let Ok(mut o) = logger.out.lock() {
            let _ = o.flush();
            *o = out;
        }
    } else {
        log::set_logger(logger).context("install logger")?;
    }
    log::set_max_level(lvl);
    Ok(())
}
