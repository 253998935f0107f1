//! Creating the restore tree: every process forked by its parent with its
//! PID, its descriptors placed, waiting to be seized; the helpers that
//! recreate namespaces, sessions and groups; the areas (syscall stub,
//! shared and copy-on-write memory) every process inherits.

use crate::clone::{exit_now, fork_with_pid, fork_with_pid_fd, CloneArgs, Forked};
use crate::ptrace::{self, Stop};
use crate::{check, last_errno, remote, Pid, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Where the child's descriptors come from. Every `srcs[i]` (a descriptor of
/// the caller) is first duplicated to `staging + i`; everything below
/// `staging` is closed; then each target `(i, fd, cloexec)` moves
/// `staging + i` to `fd`. Sources not named by a target stay at
/// `staging + i` ("service" descriptors for the restorer).
#[derive(Debug, Clone, Default)]
pub struct FdPlan {
    pub staging: i32,
    pub srcs: Vec<i32>,
    pub targets: Vec<(usize, i32, bool)>,
}

/// SIGKILL a child of ours and reap it.
pub fn kill_and_reap(child: Pid) {
    kill_and_reap_threads(child, &[]);
}

/// SIGKILL a child of ours whose other threads `threads` we trace, and reap
/// them all: traced threads first, since the leader's exit is reported
/// only after every other traced thread has been waited for.
pub fn kill_and_reap_threads(child: Pid, threads: &[Pid]) {
    let _ = crate::util::kill(child, libc::SIGKILL);
    for &t in threads {
        let _ = crate::util::waitpid(t, libc::__WALL);
    }
    let _ = crate::util::waitpid(child, libc::__WALL);
}

/// Maps the stub area in the caller at `addr` (`len` bytes, fixed, never
/// replacing anything): the first page holds [`remote::STUB`] (r-x), the
/// rest is scratch (rw-). A child forked afterwards inherits it.
pub fn map_stub_area(addr: u64, len: u64) -> Result<()> {
    let p = mmap_noreplace(addr, len, libc::MAP_PRIVATE, "stub area")?;
    // SAFETY: p points to a fresh, writable mapping of at least one page.
    unsafe {
        std::ptr::copy_nonoverlapping(
            remote::RESTORE_STUB.as_ptr(),
            p.cast::<u8>(),
            remote::RESTORE_STUB.len(),
        )
    };
    // SAFETY: changing protection of the first page of our own new mapping.
    let r = unsafe { libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC) };
    check(r.into(), "mprotect stub", None)?;
    Ok(())
}

pub fn unmap_stub_area(addr: u64, len: u64) {
    // SAFETY: the range was mapped by map_stub_area and nothing of ours lives there.
    unsafe { libc::munmap(addr as usize as *mut libc::c_void, len as usize) };
}

/// One process of a tree to create (see [`spawn_tree`]).
#[derive(Debug, Clone, Default)]
pub struct ProcPlan {
    pub pid: i32,
    /// Signal the parent gets when this process exits.
    pub exit_signal: i32,
    /// Call setsid() first (a session leader).
    pub setsid: bool,
    /// After setsid: make the terminal of this descriptor (of the caller,
    /// inherited; a pty master names its slave) the controlling terminal
    /// (TIOCSCTTY).
    pub ctty_fd: Option<i32>,
    /// Exit at once with this wait status (a zombie for its parent to reap).
    pub zombie_status: Option<i32>,
    /// Descriptors; `fds.staging` is ignored (the tree's is used). The
    /// ready pipe must be one of `fds.srcs`, at index `ready_index`.
    pub fds: FdPlan,
    pub ready_index: usize,
    /// Indices of its children in the tree's `procs`.
    pub children: Vec<usize>,
    /// A helper holding a process group whose leader had exited: it makes
    /// itself the group's leader, reports ready, and waits to be killed
    /// (by its parent, once the members have joined).
    pub group_helper: bool,
    /// In a PID namespace nested below the tree's: its PID at every level
    /// from its own (first) up to the tree's (last), the clone3 set_tid
    /// array. Empty: `pid` in its parent's namespace.
    pub nested_pids: Vec<i32>,
    /// The init of a nested PID namespace its parent makes (CLONE_NEWPID).
    pub nested_init: bool,
    /// Its pid_for_children is its nested-init child's namespace.
    pub pid_for_children_nested: bool,
}

/// A whole tree: `procs[0]` is the root, forked by the caller.
#[derive(Debug, Clone, Default)]
pub struct TreePlan {
    pub procs: Vec<ProcPlan>,
    /// Staging base above every descriptor of the caller and every target.
    pub staging: i32,
    /// The caller's end of the ready pipe every process writes to.
    pub ready_fd: i32,
    /// Create the root as init (PID 1) of a new PID namespace, with a new
    /// mount namespace and its own /proc; every PID in `procs` is then the
    /// namespace's.
    pub new_pid_ns: bool,
    /// Recreate the root's session, whose leader had exited: a helper with
    /// this PID calls setsid, forks the root, and waits until the caller
    /// kills (and reaps) it once the tree is restored.
    pub session_helper: Option<i32>,
    /// Create the tree in a new UTS namespace with this host name and
    /// domain name (the first process stasis forks sets them).
    pub uts: Option<(Vec<u8>, Vec<u8>)>,
    /// Create the tree in a new time namespace with these offsets (the
    /// text of /proc/self/timens_offsets; made and entered by the first
    /// process stasis forks: crate::timens).
    pub time_offsets: Option<Vec<u8>>,
    /// Create the tree in a new cgroup namespace rooted at the cgroups
    /// whose `cgroup.procs` files these are (joined, then unshared, by the
    /// first process stasis forks: crate::cgroupns).
    pub cgroup_ns: Option<Vec<std::ffi::CString>>,
    /// Enter this mount namespace and make this directory (a mount of it)
    /// the root with pivot_root: the first process stasis forks does it,
    /// every other process inherits it (descriptors of the caller's).
    pub mntns: Option<(i32, i32)>,
    /// Mounts the first process makes once it is in every namespace of the
    /// tree and has pivoted (see [`crate::mount::LateMount`]).
    pub late_mounts: Vec<crate::mount::LateMount>,
    /// criu's `--restore-sibling`: the first process forked (the root, or
    /// the helper init) is created with CLONE_PARENT, a child of the
    /// caller's parent instead of the caller's. Not with `session_helper`.
    pub sibling: bool,
    /// Create the tree in the tree's own user namespace, made beforehand
    /// (by [`crate::userns::spawn_holder`], with its maps): a descriptor
    /// of ours of it. Every namespace made for the tree from then on is
    /// made inside it, so that it belongs to it as the dumped ones did
    /// (see `spawn_in_user_ns`).
    pub user_ns: Option<i32>,
    /// The root joins a new session keyring of this name
    /// (KEYCTL_JOIN_SESSION_KEYRING) before it forks: every process of the
    /// tree inherits it.
    pub session_keyring: Option<std::ffi::CString>,
    /// A pipe of the caller's (read end, write end): the helper init of a
    /// new PID namespace waits for one byte on it before it forks the
    /// root (a root that is the namespace's init, before it forks its
    /// children), so that the caller can fork helpers with chosen PIDs
    /// into the namespace (which takes them only once its init exists)
    /// while every other PID of the tree is still free there.
    pub gate: Option<(i32, i32)>,
    /// Socket calls the root makes before it forks anything ([`SockCall`]).
    pub sock_calls: Vec<SockCall>,
}

/// A call that records its caller in a socket (SO_PEERCRED: listen, what
/// clients of a listener see; connect, what the accepted end sees;
/// socketpair, both ends), made
/// in a tree restored into a PID namespace by the root before it forks
/// anything, on a descriptor of the caller's it inherited (`fd`), as
/// process `pid` there with ids `uid`, `gid` and `groups` (as the tree's
/// user namespace numbers them): a thread of its own when `pid` is its
/// own PID (the thread's ids are its alone), else
/// a helper it forks with that PID (clone3 set_tid, CLONE_FILES), which
/// exits at once, leaving the PID free for the tree. A PID 1 that is not
/// the root's is skipped (`--new-pid-ns`: the helper init's).
#[derive(Debug, Clone)]
pub struct SockCall {
    pub fd: i32,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub op: SockOp,
}

