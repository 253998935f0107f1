//! tp_memkinds: kinds of memory (issue 9).
//!
//! Usage: `tp_memkinds WORKDIR --case novdso|private|hugetlb|hugetlbfs [--mnt DIR] [--corrupt]`
//!
//! * `novdso`: the process unmaps its [vdso], [vvar] and [vvar_vclock]
//!   (as some sandboxes do). After restore it checks that none of them is
//!   back, that its auxv is unchanged, that the last page of every
//!   executable file mapping holds the bytes it held before (the dump puts
//!   its healing stub into such padding and must leave it as it was), and
//!   that system calls still work. `--corrupt` maps a new vDSO
//!   (`arch_prctl(ARCH_MAP_VDSO_64)`) after go.
//! * `private`: MAP_PRIVATE mappings of a memfd, of a /dev/shm file, of a
//!   deleted /dev/shm file and of a deleted file in the work directory,
//!   each with pages copied on write (small and large runs, some never
//!   faulted before), pages of the object written after the mapping (which
//!   the mapping sees where it has not copied), a read-only part and a
//!   PROT_NONE part, and a forked child with the same mappings. After
//!   restore every page must read as before, and writing the whole object
//!   again must show through exactly the pages not copied on write (the
//!   mapping still shares the object's pages). A private anonymous mapping
//!   too. The parent writes elsewhere in each mapping after the fork; the
//!   pages it shares copy-on-write with the child must stay shared after
//!   restore (Shared_Clean + Shared_Dirty of its first VMA keep 90%). `--corrupt` flips
//!   a byte of one copied page.
//! * `hugetlb`: 8 MiB of MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB memory (2 MiB
//!   pages), two of its four huge pages written with known bytes. After
//!   restore: the same VMA with KernelPageSize 2048 kB, still only two huge
//!   pages allocated (Private_Hugetlb), their bytes exact, the untouched
//!   ones zero. Also 4 MiB of MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB memory
//!   shared with a child, each having written one huge page: after restore
//!   both see both pages, with 2 MiB pages, and a write by the child after
//!   restore is seen by the parent (one object). Exits 4 without huge pages
//!   (the harness reserves them). `--corrupt` flips one byte.
//! * `hugetlbfs`: a 4 MiB file on the hugetlbfs mounted at `--mnt DIR`,
//!   mapped MAP_SHARED (huge page 0 written through it) and MAP_PRIVATE
//!   (huge page 1 copied on write). After restore: both with 2 MiB pages,
//!   the bytes exact, and a write through the shared mapping is seen by the
//!   private one where it had not copied. `--corrupt` flips one byte.

use stasis_tests::{Mapping, Proto, Report, Rng};
use std::ffi::CString;

const PAGE: usize = 4096;

fn main() {
    let (proto, args) = Proto::from_args();
    let mut report = Report::new();
    match args.get("case").unwrap_or("private") {
        "novdso" => novdso(&proto, args.corrupt(), &mut report),
        "private" => private(&proto, args.corrupt(), &mut report),
        "hugetlb" => hugetlb(&proto, args.corrupt(), &mut report),
        "hugetlbfs" => hugetlbfs(
            &proto,
            args.get("mnt").expect("--mnt DIR"),
            args.corrupt(),
            &mut report,
        ),
        other => panic!("unknown --case {other}"),
    }
    proto.finish(&report);
}

/// (start, end, perms, path) of every line of /proc/self/maps.
fn maps() -> Vec<(usize, usize, String, String)> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = f.first()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
                f.get(1)?.to_string(),
                f.get(5..).map(|p| p.join(" ")).unwrap_or_default(),
            ))
        })
        .collect()
}

const SPECIAL: [&str; 3] = ["[vdso]", "[vvar]", "[vvar_vclock]"];

/// The last page of every executable file mapping: (start, bytes).
fn exec_tails() -> Vec<(usize, Vec<u8>)> {
    maps()
        .into_iter()
        .filter(|m| m.2.contains('x') && m.3.starts_with('/'))
        .map(|m| {
            // SAFETY: the page is mapped readable and executable for the
            // whole life of the program (no library is unloaded).
            let b = unsafe { std::slice::from_raw_parts((m.1 - PAGE) as *const u8, PAGE) };
            (m.0, b.to_vec())
        })
        .collect()
}

