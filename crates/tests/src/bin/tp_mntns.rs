//! tp_mntns: a tree in a mount namespace of its own (needs root).
//!
//! Usage: `tp_mntns WORKDIR [--case tree|pivot|slave|hardlink|unbindable|overlay|blockdev
//! [--dev DEVPATH]] [--corrupt]`
//!
//! `tree`: unshares its mount namespace, makes every mount private, mounts
//! a tmpfs on WORK/t (a file, a subdirectory with a file, a symlink, a
//! fifo, a device node; known modes, owners and an mtime; a directory
//! WORK/t/m of mode 0700, owner 4242:4343, known mtime, with another tmpfs
//! mounted on it: its own attributes checked through a clone of the tmpfs
//! on WORK/t alone), binds WORK/src
//! read-only and nosuid on WORK/ro and twice more, shared in one peer
//! group, on WORK/s1 and WORK/s2, mounts a fresh proc on WORK/p, keeps
//! WORK/t/a open at offset 3 and WORK/t/sub/b mapped shared, and forks a
//! child. After go each process checks: every mount of its namespace as
//! before (mountinfo without ids and devices), the tmpfs contents byte for
//! byte, the open file (offset, contents, and the very file the tree sees
//! by path), the mapping (same file both ways), the bind read-only, its
//! proc showing itself, and a mount namespace other than the one it
//! started from. `pivot` (a container's shape): first pivot_root into a
//! new tmpfs root holding a bind of the host's / at /host (the work
//! directory is then /host/WORK) and a proc at /proc; then the same
//! mounts at /t, /ro, /p. `slave`, `hardlink`: `tree` with WORK/s2 made
//! a slave of WORK/s1, or a second hard link to WORK/t/a (a dump must
//! refuse either by name). `unbindable`: `tree` plus a tmpfs on WORK/u
//! made MS_UNBINDABLE; after go mountinfo shows it `unbindable` and a bind
//! of it fails with EINVAL (`--corrupt` leaves it private instead).
//! `overlay`: an overlayfs on WORK/ov instead (a
//! dump must refuse it by name); checks only that it is still there.
//! `blockdev`: the ext4 filesystem on block device DEVPATH (the harness
//! made it) mounted on WORK/blk, a file WORK/blk/f written and held open
//! read-write; after go the mount must be an ext4 on WORK/blk, the held
//! file the very file WORK/blk/f names with its contents, and a write
//! through it read back by path (the dump needs criu's `--external
//! dev[MAJOR/MINOR]:NAME`).
//! `notify`: a tmpfs on WORK/n (made anew by a restore, so file handles of
//! its objects go stale) with an inotify watch on the file n/sub/f
//! (IN_MODIFY), one on the directory n/sub (IN_CREATE) and a fanotify
//! inode mark on n/g (FAN_MODIFY); after go each watch and mark is as
//! before (number, masks, and the inode of the path it was added by),
//! writing f gives IN_MODIFY on its watch, creating n/sub/new IN_CREATE
//! named `new`, writing g a FAN_MODIFY carrying g (`--corrupt` removes the
//! file's watch). `notify-deleted`: a watch on a file of that tmpfs held
//! open and unlinked (a dump must refuse it by name: it has no path).

use stasis_tests::{Proto, Report};
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

const A: &[u8] = b"tmpfs file a: contents known to the checks\n";
const A_MTIME: i64 = 1_500_000_000;

fn c(p: &Path) -> CString {
    CString::new(p.to_str().expect("utf-8")).expect("no NUL")
}

fn sys(r: i32, what: &str) {
    if r != 0 {
        stasis_tests::fatal(&format!("{what}: {}", std::io::Error::last_os_error()));
    }
}

fn mount(src: &str, dst: &Path, fs: Option<&str>, flags: libc::c_ulong, data: Option<&str>) {
    let s = CString::new(src).expect("src");
    let f = fs.map(|f| CString::new(f).expect("fs"));
    let d = data.map(|d| CString::new(d).expect("data"));
    // SAFETY: every pointer is a NUL-terminated string living for the call, or NULL.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            c(dst).as_ptr(),
            f.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    sys(r, &format!("mount {src} on {}", dst.display()));
}

fn b_contents() -> Vec<u8> {
    (0..3 * 4096 + 17).map(|i| (i % 251) as u8).collect()
}