/// What a [`SockCall`] does.
#[derive(Debug, Clone)]
pub enum SockOp {
    /// listen(fd, backlog).
    Listen(i32),
    /// connect(fd) to the unix socket of this name.
    Connect(Vec<u8>),
    /// A new socketpair(AF_UNIX, type) put at `fd` and `peer` in place of
    /// the pair there, with what it had ([`put_in_place`]; `shut`: the
    /// saved shutdown states of `fd` and `peer`).
    Pair { peer: i32, ty: i32, shut: [u8; 2] },
    /// A connection accepted from the listener at `listener` (bound to
    /// `name`): a new socket connected to `name` (the call), accepted, put
    /// at `client` and at `fd` (the accepted end) in place of the (idle)
    /// connection there, with what it had ([`put_in_place`]; `shut`: the
    /// saved shutdown states of `fd` and `client`).
    Accepted {
        listener: i32,
        client: i32,
        name: Vec<u8>,
        ty: i32,
        shut: [u8; 2],
    },
    /// unlink of this path (NUL-terminated) by the root itself, after
    /// the calls before it: the socket file of a listener made for them.
    Unlink(Vec<u8>),
}

/// connect(2) of `fd` to the unix socket `name` (raw calls only).
///
/// # Safety
/// Raw calls only; callable right after a fork.
unsafe fn connect_raw(fd: i32, name: &[u8]) -> bool {
    // SAFETY: sa lives on this stack; its length is passed.
    unsafe {
        let mut sa: libc::sockaddr_un = std::mem::zeroed();
        sa.sun_family = libc::AF_UNIX as u16;
        let n = name.len().min(sa.sun_path.len());
        for (d, &b) in sa.sun_path.iter_mut().zip(name.iter()) {
            *d = b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + n;
        libc::syscall(libc::SYS_connect, fd, std::ptr::addr_of!(sa), len) == 0
    }
}

/// The socket options [`put_in_place`] copies (`sock::UNIX_OPTS` but
/// SO_PEEK_OFF, set after the data).
const COPIED_OPTS: [libc::c_int; 9] = [
    libc::SO_PASSCRED,
    libc::SO_PASSSEC,
    libc::SO_RCVBUF,
    libc::SO_SNDBUF,
    libc::SO_RCVLOWAT,
    libc::SO_TIMESTAMP,
    libc::SO_TIMESTAMPNS,
    libc::SO_MARK,
    libc::SO_PRIORITY,
];

/// Largest message moved between sockets (the image's limit per socket).
const MOVE_BUF: usize = 16 << 20;

/// An int socket option of `fd` (None: not readable).
///
/// # Safety
/// Raw calls only.
unsafe fn get_opt(fd: i32, opt: libc::c_int) -> Option<i32> {
    let mut v = 0i32;
    let mut len = 4u32;
    // SAFETY: v and len are live out-parameters of the right size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut v as *mut i32,
            &mut len as *mut u32,
        )
    };
    (r == 0).then_some(v)
}

/// Sets an int socket option (buffer sizes as getsockopt read them:
/// halved, with the FORCE variants; where those need a capability we lack
/// (in a user namespace: CAP_NET_ADMIN of the host's), with the plain
/// ones, the size read back to be sure it is the one asked for).
///
/// # Safety
/// Raw calls only.
unsafe fn set_opt(fd: i32, opt: libc::c_int, v: i32) -> bool {
    let set = |opt: libc::c_int, v: i32| {
        // SAFETY: v lives for the call; its size is passed.
        unsafe {
            libc::syscall(
                libc::SYS_setsockopt,
                fd,
                libc::SOL_SOCKET,
                opt,
                &v as *const i32,
                4,
            ) == 0
        }
    };
    match opt {
        libc::SO_RCVBUF | libc::SO_SNDBUF => {
            let force = if opt == libc::SO_RCVBUF {
                libc::SO_RCVBUFFORCE
            } else {
                libc::SO_SNDBUFFORCE
            };
            // SAFETY: raw calls on our descriptor.
            set(force, v / 2) || (set(opt, v / 2) && unsafe { get_opt(fd, opt) } == Some(v))
        }
        o => set(o, v),
    }
}

/// Most descriptors one message carries (the kernel's SCM_MAX_FD).
const MAX_RIGHTS: usize = 253;

