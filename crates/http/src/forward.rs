//! A request and a response as they cross a reverse proxy. Hop-by-hop
//! headers are removed (RFC 9110 section 7.6.1), and so is everything that
//! frames a message: tine writes Content-Length or Transfer-Encoding, Host
//! and the Connection header itself, from what it parsed, so no header the
//! client or server sent can make the next hop frame the message differently
//! (a `Connection: Content-Length` that strips the length while the body
//! still follows is the classic smuggling). Heads are written into the
//! caller's buffer; nothing here allocates in the common case.

use crate::request::{Body, Request, Version};
use crate::response::push_header;
use crate::response_head::{ResponseBody, UpstreamHead};

/// Headers that never cross the proxy as they came: hop-by-hop ones, the
/// ones tine writes itself, and what the Connection header lists. Framing
/// and Host are in the first group, so a Connection header naming them
/// changes nothing. Compared without allocating: this runs for every header.
fn dropped(name: &[u8], listed: &[Vec<u8>]) -> bool {
    const DROP: [&[u8]; 12] = [
        b"connection",
        // tine answers the expectation itself (100 Continue) as it relays the body.
        b"expect",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"proxy-connection",
    ];
    DROP.iter().any(|d| name.eq_ignore_ascii_case(d))
        || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
        || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// Header names the Connection header lists (they are hop-by-hop too).
fn connection_listed(headers: &[httparse::Header<'_>]) -> Vec<Vec<u8>> {
    let mut listed = Vec::new();
    for value in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")).map(|h| h.value) {
        for t in value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
            // keep-alive, close and upgrade are options, not header names worth a copy.
            let option = [&b"keep-alive"[..], b"close", b"upgrade"].iter().any(|o| t.eq_ignore_ascii_case(o));
            if !t.is_empty() && !option {
                listed.push(t.to_vec());
            }
        }
    }
    listed
}

/// How the client connection goes on after a proxied response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSide {
    /// The client speaks HTTP/1.0: no chunked coding, keep-alive said aloud.
    pub http10: bool,
    /// The client connection stays open after this response.
    pub keep_alive: bool,
}

