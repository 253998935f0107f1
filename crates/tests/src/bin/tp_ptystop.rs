//! A pseudo-terminal pair whose output is stopped.
//!
//! Usage: `tp_ptystop WORKDIR --how stop-char|tcooff [--corrupt]`
//!
//! `stop-char`: IXON on, the STOP character (^S) typed on the master, as
//! from a keyboard. `tcooff`: IXON off, tcflow(TCOOFF) on the slave.
//! Before ready and after go: the slave must not poll writable (its
//! output stopped). After go, the way it was stopped must still hold:
//! with `stop-char` a typed START (^Q) restarts it; with `tcooff` a typed
//! ^Q is plain input and only tcflow(TCOON) restarts it. Then a write on
//! the slave reaches the master. `--corrupt`: output not stopped at all
//! (the negative control: the after-check fails, as after a restore that
//! lost the stop).

use stasis_tests::{Proto, Report};

fn stopped(slave: i32) -> bool {
    let mut p = libc::pollfd {
        fd: slave,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: p is one live pollfd.
    unsafe { libc::poll(&mut p, 1, 0) };
    p.revents & libc::POLLOUT == 0
}

/// Waits (at most 2 s) until the output is `want` (stopped or not).
fn settle(slave: i32, want: bool) -> bool {
    for _ in 0..200 {
        if stopped(slave) == want {
            return true;
        }
        stasis_tests::nap(10_000_000);
    }
    false
}

fn write(fd: i32, b: &[u8]) {
    // SAFETY: b is a live buffer of its length.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let tcooff = args.get("how") == Some("tcooff");
    let corrupt = args.corrupt();
    // SAFETY: pty calls on descriptors we open; termios is a live buffer.
    let (m, s) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0, "posix_openpt");
        libc::grantpt(m);
        libc::unlockpt(m);
        let s = libc::open(libc::ptsname(m), libc::O_RDWR | libc::O_NOCTTY);
        assert!(s >= 0, "open the slave");
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(s, &mut t);
        if tcooff {
            t.c_iflag &= !libc::IXON;
        } else {
            t.c_iflag |= libc::IXON;
        }
        t.c_lflag &= !(libc::ECHO | libc::ICANON);
        libc::tcsetattr(s, libc::TCSANOW, &t);
        (m, s)
    };
    if !corrupt {
        if tcooff {
            // SAFETY: TCXONC with an integer argument.
            unsafe { libc::ioctl(s, libc::TCXONC, libc::TCOOFF) };
        } else {
            write(m, &[0x13]);
        }
    }
    report.check(corrupt || settle(s, true), || "output did not stop".into());
    proto.ready_and_wait();
    report.check(stopped(s), || "output no longer stopped".into());
    // ^Q typed: restarts a ^S stop, is plain input under TCOOFF (IXON off).
    write(m, &[0x11]);
    if tcooff {
        stasis_tests::nap(50_000_000);
        report.check(stopped(s), || "a typed ^Q restarted a TCOOFF stop".into());
        // SAFETY: TCXONC with an integer argument.
        unsafe { libc::ioctl(s, libc::TCXONC, libc::TCOON) };
    }
    report.check(settle(s, false), || "output did not restart".into());
    write(s, b"ok");
    let mut b = [0u8; 8];
    let mut n = 0;
    for _ in 0..200 {
        // SAFETY: reads into b, non-blocking after poll.
        let r = unsafe { libc::read(m, b.as_mut_ptr().cast(), b.len()) };
        if r > 0 {
            n = r as usize;
            break;
        }
        stasis_tests::nap(10_000_000);
    }
    report.eq("output after the restart", b"ok".to_vec(), b[..n].to_vec());
    proto.finish(&report);
}