/// The tmpfs and its contents.
fn make_tmpfs(dir: &Path) {
    let t = dir.join("t");
    mount(
        "tpmnt",
        &t,
        Some("tmpfs"),
        libc::MS_NOEXEC,
        Some("size=4m,mode=751"),
    );
    std::fs::write(t.join("a"), A).expect("write a");
    std::fs::set_permissions(t.join("a"), std::fs::Permissions::from_mode(0o640)).expect("chmod a");
    std::os::unix::fs::chown(t.join("a"), Some(1234), Some(5678)).expect("chown a");
    std::fs::create_dir(t.join("sub")).expect("mkdir sub");
    std::fs::write(t.join("sub/b"), b_contents()).expect("write b");
    std::fs::set_permissions(t.join("sub"), std::fs::Permissions::from_mode(0o710))
        .expect("chmod sub");
    std::os::unix::fs::symlink("sub/b", t.join("link")).expect("symlink");
    // SAFETY: valid paths; mknod with a fifo and a char device.
    unsafe {
        sys(
            libc::mknod(c(&t.join("fifo")).as_ptr(), libc::S_IFIFO | 0o620, 0),
            "mkfifo",
        );
        sys(
            libc::chmod(c(&t.join("fifo")).as_ptr(), 0o620),
            "chmod fifo",
        );
        sys(
            libc::mknod(
                c(&t.join("null")).as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 3),
            ),
            "mknod",
        );
        let ts = [
            libc::timespec {
                tv_sec: A_MTIME,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: A_MTIME,
                tv_nsec: 123,
            },
        ];
        sys(
            libc::utimensat(libc::AT_FDCWD, c(&t.join("a")).as_ptr(), ts.as_ptr(), 0),
            "utimensat",
        );
    }
    // A directory of the tmpfs another tmpfs is mounted on: its own mode,
    // owner and mtime are hidden under that mount.
    let m = t.join("m");
    std::fs::create_dir(&m).expect("mkdir m");
    std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o700)).expect("chmod m");
    std::os::unix::fs::chown(&m, Some(4242), Some(4343)).expect("chown m");
    let ts = [
        libc::timespec {
            tv_sec: M_MTIME,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: M_MTIME,
            tv_nsec: 456,
        },
    ];
    // SAFETY: valid path, two timespecs.
    sys(
        unsafe { libc::utimensat(libc::AT_FDCWD, c(&m).as_ptr(), ts.as_ptr(), 0) },
        "utimensat m",
    );
    mount("tpinner", &m, Some("tmpfs"), 0, Some("size=1m,mode=755"));
}

const M_MTIME: i64 = 1_400_000_000;

/// Mode, owner and mtime of the directory WORK/t/m under the mount on it,
/// read through a clone of the tmpfs on WORK/t alone (open_tree without
/// AT_RECURSIVE).
fn under_mount(t: &Path) -> Option<(u32, u32, u32, i64, i64)> {
    // SAFETY: open_tree with a valid path; fstatat on the descriptor it
    // returned, closed after.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c(t).as_ptr(),
            1 | libc::O_CLOEXEC as u32,
        ) as i32;
        if fd < 0 {
            return None;
        }
        let mut st: libc::stat = std::mem::zeroed();
        let r = libc::fstatat(fd, c"m".as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW);
        libc::close(fd);
        (r == 0).then_some((
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime,
            st.st_mtime_nsec,
        ))
    }
}

/// Every mount as (mount point, options, optional fields, type, source,
/// super options), sorted; peer group numbers (kernel-assigned) replaced
/// by their order of appearance, so equal groups stay equal.
fn mounts() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut v: Vec<String> = text
        .lines()
        .map(|l| l.split(' ').skip(4).collect::<Vec<_>>().join(" "))
        .collect();
    v.sort();
    let mut groups: Vec<String> = Vec::new();
    for line in &mut v {
        let words: Vec<String> = line
            .split(' ')
            .map(|w| match w.split_once(':') {
                Some((k @ ("shared" | "master"), n)) => {
                    let i = groups.iter().position(|g| g == n).unwrap_or_else(|| {
                        groups.push(n.to_string());
                        groups.len() - 1
                    });
                    format!("{k}:#{i}")
                }
                _ => w.to_string(),
            })
            .collect();
        *line = words.join(" ");
    }
    v
}

