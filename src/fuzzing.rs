//! Entry points of the fuzz targets (`fuzz/`), one per parser that reads bytes a client,
//! a backend or a user controls: request heads, response heads, chunked bodies and
//! configuration files. The stable test `tests/it/fuzz_corpus.rs` runs every file of
//! the targets' corpora (`fuzz/corpus/<target>/`) through these same functions, so CI
//! exercises them without a nightly toolchain.
//!
//! Each function panics only when an invariant breaks: a parser itself must never
//! panic, and must give the same answer whatever the split of its input into reads.

use std::path::Path;

use bytes::BytesMut;
use http::Method;

use crate::proxy::decode::{Chunked, Step};
use crate::proxy::h1::{HeadError, parse_head};
use crate::proxy::wire::parse_response_head;

/// The largest request head the fuzzed parser accepts (as `max_header_bytes` would).
const MAX_HEAD: usize = 16 * 1024;

/// Where to split `data` into two reads: from its first byte, so the fuzzer explores it.
fn split_at(data: &[u8]) -> usize {
    match data.first() {
        Some(&b) if !data.is_empty() => usize::from(b) % data.len(),
        _ => 0,
    }
}

/// A request head: parsed whole and in two reads, with the same outcome; a head that
/// parses passes on header lines that parse again.
pub fn request_head(data: &[u8]) {
    let whole = parse_request(data, data.len());
    let split = parse_request(data, split_at(data));
    assert_eq!(whole, split, "the outcome depends on how the bytes arrived");
}

/// The outcome of parsing `data` fed as `..at` then the rest: the head's length and
/// what it decided, or the error.
fn parse_request(data: &[u8], at: usize) -> Result<Option<String>, HeadError> {
    let mut buf = BytesMut::from(&data[..at]);
    let mut first = parse_head(&mut buf, MAX_HEAD, &mut None)?;
    if first.is_none() {
        buf.extend_from_slice(&data[at..]);
        first = parse_head(&mut buf, MAX_HEAD, &mut None)?;
    } else {
        buf.extend_from_slice(&data[at..]);
    }
    let Some(head) = first else {
        return Ok(None);
    };
    if let Some(raw) = &head.raw {
        // The lines passed on must make a head that parses again.
        let mut again = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        raw.write_to(&mut again, None);
        again.extend_from_slice(b"\r\n");
        let mut lines = [httparse::EMPTY_HEADER; 128];
        let parsed = httparse::Request::new(&mut lines).parse(&again);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(_))),
            "raw lines passed on do not parse: {:?}",
            String::from_utf8_lossy(&again)
        );
    }
    Ok(Some(format!(
        "{} {} {:?} {:?} keep={} continue={} rest={}",
        head.parts.method,
        head.parts.uri,
        head.parts.version,
        head.framing,
        head.keep_alive,
        head.expect_continue,
        buf.len()
    )))
}

/// A response head, as to a GET and to a HEAD, whole and in two reads.
pub fn response_head(data: &[u8]) {
    for method in [Method::GET, Method::HEAD] {
        for raw_ok in [false, true] {
            let whole = parse_response(data, data.len(), &method, raw_ok);
            let split = parse_response(data, split_at(data), &method, raw_ok);
            assert_eq!(whole, split, "the outcome depends on how the bytes arrived");
        }
    }
}

fn parse_response(data: &[u8], at: usize, method: &Method, raw_ok: bool) -> Option<String> {
    let mut buf = BytesMut::from(&data[..at]);
    let parse = |buf: &mut BytesMut| parse_response_head(buf, method, true, raw_ok, || None);
    let mut first = parse(&mut buf);
    if matches!(first, Ok(None)) {
        buf.extend_from_slice(&data[at..]);
        first = parse(&mut buf);
    } else {
        buf.extend_from_slice(&data[at..]);
    }
    match first {
        Ok(Some(h)) => Some(format!(
            "{} {:?} {:?} keep={} raw={} headers={} rest={}",
            h.status,
            h.version,
            h.framing,
            h.keep_alive,
            h.raw.is_some(),
            h.headers.len(),
            buf.len()
        )),
        Ok(None) => Some("partial".to_owned()),
        // Errors of every kind compare alike: the bytes are refused either way.
        Err(_) => None,
    }
}

/// A chunked body: decoded whole and in reads of a size taken from the data, with the
/// same data and the same outcome.
pub fn chunked(data: &[u8]) {
    let whole = decode(data, data.len().max(1));
    let step = data.first().map_or(1, |&b| usize::from(b % 16) + 1);
    let pieces = decode(data, step);
    assert_eq!(
        whole, pieces,
        "the outcome depends on how the bytes arrived"
    );
}

/// (data decoded, finished, refused) for `data` fed `step` bytes at a time.
fn decode(data: &[u8], step: usize) -> (Vec<u8>, bool, bool) {
    let mut st = Chunked::Size;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match st.step(&mut buf) {
                Ok(Step::Data(d)) => out.extend_from_slice(&d),
                Ok(Step::NeedMore) => break,
                Ok(Step::Done) => return (out, true, false),
                Err(_) => return (out, false, true),
            }
        }
    }
    (out, false, false)
}

/// A configuration file: loaded without a panic; every problem reported points into the
/// text as `FILE:LINE:COL: message` on one line.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = crate::config::parse_str(text, Path::new("fuzz.toml")) {
        let lines = errors.lines();
        assert!(!lines.is_empty(), "an invalid config reports something");
        for line in lines {
            assert!(line.starts_with("fuzz.toml:"), "{line}");
            assert!(!line.contains('\n'), "one line per problem: {line:?}");
        }
    }
}

/// A PROXY header (listeners with `proxy_protocol`): each prefix of the bytes waits for
/// more, or gives the same outcome as the whole, so the split into reads cannot change
/// the client address or the refusal; a header never claims more bytes than it saw.
pub fn proxy_header(data: &[u8]) {
    use crate::proxy::proxy_header::{Parsed, parse};
    let whole = parse(data);
    if let Parsed::Header { len, .. } = whole {
        assert!(len <= data.len(), "a header longer than its bytes");
    }
    for cut in 0..data.len() {
        let part = parse(&data[..cut]);
        match (&whole, &part) {
            (_, Parsed::Incomplete { .. }) => {}
            (Parsed::Header { len, .. }, _) if cut >= *len => {
                assert_eq!(part, whole, "a longer read changed the header")
            }
            (Parsed::Invalid(_), Parsed::Invalid(_)) => {}
            _ => panic!(
                "{cut} bytes gave {part:?}, all {} gave {whole:?}",
                data.len()
            ),
        }
    }
}
