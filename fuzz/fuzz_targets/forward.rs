//! The proxy's rewrite of a request head. Whatever the client sent, what goes
//! to the upstream is exactly one head (one blank line, at its end; CRLF
//! only) that parses to the same method, origin-form target and body framing,
//! with tine's Host and nothing of the client's framing or hop-by-hop
//! headers: no second request can be smuggled through.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_fuzz::{exactly_one_head, header_fields, limits};
use tine_http::forward::{upstream_request_head, Forwarding};
use tine_http::parse_request;
use tine_http::request::field_slots;
use tine_http::request::MAX_HEADERS;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let mut slots1 = field_slots();
    let Ok(Some(request)) = parse_request(input, &mut slots1, &limits(false)) else { return };
    // tine adds up to five fields of its own; re-parsing below uses tine's
    // own parser, whose limit is MAX_HEADERS fields.
    if request.fields.len() + 5 > MAX_HEADERS {
        return;
    }
    let fwd = Forwarding {
        host: b"backend.internal:8080",
        peer: Some(if mode & 1 == 1 { "2001:db8::7".parse().unwrap() } else { "192.0.2.7".parse().unwrap() }),
        underscores: mode & 2 == 2,
        https: mode & 4 == 4,
    };
    let mut out = Vec::new();
    upstream_request_head(&mut out, &request, &fwd);
    assert!(exactly_one_head(&out), "{:?}", String::from_utf8_lossy(&out));
    let mut slots2 = field_slots();
    let sent = parse_request(&out, &mut slots2, &limits(false))
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)))
        .unwrap_or_else(|| panic!("incomplete: {:?}", String::from_utf8_lossy(&out)));
    assert_eq!(sent.http1.head_len, out.len());
    assert_eq!(sent.method_text, request.method_text);
    assert_eq!(sent.target, request.origin_target);
    assert_eq!(sent.body, request.body, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(sent.host, Some(&fwd.host[..]));
    assert_eq!(sent.upgrade, request.upgrade);
    let fields = header_fields(&out);
    let count = |name: &str| fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count();
    assert_eq!(count("host"), 1);
    assert_eq!(count("x-forwarded-for"), 1);
    assert_eq!(count("x-forwarded-proto"), 1);
    assert!(count("content-length") + count("transfer-encoding") <= 1);
    assert!(count("connection") <= 1);
    for hop in ["keep-alive", "te", "trailer", "proxy-connection", "expect"] {
        assert_eq!(count(hop), 0, "{hop} crossed the proxy");
    }
    if !fwd.underscores {
        assert!(fields.iter().all(|(n, _)| !n.contains('_')));
    }
});
