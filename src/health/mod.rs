//! Health: active checks now; passive outlier detection comes with the rest of issue 3.

pub mod active;
pub mod rise_fall;

pub use active::Checkers;
