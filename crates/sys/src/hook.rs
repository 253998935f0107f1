//! Test hooks at named points of the code.
//!
//! * `STASIS_KILL_AT=<point>[:N]` makes stasis SIGKILL itself the Nth time
//!   (default: the first) it reaches the named point, to prove that a dumper
//!   dying at that instant leaves its target unharmed.
//! * `STASIS_FAULT=sys:<point>[:N]` makes the Nth pass through a point that
//!   checks [`fail_point`] fail as if the kernel had refused, to prove that
//!   the error paths put everything back. (`STASIS_FAULT=dump:<stage>` and
//!   `restore:<stage>` are the stage-level faults of the dump and restore
//!   crates.)
//!
//! Points are plain names such as `after-freeze`, `heal-frame`,
//! `inject-set-regs` or `syscall-exit`; every call site names its point with
//! [`kill_point`], and docs/architecture.md lists them. Nothing happens when
//! the variable is unset (the cost is one cached lookup).
//!
//! SIGKILL rather than `exit`: no destructor, no guard, no atexit handler
//! runs, exactly like an OOM kill or `kill -9`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The parsed `STASIS_KILL_AT`: a point name and which hit of it kills.
fn target() -> Option<&'static (String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let v = std::env::var("STASIS_KILL_AT").ok()?;
            parse(&v)
        })
        .as_ref()
}

/// The parsed `STASIS_FAULT=sys:...`.
fn fault_target() -> Option<&'static (String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let v = std::env::var("STASIS_FAULT").ok()?;
            parse(v.strip_prefix("sys:")?)
        })
        .as_ref()
}

/// Hits of the selected fault point so far.
static FAULT_HITS: AtomicU64 = AtomicU64::new(0);

/// Whether the pass through `point` should fail (`STASIS_FAULT=sys:point[:N]`).
pub fn fail_point(point: &str) -> bool {
    let Some((name, n)) = fault_target() else {
        return false;
    };
    if name != point {
        return false;
    }
    let hit = FAULT_HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if hit == *n {
        log::info!("STASIS_FAULT=sys:{point}:{n}: injecting a failure");
        return true;
    }
    false
}

/// `name` or `name:N` (N >= 1).
fn parse(v: &str) -> Option<(String, u64)> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    match v.rsplit_once(':') {
        Some((name, n)) if !name.is_empty() => match n.parse::<u64>() {
            Ok(n) if n >= 1 => Some((name.to_string(), n)),
            _ => Some((v.to_string(), 1)),
        },
        _ => Some((v.to_string(), 1)),
    }
}

/// Hits of the selected point so far.
static HITS: AtomicU64 = AtomicU64::new(0);

/// Marks `point`: if `STASIS_KILL_AT` selects it and this is the selected
/// hit, the whole process dies by SIGKILL right here.
pub fn kill_point(point: &str) {
    let Some((name, n)) = target() else {
        return;
    };
    if name != point {
        return;
    }
    let hit = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if hit == *n {
        log::info!("STASIS_KILL_AT={point}:{n}: killing myself");
        log::logger().flush();
        // SAFETY: kill(2) with integer arguments on our own process; SIGKILL
        // cannot be caught, so this never returns.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // Unreachable in practice; never go on past a selected kill point.
        std::process::abort();
    }
}

/// Called by dump and restore at criu's action-script points with the
/// point's name (criu's `CRTOOLS_SCRIPT_ACTION`: `pre-dump`, `post-dump`,
/// `pre-restore`, `setup-namespaces`, ...) and the root's PID as seen by
/// the caller; an error fails the dump or restore there, undoing it. The
/// CLI runs `--action-script`s from it, the RPC server sends criu_notify.
pub type ActionHook<'a> = &'a mut dyn FnMut(&'static str, i32) -> Result<(), String>;

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parse_points() {
        assert_eq!(parse("heal-frame"), Some(("heal-frame".into(), 1)));
        assert_eq!(parse("syscall-exit:7"), Some(("syscall-exit".into(), 7)));
        assert_eq!(parse("x:0"), Some(("x:0".into(), 1)));
        assert_eq!(parse(""), None);
    }
}
