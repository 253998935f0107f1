//! Every parser must return (Ok or Err) on any input, never panic: feed each
//! captured sample, all its prefixes, byte-level mutations and random bytes
//! to every parser.

use stasis_proc::*;

const SAMPLES: &[&[u8]] = &[
    include_bytes!("data/maps"),
    include_bytes!("data/smaps"),
    include_bytes!("data/stat"),
    include_bytes!("data/status"),
    include_bytes!("data/limits"),
    include_bytes!("data/mountinfo"),
    include_bytes!("data/timers"),
    include_bytes!("data/auxv"),
    include_bytes!("data/children"),
    include_bytes!("data/fdinfo_devnull"),
    include_bytes!("data/fdinfo_eventfd"),
    include_bytes!("data/fdinfo_append"),
    include_bytes!("data/fdinfo_deleted"),
];

/// Runs every parser on `b`; the results are discarded, only panics matter.
fn all_parsers(b: &[u8]) {
    let _ = parse_maps(b);
    let _ = parse_smaps(b);
    let _ = parse_stat(b);
    let _ = parse_status(b);
    let _ = parse_fdinfo(b);
    let _ = parse_limits(b);
    let _ = parse_auxv(b);
    let _ = parse_mountinfo(b);
    let _ = parse_timers(b);
    let _ = parse_pid_list(b);
    let _ = pagemap::entries(b).map(pagemap::pfn).count();
}

/// xorshift64*: deterministic, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that are meaningful to some parser, so mutations hit interesting paths.
const SPECIAL: &[u8] = b" \t\n:-/()\\0123456789abcdefx.[]\xff\x80";

#[test]
fn samples_parse() {
    // Sanity: each sample is accepted by its own parser.
    assert!(parse_maps(SAMPLES[0]).is_ok());
    assert!(parse_smaps(SAMPLES[1]).is_ok());
    assert!(parse_stat(SAMPLES[2]).is_ok());
    assert!(parse_status(SAMPLES[3]).is_ok());
    assert!(parse_limits(SAMPLES[4]).is_ok());
    assert!(parse_mountinfo(SAMPLES[5]).is_ok());
    assert!(parse_timers(SAMPLES[6]).is_ok());
    assert!(parse_auxv(SAMPLES[7]).is_ok());
    assert!(parse_pid_list(SAMPLES[8]).is_ok());
    for s in &SAMPLES[9..] {
        assert!(parse_fdinfo(s).is_ok());
    }
}

#[test]
fn prefixes_and_suffixes() {
    for s in SAMPLES {
        // Every cut within the first 4 KiB (quadratic cost, so bounded) ...
        let head = &s[..s.len().min(4096)];
        for i in 0..=head.len() {
            all_parsers(&head[..i]);
            all_parsers(&head[i..]);
        }
        // ... and every cut at or next to a line boundary of the whole sample.
        for (i, _) in s.iter().enumerate().filter(|(_, &b)| b == b'\n') {
            for j in [i, i + 1] {
                if let Some(pre) = s.get(..j) {
                    all_parsers(pre);
                }
            }
        }
    }
}

#[test]
fn mutations() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for s in SAMPLES {
        for _ in 0..300 {
            let mut b = s.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                match rng.below(4) {
                    0 if !b.is_empty() => b[i] = SPECIAL[rng.below(SPECIAL.len())],
                    1 if !b.is_empty() => {
                        b.remove(i);
                    }
                    2 => b.insert(i.min(b.len()), SPECIAL[rng.below(SPECIAL.len())]),
                    _ if !b.is_empty() => b[i] = rng.next() as u8,
                    _ => {}
                }
            }
            all_parsers(&b);
        }
    }
}

#[test]
fn random_bytes() {
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let len = rng.below(300);
        let b: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(2) == 0 {
                    SPECIAL[rng.below(SPECIAL.len())]
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        all_parsers(&b);
    }
}

#[test]
fn line_shuffles() {
    // Lines of one file fed in the wrong order or duplicated.
    let mut rng = Rng(7);
    for s in SAMPLES {
        let lines: Vec<&[u8]> = s.split(|&b| b == b'\n').collect();
        for _ in 0..100 {
            let mut b = Vec::new();
            for _ in 0..lines.len() {
                b.extend_from_slice(lines[rng.below(lines.len())]);
                b.push(b'\n');
            }
            all_parsers(&b);
        }
    }
}