/// Moves what waits in socket `old` into the new socket whose peer is
/// `from` (message by message; a stream's bytes in chunks), through
/// `buf` (MOVE_BUF bytes), each message with the descriptors in flight
/// in it (SCM_RIGHTS: received here, sent on with it, closed again; no
/// other control message is passed on). True once `old` has nothing
/// more.
///
/// # Safety
/// Raw calls only; `buf` is MOVE_BUF writable bytes.
unsafe fn move_queued(old: i32, from: i32, stream: bool, buf: *mut u8) -> bool {
    const CTL: usize = 2048;
    let mut ctl = [0u64; CTL / 8];
    let mut out = [0u64; CTL / 8];
    let mut fds = [-1i32; MAX_RIGHTS];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.cast(),
            iov_len: MOVE_BUF,
        };
        // SAFETY: msghdr is plain data; every pointer in it is to a
        // buffer of the size given, live for the call.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.as_mut_ptr().cast();
        mh.msg_controllen = CTL;
        // SAFETY: as above.
        let n = unsafe {
            libc::syscall(
                libc::SYS_recvmsg,
                old,
                &mut mh as *mut libc::msghdr,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            let e = last_errno();
            return e == libc::EAGAIN || e == libc::EWOULDBLOCK;
        }
        // The descriptors that came with it.
        let mut k = 0usize;
        // SAFETY: the CMSG walk stays inside the control bytes the kernel
        // wrote (msg_controllen); each SCM_RIGHTS payload holds ints.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let len = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                    let p = libc::CMSG_DATA(c).cast::<i32>();
                    for i in 0..len / 4 {
                        if k < MAX_RIGHTS {
                            fds[k] = p.add(i).read_unaligned();
                            k += 1;
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        if n == 0 && k == 0 {
            return true;
        }
        let mut off = 0i64;
        let mut first = true;
        while off < n || first {
            let mut iov = libc::iovec {
                // SAFETY: off is within the n bytes received.
                iov_base: unsafe { buf.add(off as usize) }.cast(),
                iov_len: (n - off) as usize,
            };
            // SAFETY: as above.
            let mut omh: libc::msghdr = unsafe { std::mem::zeroed() };
            omh.msg_iov = &mut iov;
            omh.msg_iovlen = 1;
            if first && k > 0 {
                // SAFETY: out holds CMSG_SPACE(4 * MAX_RIGHTS) bytes.
                unsafe {
                    omh.msg_control = out.as_mut_ptr().cast();
                    omh.msg_controllen = libc::CMSG_SPACE(4 * k as u32) as usize;
                    let c = libc::CMSG_FIRSTHDR(&omh);
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN(4 * k as u32) as usize;
                    let p = libc::CMSG_DATA(c).cast::<i32>();
                    for (i, &fd) in fds[..k].iter().enumerate() {
                        p.add(i).write_unaligned(fd);
                    }
                }
            }
            // SAFETY: as above.
            let w = unsafe {
                libc::syscall(
                    libc::SYS_sendmsg,
                    from,
                    &omh as *const libc::msghdr,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if first {
                for &fd in &fds[..k] {
                    // SAFETY: the descriptors received above, ours to close.
                    unsafe { libc::syscall(libc::SYS_close, fd) };
                }
            }
            if w < 0 || (w == 0 && n > 0) || (!stream && w != n) {
                return false;
            }
            first = false;
            off += w;
        }
    }
}

/// Puts the new sockets `new` (a connected pair) at the numbers `at`
/// (close-on-exec) in place of the old pair there, with what the old ones
/// had: the data waiting in each, its options (SO_PEEK_OFF after the
/// data), the file status flags `flags`, then the shutdown states `shut`
/// (SHUT_* + 1 as sock_diag shows them, 0 for none).
///
/// # Safety
/// Raw calls only; callable right after a fork.
unsafe fn put_in_place(
    new: [i32; 2],
    at: [i32; 2],
    flags: [i64; 2],
    (ty, shut): (i32, [u8; 2]),
) -> bool {
    // SAFETY: raw calls on descriptors of ours and on a buffer mapped here.
    unsafe {
        let buf = libc::syscall(
            libc::SYS_mmap,
            0usize,
            MOVE_BUF,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0usize,
        );
        if buf < 0 {
            return false;
        }
        let room = i32::try_from(MOVE_BUF * 2).unwrap_or(i32::MAX);
        let stream = ty == libc::SOCK_STREAM;
        // Room to move what waits: as much as we may (a move that does not
        // fit fails below); the saved sizes are set after.
        for fd in new {
            set_opt(fd, libc::SO_SNDBUF, room);
        }
        let moved = (0..2).all(|k| move_queued(at[k], new[1 - k], stream, buf as *mut u8));
        libc::syscall(libc::SYS_munmap, buf, MOVE_BUF);
        moved
            && (0..2).all(|k| {
                // Only what differs is set: some options need capabilities
                // even to be set to what they are (SO_MARK).
                COPIED_OPTS.iter().all(|&o| {
                    get_opt(at[k], o)
                        .is_none_or(|v| get_opt(new[k], o) == Some(v) || set_opt(new[k], o, v))
                }) && get_opt(at[k], libc::SO_PEEK_OFF)
                    .is_none_or(|v| v < 0 || set_opt(new[k], libc::SO_PEEK_OFF, v))
            })
            && (0..2).all(|k| {
                libc::syscall(libc::SYS_dup3, new[k], at[k], libc::O_CLOEXEC) >= 0
                    && libc::syscall(libc::SYS_close, new[k]) == 0
                    && libc::syscall(libc::SYS_fcntl, at[k], libc::F_SETFL, flags[k]) == 0
                    && (shut[k] == 0
                        || libc::syscall(libc::SYS_shutdown, at[k], i32::from(shut[k]) - 1) == 0)
            })
    }
}

/// Waits for the caller's byte on [`TreePlan::gate`], if any; exits
/// (reporting `pid`'s failure) when the caller closed it without one.
/// Raw calls only.
fn wait_at_gate(plan: &TreePlan, pid: i32) {
    let Some((r, w)) = plan.gate else {
        return;
    };
    // SAFETY: raw calls on the inherited pipe and a byte on this stack.
    unsafe {
        // Only the caller's end may keep the pipe open for writing.
        libc::syscall(libc::SYS_close, w);
        let mut b = 0u8;
        let got = libc::syscall(libc::SYS_read, r, &mut b as *mut u8, 1usize);
        libc::syscall(libc::SYS_close, r);
        if got != 1 {
            report(plan.ready_fd, pid, 18);
            exit_now(18);
        }
    }
}

/// Makes one [`SockCall`]'s call (raw calls only).
///
/// # Safety
/// Only from a forked restore child or its helper.
unsafe fn sock_call_now(c: &SockCall, tmp: [i32; 2]) -> bool {
    // SAFETY: raw calls on inherited descriptors; fds lives on this stack.
    unsafe {
        match &c.op {
            SockOp::Listen(backlog) => libc::syscall(libc::SYS_listen, c.fd, *backlog) == 0,
            SockOp::Connect(name) => connect_raw(c.fd, name),
            SockOp::Unlink(_) => true,
            &SockOp::Pair { ty, .. } => {
                let mut fds = [-1i32; 2];
                libc::syscall(
                    libc::SYS_socketpair,
                    libc::AF_UNIX,
                    ty | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                ) == 0
                    && (0..2).all(|k| {
                        libc::syscall(libc::SYS_dup3, fds[k], tmp[k], libc::O_CLOEXEC) >= 0
                            && libc::syscall(libc::SYS_close, fds[k]) == 0
                    })
            }
            SockOp::Accepted { name, ty, .. } => {
                let x = libc::syscall(libc::SYS_socket, libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0)
                    as i32;
                x >= 0
                    && connect_raw(x, name)
                    && libc::syscall(libc::SYS_dup3, x, tmp[1], libc::O_CLOEXEC) >= 0
                    && libc::syscall(libc::SYS_close, x) == 0
            }
        }
    }
}

/// After [`sock_call_now`], by the root with its own ids (moving data and
/// forcing buffer sizes needs its privileges): the new pair, or the new
/// client accepted, put in place of the old ones ([`put_in_place`]).
///
/// # Safety
/// Raw calls only; from the forked root.
unsafe fn sock_call_finish(c: &SockCall, tmp: [i32; 2]) -> bool {
    let (other, ty, shut, new) = match &c.op {
        SockOp::Listen(_) | SockOp::Connect(_) | SockOp::Unlink(_) => return true,
        &SockOp::Pair { peer, ty, shut } => (peer, ty, shut, tmp[0]),
        SockOp::Accepted {
            listener,
            client,
            ty,
            shut,
            ..
        } => {
            let null = std::ptr::null_mut::<libc::c_void>();
            // SAFETY: accept4 on an inherited listener, no address wanted.
            let y = unsafe {
                libc::syscall(libc::SYS_accept4, *listener, null, null, libc::SOCK_CLOEXEC)
            } as i32;
            // SAFETY: closes the unused slot.
            unsafe { libc::syscall(libc::SYS_close, tmp[0]) };
            if y < 0 {
                return false;
            }
            (*client, *ty, *shut, y)
        }
    };
    // SAFETY: raw calls on descriptors of ours.
    unsafe {
        let flags = [
            libc::syscall(libc::SYS_fcntl, c.fd, libc::F_GETFL),
            libc::syscall(libc::SYS_fcntl, other, libc::F_GETFL),
        ];
        flags.iter().all(|&f| f >= 0)
            && put_in_place([new, tmp[1]], [c.fd, other], flags, (ty, shut))
    }
}

/// A call the root makes as itself ([`own_call`]).
struct OwnCall<'a> {
    call: &'a SockCall,
    tmp: [i32; 2],
    ok: std::sync::atomic::AtomicBool,
}

/// On a thread of the root ([`crate::clone::on_raw_thread`]): takes the
/// call's ids and makes it.
extern "C" fn own_call(arg: usize) {
    // SAFETY: `arg` is the OwnCall the root waits on; raw calls only.
    let job = unsafe { &*(arg as *const OwnCall<'_>) };
    // SAFETY: raw calls on inherited descriptors.
    let ok = unsafe { take_ids(job.call) && sock_call_now(job.call, job.tmp) };
    job.ok.store(ok, std::sync::atomic::Ordering::Release);
}

/// Takes a call's ids (every uid and gid, and the groups: these only
/// when they differ from ours, so that a user namespace that denies
/// setgroups takes the groups it gave).
///
/// # Safety
/// Raw calls only; changes the calling thread's credentials.
unsafe fn take_ids(c: &SockCall) -> bool {
    let mut groups = [0u32; 256];
    // SAFETY: raw integer calls; `groups` lives on this stack.
    unsafe {
        let n = libc::syscall(libc::SYS_getgroups, groups.len(), groups.as_mut_ptr());
        let same = usize::try_from(n).is_ok_and(|n| groups[..n] == c.groups[..]);
        (same || libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()) == 0)
            && libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid) == 0
            && libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid) == 0
    }
}

/// The root's [`SockCall`]s, in order; false after a failure.
///
/// # Safety
/// Only from the forked root, before it forks its children.
unsafe fn sock_calls(plan: &TreePlan, me: i32) -> bool {
    for c in &plan.sock_calls {
        if let SockOp::Unlink(path) = &c.op {
            // SAFETY: a NUL-terminated path of the plan's.
            unsafe { libc::syscall(libc::SYS_unlink, path.as_ptr()) };
            continue;
        }
        if c.pid == 1 && me != 1 {
            continue;
        }
        // SAFETY: raw calls; every buffer lives on this stack or in the
        // plan, allocated before the fork.
        unsafe {
            // Two free numbers (duplicates, replaced) for a new pair or
            // client, shared with a helper.
            let tmp = match c.op {
                SockOp::Pair { .. } | SockOp::Accepted { .. } => [
                    libc::syscall(libc::SYS_fcntl, c.fd, libc::F_DUPFD_CLOEXEC, 0) as i32,
                    libc::syscall(libc::SYS_fcntl, c.fd, libc::F_DUPFD_CLOEXEC, 0) as i32,
                ],
                _ => [-1, -1],
            };
            if matches!(c.op, SockOp::Pair { .. } | SockOp::Accepted { .. })
                && tmp.iter().any(|&t| t < 0)
            {
                return false;
            }
            if c.pid == me {
                // On a thread of ours: the ids it takes are its own, the
                // PID it reports ours. Its change of ids resets our
                // dumpable flag (it is the process's): set back after.
                let dumpable = libc::syscall(libc::SYS_prctl, libc::PR_GET_DUMPABLE);
                let job = OwnCall {
                    call: c,
                    tmp,
                    ok: std::sync::atomic::AtomicBool::new(false),
                };
                let mut stack = [0u8; 64 << 10];
                let ran = crate::clone::on_raw_thread(
                    own_call,
                    std::ptr::addr_of!(job) as usize,
                    &mut stack,
                );
                let back = libc::syscall(libc::SYS_prctl, libc::PR_SET_DUMPABLE, dumpable) == 0;
                let ok = job.ok.load(std::sync::atomic::Ordering::Acquire);
                if !(ran && ok && back && sock_call_finish(c, tmp)) {
                    return false;
                }
                continue;
            }
            let tids = [c.pid];
            let args = CloneArgs {
                flags: libc::CLONE_FILES as u64,
                exit_signal: libc::SIGCHLD as u64,
                set_tid: tids.as_ptr() as u64,
                set_tid_size: 1,
                ..Default::default()
            };
            let r = libc::syscall(
                libc::SYS_clone3,
                std::ptr::addr_of!(args),
                std::mem::size_of::<CloneArgs>(),
            );
            if r == 0 {
                let ok = take_ids(c) && sock_call_now(c, tmp);
                exit_now(if ok { 0 } else { 1 });
            }
            if r < 0 {
                return false;
            }
            let mut st = 0i32;
            let got = libc::syscall(
                libc::SYS_wait4,
                r,
                &mut st as *mut i32,
                libc::__WALL,
                0usize,
            );
            if got != r || st != 0 || !sock_call_finish(c, tmp) {
                return false;
            }
        }
    }
    true
}

const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
const NOBODY: libc::c_long = 65534;

/// Failure codes a tree child reports through the ready pipe.
pub fn tree_failure(code: i32) -> &'static str {
    match code {
        2 => "its parent died before it started",
        3 => "duplicating descriptors to the staging range failed",
        4 => "placing a descriptor at its number failed",
        7 => "creating a child with its PID failed (PID taken?)",
        8 => "setsid failed",
        9 => "mounting /proc for the new PID namespace failed",
        10 => "setting the host or domain name of the new UTS namespace failed",
        11 => "taking its controlling terminal (TIOCSCTTY) failed",
        12 => "entering the rebuilt mount namespace (setns, pivot_root) failed",
        13 => "creating the new time namespace with its offsets failed",
        14 => "joining the cgroup namespace's roots or unsharing it failed",
        15 => "making a proc, sysfs, mqueue or cgroup mount (or one stacked on it) in the new namespaces failed",
        16 => "entering the tree's user namespace (setns) or making a namespace in it failed",
        17 => "joining its session keyring (KEYCTL_JOIN_SESSION_KEYRING) failed",
        18 => "the restorer gave up before the root was forked (the new PID namespace's gate)",
        19 => "a listen or connect as the PID and ids that made a socket (SO_PEERCRED) failed",
        _ => "unexpected failure",
    }
}