fn ns_ino() -> u64 {
    std::fs::metadata("/proc/self/ns/mnt").expect("ns").ino()
}

struct Held {
    fd: i32,
    map: *mut u8,
    len: usize,
}

fn hold(dir: &Path) -> Held {
    let t = dir.join("t");
    // SAFETY: valid paths; the mapping is ours and lives until exit.
    unsafe {
        let fd = libc::open(c(&t.join("a")).as_ptr(), libc::O_RDWR);
        assert!(fd >= 0, "open a");
        libc::lseek(fd, 3, libc::SEEK_SET);
        let bfd = libc::open(c(&t.join("sub/b")).as_ptr(), libc::O_RDWR);
        let len = b_contents().len();
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            bfd,
            0,
        );
        assert!(map != libc::MAP_FAILED, "mmap b");
        libc::close(bfd);
        Held {
            fd,
            map: map.cast(),
            len,
        }
    }
}

fn check_tmpfs(r: &mut Report, t: &Path, corrupt: bool) {
    let want_a: &[u8] = if corrupt { b"corrupted" } else { A };
    r.eq(
        "t/a contents",
        std::fs::read(t.join("a")).ok(),
        Some(want_a.to_vec()),
    );
    r.eq(
        "t/sub/b contents",
        std::fs::read(t.join("sub/b"))
            .ok()
            .map(|b| stasis_tests::hash(&b)),
        Some(stasis_tests::hash(&b_contents())),
    );
    r.eq(
        "t/link",
        std::fs::read_link(t.join("link")).ok(),
        Some("sub/b".into()),
    );
    let md = |n: &str| std::fs::symlink_metadata(t.join(n)).ok();
    r.eq(
        "t/a mode, owner, mtime",
        md("a").map(|m| (m.mode(), m.uid(), m.gid(), m.mtime(), m.mtime_nsec())),
        Some((libc::S_IFREG | 0o640, 1234, 5678, A_MTIME, 123)),
    );
    r.eq(
        "t/sub mode",
        md("sub").map(|m| m.mode()),
        Some(libc::S_IFDIR | 0o710),
    );
    r.eq(
        "t mode",
        md("").map(|m| m.mode()),
        Some(libc::S_IFDIR | 0o751),
    );
    r.eq(
        "t/m under its mount: mode, owner, mtime",
        under_mount(t),
        Some((
            libc::S_IFDIR | if corrupt { 0o755 } else { 0o700 },
            4242,
            4343,
            M_MTIME,
            456,
        )),
    );
    r.eq(
        "t/fifo",
        md("fifo").map(|m| (m.file_type().is_fifo(), m.mode() & 0o7777)),
        Some((true, 0o620)),
    );
    r.eq(
        "t/null",
        md("null").map(|m| (m.file_type().is_char_device(), m.rdev())),
        Some((true, libc::makedev(1, 3))),
    );
}

