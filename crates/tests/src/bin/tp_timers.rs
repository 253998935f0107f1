//! tp_timers: interval timers and POSIX timers survive checkpoint/restore:
//! the same timer ids, clocks, notification (signal, none, thread-directed),
//! sigev values, intervals, and time left (never more than before); and
//! they still fire with the right siginfo.
//!
//! Usage: `tp_timers WORKDIR [--corrupt]`

use stasis_tests::{Proto, Report};

const SI_TIMER: i32 = -2;

fn sigrt(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

/// timer_create by raw syscall: returns the kernel's timer id.
fn timer_create(clock: i32, notify: i32, signo: i32, value: u64, tid: i32) -> i32 {
    let mut ev = [0u8; 64];
    ev[0..8].copy_from_slice(&value.to_le_bytes());
    ev[8..12].copy_from_slice(&signo.to_le_bytes());
    ev[12..16].copy_from_slice(&notify.to_le_bytes());
    ev[16..20].copy_from_slice(&tid.to_le_bytes());
    let mut id = 0i32;
    // SAFETY: ev is a 64-byte sigevent, id a valid out pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_create,
            clock,
            ev.as_ptr(),
            &mut id as *mut i32,
        )
    };
    assert_eq!(r, 0, "timer_create: {}", std::io::Error::last_os_error());
    id
}

fn ns(ts: libc::timespec) -> i64 {
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn ts(ns: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    }
}

fn settime(id: i32, value: i64, interval: i64) {
    let its = libc::itimerspec {
        it_interval: ts(interval),
        it_value: ts(value),
    };
    // SAFETY: valid itimerspec, no old value wanted.
    unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            &its as *const libc::itimerspec,
            0usize,
        )
    };
}

fn gettime(id: i32) -> (i64, i64) {
    let mut its = libc::itimerspec {
        it_interval: ts(0),
        it_value: ts(0),
    };
    // SAFETY: valid out pointer.
    unsafe {
        libc::syscall(
            libc::SYS_timer_gettime,
            id,
            &mut its as *mut libc::itimerspec,
        )
    };
    (ns(its.it_interval), ns(its.it_value))
}

fn getitimer(which: i32) -> (i64, i64) {
    let mut v = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    // SAFETY: valid out pointer.
    unsafe { libc::syscall(libc::SYS_getitimer, which, &mut v as *mut libc::itimerval) };
    let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    (us(v.it_interval), us(v.it_value))
}

fn setitimer(which: i32, value_s: i64, interval_s: i64) {
    let v = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: interval_s,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: value_s,
            tv_usec: 0,
        },
    };
    // SAFETY: valid itimerval.
    unsafe {
        libc::syscall(
            libc::SYS_setitimer,
            which,
            &v as *const libc::itimerval,
            0usize,
        )
    };
}

/// Waits up to 2 s for `sig`; returns (si_code, si_timerid, si_value).
fn wait_signal(sig: i32) -> Option<(i32, i32, u64)> {
    let set = 1u64 << (sig - 1);
    let mut info = [0u8; 128];
    let t = ts(2_000_000_000);
    // SAFETY: valid set, info buffer and timeout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigtimedwait,
            &set as *const u64,
            info.as_mut_ptr(),
            &t as *const libc::timespec,
            8usize,
        )
    };
    if r != i64::from(sig) {
        return None;
    }
    let i32at = |o: usize| i32::from_le_bytes(info[o..o + 4].try_into().unwrap_or_default());
    // siginfo: si_code at 8, the union at 16: _timer { tid (timer id), overrun, sigval at 24 }.
    Some((
        i32at(8),
        i32at(16),
        u64::from_le_bytes(info[24..32].try_into().unwrap_or_default()),
    ))
}

fn main() {
    let (proto, args) = Proto::from_args();
    let corrupt = args.corrupt();
    // Signals the timers use stay blocked: we collect them with sigtimedwait.
    let block = (1u64 << (sigrt(1) - 1)) | (1u64 << (sigrt(2) - 1)) | (1u64 << (libc::SIGALRM - 1));
    // SAFETY: setting our own mask.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &block as *const u64,
            0usize,
            8usize,
        )
    };
    // SAFETY: gettid cannot fail.
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as i32;

    setitimer(libc::ITIMER_REAL, 600, 7);
    setitimer(libc::ITIMER_VIRTUAL, 100, 3);
    setitimer(libc::ITIMER_PROF, 200, 0);
    let a = timer_create(
        libc::CLOCK_MONOTONIC,
        libc::SIGEV_SIGNAL,
        sigrt(1),
        0xA11CE,
        0,
    );
    let gone = timer_create(libc::CLOCK_MONOTONIC, libc::SIGEV_NONE, 0, 0, 0);
    let b = timer_create(libc::CLOCK_REALTIME, libc::SIGEV_NONE, 0, 0, 0);
    let c = timer_create(
        libc::CLOCK_MONOTONIC,
        libc::SIGEV_THREAD_ID,
        sigrt(2),
        0xC0FFEE,
        me,
    );
    // A hole in the ids, so they are not simply 0, 1, 2.
    // SAFETY: deleting our own timer.
    unsafe { libc::syscall(libc::SYS_timer_delete, gone) };
    settime(a, 500_000_000_000, 10_000_000_000);
    settime(b, 800_000_000_000, 0);
    let proc_timers = std::fs::read_to_string("/proc/self/timers").unwrap_or_default();
    let before: Vec<(i64, i64)> = [a, b, c].iter().map(|&t| gettime(t)).collect();
    let it_before: Vec<(i64, i64)> = (0..3).map(getitimer).collect();

    proto.ready_and_wait();

    let mut report = Report::new();
    report.eq(
        "/proc/self/timers",
        proc_timers,
        std::fs::read_to_string("/proc/self/timers").unwrap_or_default(),
    );
    for (k, (&t, &(iv, val))) in [a, b, c].iter().zip(&before).enumerate() {
        let (iv2, val2) = gettime(t);
        report.eq(&format!("timer {k} (id {t}) interval"), iv, iv2);
        report.check(
            val2 <= val && (val == 0 || val2 > val - 60_000_000_000),
            || format!("timer {k} (id {t}): {val} ns left before, {val2} after"),
        );
    }
    for (w, &(iv, val)) in it_before.iter().enumerate() {
        let (iv2, val2) = getitimer(w as i32);
        report.eq(&format!("itimer {w} interval"), iv, iv2);
        // CPU-time itimers barely move (and read back rounded up to a tick);
        // the real one counts wall time.
        report.check(val2 <= val + 10_000 && val2 > val - 60_000_000, || {
            format!("itimer {w}: {val} us left before, {val2} after")
        });
    }
    // They still fire, with the right siginfo.
    settime(c, 10_000_000, 0);
    let want_c = (SI_TIMER, c, if corrupt { 0xBAD } else { 0xC0FFEE });
    report.eq(
        "thread-directed timer fires",
        Some(want_c),
        wait_signal(sigrt(2)),
    );
    settime(a, 10_000_000, 0);
    report.eq(
        "signal timer fires",
        Some((SI_TIMER, a, 0xA11CE)),
        wait_signal(sigrt(1)),
    );
    proto.finish(&report);
}
