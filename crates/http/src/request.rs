//! Request heads: httparse does the tokenising; this module adds the checks that
//! keep one request from being read as two (RFC 9112 section 6.3) and extracts
//! what the handlers need, borrowing from the read buffer instead of copying.

mod http2;

pub use http2::{request_from_http2, Http2Head};

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
    /// `Content-Length: N` (kept even for 0: a proxy says so upstream).
    Length(u64),
    Chunked,
}

impl Body {
    /// Whether body bytes follow the head.
    pub fn has_bytes(self) -> bool {
        !matches!(self, Body::None | Body::Length(0))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub head_bytes: usize,
    pub uri_bytes: usize,
}

/// The HTTP version a request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    /// A stream of an HTTP/2 connection.
    Http2,
}

/// A parsed request head, the same whatever protocol carried it (method,
/// target, authority, fields, body framing, and what handlers look up);
/// slices borrow from the read buffer. What only HTTP/1.x says of it is in
/// [`Http1`].
#[derive(Clone, Debug)]
pub struct Request<'b> {
    pub method: Method,
    pub method_text: &'b str,
    /// The request target as received (origin-form or absolute-form).
    pub target: &'b [u8],
    /// The target in origin-form (path and query), what an upstream is sent:
    /// the target itself, or the part of an absolute-form target after its
    /// authority (`/` when it has no path).
    pub origin_target: &'b [u8],
    pub version: Version,
    pub body: Body,
    /// HTTP/1.1 `Expect: 100-continue`: the client waits for a 100 (Continue)
    /// before it sends the body.
    pub expect_continue: bool,
    /// The host the request is for: the authority of an absolute-form target,
    /// which takes precedence over the Host header (RFC 9112 section 3.2.2),
    /// else the Host header. Checked to be a valid `host[:port]`.
    pub host: Option<&'b [u8]>,
    /// The protocol an HTTP/1.1 request asks to switch to (`Connection:
    /// upgrade` and an `Upgrade` header); only then may a 101 answer it.
    pub upgrade: Option<&'b [u8]>,
    pub if_none_match: Option<&'b [u8]>,
    pub if_modified_since: Option<&'b [u8]>,
    pub range: Option<&'b [u8]>,
    /// Every Accept-Encoding field, merged; `None` when there was none.
    pub accept_encoding: Option<crate::content_coding::AcceptEncoding>,
    pub if_range: Option<&'b [u8]>,
    pub referer: Option<&'b [u8]>,
    pub user_agent: Option<&'b [u8]>,
    /// Every header field as received, in order: what a proxy forwards
    /// (after its rewrite).
    pub fields: &'b [httparse::Header<'b>],
    /// How the request sits on its HTTP/1.x connection.
    pub http1: Http1<'b>,
}

/// What only an HTTP/1.x connection says of a request.
#[derive(Clone, Copy, Debug)]
pub struct Http1<'b> {
    /// The connection stays open after the response: the version's default,
    /// as its `Connection` header changes it.
    pub keep_alive: bool,
    /// The request line as received, for the access log.
    pub request_line: &'b [u8],
    /// Bytes of the buffer the head occupies, including its final blank line.
    pub head_len: usize,
}

/// The host of a `host[:port]` authority (a Host value), without its port;
/// an IPv6 literal keeps its brackets.
pub fn host_without_port(authority: &[u8]) -> &[u8] {
    match authority.iter().rposition(|&b| b == b':') {
        Some(i) if !authority.ends_with(b"]") => &authority[..i],
        _ => authority,
    }
}