fn check_held(r: &mut Report, t: &Path, h: &Held) {
    // SAFETY: our descriptor and mapping; buffers of the given sizes.
    unsafe {
        r.eq("open file offset", libc::lseek(h.fd, 0, libc::SEEK_CUR), 3);
        let mut buf = vec![0u8; A.len()];
        let n = libc::pread(h.fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        r.eq(
            "open file contents",
            (n, buf),
            (A.len() as isize, A.to_vec()),
        );
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(h.fd, &mut st);
        let by_path = std::fs::metadata(t.join("a"))
            .ok()
            .map(|m| (m.dev(), m.ino()));
        r.eq(
            "open file is the tree's t/a",
            Some((st.st_dev, st.st_ino)),
            by_path,
        );
        let m = std::slice::from_raw_parts_mut(h.map, h.len);
        r.eq(
            "mapping contents",
            stasis_tests::hash(m),
            stasis_tests::hash(&b_contents()),
        );
    }
}

fn check_ro_proc(r: &mut Report, dir: &Path) {
    r.eq(
        "ro/file",
        std::fs::read(dir.join("ro/file")).ok(),
        Some(b"host file\n".to_vec()),
    );
    let e = std::fs::write(dir.join("ro/new"), b"x")
        .err()
        .and_then(|e| e.raw_os_error());
    r.eq("write to the read-only bind", e, Some(libc::EROFS));
    let stat = std::fs::read_to_string(dir.join("p/self/stat")).unwrap_or_default();
    // SAFETY: getpid has no arguments.
    let me = unsafe { libc::getpid() };
    r.eq(
        "proc at p shows us",
        stat.split(' ').next().map(str::to_string),
        Some(me.to_string()),
    );
}

fn checks(dir: &Path, before: &[String], host_ns: u64, h: &Held, corrupt: bool) -> Report {
    let mut r = Report::new();
    r.eq("mounts", mounts(), before.to_vec());
    r.check(ns_ino() != host_ns, || {
        "in the mount namespace it started from".into()
    });
    check_tmpfs(&mut r, &dir.join("t"), corrupt);
    check_held(&mut r, &dir.join("t"), h);
    check_ro_proc(&mut r, dir);
    r
}

/// A tmpfs on `u` made unbindable (left private with `corrupt`).
fn unbindable(u: &Path, corrupt: bool) {
    std::fs::create_dir_all(u).expect("mkdir u");
    mount("tpunbind", u, Some("tmpfs"), 0, Some("size=1m"));
    if !corrupt {
        mount("none", u, None, libc::MS_UNBINDABLE, None);
    }
}

/// WORK/u is `unbindable` in mountinfo, and a bind of it fails (EINVAL).
fn check_unbindable(r: &mut Report, dir: &Path) {
    let u = dir.join("u");
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let at = u.to_string_lossy().into_owned();
    let fields: Vec<String> = text
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(at.as_str()))
        .filter_map(|l| l.split(" - ").next())
        .map(|l| l.split(' ').skip(6).collect::<Vec<_>>().join(" "))
        .collect();
    r.eq("u's propagation", fields, vec!["unbindable".to_string()]);
    let target = dir.join("t/sub");
    // SAFETY: mount with valid NUL-terminated paths; undone if it worked.
    let e = unsafe {
        let rc = libc::mount(
            c(&u).as_ptr(),
            c(&target).as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        );
        let e = std::io::Error::last_os_error().raw_os_error();
        if rc == 0 {
            libc::umount2(c(&target).as_ptr(), libc::MNT_DETACH);
        }
        (rc == 0).then_some(0).or(e)
    };
    r.eq("bind of u", e, Some(libc::EINVAL));
}

/// Two binds of the host directory `src` in one peer group: WORK/s1 made
/// shared, WORK/s2 bound from it.
fn shared_pair(src: &Path, dir: &Path) {
    let s1 = dir.join("s1");
    mount(src.to_str().expect("utf-8"), &s1, None, libc::MS_BIND, None);
    mount("none", &s1, None, libc::MS_SHARED, None);
    mount(
        s1.to_str().expect("utf-8"),
        &dir.join("s2"),
        None,
        libc::MS_BIND,
        None,
    );
}

fn overlay(proto: &Proto, dir: &Path) -> ! {
    for d in ["lower", "upper", "work", "ov"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    std::fs::write(dir.join("lower/f"), b"lower\n").expect("write");
    let opts = format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
        dir.display()
    );
    mount("tpov", &dir.join("ov"), Some("overlay"), 0, Some(&opts));
    proto.ready_and_wait();
    let mut r = Report::new();
    r.eq(
        "overlay file",
        std::fs::read(dir.join("ov/f")).ok(),
        Some(b"lower\n".to_vec()),
    );
    proto.finish(&r)
}

