//! A progress bar on stderr for page transfers that take longer than a
//! second. Off unless the program turns it on ([`set_enabled`]); the CLI
//! does when stderr is a terminal.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Shown only after this long.
const DELAY: Duration = Duration::from_secs(1);
/// Redrawn at most this often.
const EVERY: Duration = Duration::from_millis(100);

/// Turns progress bars on or off for this process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Progress of one transfer of `total` bytes.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
}

impl Progress {
    pub fn new(what: &'static str, total: u64) -> Progress {
        Progress {
            what,
            total,
            done: 0,
            start: Instant::now(),
            last: None,
            enabled: ENABLED.load(Ordering::Relaxed),
        }
    }

    /// Records `n` more bytes done; redraws when it is time.
    pub fn add(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.start) < DELAY
            || self.last.is_some_and(|l| now.duration_since(l) < EVERY)
        {
            return;
        }
        self.last = Some(now);
        self.draw(now);
    }

    fn draw(&self, now: Instant) {
        let frac = if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        };
        let width = 30usize;
        let full = (frac * width as f64) as usize;
        let secs = now.duration_since(self.start).as_secs_f64().max(1e-9);
        let line = format!(
            "\r{} [{}{}] {:>3.0}%  {:.0}/{:.0} MiB  {:.2} GB/s ",
            self.what,
            "#".repeat(full),
            "-".repeat(width - full),
            frac * 100.0,
            self.done as f64 / (1 << 20) as f64,
            self.total as f64 / (1 << 20) as f64,
            self.done as f64 / secs / 1e9
        );
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(line.as_bytes());
        let _ = e.flush();
    }

    /// Draws the final state (if the bar was shown) and ends its line.
    pub fn done(&mut self) {
        if self.last.take().is_some() {
            self.draw(Instant::now());
            let _ = std::io::stderr().write_all(b"\n");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.last.take().is_some() {
            let _ = std::io::stderr().write_all(b"\n");
        }
    }
}
