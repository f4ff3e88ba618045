//! Response heads from upstream servers, parsed as strictly as request heads:
//! how the body is framed (RFC 9112 section 6.3), whether the connection may
//! carry another request, and which heads a proxy must refuse rather than
//! pass on. A head refused here is never forwarded, not even in part.

use crate::request::MAX_HEADERS;

/// How a response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    None,
    Length(u64),
    Chunked,
    /// Runs until the server closes the connection.
    UntilClose,
}

/// What the request that a response answers allows it to be.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asked {
    /// A HEAD request: the response has no body whatever its headers say.
    pub head: bool,
    /// The request asked to switch protocols, so a 101 may answer it.
    pub upgrade: bool,
}

/// Why a response head is refused (the client gets 502, the upstream
/// connection is closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    #[error("malformed response head")]
    Malformed,
    #[error("response head larger than the limit")]
    TooLarge,
    #[error("status code {0} out of range")]
    Status(u16),
    #[error("Content-Length is not a decimal number")]
    InvalidLength,
    #[error("Content-Length fields disagree")]
    ConflictingLength,
    #[error("transfer coding other than chunked")]
    TransferCoding,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedSwitch,
}

/// A complete response head as an upstream sent it, parsed strictly (the
/// heads tine writes itself are [`crate::message::ResponseHead`]); header
/// slices borrow from the read buffer.
#[derive(Debug)]
pub struct UpstreamHead<'h, 'b> {
    pub code: u16,
    pub reason: &'b [u8],
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the buffer the head occupies, including its final blank line.
    pub head_len: usize,
    pub body: ResponseBody,
    /// The Content-Length the server gave (for HEAD and 304, where it
    /// describes a body that is not sent).
    pub content_length: Option<u64>,
    /// The connection may carry another request once the body is read.
    pub reusable: bool,
}

impl UpstreamHead<'_, '_> {
    /// 1xx other than 101: an interim response, followed by another head.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.code) && self.code != 101
    }
}

/// Parses one response head from the front of `buf` into `headers`.
/// `Ok(None)` asks for more bytes; a buffer of `limit` bytes with no complete
/// head in it is too large.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; MAX_HEADERS],
    asked: Asked,
    limit: usize,
) -> Result<Option<UpstreamHead<'h, 'b>>, BadResponse> {
    let mut resp = httparse::Response::new(headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limit => return Err(BadResponse::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooLarge),
        Err(_) => return Err(BadResponse::Malformed),
    };
    if head_len > limit {
        return Err(BadResponse::TooLarge);
    }
    let code = resp.code.unwrap_or(0);
    if !(100..=599).contains(&code) {
        return Err(BadResponse::Status(code));
    }
    if code == 101 && !asked.upgrade {
        return Err(BadResponse::UnaskedSwitch);
    }
    let http10 = resp.version == Some(0);
    let reason = resp.reason.unwrap_or("").as_bytes();
    let headers: &'h [httparse::Header<'b>] = resp.headers;
    let mut length: Option<u64> = None;
    let mut codings = 0;
    let mut close = http10;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value)?;
            if length.is_some_and(|prev| prev != n) {
                return Err(BadResponse::ConflictingLength);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked`, once: any other coding would reach the client
            // undecoded, and a list is where parsers disagree.
            if codings > 0 || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(BadResponse::TransferCoding);
            }
            codings += 1;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if http10 && t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    let chunked = codings > 0;
    let body = if asked.head || code == 204 || code == 304 || (100..200).contains(&code) {
        ResponseBody::None
    } else if chunked {
        ResponseBody::Chunked
    } else {
        match length {
            Some(0) => ResponseBody::None,
            Some(n) => ResponseBody::Length(n),
            None => ResponseBody::UntilClose,
        }
    };
    // Content-Length beside Transfer-Encoding, or chunked from an HTTP/1.0
    // server, is framing a recipient must not trust for what follows
    // (RFC 9112 section 6.1): the body is read as chunked, then the
    // connection is closed.
    let ambiguous = chunked && (length.is_some() || http10);
    let reusable = !close && !ambiguous && body != ResponseBody::UntilClose && code != 101;
    let content_length = if chunked { None } else { length };
    Ok(Some(UpstreamHead { code, reason, headers, head_len, body, content_length, reusable }))
}

fn parse_length(value: &[u8]) -> Result<u64, BadResponse> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(BadResponse::InvalidLength);
    }
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or(BadResponse::InvalidLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Asked = Asked { head: false, upgrade: false };

    fn parse(raw: &[u8], asked: Asked) -> Result<(u16, ResponseBody, bool, Option<u64>), BadResponse> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = parse_response(raw, &mut headers, asked, 4096)?.expect("complete");
        Ok((head.code, head.body, head.reusable, head.content_length))
    }

    #[test]
    fn framing_and_reuse() {
        let ok = |raw: &[u8]| parse(raw, GET).unwrap();
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            (200, ResponseBody::Length(5), true, Some(5))
        );
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").1, ResponseBody::None);
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").1,
            ResponseBody::Length(5)
        );
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            (200, ResponseBody::Chunked, true, None)
        );
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\n\r\n"), (200, ResponseBody::UntilClose, false, None));
        assert_eq!(ok(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n").1, ResponseBody::None);
        assert_eq!(
            ok(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            (304, ResponseBody::None, true, Some(9))
        );
        let head = Asked { head: true, upgrade: false };
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head).unwrap().1,
            ResponseBody::None
        );
    }

    #[test]
    fn connection_options_are_tokens_not_substrings() {
        let reusable = |raw: &[u8]| parse(raw, GET).unwrap().2;
        assert!(!reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: Close\r\n\r\n"));
        assert!(reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x-closed\r\n\r\n"));
        assert!(!reusable(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"));
        assert!(reusable(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn length_with_chunked_reads_chunked_and_never_reuses() {
        let (_, body, reusable, length) =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", GET)
                .unwrap();
        assert_eq!((body, reusable, length), (ResponseBody::Chunked, false, None));
        let (_, body, reusable, _) =
            parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n", GET)
                .unwrap();
        assert_eq!((body, reusable), (ResponseBody::Chunked, false));
    }

    #[test]
    fn bad_framing_is_refused() {
        for (raw, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
                BadResponse::ConflictingLength,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", BadResponse::InvalidLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", BadResponse::InvalidLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", BadResponse::InvalidLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", BadResponse::InvalidLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", BadResponse::InvalidLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", BadResponse::InvalidLength),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", BadResponse::TransferCoding),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", BadResponse::TransferCoding),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                BadResponse::TransferCoding,
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", BadResponse::UnaskedSwitch),
            (b"HTTP/1.1 700 Odd\r\n\r\n", BadResponse::Status(700)),
            (b"HTTP/1.1 099 Low\r\n\r\n", BadResponse::Status(99)),
            (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", BadResponse::Malformed),
        ] {
            assert_eq!(parse(raw, GET).unwrap_err(), why, "{:?}", String::from_utf8_lossy(raw));
        }
        let upgrade = Asked { head: false, upgrade: true };
        assert_eq!(parse(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", upgrade).unwrap().0, 101);
    }

    #[test]
    fn an_oversized_head_is_refused_not_awaited() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(5000));
        assert_eq!(
            parse_response(big.as_bytes(), &mut headers, GET, 4096).unwrap_err(),
            BadResponse::TooLarge
        );
    }
}