fn blockdev(proto: &Proto, dir: &Path, dev: &str, corrupt: bool) -> ! {
    use std::os::unix::fs::FileExt;
    let blk = dir.join("blk");
    std::fs::create_dir_all(&blk).expect("mkdir blk");
    mount(dev, &blk, Some("ext4"), 0, None);
    let path = blk.join("f");
    let mut want = b"on the block device\n".to_vec();
    std::fs::write(&path, &want).expect("write blk/f");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open blk/f");
    proto.ready_and_wait();
    if corrupt {
        want.push(b'!');
    }
    let mut r = Report::new();
    let fs_at = |mp: &Path| {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mp = mp.to_string_lossy().into_owned();
        text.lines()
            .filter(|l| l.split(' ').nth(4) == Some(mp.as_str()))
            .filter_map(|l| l.split(" - ").nth(1)?.split(' ').next().map(str::to_string))
            .next_back()
    };
    r.eq("filesystem on blk", Some("ext4".to_string()), fs_at(&blk));
    let mut got = vec![0u8; 64];
    let n = f.read_at(&mut got, 0).unwrap_or(0);
    got.truncate(n);
    r.eq("held file's contents", want, got);
    let id = |m: std::io::Result<std::fs::Metadata>| m.map(|m| (m.dev(), m.ino())).ok();
    r.eq("held file", id(std::fs::metadata(&path)), id(f.metadata()));
    let wrote = f.write_all_at(b"after\n", n as u64);
    r.check(wrote.is_ok(), || format!("write: {wrote:?}"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    r.check(text.ends_with("after\n"), || {
        format!("blk/f after the write: {text:?}")
    });
    proto.finish(&r)
}

/// A container's root: a tmpfs with the host's / bound at /host, a proc
/// at /proc, and /lib, /lib64, /usr symlinks into /host, entered with
/// pivot_root; then this program executes itself again from there (as a
/// container's processes are started inside it: nothing of the old root
/// stays open or mapped). Returns the protocol in the new root.
fn pivot(dir: &Path) -> Proto {
    let nr = dir.join("newroot");
    std::fs::create_dir_all(&nr).expect("mkdir newroot");
    mount("rootfs", &nr, Some("tmpfs"), 0, Some("mode=755"));
    for d in ["host", "proc", "old", "t", "ro", "p", "s1", "s2"] {
        std::fs::create_dir(nr.join(d)).expect("mkdir in newroot");
    }
    mount("/", &nr.join("host"), None, libc::MS_BIND, None);
    // SAFETY: chdir/pivot_root/umount2 with valid NUL-terminated paths.
    unsafe {
        sys(libc::chdir(c(&nr).as_ptr()), "chdir newroot");
        sys(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"old".as_ptr()) as i32,
            "pivot_root",
        );
        sys(libc::chdir(c"/".as_ptr()), "chdir /");
        sys(
            libc::umount2(c"/old".as_ptr(), libc::MNT_DETACH),
            "umount old root",
        );
    }
    std::fs::remove_dir("/old").expect("rmdir /old");
    for d in ["lib", "lib64", "usr"] {
        std::os::unix::fs::symlink(Path::new("/host").join(d), Path::new("/").join(d))
            .expect("symlink");
    }
    // Its own /dev/null, and stdout/stderr reopened through /host: no
    // descriptor stays on the old root.
    std::fs::create_dir("/dev").expect("mkdir /dev");
    let host_dir = Path::new("/host").join(dir.strip_prefix("/").expect("absolute work dir"));
    // SAFETY: valid paths; descriptors 0-2 replaced with dup2.
    unsafe {
        sys(
            libc::mknod(
                c"/dev/null".as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, 3),
            ),
            "mknod /dev/null",
        );
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        let log = libc::open(
            c(&host_dir.join("out.log")).as_ptr(),
            libc::O_WRONLY | libc::O_APPEND,
        );
        assert!(null >= 0 && log >= 0, "reopen stdio");
        libc::dup2(null, 0);
        libc::dup2(log, 1);
        libc::dup2(log, 2);
        libc::close(null);
        libc::close(log);
    }
    mount(
        "proc",
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    );
    Proto::new(&host_dir)
}

/// Executes this program again from inside the new root, with the work
/// directory as seen there and `--inside`.
fn reexec(proto: &Proto) -> ! {
    let exe = std::fs::read_link("/proc/self/exe").expect("exe");
    let exe = Path::new("/host").join(exe.strip_prefix("/").expect("absolute exe"));
    let mut argv: Vec<CString> = vec![c(&exe), c(proto.dir())];
    argv.extend(
        std::env::args()
            .skip(2)
            .map(|a| CString::new(a).expect("arg")),
    );
    argv.push(CString::new("--inside").expect("arg"));
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated argv of live CStrings.
    unsafe { libc::execv(ptrs[0], ptrs.as_ptr()) };
    stasis_tests::fatal(&format!(
        "execv {}: {}",
        exe.display(),
        std::io::Error::last_os_error()
    ))
}

