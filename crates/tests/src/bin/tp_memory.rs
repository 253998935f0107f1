//! tp_memory: the address space survives checkpoint/restore.
//!
//! Usage: `tp_memory WORKDIR [--size-mib N] [--sparse-mib N] [--corrupt]`
//!
//! State: N MiB (default 256) of pseudo-random anonymous memory; a sparse
//! anonymous area (default 64 MiB, one page in 64 touched; its range and the
//! touched page count are written to `WORK/sparse` as `START END TOUCHED`, hex
//! addresses); a PROT_NONE guard area; a MAP_NORESERVE area; malloc'd heap
//! blocks and the brk value; a private, copy-on-write mapping of `WORK/data.bin`
//! with some pages modified; read-only file and anonymous mappings. After go it
//! checks all contents, that the data file is unchanged on disk, that
//! /proc/self/maps is identical line by line (except [vsyscall]), that the
//! smaps VmFlags of its own areas are unchanged, and the page counts of
//! the random area (Rss, Anonymous, Private_Dirty, AnonHugePages, Swap).

use stasis_tests::{grow_stack, hash, make_data_file, read_file_raw, Mapping, Proto, Report, Rng};
use std::ffi::CString;

const RANDOM_SEED: u64 = 0x5eed_0001;
const SPARSE_STRIDE: usize = 64;
const FILE_PAGES: usize = 16;
const COW_PAGES: [usize; 3] = [3, 7, 8];

struct Area {
    name: &'static str,
    start: usize,
    end: usize,
}

fn sparse_page_seed(i: usize) -> u64 {
    0xabc0_0000 ^ i as u64
}

