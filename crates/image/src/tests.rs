//! Tests of the whole crate: round trips, hostile files, the commit
//! protocol, and a deterministic mutation fuzz of core files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::*;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "stasis-image-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn file_id(path: &str) -> FileId {
    FileId {
        path: path.into(),
        size: 123_456,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 42,
        dev: 0x803,
        ino: 777,
        mode: 0o100755,
    }
}

/// A realistic process image: code/data/heap/stack/vdso/vsyscall, two
/// threads with a full-size XSAVE area, files, signals, limits.
fn sample_process(pid: u32, ppid: u32) -> ProcessImage {
    let thread = |tid: u32| ThreadState {
        tid,
        comm: "sample".into(),
        regs: UserRegs {
            rip: 0x5555_5555_1234,
            rsp: 0x7ffc_0000_1000,
            cs: 0x33,
            ss: 0x2b,
            eflags: 0x246,
            orig_rax: u64::MAX,
            fs_base: 0x7f00_0000_0740,
            ..UserRegs::default()
        },
        xsave: (0..2432u32).map(|i| (i % 251) as u8).collect(),
        sigmask: 1 << 13,
        robust_list_head: 0x7f00_0000_0a00,
        robust_list_len: 24,
        cpus: Vec::new(),
        ns_tids: Vec::new(),
        pending: vec![PendingSignal {
            signo: 10,
            info: vec![0; 128],
        }],
        sigaltstack: SigAltStack {
            sp: 0,
            flags: 2,
            size: 0,
        },
        clear_child_tid: 0x7f00_0000_0a10,
        rseq: Some(Rseq {
            addr: 0x7f00_0000_0fe0,
            len: 32,
            signature: 0x5305_3053,
        }),
    };
    let exe = file_id("/usr/bin/sample");
    let vma = |start: u64, end: u64, prot: u32, kind: VmaKind| Vma {
        start,
        end,
        prot,
        shared: false,
        pgoff: 0,
        kind,
        growsdown: false,
        noreserve: false,
        maywrite: false,
        shmem: 0,
        cow_owner: 0,
        advice: vec![],
        huge_page_size: 0,
    };
    let mut stack = vma(0x7ffc_0000_0000, 0x7ffc_0002_1000, 3, VmaKind::Anon);
    stack.growsdown = true;
    let mut heap = vma(0x5555_5557_0000, 0x5555_5559_1000, 3, VmaKind::Heap);
    heap.advice = vec!["hugepage".into()];
    let vmas = vec![
        vma(
            0x5555_5555_4000,
            0x5555_5555_6000,
            5,
            VmaKind::File { file: exe.clone() },
        ),
        vma(
            0x5555_5555_6000,
            0x5555_5555_7000,
            3,
            VmaKind::File { file: exe.clone() },
        ),
        heap,
        vma(0x7f00_0000_0000, 0x7f00_0010_0000, 3, VmaKind::Anon),
        stack,
        vma(0x7ffc_0010_0000, 0x7ffc_0010_2000, 1, VmaKind::Vvar),
        vma(0x7ffc_0010_2000, 0x7ffc_0010_4000, 1, VmaKind::VvarVclock),
        vma(0x7ffc_0010_4000, 0x7ffc_0010_8000, 5, VmaKind::Vdso),
        vma(
            0xffff_ffff_ff60_0000,
            0xffff_ffff_ff60_1000,
            4,
            VmaKind::Vsyscall,
        ),
    ];
    let pages = vec![
        PageRun {
            addr: 0x5555_5555_6000,
            nr_pages: 1,
            offset: 0,
            in_parent: false,
        },
        PageRun {
            addr: 0x5555_5557_0000,
            nr_pages: 3,
            offset: 4096,
            in_parent: false,
        },
        PageRun {
            addr: 0x7f00_0000_0000,
            nr_pages: 2,
            offset: 4 * 4096,
            in_parent: false,
        },
        PageRun {
            addr: 0x7ffc_0002_0000,
            nr_pages: 1,
            offset: 6 * 4096,
            in_parent: false,
        },
        PageRun {
            addr: 0x7ffc_0010_4000,
            nr_pages: 4,
            offset: 7 * 4096,
            in_parent: false,
        },
    ];
    ProcessImage {
        pid,
        ppid,
        pgid: pid,
        sid: ppid,
        exit_signal: 17,
        stopped: false,
        comm: "sample".into(),
        exe: exe.clone(),
        cwd: "/home/user".into(),
        root: "/".into(),
        umask: 0o022,
        personality: 0,
        creds: Creds {
            uids: [1000; 4],
            gids: [1000; 4],
            groups: vec![4, 24, 27, 1000],
            cap_bounding: 0x1ff_ffff_ffff,
            ..Creds::default()
        },
        rlimits: vec![
            Rlimit {
                resource: 7,
                cur: 1024,
                max: 524_288,
            },
            Rlimit {
                resource: 3,
                cur: 8 << 20,
                max: u64::MAX,
            },
        ],
        sched: Sched {
            policy: 0,
            rt_priority: 0,
            nice: 5,
        },
        pdeath_signal: 0,
        dumpable: 1,
        xcomp_perm: 0,
        xcomp_guest_perm: 0,
        seccomp: Vec::new(),
        sigactions: vec![SigAction {
            signo: 10,
            handler: 0x5555_5555_4100,
            flags: 0x0400_0000,
            restorer: 0x7f00_0000_2000,
            mask: 0,
        }],
        shared_pending: vec![],
        itimers: vec![ITimer {
            which: 0,
            interval_us: 1_000_000,
            value_us: 5_000_000,
        }],
        posix_timers: vec![],
        threads: vec![thread(pid), thread(pid + 1)],
        files: vec![
            FdEntry {
                fd: 0,
                cloexec: false,
                ofd: 0,
                kind: FdKind::CharDevice {
                    path: "/dev/null".into(),
                    rdev: 0x103,
                    flags: 0,
                },
            },
            FdEntry {
                fd: 3,
                cloexec: true,
                ofd: 0,
                kind: FdKind::Regular {
                    file: file_id("/tmp/data \"quoted\" ünïcode"),
                    flags: 0o2,
                    pos: 4096,
                },
            },
        ],
        mm: MmState {
            start_code: 0x5555_5555_4000,
            end_code: 0x5555_5555_6000,
            start_data: 0x5555_5555_6000,
            end_data: 0x5555_5555_7000,
            start_brk: 0x5555_5557_0000,
            brk: 0x5555_5559_1000,
            start_stack: 0x7ffc_0002_0f00,
            arg_start: 0x7ffc_0002_0f10,
            arg_end: 0x7ffc_0002_0f20,
            env_start: 0x7ffc_0002_0f20,
            env_end: 0x7ffc_0002_0ff0,
            auxv: vec![33, 0x7ffc_0010_4000, 6, 4096, 0, 0],
            vmas,
            pages,
            cow_pages: vec![],
        },
        saved_files: Vec::new(),
        file_locks: Vec::new(),
        ctty_pty: None,
        fd_owners: Vec::new(),
        proc_attrs: None,
        cwd_saved: 0,
        ns_pids: Vec::new(),
        pid_for_children_nested: false,
        session_keyring: None,
    }
}

