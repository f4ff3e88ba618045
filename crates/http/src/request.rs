//! Request heads: httparse does the tokenising; this module adds the checks that
//! keep one request from being read as two (RFC 9112 section 6.3) and extracts
//! what the handlers need, borrowing from the read buffer instead of copying.

use crate::HttpError;

/// Most headers a request may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Any other syntactically valid method; static handlers answer 405.
    Other,
}

/// How the request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub head_bytes: usize,
    pub uri_bytes: usize,
}

/// A parsed request head; slices borrow from the read buffer.
#[derive(Clone, Debug)]
pub struct Request<'b> {
    pub method: Method,
    pub method_text: &'b str,
    pub target: &'b [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub keep_alive: bool,
    pub body: Body,
    /// HTTP/1.1 `Expect: 100-continue`: the client waits for a 100 (Continue)
    /// before it sends the body.
    pub expect_continue: bool,
    pub host: Option<&'b [u8]>,
    pub if_none_match: Option<&'b [u8]>,
    pub if_modified_since: Option<&'b [u8]>,
    pub range: Option<&'b [u8]>,
    pub if_range: Option<&'b [u8]>,
    pub referer: Option<&'b [u8]>,
    pub user_agent: Option<&'b [u8]>,
    /// The request line as received, for the access log.
    pub request_line: &'b [u8],
    /// Bytes of the buffer the head occupies, including its final blank line.
    pub head_len: usize,
}

/// Parses one request head from the front of `buf`. `Ok(None)` asks for more bytes.
pub fn parse_request<'b>(buf: &'b [u8], limits: &Limits) -> Result<Option<Request<'b>>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return partial(buf, limits).map(|()| None),
        Err(e) => return Err(map_parse_error(e, buf, limits)),
    };
    if head_len > limits.head_bytes {
        return Err(HttpError::HeadTooLarge);
    }
    let method_text = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default().as_bytes();
    if target.len() > limits.uri_bytes {
        return Err(HttpError::UriTooLong);
    }
    let minor_version = req.version.unwrap_or(1);
    let mut out = Request {
        method: match method_text {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => Method::Other,
        },
        method_text,
        target,
        minor_version,
        keep_alive: minor_version == 1,
        body: Body::None,
        expect_continue: false,
        host: None,
        if_none_match: None,
        if_modified_since: None,
        range: None,
        if_range: None,
        referer: None,
        user_agent: None,
        request_line: request_line(&buf[..head_len]),
        head_len,
    };
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut hosts = 0;
    let (mut conn_close, mut conn_keep_alive) = (false, false);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::BadRequest("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(HttpError::BadRequest("repeated Transfer-Encoding header"));
            }
            transfer_encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            out.host = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"if-none-match") {
            out.if_none_match = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-modified-since") {
            out.if_modified_since = Some(value);
        } else if name.eq_ignore_ascii_case(b"range") {
            out.range = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-range") {
            out.if_range = Some(value);
        } else if name.eq_ignore_ascii_case(b"referer") {
            out.referer = Some(value);
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            out.user_agent = Some(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            out.expect_continue = minor_version == 1 && value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if hosts > 1 {
        return Err(HttpError::BadRequest("more than one Host header"));
    }
    if hosts == 0 && minor_version == 1 {
        return Err(HttpError::BadRequest("HTTP/1.1 request without Host"));
    }
    out.body = match (transfer_encoding, content_length) {
        (Some(_), Some(_)) => return Err(HttpError::BadRequest("both Transfer-Encoding and Content-Length")),
        (Some(_), None) if minor_version == 0 => {
            return Err(HttpError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (Some(te), None) => {
            let last = te.rsplit(|&b| b == b',').next().map(trim).unwrap_or_default();
            if !last.eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::BadRequest("Transfer-Encoding does not end in chunked"));
            }
            Body::Chunked
        }
        (None, Some(0)) | (None, None) => Body::None,
        (None, Some(n)) => Body::Length(n),
    };
    out.keep_alive = if minor_version == 1 { !conn_close } else { conn_keep_alive && !conn_close };
    Ok(Some(out))
}

/// An incomplete head is fine unless it already broke a limit.
fn partial(buf: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let request_line_done = buf.contains(&b'\n');
    // Method and version add a few bytes to the target on the request line.
    if !request_line_done && buf.len() > limits.uri_bytes + 32 {
        return Err(HttpError::UriTooLong);
    }
    if buf.len() >= limits.head_bytes {
        return Err(HttpError::HeadTooLarge);
    }
    Ok(())
}

fn map_parse_error(e: httparse::Error, buf: &[u8], limits: &Limits) -> HttpError {
    match e {
        httparse::Error::Version => HttpError::VersionNotSupported,
        httparse::Error::TooManyHeaders => HttpError::HeadTooLarge,
        // A target over the limit may trip httparse on an unrelated byte later
        // in an oversized head; report the limit, which is the real cause.
        _ if !buf.contains(&b'\n') && buf.len() > limits.uri_bytes + 32 => HttpError::UriTooLong,
        httparse::Error::HeaderName => HttpError::BadRequest("invalid header name"),
        httparse::Error::HeaderValue => HttpError::BadRequest("invalid header value"),
        httparse::Error::NewLine | httparse::Error::Status => HttpError::BadRequest("malformed line ending"),
        httparse::Error::Token => HttpError::BadRequest("malformed request line"),
    }
}

/// The first non-empty line of a head, without its line ending.
fn request_line(head: &[u8]) -> &[u8] {
    let start = head.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(head.len());
    let rest = &head[start..];
    let end = rest.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(rest.len());
    &rest[..end]
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    const BAD: HttpError = HttpError::BadRequest("invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).ok_or(BAD)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { head_bytes: 1024, uri_bytes: 256 };

    fn parse(raw: &str) -> Result<Option<Request<'_>>, HttpError> {
        parse_request(raw.as_bytes(), &LIMITS)
    }

    #[test]
    fn simple_get() {
        let r = parse("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\nGET /next").unwrap().unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.target, b"/a?b");
        assert!(r.keep_alive);
        assert_eq!(r.body, Body::None);
        assert_eq!(r.head_len, "GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n".len());
        assert_eq!(r.request_line, b"GET /a?b HTTP/1.1");
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw| parse(raw).unwrap().unwrap().keep_alive;
        assert!(!ka("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(ka("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, keep-alive\r\n\r\n"));
    }

    #[test]
    fn partial_until_complete() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert!(parse("").unwrap().is_none());
    }

    #[test]
    fn framing_ambiguities_are_refused() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\nHost: x\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
            "\x01GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(matches!(parse(raw), Err(HttpError::BadRequest(_))), "{raw:?} gave {:?}", parse(raw));
        }
        let same = parse("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(same.unwrap().unwrap().body, Body::Length(3));
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(300));
        assert_eq!(parse(&long).unwrap_err(), HttpError::UriTooLong);
        let long_partial = format!("GET /{}", "a".repeat(300));
        assert_eq!(parse(&long_partial).unwrap_err(), HttpError::UriTooLong);
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n", "a".repeat(1100));
        assert_eq!(parse(&big).unwrap_err(), HttpError::HeadTooLarge);
        assert_eq!(parse("GET / HTTP/2.0\r\n\r\n").unwrap_err(), HttpError::VersionNotSupported);
    }
}
