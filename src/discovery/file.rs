//! A JSON file of backends: `[{"url": "10.0.0.1:8080", "weight": 1}, ...]`, read again
//! within a second of a change. Polled (4 times a second, a read of a small file):
//! simpler than inotify and it also sees a file replaced by a rename, as editors and
//! config tools do. An unreadable or invalid file keeps the last set.

use std::path::PathBuf;
use std::time::Duration;

use super::{Report, Reports, canonical, member};
use crate::config::{BackendConfig, Scheme};

const POLL: Duration = Duration::from_millis(250);

pub(super) async fn run(path: PathBuf, scheme: Scheme, tx: Reports) {
    // What was read last, and what it made: a report goes out only on a change.
    let mut last: Option<Result<Vec<u8>, String>> = None;
    loop {
        let now = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("reading {}: {e}", path.display()));
        if last.as_ref() != Some(&now) {
            let report = match &now {
                Ok(bytes) => match parse(bytes, scheme) {
                    Ok(set) => Report::Set(set),
                    Err(e) => Report::Failed(format!("{}: {e}", path.display())),
                },
                Err(e) => Report::Failed(e.clone()),
            };
            if tx.send(report).await.is_err() {
                return;
            }
            last = Some(now);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

/// The whole file: a JSON array of backend objects, every one valid.
fn parse(bytes: &[u8], scheme: Scheme) -> Result<Vec<BackendConfig>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let serde_json::Value::Array(items) = value else {
        return Err("expected a JSON array of backends".into());
    };
    let mut set = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        set.push(member(item, scheme).map_err(|e| format!("entry {}: {e}", i + 1))?);
    }
    Ok(canonical(set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_a_json_array_of_valid_backends() {
        let set = parse(
            br#"[{"url": "10.0.0.2:80"}, {"url": "10.0.0.1:80", "weight": 2}]"#,
            Scheme::Http,
        )
        .unwrap();
        let ids: Vec<String> = set.iter().map(|b| b.url.id()).collect();
        assert_eq!(ids, ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(parse(b"[]", Scheme::Http).unwrap(), vec![]);
        let e = parse(
            br#"[{"url": "10.0.0.1:80"}, {"url": "nope"}]"#,
            Scheme::Http,
        )
        .unwrap_err();
        assert!(e.starts_with("entry 2:"), "{e}");
        assert!(parse(b"{}", Scheme::Http).is_err());
        assert!(parse(b"[", Scheme::Http).is_err());
    }
}