/// Forks the tree: the root by us, every other process by its parent (clone3
/// with set_tid), zombies exiting at once. With `new_pid_ns` and a root
/// that is not PID 1, a helper init (PID 1) forks the root, reaps orphans,
/// and exits with the root's status; its PID is returned instead. Each live process places its
/// descriptors, writes `[pid, 0]` (two i32) to the ready pipe, and waits in
/// pause() with every signal blocked, to be seized by the caller. A failing
/// process writes `[pid, code]` and exits. Returns the PID of the first
/// process forked and a pidfd of it (CLONE_PIDFD: it names that process
/// even once a sibling's parent, not us, has reaped it).
pub fn spawn_tree(plan: &TreePlan) -> Result<(Pid, OwnedFd)> {
    // With CLONE_PARENT the first process's parent is our parent.
    let parent = if plan.sibling {
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::getppid() }
    } else {
        crate::util::getpid().0
    };
    let root = plan
        .procs
        .first()
        .ok_or_else(|| SysError::other("spawn tree", None, "empty tree"))?;
    // SAFETY: the child runs tree_child: raw syscalls on data prepared
    // before the fork only.
    // In the tree's user namespace the first process makes them itself.
    let own_ns = plan.user_ns.is_none();
    let mut flags = if plan.new_pid_ns && own_ns {
        (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64
    } else {
        0
    };
    // The UTS namespace is made by the first process we fork, which names
    // it before anything else; every other process inherits it.
    let uts_flag = if plan.uts.is_some() && own_ns {
        libc::CLONE_NEWUTS as u64
    } else {
        0
    };
    flags |= uts_flag;
    let parent_flag = if plan.sibling {
        libc::CLONE_PARENT as u64
    } else {
        0
    };
    flags |= parent_flag;
    // Inside a new namespace the root's parent is invisible: getppid() is 0.
    let expect_parent = if plan.new_pid_ns { 0 } else { parent };
    // A tree whose root is not PID 1 gets a helper init in the namespace.
    let helper = plan.new_pid_ns && root.pid != 1;
    let first = if helper { 1 } else { root.pid };
    if let Some(sid) = plan.session_helper.filter(|_| !plan.new_pid_ns) {
        let mut fd = -1;
        // SAFETY: as above; the helper runs raw syscalls only.
        return match unsafe { fork_with_pid_fd(&[sid], uts_flag, Some(&mut fd))? } {
            Forked::Child => {
                set_uts(plan, root.pid);
                set_time(plan, root.pid);
                enter_mntns(plan, root.pid);
                session_helper(plan, sid)
            }
            Forked::Parent(p) => Ok((p, owned_pidfd(fd))),
        };
    }
    if let Some(user) = plan.user_ns {
        return spawn_in_user_ns(plan, user, first, helper);
    }
    let mut fd = -1;
    // SAFETY: as above.
    let forked = unsafe { fork_with_pid_fd(&[first], flags, Some(&mut fd)) };
    match forked? {
        Forked::Child => {
            set_uts(plan, root.pid);
            set_time(plan, root.pid);
            enter_mntns(plan, root.pid);
            if helper {
                helper_init(plan)
            } else {
                tree_child(plan, 0, expect_parent)
            }
        }
        Forked::Parent(p) => Ok((p, owned_pidfd(fd))),
    }
}

/// The pidfd clone3 wrote for a child it created.
fn owned_pidfd(fd: i32) -> OwnedFd {
    // SAFETY: clone3 succeeded with CLONE_PIDFD, so `fd` is a new
    // descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Forks process `i` of the plan with its PID and exit signal (clone3
/// set_tid, every level's PID for a nested namespace; its init with
/// CLONE_NEWPID and a pidfd in `pidfd`); the child runs [`tree_child`]
/// expecting `me` as its parent (0: a parent outside its namespace).
/// Returns clone3's result in the caller (the child never returns).
///
/// # Safety
/// Only from a forked restore child: raw syscalls, no allocation.
unsafe fn fork_plan_child(plan: &TreePlan, i: usize, me: i32, pidfd: &mut i32) -> i64 {
    let cp = &plan.procs[i];
    let set = [cp.pid];
    let (tids, n) = if cp.nested_pids.is_empty() {
        (set.as_ptr(), 1)
    } else {
        (cp.nested_pids.as_ptr(), cp.nested_pids.len())
    };
    let flags = if cp.nested_init {
        (libc::CLONE_NEWPID | libc::CLONE_PIDFD) as u64
    } else {
        0
    };
    let args = CloneArgs {
        flags,
        pidfd: if cp.nested_init {
            pidfd as *mut i32 as u64
        } else {
            0
        },
        exit_signal: cp.exit_signal as u64,
        set_tid: tids as u64,
        set_tid_size: n as u64,
        ..Default::default()
    };
    // SAFETY: args and the set_tid array live for the call; without CLONE_VM the child
    // runs on a copy of this stack, like fork.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        tree_child(plan, i, me);
    }
    r
}

/// A restore child's first steps: die with its parent (until the
/// restorer clears this), and block every signal while it is built.
fn die_with_parent_and_block_signals() {
    // SAFETY: integer-only prctl on the calling process.
    unsafe { libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    block_all_signals();
}

fn block_all_signals() {
    let all: u64 = !0;
    // SAFETY: an 8-byte kernel sigset that lives for the call.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            0usize,
            8usize,
        )
    };
}

/// In the first process of a tree with its own UTS namespace: sets its
/// names (raw syscalls on data prepared before the fork), or reports
/// failure 10 and exits.
fn set_uts(plan: &TreePlan, root: i32) {
    let Some((host, domain)) = &plan.uts else {
        return;
    };
    // SAFETY: raw syscalls reading prepared buffers of the given lengths.
    unsafe {
        if libc::syscall(libc::SYS_sethostname, host.as_ptr(), host.len()) < 0
            || libc::syscall(libc::SYS_setdomainname, domain.as_ptr(), domain.len()) < 0
        {
            report(plan.ready_fd, root, 10);
            exit_now(10);
        }
    }
}