fn main() {
    let (proto, args) = Proto::from_args();
    let mut dir = proto.dir().to_path_buf();
    let inside = args.flag("inside");
    // The namespace we started in (for `pivot`, recorded before the exec).
    let host_ns = match std::fs::read_to_string(dir.join("host-ns")) {
        Ok(s) if inside => s.trim().parse().expect("host-ns"),
        _ => ns_ino(),
    };
    if !inside {
        // SAFETY: unshare with an integer flag, in this single-threaded program.
        sys(
            unsafe { libc::unshare(libc::CLONE_NEWNS) },
            "unshare(CLONE_NEWNS)",
        );
        mount(
            "none",
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        );
        stasis_tests::detach_nsfs_mounts();
    }
    if args.get("case") == Some("overlay") {
        overlay(&proto, &dir);
    }
    if matches!(args.get("case"), Some("notify" | "notify-deleted")) {
        notify(
            &proto,
            &dir,
            args.get("case") == Some("notify-deleted"),
            args.corrupt(),
        );
    }
    if args.get("case") == Some("blockdev") {
        blockdev(
            &proto,
            &dir,
            args.get("dev").expect("--dev"),
            args.corrupt(),
        );
    }
    if !inside {
        for d in ["t", "src", "ro", "p", "s1", "s2"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        std::fs::write(dir.join("src/file"), b"host file\n").expect("write src/file");
    }
    if args.get("case") == Some("pivot") && !inside {
        std::fs::write(dir.join("host-ns"), host_ns.to_string()).expect("write host-ns");
        reexec(&pivot(&dir));
    }
    let mut src = dir.join("src");
    if inside {
        src = dir.join("src");
        dir = "/".into();
    }
    make_tmpfs(&dir);
    mount(
        src.to_str().expect("utf-8"),
        &dir.join("ro"),
        None,
        libc::MS_BIND,
        None,
    );
    mount(
        "none",
        &dir.join("ro"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
        None,
    );
    shared_pair(&src, &dir);
    // Refused by a dump (the program's checks still pass without one).
    match args.get("case") {
        Some("slave") => mount("none", &dir.join("s2"), None, libc::MS_SLAVE, None),
        Some("hardlink") => std::fs::hard_link(dir.join("t/a"), dir.join("t/hl")).expect("link"),
        Some("unbindable") => unbindable(&dir.join("u"), args.corrupt()),
        _ => {}
    }
    mount(
        "proc",
        &dir.join("p"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    );
    let h = hold(&dir);
    let before = mounts();
    // For `unbindable`, --corrupt leaves the mount private instead.
    let corrupt = args.corrupt() && args.get("case") != Some("unbindable");
    // SAFETY: fork in a single-threaded program; the child only runs Rust
    // code of this program and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        proto.wait_go();
        let r = checks(&dir, &before, host_ns, &h, corrupt);
        std::process::exit(i32::from(!r.verdict().0.starts_with("PASS")));
    }
    proto.ready_and_wait();
    let mut r = checks(&dir, &before, host_ns, &h, corrupt);
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    r.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child's checks failed (status {st:#x})")
    });
    if args.get("case") == Some("unbindable") {
        check_unbindable(&mut r, &dir);
    }
    proto.finish(&r)
}

