//! Response heads from upstream servers, and the head the client gets.
//! Whatever the bytes:
//! - a head accepted in one piece is accepted the same way however it is
//!   cut (every shorter prefix asks for more bytes);
//! - its framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204
//!   and 304; a connection whose body runs to the close is not reusable;
//! - the head tine writes for the client is exactly one head that parses
//!   back to the same status and a framing the client can follow (the same
//!   length, chunked for HTTP/1.1 clients, the close otherwise), and a
//!   route's added header appears in it once, replacing the upstream's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_fuzz::exactly_one_head;
use tine_http::forward::{client_response_head, ClientSide};
use tine_http::request::MAX_HEADERS;
use tine_http::response::AddedHeaders;
use tine_http::response_head::{parse_response, Asked, ResponseBody};

const LIMIT: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let asked = Asked { head: mode & 1 == 1, upgrade: mode & 2 == 2 };
    let client = ClientSide { http10: mode & 4 == 4, keep_alive: mode & 8 == 8 };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(Some(resp)) = parse_response(input, &mut headers, asked, LIMIT) else { return };
    for end in 0..resp.head_len {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_response(&input[..end], &mut h, asked, LIMIT) {
            Ok(None) => {}
            other => panic!(
                "a prefix of {end} bytes of an accepted head gave {:?}",
                other.map(|o| o.map(|r| r.code))
            ),
        }
    }
    let bodiless = asked.head || (100..200).contains(&resp.code) || resp.code == 204 || resp.code == 304;
    if bodiless {
        assert_eq!(resp.body, ResponseBody::None, "code {} head {}", resp.code, asked.head);
    }
    if resp.body == ResponseBody::UntilClose {
        assert!(!resp.reusable, "a body ended by the close leaves nothing to reuse");
    }
    // tine adds up to three fields of its own and the route's one; re-parsing
    // below uses tine's own parser, whose limit is MAX_HEADERS fields.
    if resp.is_interim() || resp.headers.len() + 4 > MAX_HEADERS {
        return;
    }
    let added = AddedHeaders::new([("Cache-Control", "no-store")]);
    let mut out = Vec::new();
    client_response_head(&mut out, &resp, client, &added);
    assert!(exactly_one_head(&out), "{:?}", String::from_utf8_lossy(&out));
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let ours = parse_response(&out, &mut h, asked, usize::MAX)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)))
        .expect("a complete head");
    assert_eq!(ours.code, resp.code);
    assert_eq!(ours.head_len, out.len());
    let expected = match resp.body {
        ResponseBody::Chunked if client.http10 => ResponseBody::UntilClose,
        ResponseBody::UntilClose if resp.code == 101 => ours.body,
        other => other,
    };
    assert_eq!(ours.body, expected, "{:?}", String::from_utf8_lossy(&out));
    if resp.code != 101 {
        let cache_control = ours.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("cache-control"));
        let values: Vec<&[u8]> = cache_control.map(|h| h.value).collect();
        assert_eq!(values, [b"no-store"], "the route's header, once, replacing the upstream's");
    }
});
