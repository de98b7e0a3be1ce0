//! The key `consistent_hash` hashes (SPEC §3 `hash_key`): the client address, a header,
//! a cookie, the path, or a query parameter. A request without it is hashed on the
//! client address instead. Computed only for `consistent_hash` upstreams.

use std::net::IpAddr;

use http::Request;

use super::maglev::hash;
use crate::config::HashKey;

/// Salt separating request keys from the backend-id hashes of the table.
const KEY_SALT: u64 = 0x6b65_7973;

/// The 64-bit key of `req` under `key`.
pub fn of<B>(key: &HashKey, req: &Request<B>, client: IpAddr) -> u64 {
    let found: Option<&[u8]> = match key {
        HashKey::ClientIp => None,
        HashKey::Header(name) => req.headers().get(name).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => cookie(req.headers(), name).map(str::as_bytes),
        HashKey::Path => Some(req.uri().path().as_bytes()),
        HashKey::Query(name) => req.uri().query().and_then(|q| query(q, name)),
    };
    match found {
        Some(bytes) => hash(KEY_SALT, bytes),
        None => client_key(client),
    }
}

fn client_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash(KEY_SALT, &v4.octets()),
        IpAddr::V6(v6) => hash(KEY_SALT, &v6.octets()),
    }
}

/// The value of cookie `name` among a request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The raw value of query parameter `name` (not percent-decoded: the same bytes give
/// the same key, which is all hashing needs).
fn query<'q>(q: &'q str, name: &str) -> Option<&'q [u8]> {
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn keys_come_from_where_hash_key_says_or_the_client() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let r = req(
            "/a/b?user=42&x=1",
            &[("x-user-id", "42"), ("cookie", "a=1; sid=abc")],
        );
        let header = HashKey::Header(http::HeaderName::from_static("x-user-id"));
        assert_eq!(
            of(&header, &r, ip),
            of(&header, &r, other),
            "not the client"
        );
        assert_eq!(
            of(&header, &r, ip),
            of(&HashKey::Query("user".into()), &r, other)
        );
        assert_eq!(
            of(&HashKey::Cookie("sid".into()), &r, ip),
            of(
                &HashKey::Cookie("sid".into()),
                &req("/", &[("cookie", "sid=abc")]),
                other
            )
        );
        assert_ne!(
            of(&HashKey::Path, &r, ip),
            of(&HashKey::Path, &req("/a/c", &[]), ip)
        );
        // Missing: the client address.
        let missing = HashKey::Header(http::HeaderName::from_static("x-none"));
        assert_eq!(of(&missing, &r, ip), of(&HashKey::ClientIp, &r, ip));
        assert_ne!(of(&missing, &r, ip), of(&missing, &r, other));
    }
}