/// Room for the fields of one request head; the caller owns it (on its
/// stack) and the parsed [`Request`] borrows it. Left uninitialised until
/// the parser fills it, so a request costs no 3 KiB of zeroing.
pub type FieldSlots<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// Empty slots for [`parse_request`].
pub const fn field_slots<'b>() -> FieldSlots<'b> {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses one request head from the front of `buf`. `Ok(None)` asks for more bytes.
pub fn parse_request<'b>(
    buf: &'b [u8],
    slots: &'b mut FieldSlots<'b>,
    limits: &Limits,
) -> Result<Option<Request<'b>>, HttpError> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, slots) {
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
    let version = if req.version == Some(0) { Version::Http10 } else { Version::Http11 };
    let (authority, origin_target) = split_target(target)?;
    let http1 = Http1 {
        keep_alive: version == Version::Http11,
        request_line: request_line(&buf[..head_len]),
        head_len,
    };
    let mut out = Request::empty(method_text, target, origin_target, version, req.headers, http1);
    let framing = out.read_fields()?;
    out.frame(framing, authority)?;
    Ok(Some(out))
}

/// What the fields of a head say of its framing, checked once all are read.
#[derive(Default)]
struct FramingFields<'b> {
    content_length: Option<u64>,
    transfer_encoding: Option<&'b [u8]>,
    hosts: usize,
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    upgrade_to: Option<&'b [u8]>,
}

