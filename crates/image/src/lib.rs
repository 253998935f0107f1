//! The stasis image directory.
#![forbid(unsafe_code)]

pub mod model;
pub use model::*;
