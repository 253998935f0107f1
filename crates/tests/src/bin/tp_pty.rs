//! tp_pty: a pseudo-terminal pair held inside the tree. The root holds the
//! master (packet mode on) and one slave (exclusive); a child session
//! leader has the slave as its controlling terminal; its child, in a group
//! of its own, is the foreground group and answers lines read from the
//! slave. Termios (speeds included), window size, owner and mode of
//! /dev/pts/N are not the defaults. After restore the root checks every
//! item, then a resize must send SIGWINCH and the VINTR character SIGINT
//! to the foreground group, which answers through the terminal (a /dev/tty
//! descriptor it holds).
//!
//! Usage: `tp_pty WORKDIR [--corrupt]`.

use stasis_tests::{Proto, Report};
use std::sync::atomic::{AtomicU32, Ordering};

static WINCH: AtomicU32 = AtomicU32::new(0);
static INT: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_winch(_: i32) {
    WINCH.fetch_add(1, Ordering::SeqCst);
}
extern "C" fn on_int(_: i32) {
    INT.fetch_add(1, Ordering::SeqCst);
}

fn die(what: &str) -> ! {
    eprintln!("tp_pty: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(2);
}

/// ioctl returning an int through a pointer.
fn get(fd: i32, req: libc::Ioctl) -> i32 {
    let mut v = 0i32;
    // SAFETY: each request used writes one int.
    if unsafe { libc::ioctl(fd, req, &mut v) } < 0 {
        die(&format!("ioctl {req:#x}"));
    }
    v
}

fn termios(fd: i32) -> libc::termios2 {
    // SAFETY: plain data; TCGETS2 fills it.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd, libc::TCGETS2, &mut t) } < 0 {
        die("TCGETS2");
    }
    t
}

fn termios_key(t: &libc::termios2) -> (u32, u32, u32, u32, Vec<u8>, u32, u32) {
    let cc = t.c_cc[..19].to_vec();
    (
        t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, cc, t.c_ispeed, t.c_ospeed,
    )
}

fn winsize(fd: i32) -> [u16; 4] {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills w.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } < 0 {
        die("TIOCGWINSZ");
    }
    [w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel]
}

fn set_winsize(fd: i32, v: [u16; 4]) {
    let w = libc::winsize {
        ws_row: v[0],
        ws_col: v[1],
        ws_xpixel: v[2],
        ws_ypixel: v[3],
    };
    // SAFETY: TIOCSWINSZ reads w.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &w) } < 0 {
        die("TIOCSWINSZ");
    }
}

fn write_all(fd: i32, b: &[u8]) {
    // SAFETY: writing our buffer.
    if unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) } != b.len() as isize {
        die("write");
    }
}

