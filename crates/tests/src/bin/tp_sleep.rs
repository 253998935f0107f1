//! tp_sleep: a process blocked in a sleeping system call survives
//! checkpoint/restore: the call neither fails nor returns early.
//!
//! Usage: `tp_sleep WORKDIR [--mode nanosleep|clock_nanosleep|poll] [--sleep-ms N] [--corrupt]`
//!
//! Writes ready, then sleeps N ms (default 2000) at a time in the chosen call
//! (relative nanosleep; clock_nanosleep with TIMER_ABSTIME on CLOCK_MONOTONIC;
//! poll(NULL, 0, N)) until go appears between two sleeps. Every sleep must
//! return success (0) and last at least the requested time on
//! CLOCK_MONOTONIC; at least one sleep must have completed.

use stasis_tests::{Proto, Report};

fn now_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out buffer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn ts_of(ns: i128) -> libc::timespec {
    libc::timespec {
        tv_sec: i64::try_from(ns / 1_000_000_000).expect("seconds"),
        tv_nsec: i64::try_from(ns % 1_000_000_000).expect("nanoseconds"),
    }
}

/// One sleep of `ns` nanoseconds; returns the call's raw result and errno.
fn sleep_once(mode: &str, ns: i128, start: i128) -> (i64, i32) {
    let r: i64 = match mode {
        "nanosleep" => {
            let ts = ts_of(ns);
            let mut rem = libc::timespec {
                tv_sec: -1,
                tv_nsec: -1,
            };
            // SAFETY: valid request and remainder buffers.
            i64::from(unsafe { libc::nanosleep(&ts, &mut rem) })
        }
        "clock_nanosleep" => {
            let deadline = ts_of(start + ns);
            // SAFETY: valid deadline; the remainder is unused with TIMER_ABSTIME.
            // clock_nanosleep returns the error number instead of setting errno.
            i64::from(unsafe {
                libc::clock_nanosleep(
                    libc::CLOCK_MONOTONIC,
                    libc::TIMER_ABSTIME,
                    &deadline,
                    std::ptr::null_mut(),
                )
            })
        }
        "poll" => {
            let ms = i32::try_from(ns / 1_000_000).expect("ms");
            // SAFETY: no fds: a null array with nfds 0 is valid.
            i64::from(unsafe { libc::poll(std::ptr::null_mut(), 0, ms) })
        }
        other => panic!("unknown --mode {other}"),
    };
    (r, stasis_tests::errno())
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mode = args.get("mode").unwrap_or("nanosleep").to_string();
    let ns = i128::from(args.num("sleep-ms", 2000)) * 1_000_000;
    let mut report = Report::new();
    let mut completed = 0u32;

    proto.ready();
    loop {
        let start = now_ns();
        let (r, err) = sleep_once(&mode, ns, start);
        let elapsed = now_ns() - start;
        let elapsed = if args.corrupt() && completed == 0 {
            elapsed / 4
        } else {
            elapsed
        };
        if r != 0 {
            report.fail(format!(
                "{mode} returned {r} (errno {err}) after {} ms",
                elapsed / 1_000_000
            ));
        } else if elapsed < ns {
            report.fail(format!(
                "{mode} returned after {} us, requested {} us",
                elapsed / 1000,
                ns / 1000
            ));
        } else {
            completed += 1;
        }
        if !report.ok() || proto.go_released() {
            break;
        }
    }
    report.check(completed >= 1, || "no sleep completed".into());
    proto.finish(&report);
}
