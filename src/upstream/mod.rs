//! Upstreams: pools of backends with their strategy, swapped whole as one snapshot.
mod backend;
pub use backend::{Backend, BackendStats, State};