/// The upstream's response head as the client gets it: status line, the
/// end-to-end headers, framing written by tine for the body it will send, and
/// the client connection's own Connection header.
/// A route's `added` headers replace the upstream's of the same names on
/// final responses (interim ones go as they came).
pub fn client_response_head(
    out: &mut Vec<u8>,
    resp: &UpstreamHead<'_, '_>,
    client: ClientSide,
    added: &crate::response::AddedHeaders,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    crate::response::push_u64(out, u64::from(resp.code));
    out.push(b' ');
    out.extend_from_slice(resp.reason);
    out.extend_from_slice(b"\r\n");
    if end_to_end_fields(resp, added, |name, value| push_header(out, name.as_bytes(), value)) {
        out.extend_from_slice(added.lines());
    }
    match resp.body {
        ResponseBody::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            crate::response::push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        // An HTTP/1.0 client gets the decoded body, ended by the close.
        ResponseBody::Chunked if !client.http10 => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ResponseBody::None => {
            if let Some(n) = described_length(resp) {
                out.extend_from_slice(b"Content-Length: ");
                crate::response::push_u64(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
        _ => {}
    }
    if resp.code == 101 {
        if let Some(u) = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("upgrade")) {
            push_header(out, b"Upgrade", u.value);
        }
        out.extend_from_slice(b"Connection: upgrade\r\n\r\n");
    } else if !client.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n\r\n");
    } else if client.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// The upstream's final response head as an HTTP/2 client gets it: the
/// status and the end-to-end fields, with the body's length where it is
/// known; the engine frames the rest (no Connection, no chunked coding).
pub fn client_response_fields(
    head: &mut crate::message::ResponseHead,
    resp: &UpstreamHead<'_, '_>,
    added: &crate::response::AddedHeaders,
) {
    head.reset(crate::response::Status(resp.code));
    let fields = &mut head.fields;
    if end_to_end_fields(resp, added, |name, value| {
        fields.push(name, value);
    }) {
        fields.push_lines(added.lines());
    }
    let length = match resp.body {
        ResponseBody::Length(n) => Some(n),
        ResponseBody::None => described_length(resp),
        ResponseBody::Chunked | ResponseBody::UntilClose => None,
    };
    if let Some(n) = length {
        fields.push_u64("Content-Length", n);
    }
}

/// Passes each of the upstream's fields that crosses to the client to
/// `push`; true when the route's `added` fields go after them (a final
/// response), having replaced the upstream's of the same names.
fn end_to_end_fields<'b>(
    resp: &UpstreamHead<'_, 'b>,
    added: &crate::response::AddedHeaders,
    mut push: impl FnMut(&str, &'b [u8]),
) -> bool {
    let add = resp.code >= 200 && resp.code != 101;
    let listed = connection_listed(resp.headers);
    for h in resp.headers.iter() {
        let replaced = add && added.replaces(h.name.as_bytes());
        if !dropped(h.name.as_bytes(), &listed) && !replaced {
            push(h.name, h.value);
        }
    }
    add
}

/// The length a bodiless response describes: HEAD and 304 tell the body a
/// GET would get.
fn described_length(resp: &UpstreamHead<'_, '_>) -> Option<u64> {
    (resp.code != 204 && resp.code >= 200).then_some(resp.content_length).flatten()
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

/// What the proxy adds to a request it forwards.
#[derive(Clone, Copy, Debug)]
pub struct Forwarding<'a> {
    /// The Host the upstream is sent.
    pub host: &'a [u8],
    /// The client's address, appended to X-Forwarded-For.
    pub peer: Option<std::net::IpAddr>,
    /// Header names with underscores go through. Off by default: a back end
    /// that maps headers to CGI-style variables reads `X_Forwarded_For` and
    /// `X-Forwarded-For` as one name, and would take the client's for tine's.
    pub underscores: bool,
    /// The client came over TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
}

/// The request head for the upstream: method and origin-form target, the
/// client's end-to-end headers, then what tine writes itself: Host,
/// X-Forwarded-*, the body's framing (Content-Length, or chunked for a body
/// tine re-chunks) and the Connection header.
pub fn upstream_request_head(out: &mut Vec<u8>, req: &Request<'_>, fwd: &Forwarding<'_>) {
    let all = req.fields;
    let listed = connection_listed(all);
    out.extend_from_slice(req.method_text.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.origin_target);
    // An HTTP/1.0 client gets an HTTP/1.0 exchange, so no chunked body comes back.
    out.extend_from_slice(if req.version == Version::Http10 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
    let mut forwarded_for: Option<&[u8]> = None;
    for h in all {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for = Some(h.value);
            continue;
        }
        if dropped(name, &listed) || (!fwd.underscores && name.contains(&b'_')) {
            continue;
        }
        push_header(out, name, h.value);
    }
    push_header(out, b"Host", fwd.host);
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prior) = forwarded_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    if let Some(peer) = fwd.peer {
        push_ip(out, peer);
    }
    out.extend_from_slice(if fwd.https {
        b"\r\nX-Forwarded-Proto: https\r\n"
    } else {
        b"\r\nX-Forwarded-Proto: http\r\n"
    });
    if let Some(client_host) = req.host {
        push_header(out, b"X-Forwarded-Host", client_host);
    }
    match req.body {
        Body::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            crate::response::push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Body::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Body::None => {}
    }
    match req.upgrade {
        Some(to) => {
            out.extend_from_slice(b"Connection: upgrade\r\n");
            push_header(out, b"Upgrade", to);
            out.extend_from_slice(b"\r\n");
        }
        None if req.version == Version::Http10 => out.extend_from_slice(b"Connection: close\r\n\r\n"),
        // HTTP/1.1 connections persist unless one side says otherwise.
        None => out.extend_from_slice(b"\r\n"),
    }
}

/// The request's fields as an upstream reached over HTTP/2 gets them,
/// passed to `push` as (lowercase name, value): the end-to-end fields as for
/// HTTP/1.1, `X-Forwarded-*`, a declared body length, and `te: trailers`
/// when the client said it takes trailers (gRPC needs it end to end). No
/// Host (the caller sends it as `:authority`), and nothing else that frames
/// or names a connection: HTTP/2 frames the body itself.
pub fn upstream_h2_fields(req: &Request<'_>, fwd: &Forwarding<'_>, mut push: impl FnMut(&[u8], &[u8])) {
    let all = req.fields;
    let listed = connection_listed(all);
    let mut forwarded_for: Vec<u8> = Vec::with_capacity(64);
    let mut trailers = false;
    for h in all {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for.extend_from_slice(h.value);
            forwarded_for.extend_from_slice(b", ");
            continue;
        }
        if name.eq_ignore_ascii_case(b"te") {
            trailers |=
                h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            continue;
        }
        if dropped(name, &listed) || (!fwd.underscores && name.contains(&b'_')) {
            continue;
        }
        push(name, h.value);
    }
    if let Some(peer) = fwd.peer {
        push_ip(&mut forwarded_for, peer);
    } else if forwarded_for.ends_with(b", ") {
        forwarded_for.truncate(forwarded_for.len() - 2);
    }
    push(b"x-forwarded-for", &forwarded_for);
    push(b"x-forwarded-proto", if fwd.https { b"https" } else { b"http" });
    if let Some(client_host) = req.host {
        push(b"x-forwarded-host", client_host);
    }
    if let Body::Length(n) = req.body {
        let mut length = Vec::with_capacity(20);
        crate::response::push_u64(&mut length, n);
        push(b"content-length", &length);
    }
    if trailers {
        push(b"te", b"trailers");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::MAX_HEADERS;
    use crate::response_head::{parse_response, Asked};

    #[test]
    fn addresses_as_text() {
        let mut out = Vec::new();
        push_ip(&mut out, "192.0.2.255".parse().unwrap());
        out.push(b' ');
        push_ip(&mut out, "2001:db8::1".parse().unwrap());
        assert_eq!(out, b"192.0.2.255 2001:db8::1");
    }

    fn upstream_head_with(raw: &[u8], underscores: bool) -> String {
        let limits = crate::Limits { head_bytes: 4096, uri_bytes: 1024 };
        let slots = Box::leak(Box::new(crate::request::field_slots()));
        let req = crate::parse_request(raw, slots, &limits).unwrap().unwrap();
        let mut out = Vec::new();
        let fwd = Forwarding { host: b"app", peer: "10.0.0.2".parse().ok(), underscores, https: false };
        upstream_request_head(&mut out, &req, &fwd);
        String::from_utf8(out).unwrap()
    }

    fn upstream_head(raw: &[u8]) -> String {
        upstream_head_with(raw, false)
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
    fn connection_cannot_strip_framing_and_tine_writes_it() {
        let head = upstream_head(
            b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: Content-Length, Host, Transfer-Encoding\r\n\
              Content-Length: 00005\r\n\r\n",
        );
        assert!(head.ends_with("Content-Length: 5\r\n\r\n"), "{head}");
        assert_eq!(head.matches("Content-Length").count(), 1, "{head}");
        let chunked = upstream_head(
            b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(chunked.ends_with("Transfer-Encoding: chunked\r\n\r\n"), "{chunked}");
        let zero = upstream_head(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
        assert!(zero.contains("Content-Length: 0\r\n"), "{zero}");
    }

    #[test]
    fn underscored_names_are_dropped_unless_allowed() {
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\nTransfer_Encoding: x\r\nX-Ok: 1\r\n\r\n";
        let head = upstream_head(raw);
        assert!(!head.contains('_') && head.contains("X-Ok: 1"), "{head}");
        assert!(upstream_head_with(raw, true).contains("X_Forwarded_For: 6.6.6.6"));
    }

    #[test]
    fn absolute_form_goes_upstream_in_origin_form() {
        let head = upstream_head(b"GET http://Site.test/x?y HTTP/1.1\r\nHost: other\r\n\r\n");
        assert!(head.starts_with("GET /x?y HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("X-Forwarded-Host: Site.test\r\n"), "{head}");
    }

    #[test]
    fn http10_asks_to_close_and_an_upgrade_is_kept() {
        assert!(upstream_head(b"GET / HTTP/1.0\r\n\r\n").ends_with("Connection: close\r\n\r\n"));
        let ws = upstream_head(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(ws.ends_with("Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"), "{ws}");
    }

    fn client_head(raw: &[u8], client: ClientSide) -> String {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let resp = parse_response(raw, &mut headers, Asked::default(), 4096).unwrap().unwrap();
        let mut out = Vec::new();
        client_response_head(&mut out, &resp, client, &crate::response::AddedHeaders::NONE);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_routes_headers_replace_the_upstreams_on_final_responses_only() {
        let added =
            crate::response::AddedHeaders::new([("Cache-Control", "no-store"), ("X-Frame-Options", "DENY")]);
        let keep = ClientSide { http10: false, keep_alive: true };
        let head = |raw: &[u8]| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let resp = parse_response(raw, &mut headers, Asked::default(), 4096).unwrap().unwrap();
            let mut out = Vec::new();
            client_response_head(&mut out, &resp, keep, &added);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\ncache-control: public\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n"),
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nCache-Control: no-store\r\nX-Frame-Options: DENY\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"),
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        );
    }

    #[test]
    fn the_client_gets_its_own_connection_header_and_tines_framing() {
        let close = ClientSide { http10: false, keep_alive: false };
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop, content-length\r\nX-Hop: 1\r\n\
                    Keep-Alive: timeout=5\r\nETag: \"e\"\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            client_head(raw, close),
            "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let keep = ClientSide { http10: false, keep_alive: true };
        assert_eq!(client_head(both, keep), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let old = ClientSide { http10: true, keep_alive: false };
        assert_eq!(client_head(both, old), "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    }
}
