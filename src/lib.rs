//! sluice: an HTTP load-balancing reverse proxy.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod balance;
pub mod config;
pub mod upstream;
