//! tp_epoll: an event loop's kernel objects survive checkpoint/restore:
//! eventfds (counter, semaphore mode, O_NONBLOCK) and an epoll instance
//! with its registrations (events incl. EPOLLET, user data), still keyed
//! by the same descriptor numbers (EPOLL_CTL_DEL works); a timerfd (interval,
//! time left, still fires); an absolute CLOCK_REALTIME timerfd with
//! TFD_TIMER_CANCEL_ON_SET (same expiry, same settime flags); a timerfd
//! holding 5 unread expirations (read returns 5); and a signalfd (its mask;
//! reads a signal).
//!
//! Usage: `tp_epoll WORKDIR [--corrupt]`

use stasis_tests::{Proto, Report};

/// The registrations, sorted (the kernel lists them in the order of its
/// tree of files, which is not meaningful).
fn epoll_fdinfo_targets(ep: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(format!("/proc/self/fdinfo/{ep}"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        // Drop the inode/device: only the registration matters.
        .map(|l| l.split(" pos:").next().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

fn main() {
    let (proto, args) = Proto::from_args();
    // SAFETY: creating our own kernel objects.
    let (efd, sem, ep) = unsafe {
        (
            libc::eventfd(5, libc::EFD_NONBLOCK),
            libc::eventfd(3, libc::EFD_SEMAPHORE),
            libc::epoll_create1(libc::EPOLL_CLOEXEC),
        )
    };
    let mut p = [0i32; 2];
    // SAFETY: valid out array; then write into our own pipe.
    unsafe {
        libc::pipe(p.as_mut_ptr());
        libc::write(p[1], b"ping".as_ptr().cast(), 4);
    }
    let add = |fd: i32, events: u32, data: u64| {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: registering our own descriptors.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) }
    };
    add(efd, libc::EPOLLIN as u32, 0x1234);
    add(p[0], (libc::EPOLLIN | libc::EPOLLET) as u32, 42);
    // A timerfd: 40 s left, 7 s interval, non-blocking.
    // SAFETY: creating and arming our own timerfd.
    let tfd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) };
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 7,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 40,
            tv_nsec: 0,
        },
    };
    // SAFETY: its lives for the call.
    unsafe { libc::timerfd_settime(tfd, 0, &its, std::ptr::null_mut()) };
    // A signalfd for SIGUSR2 (blocked).
    let usr2 = 1u64 << (libc::SIGUSR2 - 1);
    // SAFETY: blocking SIGUSR2 for ourselves; a signalfd with an 8-byte mask.
    let sfd = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &usr2 as *const u64,
            0usize,
            8usize,
        );
        libc::syscall(libc::SYS_signalfd4, -1, &usr2 as *const u64, 8usize, 0) as i32
    };
    let gettime = |fd: i32| {
        let mut cur = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        // SAFETY: valid out pointer.
        unsafe { libc::timerfd_gettime(fd, &mut cur) };
        (
            cur.it_interval.tv_sec,
            cur.it_value.tv_sec * 1_000_000_000 + cur.it_value.tv_nsec,
        )
    };
    // An absolute timer on the wall clock, one hour ahead, cancelled if the
    // clock is set; and a disarmed one holding 5 unread expirations.
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let abs_expiry = now.tv_sec + 3600;
    // SAFETY: creating and arming our own timerfds; the ioctl reads a u64.
    let (afd, tickfd) = unsafe {
        let afd = libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK);
        let at = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: abs_expiry,
                tv_nsec: 0,
            },
        };
        let flags = libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET;
        assert_eq!(
            libc::timerfd_settime(afd, flags, &at, std::ptr::null_mut()),
            0
        );
        let tickfd = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK);
        let five = 5u64;
        assert_eq!(
            libc::ioctl(tickfd, 0x4008_5400, &five),
            0,
            "TFD_IOC_SET_TICKS"
        );
        (afd, tickfd)
    };
    let settime_flags = |fd: i32| {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("settime flags:"))
            .map(str::to_string)
    };
    let abs_flags = settime_flags(afd);
    let t_before = gettime(tfd);
    let regs = epoll_fdinfo_targets(ep);
    proto.ready_and_wait();

    let mut report = Report::new();
    report.eq("epoll registrations", regs, epoll_fdinfo_targets(ep));
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: evs is a valid array of 8 events.
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 1000) };
    let mut got: Vec<u64> = evs[..n.max(0) as usize].iter().map(|e| e.u64).collect();
    got.sort_unstable();
    report.eq("ready events (user data)", vec![42, 0x1234], got);
    let mut v = 0u64;
    // SAFETY: 8-byte reads from our eventfds.
    unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) };
    report.eq("eventfd counter", if args.corrupt() { 6 } else { 5 }, v);
    // SAFETY: as above.
    unsafe { libc::read(sem, (&mut v as *mut u64).cast(), 8) };
    report.eq("semaphore eventfd reads 1", 1, v);
    // SAFETY: fcntl query on our own descriptor.
    let fl = unsafe { libc::fcntl(efd, libc::F_GETFL) };
    report.check(fl & libc::O_NONBLOCK != 0, || {
        format!("eventfd lost O_NONBLOCK: {fl:#o}")
    });
    // SAFETY: removing our own registration by its descriptor number.
    let del = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, p[0], std::ptr::null_mut()) };
    report.eq("EPOLL_CTL_DEL by the descriptor number", 0, del);
    let (iv, left) = gettime(tfd);
    report.eq("timerfd interval (s)", t_before.0, iv);
    report.check(
        left <= t_before.1 && left > t_before.1 - 30_000_000_000,
        || format!("timerfd: {} ns left before, {left} after", t_before.1),
    );
    report.eq(
        "absolute timerfd settime flags",
        abs_flags,
        settime_flags(afd),
    );
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let (_, abs_left) = gettime(afd);
    let expiry = now.tv_sec + abs_left / 1_000_000_000;
    report.check((expiry - abs_expiry).abs() <= 1, || {
        format!("absolute timerfd expires at {expiry}, not {abs_expiry}")
    });
    let mut unread = 0u64;
    // SAFETY: 8-byte read from our timerfd.
    unsafe { libc::read(tickfd, (&mut unread as *mut u64).cast(), 8) };
    report.eq("unread timerfd expirations", 5, unread);
    // It still fires: re-arm to 10 ms and wait for one expiration.
    let soon = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        },
    };
    // SAFETY: re-arming our own timer; then reading its 8-byte count.
    let fired = unsafe {
        libc::timerfd_settime(tfd, 0, &soon, std::ptr::null_mut());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut n = 0u64;
        libc::read(tfd, (&mut n as *mut u64).cast(), 8);
        n
    };
    report.eq("timerfd expirations after re-arming", 1, fired);
    // The signalfd still reports SIGUSR2.
    let mut info = [0u8; 128];
    // SAFETY: signalling ourselves (SIGUSR2 is blocked); reading a signalfd_siginfo.
    let n = unsafe {
        libc::raise(libc::SIGUSR2);
        libc::read(sfd, info.as_mut_ptr().cast(), 128)
    };
    report.eq(
        "signalfd read",
        (128, libc::SIGUSR2 as u32),
        (n, u32::from_le_bytes([info[0], info[1], info[2], info[3]])),
    );
    proto.finish(&report);
}