fn novdso(proto: &Proto, corrupt: bool, report: &mut Report) {
    for m in maps()
        .into_iter()
        .filter(|m| SPECIAL.contains(&m.3.as_str()))
    {
        // SAFETY: unmaps the vDSO areas; nothing in this program calls into
        // the vDSO afterwards (only raw system calls and nanosleep).
        let r = unsafe { libc::munmap(m.0 as *mut libc::c_void, m.1 - m.0) };
        assert_eq!(r, 0, "munmap {}", m.3);
    }
    let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
    let tails = exec_tails();
    let before: Vec<_> = maps();
    proto.ready_and_wait();
    if corrupt {
        // SAFETY: asks the kernel for a new vDSO (ARCH_MAP_VDSO_64).
        unsafe { libc::syscall(libc::SYS_arch_prctl, 0x2003, 0x7f00_0000_0000usize) };
    }
    let after = maps();
    let special: Vec<_> = after
        .iter()
        .filter(|m| SPECIAL.contains(&m.3.as_str()))
        .map(|m| m.3.clone())
        .collect();
    report.check(special.is_empty(), || {
        format!("vDSO areas mapped after restore: {special:?}")
    });
    report.eq(
        "mappings (address, perms, path)",
        before.clone(),
        after.clone(),
    );
    report.check(
        std::fs::read("/proc/self/auxv").unwrap_or_default() == auxv,
        || "auxv differs".into(),
    );
    let now = exec_tails();
    for ((a, b), (_, c)) in tails.iter().zip(&now) {
        report.check(b == c, || {
            format!("last page of the executable mapping at {a:#x} changed")
        });
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a raw clock_gettime into a live timespec (no vDSO involved).
    let r = unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &raw mut ts) };
    report.check(r == 0 && ts.tv_sec + ts.tv_nsec > 0, || {
        "clock_gettime by system call failed".into()
    });
}

/// One backing object with its private mapping.
struct Obj {
    name: &'static str,
    fd: i32,
    map: Mapping,
    /// Pages copied on write.
    cowed: Vec<bool>,
    expect: Vec<u8>,
}

const NPAGES: usize = 1024;

fn open_obj(proto: &Proto, name: &'static str) -> i32 {
    match name {
        "memfd" => {
            let n = CString::new("stasis-private").expect("name");
            // SAFETY: valid NUL-terminated name.
            unsafe { libc::memfd_create(n.as_ptr(), 0) }
        }
        _ => {
            let path = match name {
                "shm" => format!("/dev/shm/stasis-private-{}", std::process::id()),
                "shm-deleted" => format!("/dev/shm/stasis-private-del-{}", std::process::id()),
                _ => proto
                    .path("private-deleted.dat")
                    .to_string_lossy()
                    .into_owned(),
            };
            let c = CString::new(path).expect("path");
            // SAFETY: valid path.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
                    0o600,
                )
            };
            if name != "shm" {
                // SAFETY: valid path.
                unsafe { libc::unlink(c.as_ptr()) };
            }
            fd
        }
    }
}

fn pwrite(fd: i32, data: &[u8], page: usize) {
    // SAFETY: writes from a live slice.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), (page * PAGE) as i64) };
    assert_eq!(n, data.len() as isize, "pwrite");
}

