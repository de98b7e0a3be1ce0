//! Backends from etcd, through its v3 JSON gateway (`/v3/kv/range`, `/v3/watch`) over
//! the hyper client sluice already has: no protoc, no tonic, no second HTTP stack
//! (the `etcd-client` crate needs protoc and tonic, a build several times longer on 2
//! cores). Every key under the prefix is one backend; its value is JSON (`member`).
//!
//! List the prefix at a revision, then watch from the next one; each batch of events is
//! applied as a whole set. A compacted revision, a cancelled or broken watch, or a
//! quiet watch that no longer matches the prefix (checked every second) starts over
//! with a new list: revisions are never skipped.
//! While etcd cannot be reached, the last set stays and the source is `stale`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::{Backoff, Report, Reports, canonical, member};
use crate::config::discovery::{EtcdEndpoint, EtcdSource};
use crate::config::{BackendConfig, Scheme};

/// How long a request (other than the watch itself) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a quiet watch checks that etcd still answers.
const LIVENESS: Duration = Duration::from_secs(1);
/// The longest line the watch stream may send (a batch of events).
const MAX_LINE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
enum EtcdError {
    #[error("connecting to {0}: {1}")]
    Connect(String, #[source] std::io::Error),
    #[error("{0}: {1}")]
    Http(String, #[source] hyper::Error),
    #[error("{0}: timed out")]
    Timeout(String),
    #[error("{0}: answered {1}")]
    Status(String, http::StatusCode),
    #[error("{0}: {1}")]
    Bad(String, String),
    #[error("{0}: the watch ended")]
    WatchEnded(String),
    #[error("{0}: revision {1} was compacted; listing again")]
    Compacted(String, i64),
    #[error("{0}: the watch fell behind the prefix; listing again")]
    Behind(String),
}

/// The keys under the prefix and what each one says (None: a value that is not a
/// backend, skipped with a warning).
type Keys = BTreeMap<Vec<u8>, Option<BackendConfig>>;

pub(super) async fn run(src: EtcdSource, scheme: Scheme, tx: Reports) {
    let (key, range_end) = (
        src.prefix.as_bytes().to_vec(),
        prefix_end(src.prefix.as_bytes()),
    );
    let mut backoff = Backoff::new();
    let mut at = 0usize;
    loop {
        let endpoint = &src.endpoints[at % src.endpoints.len()];
        let result = async {
            let (mut keys, revision) = list(endpoint, &key, &range_end, scheme).await?;
            if tx.send(Report::Set(set_of(&keys))).await.is_err() {
                return Ok(());
            }
            let at = Watch {
                endpoint,
                key: &key,
                range_end: &range_end,
                scheme,
            };
            at.run(revision, &mut keys, &tx, &mut backoff).await
        };
        let wait = match tokio::select! {
            r = result => r,
            _ = tx.closed() => return,
        } {
            Ok(()) => return, // the receiver is gone
            // Not a failure of etcd: list again at once.
            Err(e @ (EtcdError::Compacted(..) | EtcdError::Behind(..))) => {
                tracing::info!(error = %e, "etcd watch restarts");
                Duration::ZERO
            }
            Err(e) => {
                if tx.send(Report::Failed(e.to_string())).await.is_err() {
                    return;
                }
                at += 1; // the next endpoint
                backoff.step()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

fn set_of(keys: &Keys) -> Vec<BackendConfig> {
    canonical(keys.values().flatten().cloned().collect())
}

/// What a key's value says, or None (logged) for one that is not a backend.
fn read_value(key: &[u8], value: &[u8], scheme: Scheme) -> Option<BackendConfig> {
    let parsed = serde_json::from_slice::<Value>(value)
        .map_err(|e| format!("not JSON: {e}"))
        .and_then(|v| member(&v, scheme));
    match parsed {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "etcd value skipped: not a backend");
            None
        }
    }
}

/// Lists the prefix: every key and value, and the revision they are at.
async fn list(
    endpoint: &EtcdEndpoint,
    key: &[u8],
    range_end: &[u8],
    scheme: Scheme,
) -> Result<(Keys, i64), EtcdError> {
    let body = json!({"key": B64.encode(key), "range_end": B64.encode(range_end)});
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let resp = post(endpoint, "/v3/kv/range", &body).await?;
        resp.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| EtcdError::Http(endpoint.to_string(), e))
    })
    .await
    .map_err(|_| EtcdError::Timeout(endpoint.to_string()))??;
    let bad = |why: &str| EtcdError::Bad(endpoint.to_string(), format!("range answer {why}"));
    let v: Value = serde_json::from_slice(&resp).map_err(|_| bad("is not JSON"))?;
    let revision = int(&v["header"]["revision"]).ok_or_else(|| bad("has no revision"))?;
    let mut keys = Keys::new();
    for kv in v["kvs"].as_array().into_iter().flatten() {
        let Some(k) = bytes_of(&kv["key"]) else {
            return Err(bad("has an entry without a key"));
        };
        // The gateway leaves an empty value out: not a backend, skipped like any.
        let value = bytes_of(&kv["value"]).unwrap_or_default();
        let b = read_value(&k, &value, scheme);
        keys.insert(k, b);
    }
    Ok((keys, revision))
}

/// A watch of the prefix on one endpoint.
struct Watch<'a> {
    endpoint: &'a EtcdEndpoint,
    key: &'a [u8],
    range_end: &'a [u8],
    scheme: Scheme,
}

