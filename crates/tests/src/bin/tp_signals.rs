//! tp_signals: signal dispositions, the blocked mask and the alternate signal
//! stack survive checkpoint/restore.
//!
//! Usage: `tp_signals WORKDIR [--pending] [--corrupt]`
//!
//! State: SIGUSR1 (SA_SIGINFO|SA_RESTART|SA_ONSTACK, mask INT|QUIT|HUP),
//! SIGUSR2 (SA_SIGINFO|SA_ONSTACK|SA_NODEFER, mask ALRM|RTMIN+5), SIGWINCH
//! (SA_RESETHAND|SA_RESTART), signal 63 (SA_SIGINFO), SIGPIPE ignored; SIGTERM,
//! SIGINT and signal 40 blocked; a 64 KiB sigaltstack. With `--pending`, a
//! blocked SIGINT is also left pending across the checkpoint.
//!
//! After go: the kernel's view of every disposition (raw rt_sigaction:
//! handler, flags, restorer, mask), the blocked mask, the pending set and the
//! sigaltstack equal the values before; no handler ran during the checkpoint;
//! raise(SIGUSR1) runs the handler on the alternate stack with its sa_mask
//! applied; SIGTERM sent to itself stays pending and is not delivered.

use stasis_tests::{Mapping, Proto, Report};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};

/// The kernel's `struct sigaction` on x86-64.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct KSigaction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

static USR1_COUNT: AtomicU32 = AtomicU32::new(0);
static USR1_LOCAL: AtomicUsize = AtomicUsize::new(0);
static USR1_SS_FLAGS: AtomicI32 = AtomicI32::new(-1);
static USR1_SI_CODE: AtomicI32 = AtomicI32::new(0);
static USR1_MASK: AtomicU64 = AtomicU64::new(0);
static OTHER_COUNT: AtomicU32 = AtomicU32::new(0);

const SIG_RT5: i32 = 34 + 5;
const SIG_BLOCKED_RT: i32 = 40;
const SIG_63: i32 = 63;

fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

fn raw_blocked() -> u64 {
    let mut old = 0u64;
    // SAFETY: a null new set only queries; old is a valid 8-byte out buffer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<u64>(),
            &raw mut old,
            8,
        )
    };
    assert_eq!(r, 0, "rt_sigprocmask");
    old
}

fn raw_pending() -> u64 {
    let mut set = 0u64;
    // SAFETY: set is a valid 8-byte out buffer.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigpending, &raw mut set, 8) };
    assert_eq!(r, 0, "rt_sigpending");
    set
}

fn raw_action(sig: i32) -> KSigaction {
    let mut old = KSigaction::default();
    // SAFETY: a null new action only queries; old matches the kernel layout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<KSigaction>(),
            &raw mut old,
            8,
        )
    };
    assert_eq!(r, 0, "rt_sigaction({sig})");
    old
}

fn altstack() -> (usize, i32, usize) {
    // SAFETY: all-zero stack_t is valid; sigaltstack fills it.
    let mut ss: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: null new stack only queries.
    assert_eq!(unsafe { libc::sigaltstack(std::ptr::null(), &mut ss) }, 0);
    (ss.ss_sp as usize, ss.ss_flags, ss.ss_size)
}

extern "C" fn on_usr1(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let local = 0u8;
    USR1_LOCAL.store(std::hint::black_box(&raw const local) as usize, SeqCst);
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    USR1_SI_CODE.store(unsafe { (*info).si_code }, SeqCst);
    USR1_SS_FLAGS.store(altstack().1, SeqCst);
    USR1_MASK.store(raw_blocked(), SeqCst);
    USR1_COUNT.fetch_add(1, SeqCst);
}

extern "C" fn on_other_info(_sig: i32, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    OTHER_COUNT.fetch_add(1, SeqCst);
}

extern "C" fn on_other(_sig: i32) {
    OTHER_COUNT.fetch_add(1, SeqCst);
}

fn install(sig: i32, handler: usize, flags: i32, mask: &[i32]) {
    // SAFETY: all-zero sigaction is valid; fields are set below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = flags;
    // SAFETY: sa_mask is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    for &s in mask {
        // SAFETY: as above; s is a valid signal number.
        unsafe { libc::sigaddset(&mut sa.sa_mask, s) };
    }
    // SAFETY: sa is fully initialised; handlers are async-signal-safe (atomics
    // and raw syscalls only).
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        stasis_tests::fatal(&format!("sigaction({sig})"));
    }
}

