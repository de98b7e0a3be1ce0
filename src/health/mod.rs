//! Health, as plain state machines over a backend's atomics: passive outlier detection
//! (on the request path) and the rise/fall hysteresis of active checks. The checker
//! task that probes backends over the network is the transport's (proxy/probe.rs).

pub mod outlier;
pub mod rise_fall;
