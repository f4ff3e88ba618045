//! A request and a response as they cross a reverse proxy: hop-by-hop
//! headers removed (RFC 9110 section 7.6.1), Host and X-Forwarded-* set on the
//! way up, the client's own Connection header on the way down, and how the
//! response body is framed. Heads are written into the caller's buffer;
//! nothing here allocates in the common case.

use crate::request::Request;

/// Hop-by-hop headers never forwarded (RFC 9110 section 7.6.1), plus the ones
/// tine sets itself. Compared without allocating: this runs for every header.
fn hop_by_hop(name: &[u8], listed: &[Vec<u8>]) -> bool {
    const DROP: [&[u8]; 10] = [
        b"connection",
        // tine answers the expectation itself (100 Continue) as it relays the body.
        b"expect",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"host",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"proxy-connection",
    ];
    DROP.iter().any(|d| name.eq_ignore_ascii_case(d))
        || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
        || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// Header names the Connection header lists (they are hop-by-hop too), and
/// whether it asks for an upgrade.
fn connection_tokens(headers: &[httparse::Header<'_>]) -> (Vec<Vec<u8>>, bool) {
    let mut listed = Vec::new();
    let mut upgrade = false;
    for value in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")).map(|h| h.value) {
        for t in value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
            upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            // keep-alive and close are options, not header names worth a copy.
            if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close") {
                listed.push(t.to_vec());
            }
        }
    }
    (listed, upgrade)
}

/// The upstream's response head as the client gets it: status line, headers
/// without hop-by-hop ones, and the client connection's own Connection header.
pub fn client_response_head(out: &mut Vec<u8>, resp: &httparse::Response<'_, '_>, keep_alive: bool) {
    let code = resp.code.unwrap_or(502);
    let (listed, _) = connection_tokens(resp.headers);
    out.extend_from_slice(b"HTTP/1.1 ");
    crate::response::push_u64(out, code as u64);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if hop_by_hop(h.name.as_bytes(), &listed) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if code == 101 {
        if let Some(u) = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("upgrade")) {
            out.extend_from_slice(b"Upgrade: ");
            out.extend_from_slice(u.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: upgrade\r\n\r\n");
    } else if keep_alive {
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(b"Connection: close\r\n\r\n");
    }
}

/// How a response body is framed, for the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlannedBody {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the proxy does with an upstream response after its head.
#[derive(Clone, Copy, Debug)]
pub struct ResponsePlan {
    pub body: PlannedBody,
    /// The upstream connection can carry another request afterwards.
    pub keep_alive: bool,
}

impl ResponsePlan {
    /// How a response's body is framed (RFC 9112 section 6.3), and whether the
    /// upstream connection can carry another request afterwards.
    pub fn of(resp: &httparse::Response<'_, '_>, head_request: bool) -> Self {
        let code = resp.code.unwrap_or(0);
        let mut length = None;
        let mut chunked = false;
        let mut close = resp.version == Some(0);
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h
                    .value
                    .split(|&b| b == b',')
                    .next_back()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for t in h.value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if resp.version == Some(0) && t.eq_ignore_ascii_case(b"keep-alive") {
                        close = false;
                    }
                }
            }
        }
        let body = if head_request || code == 204 || code == 304 || (100..200).contains(&code) {
            PlannedBody::None
        } else if chunked {
            PlannedBody::Chunked
        } else if let Some(n) = length {
            if n == 0 {
                PlannedBody::None
            } else {
                PlannedBody::Length(n)
            }
        } else {
            PlannedBody::UntilClose
        };
        ResponsePlan { body, keep_alive: !close && body != PlannedBody::UntilClose }
    }
}