/// [`spawn_tree`] for a tree in its own user namespace (see
/// [`TreePlan::user_ns`]). A PID namespace belongs to the user namespace
/// of the process that makes it, and cannot be entered before its init
/// exists, so a forker F of ours makes it: F joins the cgroups of the
/// tree's cgroup namespace (with our privileges), enters the user
/// namespace, unshares the PID namespace and forks the first process as
/// its init with CLONE_PARENT (our child, as without a user namespace),
/// tells us its PID, and exits. The first process then makes the UTS,
/// time, cgroup (and, without a rebuilt one, mount) namespaces itself.
fn spawn_in_user_ns(
    plan: &TreePlan,
    user: i32,
    first: i32,
    helper: bool,
) -> Result<(Pid, OwnedFd)> {
    let root = plan.procs[0].pid;
    let (r, w) = crate::util::pipe()?;
    let wfd = w.as_raw_fd();
    // SAFETY: F and the first process make raw syscalls on data prepared
    // before the fork only.
    match unsafe { fork_with_pid(&[], 0)? } {
        Forked::Child => {
            let fail = |code| {
                report(plan.ready_fd, root, code);
                exit_now(code)
            };
            die_with_parent_and_block_signals();
            if let Some(files) = &plan.cgroup_ns {
                // SAFETY: we are a freshly forked, single-threaded child.
                if !unsafe { crate::cgroupns::join(files) } {
                    fail(14);
                }
            }
            let set = [first];
            let args = CloneArgs {
                flags: libc::CLONE_PARENT as u64,
                set_tid: set.as_ptr() as u64,
                set_tid_size: 1,
                ..Default::default()
            };
            // SAFETY: integer-only syscalls on ourselves and a descriptor
            // of ours; clone3 with args that live for the call.
            let p = unsafe {
                if libc::syscall(libc::SYS_setns, user, libc::CLONE_NEWUSER) < 0
                    || libc::syscall(libc::SYS_unshare, libc::CLONE_NEWPID) < 0
                {
                    fail(16);
                }
                libc::syscall(
                    libc::SYS_clone3,
                    &args as *const CloneArgs,
                    std::mem::size_of::<CloneArgs>(),
                )
            };
            if p == 0 {
                enter_user(plan, root);
                set_uts(plan, root);
                set_time(plan, root);
                enter_mntns(plan, root);
                if helper {
                    helper_init(plan)
                } else {
                    tree_child(plan, 0, 0)
                }
            }
            let pid = p as i32;
            // SAFETY: four bytes from a local to our pipe.
            unsafe { libc::syscall(libc::SYS_write, wfd, &pid as *const i32, 4usize) };
            exit_now(if p < 0 { 7 } else { 0 })
        }
        Forked::Parent(f) => {
            drop(w);
            let mut b = [0u8; 4];
            // SAFETY: four bytes into a local buffer from our pipe.
            let n = unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 4) };
            let _ = crate::util::waitpid(f, libc::__WALL);
            let p = i32::from_le_bytes(b);
            if n != 4 || p <= 0 {
                return Err(SysError::other(
                    "spawn tree",
                    Some(Pid(root)),
                    "forking the first process in the tree's user namespace failed",
                ));
            }
            // SAFETY: pidfd_open of our own child (not reaped: it is ours).
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) };
            if fd < 0 {
                let e = crate::last_errno();
                kill_and_reap(Pid(p));
                return Err(SysError::new("pidfd_open", Some(Pid(p)), e));
            }
            Ok((Pid(p), owned_pidfd(fd as i32)))
        }
    }
}

/// In the first process of a tree in its own user namespace, forked by
/// [`spawn_in_user_ns`]: makes the UTS namespace (named by [`set_uts`])
/// and, without a rebuilt mount namespace, a copy of the one it has, for
/// its own /proc. Reports failure 16 and exits.
fn enter_user(plan: &TreePlan, root: i32) {
    // Dumpable, so that the tree's processes may open their children's
    // namespaces (setns with a pidfd checks ptrace access, and their
    // memory's user namespace is still ours, where they have no
    // capability); the image's value is set back with the credentials.
    // SAFETY: integer-only prctl on ourselves.
    unsafe { libc::syscall(libc::SYS_prctl, libc::PR_SET_DUMPABLE, 1) };
    let mut flags = 0;
    if plan.uts.is_some() {
        flags |= libc::CLONE_NEWUTS;
    }
    if plan.mntns.is_none() {
        flags |= libc::CLONE_NEWNS;
    }
    // SAFETY: an integer-only syscall on ourselves.
    if flags != 0 && unsafe { libc::syscall(libc::SYS_unshare, flags) } < 0 {
        report(plan.ready_fd, root, 16);
        exit_now(16);
    }
}

fn set_time(plan: &TreePlan, root: i32) {
    if let Some(offsets) = &plan.time_offsets {
        // SAFETY: we are the freshly forked, single-threaded first process.
        if !unsafe { crate::timens::enter_new(offsets) } {
            report(plan.ready_fd, root, 13);
            exit_now(13);
        }
    }
    if let Some(files) = &plan.cgroup_ns {
        // In its user namespace the cgroups were joined already.
        let joined = plan.user_ns.is_some();
        // SAFETY: as above.
        if !unsafe { crate::cgroupns::enter_new(files, joined) } {
            report(plan.ready_fd, root, 14);
            exit_now(14);
        }
    }
}

/// In the first process of a tree with its own mount namespace: enters
/// it (see [`TreePlan::mntns`]), or reports failure 12 and exits.
fn enter_mntns(plan: &TreePlan, root: i32) {
    if let Some((ns, dir)) = plan.mntns {
        let code = crate::mount::enter_and_pivot(ns, dir, &plan.late_mounts);
        if code != 0 {
            report(plan.ready_fd, root, code as i32);
            exit_now(code as i32);
        }
    }
}

fn report(fd: i32, pid: i32, code: i32) {
    let rec = [pid, code];
    // SAFETY: writing 8 bytes from a live array to a pipe (atomic below PIPE_BUF).
    unsafe { libc::syscall(libc::SYS_write, fd, rec.as_ptr(), 8usize) };
}

fn tree_child(plan: &TreePlan, i: usize, parent: i32) -> ! {
    let p = &plan.procs[i];
    // SAFETY: raw syscalls with integer arguments or pointers to memory that
    // lives for the call; no allocation (this runs right after a fork).
    unsafe {
        libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let me = libc::syscall(libc::SYS_getpid) as i32;
        if libc::syscall(libc::SYS_getppid) as i32 != parent {
            report(plan.ready_fd, me, 2);
            exit_now(2);
        }
        block_all_signals();
        if let Some(status) = p.zombie_status {
            die_with(status);
        }
        if p.group_helper {
            libc::syscall(libc::SYS_setpgid, 0, 0);
            report(plan.ready_fd, me, 0);
            loop {
                libc::syscall(libc::SYS_pause);
            }
        }
        // A rebuilt mount namespace brings its own proc (late mounts).
        if i == 0 && plan.new_pid_ns && plan.mntns.is_none() && mount_private_proc() != 0 {
            report(plan.ready_fd, me, 9);
            exit_now(9);
        }
        if p.setsid && libc::syscall(libc::SYS_setsid) < 0 {
            report(plan.ready_fd, me, 8);
            exit_now(8);
        }
        if let Some(fd) = p.ctty_fd {
            if libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                report(plan.ready_fd, me, 11);
                exit_now(11);
            }
        }
        if i == 0 {
            if let Some(name) = &plan.session_keyring {
                // Joined as nobody (file system ids): the join would take
                // any keyring of that name its caller may search (a dead
                // container's, held by a zombie), and only one whose
                // permissions let anybody search can be found so. Its
                // owner and permissions are set afterwards (keyrings.rs);
                // a found one is told from a new one there.
                let uid = libc::syscall(libc::SYS_setfsuid, NOBODY);
                let gid = libc::syscall(libc::SYS_setfsgid, NOBODY);
                let joined =
                    libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr());
                libc::syscall(libc::SYS_setfsuid, uid);
                libc::syscall(libc::SYS_setfsgid, gid);
                if joined < 0 {
                    report(plan.ready_fd, me, 17);
                    exit_now(17);
                }
            }
        }
        if i == 0 && !sock_calls(plan, me) {
            report(plan.ready_fd, me, 19);
            exit_now(19);
        }
        // The init of the tree's own PID namespace: the caller makes
        // what needs PIDs there (the gate, see TreePlan) before any other.
        if i == 0 && p.pid == 1 {
            wait_at_gate(plan, me);
        }
        if fork_children(plan, p, me) < 0 {
            exit_now(7);
        }
        let f = &p.fds;
        let staging = plan.staging;
        for (k, &src) in f.srcs.iter().enumerate() {
            if libc::syscall(libc::SYS_dup2, src, staging + k as i32) < 0 {
                report(plan.ready_fd, me, 3);
                exit_now(3);
            }
        }
        libc::syscall(libc::SYS_close_range, 0u32, (staging - 1) as u32, 0u32);
        libc::syscall(
            libc::SYS_close_range,
            (staging + f.srcs.len() as i32) as u32,
            u32::MAX,
            0u32,
        );
        let ready = staging + p.ready_index as i32;
        for &(k, fd, cloexec) in &f.targets {
            let from = staging + k as i32;
            let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
            if libc::syscall(libc::SYS_dup3, from, fd, flags) < 0 {
                report(ready, me, 4);
                exit_now(4);
            }
        }
        // Target slots are closed by the restorer later (it knows which
        // staging slots are not services); close them now.
        for &(k, _, _) in &f.targets {
            libc::syscall(libc::SYS_close, staging + k as i32);
        }
        report(ready, me, 0);
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}

