//! W3C Trace Context (`traceparent`): read from a client, written to a backend.
//!
//! `traceparent: 00-<trace id, 32 hex>-<parent span id, 16 hex>-<flags, 2 hex>`. A
//! request's valid header is continued: its trace id and flags are kept, and its span
//! id becomes the parent of sluice's span. Otherwise a new trace starts. Each attempt
//! at a backend is a span of its own, named to the backend as its parent.

/// The length of a version-00 `traceparent` value.
pub const LEN: usize = 55;
/// The `sampled` flag: the caller records this trace.
const SAMPLED: u8 = 0x01;

/// A request's place in a trace. The trace id is kept as the 32 hex digits it travels
/// as: a request's `traceparent` is written with a copy, not a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceCtx {
    trace_hex: [u8; 32],
    /// The client's span, when it sent a valid `traceparent`; 0 when not.
    parent: u64,
    /// sluice's span for the request.
    pub span_id: u64,
    pub flags: u8,
}

impl TraceCtx {
    /// Continues the client's `traceparent` (`given`), or starts a new trace when there
    /// is none or it is not valid. A new trace takes `made_id`, the request id sluice
    /// made (32 lowercase hex digits, never all zeros), as its trace id, so that one id
    /// finds the request in logs and in traces; a request whose client named its own
    /// request id gets a random one. It is sampled when sluice exports spans
    /// (`exporting`), so that the backends' tracers record it too.
    pub fn new(given: Option<&[u8]>, made_id: Option<&[u8]>, exporting: bool) -> TraceCtx {
        // The request's own span is seen only in exported spans.
        let span_id = if exporting { new_span_id() } else { 0 };
        if let Some(v) = given
            && let Some((trace_hex, parent, flags)) = parse(v)
        {
            return TraceCtx {
                trace_hex,
                parent,
                span_id,
                flags,
            };
        }
        let trace_hex = match made_id.and_then(|id| <[u8; 32]>::try_from(id).ok()) {
            Some(id) => id,
            None => {
                let mut hex = [0u8; 32];
                hex_u64(fastrand::u64(1..), &mut hex[..16]);
                hex_u64(fastrand::u64(..), &mut hex[16..]);
                hex
            }
        };
        TraceCtx {
            trace_hex,
            parent: 0,
            span_id,
            flags: if exporting { SAMPLED } else { 0 },
        }
    }

    /// Does the trace's caller record it? Spans of unsampled traces are not exported.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The client's span, if it named one.
    pub fn parent(&self) -> Option<[u8; 8]> {
        (self.parent != 0).then(|| self.parent.to_be_bytes())
    }

    /// The trace id's 16 bytes.
    pub fn trace_id(&self) -> [u8; 16] {
        unhex::<16>(&self.trace_hex).unwrap_or_default()
    }

    /// The trace id as 32 lowercase hex digits (for the access log).
    pub fn trace_id_hex(&self) -> &[u8; 32] {
        &self.trace_hex
    }

    /// The `traceparent` value for an attempt whose span is `span_id`.
    pub fn header(&self, span_id: u64) -> [u8; LEN] {
        let mut out = [b'-'; LEN];
        out[..2].copy_from_slice(b"00");
        out[3..35].copy_from_slice(&self.trace_hex);
        hex_u64(span_id, &mut out[36..52]);
        out[53..55].copy_from_slice(&HEX[usize::from(self.flags)]);
        out
    }
}

/// A new span id: random, never 0.
pub fn new_span_id() -> u64 {
    fastrand::u64(1..)
}

/// 32 lowercase hex digits, not all zeros.
fn is_trace_id(v: &[u8; 32]) -> bool {
    unhex::<16>(v).is_some_and(|id| id != [0; 16])
}

/// Reads a `traceparent` value: (trace id in hex, parent span id, flags). W3C Trace
/// Context §3.2: lowercase hex, neither id all zeros, version `ff` invalid; a later
/// version may be longer, and its first four fields are read as version 00's.
pub fn parse(v: &[u8]) -> Option<([u8; 32], u64, u8)> {
    let v = v.trim_ascii();
    if v.len() < LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = unhex::<1>(&v[..2])?[0];
    match version {
        0 if v.len() != LEN => return None,
        0xff => return None,
        _ if v.len() > LEN && v[LEN] != b'-' => return None,
        _ => {}
    }
    let trace_hex: [u8; 32] = v[3..35].try_into().ok()?;
    let parent = u64::from_be_bytes(unhex::<8>(&v[36..52])?);
    let flags = unhex::<1>(&v[53..55])?[0];
    if !is_trace_id(&trace_hex) || parent == 0 {
        return None;
    }
    Some((trace_hex, parent, flags))
}

/// Each byte's two lowercase hex digits.
const HEX: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [digits[i >> 4], digits[i & 0xf]];
        i += 1;
    }
    t
};

/// `v` as 16 hex digits into `out[..16]`.
#[inline]
fn hex_u64(v: u64, out: &mut [u8]) {
    for (b, o) in v.to_be_bytes().iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&HEX[usize::from(*b)]);
    }
}

/// Lowercase hex only, as the standard says.
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    if s.len() != 2 * N {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const OURS: Option<&[u8]> = Some(b"0123456789abcdef0123456789abcdef");

    #[test]
    fn a_valid_traceparent_is_continued() {
        let t = TraceCtx::new(Some(GIVEN.as_bytes()), OURS, false);
        assert_eq!(&t.trace_id_hex()[..], b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.trace_id()[..2], [0x4b, 0xf9]);
        assert_eq!(t.parent(), Some(0x00f0_67aa_0ba9_02b7u64.to_be_bytes()));
        assert!(t.sampled());
        let header = t.header(0xabab_abab_abab_abab);
        assert_eq!(
            std::str::from_utf8(&header).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-abababababababab-01"
        );
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace_named_by_the_request_id() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
            let t = TraceCtx::new(Some(bad.as_bytes()), OURS, true);
            assert_eq!(t.parent(), None, "{bad:?}");
            assert_eq!(Some(&t.trace_id_hex()[..]), OURS);
            assert!(t.sampled(), "a new trace is sampled when exported");
        }
        assert!(!TraceCtx::new(None, OURS, false).sampled());
    }

    #[test]
    fn without_a_request_id_of_sluices_a_trace_id_is_random() {
        for _ in 0..3 {
            let a = TraceCtx::new(None, None, true);
            let b = TraceCtx::new(None, None, true);
            assert_ne!(a.trace_id_hex(), b.trace_id_hex());
            assert!(is_trace_id(a.trace_id_hex()));
            assert_ne!(a.span_id, b.span_id);
        }
    }

    #[test]
    fn a_later_version_is_read_as_00_and_unsampled_flags_kept() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes";
        let t = TraceCtx::new(Some(later.as_bytes()), OURS, true);
        assert!(t.parent().is_some());
        assert!(!t.sampled());
        // Written back as version 00, and read back the same.
        let header = t.header(7);
        assert!(header.starts_with(b"00-4bf92f35"));
        assert_eq!(parse(&header), Some((*t.trace_id_hex(), 7, 0)));
    }
}