fn main() {
    let (proto, args) = Proto::from_args();
    let pg = stasis_tests::page_size();
    let size = usize::try_from(args.num("size-mib", 256)).expect("size") << 20;
    let sparse_len = usize::try_from(args.num("sparse-mib", 64)).expect("size") << 20;
    let mut report = Report::new();

    // Grow the stack now so verification does not grow it later, and allocate
    // every buffer used between the two maps snapshots in advance.
    grow_stack(1 << 20);
    let mut maps_before = Vec::with_capacity(1 << 20);
    let mut maps_after = Vec::with_capacity(1 << 20);
    let mut smaps_before = Vec::with_capacity(8 << 20);
    let mut smaps_after = Vec::with_capacity(8 << 20);
    let maps_path = CString::new("/proc/self/maps").expect("path");
    let smaps_path = CString::new("/proc/self/smaps").expect("path");
    let mut areas: Vec<Area> = Vec::with_capacity(16);

    // 1. Pseudo-random anonymous memory, in a VMA of its own: PROT_NONE
    // reservations on both sides keep it from merging with a neighbour such
    // as the buffers above, whose pages the smaps reads themselves make
    // present, so that its smaps page counts measure only this area. It
    // starts on a 2 MiB boundary, as the kernel would place it anyway.
    let random = isolated_anon(size, pg);
    Rng::new(RANDOM_SEED).fill(random.bytes_mut());
    let random_hash = hash(random.bytes());
    areas.push(Area {
        name: "random",
        start: random.start(),
        end: random.start() + size,
    });

    // 2. Sparse area: one page in SPARSE_STRIDE touched, no huge pages.
    let sparse = Mapping::anon(sparse_len);
    // SAFETY: advice on our own fresh mapping.
    if unsafe { libc::madvise(sparse.addr.cast(), sparse_len, libc::MADV_NOHUGEPAGE) } != 0 {
        stasis_tests::fatal("madvise(MADV_NOHUGEPAGE)");
    }
    let mut touched = 0usize;
    for i in (0..sparse_len / pg).step_by(SPARSE_STRIDE) {
        Rng::new(sparse_page_seed(i)).fill(&mut sparse.bytes_mut()[i * pg..(i + 1) * pg]);
        touched += 1;
    }
    std::fs::write(
        proto.path("sparse"),
        format!(
            "{:x} {:x} {}\n",
            sparse.start(),
            sparse.start() + sparse_len,
            touched
        ),
    )
    .expect("write sparse");
    areas.push(Area {
        name: "sparse",
        start: sparse.start(),
        end: sparse.start() + sparse_len,
    });

    // 3. PROT_NONE guard area.
    let guard = Mapping::new(
        16 * pg,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    areas.push(Area {
        name: "guard",
        start: guard.start(),
        end: guard.start() + guard.len,
    });

    // 4. MAP_NORESERVE area, every 16th page written.
    let noreserve = Mapping::new(
        8 << 20,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    );
    for i in (0..noreserve.len / pg).step_by(16) {
        Rng::new(0x0e5e_0000 ^ i as u64).fill(&mut noreserve.bytes_mut()[i * pg..i * pg + 64]);
    }
    let noreserve_hash = hash(noreserve.bytes());
    areas.push(Area {
        name: "noreserve",
        start: noreserve.start(),
        end: noreserve.start() + noreserve.len,
    });

    // 5. Heap blocks from malloc (small: from brk).
    let mut blocks: Vec<(*mut u8, usize, u64)> = Vec::with_capacity(2000);
    let mut rng = Rng::new(0x4ea9);
    for _ in 0..2000 {
        let len = 16 + usize::try_from(rng.next_u64() % 2048).expect("len");
        // SAFETY: plain malloc; the block is never freed.
        let p = unsafe { libc::malloc(len) }.cast::<u8>();
        if p.is_null() {
            stasis_tests::fatal("malloc");
        }
        // SAFETY: p points to len writable bytes owned by us.
        let s = unsafe { std::slice::from_raw_parts_mut(p, len) };
        rng.fill(s);
        blocks.push((p, len, hash(s)));
    }
    // 6. Private file mapping with copy-on-write pages.
    let data_path = proto.path("data.bin");
    let data = make_data_file(&data_path, FILE_PAGES * pg, 0xda7a);
    let data_hash = hash(&data);
    let data_fd = std::fs::File::open(&data_path).expect("open data.bin");
    let filemap = Mapping::new(
        FILE_PAGES * pg,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
        std::os::fd::AsRawFd::as_raw_fd(&data_fd),
        0,
    );
    drop(data_fd);
    let mut expected = data.clone();
    for &p in &COW_PAGES {
        let mut r = Rng::new(0xc0 ^ p as u64);
        r.fill(&mut expected[p * pg..(p + 1) * pg]);
        filemap.bytes_mut()[p * pg..(p + 1) * pg].copy_from_slice(&expected[p * pg..(p + 1) * pg]);
    }
    // Read the unmodified pages too, so they are present in the page tables.
    let _ = std::hint::black_box(hash(filemap.bytes()));
    areas.push(Area {
        name: "cow file",
        start: filemap.start(),
        end: filemap.start() + filemap.len,
    });

    // 7. Read-only mappings: a file and anonymous memory made read-only.
    let ro_path = proto.path("ro.bin");
    let ro_data = make_data_file(&ro_path, 8 * pg + 123, 0x0f0);
    let ro_fd = std::fs::File::open(&ro_path).expect("open ro.bin");
    let romap = Mapping::new(
        ro_data.len(),
        libc::PROT_READ,
        libc::MAP_PRIVATE,
        std::os::fd::AsRawFd::as_raw_fd(&ro_fd),
        0,
    );
    drop(ro_fd);
    let _ = std::hint::black_box(hash(romap.bytes()));
    areas.push(Area {
        name: "ro file",
        start: romap.start(),
        end: romap.start() + romap.len,
    });
    // A shared read-only mapping of a file opened for writing: it may be
    // made writable later (VmFlags `sh mw`), and then writes reach the file.
    let shro_path = proto.path("shro.bin");
    make_data_file(&shro_path, 2 * pg, 0x5a5);
    let shro_fd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&shro_path)
        .expect("open shro.bin");
    let shro = Mapping::new(
        2 * pg,
        libc::PROT_READ,
        libc::MAP_SHARED,
        std::os::fd::AsRawFd::as_raw_fd(&shro_fd),
        0,
    );
    drop(shro_fd);
    areas.push(Area {
        name: "shared ro file, may write",
        start: shro.start(),
        end: shro.start() + shro.len,
    });
    let anon_ro = Mapping::anon(4 * pg);
    Rng::new(0xa120).fill(anon_ro.bytes_mut());
    let anon_ro_hash = hash(anon_ro.bytes());
    // SAFETY: changes protection of our own mapping; no references into it are held.
    if unsafe { libc::mprotect(anon_ro.addr.cast(), anon_ro.len, libc::PROT_READ) } != 0 {
        stasis_tests::fatal("mprotect");
    }
    areas.push(Area {
        name: "ro anon",
        start: anon_ro.start(),
        end: anon_ro.start() + anon_ro.len,
    });

    // Neighbours that are separate VMAs although their flags are identical
    // (their anon_vmas differ, as for a child's inherited area beside one of
    // its own): A holds data; B was written once, moved beside A and its page
    // dropped again (no pages); C holds data and was moved beside B.
    let apart = Mapping::anon(6 * pg);
    Rng::new(0xa9a7).fill(&mut apart.bytes_mut()[..2 * pg]);
    for (k, seed) in [(1usize, None), (2, Some(0xc0c0u64))] {
        let m = Mapping::anon(2 * pg);
        m.bytes_mut()[0] = 1;
        match seed {
            Some(seed) => Rng::new(seed).fill(m.bytes_mut()),
            // SAFETY: drops the pages of our own mapping; nothing refers to them.
            None => unsafe {
                libc::madvise(m.addr.cast(), m.len, libc::MADV_DONTNEED);
            },
        }
        let to = apart.start() + 2 * k * pg;
        // SAFETY: moves our own mapping over the tail of another of ours.
        let r = unsafe {
            libc::mremap(
                m.addr.cast(),
                m.len,
                m.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        if r as usize != to {
            stasis_tests::fatal("mremap");
        }
    }
    let apart_hash = hash(apart.bytes());
    for (k, name) in [(1, "apart B"), (2, "apart C")] {
        areas.push(Area {
            name,
            start: apart.start() + 2 * k * pg,
            end: apart.start() + 2 * (k + 1) * pg,
        });
    }

    // Snapshot the layout, then hand over to the harness.
    // SAFETY: sbrk(0) only queries the break.
    let brk_before = unsafe { libc::sbrk(0) } as usize;
    read_file_raw(&maps_path, &mut maps_before).expect("read maps");
    read_file_raw(&smaps_path, &mut smaps_before).expect("read smaps");
    proto.ready_and_wait();
    read_file_raw(&maps_path, &mut maps_after).expect("read maps");
    read_file_raw(&smaps_path, &mut smaps_after).expect("read smaps");
    // SAFETY: sbrk(0) only queries the break.
    let brk_after = unsafe { libc::sbrk(0) } as usize;

    if args.corrupt() {
        random.bytes_mut()[size / 2] ^= 0x40;
    }

    // Verify.
    let h = hash(random.bytes());
    if h != random_hash {
        let mut rng = Rng::new(RANDOM_SEED);
        let mut page = vec![0u8; pg];
        let mut bad = Vec::new();
        for (i, got) in random.bytes().chunks(pg).enumerate() {
            rng.fill(&mut page);
            if got != page.as_slice() {
                bad.push(i);
            }
        }
        report.fail(format!(
            "random area {:#x}: hash {h:#x} != {random_hash:#x}; {} bad pages, first at offset {:#x}",
            random.start(),
            bad.len(),
            bad.first().map_or(0, |i| i * pg)
        ));
    }

    let mut expect_page = vec![0u8; pg];
    let mut sparse_bad = Vec::new();
    for (i, got) in sparse.bytes().chunks(pg).enumerate() {
        if i % SPARSE_STRIDE == 0 {
            Rng::new(sparse_page_seed(i)).fill(&mut expect_page);
            if got != expect_page.as_slice() {
                sparse_bad.push(format!("touched page {i}"));
            }
        } else if got.iter().any(|&b| b != 0) {
            sparse_bad.push(format!("untouched page {i} not zero"));
        }
    }
    report.check(sparse_bad.is_empty(), || {
        format!(
            "sparse area: {} bad pages: {:?}",
            sparse_bad.len(),
            &sparse_bad[..sparse_bad.len().min(5)]
        )
    });

    report.eq(
        "noreserve area hash",
        noreserve_hash,
        hash(noreserve.bytes()),
    );

    let bad_blocks: Vec<usize> = blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| {
            // SAFETY: each block is a live malloc allocation of b.1 bytes.
            let s = unsafe { std::slice::from_raw_parts(b.0, b.1) };
            hash(s) != b.2
        })
        .map(|(i, _)| i)
        .collect();
    report.check(bad_blocks.is_empty(), || {
        format!(
            "{} of {} heap blocks changed, e.g. #{:?}",
            bad_blocks.len(),
            blocks.len(),
            bad_blocks.first()
        )
    });
    report.eq("brk (sbrk(0))", brk_before, brk_after);

    for (i, (got, want)) in filemap
        .bytes()
        .chunks(pg)
        .zip(expected.chunks(pg))
        .enumerate()
    {
        if got != want {
            let kind = if COW_PAGES.contains(&i) {
                "modified (COW)"
            } else {
                "unmodified"
            };
            report.fail(format!("private file mapping: {kind} page {i} differs"));
        }
    }
    let on_disk = std::fs::read(&data_path).expect("read data.bin");
    report.eq("data.bin on disk (hash)", data_hash, hash(&on_disk));
    report.check(romap.bytes() == ro_data.as_slice(), || {
        "read-only file mapping differs from ro.bin".into()
    });
    // It may become writable (VM_MAYWRITE), as before; it is made
    // read-only again at once, and nothing is written (a later restore of
    // the same image checks the file is unchanged).
    // SAFETY: changes protection of our own shared mapping; nothing is written.
    let made_writable = unsafe {
        let r = libc::mprotect(
            shro.addr.cast(),
            shro.len,
            libc::PROT_READ | libc::PROT_WRITE,
        );
        libc::mprotect(shro.addr.cast(), shro.len, libc::PROT_READ);
        r
    };
    report.eq(
        "mprotect(PROT_WRITE) of the shared mapping",
        0,
        made_writable,
    );
    report.eq(
        "read-only anonymous mapping hash",
        anon_ro_hash,
        hash(anon_ro.bytes()),
    );

    report.eq(
        "kept-apart neighbours hash",
        apart_hash,
        hash(apart.bytes()),
    );
    let starts = |maps: &[u8]| -> Vec<bool> {
        // A may merge with whatever precedes it; B and C must start VMAs.
        (1..3)
            .map(|k| {
                let at = format!("{:x}-", apart.start() + 2 * k * pg);
                maps.split(|&b| b == b'\n')
                    .any(|l| l.starts_with(at.as_bytes()))
            })
            .collect()
    };
    report.eq(
        "kept-apart neighbours start separate VMAs (before: must be all true)",
        vec![true; 2],
        starts(&maps_before),
    );
    report.eq(
        "kept-apart neighbours start separate VMAs after restore",
        vec![true; 2],
        starts(&maps_after),
    );
    compare_maps(&mut report, &maps_before, &maps_after);
    compare_vmflags(&mut report, &areas, &smaps_before, &smaps_after);
    compare_pages(&mut report, random.start(), &smaps_before, &smaps_after);

    proto.finish(&report);
}

/// `len` bytes of private anonymous memory on a 2 MiB boundary, between
/// PROT_NONE areas of at least one page.
fn isolated_anon(len: usize, pg: usize) -> Mapping {
    const ALIGN: usize = 2 << 20;
    let reserve = Mapping::new(
        len + 2 * ALIGN,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    );
    let at = (reserve.start() + pg).next_multiple_of(ALIGN);
    // SAFETY: replaces part of our own PROT_NONE reservation, which nothing
    // refers to, with fresh memory.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p as usize != at {
        stasis_tests::fatal("mmap(MAP_FIXED) in the reservation");
    }
    Mapping {
        addr: p.cast(),
        len,
    }
}

