//! The demonstration workload: counts forever, keeping its state in memory,
//! and prints one line every half second (to stdout, a log file in the demo).
//! After a checkpoint and restore it simply carries on counting.

use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    // Like any daemon, drop descriptors inherited from whoever started us
    // (a CI runner's pipes, say): they are not ours to keep.
    // SAFETY: close_range on our own descriptor table; nothing of ours uses fds >= 3 yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let start = Instant::now();
    // Some state worth keeping: 32 MiB of data and a running checksum of it.
    let mut data: Vec<u64> = (0..4u64 << 20)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let mut tick = 0u64;
    loop {
        let i = (tick as usize * 4096 * 7) % data.len();
        data[i] = data[i].rotate_left(7) ^ tick;
        let sum = data
            .iter()
            .step_by(4096)
            .fold(0u64, |a, &x| a.wrapping_add(x));
        println!(
            "pid {} tick {tick:>4} checksum {sum:016x} uptime {:>6.1}s",
            std::process::id(),
            start.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        tick += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
}