fn private(proto: &Proto, corrupt: bool, report: &mut Report) {
    let mut rng = Rng::new(0x9e37_0001);
    let mut objs = Vec::new();
    for name in ["memfd", "shm", "shm-deleted", "deleted", "anon"] {
        let (fd, map) = if name == "anon" {
            let map = Mapping::anon(NPAGES * PAGE);
            rng.fill(map.bytes_mut());
            (-1, map)
        } else {
            let fd = open_obj(proto, name);
            assert!(fd >= 0, "open {name}");
            let mut data = vec![0u8; NPAGES * PAGE];
            rng.fill(&mut data);
            pwrite(fd, &data, 0);
            let map = Mapping::new(
                NPAGES * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd,
                0,
            );
            (fd, map)
        };
        let mut cowed = vec![false; NPAGES];
        // Fault in the first half for reading.
        let mut sum = 0u8;
        for p in 0..NPAGES / 2 {
            sum = sum.wrapping_add(map.bytes()[p * PAGE]);
        }
        std::hint::black_box(sum);
        // Copy on write: a small run, a large run (filled by the restore's
        // bulk path), scattered pages, pages never faulted before.
        let mut cow = |p: usize, rng: &mut Rng| {
            let mut b = [0u8; 64];
            rng.fill(&mut b);
            map.bytes_mut()[p * PAGE + 100..p * PAGE + 164].copy_from_slice(&b);
            cowed[p] = true;
        };
        for p in (0..4).chain(100..300).chain((400..NPAGES).step_by(7)) {
            cow(p, &mut rng);
        }
        // The object written after the mapping, at copied and uncopied pages.
        let mut y = vec![0u8; PAGE];
        for p in (0..NPAGES).step_by(5).filter(|_| fd >= 0) {
            rng.fill(&mut y);
            pwrite(fd, &y, p);
        }
        // A read-only part and a PROT_NONE part, both with copied pages.
        // SAFETY: mprotect of our own mapping.
        unsafe {
            libc::mprotect(map.addr.add(600 * PAGE).cast(), 40 * PAGE, libc::PROT_READ);
            libc::mprotect(map.addr.add(700 * PAGE).cast(), 40 * PAGE, libc::PROT_NONE);
        }
        let expect = snapshot(&map);
        objs.push(Obj {
            name,
            fd,
            map,
            cowed,
            expect,
        });
    }
    // A child with the same mappings (sharing the parent's copied pages
    // until it writes) that copies a few more.
    let (mut q, mut done) = ([0i32; 2], [0i32; 2]);
    // SAFETY: valid out arrays.
    unsafe { libc::pipe(q.as_mut_ptr()) };
    // SAFETY: as above.
    unsafe { libc::pipe(done.as_mut_ptr()) };
    // SAFETY: single-threaded: fork is safe; the child exits with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        for o in &mut objs {
            o.map.bytes_mut()[10 * PAGE + 1] ^= 0x55;
            o.cowed[10] = true;
            o.expect[10 * PAGE + 1] ^= 0x55;
        }
        // SAFETY: one byte from a literal into our pipe.
        unsafe { libc::write(q[1], b"r".as_ptr().cast(), 1) };
        proto.wait_go();
        let mut r = Report::new();
        verify(&objs, &mut r, false, "child");
        // Tell the parent the child has read every page (its file pages
        // are mapped again), then stay until the parent has measured the sharing.
        // SAFETY: one byte from a literal into our pipe.
        unsafe { libc::write(q[1], b"v".as_ptr().cast(), 1) };
        let mut b = [0u8; 1];
        // SAFETY: reads one byte into a live array.
        unsafe { libc::read(done[0], b.as_mut_ptr().cast(), 1) };
        // SAFETY: ends the child.
        unsafe { libc::_exit(i32::from(!r.ok())) };
    }
    // SAFETY: our own descriptor: a dead child then reads as EOF.
    unsafe { libc::close(q[1]) };
    let mut one = [0u8; 1];
    // SAFETY: reads one byte into a live array: the child is set up.
    unsafe { libc::read(q[0], one.as_mut_ptr().cast(), 1) };
    // The parent writes elsewhere in the same mappings after the fork:
    // the pages it did not write stay shared with the child.
    for o in &mut objs {
        o.map.bytes_mut()[500 * PAGE + 9] ^= 0x33;
        o.cowed[500] = true;
        o.expect[500 * PAGE + 9] ^= 0x33;
    }
    let shared_before: Vec<u64> = objs.iter().map(|o| shared_kb(o.map.start())).collect();
    proto.ready_and_wait();
    if corrupt {
        objs[0].map.bytes_mut()[150 * PAGE + 120] ^= 1;
    }
    verify(&objs, report, false, "parent");
    // Copy-on-write sharing with the child kept (memory not doubled),
    // measured once the child has read its pages too: until then the
    // file's page-cache pages are mapped only in the parent (the restore
    // maps them lazily, as fault-around did before).
    // SAFETY: reads one byte into a live array.
    unsafe { libc::read(q[0], one.as_mut_ptr().cast(), 1) };
    for (o, &before) in objs.iter().zip(&shared_before) {
        let after = shared_kb(o.map.start());
        report.check(before > 0 && after * 10 >= before * 9, || {
            format!("{}: Shared {before} kB before, {after} kB after", o.name)
        });
    }
    // SAFETY: one byte from a literal into our pipe: the child may go.
    unsafe { libc::write(done[1], b"d".as_ptr().cast(), 1) };
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child's check failed: status {st:#x}")
    });
    // Then (the child done reading) the objects written all over.
    verify(&objs, report, true, "parent");
    let _ = std::fs::remove_file(format!("/dev/shm/stasis-private-{}", std::process::id()));
}

/// Shared_Clean + Shared_Dirty (kB) of the first VMA starting at `start`,
/// from smaps. Both: writeback may clean the file's page-cache pages
/// between the two measurements (it did on a busy CI machine).
fn shared_kb(start: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{start:x}-");
    let mut inside = false;
    let mut total = 0;
    for line in smaps.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            inside = line.starts_with(&head);
        } else if inside {
            for key in ["Shared_Clean:", "Shared_Dirty:"] {
                if let Some(v) = line.strip_prefix(key) {
                    total += v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                }
            }
        }
    }
    total
}

