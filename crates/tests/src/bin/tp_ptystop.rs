//! A pseudo-terminal pair whose output is stopped.
//!
//! Usage: `tp_ptystop WORKDIR --how stop-char|tcooff|tcooff-ixon|master [--packet] [--corrupt]`
//!
//! `stop-char`: IXON on, the STOP character (^S) typed on the master, as
//! from a keyboard. `tcooff`: IXON off, tcflow(TCOOFF) on the slave.
//! `tcooff-ixon`: IXON on, tcflow(TCOOFF) on the slave (the dump refuses
//! this one and `stop-char`: the two look the same). Before ready and
//! after go: the slave must not poll writable (its output stopped). After
//! go, the way it was stopped must still hold: with `stop-char` a typed
//! START (^Q) restarts it; with the TCOOFF ones a typed ^Q does not
//! (plain input with IXON off, taken and ignored with it on) and only
//! tcflow(TCOON) does. Then a write on the slave reaches the master.
//! `master`: IXON off, tcflow(TCOOFF) on the master: the master must not
//! poll writable (the slave must), until tcflow(TCOON) on the master; then
//! a write on the master reaches the slave. `--packet`: the master in
//! packet mode; the status byte the stop queued (TIOCPKT_STOP) is read
//! before ready, and after go none may wait. `--corrupt`: output not
//! stopped at all (the negative control: the after-check fails, as after
//! a restore that lost the stop).

use stasis_tests::{Proto, Report};

/// The status bit of a packet-mode read telling that output stopped.
const TIOCPKT_STOP: u8 = 0x04;

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

/// Whether a packet-mode status byte waits on the master.
fn status_waits(m: i32) -> bool {
    let mut p = libc::pollfd {
        fd: m,
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: p is one live pollfd.
    unsafe { libc::poll(&mut p, 1, 0) };
    p.revents & libc::POLLPRI != 0
}

fn write(fd: i32, b: &[u8]) {
    // SAFETY: b is a live buffer of its length.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    let how = args.get("how").unwrap_or("stop-char");
    let ixon = matches!(how, "stop-char" | "tcooff-ixon");
    let corrupt = args.corrupt();
    let packet = args.flag("packet");
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
        if ixon {
            t.c_iflag |= libc::IXON;
        } else {
            t.c_iflag &= !libc::IXON;
        }
        t.c_lflag &= !(libc::ECHO | libc::ICANON);
        libc::tcsetattr(s, libc::TCSANOW, &t);
        if packet {
            let on: libc::c_int = 1;
            libc::ioctl(m, libc::TIOCPKT, &on);
        }
        (m, s)
    };
    // The end whose output is stopped, and the other.
    let (out, other) = if how == "master" { (m, s) } else { (s, m) };
    if !corrupt {
        if how == "stop-char" {
            write(m, &[0x13]);
        } else {
            // SAFETY: TCXONC with an integer argument.
            unsafe { libc::ioctl(out, libc::TCXONC, libc::TCOOFF) };
        }
    }
    report.check(corrupt || settle(out, true), || {
        "output did not stop".into()
    });
    if packet && !corrupt {
        // The reader takes the status byte the stop queued.
        let mut b = [0u8; 1];
        // SAFETY: reads one byte into b.
        let r = unsafe { libc::read(m, b.as_mut_ptr().cast(), 1) };
        report.check(r == 1 && b[0] & TIOCPKT_STOP != 0, || {
            format!("no TIOCPKT_STOP status byte ({r}, {:#x})", b[0])
        });
    }
    proto.ready_and_wait();
    if packet {
        report.check(!status_waits(m), || "a status byte waits after go".into());
    }
    report.check(stopped(out), || "output no longer stopped".into());
    report.check(!stopped(other), || "the other end's output stopped".into());
    if how != "master" {
        // ^Q typed: restarts a ^S stop, not a TCOOFF one.
        write(m, &[0x11]);
    }
    if how != "stop-char" {
        stasis_tests::nap(50_000_000);
        report.check(stopped(out), || "a typed ^Q restarted a TCOOFF stop".into());
        // SAFETY: TCXONC with an integer argument.
        unsafe { libc::ioctl(out, libc::TCXONC, libc::TCOON) };
    }
    report.check(settle(out, false), || "output did not restart".into());
    write(out, b"ok");
    let mut b = [0u8; 8];
    let mut n = 0;
    for _ in 0..200 {
        // SAFETY: reads into b, non-blocking after poll.
        let r = unsafe { libc::read(other, b.as_mut_ptr().cast(), b.len()) };
        // In packet mode a read of the master is a status byte alone, or
        // TIOCPKT_DATA (0) and the data.
        if packet && r > 0 && b[0] == 0 {
            b.copy_within(1..r as usize, 0);
            n = r as usize - 1;
            break;
        }
        if !packet && r > 0 {
            n = r as usize;
            break;
        }
        stasis_tests::nap(10_000_000);
    }
    report.eq("output after the restart", b"ok".to_vec(), b[..n].to_vec());
    proto.finish(&report);
}
