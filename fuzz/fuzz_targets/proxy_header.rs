//! Fuzz target: `sluice::fuzzing::proxy_header` (see src/fuzzing.rs for its invariants).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::proxy_header(data));
