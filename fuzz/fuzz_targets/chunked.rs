//! Fuzz target: `sluice::fuzzing::chunked` (see src/fuzzing.rs for its invariants).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::chunked(data));
