//! The request head sluice writes to an HTTP/1.1 backend: the request line in
//! origin-form, the header map's lines, the client's raw lines (`Outgoing`), the
//! attempt's `traceparent`, and the framing header the body needs; and the chunk
//! header of a chunked body. The response side is wire.rs.

use http::{Method, Request, header};

use super::h1::{Outgoing, line};
use super::head::{self, Framing};

/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes `req`'s head in origin-form to `out`, adding the framing header it needs, and
/// says how its body goes on the wire: none, by the client's Content-Length (the value
/// the body was read by), or chunked when its length is unknown.
/// `has_body`: the body is not known to be empty.
/// `outgoing`: the head's lines in raw form, written after the map's (which then holds
/// only what sluice added per attempt, if anything).
pub fn encode_request_head<B>(
    out: &mut Vec<u8>,
    req: &Request<B>,
    outgoing: Option<&Outgoing>,
    traceparent: &[u8],
    has_body: bool,
) -> Framing {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if pq.is_empty() { b"/" } else { pq.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(o) = outgoing {
        o.write_to(out);
    }
    if !traceparent.is_empty() {
        line(out, b"traceparent", traceparent);
    }
    let length = match outgoing {
        Some(o) => o.raw.length,
        None => req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| head::parse_length(v.as_bytes())),
    };
    let framing = if let Some(n) = length {
        Framing::Length(n)
    } else if has_body {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        // Methods whose requests are expected to carry a body get an explicit empty one.
        if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::None
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes the chunk header of a `len`-byte chunk.
pub fn chunk_header(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_head_is_origin_form_with_the_framing_it_needs() {
        let mut out = Vec::new();
        let req = Request::get("http://h/a?b=1")
            .header("host", "h")
            .body(())
            .unwrap();
        assert_eq!(
            encode_request_head(&mut out, &req, None, b"", false),
            Framing::None
        );
        assert_eq!(out, b"GET /a?b=1 HTTP/1.1\r\nhost: h\r\n\r\n");
        out.clear();
        let req = Request::post("/u").body(()).unwrap();
        assert_eq!(
            encode_request_head(&mut out, &req, None, b"", true),
            Framing::Chunked
        );
        assert_eq!(
            out,
            b"POST /u HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        let req = Request::post("/u")
            .header("content-length", "3")
            .body(())
            .unwrap();
        assert_eq!(
            encode_request_head(&mut out, &req, None, b"", true),
            Framing::Length(3)
        );
        out.clear();
        let req = Request::put("/u").body(()).unwrap();
        encode_request_head(&mut out, &req, None, b"", false);
        assert_eq!(out, b"PUT /u HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }
}