impl Watch<'_> {
    /// Watches from the revision after `listed`, applying each batch of events to `keys`
    /// and reporting the set; returns Ok when the receiver is gone, else why it
    /// stopped. Every `LIVENESS` of quiet, the prefix is read again (a linearizable
    /// read, which fails without a quorum) and compared with what the watch has seen:
    /// a watch whose connection died silently, or on a member cut off from the
    /// cluster, is noticed and replaced.
    async fn run(
        &self,
        listed: i64,
        keys: &mut Keys,
        tx: &Reports,
        backoff: &mut Backoff,
    ) -> Result<(), EtcdError> {
        let body = json!({"create_request": {
            "key": B64.encode(self.key),
            "range_end": B64.encode(self.range_end),
            "start_revision": (listed + 1).to_string(),
        }});
        let name = self.endpoint.to_string();
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, post(self.endpoint, "/v3/watch", &body))
            .await
            .map_err(|_| EtcdError::Timeout(name.clone()))??;
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        let mut seen = listed;
        let mut behind = 0;
        let mut check = tokio::time::interval(LIVENESS);
        check.reset();
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = check.tick() => {
                    behind = if self.in_step(keys, seen).await? { 0 } else { behind + 1 };
                    // Twice: an event may be on its way.
                    if behind >= 2 {
                        return Err(EtcdError::Behind(name));
                    }
                    continue;
                }
            };
            let Some(frame) = frame else {
                return Err(EtcdError::WatchEnded(name));
            };
            let frame = frame.map_err(|e| EtcdError::Http(name.clone(), e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            check.reset();
            buf.extend_from_slice(&data);
            if buf.len() > MAX_LINE {
                return Err(EtcdError::Bad(name, "watch message too long".into()));
            }
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(end + 1);
                let got = apply(&name, &line[..end], self.scheme, keys)?;
                // The watch works: failures from here on start the backoff afresh.
                backoff.reset();
                seen = seen.max(got.revision);
                if got.changed && tx.send(Report::Set(set_of(keys))).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Does the prefix hold the keys the watch has, none changed after `seen`?
    async fn in_step(&self, keys: &Keys, seen: i64) -> Result<bool, EtcdError> {
        let body = json!({
            "key": B64.encode(self.key),
            "range_end": B64.encode(self.range_end),
            "keys_only": true,
        });
        let name = self.endpoint.to_string();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = post(self.endpoint, "/v3/kv/range", &body).await?;
            resp.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| EtcdError::Http(name.clone(), e))
        })
        .await
        .map_err(|_| EtcdError::Timeout(name.clone()))??;
        let v: Value = serde_json::from_slice(&answer)
            .map_err(|_| EtcdError::Bad(name.clone(), "range answer is not JSON".into()))?;
        let listed: Vec<(Option<Vec<u8>>, Option<i64>)> = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| (bytes_of(&kv["key"]), int(&kv["mod_revision"])))
            .collect();
        Ok(listed.len() == keys.len()
            && listed.iter().all(|(k, rev)| {
                k.as_ref().is_some_and(|k| keys.contains_key(k)) && rev.is_some_and(|r| r <= seen)
            }))
    }
}

/// What one watch message did.
#[derive(Debug, PartialEq)]
struct Got {
    /// It carried events.
    changed: bool,
    /// The newest revision it shows (0 if none).
    revision: i64,
}

