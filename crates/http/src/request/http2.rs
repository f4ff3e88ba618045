//! An HTTP/2 request head as the same [`Request`] the HTTP/1.1 parser
//! gives, so that both drive one request core. The engine has decoded the
//! HPACK block; here its pseudo-header fields become method, target and
//! authority, and what HTTP/2 forbids is refused (RFC 9113 section 8.2.2:
//! connection-specific fields, `TE` other than `trailers`; section 8.3.1:
//! a Host that names another authority than `:authority`; a
//! Content-Length that cannot be the body's).

use super::{valid_authority, Body, Http1, Limits, Request, Version};
use crate::HttpError;

/// An HTTP/2 request head as the engine decoded it.
#[derive(Clone, Copy, Debug)]
pub struct Http2Head<'b> {
    /// `:method`.
    pub method: &'b str,
    /// `:path` (path and query).
    pub path: &'b [u8],
    /// `:authority`, when the client sent one.
    pub authority: Option<&'b [u8]>,
    /// The regular fields, in order (HTTP/2 names are lowercase).
    pub fields: &'b [httparse::Header<'b>],
    /// The HEADERS frame ended the stream: no body follows.
    pub end_stream: bool,
    /// What the access log shows as the request line (`GET /x HTTP/2.0`).
    pub request_line: &'b [u8],
}

/// Fields that only mean something on one HTTP/1.1 connection; an HTTP/2
/// request carrying one is malformed.
const CONNECTION_SPECIFIC: [&str; 5] =
    ["connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"];

/// The request an HTTP/2 stream carries, or why it is malformed.
pub fn request_from_http2<'b>(head: Http2Head<'b>, limits: &Limits) -> Result<Request<'b>, HttpError> {
    if head.method.eq_ignore_ascii_case("CONNECT") && head.authority.is_none() {
        return Err(HttpError::BadRequest("CONNECT without :authority"));
    }
    if head.method.eq_ignore_ascii_case("CONNECT") {
        // Extended CONNECT (RFC 8441) is not offered, and a tunnel to an
        // arbitrary authority is no job of a front end.
        return Err(HttpError::NotImplemented("CONNECT over HTTP/2"));
    }
    let target = head.path;
    let origin_form = target.first() == Some(&b'/') || (target == b"*" && head.method == "OPTIONS");
    if !origin_form {
        return Err(HttpError::BadRequest("missing or invalid :path"));
    }
    if target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::BadRequest("space or control byte in :path"));
    }
    if head.method.is_empty() || !head.method.bytes().all(crate::chunked::is_tchar) {
        return Err(HttpError::BadRequest("invalid :method"));
    }
    if target.len() > limits.uri_bytes {
        return Err(HttpError::UriTooLong);
    }
    refuse_http1_fields(head.fields)?;
    let http1 = Http1 { keep_alive: true, request_line: head.request_line, head_len: 0 };
    let mut req = Request::empty(head.method, target, target, Version::Http2, head.fields, http1);
    let framing = req.read_fields()?;
    if framing.hosts > 1 {
        return Err(HttpError::BadRequest("more than one Host header"));
    }
    req.host = match (head.authority, req.host) {
        (Some(authority), _) if !valid_authority(authority) => {
            return Err(HttpError::BadRequest("invalid :authority"))
        }
        (Some(authority), Some(host)) if !host.eq_ignore_ascii_case(authority) => {
            return Err(HttpError::BadRequest("Host names another authority than :authority"))
        }
        (Some(authority), _) => Some(authority),
        (None, Some(host)) => Some(host),
        (None, None) => return Err(HttpError::BadRequest("no :authority and no Host")),
    };
    req.body = match (framing.content_length, head.end_stream) {
        (Some(n), true) if n > 0 => {
            return Err(HttpError::BadRequest("Content-Length on a request that has no body"))
        }
        (Some(n), _) => Body::Length(n),
        (None, true) => Body::None,
        // DATA frames follow, their total known only at the stream's end.
        (None, false) => Body::Chunked,
    };
    Ok(req)
}