fn all_actions() -> Vec<(i32, KSigaction)> {
    (1..=64)
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .map(|s| (s, raw_action(s)))
        .collect()
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();

    let alt = Mapping::anon(64 * 1024);
    let ss = libc::stack_t {
        ss_sp: alt.addr.cast(),
        ss_flags: 0,
        ss_size: alt.len,
    };
    // SAFETY: the stack memory stays mapped for the life of the program.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        stasis_tests::fatal("sigaltstack");
    }
    let info = on_usr1 as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    let other_info =
        on_other_info as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    let other = on_other as extern "C" fn(i32) as usize;
    install(
        libc::SIGUSR1,
        info,
        libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK,
        &[libc::SIGINT, libc::SIGQUIT, libc::SIGHUP],
    );
    install(
        libc::SIGUSR2,
        other_info,
        libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER,
        &[libc::SIGALRM, SIG_RT5],
    );
    install(
        libc::SIGWINCH,
        other,
        libc::SA_RESETHAND | libc::SA_RESTART,
        &[],
    );
    install(SIG_63, other_info, libc::SA_SIGINFO, &[libc::SIGUSR1]);
    install(libc::SIGPIPE, libc::SIG_IGN, 0, &[]);

    // SAFETY: all-zero sigset_t is valid and is initialised by sigemptyset.
    let mut block: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: block is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut block);
        for s in [libc::SIGTERM, libc::SIGINT, SIG_BLOCKED_RT] {
            libc::sigaddset(&mut block, s);
        }
        assert_eq!(
            libc::sigprocmask(libc::SIG_BLOCK, &block, std::ptr::null_mut()),
            0
        );
    }
    if args.flag("pending") {
        // SAFETY: SIGINT is blocked, so this only makes it pending.
        unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
    }

    let actions = all_actions();
    let blocked = raw_blocked();
    let pending = raw_pending();
    let stack = altstack();
    let expect_blocked = bit(libc::SIGTERM) | bit(libc::SIGINT) | bit(SIG_BLOCKED_RT);
    let expect_pending = if args.flag("pending") {
        bit(libc::SIGINT)
    } else {
        0
    };
    assert_eq!(blocked, expect_blocked);
    assert_eq!(pending, expect_pending);

    proto.ready_and_wait();

    if args.corrupt() {
        install(
            libc::SIGUSR2,
            other_info,
            libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER,
            &[libc::SIGALRM],
        );
    }

    // Kernel state equals the state before.
    for ((sig, b), a) in actions.iter().zip(all_actions()) {
        report.check(*b == a.1, || {
            format!("signal {sig} action: before {b:x?}, after {:x?}", a.1)
        });
    }
    report.check(raw_blocked() == blocked, || {
        format!(
            "blocked mask: before {blocked:#x}, after {:#x}",
            raw_blocked()
        )
    });
    report.check(raw_pending() == pending, || {
        format!(
            "pending set: before {pending:#x}, after {:#x}",
            raw_pending()
        )
    });
    report.eq("sigaltstack (sp, flags, size)", stack, altstack());
    report.eq(
        "handler runs during checkpoint/restore",
        0,
        USR1_COUNT.load(SeqCst) + OTHER_COUNT.load(SeqCst),
    );

    // The handler runs on the alternate stack with its mask.
    // SAFETY: raise with a handled signal.
    unsafe { libc::raise(libc::SIGUSR1) };
    report.eq("SIGUSR1 handler runs", 1, USR1_COUNT.load(SeqCst));
    let local = USR1_LOCAL.load(SeqCst);
    report.check(
        (alt.start()..alt.start() + alt.len).contains(&local),
        || {
            format!(
                "SIGUSR1 handler local at {local:#x}, outside the alt stack {:#x}+{:#x}",
                alt.start(),
                alt.len
            )
        },
    );
    report.check(USR1_SS_FLAGS.load(SeqCst) & libc::SS_ONSTACK != 0, || {
        "sigaltstack in handler lacks SS_ONSTACK".into()
    });
    report.eq(
        "si_code of raise()",
        libc::SI_TKILL,
        USR1_SI_CODE.load(SeqCst),
    );
    let in_handler =
        blocked | bit(libc::SIGUSR1) | bit(libc::SIGINT) | bit(libc::SIGQUIT) | bit(libc::SIGHUP);
    report.check(USR1_MASK.load(SeqCst) == in_handler, || {
        format!(
            "mask inside SIGUSR1 handler {:#x}, expected {in_handler:#x}",
            USR1_MASK.load(SeqCst)
        )
    });

    // A blocked SIGTERM stays pending (delivering it would kill us).
    // SAFETY: SIGTERM is blocked.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    let p = raw_pending();
    report.check(p == pending | bit(libc::SIGTERM), || {
        format!("pending after kill(SIGTERM): {p:#x}")
    });
    report.eq("other handlers ran", 0, OTHER_COUNT.load(SeqCst));

    proto.finish(&report);
}
