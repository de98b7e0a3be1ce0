//! Sticky sessions (SPEC §2 `sticky = { cookie = NAME }`, §3): the cookie holds an
//! opaque backend id, a hash of the backend's `host:port` (never the address itself),
//! the same on every instance so a fleet agrees. A request carrying a known id goes to
//! that backend while it is usable; otherwise it is balanced as usual and the answer
//! sets the cookie anew.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use super::maglev::hash;
use crate::upstream::Backend;

const STICKY_SALT: u64 = 0x7374_6963_6b79;

/// The opaque id of a backend: 16 hex digits.
pub fn id_of(backend_id: &str) -> String {
    format!("{:016x}", hash(STICKY_SALT, backend_id.as_bytes()))
}

/// The backend of `all` whose id the request's cookie `name` carries.
pub fn chosen<'a>(
    headers: &HeaderMap,
    name: &str,
    all: &'a [Arc<Backend>],
) -> Option<&'a Arc<Backend>> {
    let value = super::hash_key::cookie(headers, name)?;
    all.iter().find(|b| &*b.sticky_id == value)
}

/// The `Set-Cookie` value pinning a client to `backend`. `secure`: the request came
/// over TLS, so the cookie is marked `Secure` and never sent back in clear text.
pub fn set_cookie(name: &str, backend: &Backend, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={}; Path=/; HttpOnly; SameSite=Lax{secure}",
        backend.sticky_id
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_opaque_stable_and_distinct() {
        let a = id_of("10.0.0.1:8080");
        assert_eq!(a, id_of("10.0.0.1:8080"));
        assert_ne!(a, id_of("10.0.0.2:8080"));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("8080") && !a.contains("10.0"));
    }
}
