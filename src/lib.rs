//! sluice: an HTTP load-balancing reverse proxy.
//!
//! The binary is a thin shell over this library: `cli` turns flags into a `Config`,
//! `proxy::Server` binds and serves it, `admin` shows it, `reload` replaces it.
// The one exception is `proxy::memory::release_free`, a libc call without preconditions.
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod cli;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod fuzzing;
pub mod handover;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod otel;
pub mod proxy;
pub mod state;
pub mod telemetry;
pub mod trace;
pub mod upstream;