/// Forks the children of `p` (which sees itself as `me`), in plan order:
/// those in its own PID namespace, then each nested namespace's init
/// (CLONE_NEWPID) and the other members of that namespace, forked after
/// setns(init's pidfd, CLONE_NEWPID) made it our pid_for_children. Leaves
/// pid_for_children as the image says. Returns -1 after reporting a
/// failure. Raw syscalls only (runs right after a fork).
///
/// # Safety
/// Only from a forked restore child.
unsafe fn fork_children(plan: &TreePlan, p: &ProcPlan, me: i32) -> i64 {
    let depth = p.nested_pids.len().max(1);
    let mut init_fd = -1;
    let mut in_nested = false;
    for &c in &p.children {
        let cp = &plan.procs[c];
        let below = cp.nested_pids.len() > depth;
        if (cp.nested_init || !below) && in_nested {
            // SAFETY: raw syscalls on integers.
            if unsafe { pid_ns_for_children_own() } < 0 {
                report(plan.ready_fd, cp.pid, 7);
                return -1;
            }
            in_nested = false;
        }
        if below && !cp.nested_init && !in_nested {
            // SAFETY: setns on a pidfd clone3 gave us.
            if unsafe { libc::syscall(libc::SYS_setns, init_fd, libc::CLONE_NEWPID) } < 0 {
                report(plan.ready_fd, cp.pid, 7);
                return -1;
            }
            in_nested = true;
        }
        let mut fd = -1;
        // SAFETY: the caller's contract.
        let r = unsafe { fork_plan_child(plan, c, if below { 0 } else { me }, &mut fd) };
        if r < 0 {
            report(plan.ready_fd, cp.pid, 7);
            return -1;
        }
        if cp.nested_init {
            if init_fd >= 0 {
                // SAFETY: closing a pidfd of ours.
                unsafe { libc::syscall(libc::SYS_close, init_fd) };
            }
            init_fd = fd;
        }
    }
    if p.pid_for_children_nested && !in_nested {
        // SAFETY: setns on a pidfd clone3 gave us.
        if unsafe { libc::syscall(libc::SYS_setns, init_fd, libc::CLONE_NEWPID) } < 0 {
            report(plan.ready_fd, p.pid, 7);
            return -1;
        }
    } else if !p.pid_for_children_nested && in_nested {
        // SAFETY: raw syscalls on integers.
        if unsafe { pid_ns_for_children_own() } < 0 {
            report(plan.ready_fd, p.pid, 7);
            return -1;
        }
    }
    if init_fd >= 0 {
        // SAFETY: closing a pidfd of ours.
        unsafe { libc::syscall(libc::SYS_close, init_fd) };
    }
    0
}

/// Makes the caller's own PID namespace its pid_for_children again
/// (setns on a pidfd of itself). Returns 0 or -1.
///
/// # Safety
/// Raw syscalls only; callable right after a fork.
unsafe fn pid_ns_for_children_own() -> i64 {
    // SAFETY: integer-only syscalls.
    unsafe {
        let me = libc::syscall(libc::SYS_getpid);
        let fd = libc::syscall(libc::SYS_pidfd_open, me, 0);
        if fd < 0 {
            return -1;
        }
        let r = libc::syscall(libc::SYS_setns, fd, libc::CLONE_NEWPID);
        libc::syscall(libc::SYS_close, fd);
        r.min(0)
    }
}

/// Ends the calling process so that its parent's wait sees `status`.
fn die_with(status: i32) -> ! {
    // SAFETY: raw syscalls on our own process.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::syscall(
                libc::SYS_setrlimit,
                libc::RLIMIT_CORE,
                &no_core as *const libc::rlimit,
            );
            let dfl = [0u64; 4];
            libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), 0usize, 8usize);
            let none: u64 = 0;
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &none as *const u64,
                0usize,
                8usize,
            );
            libc::syscall(libc::SYS_kill, libc::syscall(libc::SYS_getpid), sig);
        }
        libc::syscall(libc::SYS_exit_group, libc::WEXITSTATUS(status));
    }
    exit_now(libc::WEXITSTATUS(status))
}

/// The ptrace options a restore traces the tree's processes with.
pub const RESTORE_PTRACE_OPTIONS: libc::c_int =
    libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE;

/// Seizes a process of the tree waiting in pause(): PTRACE_SEIZE with
/// EXITKILL (it dies with us) and PTRACE_INTERRUPT; returns when stopped.
pub fn seize_waiting(pid: Pid) -> Result<()> {
    seize_interrupt(pid)?;
    wait_seized(pid)
}

/// The first half of [`seize_waiting`]: seized and asked to stop. Seizing
/// a whole tree this way first and then waiting for each
/// ([`wait_seized`]) lets every process go to its stop at once, instead
/// of one wake-up after another.
pub fn seize_interrupt(pid: Pid) -> Result<()> {
    ptrace::seize(pid, RESTORE_PTRACE_OPTIONS)?;
    ptrace::interrupt(pid)
}

/// The second half of [`seize_waiting`]: waits until the seized process
/// stopped in PTRACE_EVENT_STOP.
pub fn wait_seized(pid: Pid) -> Result<()> {
    loop {
        match ptrace::wait(pid)? {
            Stop::Event {
                event: ptrace::PTRACE_EVENT_STOP,
                ..
            } => return Ok(()),
            Stop::Exited(c) => {
                return Err(SysError::other(
                    "seize restore child",
                    Some(pid),
                    format!("exited with {c}"),
                ))
            }
            Stop::Killed(s) => {
                return Err(SysError::other(
                    "seize restore child",
                    Some(pid),
                    format!("killed by signal {s}"),
                ))
            }
            _ => ptrace::cont(pid, 0)?,
        }
    }
}

/// mmap with MAP_FIXED_NOREPLACE: `len` bytes at exactly `addr`, read
/// and write, never replacing anything (EEXIST otherwise).
fn mmap_noreplace(addr: u64, len: u64, flags: i32, what: &str) -> Result<*mut libc::c_void> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no
    // memory of ours changes; on success we own the new range.
    let p = unsafe {
        libc::mmap(
            addr as usize as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(SysError::new(
            format!("mmap {what} at {addr:#x}"),
            None,
            last_errno(),
        ));
    }
    if p as u64 != addr {
        // Old kernels treat NOREPLACE as a hint.
        // SAFETY: unmapping what the kernel just gave us elsewhere.
        unsafe { libc::munmap(p, len as usize) };
        return Err(SysError::new(
            format!("mmap {what} at {addr:#x}"),
            None,
            libc::EEXIST,
        ));
    }
    Ok(p)
}

/// Maps `len` bytes of shared anonymous memory in the caller at `addr`
/// (never replacing anything). Children forked afterwards share it.
pub fn map_shared_anon(addr: u64, len: u64) -> Result<()> {
    mmap_noreplace(addr, len, libc::MAP_SHARED, "shared memory").map(drop)
}