/// RFC 9113 section 8.2.2: connection-specific fields, and `TE` with any
/// value but `trailers`, make a request malformed; so does an uppercase
/// name, which HPACK never carries.
fn refuse_http1_fields(fields: &[httparse::Header<'_>]) -> Result<(), HttpError> {
    for field in fields {
        let name = field.name;
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(HttpError::BadRequest("uppercase field name in an HTTP/2 request"));
        }
        // RFC 9113 section 8.2.1: what would split or end a line of an
        // HTTP/1.1 head must never reach one (downgrade smuggling).
        if name.is_empty() || !name.bytes().all(crate::chunked::is_tchar) {
            return Err(HttpError::BadRequest("invalid field name in an HTTP/2 request"));
        }
        if field.value.iter().any(|&b| matches!(b, 0 | b'\r' | b'\n')) {
            return Err(HttpError::BadRequest("CR, LF or NUL in an HTTP/2 field value"));
        }
        let padded = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
        if padded(field.value.first()) || padded(field.value.last()) {
            return Err(HttpError::BadRequest("whitespace around an HTTP/2 field value"));
        }
        if CONNECTION_SPECIFIC.contains(&name) {
            return Err(HttpError::BadRequest("connection-specific field in an HTTP/2 request"));
        }
        if name == "te" && !field.value.eq_ignore_ascii_case(b"trailers") {
            return Err(HttpError::BadRequest("TE other than trailers in an HTTP/2 request"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Method;

    const LIMITS: Limits = Limits { head_bytes: 8192, uri_bytes: 1024 };

    fn field<'a>(name: &'a str, value: &'a [u8]) -> httparse::Header<'a> {
        httparse::Header { name, value }
    }

    fn head<'a>(method: &'a str, path: &'a [u8], fields: &'a [httparse::Header<'a>]) -> Http2Head<'a> {
        Http2Head { method, path, authority: Some(b"a.test"), fields, end_stream: true, request_line: b"" }
    }

    #[test]
    fn a_stream_becomes_the_same_request_the_core_routes() {
        let fields = [field("range", b"bytes=0-9"), field("user-agent", b"t"), field("cookie", b"a=1")];
        let req = request_from_http2(head("GET", b"/x?y=1", &fields), &LIMITS).unwrap();
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.origin_target, b"/x?y=1");
        assert_eq!(req.host, Some(&b"a.test"[..]));
        assert_eq!(req.range, Some(&b"bytes=0-9"[..]));
        assert_eq!(req.user_agent, Some(&b"t"[..]));
        assert_eq!(req.version, Version::Http2);
        assert_eq!(req.body, Body::None);
        assert_eq!(req.fields.len(), 3, "every field reaches a proxy");
        assert!(req.upgrade.is_none() && !req.expect_continue);
    }

    #[test]
    fn the_body_is_framed_by_content_length_or_by_the_stream() {
        let cl = [field("content-length", b"5")];
        let open = Http2Head { end_stream: false, ..head("POST", b"/", &cl) };
        assert_eq!(request_from_http2(open, &LIMITS).unwrap().body, Body::Length(5));
        let open = Http2Head { end_stream: false, ..head("POST", b"/", &[]) };
        assert_eq!(request_from_http2(open, &LIMITS).unwrap().body, Body::Chunked);
        assert!(request_from_http2(head("POST", b"/", &cl), &LIMITS).is_err(), "5 bytes promised, none sent");
        let twice = [field("content-length", b"5"), field("content-length", b"6")];
        let open = Http2Head { end_stream: false, ..head("POST", b"/", &twice) };
        assert!(request_from_http2(open, &LIMITS).is_err());
    }

    #[test]
    fn bytes_that_would_split_an_http1_head_are_refused() {
        for bad in [
            field("x-a", b"1\r\nx-b: 2"),
            field("x-a", b"1\nx-b: 2"),
            field("x-a", b"a\0b"),
            field("x a", b"1"),
            field("", b"1"),
            field("x:a", b"1"),
            field("x-a", b" 1"),
            field("x-a", b"1\t"),
        ] {
            let fields = [bad];
            assert!(request_from_http2(head("GET", b"/", &fields), &LIMITS).is_err(), "{bad:?}");
        }
        for path in [&b"/a b"[..], b"/a\r\nb", b"/a\0"] {
            assert!(request_from_http2(head("GET", path, &[]), &LIMITS).is_err(), "{path:?}");
        }
        for method in ["G T", "GET\r\n", ""] {
            assert!(request_from_http2(head(method, b"/", &[]), &LIMITS).is_err(), "{method:?}");
        }
    }

    #[test]
    fn what_http2_forbids_is_refused() {
        for bad in [
            field("connection", b"keep-alive"),
            field("transfer-encoding", b"chunked"),
            field("upgrade", b"websocket"),
            field("keep-alive", b"5"),
            field("proxy-connection", b"close"),
            field("te", b"gzip"),
            field("Host", b"a.test"),
        ] {
            let fields = [bad];
            assert!(request_from_http2(head("GET", b"/", &fields), &LIMITS).is_err(), "{:?}", bad.name);
        }
        let te = [field("te", b"trailers")];
        assert!(request_from_http2(head("GET", b"/", &te), &LIMITS).is_ok());
    }

    #[test]
    fn the_authority_is_one_and_valid() {
        let other = [field("host", b"b.test")];
        assert!(
            request_from_http2(head("GET", b"/", &other), &LIMITS).is_err(),
            "Host names another authority"
        );
        let same = [field("host", b"A.test")];
        assert!(request_from_http2(head("GET", b"/", &same), &LIMITS).is_ok());
        let none = Http2Head { authority: None, ..head("GET", b"/", &[]) };
        assert!(request_from_http2(none, &LIMITS).is_err());
        let host_only = [field("host", b"h.test:8443")];
        let via_host = Http2Head { authority: None, ..head("GET", b"/", &host_only) };
        assert_eq!(request_from_http2(via_host, &LIMITS).unwrap().host, Some(&b"h.test:8443"[..]));
        let bad = Http2Head { authority: Some(b"a.test/evil"), ..head("GET", b"/", &[]) };
        assert!(request_from_http2(bad, &LIMITS).is_err());
    }

    #[test]
    fn targets_and_methods_the_core_cannot_take_are_refused() {
        assert!(request_from_http2(head("CONNECT", b"/", &[]), &LIMITS).is_err());
        assert!(request_from_http2(head("GET", b"", &[]), &LIMITS).is_err());
        assert!(request_from_http2(head("GET", b"http://a.test/", &[]), &LIMITS).is_err());
        assert!(request_from_http2(head("OPTIONS", b"*", &[]), &LIMITS).is_ok());
        let long = vec![b'/'; 2000];
        assert_eq!(request_from_http2(head("GET", &long, &[]), &LIMITS).unwrap_err(), HttpError::UriTooLong);
    }
}
