//! The model: backends with the numbers about them that change per request
//! (`BackendStats` atomics), routes, and an upstream's retry budget. It knows neither
//! strategies (balance/, which builds an upstream's tiers over these backends) nor
//! connections (proxy/, which keeps them beside the model, swapped together as one
//! snapshot).

mod backend;
pub mod retry;
mod route;

pub use backend::{Backend, BackendStats, State, literal_addr};
pub use route::{Route, host_of, request_host};