/// Maps `len` bytes of shared anonymous hugetlb memory (`huge`: MAP_HUGETLB
/// and the page size flags) in the caller at `addr`, never replacing
/// anything. Children forked afterwards share it.
pub fn map_shared_huge(addr: u64, len: u64, huge: i32) -> Result<()> {
    mmap_noreplace(addr, len, libc::MAP_SHARED | huge, "shared hugetlb memory").map(drop)
}

/// Detaches the nsfs mounts (binds of namespaces: `ip netns add`'s
/// /run/netns/NAME, ...) of a mount namespace just copied from the
/// caller's: they are other processes' namespaces, bound there at the
/// moment of the copy, not the tree's. Kept, a copy would pin them after
/// their owner unbound them, and a dump would record them as external
/// mounts the restore then cannot find. Pass after pass over
/// /proc/self/mountinfo until one finds none. Raw syscalls and stack
/// buffers only (runs right after a fork).
pub fn detach_nsfs_mounts() {
    for _ in 0..16 {
        // SAFETY: open/read/close of a NUL-terminated path into our buffers.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open,
                c"/proc/self/mountinfo".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 8192];
        let mut have = 0usize;
        let mut found = false;
        loop {
            // SAFETY: reads into the free tail of `buf`.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_read,
                    fd,
                    buf[have..].as_mut_ptr(),
                    buf.len() - have,
                )
            };
            if n <= 0 {
                break;
            }
            have += n as usize;
            let mut start = 0;
            while let Some(nl) = buf[start..have].iter().position(|&b| b == b'\n') {
                found |= detach_if_nsfs(&buf[start..start + nl]);
                start += nl + 1;
            }
            if start == 0 && have == buf.len() {
                // A line longer than the buffer: not a mount we can name.
                have = 0;
                continue;
            }
            buf.copy_within(start..have, 0);
            have -= start;
        }
        // SAFETY: closes the fd opened above.
        unsafe { libc::syscall(libc::SYS_close, fd) };
        if !found {
            return;
        }
    }
}

/// One mountinfo line: detaches its mount point if its filesystem is
/// nsfs (the field after " - "). True if it did.
fn detach_if_nsfs(line: &[u8]) -> bool {
    let Some(sep) = line.windows(3).position(|w| w == b" - ") else {
        return false;
    };
    if !line[sep + 3..].starts_with(b"nsfs ") {
        return false;
    }
    // Field 5 (mount point), octal escapes (\040 ...) undone.
    let Some(point) = line[..sep].split(|&b| b == b' ').nth(4) else {
        return false;
    };
    let mut path = [0u8; 4096];
    let (mut i, mut o) = (0, 0);
    while i < point.len() && o + 1 < path.len() {
        if point[i] == b'\\' && i + 3 < point.len() {
            let d = |b: u8| b.wrapping_sub(b'0');
            path[o] = d(point[i + 1]) * 64 + d(point[i + 2]) * 8 + d(point[i + 3]);
            i += 4;
        } else {
            path[o] = point[i];
            i += 1;
        }
        o += 1;
    }
    path[o] = 0;
    // SAFETY: umount2 with a NUL-terminated path in our buffer.
    unsafe { libc::syscall(libc::SYS_umount2, path.as_ptr(), libc::MNT_DETACH) == 0 }
}

/// In a new mount namespace: stop propagation to the parent's mounts,
/// detach the nsfs binds the copy holds ([`detach_nsfs_mounts`]) and
/// mount a /proc that shows the new PID namespace. Returns 0 or -errno.
/// Raw syscalls only (runs right after a fork).
pub fn mount_private_proc() -> i64 {
    // SAFETY: mount(2) with static NUL-terminated strings.
    unsafe {
        let r = libc::syscall(
            libc::SYS_mount,
            std::ptr::null::<libc::c_char>(),
            c"/".as_ptr(),
            std::ptr::null::<libc::c_char>(),
            (libc::MS_REC | libc::MS_PRIVATE) as libc::c_ulong,
            std::ptr::null::<libc::c_void>(),
        );
        if r < 0 {
            return -1;
        }
        detach_nsfs_mounts();
        libc::syscall(
            libc::SYS_mount,
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong,
            std::ptr::null::<libc::c_void>(),
        )
    }
}

/// `stasis run`: starts `argv` as init (PID 1) of a new PID namespace with
/// its own mount namespace and /proc, as its own session leader. With
/// `opts.user = Some((outside, count))` also in a new user namespace
/// (made first, owning the others) mapping ids 0..count inside to
/// outside..outside+count here, uids and gids alike (setgroups left
/// "allow"); the command runs as root inside (uid and gid 0, no
/// supplementary groups). `opts.flags` adds namespaces (UTS, IPC, cgroup,
/// time); `opts.root` pivots the mount namespace into a directory. A
/// failure before the exec is reported with its stage. Returns its PID
/// in our namespace.
pub fn run_in_pid_ns(argv: &[std::ffi::CString], mut opts: RunNs) -> Result<Pid> {
    if argv.is_empty() {
        return Err(SysError::other("run", None, "no command given"));
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let user = opts.user;
    let root_ptr = opts.root.as_ref().map(|r| r.as_ptr());
    // One clone3 makes them all: with CLONE_NEWUSER the kernel makes the
    // user namespace first, so it owns every other one made with it.
    let mut flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64 | opts.flags;
    // The child waits on this pipe until its maps are written.
    let sync = match user {
        Some(_) => {
            flags |= libc::CLONE_NEWUSER as u64;
            Some(crate::util::pipe()?)
        }
        None => None,
    };
    let sync_fds = sync.as_ref().map(|(r, w)| {
        use std::os::fd::AsRawFd;
        (r.as_raw_fd(), w.as_raw_fd())
    });
    // The child writes (stage, errno) here if it fails before exec; the
    // write end closes at exec (O_CLOEXEC), so EOF means it ran.
    let (err_r, err_w) = crate::util::pipe()?;
    let err_wfd = std::os::fd::AsRawFd::as_raw_fd(&err_w);
    // SAFETY: the child only makes raw syscalls on data prepared before
    // the fork and then execs (or _exits).
    match unsafe { fork_with_pid(&[], flags)? } {
        Forked::Child => {
            // SAFETY: raw syscalls; execvp with a NULL-terminated argv.
            unsafe {
                let fail = |stage: u8| -> ! {
                    let e = *libc::__errno_location();
                    let mut msg = [0u8; 5];
                    msg[0] = stage;
                    msg[1..].copy_from_slice(&e.to_ne_bytes());
                    libc::syscall(libc::SYS_write, err_wfd, msg.as_ptr(), 5usize);
                    exit_now(126)
                };
                if let Some((r, w)) = sync_fds {
                    libc::syscall(libc::SYS_close, w);
                    let mut b = 0u8;
                    if libc::syscall(libc::SYS_read, r, &mut b as *mut u8, 1usize) != 1
                        || libc::syscall(libc::SYS_setresgid, 0, 0, 0) < 0
                        || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()) < 0
                        || libc::syscall(libc::SYS_setresuid, 0, 0, 0) < 0
                    {
                        fail(RUN_STAGE_IDS);
                    }
                    libc::syscall(libc::SYS_close, r);
                }
                match root_ptr {
                    None => {
                        if mount_private_proc() != 0 {
                            fail(RUN_STAGE_PROC);
                        }
                    }
                    Some(root) => {
                        if let Err(stage) = enter_run_root(root) {
                            fail(stage);
                        }
                    }
                }
                libc::syscall(libc::SYS_setsid);
                libc::execvp(ptrs[0], ptrs.as_ptr());
                fail(RUN_STAGE_EXEC);
            }
        }
        Forked::Parent(p) => {
            drop(err_w);
            if let (Some((outside, count)), Some((_, w))) = (user, sync) {
                let map = format!("0 {outside} {count}\n");
                let maps = crate::userns::IdMaps {
                    uid_map: &map,
                    gid_map: &map,
                    projid_map: "",
                    setgroups: "",
                };
                if let Err(e) = crate::userns::write_maps(p, &maps) {
                    kill_and_reap(p);
                    return Err(e);
                }
                if let Some(setup) = opts.setup.take() {
                    if let Err(e) = setup(p) {
                        kill_and_reap(p);
                        return Err(SysError::other(
                            "run: setting up its namespaces",
                            Some(p),
                            e,
                        ));
                    }
                }
                // SAFETY: one byte from a local to our pipe.
                unsafe {
                    libc::write(std::os::fd::AsRawFd::as_raw_fd(&w), b"u".as_ptr().cast(), 1)
                };
            }
            let mut msg = [0u8; 5];
            let n = std::io::Read::read(&mut std::fs::File::from(err_r), &mut msg).unwrap_or(0);
            if n == 5 {
                kill_and_reap(p);
                let errno = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
                let what = match msg[0] {
                    RUN_STAGE_IDS => "becoming root in its user namespace".to_string(),
                    RUN_STAGE_PROC => "mounting its /proc".to_string(),
                    RUN_STAGE_EXEC => format!("exec {:?}", argv[0]),
                    s => format!(
                        "entering its root {:?}: {}",
                        opts.root.as_deref().unwrap_or_default(),
                        run_root_stage(s)
                    ),
                };
                return Err(SysError {
                    op: format!("run: {what}"),
                    pid: Some(p),
                    source: std::io::Error::from_raw_os_error(errno),
                });
            }
            Ok(p)
        }
    }
}

