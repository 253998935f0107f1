//! Lists of PIDs such as `/proc/PID/task/TID/children`.

use crate::util::dec_u32;
use crate::ParseError;

/// Parses a whitespace-separated list of PIDs, as in
/// `/proc/PID/task/TID/children` (`"12 34 "`). Empty input gives an empty list.
pub fn parse_pid_list(text: &[u8]) -> Result<Vec<u32>, ParseError> {
    let s = std::str::from_utf8(text).map_err(|_| ParseError::new("pid list: not UTF-8"))?;
    s.split_whitespace().map(|p| dec_u32(p, "pid")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases() {
        assert_eq!(
            parse_pid_list(include_bytes!("../tests/data/children")),
            Ok(vec![3224])
        );
        assert_eq!(parse_pid_list(b"12 34 \n"), Ok(vec![12, 34]));
        assert_eq!(parse_pid_list(b""), Ok(vec![]));
        assert_eq!(parse_pid_list(b" \n"), Ok(vec![]));
        assert!(parse_pid_list(b"12 x").is_err());
        assert!(parse_pid_list(b"-1").is_err());
        assert!(parse_pid_list(b"4294967296").is_err());
    }
}
