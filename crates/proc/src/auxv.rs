//! `/proc/PID/auxv`.

use crate::util::err;
use crate::ParseError;

/// Parses `/proc/PID/auxv`: native-endian `u64` (type, value) pairs, returned
/// flat as `[type0, value0, type1, value1, ...]` up to and including the
/// `AT_NULL` pair (type 0). Anything after `AT_NULL` is ignored; input
/// without `AT_NULL` (including empty input) is an error.
pub fn parse_auxv(bytes: &[u8]) -> Result<Vec<u64>, ParseError> {
    let mut out = Vec::new();
    for pair in bytes.chunks(16) {
        let (Some(k), Some(v)) = (word(pair.get(..8)), word(pair.get(8..16))) else {
            return err(format!("auxv: truncated pair at byte {}", out.len() * 8));
        };
        out.extend([k, v]);
        if k == 0 {
            return Ok(out);
        }
    }
    err("auxv: no AT_NULL entry")
}

fn word(b: Option<&[u8]>) -> Option<u64> {
    Some(u64::from_ne_bytes(b?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT_PAGESZ: u64 = 6;
    const AT_SYSINFO_EHDR: u64 = 33;

    #[test]
    fn captured() {
        let v = parse_auxv(include_bytes!("../tests/data/auxv")).unwrap();
        assert_eq!(v.len() % 2, 0);
        assert_eq!(v[v.len() - 2..], [0, 0]);
        let get = |t: u64| v.chunks(2).find(|p| p[0] == t).map(|p| p[1]);
        assert_eq!(get(AT_PAGESZ), Some(4096));
        assert_eq!(get(AT_SYSINFO_EHDR), Some(0x7f0e6afc0000));
    }

    #[test]
    fn edge_cases() {
        let mut b = Vec::new();
        for w in [6u64, 4096, 0, 0, 9, 9] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(parse_auxv(&b), Ok(vec![6, 4096, 0, 0]));
        assert!(parse_auxv(&b[..16]).is_err());
        assert!(parse_auxv(&b[..24]).is_err());
        assert!(parse_auxv(&b[..31]).is_err());
        assert!(parse_auxv(b"").is_err());
        assert!(parse_auxv(b"garbage").is_err());
    }
}