/// The mapping's bytes (PROT_NONE part made readable for the copy).
fn snapshot(map: &Mapping) -> Vec<u8> {
    // SAFETY: mprotect of our own mapping, put back below.
    unsafe { libc::mprotect(map.addr.add(700 * PAGE).cast(), 40 * PAGE, libc::PROT_READ) };
    let v = map.bytes().to_vec();
    // SAFETY: as above.
    unsafe { libc::mprotect(map.addr.add(700 * PAGE).cast(), 40 * PAGE, libc::PROT_NONE) };
    v
}

fn verify(objs: &[Obj], report: &mut Report, write_object: bool, who: &str) {
    for o in objs {
        let now = snapshot(&o.map);
        let bad: Vec<usize> = (0..NPAGES)
            .filter(|p| now[p * PAGE..(p + 1) * PAGE] != o.expect[p * PAGE..(p + 1) * PAGE])
            .collect();
        report.check(bad.is_empty(), || {
            format!(
                "{who}: {}: {} pages differ, first {:?}",
                o.name,
                bad.len(),
                &bad[..bad.len().min(8)]
            )
        });
        if !write_object || o.fd < 0 {
            continue;
        }
        // The object written all over: exactly the uncopied pages follow.
        let fill = vec![0xa5u8; NPAGES * PAGE];
        pwrite(o.fd, &fill, 0);
        let now = snapshot(&o.map);
        let wrong: Vec<usize> = (0..NPAGES)
            .filter(|&p| {
                let follows = now[p * PAGE..(p + 1) * PAGE].iter().all(|&b| b == 0xa5);
                follows == o.cowed[p]
            })
            .collect();
        report.check(wrong.is_empty(), || {
            format!(
                "{who}: {}: {} pages do not share the object as before (copied on write or not), first {:?}",
                o.name,
                wrong.len(),
                &wrong[..wrong.len().min(8)]
            )
        });
    }
}

/// `key:` (kB) of the smaps entry starting at `start`.
fn smaps_field(start: usize, key: &str) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{start:x}-");
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if !first.ends_with(':') {
            inside = line.starts_with(&head);
        } else if inside && first == key {
            return line[key.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok();
        }
    }
    None
}

fn hugetlb(proto: &Proto, corrupt: bool, report: &mut Report) {
    const HUGE: usize = 2 << 20;
    const LEN: usize = 4 * HUGE;
    // SAFETY: a fresh mapping at a kernel-chosen address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | (21 << 26),
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::process::exit(4);
    }
    let map = Mapping {
        addr: p.cast(),
        len: LEN,
    };
    let mut rng = Rng::new(0x4a9e_7001);
    // Huge pages 1 and 3 written (MAP_POPULATE-free: faults allocate them;
    // without a free huge page the fault is SIGBUS, so check first).
    let free = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if free < 2 {
        std::process::exit(4);
    }
    rng.fill(&mut map.bytes_mut()[HUGE..2 * HUGE]);
    rng.fill(&mut map.bytes_mut()[3 * HUGE..4 * HUGE]);
    let want1 = map.bytes()[HUGE..2 * HUGE].to_vec();
    let want3 = map.bytes()[3 * HUGE..].to_vec();
    let start = map.start();
    let page_kb = smaps_field(start, "KernelPageSize:");
    let huge_kb = smaps_field(start, "Private_Hugetlb:");

    // Shared hugetlb memory with a child.
    // SAFETY: a fresh mapping at a kernel-chosen address.
    let sp = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | (21 << 26),
            -1,
            0,
        )
    };
    if sp == libc::MAP_FAILED {
        std::process::exit(4);
    }
    let shared = Mapping {
        addr: sp.cast(),
        len: 2 * HUGE,
    };
    rng.fill(&mut shared.bytes_mut()[..HUGE]);
    let mut child_page = vec![0u8; HUGE];
    rng.fill(&mut child_page);
    let (mut q, mut fin) = ([0i32; 2], [0i32; 2]);
    // SAFETY: valid out arrays.
    unsafe { libc::pipe(q.as_mut_ptr()) };
    // SAFETY: as above.
    unsafe { libc::pipe(fin.as_mut_ptr()) };
    // SAFETY: single-threaded: fork is safe; the child exits with _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        shared.bytes_mut()[HUGE..].copy_from_slice(&child_page);
        // SAFETY: one byte from a literal into our pipe.
        unsafe { libc::write(q[1], b"r".as_ptr().cast(), 1) };
        proto.wait_go();
        shared.bytes_mut()[12] = 0x77; // seen by the parent: one object
                                       // SAFETY: one byte into our pipe, then the end of the child.
        unsafe {
            libc::write(fin[1], b"d".as_ptr().cast(), 1);
            libc::_exit(0)
        };
    }
    let mut one = [0u8; 1];
    // SAFETY: reads one byte into a live array.
    unsafe { libc::read(q[0], one.as_mut_ptr().cast(), 1) };
    let shared_want0 = shared.bytes()[..HUGE].to_vec();
    let shared_kb = smaps_field(shared.start(), "KernelPageSize:");
    proto.ready_and_wait();
    if corrupt {
        map.bytes_mut()[3 * HUGE + 77] ^= 1;
    }
    // SAFETY: reads one byte into a live array: the child wrote after go.
    unsafe { libc::read(fin[0], one.as_mut_ptr().cast(), 1) };
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    report.check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
        format!("child status {st:#x}")
    });
    report.eq("shared KernelPageSize", Some(2048), shared_kb);
    report.eq(
        "shared KernelPageSize after restore",
        shared_kb,
        smaps_field(shared.start(), "KernelPageSize:"),
    );
    let mut want0 = shared_want0;
    want0[12] = 0x77;
    report.check(shared.bytes()[..HUGE] == want0[..], || {
        "shared huge page 0 differs (or the child's write after restore is not seen)".into()
    });
    report.check(shared.bytes()[HUGE..] == child_page[..], || {
        "shared huge page 1 (written by the child) differs".into()
    });
    report.eq("KernelPageSize", Some(2048), page_kb);
    report.eq(
        "KernelPageSize after restore",
        page_kb,
        smaps_field(start, "KernelPageSize:"),
    );
    report.eq("Private_Hugetlb before", Some(4096), huge_kb);
    report.eq(
        "Private_Hugetlb after restore (only the touched huge pages)",
        huge_kb,
        smaps_field(start, "Private_Hugetlb:"),
    );
    report.check(map.bytes()[HUGE..2 * HUGE] == want1[..], || {
        "huge page 1 differs".into()
    });
    report.check(map.bytes()[3 * HUGE..] == want3[..], || {
        "huge page 3 differs".into()
    });
    // Read last: this faults in the untouched huge pages.
    report.check(map.bytes()[..HUGE].iter().all(|&b| b == 0), || {
        "untouched huge page 0 is not zero".into()
    });
}

