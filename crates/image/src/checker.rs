//! The small checker every validation rule is written with.

use std::path::Path;

use crate::error::{ImageError, Result};
use crate::limits::PAGE_SIZE;

/// Checks fields of one file, naming the file in every error.
pub(crate) struct Checker<'a> {
    pub(crate) file: &'a Path,
}

impl Checker<'_> {
    pub(crate) fn err(&self, what: String) -> ImageError {
        ImageError::invalid(self.file, what)
    }

    pub(crate) fn ensure(&self, ok: bool, what: impl FnOnce() -> String) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(self.err(what()))
        }
    }

    pub(crate) fn count(&self, field: &str, len: usize, cap: usize) -> Result<()> {
        self.ensure(len <= cap, || format!("{field}: {len} entries, cap {cap}"))
    }

    pub(crate) fn string(&self, field: &str, s: &str, cap: usize) -> Result<()> {
        self.ensure(!s.contains('\0'), || {
            format!("{field}: contains a NUL byte")
        })?;
        self.ensure(s.len() <= cap, || {
            format!("{field}: {} bytes long, cap {cap}", s.len())
        })
    }
}

/// Whether `x` is a multiple of the page size.
pub(crate) fn aligned(x: u64) -> bool {
    x % PAGE_SIZE == 0
}
