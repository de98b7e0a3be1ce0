//! The traffic-policy settings (SPEC §8) as validated: route rate limits, header rules
//! and redirects, an upstream's queue and the PROXY protocol version it sends.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub key: RateKey,
    /// Tokens per second.
    pub per_sec: f64,
    pub burst: u32,
    /// `redis://…`: the buckets live in this Redis, shared by every instance using it.
    pub shared: Option<String>,
}

/// What a request is limited by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    /// A request without the header is limited by its client's address.
    Header(http::HeaderName),
}

/// `{ set = { NAME = VALUE }, add = { NAME = VALUE }, remove = [NAME] }` (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRules {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Does a rule remove or replace the header of `line` (`Name: value…`)? Those raw
    /// lines are left out; the set and added ones follow (`write_lines`).
    pub fn drops(&self, line: &[u8]) -> bool {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let name = &line[..colon];
        let is = |n: &http::HeaderName| name.eq_ignore_ascii_case(n.as_str().as_bytes());
        self.remove.iter().any(is) || self.set.iter().any(|(n, _)| is(n))
    }

    /// Writes the set and added headers as lines.
    pub fn write_lines(&self, out: &mut Vec<u8>) {
        for (name, value) in self.set.iter().chain(&self.add) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Does a rule remove or replace one of `names`?
    pub fn touches(&self, names: &[&str]) -> bool {
        let hit = |n: &http::HeaderName| names.contains(&n.as_str());
        self.remove.iter().any(hit) || self.set.iter().any(|(n, _)| hit(n))
    }

    /// Applies the rules to `headers`: remove, then set (replacing), then add.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// `redirect = { to = "https://{host}{uri}", status = 308 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// The Location, with `{host}`, `{uri}` and `{scheme}` in it.
    pub to: String,
    /// 301, 302, 307 or 308.
    pub status: u16,
}

/// A PROXY protocol version (HAProxy's proxy-protocol.txt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// Text.
    V1,
    /// Binary.
    V2,
}

/// Where requests wait while every backend of an upstream is at
/// `max_inflight_per_backend`, first come first served.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// Over this many waiting, a request gets 503 at once; 0: no queue.
    pub max: usize,
    /// A request waiting longer gets 503.
    pub timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max: 1000,
            timeout: Duration::from_secs(5),
        }
    }
}
