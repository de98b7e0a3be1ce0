//! Fuzz target: `sluice::fuzzing::response_head` (see src/fuzzing.rs for its invariants).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::response_head(data));