/// Compares /proc/self/maps line by line, ignoring [vsyscall].
fn compare_maps(report: &mut Report, before: &[u8], after: &[u8]) {
    let lines = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .lines()
            .filter(|l| !l.ends_with("[vsyscall]"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let (b, a) = (lines(before), lines(after));
    let missing: Vec<&String> = b.iter().filter(|l| !a.contains(l)).collect();
    let extra: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        report.fail(format!(
            "/proc/self/maps differs: lost {} lines {:?}; new {} lines {:?}",
            missing.len(),
            &missing[..missing.len().min(6)],
            extra.len(),
            &extra[..extra.len().min(6)]
        ));
    } else if b != a {
        report.fail("/proc/self/maps: same lines in a different order".to_string());
    }
}

/// The rest of the smaps line `key` of the VMA starting at `start`.
fn smaps_field(smaps: &[u8], start: usize, key: &str) -> Option<String> {
    let text = String::from_utf8_lossy(smaps);
    let mut in_vma = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if !first.ends_with(':') {
            if let Some((s, _)) = first.split_once('-') {
                if let Ok(addr) = usize::from_str_radix(s, 16) {
                    in_vma = addr == start;
                    continue;
                }
            }
        }
        if in_vma {
            if let Some(f) = line.strip_prefix(key).and_then(|l| l.strip_prefix(':')) {
                return Some(f.trim().to_string());
            }
        }
    }
    None
}

