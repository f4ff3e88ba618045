//! Request heads. Whatever the bytes:
//! - a head accepted in one piece is accepted, with the same meaning, however
//!   it is cut into pieces (every shorter prefix asks for more bytes) and
//!   whatever follows it in the buffer (a pipelined request);
//! - its canonical spelling (one space, `name: value`, CRLF) parses to the
//!   same meaning: method, target, version, Host, body framing, keep-alive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_fuzz::{canonical_head, limits, Meaning};
use tine_http::parse_request;
use tine_http::request::field_slots;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let chosen = limits(mode & 1 == 1);
    let mut slots1 = field_slots();
    let Ok(Some(request)) = parse_request(input, &mut slots1, &chosen) else { return };
    let meaning = Meaning::of(&request);
    let head_len = request.http1.head_len;
    for end in 0..head_len {
        let mut slots2 = field_slots();
        match parse_request(&input[..end], &mut slots2, &chosen) {
            Ok(None) => {}
            other => panic!("a prefix of {end} bytes of an accepted head gave {other:?}"),
        }
    }
    let mut pipelined = input[..head_len].to_vec();
    pipelined.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut slots3 = field_slots();
    let again =
        parse_request(&pipelined, &mut slots3, &chosen).expect("accepted before").expect("complete before");
    assert_eq!(Meaning::of(&again), meaning, "what follows a head changed it");
    assert_eq!(again.http1.head_len, head_len);

    let canonical = canonical_head(&request);
    let mut slots4 = field_slots();
    match parse_request(&canonical, &mut slots4, &limits(false)) {
        Ok(Some(r)) => {
            assert_eq!(
                Meaning::of(&r),
                meaning,
                "canonical spelling {:?}",
                String::from_utf8_lossy(&canonical)
            );
            assert_eq!(r.http1.head_len, canonical.len());
        }
        other => panic!("canonical spelling {:?} gave {other:?}", String::from_utf8_lossy(&canonical)),
    }
});
