//! tp_epoll: an event loop's kernel objects survive checkpoint/restore:
//! eventfds (counter, semaphore mode, O_NONBLOCK) and an epoll instance
//! with its registrations (events incl. EPOLLET, user data), still keyed
//! by the same descriptor numbers (EPOLL_CTL_DEL works).
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
    proto.finish(&report);
}
