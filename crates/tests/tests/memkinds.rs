//! End-to-end tests for kinds of memory (issue 9): private mappings of
//! memfds and shmem files whose pages differ from the object, the ghost
//! limit for memfds and deleted files, and the kinds refused by name
//! (hugetlb, AIO rings, io_uring).

mod common;

use common::*;
use std::fs;

/// A process holding `args`: the dump (with `dump_extra`) fails naming the
/// PID and every one of `words`, leaves no image, and the process runs on.
fn refuse_with(name: &str, args: &[&str], dump_extra: &[&str], words: &[&str]) {
    refused_dump(
        name,
        Program::Bin("tp_unsupported"),
        args,
        dump_extra,
        words,
        true,
    );
}

#[test]
fn selfcheck_memkinds_resources_work() {
    for what in ["deleted-2m", "aio", "io-uring"] {
        let work = Work::new(&format!("selfcheck_memkinds_{what}"));
        run_plain(&work, Program::Bin("tp_unsupported"), &["--with", what]).assert_pass(&work);
    }
}

/// Above `--ghost-limit`, a deleted file is refused naming it and the option.
#[test]
fn refuse_deleted_above_ghost_limit() {
    refuse_with(
        "refuse_deleted_above_ghost_limit",
        &["--with", "deleted-2m"],
        &["--ghost-limit", "1M"],
        &["ghost.dat (deleted)", "--ghost-limit"],
    );
}

/// Below it (here the default, 1 GiB, and an explicit 4M), it is saved and
/// comes back with its contents.
#[test]
fn cr_deleted_below_ghost_limit() {
    let work = Work::new("cr_deleted_below_ghost_limit");
    let opts = Opts {
        dump_extra: vec!["--ghost-limit", "4M"],
        ..Opts::default()
    };
    run_case(
        &work,
        Program::Bin("tp_unsupported"),
        &["--with", "deleted-2m"],
        &opts,
    )
    .assert_pass(&work);
}

/// The ghost limit also bounds the default: the 1 GiB + 4 KiB sparse file
/// is refused naming the option.
#[test]
fn refuse_huge_deleted_names_ghost_limit() {
    refuse_with(
        "refuse_huge_deleted_names_ghost_limit",
        &["--with", "huge-deleted"],
        &[],
        &["huge.dat (deleted)", "--ghost-limit"],
    );
}

#[test]
fn refuse_aio_ring() {
    refuse_with(
        "refuse_aio_ring",
        &["--with", "aio"],
        &[],
        &["/[aio]", "AIO ring"],
    );
}

#[test]
fn refuse_io_uring() {
    refuse_with(
        "refuse_io_uring",
        &["--with", "io-uring"],
        &[],
        &["io_uring"],
    );
}

/// Reserves 2 MiB huge pages for a test; puts the old count back on drop.
/// One test at a time (the count is global).
struct HugePages {
    old: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

static HUGE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    /// At least `n` free huge pages, or None (the test then skips).
    fn reserve(n: u64) -> Option<HugePages> {
        let one = HUGE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = fs::read_to_string(NR_HUGEPAGES).ok()?;
        let guard = HugePages {
            old: old.clone(),
            _one: one,
        };
        let want = old.trim().parse::<u64>().ok()? + n;
        fs::write(NR_HUGEPAGES, want.to_string()).ok()?;
        let free = fs::read_to_string("/proc/meminfo")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        (free >= n).then_some(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = fs::write(NR_HUGEPAGES, self.old.trim());
    }
}

/// A hugetlbfs mounted on a directory of the work area; unmounted on drop.
struct HugeMount {
    dir: std::path::PathBuf,
}

impl HugeMount {
    fn new(work: &Work) -> Option<HugeMount> {
        let dir = work.path("hugetlbfs");
        fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "stasis-test"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(HugeMount { dir })
    }
}

impl Drop for HugeMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
    }
}

/// hugetlb memory other than anonymous (MFD_HUGETLB memfds, hugetlbfs
/// files) is refused by name, the process unharmed.
#[test]
fn refuse_hugetlb() {
    let Some(_pages) = HugePages::reserve(4) else {
        eprintln!("skipped: no 2 MiB huge pages could be reserved");
        return;
    };
    refuse_with(
        "refuse_hugetlb-memfd",
        &["--with", "hugetlb-memfd"],
        &[],
        &["hugetlb memfd (MFD_HUGETLB)", "hugetlb"],
    );
    // Held as a descriptor only: it would come back on tmpfs.
    refuse_with(
        "refuse_hugetlb-memfd-fd",
        &["--with", "hugetlb-memfd-fd"],
        &[],
        &["hugetlb memfd (MFD_HUGETLB)", "fd "],
    );
    let work = Work::new("refuse_hugetlb_file_mount");
    let Some(mnt) = HugeMount::new(&work) else {
        eprintln!("skipped: cannot mount hugetlbfs");
        return;
    };
    let dir = mnt.dir.to_str().expect("utf-8").to_string();
    refuse_with(
        "refuse_hugetlb-file",
        &["--with", "hugetlb-file", "--mnt", &dir],
        &[],
        &["a deleted hugetlbfs file", "hugetlb"],
    );
    let _ = fs::remove_file(mnt.dir.join("huge"));
}