/// One line from the master; in packet mode every read starts with a
/// status byte: data packets (0) are kept, the others' bits returned.
fn read_line(m: &i32, packet: bool) -> (String, u8) {
    let (mut line, mut status) = (Vec::new(), 0u8);
    while !line.ends_with(b"\n") {
        let mut p = libc::pollfd {
            fd: *m,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd; a failsafe against a hang, not a timing.
        if unsafe { libc::poll(&mut p, 1, 20_000) } != 1 {
            return (
                format!("timeout after {:?}", String::from_utf8_lossy(&line)),
                status,
            );
        }
        let mut buf = [0u8; 512];
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::read(*m, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            die("read master");
        }
        let got = &buf[..n as usize];
        match (packet, got.first()) {
            (true, Some(0)) => line.extend_from_slice(&got[1..]),
            (true, Some(&s)) => status |= s,
            _ => line.extend_from_slice(got),
        }
    }
    (
        String::from_utf8_lossy(&line).trim_end().to_string(),
        status,
    )
}

/// The foreground child: answers each line `q` with its view.
fn answer_loop(tty: i32) -> ! {
    for (sig, h) in [
        (libc::SIGWINCH, on_winch as *const () as usize),
        (libc::SIGINT, on_int as *const () as usize),
    ] {
        // SAFETY: installing a handler without SA_RESTART.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = h;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // /dev/tty, held: the answers go through it.
    // SAFETY: opening our controlling terminal.
    let dt = unsafe { libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if dt < 0 {
        die("open /dev/tty");
    }
    // Wait until the leader made our group the foreground one.
    // SAFETY: plain calls.
    while unsafe { libc::tcgetpgrp(tty) != libc::getpgrp() } {
        stasis_tests::nap(1_000_000);
    }
    loop {
        let mut buf = [0u8; 256];
        // SAFETY: reading into our buffer (canonical mode: one line).
        let n = unsafe { libc::read(tty, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue; // EINTR from a signal
        }
        if !buf[..n as usize].starts_with(b"q") {
            continue;
        }
        // SAFETY: plain calls; /dev/tty opens the controlling terminal.
        let (pid, sid, pgrp, fg, devtty) = unsafe {
            let d = libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            let ok = d >= 0;
            if ok {
                libc::close(d);
            }
            (
                libc::getpid(),
                libc::getsid(0),
                libc::getpgrp(),
                libc::tcgetpgrp(tty),
                ok,
            )
        };
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let tty_nr = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(4))
            .unwrap_or("?")
            .to_string();
        let line = format!(
            "pid={pid} sid={sid} pgrp={pgrp} fg={fg} devtty={devtty} tty_nr={tty_nr} winch={} int={}\n",
            WINCH.load(Ordering::SeqCst),
            INT.load(Ordering::SeqCst)
        );
        write_all(dt, line.as_bytes());
    }
}

/// The session leader: takes the slave as its controlling terminal, forks
/// the foreground child, and waits.
fn leader(index: i32) -> ! {
    // SAFETY: plain calls in a fresh child.
    unsafe {
        if libc::setsid() < 0 {
            die("setsid");
        }
        let path = std::ffi::CString::new(format!("/dev/pts/{index}")).expect("path");
        let tty = libc::open(path.as_ptr(), libc::O_RDWR);
        if tty < 0 || libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
            die("open the slave as controlling terminal");
        }
        let c = libc::fork();
        if c == 0 {
            libc::setpgid(0, 0);
            answer_loop(tty);
        }
        libc::setpgid(c, c);
        if libc::tcsetpgrp(tty, c) < 0 {
            die("tcsetpgrp");
        }
        loop {
            let mut st = 0;
            if libc::waitpid(c, &mut st, 0) == c {
                libc::_exit(0);
            }
        }
    }
}

struct State {
    index: i32,
    locked: i32,
    packet: i32,
    termios: (u32, u32, u32, u32, Vec<u8>, u32, u32),
    winsize: [u16; 4],
    slave_excl: i32,
    owner: (u32, u32, u32),
    times: (i64, i64, i64, i64),
    sid: i32,
    fg: i32,
}

fn state(m: i32, s: i32) -> State {
    let index = get(m, libc::TIOCGPTN);
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(format!("/dev/pts/{index}")).unwrap_or_else(|_| die("stat slave"));
    State {
        index,
        locked: get(m, libc::TIOCGPTLCK),
        packet: get(m, libc::TIOCGPKT),
        termios: termios_key(&termios(m)),
        winsize: winsize(m),
        slave_excl: get(s, libc::TIOCGEXCL),
        owner: (md.uid(), md.gid(), md.mode() & 0o7777),
        times: (md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec()),
        sid: get(m, libc::TIOCGSID),
        fg: get(m, libc::TIOCGPGRP),
    }
}

/// Opens the master and sets every attribute to a value that is not the
/// default; returns (master, our slave).
fn setup() -> (i32, i32, i32) {
    // SAFETY: plain calls on our own descriptors.
    unsafe {
        let m = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if m < 0 || libc::ioctl(m, libc::TIOCSPTLCK, &0i32) < 0 {
            die("open /dev/ptmx");
        }
        let index = get(m, libc::TIOCGPTN);
        let mut t = termios(m);
        t.c_iflag = libc::ICRNL | libc::IUTF8;
        t.c_oflag = 0;
        t.c_cflag = libc::CS8 | libc::CREAD | libc::BOTHER | (libc::BOTHER << libc::IBSHIFT);
        t.c_lflag = libc::ISIG | libc::ICANON | libc::IEXTEN;
        t.c_cc[libc::VINTR] = 0x18;
        t.c_cc[libc::VERASE] = 0x08;
        t.c_ispeed = 12345;
        t.c_ospeed = 54321;
        if libc::ioctl(m, libc::TCSETS2, &t) < 0 {
            die("TCSETS2");
        }
        set_winsize(m, [37, 101, 555, 777]);
        let path = std::ffi::CString::new(format!("/dev/pts/{index}")).expect("path");
        if libc::chown(path.as_ptr(), 1, 2) < 0 || libc::chmod(path.as_ptr(), 0o640) < 0 {
            die("chown/chmod the slave");
        }
        let s = libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 || libc::ioctl(s, libc::TIOCEXCL) < 0 {
            die("TIOCGPTPEER / TIOCEXCL");
        }
        (m, s, index)
    }
}

fn main() {
    let (proto, args) = Proto::from_args();
    let (m, s, index) = setup();
    // SAFETY: fork; the child never returns.
    let leader_pid = unsafe { libc::fork() };
    if leader_pid == 0 {
        leader(index);
    }
    write_all(m, b"q\n");
    let (hello, _) = read_line(&m, false);
    // SAFETY: TIOCPKT takes a pointer to an int.
    if unsafe { libc::ioctl(m, libc::TIOCPKT, &1i32) } < 0 {
        die("TIOCPKT");
    }
    // Times of /dev/pts/N in the past (every read or write moves them).
    let path = std::ffi::CString::new(format!("/dev/pts/{index}")).expect("path");
    let ts = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_100_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    // SAFETY: a valid path and two timespecs.
    if unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), ts.as_ptr(), 0) } < 0 {
        die("utimensat /dev/pts/N");
    }
    let before = state(m, s);
    proto.ready_and_wait();

    let mut report = Report::new();
    let after = state(m, s);
    report.check(hello.contains("winch=0 int=0"), || {
        format!("first answer: {hello}")
    });
    report.eq("pts index", before.index, after.index);
    report.eq("locked", before.locked, after.locked);
    report.eq("packet mode", (before.packet, 1), (after.packet, 1));
    let mut want = before.termios.clone();
    if args.corrupt() {
        want.5 += 1;
    }
    report.eq("termios (TCGETS2)", want, after.termios);
    report.eq("window size", before.winsize, after.winsize);
    report.eq(
        "slave exclusive",
        (before.slave_excl, 1),
        (after.slave_excl, 1),
    );
    report.eq(
        "owner and mode of /dev/pts/N",
        (before.owner, (1, 2, 0o640)),
        (after.owner, (1, 2, 0o640)),
    );
    let want = (1_000_000_000, 123_456_789, 1_100_000_000, 987_654_321);
    report.eq(
        "times of /dev/pts/N",
        (before.times, want),
        (after.times, want),
    );
    report.eq(
        "session (TIOCGSID)",
        (before.sid, leader_pid),
        (after.sid, leader_pid),
    );
    report.check(before.fg != leader_pid && before.fg > 0, || {
        format!("foreground {}", before.fg)
    });
    report.eq("foreground group (TIOCGPGRP)", before.fg, after.fg);

    // Both ways through the pair, then job control.
    write_all(m, b"q\n");
    let (a1, _) = read_line(&m, true);
    let tty_nr = libc::makedev(136 + index as u32 / 256, index as u32 % 256);
    let fg = before.fg;
    let expect = format!(
        "pid={fg} sid={leader_pid} pgrp={fg} fg={fg} devtty=true tty_nr={tty_nr} winch=0 int=0"
    );
    report.eq("answer through the terminal", expect.as_str(), a1.as_str());
    set_winsize(m, [50, 132, 0, 0]);
    write_all(m, &[0x18]);
    write_all(m, b"q\n");
    let (a2, status) = read_line(&m, true);
    report.check(a2.ends_with("winch=1 int=1"), || {
        format!("SIGWINCH on resize and SIGINT from VINTR: answer {a2}")
    });
    let flush = 0x01 | 0x02; // TIOCPKT_FLUSHREAD | TIOCPKT_FLUSHWRITE
    report.check(status & flush == flush, || {
        format!("packet status of the VINTR flush: {status:#x}")
    });
    // SAFETY: ending the children we made.
    unsafe {
        libc::kill(fg, libc::SIGKILL);
        libc::waitpid(leader_pid, std::ptr::null_mut(), 0);
    }
    proto.finish(&report);
}
