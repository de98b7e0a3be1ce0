//! Integration tests: real sockets on 127.0.0.1, real backends, sluice in-process or as
//! the real binary. One test binary so the suite links once.

mod admin;
mod balancing;
mod cli;
mod dashboard;
mod discovery_dns;
mod discovery_etcd;
mod discovery_file;
mod framing;
mod fuzz_corpus;
mod h2up;
mod health;
mod http1;
mod layers;
mod lifecycle;
mod limits;
mod metrics;
mod otel;
mod outlier;
mod parking;
mod policy;
mod proxy_protocol;
mod proxying;
mod queue;
mod reasons;
mod refusals;
mod reload;
mod retries;
mod shared_rate;
mod support;
mod tls;
mod traces;
mod upgrade;
mod wire;
mod workers;
