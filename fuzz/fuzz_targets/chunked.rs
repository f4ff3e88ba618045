//! The chunked decoder. Whatever the bytes:
//! - cutting the input into pieces changes nothing but where chunks of the
//!   re-framed output begin: the same bytes consumed, the same data, the
//!   same end or error;
//! - a body it completes comes out as canonical chunked coding that decodes
//!   to itself, consuming exactly its length, and to the same data as the
//!   original when decoded raw: nothing after the terminator is ever part of
//!   the body, so no second message can hide inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_fuzz::piece_ends;
use tine_http::chunked::{ChunkedDecoder, ChunkedError, Output};

#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    consumed: usize,
    out: Vec<u8>,
    done: bool,
    error: Option<ChunkedError>,
}

fn decode(input: &[u8], ends: &[usize], output: Output) -> Decoded {
    let mut decoder = ChunkedDecoder::new(output);
    let (mut out, mut consumed, mut start) = (Vec::new(), 0, 0);
    for &end in ends {
        match decoder.decode(&input[start..end], &mut out) {
            Ok(n) => {
                assert!(n <= end - start);
                consumed += n;
                if decoder.is_done() {
                    return Decoded { consumed, out, done: true, error: None };
                }
                assert_eq!(n, end - start, "an unfinished body consumes all it is given");
            }
            Err(e) => return Decoded { consumed, out: Vec::new(), done: false, error: Some(e) },
        }
        start = end;
    }
    Decoded { consumed, out, done: false, error: None }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed_len, rest)) = data.split_first() else { return };
    let (seed, input) = rest.split_at(usize::from(seed_len % 8).min(rest.len()));
    let ends = piece_ends(if seed.is_empty() { &[0] } else { seed }, input.len());
    // The data, and where the body ends, do not depend on how it arrives.
    // (An error may be found at a different byte count when the input is
    // cut: the bytes of a piece before the error are not reported.)
    let raw = decode(input, &[input.len()], Output::Raw);
    let raw_pieces = decode(input, &ends, Output::Raw);
    assert_eq!(raw.error.is_some(), raw_pieces.error.is_some(), "{raw:?} vs {raw_pieces:?}");
    if raw.error.is_none() {
        assert_eq!(raw, raw_pieces);
    }
    // Re-chunked output follows the pieces (each piece's data is a chunk),
    // and always carries the same data.
    let chunked = decode(input, &[input.len()], Output::Chunked);
    let chunked_pieces = decode(input, &ends, Output::Chunked);
    for c in [&chunked, &chunked_pieces] {
        assert_eq!(c.error.is_some(), raw.error.is_some(), "{c:?} vs {raw:?}");
        if raw.error.is_none() {
            assert_eq!((c.consumed, c.done), (raw.consumed, raw.done));
        }
        if !c.done {
            continue;
        }
        // A body it completes is canonical chunked coding, which decodes to
        // itself, consuming exactly its length, and to the same data.
        let canonical = &c.out;
        assert!(canonical.ends_with(b"0\r\n\r\n"));
        let again = decode(canonical, &[canonical.len()], Output::Chunked);
        assert!(again.done && again.consumed == canonical.len(), "{again:?}");
        assert_eq!(&again.out, canonical, "canonical coding decodes to itself");
        let data = decode(canonical, &[canonical.len()], Output::Raw);
        assert!(data.done);
        assert_eq!(data.out, raw.out, "the data survives re-framing");
    }
});
