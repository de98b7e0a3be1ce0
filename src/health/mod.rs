//! Health: active checks (a task per upstream) and passive outlier detection (on the
//! request path), both writing only a backend's state bits.

pub mod active;
pub mod outlier;
pub mod rise_fall;

pub use active::Checkers;
