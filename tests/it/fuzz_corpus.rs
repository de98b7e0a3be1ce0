//! Replays every seed of the fuzz targets (`fuzz/seeds/<target>/`, and a local
//! `fuzz/corpus/<target>/` when one exists) through the same entry points the fuzzers
//! call (`sluice::fuzzing`), so CI exercises them on stable Rust. A fuzzer's finding is
//! added to the seeds and replayed here from then on.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            // A fuzzer running meanwhile may replace files of the local corpus.
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {} broke an invariant",
                path.display()
            );
            n += 1;
        }
    }
    assert!(n >= 5, "{target}: only {n} seeds");
}

#[test]
fn request_head_seeds() {
    replay("request_head", sluice::fuzzing::request_head);
}

#[test]
fn response_head_seeds() {
    replay("response_head", sluice::fuzzing::response_head);
}

#[test]
fn chunked_seeds() {
    replay("chunked", sluice::fuzzing::chunked);
}

#[test]
fn config_seeds() {
    replay("config", sluice::fuzzing::config);
}

#[test]
fn proxy_header_seeds() {
    replay("proxy_header", sluice::fuzzing::proxy_header);
}