/// What `stasis run` makes for the tree besides its PID and mount
/// namespaces.
#[derive(Default)]
pub struct RunNs {
    /// A new user namespace mapping uids and gids 0..count inside to
    /// outside..outside+count here: `(outside, count)`.
    pub user: Option<(u32, u32)>,
    /// More CLONE_NEW* flags (UTS, IPC, cgroup, time), made in the same
    /// clone3 as the rest, so owned by the new user namespace if any.
    pub flags: u64,
    /// The mount namespace's root: entered with pivot_root, with the PID
    /// namespace's proc on its /proc.
    pub root: Option<std::ffi::CString>,
    /// With `user`: run here with the child's PID once its id maps are
    /// written, before it goes on (to fill a namespace made with it).
    #[allow(clippy::type_complexity)]
    pub setup: Option<Box<dyn FnOnce(Pid) -> std::result::Result<(), String> + Send>>,
}

const RUN_STAGE_IDS: u8 = 1;
const RUN_STAGE_PROC: u8 = 2;
const RUN_STAGE_EXEC: u8 = 3;
const RUN_ROOT_STAGES: [&str; 6] = [
    "making / private",
    "bind-mounting it on itself",
    "chdir into it",
    "mounting proc on its /proc",
    "pivot_root",
    "detaching the old root",
];

fn run_root_stage(s: u8) -> &'static str {
    RUN_ROOT_STAGES
        .get(usize::from(s.wrapping_sub(10)))
        .copied()
        .unwrap_or("?")
}

/// In `stasis run`'s child: `root` becomes the mount namespace's root
/// (bound on itself, proc mounted on its /proc, pivot_root, the old root
/// detached). Raw syscalls only (runs right after a fork); the error is
/// the failed stage (10 + index in RUN_ROOT_STAGES).
///
/// # Safety
/// `root` is a NUL-terminated path.
unsafe fn enter_run_root(root: *const libc::c_char) -> std::result::Result<(), u8> {
    let null = std::ptr::null::<libc::c_char>();
    let step = |r: i64, s: u8| if r < 0 { Err(10 + s) } else { Ok(()) };
    // SAFETY: mount/chdir/pivot_root/umount2 on NUL-terminated paths.
    unsafe {
        let private = (libc::MS_REC | libc::MS_PRIVATE) as libc::c_ulong;
        step(
            libc::syscall(libc::SYS_mount, null, c"/".as_ptr(), null, private, null),
            0,
        )?;
        let bind = libc::MS_BIND as libc::c_ulong;
        step(
            libc::syscall(libc::SYS_mount, root, root, null, bind, null),
            1,
        )?;
        step(libc::syscall(libc::SYS_chdir, root), 2)?;
        let proc_flags = (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong;
        let proc = c"proc".as_ptr();
        step(
            libc::syscall(libc::SYS_mount, proc, proc, proc, proc_flags, null),
            3,
        )?;
        let dot = c".".as_ptr();
        step(libc::syscall(libc::SYS_pivot_root, dot, dot), 4)?;
        step(libc::syscall(libc::SYS_umount2, dot, libc::MNT_DETACH), 5)?;
        step(libc::syscall(libc::SYS_chdir, c"/".as_ptr()), 2)?;
    }
    Ok(())
}

/// PID 1 of a new namespace for a restored tree whose root was not an
/// init: forks the root with its PID, then only reaps, and leaves with the
/// root's exit status. Raw syscalls only (runs right after a fork).
fn helper_init(plan: &TreePlan) -> ! {
    let root = &plan.procs[0];
    // SAFETY: raw syscalls on prepared data; no allocation.
    unsafe {
        die_with_parent_and_block_signals();
        if plan.mntns.is_none() && mount_private_proc() != 0 {
            report(plan.ready_fd, root.pid, 9);
            exit_now(9);
        }
        libc::syscall(libc::SYS_setsid);
        wait_at_gate(plan, root.pid);
        let mut unused = -1;
        let r = fork_plan_child(plan, 0, 1, &mut unused);
        if r < 0 {
            report(plan.ready_fd, root.pid, 7);
            exit_now(7);
        }
        loop {
            let mut st = 0i32;
            let got = libc::syscall(
                libc::SYS_wait4,
                -1,
                &mut st as *mut i32,
                libc::__WALL,
                0usize,
            );
            if got == r {
                // An init cannot kill itself with a signal: report it as a shell would.
                let code = if libc::WIFSIGNALED(st) {
                    128 + libc::WTERMSIG(st)
                } else {
                    libc::WEXITSTATUS(st)
                };
                libc::syscall(libc::SYS_exit_group, code);
            }
            if got < 0 && crate::last_errno() == libc::ECHILD {
                exit_now(1);
            }
        }
    }
}

/// Maps `len` bytes of private anonymous memory in the caller at `addr`
/// (never replacing anything). Children forked afterwards share its pages
/// copy-on-write.
pub fn map_private_anon(addr: u64, len: u64) -> Result<()> {
    mmap_noreplace(addr, len, libc::MAP_PRIVATE, "private memory").map(drop)
}

/// Maps `len` bytes of `fd` at `pgoff`, MAP_PRIVATE and writable, in the
/// caller at `addr` (never replacing anything): the object a private file
/// mapping shared copy-on-write is rebuilt in. Children forked afterwards
/// share its written pages copy-on-write.
pub fn map_private_file(addr: u64, len: u64, fd: i32, pgoff: u64) -> Result<()> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no
    // memory of ours changes; on success we own the new range.
    let p = unsafe {
        libc::mmap(
            addr as usize as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE,
            fd,
            pgoff as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(SysError::new(
            format!("mmap private file memory at {addr:#x}"),
            None,
            last_errno(),
        ));
    }
    if p as u64 != addr {
        // SAFETY: unmapping what the kernel just gave us elsewhere.
        unsafe { libc::munmap(p, len as usize) };
        return Err(SysError::new(
            format!("mmap private file memory at {addr:#x}"),
            None,
            libc::EEXIST,
        ));
    }
    Ok(())
}

/// Reads `len` bytes at `offset` of `file` into our own memory at `addr`,
/// which must be a writable mapping made by [`map_private_anon`] (or
/// [`map_shared_anon`]) covering the range.
pub fn fill_from_file(addr: u64, len: u64, file: &std::fs::File, offset: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0u64;
    while done < len {
        // SAFETY: [addr, addr+len) is a writable anonymous mapping we made
        // and no Rust object lives there; pread writes only inside it.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                (addr + done) as usize as *mut libc::c_void,
                (len - done) as usize,
                (offset + done) as libc::off_t,
            )
        };
        if n <= 0 {
            let e = if n < 0 { last_errno() } else { libc::EIO };
            return Err(SysError::new(
                format!("read pages into {:#x}", addr + done),
                None,
                e,
            ));
        }
        done += n as u64;
    }
    Ok(())
}

/// The leader of a session that had lost it: setsid, fork the root with
/// its PID (it inherits the session and the group), then wait to be killed.
fn session_helper(plan: &TreePlan, sid: i32) -> ! {
    let root = &plan.procs[0];
    // SAFETY: raw syscalls on prepared data; no allocation.
    unsafe {
        die_with_parent_and_block_signals();
        if libc::syscall(libc::SYS_setsid) < 0 {
            report(plan.ready_fd, root.pid, 8);
            exit_now(8);
        }
        let mut unused = -1;
        let r = fork_plan_child(plan, 0, sid, &mut unused);
        if r < 0 {
            report(plan.ready_fd, root.pid, 7);
            exit_now(7);
        }
        // Stay until the caller kills us once the tree is restored: the root
        // (tied to us by PR_SET_PDEATHSIG until then) must not lose its parent
        // before that.
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}
