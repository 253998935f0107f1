//! Parsers for /proc.
#![forbid(unsafe_code)]
