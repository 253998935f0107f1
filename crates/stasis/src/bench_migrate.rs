//! `stasis bench` cases of migration (issue 13):
//!
//! * `migrate4g`: a dense workload (4 GiB; 256 MiB with `--quick`) that
//!   keeps writing 64 MiB/s. First a full dump of it with the tree left
//!   running (no pre-copy: its frozen time is the reference), then
//!   `stasis migrate` of it to a page server on 127.0.0.1 (pre-copy rounds
//!   until the dirty set stops shrinking, final dump, transfer), then the
//!   restore at the destination, verified by the workload. Baseline: a raw
//!   TCP copy over 127.0.0.1 of as many bytes as the migration sent, from
//!   populated memory into a file on the same filesystem, fsync'd.
//! * `compress`: zstd over a buffer whose pages are, in runs of 16 pages,
//!   by turns all zero, text-like (log lines drawn from a vocabulary with
//!   numbers) and pseudo-random; compression ratio and GB/s (raw bytes per
//!   second) both ways, at levels 1 and 3, one thread.

use crate::criu_cmd::Request;
use anyhow::{bail, Context, Result};
use stasis_sys::buf::AnonBuf;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// One round of the migration case.
#[derive(Debug, Clone)]
pub struct MigrateSample {
    /// Frozen time of a full dump (`-R`) of the same process, no pre-copy.
    pub full_frozen: Duration,
    pub figures: crate::migrate::Figures,
    /// Restore at the destination.
    pub restore: Duration,
    /// The raw TCP copy of `figures.sent` bytes.
    pub raw_copy: Duration,
}

/// `stasis migrate` of `pid` to a page server on 127.0.0.1 (a thread of
/// ours) writing into `work/dest`; the source images go to `work/src`,
/// removed afterwards.
pub fn migrate_over_loopback(work: &Path, pid: u32) -> Result<crate::migrate::Figures> {
    let dest = work.join("dest");
    let l = crate::page_server::listen(Some("127.0.0.1"), 0, None)?;
    let port = l.tcp.local_addr()?.port();
    let server = {
        let dest = dest.clone();
        std::thread::spawn(move || crate::page_server::serve_on(&l, &dest))
    };
    let req = Request {
        command: "migrate".into(),
        tree: Some(pid),
        images_dir: Some(work.join("src")),
        page_server: true,
        port: Some(port),
        address: Some("127.0.0.1".into()),
        network_lock: Some(stasis_sys::netlock::Method::Skip),
        ..Request::default()
    };
    let figures = crate::migrate::run(&req);
    if figures.is_err() {
        // Unblock a server still waiting for its connection.
        let _ = TcpStream::connect(("127.0.0.1", port));
    }
    let served = server
        .join()
        .map_err(|_| anyhow::anyhow!("page server thread panicked"))?;
    let figures = figures.context("migrate")?;
    served.context("page server")?;
    // Only the destination's copy restores; the pages should not sit in
    // the page cache twice.
    fs::remove_dir_all(work.join("src"))?;
    Ok(figures)
}

/// Copies `bytes` from populated memory over a TCP connection on
/// 127.0.0.1 into a file in `dir`, fsync'd; returns how long it took.
pub fn raw_tcp_copy(dir: &Path, bytes: u64) -> Result<Duration> {
    let chunk = (64usize << 20).min(usize::try_from(bytes)?.max(4096));
    let mut buf = AnonBuf::new(chunk)?;
    buf.populate()?;
    for (i, b) in buf.as_mut_slice().iter_mut().step_by(4096).enumerate() {
        *b = i as u8 | 1;
    }
    let l = TcpListener::bind("127.0.0.1:0")?;
    let at = l.local_addr()?;
    let path = dir.join("raw-copy.tmp");
    let _ = fs::remove_file(&path);
    let t = Instant::now();
    let rx = {
        let path = path.clone();
        std::thread::spawn(move || -> Result<u64> {
            let (mut s, _) = l.accept()?;
            let mut f = fs::File::create(&path)?;
            let mut b = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = s.read(&mut b)?;
                if k == 0 {
                    break;
                }
                f.write_all(&b[..k])?;
                n += k as u64;
            }
            f.sync_all()?;
            Ok(n)
        })
    };
    let mut s = TcpStream::connect(at)?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk as u64))?;
        s.write_all(&buf.as_slice()[..n])?;
        left -= n as u64;
    }
    drop(s);
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("raw copy thread panicked"))??;
    let d = t.elapsed();
    fs::remove_file(&path)?;
    if got != bytes {
        bail!("raw copy: {got} of {bytes} bytes arrived");
    }
    Ok(d)
}