/// Writes `ip` as text; IPv4 without the formatting machinery, since every
/// proxied request carries one.
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                crate::response::push_u64(out, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The request head for the upstream: method and target as received, headers
/// without hop-by-hop ones, `host` as Host, X-Forwarded-* added.
pub fn upstream_request_head(
    out: &mut Vec<u8>,
    req: &Request<'_>,
    raw_head: &[u8],
    host: &[u8],
    peer: Option<std::net::IpAddr>,
) {
    let mut headers = [httparse::EMPTY_HEADER; crate::request::MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let _ = parsed.parse(raw_head);
    let all = &*parsed.headers;
    let (listed, upgrade) = connection_tokens(all);
    let upgrade_to = all.iter().find(|h| h.name.eq_ignore_ascii_case("upgrade")).map(|h| h.value);
    out.extend_from_slice(req.method_text.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target);
    // An HTTP/1.0 client gets an HTTP/1.0 exchange, so no chunked body comes back.
    out.extend_from_slice(if req.minor_version == 0 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
    let mut forwarded_for: Option<&[u8]> = None;
    for h in all {
        let (name, value) = (h.name, h.value);
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for = Some(value);
            continue;
        }
        if hop_by_hop(name.as_bytes(), &listed) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let client_host = req.host.unwrap_or(b"");
    out.extend_from_slice(b"Host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nX-Forwarded-For: ");
    if let Some(prior) = forwarded_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    if let Some(peer) = peer {
        push_ip(out, peer);
    }
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ");
    out.extend_from_slice(client_host);
    out.extend_from_slice(b"\r\n");
    match (upgrade, upgrade_to) {
        (true, Some(to)) => {
            out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
            out.extend_from_slice(to);
            out.extend_from_slice(b"\r\n\r\n");
        }
        _ if req.minor_version == 0 => out.extend_from_slice(b"Connection: close\r\n\r\n"),
        // HTTP/1.1 connections persist unless one side says otherwise.
        _ => out.extend_from_slice(b"\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(raw: &[u8]) -> ResponsePlan {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(raw).unwrap().is_complete());
        ResponsePlan::of(&resp, false)
    }

    #[test]
    fn connection_options_are_tokens_not_substrings() {
        assert!(plan(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n").keep_alive);
        assert!(!plan(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(plan(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x-closed\r\n\r\n").keep_alive);
        assert!(!plan(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").keep_alive);
        assert!(plan(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!plan(b"HTTP/1.1 200 OK\r\n\r\n").keep_alive, "a close-delimited body ends the connection");
    }

    #[test]
    fn addresses_as_text() {
        let mut out = Vec::new();
        push_ip(&mut out, "192.0.2.255".parse().unwrap());
        out.push(b' ');
        push_ip(&mut out, "2001:db8::1".parse().unwrap());
        assert_eq!(out, b"192.0.2.255 2001:db8::1");
    }

    fn upstream_head(raw: &[u8]) -> String {
        let limits = crate::Limits { head_bytes: 4096, uri_bytes: 1024 };
        let req = crate::parse_request(raw, &limits).unwrap().unwrap();
        let mut out = Vec::new();
        upstream_request_head(&mut out, &req, &raw[..req.head_len], b"app", "10.0.0.2".parse().ok());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_upstream_request_loses_hop_by_hop_headers_and_gains_forwarding_ones() {
        let head = upstream_head(
            b"GET /a?b HTTP/1.1\r\nHost: front\r\nConnection: x-secret\r\nX-Secret: 1\r\nTE: trailers\r\n\
              Proxy-Authorization: p\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(
            head,
            "GET /a?b HTTP/1.1\r\nAccept: */*\r\nHost: app\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: front\r\n\r\n"
        );
    }

    #[test]
    fn http10_asks_to_close_and_an_upgrade_is_kept() {
        assert!(upstream_head(b"GET / HTTP/1.0\r\n\r\n").ends_with("Connection: close\r\n\r\n"));
        let ws = upstream_head(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(ws.ends_with("Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"), "{ws}");
    }

    #[test]
    fn the_client_gets_its_own_connection_header() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nETag: \"e\"\r\n\r\n";
        resp.parse(raw).unwrap();
        let mut out = Vec::new();
        client_response_head(&mut out, &resp, false);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nETag: \"e\"\r\nConnection: close\r\n\r\n");
    }
}