/// Applies one watch message to `keys`.
fn apply(name: &str, line: &[u8], scheme: Scheme, keys: &mut Keys) -> Result<Got, EtcdError> {
    let quiet = |revision| Got {
        changed: false,
        revision,
    };
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(quiet(0));
    }
    let bad = |why: String| EtcdError::Bad(name.to_owned(), why);
    let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("watch message: {e}")))?;
    if let Some(e) = v.get("error") {
        return Err(bad(format!("watch error: {e}")));
    }
    let r = &v["result"];
    if let Some(rev) = int(&r["compact_revision"]).filter(|&n| n > 0) {
        return Err(EtcdError::Compacted(name.to_owned(), rev));
    }
    if r["canceled"].as_bool() == Some(true) {
        let reason = r["cancel_reason"].as_str().unwrap_or("no reason given");
        return Err(bad(format!("watch cancelled: {reason}")));
    }
    let header = int(&r["header"]["revision"]).unwrap_or(0);
    let Some(events) = r["events"].as_array() else {
        return Ok(quiet(header)); // created, or progress
    };
    let mut revision = header;
    for ev in events {
        let kv = &ev["kv"];
        revision = revision.max(int(&kv["mod_revision"]).unwrap_or(0));
        let Some(k) = bytes_of(&kv["key"]) else {
            continue;
        };
        if ev["type"].as_str() == Some("DELETE") {
            keys.remove(&k);
        } else {
            let value = bytes_of(&kv["value"]).unwrap_or_default();
            let b = read_value(&k, &value, scheme);
            keys.insert(k, b);
        }
    }
    Ok(Got {
        changed: !events.is_empty(),
        revision,
    })
}

/// POSTs `body` to `path` on a new connection; the response, if it is a 200.
async fn post(
    endpoint: &EtcdEndpoint,
    path: &str,
    body: &Value,
) -> Result<http::Response<Incoming>, EtcdError> {
    let name = endpoint.to_string();
    let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| EtcdError::Connect(name.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    // A watch is a long quiet connection: keepalives find one that died on the way.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5));
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| EtcdError::Http(name.clone(), e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post(path)
        .header(
            http::header::HOST,
            format!("{}:{}", endpoint.host, endpoint.port),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| EtcdError::Bad(name.clone(), e.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| EtcdError::Http(name.clone(), e))?;
    if resp.status() != http::StatusCode::OK {
        return Err(EtcdError::Status(name, resp.status()));
    }
    Ok(resp)
}

/// An int64 as the gateway writes it (a string) or a plain number.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    B64.decode(v.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/sluice/a/"), b"/sluice/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn watch_messages_update_the_keys() {
        let mut keys = Keys::new();
        let put = |k: &str, v: &str| {
            format!(
                r#"{{"result":{{"header":{{"revision":"7"}},"events":[{{"kv":{{"key":"{}","value":"{}","mod_revision":"7"}}}}]}}}}"#,
                B64.encode(k),
                B64.encode(v)
            )
        };
        let created = r#"{"result":{"header":{"revision":"6"},"created":true}}"#;
        let got = apply("e", created.as_bytes(), Scheme::Http, &mut keys).unwrap();
        assert_eq!(
            got,
            Got {
                changed: false,
                revision: 6
            }
        );
        let line = put("/p/a", r#"{"url": "10.0.0.1:80"}"#);
        let got = apply("e", line.as_bytes(), Scheme::Http, &mut keys).unwrap();
        assert_eq!(
            got,
            Got {
                changed: true,
                revision: 7
            }
        );
        let line = put("/p/b", "junk");
        assert!(
            apply("e", line.as_bytes(), Scheme::Http, &mut keys)
                .unwrap()
                .changed
        );
        assert_eq!(keys.len(), 2);
        assert_eq!(
            set_of(&keys).len(),
            1,
            "a value that is not a backend is skipped"
        );
        let delete = format!(
            r#"{{"result":{{"events":[{{"type":"DELETE","kv":{{"key":"{}"}}}}]}}}}"#,
            B64.encode("/p/a")
        );
        assert!(
            apply("e", delete.as_bytes(), Scheme::Http, &mut keys)
                .unwrap()
                .changed
        );
        assert!(set_of(&keys).is_empty());
        let compacted = r#"{"result":{"compact_revision":"5","canceled":true}}"#;
        assert!(matches!(
            apply("e", compacted.as_bytes(), Scheme::Http, &mut keys),
            Err(EtcdError::Compacted(_, 5))
        ));
    }
}
