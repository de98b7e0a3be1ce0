//! The request-framing table (issue #10): tricky HTTP/1 requests sent through sluice to
//! a raw backend that records the requests it receives. Each row is one case, with what
//! must happen:
//!
//! - `fwd(&[..])`: the backend receives exactly these requests (method, target, body),
//!   as a strict RFC 9112 parser reads the bytes sent, re-framed by sluice; the client
//!   gets a 200 for each;
//! - `refused(status)`: the client gets that status on a connection that is then closed,
//!   and the backend receives no complete request;
//! - `fwd_then(&[..], status)`: pipelined requests, the first ones forwarded, then one
//!   refused.
//!
//! Read as documentation, the table is sluice's answer to request smuggling: every
//! ambiguity in a request's framing is refused, never guessed at. It runs twice: on a
//! plain listener and on a TLS one (HTTP/1.x over TLS is read by the same loop).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::tls::{connect, tls_sluice_over};
use crate::support::*;

/// A request as the backend received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    method: String,
    target: String,
    body: Vec<u8>,
}

/// What one case must produce.
#[derive(Debug)]
struct Expect {
    forwarded: &'static [(&'static str, &'static str, &'static str)],
    /// The status of a final refusal, if any.
    refused: Option<u16>,
}

const fn fwd(forwarded: &'static [(&'static str, &'static str, &'static str)]) -> Expect {
    Expect {
        forwarded,
        refused: None,
    }
}

const fn refused(status: u16) -> Expect {
    Expect {
        forwarded: &[],
        refused: Some(status),
    }
}

const fn fwd_then(
    forwarded: &'static [(&'static str, &'static str, &'static str)],
    status: u16,
) -> Expect {
    Expect {
        forwarded,
        refused: Some(status),
    }
}

const GET: &[(&str, &str, &str)] = &[("GET", "/", "")];
const POST5: &[(&str, &str, &str)] = &[("POST", "/", "hello")];
const POST_EMPTY: &[(&str, &str, &str)] = &[("POST", "/", "")];

