//! `/proc/PID/numa_maps`: one line per mapping, its start address and the
//! memory policy that applies to it (the mapping's own from mbind, else the
//! task's from set_mempolicy; `default` when neither).

use crate::error::ParseError;

/// (start address, policy) of each mapping, in address order.
pub fn parse_numa_maps(text: &[u8]) -> Result<Vec<(u64, String)>, ParseError> {
    let text = std::str::from_utf8(text).map_err(|_| ParseError::new("numa_maps: not UTF-8"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(start), Some(policy)) = (words.next(), words.next()) else {
            return Err(ParseError::new(format!(
                "numa_maps line {}: expected an address and a policy",
                n + 1
            )));
        };
        let start = u64::from_str_radix(start, 16).map_err(|_| {
            ParseError::new(format!("numa_maps line {}: bad address {start:?}", n + 1))
        })?;
        out.push((start, policy.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        let text = b"55a801997000 default file=/usr/bin/head mapped=2 N0=2 kernelpagesize_kB=4\n\
7f0000000000 bind:0 anon=1 dirty=1 N0=1 kernelpagesize_kB=4\n\
7f0000100000 interleave:0-1\n";
        let v = parse_numa_maps(text).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], (0x55a8_0199_7000, "default".to_owned()));
        assert_eq!(v[1].1, "bind:0");
        assert_eq!(v[2].1, "interleave:0-1");
        assert!(parse_numa_maps(b"zz default\n").is_err());
        assert!(parse_numa_maps(b"1000\n").is_err());
    }
}