/// Fills `data` (a multiple of 4 KiB) with the compression case's mix.
pub fn realistic_pages(data: &mut [u8]) {
    const WORDS: &[&str] = &[
        "GET",
        "POST",
        "/api/v1/users",
        "/static/app.js",
        "200",
        "404",
        "INFO",
        "WARN",
        "request",
        "completed",
        "in",
        "ms",
        "user_id=",
        "session",
        "cache",
        "miss",
        "hit",
        "{\"id\":",
        "\"name\":",
        "\"status\":\"ok\"}",
        "connection",
        "from",
        "10.0.0.",
        "port",
        "latency",
        "bytes",
        "sent",
        "received",
        "worker",
        "thread",
        "queue",
        "depth",
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (i, page) in data.chunks_mut(4096).enumerate() {
        match (i / 16) % 3 {
            0 => page.fill(0),
            1 => {
                let mut at = 0;
                while at < page.len() {
                    let r = next();
                    let w = WORDS[(r % WORDS.len() as u64) as usize].as_bytes();
                    let num = format!("{}", (r >> 20) % 10_000);
                    for part in [
                        w,
                        b" ",
                        num.as_bytes(),
                        if r & 7 == 0 { b"\n" } else { b" " },
                    ] {
                        let n = part.len().min(page.len() - at);
                        page[at..at + n].copy_from_slice(&part[..n]);
                        at += n;
                    }
                }
            }
            _ => {
                for c in page.chunks_mut(8) {
                    let v = next().to_le_bytes();
                    c.copy_from_slice(&v[..c.len()]);
                }
            }
        }
    }
}

/// One level's figures of the compression case.
#[derive(Debug, Clone)]
pub struct CompressSample {
    pub level: i32,
    pub raw: u64,
    pub stored: u64,
    pub compress: Duration,
    pub decompress: Duration,
}

/// Compresses and decompresses `mib` MiB of [`realistic_pages`] at levels
/// 1 and 3, checking the round trip.
pub fn run_compress(mib: u64) -> Result<Vec<CompressSample>> {
    let len = usize::try_from(mib << 20)?;
    let mut data = vec![0u8; len];
    realistic_pages(&mut data);
    let mut out = Vec::new();
    for level in [1, 3] {
        let c = stasis_image::compress::Compression { level };
        let t = Instant::now();
        let z = stasis_image::compress::compress_bytes(&data, c)?;
        let compress = t.elapsed();
        let t = Instant::now();
        let back = stasis_image::compress::decompress_bytes(&z, len)?;
        let decompress = t.elapsed();
        if back != data {
            bail!("compress: level {level}: the round trip changed the data");
        }
        out.push(CompressSample {
            level,
            raw: len as u64,
            stored: z.len() as u64,
            compress,
            decompress,
        });
    }
    Ok(out)
}

fn gbs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

/// The compression case's lines.
pub fn print_compress(mib: u64, v: &[CompressSample]) {
    println!(
        "\ncompress (zstd, one thread) on {mib} MiB of pages, in runs of 16 pages by turns zero, text-like (log lines) and pseudo-random:"
    );
    for s in v {
        println!(
            "  level {}: ratio {:.2} ({} -> {} MiB), compress {:.2} GB/s, decompress {:.2} GB/s",
            s.level,
            s.raw as f64 / s.stored.max(1) as f64,
            s.raw >> 20,
            s.stored >> 20,
            gbs(s.raw, s.compress),
            gbs(s.raw, s.decompress)
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// The migration case's lines (medians by total time).
pub fn print_migrate(name: &str, v: &[MigrateSample]) {
    let mut v = v.to_vec();
    v.sort_by_key(|s| s.figures.total + s.restore);
    let s = &v[v.len() / 2];
    let f = &s.figures;
    let total = f.total + s.restore;
    println!(
        "\n{name} (median of {} by total): frozen without pre-copy (full dump -R) {} ms; with pre-copy (`stasis migrate`, {} rounds: {} MiB) final dump frozen {} ms ({} MiB) = {:.3} of it",
        v.len(),
        ms(s.full_frozen),
        f.rounds.len(),
        f.rounds
            .iter()
            .map(|b| format!("{:.1}", *b as f64 / (1 << 20) as f64))
            .collect::<Vec<_>>()
            .join(" / "),
        ms(f.frozen),
        f.final_bytes >> 20,
        f.frozen.as_secs_f64() / s.full_frozen.as_secs_f64().max(1e-9)
    );
    println!(
        "  pre-copy rounds frozen: {} ms",
        f.round_frozen
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "  migration over 127.0.0.1: {} ms (pre-copy + final dump + transfer {} ms, restore {} ms) for {} MiB sent; raw TCP copy of the same bytes {} ms: {:.2}x the raw copy",
        ms(total),
        ms(f.total),
        ms(s.restore),
        f.sent >> 20,
        ms(s.raw_copy),
        total.as_secs_f64() / s.raw_copy.as_secs_f64().max(1e-9)
    );
}