fn page_data(img: &ProcessImage) -> Vec<u8> {
    let len = usize::try_from(pages_len(img)).unwrap();
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

fn inventory_for(imgs: &[&ProcessImage]) -> Inventory {
    Inventory {
        tool_version: "0.1.0".into(),
        created_unix: 1_700_000_000,
        kernel_release: "6.18.0".into(),
        root_pid: imgs[0].pid,
        processes: imgs.iter().map(|i| ProcessRef::for_pid(i.pid)).collect(),
        shell_job: false,
        zombies: vec![],
        pid_ns: false,
        user_ns: None,
        uts: None,
        time: None,
        net: None,
        ipc: None,
        mntns: None,
        cgroups: None,
        cgroup_ns: None,
        parent: None,
        tracking: None,
        pre_dump: false,
        net_lock: None,
    }
}

/// Writes a two-process image into `dir` and returns it.
fn write_sample(dir: &Path) -> (Inventory, Vec<ProcessImage>) {
    let a = sample_process(100, 1);
    let b = sample_process(200, 100);
    let w = ImageWriter::create(dir).unwrap();
    for img in [&a, &b] {
        assert_eq!(w.write_process(img).unwrap(), core_file_name(img.pid));
        let mut pw = w.pages_writer(img.pid).unwrap();
        let data = page_data(img);
        // One run at a time, as the dumper does, alternating the two calls.
        for (i, r) in img.mm.pages.iter().enumerate() {
            assert_eq!(pw.offset(), r.offset);
            let s = usize::try_from(r.offset).unwrap();
            let e = s + usize::try_from(r.nr_pages * PAGE_SIZE).unwrap();
            if i % 2 == 0 {
                pw.write_all(&data[s..e]).unwrap();
            } else {
                let mid = s + 4096;
                pw.write_vectored_all(&[&data[s..mid], &[], &data[mid..e]])
                    .unwrap();
            }
        }
        assert_eq!(pw.finish().unwrap(), pages_file_name(img.pid));
    }
    let inv = inventory_for(&[&a, &b]);
    w.commit(&inv).unwrap();
    (inv, vec![a, b])
}

fn core_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(core_file_name(pid))
}

fn pages_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(pages_file_name(pid))
}

/// Rewrites the core file of `pid` with a correct header around `img`,
/// bypassing the writer's validation.
fn rewrite_core(dir: &Path, file_pid: u32, img: &ProcessImage) {
    let payload = serde_json::to_vec(img).unwrap();
    let path = core_path(dir, file_pid);
    fs::remove_file(&path).unwrap();
    fs::write(&path, format::encode_metadata(FileKind::Core, &payload)).unwrap();
}

fn rewrite_inventory(dir: &Path, inv: &Inventory) {
    let payload = serde_json::to_vec(inv).unwrap();
    let path = dir.join(INVENTORY_FILE);
    fs::remove_file(&path).unwrap();
    fs::write(
        &path,
        format::encode_metadata(FileKind::Inventory, &payload),
    )
    .unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn round_trip() {
    let t = TempDir::new("rt");
    let (inv, imgs) = write_sample(t.path());
    let dir = ImageDir::open(t.path()).unwrap();
    assert_eq!(dir.path(), t.path());
    assert_eq!(dir.load_inventory().unwrap(), inv);
    let all = dir.load_all().unwrap();
    assert_eq!(all.inventory, inv);
    assert_eq!(all.processes, imgs);
    // The page file holds exactly the data, page-aligned after the header.
    let raw = fs::read(pages_path(t.path(), 100)).unwrap();
    assert_eq!(raw.len() as u64, PAGES_HEADER_LEN + pages_len(&imgs[0]));
    assert_eq!(&raw[PAGES_HEADER_LEN as usize..], &page_data(&imgs[0])[..]);
    assert_eq!(&raw[..8], &MAGIC);
}

#[test]
fn commit_modes_and_layout() {
    let t = TempDir::new("modes");
    let dir = t.path().join("img");
    write_sample(&dir);
    assert_eq!(mode(&dir), 0o700);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "core-100.img",
            "core-200.img",
            "inventory.img",
            "pages-100.img",
            "pages-200.img"
        ]
    );
    for n in &names {
        assert_eq!(mode(&dir.join(n)), 0o600, "{n}");
    }
}

#[test]
fn interrupted_writer_leaves_nothing() {
    let t = TempDir::new("drop");
    // A previous complete image in the same directory...
    write_sample(t.path());
    // ...and a stale partial directory from a crashed dump.
    let stale = t.path().join(".stasis-partial-999999");
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join("core-1.img"), b"junk").unwrap();
    {
        let w = ImageWriter::create(t.path()).unwrap();
        // The old inventory is gone before anything new is written.
        assert!(!t.path().join(INVENTORY_FILE).exists());
        assert!(!stale.exists());
        let img = sample_process(300, 1);
        w.write_process(&img).unwrap();
        let mut pw = w.pages_writer(300).unwrap();
        pw.write_all(&[0u8; 4096]).unwrap();
        drop(pw);
        let mut pw = w.pages_writer(300).unwrap();
        pw.write_all(&[0u8; 4096]).unwrap();
        // Dropped with an unfinished page file and without commit.
    }
    let left: Vec<String> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let err = ImageDir::open(t.path())
        .unwrap()
        .load_inventory()
        .unwrap_err();
    assert!(matches!(err, ImageError::Missing { .. }), "{err}");
}

#[test]
fn commit_refuses_unfinished_pages_and_missing_files() {
    let t = TempDir::new("unfinished");
    let img = sample_process(100, 1);
    let w = ImageWriter::create(t.path()).unwrap();
    w.write_process(&img).unwrap();
    let pw = w.pages_writer(100).unwrap();
    let inv = inventory_for(&[&img]);
    std::mem::forget(pw); // still ".part" on disk
    let err = ImageWriter::commit(w, &inv).unwrap_err();
    assert!(err.to_string().contains("not finished"), "{err}");
    assert!(!t.path().join(INVENTORY_FILE).exists());

    let w = ImageWriter::create(t.path()).unwrap();
    w.write_process(&img).unwrap();
    let err = w.commit(&inv).unwrap_err();
    assert!(matches!(err, ImageError::Missing { .. }), "{err}");
    assert!(!t.path().join(INVENTORY_FILE).exists());
}

#[test]
fn pages_writer_refuses_unaligned() {
    let t = TempDir::new("unaligned");
    let w = ImageWriter::create(t.path()).unwrap();
    let mut pw = w.pages_writer(1).unwrap();
    assert!(pw.write_all(&[0u8; 100]).is_err());
    assert!(pw.write_vectored_all(&[&[0u8; 4096], &[0u8; 1]]).is_err());
    assert_eq!(pw.offset(), 0);
}

