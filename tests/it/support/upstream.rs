//! Reading an upstream out of `/status`, as the discovery tests do: wait until its
//! document says what the test expects, then list its backend ids.

use std::time::Duration;

use super::{DEADLINE, Sluice};

/// The first upstream's `/status` document, once `ready` holds for it (polled every
/// 10 ms); fails the test with `what` and the last document at the deadline.
pub async fn wait_for(
    lb: &Sluice,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = lb.status().await;
        let u = &status["upstreams"][0];
        if ready(u) {
            return u.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {u}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The backend ids of an upstream's `/status` document, in order.
pub fn ids(u: &serde_json::Value) -> Vec<String> {
    u["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}
