//! Range, conditional and Accept-Encoding headers. Whatever the header and
//! the file size: a range tine serves lies inside the file (first <= last <
//! size), a suffix range ends at the last byte, and the conditional checks
//! decide without panicking; an ETag always matches itself and never another
//! representation's. The coding chosen is one of those offered, and the same
//! whether the list came as one field or split into two at a comma.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tine_http::content_coding::{AcceptEncoding, Coding};
use tine_http::validators::{
    http_date, if_range_holds, none_match_hits, not_modified_since, range, ETag, RangeAnswer,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let mtime = u64::from_le_bytes(data[8..16].try_into().unwrap()) % 8_000_000_000;
    let header = &data[16..];
    match range(header, size) {
        RangeAnswer::Part { first, last } => {
            assert!(first <= last && last < size, "{first}-{last} of {size}");
            if header.trim_ascii().starts_with(b"bytes=-") {
                assert_eq!(last, size - 1);
            }
        }
        RangeAnswer::Unsatisfiable | RangeAnswer::Full => {}
    }
    let etag = ETag::new(mtime, size);
    let last_modified = http_date(mtime);
    let _ = none_match_hits(header, &etag);
    let _ = not_modified_since(header, mtime);
    let _ = if_range_holds(header, &etag, &last_modified);
    assert!(none_match_hits(etag.as_bytes(), &etag));
    assert!(if_range_holds(etag.as_bytes(), &etag, &last_modified));
    assert!(not_modified_since(last_modified.as_bytes(), mtime));
    let brotli_tag = ETag::coded(mtime, size, Some("br"));
    assert!(!none_match_hits(brotli_tag.as_bytes(), &etag));
    assert!(!if_range_holds(brotli_tag.as_bytes(), &etag, &last_modified));
    accept_encoding(data[0], header);
});

fn accept_encoding(offer: u8, header: &[u8]) {
    let available: Vec<Coding> = [(1, Coding::Brotli), (2, Coding::Gzip), (4, Coding::Identity)]
        .into_iter()
        .filter(|(bit, _)| offer & bit != 0)
        .map(|(_, c)| c)
        .collect();
    let mut whole = AcceptEncoding::default();
    whole.add_field(header);
    let chosen = AcceptEncoding::choose(Some(&whole), &available);
    assert!(chosen.is_none_or(|c| available.contains(&c)));
    if let Some(comma) = header.iter().position(|&b| b == b',') {
        let mut split = AcceptEncoding::default();
        split.add_field(&header[..comma]);
        split.add_field(&header[comma + 1..]);
        assert_eq!(AcceptEncoding::choose(Some(&split), &available), chosen);
    }
}
