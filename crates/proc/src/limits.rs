//! `/proc/PID/limits`.

use crate::util::{dec_u64, lines, next_token, utf8};
use crate::ParseError;

/// Row names of `/proc/PID/limits`, indexed by `RLIMIT_*` number.
const NAMES: [&str; 16] = [
    "Max cpu time",
    "Max file size",
    "Max data size",
    "Max stack size",
    "Max core file size",
    "Max resident set",
    "Max processes",
    "Max open files",
    "Max locked memory",
    "Max address space",
    "Max file locks",
    "Max pending signals",
    "Max msgqueue size",
    "Max nice priority",
    "Max realtime priority",
    "Max realtime timeout",
];

fn limit(v: &str, what: &str) -> Result<u64, ParseError> {
    if v == "unlimited" {
        Ok(u64::MAX)
    } else {
        dec_u64(v, what)
    }
}

/// Parses `/proc/PID/limits` into `(RLIMIT_* number, soft, hard)` in file
/// order, with `unlimited` as `u64::MAX` (`RLIM_INFINITY`). Rows are mapped
/// by name; the header line and rows with unknown names are skipped.
pub fn parse_limits(text: &[u8]) -> Result<Vec<(u32, u64, u64)>, ParseError> {
    let mut out = Vec::new();
    for (n, l) in lines(text) {
        let at = |e: ParseError| ParseError::new(format!("line {n}: {e}"));
        let line = utf8(l, "limits line").map_err(at)?;
        let Some((res, rest)) = NAMES.iter().zip(0u32..).find_map(|(name, i)| {
            let rest = line.strip_prefix(name)?;
            rest.starts_with(char::is_whitespace).then_some((i, rest))
        }) else {
            continue;
        };
        let missing = || at(ParseError::new("missing soft or hard limit"));
        let (soft, rest) = next_token(rest).ok_or_else(missing)?;
        let (hard, _units) = next_token(rest).ok_or_else(missing)?;
        out.push((
            res,
            limit(soft, "soft limit").map_err(at)?,
            limit(hard, "hard limit").map_err(at)?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured() {
        let v = parse_limits(include_bytes!("../tests/data/limits")).unwrap();
        assert_eq!(v.len(), 16);
        for (i, r) in v.iter().enumerate() {
            assert_eq!(r.0 as usize, i);
        }
        const INF: u64 = u64::MAX;
        assert_eq!(v[0], (0, INF, INF));
        assert_eq!(v[3], (3, 8388608, INF));
        assert_eq!(v[4], (4, 0, INF));
        assert_eq!(v[7], (7, 20000, 20000));
        assert_eq!(v[13], (13, 0, 0));
        assert_eq!(v[15], (15, INF, INF));
    }

    #[test]
    fn edge_cases() {
        assert_eq!(parse_limits(b""), Ok(vec![]));
        assert_eq!(parse_limits(b"garbage\n"), Ok(vec![]));
        // "Max file size" must not match "Max file sizes" or "Max file locks".
        assert_eq!(
            parse_limits(b"Max file sizes 1 2\nMax file locks 5 6 locks\n"),
            Ok(vec![(10, 5, 6)])
        );
        assert!(parse_limits(b"Max open files 1024\n").is_err());
        assert!(parse_limits(b"Max open files lots 1024 files\n").is_err());
    }
}
