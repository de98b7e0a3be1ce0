//! Stub.
use std::ops::Range;
#[derive(Debug, Clone, PartialEq)]
pub struct Problem { pub span: Range<usize>, pub message: String }
#[derive(Debug, thiserror::Error)]
#[error("invalid config")]
pub struct ConfigErrors { pub problems: Vec<Problem> }