#[test]
fn test_bad_magic() {
    let t = TempDir::new("magic");
    write_sample(t.path());
    let p = core_path(t.path(), 100);
    let mut b = fs::read(&p).unwrap();
    b[0] = b'X';
    fs::write(&p, &b).unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    let inv = dir.load_inventory().unwrap();
    let err = dir.load_process(&inv.processes[0]).unwrap_err();
    assert!(matches!(err, ImageError::BadMagic { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("image file {}: bad magic", p.display())
    );
}

#[test]
fn test_bad_version() {
    let t = TempDir::new("version");
    write_sample(t.path());
    let p = t.path().join(INVENTORY_FILE);
    let mut b = fs::read(&p).unwrap();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    fs::write(&p, &b).unwrap();
    let err = ImageDir::open(t.path())
        .unwrap()
        .load_inventory()
        .unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedVersion { version: 7, .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .ends_with("format version 7 not supported (this stasis reads 1)"));
}

#[test]
fn test_bad_kind() {
    let t = TempDir::new("kind");
    write_sample(t.path());
    // A core file where the inventory is expected.
    fs::copy(core_path(t.path(), 100), t.path().join(INVENTORY_FILE)).unwrap();
    let err = ImageDir::open(t.path())
        .unwrap()
        .load_inventory()
        .unwrap_err();
    assert!(
        matches!(err, ImageError::WrongKind { found: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("wrong file kind"));
}

#[test]
fn test_bad_crc() {
    let t = TempDir::new("crc");
    write_sample(t.path());
    let p = core_path(t.path(), 200);
    let mut b = fs::read(&p).unwrap();
    let i = HEADER_LEN + 10;
    b[i] ^= 0x01;
    fs::write(&p, &b).unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    let inv = dir.load_inventory().unwrap();
    let err = dir.load_process(&inv.processes[1]).unwrap_err();
    assert!(matches!(err, ImageError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch (stored 0x"));
    assert!(dir.load_all().is_err());
}

#[test]
fn test_truncated() {
    let t = TempDir::new("trunc");
    write_sample(t.path());
    let dir = ImageDir::open(t.path()).unwrap();
    let inv = dir.load_inventory().unwrap();
    let p = core_path(t.path(), 100);
    let full = fs::read(&p).unwrap();

    // Payload cut.
    fs::write(&p, &full[..full.len() - 5]).unwrap();
    let err = dir.load_process(&inv.processes[0]).unwrap_err();
    assert!(matches!(err, ImageError::Truncated { .. }), "{err}");
    let want = format!(
        "truncated: header says {} payload bytes, file has {}",
        full.len() - HEADER_LEN,
        full.len() - HEADER_LEN - 5
    );
    assert!(err.to_string().ends_with(&want), "{err}");

    // Header cut.
    fs::write(&p, &full[..20]).unwrap();
    let err = dir.load_process(&inv.processes[0]).unwrap_err();
    assert!(matches!(err, ImageError::TruncatedHeader { .. }), "{err}");

    // Empty file.
    fs::write(&p, b"").unwrap();
    assert!(dir.load_process(&inv.processes[0]).is_err());

    // Trailing bytes are refused too.
    let mut longer = full.clone();
    longer.extend_from_slice(b"xx");
    fs::write(&p, &longer).unwrap();
    let err = dir.load_process(&inv.processes[0]).unwrap_err();
    assert!(matches!(err, ImageError::TrailingData { .. }), "{err}");

    // Page file header cut.
    fs::write(&p, &full).unwrap();
    let pp = pages_path(t.path(), 100);
    let pages = fs::read(&pp).unwrap();
    fs::write(&pp, &pages[..100]).unwrap();
    let img = dir.load_process(&inv.processes[0]).unwrap();
    let err = dir.verify_pages(&inv.processes[0], &img).unwrap_err();
    assert!(matches!(err, ImageError::TruncatedHeader { .. }), "{err}");
}

#[test]
fn test_missing_file() {
    let t = TempDir::new("missing");
    write_sample(t.path());
    fs::remove_file(core_path(t.path(), 200)).unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    let err = dir.load_all().unwrap_err();
    assert!(matches!(err, ImageError::Missing { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("image file {}: missing", core_path(t.path(), 200).display())
    );
    let err = ImageDir::open(&t.path().join("nope")).unwrap_err();
    assert!(matches!(err, ImageError::Missing { .. }), "{err}");
    let err = ImageDir::open(&core_path(t.path(), 100)).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn test_symlink_refused() {
    let t = TempDir::new("symlink");
    write_sample(t.path());
    let p = core_path(t.path(), 100);
    let real = t.path().join("elsewhere");
    fs::rename(&p, &real).unwrap();
    std::os::unix::fs::symlink(&real, &p).unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    let inv = dir.load_inventory().unwrap();
    let err = dir.load_process(&inv.processes[0]).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");

    // A FIFO does not block the reader: it is refused.
    let fifo = t.path().join(INVENTORY_FILE);
    fs::remove_file(&fifo).unwrap();
    let status = std::process::Command::new("mkfifo").arg(&fifo).status();
    if status.is_ok_and(|s| s.success()) {
        let err = dir.load_inventory().unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}

#[test]
fn test_path_escape_refused() {
    let t = TempDir::new("escape");
    let (mut inv, _) = write_sample(t.path());
    fs::write(t.path().join("x"), b"outside").unwrap();
    for bad in ["../x", "..", "/etc/passwd", "a/b", "", "a\0b"] {
        inv.processes[0].core_file = bad.into();
        rewrite_inventory(t.path(), &inv);
        let dir = ImageDir::open(t.path()).unwrap();
        let err = dir.load_inventory().unwrap_err();
        assert!(matches!(err, ImageError::Invalid { .. }), "{bad:?}: {err}");
        assert!(err.to_string().contains("plain file name"), "{err}");
        // load_process refuses it even when handed the ref directly.
        let err = dir.load_process(&inv.processes[0]).unwrap_err();
        assert!(err.to_string().contains("plain file name"), "{err}");
        let img = sample_process(100, 1);
        inv.processes[0].pages_file = bad.into();
        assert!(dir.verify_pages(&inv.processes[0], &img).is_err());
        inv.processes[0].pages_file = pages_file_name(100);
    }
}

#[test]
fn test_oversized() {
    let t = TempDir::new("oversized");
    write_sample(t.path());
    let p = core_path(t.path(), 100);
    let mut b = fs::read(&p).unwrap();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    fs::write(&p, &b).unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    let inv = dir.load_inventory().unwrap();
    let err = dir.load_process(&inv.processes[0]).unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { len, cap, .. } if len == 1 << 40 && cap == MAX_METADATA_LEN),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("too large (1099511627776 bytes, cap 268435456)"));
    // Same through the in-memory parser.
    assert!(matches!(
        parse_process(&p, &b),
        Err(ImageError::TooLarge { .. })
    ));
}

#[test]
fn pages_checksum_and_length_mismatch() {
    let t = TempDir::new("pages");
    write_sample(t.path());
    let dir = ImageDir::open(t.path()).unwrap();
    let inv = dir.load_inventory().unwrap();
    let r = &inv.processes[0];
    let img = dir.load_process(r).unwrap();
    let pp = dir.pages_path(r);
    assert_eq!(pp, pages_path(t.path(), 100));
    let orig = fs::read(&pp).unwrap();
    dir.verify_pages(r, &img).unwrap();

    // A flipped byte deep in the payload.
    let mut b = orig.clone();
    let last = b.len() - 1;
    b[last] ^= 0x80;
    fs::write(&pp, &b).unwrap();
    let err = dir.verify_pages(r, &img).unwrap_err();
    assert!(matches!(err, ImageError::ChecksumMismatch { .. }), "{err}");

    // Payload shorter than the header says.
    fs::write(&pp, &orig[..orig.len() - 4096]).unwrap();
    let err = dir.verify_pages(r, &img).unwrap_err();
    assert!(matches!(err, ImageError::Truncated { .. }), "{err}");

    // Header and file agree, but the runs need more.
    let mut short_img = img.clone();
    short_img.mm.pages.last_mut().unwrap().nr_pages += 1;
    fs::write(&pp, &orig).unwrap();
    let err = dir.verify_pages(r, &short_img).unwrap_err();
    assert!(err.to_string().contains("page runs"), "{err}");

    // Wrong kind in a page file.
    let mut b = orig.clone();
    b[12..16].copy_from_slice(&2u32.to_le_bytes());
    fs::write(&pp, &b).unwrap();
    let err = dir.verify_pages(r, &img).unwrap_err();
    assert!(matches!(err, ImageError::WrongKind { .. }), "{err}");
    fs::write(&pp, &orig).unwrap();
    dir.load_all().unwrap();
}

fn invalid(img: &ProcessImage) -> String {
    match validate_process(Path::new("/x/core-100.img"), img) {
        Err(e @ ImageError::Invalid { .. }) => e.to_string(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn validation_rules() {
    let good = sample_process(100, 1);
    validate_process(Path::new("/x/core-100.img"), &good).unwrap();

    let mut m = good.clone();
    m.mm.vmas[1].start = m.mm.vmas[0].start + 4096; // overlaps vmas[0]
    assert!(invalid(&m).contains("mm.vmas[1]"));

    let mut m = good.clone();
    m.mm.vmas.swap(2, 3); // unsorted
    assert!(invalid(&m).contains("mm.vmas[3]"));

    let mut m = good.clone();
    m.mm.vmas[3].end = m.mm.vmas[3].start; // empty
    assert!(invalid(&m).contains("mm.vmas[3]"));

    let mut m = good.clone();
    m.mm.vmas[3].end += 1; // unaligned
    assert!(invalid(&m).contains("not page-aligned"));

    let mut m = good.clone();
    let v = m.mm.vmas.len() - 1;
    m.mm.vmas[v].kind = VmaKind::Anon; // above user space, not vsyscall
    assert!(invalid(&m).contains("above user space"));

    let mut m = good.clone();
    m.mm.pages[2].addr = 0x7f00_0010_0000; // just past its VMA
    assert!(invalid(&m).contains("mm.pages[2]"));

    let mut m = good.clone();
    m.mm.pages[2].nr_pages = 0x101; // runs off the end of its VMA
    assert!(invalid(&m).contains("not inside a single vma"));

    let mut m = good.clone();
    m.mm.pages[1].nr_pages = 0;
    assert!(invalid(&m).contains("nr_pages"));

    let mut m = good.clone();
    m.mm.pages[1].nr_pages = u64::MAX / 2; // overflow in the length
    invalid(&m);

    let mut m = good.clone();
    m.mm.pages[2].offset = 4096 * 2; // shares file bytes with run 1
    assert!(invalid(&m).contains("overlaps"));

    let mut m = good.clone();
    m.mm.pages[1].offset = 4095;
    assert!(invalid(&m).contains("offset"));

    let mut m = good.clone();
    m.mm.pages.swap(0, 1); // file offsets out of order but disjoint: fine, addresses not
    assert!(invalid(&m).contains("mm.pages[1].addr"));

    let mut m = good.clone();
    m.files[1].fd = 0; // duplicate fd
    assert!(invalid(&m).contains("files[1].fd: 0 listed twice"));

    let mut m = good.clone();
    m.files[1].fd = -1;
    assert!(invalid(&m).contains("files[1].fd"));

    let mut m = good.clone();
    m.files[1].fd = (1 << 20) + 1;
    assert!(invalid(&m).contains("files[1].fd"));

    let mut m = good.clone();
    m.threads.clear();
    assert!(invalid(&m).contains("threads: empty"));

    let mut m = good.clone();
    m.threads.swap(0, 1);
    assert!(invalid(&m).contains("threads[0].tid"));

    let mut m = good.clone();
    m.threads[0].xsave = vec![0; (64 << 10) + 1];
    assert!(invalid(&m).contains("xsave"));

    let mut m = good.clone();
    m.mm.auxv = vec![0; 1026];
    assert!(invalid(&m).contains("mm.auxv"));

    let mut m = good.clone();
    m.creds.groups = vec![0; 65537];
    assert!(invalid(&m).contains("creds.groups"));

    let mut m = good.clone();
    m.sigactions[0].signo = 65;
    assert!(invalid(&m).contains("signo"));

    let mut m = good.clone();
    m.sigactions = (1..=65)
        .map(|s| SigAction {
            signo: s,
            handler: 1,
            flags: 0,
            restorer: 0,
            mask: 0,
        })
        .collect();
    assert!(invalid(&m).contains("sigactions"));

    let mut m = good.clone();
    m.rlimits = (0..65)
        .map(|r| Rlimit {
            resource: r,
            cur: 0,
            max: 0,
        })
        .collect();
    assert!(invalid(&m).contains("rlimits"));

    let mut m = good.clone();
    m.cwd = "/a\0b".into();
    assert!(invalid(&m).contains("cwd: contains a NUL byte"));

    let mut m = good.clone();
    if let VmaKind::File { file } = &mut m.mm.vmas[0].kind {
        file.path.push('\0');
    }
    assert!(invalid(&m).contains("mm.vmas[0].kind.file.path"));

    // Huge counts: rejected by count before anything quadratic runs.
    let mut m = good.clone();
    m.mm.vmas = vec![m.mm.vmas[0].clone(); MAX_VMAS_FOR_TEST + 1];
    assert!(invalid(&m).contains("mm.vmas: 1000001 entries, cap 1000000"));

    let mut m = good.clone();
    m.files = vec![m.files[0].clone(); 1_000_001];
    assert!(invalid(&m).contains("files: 1000001 entries"));

    let mut m = good;
    m.pid = 0;
    assert!(invalid(&m).contains("pid"));
}

const MAX_VMAS_FOR_TEST: usize = validate::MAX_VMAS;

#[test]
fn inventory_rules() {
    let a = sample_process(100, 1);
    let b = sample_process(200, 100);
    let good = inventory_for(&[&a, &b]);
    let p = Path::new("/x/inventory.img");
    validate_inventory(p, &good).unwrap();

    let mut m = good.clone();
    m.processes.clear();
    assert!(validate_inventory(p, &m).is_err());

    let mut m = good.clone();
    m.processes[1].pid = 100;
    assert!(validate_inventory(p, &m)
        .unwrap_err()
        .to_string()
        .contains("listed twice"));

    let mut m = good.clone();
    m.processes[1].pid = 0;
    assert!(validate_inventory(p, &m).is_err());

    let mut m = good.clone();
    m.root_pid = 5;
    assert!(validate_inventory(p, &m).is_err());

    let mut m = good.clone();
    m.processes[1].core_file = m.processes[0].core_file.clone();
    assert!(validate_inventory(p, &m).is_err());

    let mut m = good;
    m.processes[1].pages_file = INVENTORY_FILE.into();
    assert!(validate_inventory(p, &m).is_err());
}

#[test]
fn load_all_checks_tree_and_pid_match() {
    let t = TempDir::new("tree");
    let (inv, imgs) = write_sample(t.path());
    let dir = ImageDir::open(t.path()).unwrap();

    // Child's parent not in the image.
    let mut b = imgs[1].clone();
    b.ppid = 4242;
    rewrite_core(t.path(), 200, &b);
    let err = dir.load_all().unwrap_err();
    assert!(err.to_string().contains("ppid"), "{err}");

    // Core file of another pid.
    let mut b = imgs[1].clone();
    b.pid = 201;
    b.threads[0].tid = 201;
    b.threads[1].tid = 202;
    rewrite_core(t.path(), 200, &b);
    let err = dir.load_process(&inv.processes[1]).unwrap_err();
    assert!(err.to_string().contains("inventory says 200"), "{err}");

    // Thread id shared between processes.
    let mut b = imgs[1].clone();
    b.threads[1].tid = 101;
    rewrite_core(t.path(), 200, &b);
    let err = dir.load_all().unwrap_err();
    assert!(err.to_string().contains("tid 101"), "{err}");
}

#[test]
fn writer_validates() {
    let t = TempDir::new("wval");
    let w = ImageWriter::create(t.path()).unwrap();
    let mut img = sample_process(100, 1);
    img.files[1].fd = 0;
    assert!(matches!(
        w.write_process(&img),
        Err(ImageError::Invalid { .. })
    ));
    let mut inv = inventory_for(&[&img]);
    inv.processes[0].core_file = "../escape".into();
    assert!(w.commit(&inv).is_err());
    assert!(!t.path().join(INVENTORY_FILE).exists());
    assert!(!t.path().parent().unwrap().join("escape").exists());
}

#[test]
fn show_file_and_dir() {
    let t = TempDir::new("show");
    let (inv, imgs) = write_sample(t.path());
    let v = show_file(&t.path().join(INVENTORY_FILE)).unwrap();
    assert_eq!(v["root_pid"], 100);
    let v = show_file(&core_path(t.path(), 100)).unwrap();
    assert_eq!(v["pid"], 100);
    assert_eq!(v["mm"]["vmas"][4]["growsdown"], true);
    assert_eq!(v["files"][1]["kind"]["type"], "regular");
    let v = show_file(&pages_path(t.path(), 100)).unwrap();
    assert_eq!(v["kind"], "pages-chunked");
    assert_eq!(v["checksum_chunk"], crate::pagesum::CHUNK);
    assert_eq!(v["payload_len"], pages_len(&imgs[0]));
    assert_eq!(v["version"], FORMAT_VERSION);
    let v = show_dir(t.path()).unwrap();
    assert_eq!(v["processes"].as_array().unwrap().len(), 2);
    assert_eq!(
        serde_json::from_value::<Inventory>(v["inventory"].clone()).unwrap(),
        inv
    );
    assert_eq!(
        serde_json::from_value::<ProcessImage>(v["processes"][1].clone()).unwrap(),
        imgs[1]
    );
    assert!(serde_json::to_string_pretty(&v)
        .unwrap()
        .contains("\"xsave\""));
    assert!(show_file(&t.path().join("nope")).is_err());
}

#[test]
fn unknown_fields_ignored_and_defaults_apply() {
    let img = sample_process(100, 1);
    let mut v = serde_json::to_value(&img).unwrap();
    v["future_field"] = serde_json::json!({"x": 1});
    v["mm"]["vmas"][0]
        .as_object_mut()
        .unwrap()
        .remove("growsdown");
    v["creds"].as_object_mut().unwrap().remove("securebits");
    let bytes = format::encode_metadata(FileKind::Core, &serde_json::to_vec(&v).unwrap());
    let back = parse_process(Path::new("core-100.img"), &bytes).unwrap();
    assert_eq!(back, img);
}

/// xorshift64*: small, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap()
    }
}

/// A value a hostile writer might put anywhere.
fn hostile_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(22) {
        0 => json!(u64::MAX),
        1 => json!(-1),
        2 => json!(i64::MIN),
        3 => json!(1e308),
        4 => json!(0.5),
        5 => json!("string"),
        6 => json!(null),
        7 => json!(true),
        8 => json!([]),
        9 => json!({}),
        10 => json!("../../etc/passwd"),
        11 => json!("a\u{0}b"),
        12 => json!("abc"), // odd-length hex
        13 => json!("zz"),
        14 => json!(0),
        15 => json!(4096),
        16 => json!(0x7fff_ffff_f000u64),
        17 => json!(rng.next()),
        18 => serde_json::Value::Array(vec![json!(1); 5000]),
        19 => {
            // Deep nesting, past serde_json's recursion limit.
            let mut v = json!(0);
            for _ in 0..300 {
                v = json!([v]);
            }
            v
        }
        20 => json!({"type": "nonexistent"}),
        _ => json!(i32::MAX as i64 + 1),
    }
}

/// Replaces, deletes or duplicates a random node of `v`.
fn mutate_json(v: &mut serde_json::Value, rng: &mut Rng) {
    use serde_json::Value;
    // Walk down a random path, stopping at random depth.
    let mut cur = v;
    loop {
        let stop = rng.below(4) == 0;
        let len = match &*cur {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => 0,
        };
        if stop || len == 0 {
            break;
        }
        let i = rng.below(len);
        cur = match cur {
            Value::Array(a) => &mut a[i],
            Value::Object(o) => o.values_mut().nth(i).unwrap(),
            _ => unreachable!(),
        };
    }
    match rng.below(6) {
        0 => {
            // Delete a child.
            match cur {
                Value::Object(o) if !o.is_empty() => {
                    let k = o.keys().nth(rng.below(o.len())).unwrap().clone();
                    o.remove(&k);
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(rng.below(a.len()));
                }
                other => *other = hostile_value(rng),
            }
        }
        1 => {
            // Duplicate array content many times (huge counts).
            if let Value::Array(a) = cur {
                if let Some(first) = a.first().cloned() {
                    let n = [2, 100, 2000][rng.below(3)];
                    a.extend(std::iter::repeat_n(first, n));
                    return;
                }
            }
            *cur = hostile_value(rng);
        }
        2 => {
            // Numbers nudged: off by one, unaligned, huge.
            if let Some(n) = cur.as_u64() {
                let choices = [
                    n.wrapping_add(1),
                    n.wrapping_sub(1),
                    n.wrapping_add(4096),
                    n ^ (1 << rng.below(64)),
                    u64::MAX,
                ];
                *cur = serde_json::json!(choices[rng.below(choices.len())]);
            } else {
                *cur = hostile_value(rng);
            }
        }
        3 => {
            if let Value::Object(o) = cur {
                o.insert("unknown_field".into(), hostile_value(rng));
            } else {
                *cur = hostile_value(rng);
            }
        }
        _ => *cur = hostile_value(rng),
    }
}

#[test]
fn fuzz_core_mutations() {
    let t = TempDir::new("fuzz");
    write_sample(t.path());
    let path = core_path(t.path(), 100);
    let valid = fs::read(&path).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&valid[HEADER_LEN..]).unwrap();
    parse_process(&path, &valid).unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    let r = ProcessRef {
        pid: 100,
        core_file: core_file_name(100),
        pages_file: pages_file_name(100),
    };

    let start = std::time::Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0u32, 0u32);
    for iter in 0..5000 {
        let bytes = match rng.below(4) {
            0 => {
                // Byte flips anywhere, header included.
                let mut b = valid.clone();
                for _ in 0..=rng.below(4) {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
                b
            }
            1 => {
                // Truncation, sometimes with the header fixed up to match.
                let mut b = valid[..rng.below(valid.len())].to_vec();
                if b.len() >= HEADER_LEN && rng.below(2) == 0 {
                    b = format::encode_metadata(FileKind::Core, &b[HEADER_LEN..]);
                }
                b
            }
            2 => {
                // Random insertion, then a correct header over the result.
                let mut payload = valid[HEADER_LEN..].to_vec();
                let at = rng.below(payload.len());
                let n = 1 + rng.below(8);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                payload.splice(at..at, junk);
                format::encode_metadata(FileKind::Core, &payload)
            }
            _ => {
                // JSON-level edits behind a valid header: the decoder and
                // the validator see the hostile content.
                let mut v = value.clone();
                for _ in 0..=rng.below(3) {
                    mutate_json(&mut v, &mut rng);
                }
                format::encode_metadata(FileKind::Core, &serde_json::to_vec(&v).unwrap())
            }
        };
        let res = if iter % 50 == 0 {
            // Through the file system path now and then.
            fs::remove_file(&path).unwrap();
            fs::write(&path, &bytes).unwrap();
            dir.load_process(&r)
        } else {
            parse_process(&path, &bytes)
        };
        match res {
            Ok(img) => {
                ok += 1;
                // Whatever passes validation is self-consistent.
                assert!(pages_len(&img) % PAGE_SIZE == 0);
            }
            Err(e) => {
                err += 1;
                assert_eq!(e.path(), path.as_path());
                assert!(!e.to_string().is_empty());
            }
        }
    }
    eprintln!("fuzz: {ok} ok, {err} err in {:?}", start.elapsed());
    assert_eq!(ok + err, 5000);
    assert!(err > 2500, "mutations should mostly be rejected ({ok} ok)");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(120),
        "fuzzing took {:?}",
        start.elapsed()
    );
}

/// Byte-level and JSON-level mutations of a metadata file's bytes, as the
/// core fuzz does them (shared by the inventory and `show` fuzzes).
fn mutate_metadata(
    valid: &[u8],
    value: &serde_json::Value,
    kind: FileKind,
    rng: &mut Rng,
) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let mut b = valid.to_vec();
            for _ in 0..=rng.below(4) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            b
        }
        1 => {
            let mut b = valid[..rng.below(valid.len())].to_vec();
            if b.len() >= HEADER_LEN && rng.below(2) == 0 {
                b = format::encode_metadata(kind, &b[HEADER_LEN..]);
            }
            b
        }
        2 => {
            let mut payload = valid[HEADER_LEN..].to_vec();
            let at = rng.below(payload.len());
            let junk: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
            payload.splice(at..at, junk);
            format::encode_metadata(kind, &payload)
        }
        _ => {
            let mut v = value.clone();
            for _ in 0..=rng.below(3) {
                mutate_json(&mut v, rng);
            }
            format::encode_metadata(kind, &serde_json::to_vec(&v).unwrap())
        }
    }
}

#[test]
fn fuzz_inventory_mutations() {
    let t = TempDir::new("fuzz-inv");
    write_sample(t.path());
    let path = t.path().join(INVENTORY_FILE);
    let valid = fs::read(&path).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&valid[HEADER_LEN..]).unwrap();
    parse_inventory(&path, &valid).unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut ok, mut err) = (0u32, 0u32);
    for iter in 0..5000 {
        let bytes = mutate_metadata(&valid, &value, FileKind::Inventory, &mut rng);
        let res = if iter % 50 == 0 {
            fs::remove_file(&path).unwrap();
            fs::write(&path, &bytes).unwrap();
            // The whole load: names in the inventory are followed only if plain.
            dir.load_all().map(|i| i.inventory)
        } else {
            parse_inventory(&path, &bytes)
        };
        match res {
            Ok(inv) => {
                ok += 1;
                for p in &inv.processes {
                    assert!(is_plain_name(&p.core_file) && is_plain_name(&p.pages_file));
                }
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    eprintln!("fuzz inventory: {ok} ok, {err} err");
    assert!(err > 2500, "mutations should mostly be rejected ({ok} ok)");
}

#[test]
fn fuzz_page_files() {
    let t = TempDir::new("fuzz-pages");
    let (inv, imgs) = write_sample(t.path());
    let dir = ImageDir::open(t.path()).unwrap();
    let r = &inv.processes[0];
    let path = pages_path(t.path(), r.pid);
    let valid = fs::read(&path).unwrap();
    dir.verify_pages(r, &imgs[0]).unwrap();
    let mut rng = Rng(0xfeed_beef_0000_0003);
    let (mut ok, mut err) = (0u32, 0u32);
    for _ in 0..2000 {
        let mut b = valid.clone();
        let mut damaged = true;
        match rng.below(5) {
            0 => {
                // A flip anywhere; flips in the header padding are ignored
                // by design (docs/image-format.md).
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
                damaged = !(32..PAGES_HEADER_LEN as usize).contains(&i);
            }
            1 => b.truncate(rng.below(b.len())),
            2 => b.extend((0..1 + rng.below(8192)).map(|_| rng.next() as u8)),
            3 => {
                // Header fields rewritten with arbitrary values.
                let at = [8usize, 12, 16, 24][rng.below(4)];
                let v = rng.next().to_le_bytes();
                let n = if at < 16 { 4 } else { 8 };
                b[at..at + n].copy_from_slice(&v[..n]);
            }
            _ => {
                // A declared length matching a truncated file.
                let cut = PAGES_HEADER_LEN as usize + 4096 * rng.below(4);
                b.truncate(cut.min(b.len()));
                let len = (b.len() as u64).saturating_sub(PAGES_HEADER_LEN);
                b[16..24].copy_from_slice(&len.to_le_bytes());
            }
        }
        fs::remove_file(&path).unwrap();
        fs::write(&path, &b).unwrap();
        match dir.verify_pages(r, &imgs[0]) {
            Ok(()) => {
                ok += 1;
                assert!(!damaged || b == valid, "a damaged page file was accepted");
            }
            Err(e) => {
                err += 1;
                assert_eq!(e.path(), path.as_path());
            }
        }
        // `show` on the same file never panics either.
        let _ = show_file(&path);
    }
    eprintln!("fuzz pages: {ok} ok, {err} err");
    assert!(err > 1500);
}

#[test]
fn fuzz_show() {
    let t = TempDir::new("fuzz-show");
    write_sample(t.path());
    let mut rng = Rng(0x0051_0a11_0000_0007);
    for (name, kind) in [
        (INVENTORY_FILE.to_string(), FileKind::Inventory),
        (core_file_name(100), FileKind::Core),
    ] {
        let path = t.path().join(&name);
        let valid = fs::read(&path).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&valid[HEADER_LEN..]).unwrap();
        for _ in 0..1000 {
            let bytes = mutate_metadata(&valid, &value, kind, &mut rng);
            fs::remove_file(&path).unwrap();
            fs::write(&path, &bytes).unwrap();
            let _ = show_file(&path);
            let _ = show_dir(t.path());
        }
        fs::remove_file(&path).unwrap();
        fs::write(&path, &valid).unwrap();
    }
}

fn with_saved(img: &ProcessImage) -> ProcessImage {
    let mut m = img.clone();
    m.saved_files.push(SavedFile {
        id: 7,
        kind: SavedFileKind::Memfd {
            name: "buf".into(),
            seals: 1,
        },
        size: 5000,
        offset: pages_len(img),
        mode: 0o777,
        dev: 1,
        ino: 2,
        owner: None,
        times: None,
        extents: None,
    });
    m.files.push(FdEntry {
        fd: 900,
        cloexec: false,
        kind: FdKind::Saved {
            id: 7,
            flags: 2,
            pos: 0,
        },
        ofd: 0,
    });
    m
}

#[test]
fn saved_files_validation() {
    let good = with_saved(&sample_process(100, 1));
    validate_process(Path::new("/x/core-100.img"), &good).unwrap();
    // Two pages past the runs: 5000 bytes take two whole pages.
    assert_eq!(pages_len(&good), good.saved_files[0].offset + 2 * PAGE_SIZE);

    let mut m = good.clone();
    m.saved_files[0].size = MAX_SAVED_FILE + 1;
    assert!(invalid(&m).contains("above the cap"));

    let mut m = good.clone();
    m.saved_files[0].offset = m.mm.pages[0].offset; // shares bytes with a run
    assert!(invalid(&m).contains("overlaps"));

    let mut m = good.clone();
    m.saved_files[0].offset += 1;
    assert!(invalid(&m).contains("not page-aligned"));

    let mut m = good.clone();
    m.saved_files[0].offset = !(PAGE_SIZE - 1); // the last page-aligned offset
    assert!(invalid(&m).contains("overflows"));

    let mut m = good.clone();
    m.saved_files.push(m.saved_files[0].clone()); // id twice
    assert!(invalid(&m).contains("listed twice"));

    let mut m = good.clone();
    m.saved_files[0].kind = SavedFileKind::Memfd {
        name: "n".repeat(250),
        seals: 0,
    };
    assert!(invalid(&m).contains("kind.name"));

    let mut m = good.clone();
    m.saved_files[0].kind = SavedFileKind::Deleted {
        path: "relative/x".into(),
    };
    assert!(invalid(&m).contains("not absolute"));

    let mut m = good.clone();
    m.files.push(FdEntry {
        fd: 901,
        cloexec: false,
        kind: FdKind::Path {
            path: "/".into(),
            flags: 0,
            mode: 0,
        },
        ofd: 0,
    });
    assert!(invalid(&m).contains("without O_PATH"));

    // Whole image: references must name a saved file defined once.
    let inv = Path::new("/x/inventory.img");
    validate_saved_refs(inv, std::slice::from_ref(&good)).unwrap();
    let mut other = sample_process(101, 100);
    other.files.push(good.files.last().unwrap().clone());
    validate_saved_refs(inv, &[good.clone(), other.clone()]).unwrap();
    let mut dangling = good.clone();
    dangling.saved_files.clear();
    let e = validate_saved_refs(inv, &[dangling])
        .unwrap_err()
        .to_string();
    assert!(e.contains("saved file 7 is not in the image"), "{e}");
    other.saved_files = good.saved_files.clone();
    let e = validate_saved_refs(inv, &[good, other])
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than one process"), "{e}");
}

#[test]
fn file_locks_and_owners_validation() {
    let mut good = sample_process(100, 1);
    let fd = good.files[0].fd;
    good.file_locks.push(FileLock {
        fd,
        kind: LockKind::Posix,
        write: true,
        start: 10,
        len: 0,
    });
    good.fd_owners.push(FdOwner {
        fd,
        owner_type: 1,
        owner_pid: 100,
        signal: 10,
        flags: 0o20000,
    });
    validate_process(Path::new("/x/core-100.img"), &good).unwrap();
    // Round trip through the format, and older images (no fields) load.
    let back: ProcessImage = serde_json::from_slice(&serde_json::to_vec(&good).unwrap()).unwrap();
    assert_eq!(back, good);
    let mut v = serde_json::to_value(sample_process(100, 1)).unwrap();
    v.as_object_mut().unwrap().remove("file_locks");
    v.as_object_mut().unwrap().remove("fd_owners");
    let old: ProcessImage = serde_json::from_value(v).unwrap();
    assert!(old.file_locks.is_empty() && old.fd_owners.is_empty());

    let mut m = good.clone();
    m.file_locks[0].fd = 999;
    assert!(invalid(&m).contains("file_locks[0].fd"));
    let mut m = good.clone();
    m.file_locks[0].kind = LockKind::Flock;
    assert!(invalid(&m).contains("with a range"));
    let mut m = good.clone();
    m.file_locks[0].len = u64::MAX;
    assert!(invalid(&m).contains("too large"));
    let mut m = good.clone();
    m.fd_owners[0].owner_type = 7;
    assert!(invalid(&m).contains("fd_owners[0]"));
}

#[test]
fn proc_attrs_validation_and_old_images() {
    use crate::{ProcAttrs, SchedAttrs, ThreadAttrs};
    let mut good = sample_process(100, 1);
    good.proc_attrs = Some(ProcAttrs {
        oom_score_adj: 300,
        thp_disable: 3,
        mlockall: 6,
        membarrier: 1 << 4,
        coredump_filter: 0x33,
        threads: good
            .threads
            .iter()
            .map(|_| ThreadAttrs {
                sched: SchedAttrs {
                    nice: 5,
                    ..SchedAttrs::default()
                },
                timer_slack_ns: 50_000,
                ..ThreadAttrs::default()
            })
            .collect(),
        ..ProcAttrs::default()
    });
    validate_process(Path::new("/x/core-100.img"), &good).unwrap();
    let json = serde_json::to_value(&good).unwrap();
    let back: ProcessImage = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, good);
    // An image without the field (older writer) loads with None.
    let mut old = json;
    old.as_object_mut().unwrap().remove("proc_attrs");
    let back: ProcessImage = serde_json::from_value(old).unwrap();
    assert_eq!(back.proc_attrs, None);

    let mut m = good.clone();
    m.proc_attrs.as_mut().unwrap().thp_disable = 2;
    assert!(invalid(&m).contains("proc_attrs.thp_disable"));
    let mut m = good.clone();
    m.proc_attrs.as_mut().unwrap().threads.pop();
    assert!(invalid(&m).contains("proc_attrs.threads"));
    let mut m = good.clone();
    m.proc_attrs.as_mut().unwrap().oom_score_adj = -1001;
    assert!(invalid(&m).contains("oom_score_adj"));
    let mut m = good.clone();
    m.mm.vmas[0].advice.push("frobnicate".into());
    assert!(invalid(&m).contains("unknown flag"));
}

#[test]
fn in_parent_runs_take_no_page_file_bytes() {
    let good = sample_process(100, 1);
    let len = pages_len(&good);
    let mut m = good.clone();
    // Run 1 now refers to the parent: offset 0, no bytes here; the others
    // keep theirs (run 0 also starts at offset 0).
    m.mm.pages[1].in_parent = true;
    m.mm.pages[1].offset = 0;
    validate_process(Path::new("/x/core-100.img"), &m).unwrap();
    assert_eq!(pages_len(&m), len);
    let last = m.mm.pages.len() - 1;
    m.mm.pages[last].in_parent = true;
    m.mm.pages[last].offset = 0;
    assert!(pages_len(&m) < len);
    let mut bad = m.clone();
    bad.mm.pages[1].offset = 4096;
    assert!(invalid(&bad).contains("not 0 in a run in the parent"));
    // Written only when true: older images read as before.
    let j = serde_json::to_string(&good.mm.pages[0]).unwrap();
    assert!(!j.contains("in_parent"), "{j}");
}

#[test]
fn ipc_rules() {
    use crate::sysvipc::{
        IpcNs, IpcPerm, IpcSysctl, Message, MsgQueue, PosixMessage, PosixQueue, SemSet, ShmSegment,
    };
    let a = sample_process(100, 1);
    let p = Path::new("/x/inventory.img");
    let perm = IpcPerm {
        key: 7,
        uid: 0,
        gid: 0,
        cuid: 0,
        cgid: 0,
        mode: 0o600,
    };
    let mut good = inventory_for(&[&a]);
    good.ipc = Some(IpcNs {
        own: true,
        end: 0,
        mq_end: 4096 + 8192 + 4096,
        sysctls: vec![IpcSysctl {
            name: "kernel/shmmax".into(),
            value: "4096".into(),
        }],
        shm: vec![ShmSegment {
            id: 3,
            perm,
            size: 10000,
            nattch: 1,
            cpid: 100,
            lpid: 101,
            offset: 4096,
            extents: vec![
                Extent {
                    offset: 0,
                    len: 4096,
                },
                Extent {
                    offset: 8192,
                    len: 1808,
                },
            ],
        }],
        sem: vec![SemSet {
            id: 0,
            perm,
            values: vec![1, 2],
            operated: true,
            pids: vec![100, 0],
        }],
        msg: vec![MsgQueue {
            id: 0,
            perm,
            qbytes: 100,
            messages: vec![Message {
                mtype: 1,
                text: b"hi".to_vec(),
            }],
            lspid: 100,
            lrpid: 0,
        }],
        mqueues: vec![PosixQueue {
            name: "q".into(),
            uid: 0,
            gid: 0,
            mode: 0o640,
            maxmsg: 4,
            msgsize: 16,
            messages: vec![
                PosixMessage {
                    prio: 9,
                    text: b"first".to_vec(),
                },
                PosixMessage {
                    prio: 1,
                    text: b"then".to_vec(),
                },
            ],
        }],
    });
    validate_inventory(p, &good).unwrap();
    assert_eq!(good.ipc.as_ref().unwrap().payload_end(), 4096 + 8192 + 4096);
    let bad = |edit: &dyn Fn(&mut IpcNs), word: &str| {
        let mut m = good.clone();
        edit(m.ipc.as_mut().unwrap());
        let e = validate_inventory(p, &m).unwrap_err().to_string();
        assert!(e.contains(word), "{word}: {e}");
    };
    // Only the IPC sysctls may be written back.
    bad(
        &|i| i.sysctls[0].name = "kernel/core_pattern".into(),
        "not an IPC sysctl",
    );
    bad(&|i| i.shm[0].extents[1].offset = 100, "out of order");
    bad(&|i| i.shm[0].extents[1].len = 5000, "outside");
    bad(&|i| i.shm[0].offset = 10, "offset");
    bad(&|i| i.sem.push(i.sem[0].clone()), "twice");
    bad(&|i| i.sem[0].values.clear(), "semaphores");
    bad(&|i| i.sem[0].pids.push(7), "PIDs for");
    bad(&|i| i.msg[0].messages[0].mtype = 0, "message type");
    bad(&|i| i.mqueues[0].name = "a/b".into(), "invalid or twice");
    bad(
        &|i| i.mqueues.push(i.mqueues[0].clone()),
        "invalid or twice",
    );
    bad(&|i| i.mqueues[0].maxmsg = 1, "maxmsg");
    bad(&|i| i.mqueues[0].messages[1].prio = 10, "out of order");
    bad(&|i| i.mqueues[0].messages[0].text = vec![0; 17], "too big");
    // Semaphores or queues of a namespace that is not the tree's own.
    bad(&|i| i.own = false, "not the tree's own");
    bad(&|i| i.end = 100, "ipc.end");
    bad(&|i| i.mq_end = 100, "ipc.mq_end");
    bad(&|i| i.mq_end = 0, "ipc.mq_end");
}
