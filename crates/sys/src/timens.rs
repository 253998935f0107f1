//! Entering a new time namespace with given clock offsets, from a freshly
//! forked, single-threaded restore child (raw syscalls, no allocation).

/// The text written to /proc/self/timens_offsets: one
/// "CLOCK_ID SECS NANOS" line per clock (1 = CLOCK_MONOTONIC,
/// 7 = CLOCK_BOOTTIME).
pub fn offsets_text(monotonic: (i64, i64), boottime: (i64, i64)) -> Vec<u8> {
    format!(
        "{} {} {}\n{} {} {}\n",
        libc::CLOCK_MONOTONIC,
        monotonic.0,
        monotonic.1,
        libc::CLOCK_BOOTTIME,
        boottime.0,
        boottime.1
    )
    .into_bytes()
}

/// Makes a new time namespace for the caller's children
/// (unshare(CLONE_NEWTIME)), writes its offsets while no process is in
/// it yet, and enters it itself (setns on its own time_for_children,
/// allowed to a single-threaded process), so that the caller and every
/// process it forks read the clocks with these offsets. Returns false if
/// any step failed.
///
/// # Safety
/// Only from a forked, single-threaded child: raw syscalls, no allocation.
pub unsafe fn enter_new(offsets: &[u8]) -> bool {
    const OFFSETS: &[u8] = b"/proc/self/timens_offsets\0";
    const FOR_CHILDREN: &[u8] = b"/proc/self/ns/time_for_children\0";
    // SAFETY: raw syscalls on NUL-terminated static paths and a buffer of
    // the given length; descriptors are closed before returning.
    unsafe {
        if libc::syscall(libc::SYS_unshare, libc::CLONE_NEWTIME) < 0 {
            return false;
        }
        let fd = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            OFFSETS.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let w = libc::syscall(libc::SYS_write, fd, offsets.as_ptr(), offsets.len());
        libc::syscall(libc::SYS_close, fd);
        if w != offsets.len() as i64 {
            return false;
        }
        let ns = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            FOR_CHILDREN.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if ns < 0 {
            return false;
        }
        let r = libc::syscall(libc::SYS_setns, ns, libc::CLONE_NEWTIME);
        libc::syscall(libc::SYS_close, ns);
        r == 0
    }
}
