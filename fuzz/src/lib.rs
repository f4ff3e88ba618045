//! What the fuzz targets share: cutting an input into pieces the way a
//! network would, and the parts of a parsed request that must survive a
//! round trip. The targets themselves are in `fuzz_targets/`, one per
//! parser, and fuzz/README.md says what each one asserts.

use tine_http::request::{Body, Version, MAX_HEADERS};
use tine_http::{Limits, Method, Request};

/// Cuts `len` bytes into pieces at offsets taken from `seed` (each byte one
/// piece length of 1 to 256), so one input explores one way the bytes could
/// arrive. Returns the end offset of every piece; the last is `len`.
pub fn piece_ends(seed: &[u8], len: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    for &b in seed.iter().cycle().take(len.max(1)) {
        at = (at + usize::from(b) + 1).min(len);
        ends.push(at);
        if at == len {
            break;
        }
    }
    if ends.last() != Some(&len) {
        ends.push(len);
    }
    ends
}

/// The limits tine's defaults use, and a smaller pair so that short inputs
/// reach the limit checks too.
pub fn limits(small: bool) -> Limits {
    if small {
        Limits { head_bytes: 512, uri_bytes: 128 }
    } else {
        Limits { head_bytes: 16 * 1024, uri_bytes: 8 * 1024 }
    }
}

/// What a request means to tine: everything routing, framing and
/// forwarding decide on.
#[derive(Debug, PartialEq, Eq)]
pub struct Meaning {
    pub method: Method,
    pub method_text: String,
    pub target: Vec<u8>,
    pub origin_target: Vec<u8>,
    pub version: Version,
    pub keep_alive: bool,
    pub body: Body,
    pub expect_continue: bool,
    pub host: Option<Vec<u8>>,
    pub upgrade: Option<Vec<u8>>,
    pub range: Option<Vec<u8>>,
}

impl Meaning {
    pub fn of(r: &Request<'_>) -> Self {
        Meaning {
            method: r.method,
            method_text: r.method_text.to_string(),
            target: r.target.to_vec(),
            origin_target: r.origin_target.to_vec(),
            version: r.version,
            keep_alive: r.http1.keep_alive,
            body: r.body,
            expect_continue: r.expect_continue,
            host: r.host.map(<[u8]>::to_vec),
            upgrade: r.upgrade.map(<[u8]>::to_vec),
            range: r.range.map(<[u8]>::to_vec),
        }
    }
}

/// The header fields of a head as httparse reads them: (name, value).
pub fn header_fields(head: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            req.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect()
        }
        _ => Vec::new(),
    }
}

/// A canonical spelling of a request head: one space between the parts of
/// the request line, `name: value` per field, CRLF everywhere.
pub fn canonical_head(r: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(r.method_text.as_bytes());
    out.push(b' ');
    out.extend_from_slice(r.target);
    out.extend_from_slice(if r.version == Version::Http10 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
    for field in r.fields {
        out.extend_from_slice(field.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(field.value.trim_ascii());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether `head` is exactly one head: it ends with its first blank line,
/// and every line ends in CRLF (no bare CR or LF a peer could split on).
pub fn exactly_one_head(head: &[u8]) -> bool {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    if end + 4 != head.len() {
        return false;
    }
    head.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => head.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && head[i - 1] == b'\r',
        _ => true,
    })
}