fn hugetlbfs(proto: &Proto, mnt: &str, corrupt: bool, report: &mut Report) {
    const HUGE: usize = 2 << 20;
    let path = CString::new(format!("{mnt}/file")).expect("path");
    // SAFETY: valid path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
    assert!(fd >= 0, "open on hugetlbfs");
    // SAFETY: ftruncate of our own file.
    unsafe { libc::ftruncate(fd, (2 * HUGE) as i64) };
    let map = |flags: i32| -> Option<Mapping> {
        // SAFETY: a fresh mapping of our file at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * HUGE,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        (p != libc::MAP_FAILED).then(|| Mapping {
            addr: p.cast(),
            len: 2 * HUGE,
        })
    };
    let (Some(shared), Some(private)) = (map(libc::MAP_SHARED), map(libc::MAP_PRIVATE)) else {
        std::process::exit(4);
    };
    let mut rng = Rng::new(0x4a9e_7002);
    rng.fill(&mut shared.bytes_mut()[..HUGE]);
    rng.fill(&mut private.bytes_mut()[HUGE..]);
    let want_shared = shared.bytes().to_vec();
    let want_private = private.bytes().to_vec();
    let kb = (
        smaps_field(shared.start(), "KernelPageSize:"),
        smaps_field(private.start(), "KernelPageSize:"),
    );
    proto.ready_and_wait();
    if corrupt {
        private.bytes_mut()[HUGE + 5] ^= 1;
    }
    report.eq(
        "KernelPageSize (shared, private)",
        (Some(2048), Some(2048)),
        kb,
    );
    report.eq(
        "KernelPageSize after restore",
        kb,
        (
            smaps_field(shared.start(), "KernelPageSize:"),
            smaps_field(private.start(), "KernelPageSize:"),
        ),
    );
    report.check(shared.bytes() == want_shared, || {
        "shared hugetlbfs mapping differs".into()
    });
    report.check(private.bytes() == want_private, || {
        "private hugetlbfs mapping differs".into()
    });
    shared.bytes_mut()[99] ^= 0xff;
    report.eq(
        "write through the shared mapping seen by the private one",
        shared.bytes()[99],
        private.bytes()[99],
    );
    // SAFETY: valid path: the harness unmounts the directory.
    unsafe { libc::unlink(path.as_ptr()) };
}