impl<'b> Request<'b> {
    /// The request with its line read and none of its fields yet.
    fn empty(
        method_text: &'b str,
        target: &'b [u8],
        origin_target: &'b [u8],
        version: Version,
        fields: &'b [httparse::Header<'b>],
        http1: Http1<'b>,
    ) -> Self {
        Request {
            method: match method_text {
                "GET" => Method::Get,
                "HEAD" => Method::Head,
                _ => Method::Other,
            },
            method_text,
            target,
            origin_target,
            version,
            body: Body::None,
            expect_continue: false,
            host: None,
            upgrade: None,
            if_none_match: None,
            if_modified_since: None,
            range: None,
            accept_encoding: None,
            if_range: None,
            referer: None,
            user_agent: None,
            fields,
            http1,
        }
    }

    /// Takes what handlers look up from the fields, and collects what
    /// frames the request for [`Request::frame`].
    fn read_fields(&mut self) -> Result<FramingFields<'b>, HttpError> {
        let mut f = FramingFields::default();
        for h in self.fields {
            let name = h.name.as_bytes();
            let value = trim(h.value);
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_content_length(value)?;
                if f.content_length.is_some_and(|prev| prev != n) {
                    return Err(HttpError::BadRequest("conflicting Content-Length headers"));
                }
                f.content_length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                if f.transfer_encoding.is_some() {
                    return Err(HttpError::BadRequest("repeated Transfer-Encoding header"));
                }
                f.transfer_encoding = Some(value);
            } else if name.eq_ignore_ascii_case(b"host") {
                f.hosts += 1;
                if !valid_authority(value) {
                    return Err(HttpError::BadRequest("invalid Host"));
                }
                self.host = Some(value);
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in value.split(|&b| b == b',').map(trim) {
                    f.close |= token.eq_ignore_ascii_case(b"close");
                    f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    f.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                }
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                f.upgrade_to = Some(value);
            } else {
                self.look_up(name, value);
            }
        }
        Ok(f)
    }

    /// The fields handlers use that say nothing of framing.
    fn look_up(&mut self, name: &[u8], value: &'b [u8]) {
        if name.eq_ignore_ascii_case(b"if-none-match") {
            self.if_none_match = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-modified-since") {
            self.if_modified_since = Some(value);
        } else if name.eq_ignore_ascii_case(b"range") {
            self.range = Some(value);
        } else if name.eq_ignore_ascii_case(b"accept-encoding") {
            self.accept_encoding.get_or_insert_default().add_field(value);
        } else if name.eq_ignore_ascii_case(b"if-range") {
            self.if_range = Some(value);
        } else if name.eq_ignore_ascii_case(b"referer") {
            self.referer = Some(value);
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            self.user_agent = Some(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            self.expect_continue =
                self.version == Version::Http11 && value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    /// Checks the host and the body framing the fields gave (RFC 9112
    /// section 6.3: anything that could be read two ways is refused), and
    /// settles the connection's persistence and any upgrade.
    fn frame(&mut self, f: FramingFields<'b>, authority: Option<&'b [u8]>) -> Result<(), HttpError> {
        let http11 = self.version == Version::Http11;
        if f.hosts > 1 {
            return Err(HttpError::BadRequest("more than one Host header"));
        }
        if f.hosts == 0 && http11 {
            return Err(HttpError::BadRequest("HTTP/1.1 request without Host"));
        }
        if let Some(authority) = authority {
            self.host = Some(authority);
        }
        if http11 && f.upgrade {
            self.upgrade = f.upgrade_to.filter(|u| !u.is_empty());
        }
        self.body = match (f.transfer_encoding, f.content_length) {
            (Some(_), Some(_)) => {
                return Err(HttpError::BadRequest("both Transfer-Encoding and Content-Length"))
            }
            (Some(_), None) if !http11 => {
                return Err(HttpError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"))
            }
            // Only chunked alone: any other coding, or a list, is one a proxy
            // would have to pass on undecoded and a back end might read otherwise.
            (Some(te), None) if te.eq_ignore_ascii_case(b"chunked") => Body::Chunked,
            (Some(_), None) => return Err(HttpError::NotImplemented("transfer coding other than chunked")),
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::None,
        };
        self.http1.keep_alive = if http11 { !f.close } else { f.keep_alive && !f.close };
        Ok(())
    }
}

/// An incomplete head is fine unless it already broke a limit.
fn partial(buf: &[u8], limits: &Limits) -> Result<(), HttpError> {
    if target_so_far(buf) > limits.uri_bytes {
        return Err(HttpError::UriTooLong);
    }
    if buf.len() >= limits.head_bytes {
        return Err(HttpError::HeadTooLarge);
    }
    Ok(())
}

/// The length of the target received so far while the request line is
/// still incomplete (0 once it is complete): a long target is refused before
/// its end arrives, and only the target counts, so a head accepted whole is
/// never refused as 414 when it arrives in pieces.
fn target_so_far(buf: &[u8]) -> usize {
    if buf.contains(&b'\n') {
        return 0;
    }
    let Some(space) = buf.iter().position(|&b| b == b' ') else { return 0 };
    let rest = &buf[space + 1..];
    rest.iter().position(|&b| b == b' ').unwrap_or(rest.len())
}

fn map_parse_error(e: httparse::Error, buf: &[u8], limits: &Limits) -> HttpError {
    match e {
        httparse::Error::Version => HttpError::VersionNotSupported,
        httparse::Error::TooManyHeaders => HttpError::HeadTooLarge,
        // A target over the limit may trip httparse on an unrelated byte later
        // in an oversized head; report the limit, which is the real cause.
        _ if target_so_far(buf) > limits.uri_bytes => HttpError::UriTooLong,
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

/// Splits an absolute-form target (`http://host:port/path?q`) into its
/// authority and origin-form rest; an origin-form target has no authority.
/// Other forms are left to the router, which refuses them.
fn split_target(target: &[u8]) -> Result<(Option<&[u8]>, &[u8]), HttpError> {
    if target.first() == Some(&b'/') {
        return Ok((None, target));
    }
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            let end = rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            if authority.is_empty() || !valid_authority(authority) {
                return Err(HttpError::BadRequest("invalid authority in the request target"));
            }
            return Ok((Some(authority), if path.first() == Some(&b'/') { path } else { b"/" }));
        }
    }
    Ok((None, target))
}

/// `host [":" port]` as RFC 9110 section 7.2 allows it: a registered name or
/// IPv4 address (unreserved, sub-delims, percent-escapes), or an IP literal
/// in brackets. No userinfo, no path, no whitespace.
pub fn valid_authority(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|&b| b == b']') else { return false };
        let literal = &value[1..close];
        if literal.is_empty() || !literal.iter().all(|&b| b.is_ascii_alphanumeric() || b":.".contains(&b)) {
            return false;
        }
        match &value[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        }
    };
    let host_ok = host.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    host_ok && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
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
        // A test's slots live as long as the test: leaked, as the test is short.
        let slots = Box::leak(Box::new(field_slots()));
        parse_request(raw.as_bytes(), slots, &LIMITS)
    }

    #[test]
    fn a_host_without_its_port() {
        assert_eq!(host_without_port(b"a.test:8080"), b"a.test");
        assert_eq!(host_without_port(b"a.test"), b"a.test");
        assert_eq!(host_without_port(b"[::1]:443"), b"[::1]");
        assert_eq!(host_without_port(b"[::1]"), b"[::1]");
    }

    #[test]
    fn simple_get() {
        let r = parse("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\nGET /next").unwrap().unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.target, b"/a?b");
        assert!(r.http1.keep_alive);
        assert_eq!(r.body, Body::None);
        assert_eq!(r.http1.head_len, "GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n".len());
        assert_eq!(r.http1.request_line, b"GET /a?b HTTP/1.1");
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw| parse(raw).unwrap().unwrap().http1.keep_alive;
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
    fn only_chunked_alone_is_a_transfer_coding() {
        for te in ["chunked", "Chunked", "CHUNKED", " chunked "] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:{te}\r\n\r\n");
            assert_eq!(parse(&raw).unwrap().unwrap().body, Body::Chunked, "{te:?}");
        }
        for te in ["gzip", "identity, chunked", "gzip, chunked", "chunked, chunked", "chunked;q=1", ""] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(matches!(parse(&raw), Err(HttpError::NotImplemented(_))), "{te:?}: {:?}", parse(&raw));
        }
        let zero = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap().unwrap();
        assert_eq!(zero.body, Body::Length(0));
        assert!(!zero.body.has_bytes());
    }

    #[test]
    fn host_values_are_checked() {
        for good in
            ["example.com", "example.com:8080", "127.0.0.1:80", "[::1]:443", "[2001:db8::1]", "a-b_c~d", ""]
        {
            let raw = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert!(parse(&raw).is_ok(), "{good:?} refused");
        }
        for bad in ["a b", "a/b", "a?b", "user@host", "a#b", "host:80x", "[::1", "[::1]x", "a\\b", "h:123456"]
        {
            let raw = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert!(matches!(parse(&raw), Err(HttpError::BadRequest(_))), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_absolute_form_authority_wins_over_host() {
        let r = parse("GET http://Real.test:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.host, Some(&b"Real.test:81"[..]));
        assert_eq!(r.origin_target, b"/p?q");
        let bare = parse("GET https://h.test HTTP/1.1\r\nHost: h.test\r\n\r\n").unwrap().unwrap();
        assert_eq!(bare.origin_target, b"/");
        let query = parse("GET http://h.test?x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap().unwrap();
        assert_eq!(query.origin_target, b"/");
        for bad in ["http://user@h/", "http:///x", "http://h h/"] {
            let raw = format!("GET {bad} HTTP/1.1\r\nHost: h\r\n\r\n");
            assert!(parse(&raw).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_upgrade_needs_connection_upgrade_and_http11() {
        let up = |raw| parse(raw).unwrap().unwrap().upgrade;
        assert_eq!(
            up("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Some(&b"websocket"[..])
        );
        assert_eq!(up("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"), None);
        assert_eq!(up("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n"), None);
        assert_eq!(up("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"), None);
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

    // Found by fuzz/request_head: a long method with a short target was
    // accepted in one piece but refused as 414 while its request line was
    // still arriving, since the whole line was measured against the target's
    // limit.
    #[test]
    fn a_head_accepted_whole_is_accepted_in_pieces() {
        let head = format!("{} /upload HTTP/1.1\r\nHost: h\r\n\r\n", "P".repeat(300));
        assert!(parse(&head).unwrap().is_some());
        for end in 0..head.len() {
            assert!(parse(&head[..end]).unwrap().is_none(), "prefix of {end} bytes");
        }
    }
}
