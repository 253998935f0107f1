//! Small, panic-free helpers shared by the parsers.

use crate::ParseError;

/// Shorthand for `Err(ParseError)`.
pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::new(msg))
}

/// Non-empty lines of `text` with their 1-based line numbers.
pub(crate) fn lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.is_empty())
}

/// `b` as UTF-8, or an error naming `what`.
pub(crate) fn utf8<'a>(b: &'a [u8], what: &str) -> Result<&'a str, ParseError> {
    std::str::from_utf8(b).map_err(|_| ParseError::new(format!("{what}: not UTF-8")))
}

/// Splits `"key: value"` at the first `':'`; the value has surrounding whitespace trimmed.
pub(crate) fn key_value(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once(':')?;
    Some((k.trim(), v.trim()))
}

fn parse_radix(s: &str, radix: u32, what: &str) -> Result<u64, ParseError> {
    if s.is_empty() || !s.chars().all(|c| c.is_digit(radix)) {
        return err(format!("{what}: invalid number {s:?}"));
    }
    u64::from_str_radix(s, radix)
        .map_err(|_| ParseError::new(format!("{what}: {s:?} out of range")))
}

/// Strict unsigned decimal (digits only, no sign).
pub(crate) fn dec_u64(s: &str, what: &str) -> Result<u64, ParseError> {
    parse_radix(s, 10, what)
}

/// Strict unsigned decimal that must fit in a `u32`.
pub(crate) fn dec_u32(s: &str, what: &str) -> Result<u32, ParseError> {
    u32::try_from(dec_u64(s, what)?)
        .map_err(|_| ParseError::new(format!("{what}: {s:?} out of range")))
}

/// Strict signed decimal (optional leading `-`) that must fit in an `i32`.
pub(crate) fn dec_i32(s: &str, what: &str) -> Result<i32, ParseError> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let mag = i64::try_from(dec_u64(digits, what)?)
        .map_err(|_| ParseError::new(format!("{what}: {s:?} out of range")))?;
    let v = if neg { -mag } else { mag };
    i32::try_from(v).map_err(|_| ParseError::new(format!("{what}: {s:?} out of range")))
}

/// Strict hexadecimal without `0x` prefix.
pub(crate) fn hex_u64(s: &str, what: &str) -> Result<u64, ParseError> {
    parse_radix(s, 16, what)
}

/// Strict hexadecimal that must fit in a `u32`.
pub(crate) fn hex_u32(s: &str, what: &str) -> Result<u32, ParseError> {
    u32::try_from(hex_u64(s, what)?)
        .map_err(|_| ParseError::new(format!("{what}: {s:?} out of range")))
}

/// Strict octal that must fit in a `u32`.
pub(crate) fn oct_u32(s: &str, what: &str) -> Result<u32, ParseError> {
    u32::try_from(parse_radix(s, 8, what)?)
        .map_err(|_| ParseError::new(format!("{what}: {s:?} out of range")))
}

/// Splits off the first whitespace-separated token; returns it and the rest
/// (with leading whitespace removed). `None` if there is no token.
pub(crate) fn next_token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    match s.find(char::is_whitespace) {
        Some(i) => {
            let (tok, rest) = s.split_at(i);
            Some((tok, rest.trim_start()))
        }
        None => Some((s, "")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(dec_u64("123", "x"), Ok(123));
        assert!(dec_u64("+1", "x").is_err());
        assert!(dec_u64("", "x").is_err());
        assert!(dec_u64("18446744073709551616", "x").is_err());
        assert_eq!(dec_i32("-6", "x"), Ok(-6));
        assert!(dec_i32("-", "x").is_err());
        assert!(dec_i32("2147483648", "x").is_err());
        assert_eq!(dec_i32("-2147483648", "x"), Ok(i32::MIN));
        assert_eq!(hex_u64("ffffffffff600000", "x"), Ok(0xffff_ffff_ff60_0000));
        assert_eq!(oct_u32("0102001", "x"), Ok(0o102001));
        assert!(oct_u32("8", "x").is_err());
    }

    #[test]
    fn tokens() {
        assert_eq!(next_token("  a b  c"), Some(("a", "b  c")));
        assert_eq!(next_token("a"), Some(("a", "")));
        assert_eq!(next_token("   "), None);
    }
}
