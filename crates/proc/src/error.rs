//! Error types.

use std::path::PathBuf;

/// An error from reading and parsing a file under `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (the process may have exited, or access was denied).
    #[error("read {path}: {source}")]
    Io {
        /// The path that was read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its content could not be parsed.
    #[error("parse {path}: {msg}")]
    Parse {
        /// The path that was read.
        path: PathBuf,
        /// What was wrong, from [`ParseError`].
        msg: String,
    },
}

/// The content given to a parser is malformed; the message names the line and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        ParseError(msg.into())
    }
}
