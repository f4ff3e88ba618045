//! PROXY protocol headers (versions 1 and 2) as a listener behind a load
//! balancer reads them. Whatever the bytes:
//! - a header is never longer than the limit or than the input;
//! - a header accepted whole is accepted, with the same client address,
//!   however it is cut (every shorter prefix asks for more bytes) and
//!   whatever follows it (the client's first bytes);
//! - a decision (not a header, or a bad one) made on a prefix stays the
//!   decision once more bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_http::proxy_protocol::{parse, Parsed, MAX_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let result = parse(data);
    if let Ok(Parsed::Header { len, client }) = result {
        assert!(len <= MAX_HEADER_BYTES && len <= data.len(), "{len} of {}", data.len());
        for end in 0..len {
            assert_eq!(parse(&data[..end]), Ok(Parsed::Incomplete), "prefix of {end} bytes");
        }
        let mut followed = data[..len].to_vec();
        followed.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&followed), Ok(Parsed::Header { len, client }));
    }
    if let Err(e) = &result {
        let mut more = data.to_vec();
        more.extend_from_slice(b"\r\n\r\n0000");
        assert!(parse(&more).is_err(), "{e} became {:?} with more bytes", parse(&more));
    }
});