#[test]
fn selfcheck_memkinds_private() {
    let work = Work::new("selfcheck_memkinds_private");
    run_plain(&work, Program::Bin("tp_memkinds"), &["--case", "private"]).assert_pass(&work);
}

#[test]
fn negative_memkinds_private() {
    let work = Work::new("negative_memkinds_private");
    let out = run_plain(
        &work,
        Program::Bin("tp_memkinds"),
        &["--case", "private", "--corrupt"],
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

/// Private mappings of memfds and shmem/deleted files whose pages differ
/// from the object: every page exact, and the mapping still shares the
/// object's pages it had not copied (item 1 of issue 9).
#[test]
fn cr_private_file_mappings() {
    let work = Work::new("cr_private_file_mappings");
    run_case(
        &work,
        Program::Bin("tp_memkinds"),
        &["--case", "private"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

#[test]
fn selfcheck_memkinds_novdso() {
    let work = Work::new("selfcheck_memkinds_novdso");
    run_plain(&work, Program::Bin("tp_memkinds"), &["--case", "novdso"]).assert_pass(&work);
}

#[test]
fn negative_memkinds_novdso() {
    let work = Work::new("negative_memkinds_novdso");
    let out = run_plain(
        &work,
        Program::Bin("tp_memkinds"),
        &["--case", "novdso", "--corrupt"],
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

/// A process that unmapped its vDSO: dumped (the healing stub goes into
/// padding past an executable segment) and restored without a vDSO.
#[test]
fn cr_without_vdso() {
    let work = Work::new("cr_without_vdso");
    run_case(
        &work,
        Program::Bin("tp_memkinds"),
        &["--case", "novdso"],
        &Opts::default(),
    )
    .assert_pass(&work);
}

/// Runs tp_memkinds --case hugetlb through `f` with huge pages reserved;
/// skips (saying so) when none can be reserved or the program had none.
fn with_huge_pages(name: &str, f: impl FnOnce(&Work) -> Outcome) {
    let Some(_pages) = HugePages::reserve(12) else {
        eprintln!("skipped: no 2 MiB huge pages could be reserved");
        return;
    };
    let work = Work::new(name);
    let out = f(&work);
    if out.exit == Exit::Code(4) {
        eprintln!("skipped: the program found no free huge page");
        return;
    }
    out.assert_pass(&work);
}

#[test]
fn selfcheck_memkinds_hugetlb() {
    with_huge_pages("selfcheck_memkinds_hugetlb", |work| {
        run_plain(work, Program::Bin("tp_memkinds"), &["--case", "hugetlb"])
    });
}

#[test]
fn negative_memkinds_hugetlb() {
    let Some(_pages) = HugePages::reserve(12) else {
        eprintln!("skipped: no 2 MiB huge pages could be reserved");
        return;
    };
    let work = Work::new("negative_memkinds_hugetlb");
    let out = run_plain(
        &work,
        Program::Bin("tp_memkinds"),
        &["--case", "hugetlb", "--corrupt"],
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        work.diagnostics()
    );
}

/// Anonymous MAP_HUGETLB memory, private and shared with a child: only its
/// touched huge pages saved, restored with the same page size, the shared
/// one as one object (item 4 of issue 9).
#[test]
fn cr_anon_hugetlb() {
    with_huge_pages("cr_anon_hugetlb", |work| {
        run_case(
            work,
            Program::Bin("tp_memkinds"),
            &["--case", "hugetlb"],
            &Opts::default(),
        )
    });
}

/// An io_uring with a SQPOLL kernel thread: refused by name (the thread or
/// the descriptor), the process unharmed.
#[test]
fn refuse_io_uring_sqpoll() {
    refuse_with(
        "refuse_io_uring_sqpoll",
        &["--with", "io-uring", "--sqpoll"],
        &[],
        &["io_uring"],
    );
}

/// Shared and private mappings of a file on hugetlbfs (item 4 of issue 9).
#[test]
fn cr_hugetlbfs_file() {
    let Some(_pages) = HugePages::reserve(12) else {
        eprintln!("skipped: no 2 MiB huge pages could be reserved");
        return;
    };
    let work = Work::new("cr_hugetlbfs_file");
    let Some(mnt) = HugeMount::new(&work) else {
        eprintln!("skipped: cannot mount hugetlbfs");
        return;
    };
    let dir = mnt.dir.to_str().expect("utf-8").to_string();
    let args = ["--case", "hugetlbfs", "--mnt", dir.as_str()];
    let out = run_case(&work, Program::Bin("tp_memkinds"), &args, &Opts::default());
    if out.exit == Exit::Code(4) {
        eprintln!("skipped: the program found no free huge page");
        return;
    }
    out.assert_pass(&work);
    let neg = Work::new("negative_hugetlbfs_file");
    let out = run_plain(
        &neg,
        Program::Bin("tp_memkinds"),
        &["--case", "hugetlbfs", "--mnt", dir.as_str(), "--corrupt"],
    );
    assert!(
        out.result.starts_with("FAIL: ") && out.exit == Exit::Code(1),
        "the negative control did not fail: {out:?}{}",
        neg.diagnostics()
    );
    let _ = fs::remove_file(mnt.dir.join("file"));
}