/// VmFlags of the VMA starting at `start` (smaps), without the soft-dirty flag.
fn vmflags(smaps: &[u8], start: usize) -> Option<Vec<String>> {
    smaps_field(smaps, start, "VmFlags").map(|f| {
        f.split_whitespace()
            .filter(|f| *f != "sd")
            .map(str::to_string)
            .collect()
    })
}

/// The page counts of the big anonymous area (filled by UFFDIO_COPY at
/// restore, where the kernel allows): every page present, anonymous,
/// dirty, none huge or swapped, as before.
fn compare_pages(report: &mut Report, start: usize, before: &[u8], after: &[u8]) {
    for key in ["Rss", "Anonymous", "Private_Dirty", "AnonHugePages", "Swap"] {
        let (b, a) = (
            smaps_field(before, start, key),
            smaps_field(after, start, key),
        );
        report.check(b.is_some() && b == a, || {
            format!("smaps {key} of the random area {start:#x}: before {b:?}, after {a:?}")
        });
    }
}

fn compare_vmflags(report: &mut Report, areas: &[Area], before: &[u8], after: &[u8]) {
    for a in areas {
        let (b, f) = (vmflags(before, a.start), vmflags(after, a.start));
        if b.is_none() {
            // Merged into a neighbour: maps comparison covers the layout.
            continue;
        }
        report.check(b == f, || {
            format!(
                "VmFlags of {} area {:#x}-{:#x}: before {b:?}, after {f:?}",
                a.name, a.start, a.end
            )
        });
    }
}