/// The table: name, bytes sent, what must happen.
const CASES: &[(&str, &[u8], Expect)] = &[
    // --- Plain, valid requests: the baseline.
    ("get", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", fwd(GET)),
    ("get with query", b"GET /p?q=1&r HTTP/1.1\r\nHost: a\r\n\r\n", fwd(&[("GET", "/p?q=1&r", "")])),
    ("percent-encoded path kept", b"GET /a%2Fb%20c HTTP/1.1\r\nHost: a\r\n\r\n", fwd(&[("GET", "/a%2Fb%20c", "")])),
    ("post with length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", fwd(POST5)),
    ("post chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(POST5)),
    ("chunked in two chunks", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", fwd(POST5)),
    ("chunk size with leading zeros", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n0\r\n\r\n", fwd(POST5)),
    ("chunk size in upper-case hex", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nA\r\nhellohello\r\n0\r\n\r\n", fwd(&[("POST", "/", "hellohello")])),
    ("chunk extension token", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n", fwd(POST5)),
    ("chunk extension quoted", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ; e=\"a\\\"b;c\"\r\nhello\r\n0\r\n\r\n", fwd(POST5)),
    ("chunk extension without value", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;flag\r\nhello\r\n0\r\n\r\n", fwd(POST5)),
    ("chunked trailers dropped", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n", fwd(POST5)),
    ("transfer-encoding in capitals", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(POST5)),
    ("transfer-encoding without space", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(POST5)),
    ("transfer-encoding after a tab", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n", fwd(POST5)),
    ("content-length zero", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", fwd(POST_EMPTY)),
    ("content-length with leading zeros", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\nhello", fwd(POST5)),
    ("content-length with spaces around", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\n\r\nhello", fwd(POST5)),
    ("content-length twice, same value", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", fwd(POST5)),
    ("post without a body", b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", fwd(POST_EMPTY)),
    ("get with a body by length", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", fwd(&[("GET", "/", "hello")])),
    ("empty header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n", fwd(GET)),
    ("obs-text in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\r\n\r\n", fwd(GET)),
    ("tab inside a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\tb\r\n\r\n", fwd(GET)),
    ("host with port", b"GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", fwd(GET)),
    ("host as IPv6 literal", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", fwd(GET)),
    ("host in capitals", b"GET / HTTP/1.1\r\nHOST: A.EXAMPLE\r\n\r\n", fwd(GET)),
    ("an empty line before the request", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", fwd(GET)),
    ("bare LF line ends in the head", b"GET / HTTP/1.1\nHost: a\n\n", fwd(GET)),
    ("unknown method passed on", b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n", fwd(&[("PURGE", "/x", "")])),
    ("lower-case method is another method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", fwd(&[("get", "/", "")])),
    ("options asterisk", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", fwd(&[("OPTIONS", "*", "")])),
    ("absolute-form target", b"GET http://a.example/p?x HTTP/1.1\r\nHost: a.example\r\n\r\n", fwd(&[("GET", "/p?x", "")])),
    ("absolute-form wins over Host", b"GET http://b.example/p HTTP/1.1\r\nHost: a.example\r\n\r\n", fwd(&[("GET", "/p", "")])),
    ("expect 100-continue with the body", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", fwd(POST5)),
    ("connection close", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", fwd(GET)),
    ("a name with an underscore is another name", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n", fwd(POST_EMPTY)),
    ("content_length is another name", b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n", fwd(POST_EMPTY)),
    // --- HTTP/1.0.
    ("http/1.0 without host", b"GET / HTTP/1.0\r\n\r\n", fwd(GET)),
    ("http/1.0 with a length", b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", fwd(POST5)),
    ("http/1.0 absolute-form", b"GET http://a.example/z HTTP/1.0\r\n\r\n", fwd(&[("GET", "/z", "")])),
    ("http/1.0 keep-alive pipelined", b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n", fwd(&[("GET", "/1", ""), ("GET", "/2", "")])),
    ("http/1.0 chunked", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("http/1.0 two hosts", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", refused(400)),
    // --- Pipelining.
    ("two gets", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", fwd(&[("GET", "/1", ""), ("GET", "/2", "")])),
    ("post by length then get", b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", fwd(&[("POST", "/1", "hello"), ("GET", "/2", "")])),
    ("chunked post then get", b"POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", fwd(&[("POST", "/1", "hello"), ("GET", "/2", "")])),
    ("a body that looks like a request", b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", fwd(&[("POST", "/1", "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")])),
    ("get then a bad request", b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", fwd_then(&[("GET", "/1", "")], 400)),
    ("a refused request stops the pipeline", b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    // --- Content-Length and Transfer-Encoding together, or ambiguous.
    ("length and chunked", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", refused(400)),
    ("chunked and length", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", refused(400)),
    ("chunked and length zero", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n", refused(400)),
    ("two differing lengths", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", refused(400)),
    ("length as a list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", refused(400)),
    ("length with a sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", refused(400)),
    ("negative length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", refused(400)),
    ("length in hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", refused(400)),
    ("length with junk", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\nhello", refused(400)),
    ("length that overflows", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", refused(400)),
    ("empty length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", refused(400)),
    ("length folded", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n 5\r\n\r\nhello", refused(400)),
    ("transfer-encoding not chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nhello", refused(400)),
    ("transfer-encoding gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello", refused(400)),
    ("chunked not last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("gzip then chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("chunked twice in one line", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("chunked in two lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("chunked in quotes", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("chunked with a parameter", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("empty transfer-encoding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", refused(400)),
    ("transfer-encoding folded", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("space before the colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("vertical tab before the name", b"POST / HTTP/1.1\r\nHost: a\r\n\x0bTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("space before the first header", b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("CR inside transfer-encoding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chun\rked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", refused(400)),
    // --- Chunked bodies that must not be guessed at ("funky chunks").
    ("bare LF after chunk data", b"POST /front HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nAAAAA\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("bare LF after the size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", refused(400)),
    ("bare LF after the last chunk", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\n\r\n", refused(400)),
    ("bare LF ending the trailers", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n", refused(400)),
    ("bare LF after a trailer", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\n\r\n", refused(400)),
    ("bare CR after chunk data", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r0\r\n\r\n", refused(400)),
    ("CR CR LF after the size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("more data than the size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("size that overflows 64 bits", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("size that is not hex", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("size with 0x", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("negative size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("size after a space", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("two sizes", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("empty size line", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("extension without a name", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;=x\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("extension with an empty value", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("extension quote left open", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"x\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("extension with a control byte", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\x01\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("extension with a bare LF inside quotes", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"\n\"\r\nhello\r\n0\r\n\r\n", refused(400)),
    ("trailer without a colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nno colon\r\n\r\n", refused(400)),
    ("trailer with a NUL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n", refused(400)),
    // --- Request lines.
    ("two spaces after the method", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("space after the version", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", refused(400)),
    ("tab as separator", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("space inside the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("DEL in the target", b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("version in lower case", b"GET / http/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("version 1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", refused(400)),
    ("version 2.0 over HTTP/1", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", refused(400)),
    ("HTTP/0.9 request line", b"GET /\r\n\r\n", refused(400)),
    ("method with a bad byte", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("bare CR in the request line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", refused(400)),
    ("userinfo in an absolute-form target", b"GET http://user:pw@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", refused(400)),
    ("authority-form for GET", b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("authority-form with a port", b"GET b.example:80 HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("asterisk for GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", refused(400)),
    ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", refused(405)),
    ("CONNECT to a name", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", refused(405)),
    // --- Host.
    ("no host", b"GET / HTTP/1.1\r\n\r\n", refused(400)),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", refused(400)),
    ("two identical hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", refused(400)),
    ("empty host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", refused(400)),
    ("host with a space", b"GET / HTTP/1.1\r\nHost: exa mple\r\n\r\n", refused(400)),
    ("host with a path", b"GET / HTTP/1.1\r\nHost: a.example/../x\r\n\r\n", refused(400)),
    ("host with userinfo", b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n", refused(400)),
    ("host with a bad port", b"GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n", refused(400)),
    ("host with two ports", b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", refused(400)),
    ("host with a query", b"GET / HTTP/1.1\r\nHost: a?x=1\r\n\r\n", refused(400)),
    ("host with an open IP literal", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", refused(400)),
    // --- Header lines.
    ("space before a colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n", refused(400)),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", refused(400)),
    ("obs-fold with a tab", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\t2\r\n\r\n", refused(400)),
    ("NUL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", refused(400)),
    ("bare CR in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", refused(400)),
    ("DEL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n", refused(400)),
    ("control byte in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x1bb\r\n\r\n", refused(400)),
    ("bad byte in a name", b"GET / HTTP/1.1\r\nHost: a\r\nX(A): 1\r\n\r\n", refused(400)),
    ("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", refused(400)),
    ("line without a colon", b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n", refused(400)),
    ("non-ASCII name", b"GET / HTTP/1.1\r\nHost: a\r\nX-\xc3\xa9: 1\r\n\r\n", refused(400)),
    ("over a hundred header lines", HUNDRED_AND_ONE, refused(431)),
];

/// A request with 101 header lines: over the limit of 100.
const HUNDRED_AND_ONE: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nX:x\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\nX:9\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\nX:9\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\nX:9\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\nX:9\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\nX:9\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\nX:9\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\nX:9\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\nX:9\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\nX:9\r\n\
X:0\r\nX:1\r\nX:2\r\nX:3\r\nX:4\r\nX:5\r\nX:6\r\nX:7\r\nX:8\r\n\r\n";

#[tokio::test]
async fn the_framing_table() {
    table(false).await;
}

/// HTTP/1.x over TLS is read by the same loop, with the same rules.
#[tokio::test]
async fn the_framing_table_over_tls() {
    table(true).await;
}

async fn table(tls: bool) {
    assert!(CASES.len() >= 100, "{} cases", CASES.len());
    let (backend, got) = recording_backend().await;
    let lb = match tls {
        false => Sluice::over(&[backend], "").await,
        true => tls_sluice_over(&backend, "").await,
    };
    let mut failures = Vec::new();
    for (name, bytes, expect) in CASES {
        got.lock().unwrap().clear();
        let statuses = match tls {
            false => exchange(TcpStream::connect(lb.addr).await.unwrap(), bytes, expect).await,
            true => {
                exchange(
                    connect(&lb, Some("a.test"), &[b"http/1.1"]).await,
                    bytes,
                    expect,
                )
                .await
            }
        };
        // A request the backend answered was recorded before its answer left; give
        // anything forwarded by mistake a moment to arrive as well.
        if expect.forwarded.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let received = got.lock().unwrap().clone();
        let wanted: Vec<Got> = expect
            .forwarded
            .iter()
            .map(|(m, t, b)| Got {
                method: m.to_string(),
                target: t.to_string(),
                body: b.as_bytes().to_vec(),
            })
            .collect();
        let mut want_statuses: Vec<u16> = vec![200; wanted.len()];
        want_statuses.extend(expect.refused);
        if received != wanted || statuses != want_statuses {
            failures.push(format!(
                "{name} (tls: {tls}): sent {:?}\n  backend got {received:?}, wanted {wanted:?}\n  client got {statuses:?}, wanted {want_statuses:?}",
                String::from_utf8_lossy(bytes)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases went wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

/// Sends `bytes` on a new connection and reads the answers `expect` calls for: the
/// statuses, in order. A refusal must also close the connection.
async fn exchange<S>(mut s: S, bytes: &[u8], expect: &Expect) -> Vec<u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let want = expect.forwarded.len() + usize::from(expect.refused.is_some());
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut chunk = [0u8; 8192];
        loop {
            while let Some((status, used, close)) = one_response(&buf) {
                buf.drain(..used);
                statuses.push(status);
                if close || statuses.len() > want {
                    return;
                }
            }
            if statuses.len() == want && expect.refused.is_none() {
                return;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    statuses
}

/// The status, length and `Connection: close` of a whole response at the start of
/// `buf`.
fn one_response(buf: &[u8]) -> Option<(u16, usize, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = r.parse(buf).ok()? else {
        return None;
    };
    let mut len = 0usize;
    let mut close = false;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
        }
        if h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close") {
            close = true;
        }
    }
    (buf.len() >= head + len).then(|| (r.code.unwrap_or(0), head + len, close))
}

/// A backend that reads requests strictly (Content-Length or chunked bodies), records
/// each complete one, and answers it 200. Incomplete requests are not recorded.
async fn recording_backend() -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let record = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    match take_request(&mut buf) {
                        Some(r) => {
                            record.lock().unwrap().push(r);
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if s.write_all(ok).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        None => match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        },
                    }
                }
            });
        }
    });
    (url, got)
}

/// One complete request from the start of `buf`, removed from it.
fn take_request(buf: &mut Vec<u8>) -> Option<Got> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = r.parse(buf).ok()? else {
        return None;
    };
    let (mut length, mut chunked) = (None, false);
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok();
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        }
    }
    let method = r.method?.to_owned();
    let target = r.path?.to_owned();
    let (body, used) = if chunked {
        dechunk(&buf[head..]).map(|(b, n)| (b, head + n))?
    } else {
        let n = length.unwrap_or(0);
        (buf.get(head..head + n)?.to_vec(), head + n)
    };
    buf.drain(..used);
    Some(Got {
        method,
        target,
        body,
    })
}

/// A whole chunked body (as sluice writes one: no extensions, no trailers) and the
/// bytes it took; None until all of it is there.
fn dechunk(mut b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let start = b.len();
    let mut body = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line]).ok()?, 16).ok()?;
        b = &b[line + 2..];
        if size == 0 {
            let end = b.windows(2).position(|w| w == b"\r\n")?;
            b = &b[end + 2..];
            return Some((body, start - b.len()));
        }
        body.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