/// `key:value` fields `keys` of the fdinfo lines of `fd` starting with
/// `prefix`, each line's joined.
fn fdinfo_fields(fd: i32, prefix: &str, keys: &[&str]) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| {
            l.split_whitespace()
                .filter(|t| keys.iter().any(|k| t.split(':').next() == Some(k)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Fanotify events waiting in non-blocking `fd`: (mask, path of its fd).
fn fanotify_events(fd: i32) -> Vec<(u64, String)> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: a read into our own buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    let mut out = Vec::new();
    let mut at = 0usize;
    let size = std::mem::size_of::<libc::fanotify_event_metadata>();
    while at + size <= n.max(0) as usize {
        // SAFETY: the kernel wrote a whole metadata record at `at`.
        let m: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        let path = std::fs::read_link(format!("/proc/self/fd/{}", m.fd))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if m.fd >= 0 {
            // SAFETY: the event's descriptor is ours to close.
            unsafe { libc::close(m.fd) };
        }
        out.push((m.mask, path));
        if m.event_len == 0 {
            break;
        }
        at += m.event_len as usize;
    }
    out
}

fn notify(proto: &Proto, dir: &Path, deleted: bool, corrupt: bool) -> ! {
    const FAN_MODIFY: u64 = 0x2;
    let mut r = Report::new();
    let n = dir.join("n");
    std::fs::create_dir_all(&n).expect("mkdir n");
    mount("tpnotify", &n, Some("tmpfs"), 0, Some("size=1m"));
    std::fs::create_dir(n.join("sub")).expect("mkdir sub");
    for f in ["sub/f", "g", "gone"] {
        std::fs::write(n.join(f), b"x").expect("write");
    }
    // SAFETY: plain calls with valid NUL-terminated paths.
    let (ifd, w_file, w_dir, gfd) = unsafe {
        let ifd = libc::inotify_init1(libc::IN_NONBLOCK);
        let w_file = libc::inotify_add_watch(ifd, c(&n.join("sub/f")).as_ptr(), libc::IN_MODIFY);
        let w_dir = libc::inotify_add_watch(ifd, c(&n.join("sub")).as_ptr(), libc::IN_CREATE);
        let gfd = libc::fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_NONBLOCK,
            (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
        );
        let m = libc::fanotify_mark(
            gfd,
            libc::FAN_MARK_ADD,
            FAN_MODIFY,
            libc::AT_FDCWD,
            c(&n.join("g")).as_ptr(),
        );
        sys(m, "fanotify_mark");
        (ifd, w_file, w_dir, gfd)
    };
    r.check(ifd >= 0 && w_file > 0 && w_dir > 0 && gfd >= 0, || {
        format!("setup: {ifd} {w_file} {w_dir} {gfd}")
    });
    let _held = if deleted {
        let held = std::fs::File::open(n.join("gone")).expect("open gone");
        // SAFETY: valid path, our inotify instance.
        unsafe { libc::inotify_add_watch(ifd, c(&n.join("gone")).as_ptr(), libc::IN_MODIFY) };
        std::fs::remove_file(n.join("gone")).expect("unlink gone");
        stasis_tests::inotify_events(ifd); // the unlink's IN_ATTRIB
        Some(held)
    } else {
        None
    };
    let ino = |p: &str| format!("{:x}", std::fs::metadata(n.join(p)).map_or(0, |m| m.ino()));
    let seen = || {
        (
            fdinfo_fields(ifd, "inotify wd:", &["wd", "mask", "ignored_mask"]),
            fdinfo_fields(gfd, "fanotify ino:", &["mflags", "mask", "ignored_mask"]),
            fdinfo_fields(ifd, "inotify wd:", &["wd", "ino"]),
            fdinfo_fields(gfd, "fanotify ino:", &["ino"]),
        )
    };
    let (w0, m0, _, _) = seen();
    proto.ready_and_wait();
    if corrupt {
        // SAFETY: removes a watch of our own instance.
        unsafe { libc::inotify_rm_watch(ifd, w_file) };
        stasis_tests::inotify_events(ifd); // its IN_IGNORED
    }
    let (w1, m1, wino, mino) = seen();
    r.eq("inotify watches (wd, masks)", w0, w1);
    r.eq("fanotify marks (flags, masks)", m0, m1);
    if !deleted {
        let mut want = vec![
            format!("wd:{w_file:x} ino:{}", ino("sub/f")),
            format!("wd:{w_dir:x} ino:{}", ino("sub")),
        ];
        let mut wino = wino;
        want.sort();
        wino.sort();
        r.eq("inodes watched: n/sub/f, n/sub", want, wino);
        r.eq("inode marked: n/g", vec![format!("ino:{}", ino("g"))], mino);
    }
    std::fs::write(n.join("sub/f"), b"modified").expect("write f");
    std::fs::write(n.join("sub/new"), b"").expect("create new");
    let ev = stasis_tests::inotify_events(ifd);
    let has = |wd: i32, mask: u32, name: &str| {
        ev.iter()
            .any(|(w, m, nm)| *w == wd && m & mask != 0 && nm == name)
    };
    r.check(
        has(w_file, libc::IN_MODIFY, "") && has(w_dir, libc::IN_CREATE, "new"),
        || format!("inotify events {ev:?}"),
    );
    std::fs::write(n.join("g"), b"modified").expect("write g");
    let g = n.join("g").display().to_string();
    let fev = fanotify_events(gfd);
    r.check(
        fev.iter().any(|(m, p)| m & FAN_MODIFY != 0 && *p == g),
        || format!("fanotify events {fev:?}"),
    );
    proto.finish(&r)
}
