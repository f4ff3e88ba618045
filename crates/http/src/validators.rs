//! Validators and ranges for static files: ETag, If-None-Match, If-Modified-Since,
//! Range and If-Range (RFC 9110 sections 8.8 and 13-14).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A strong entity tag built from modification time and size, as nginx does:
/// `"<mtime hex>-<size hex>"`, and `"<mtime hex>-<size hex>-<coding>"` for
/// a content-coded representation, so that each representation has its own.
#[derive(Clone, Copy)]
pub struct ETag {
    buf: [u8; 44],
    len: usize,
}

impl ETag {
    pub fn new(mtime_secs: u64, size: u64) -> Self {
        Self::coded(mtime_secs, size, None)
    }

    /// The tag of a representation in `coding` (`br`, `gzip`; at most 6 bytes).
    pub fn coded(mtime_secs: u64, size: u64, coding: Option<&str>) -> Self {
        let coding = coding.map_or(&b""[..], |c| &c.as_bytes()[..c.len().min(6)]);
        let mut buf = [0u8; 44];
        let mut len = 0;
        let mut push = |b: u8| {
            buf[len] = b;
            len += 1;
        };
        push(b'"');
        for b in hex(mtime_secs).iter().chain(b"-").chain(hex(size).iter()) {
            push(*b);
        }
        if !coding.is_empty() {
            push(b'-');
            coding.iter().for_each(|&b| push(b));
        }
        push(b'"');
        ETag { buf, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn hex(mut v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    loop {
        out.push(b"0123456789abcdef"[(v & 15) as usize]);
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    out
}

/// If-None-Match uses weak comparison: `W/` prefixes are ignored.
pub fn none_match_hits(header: &[u8], etag: &ETag) -> bool {
    header.split(|&b| b == b',').any(|candidate| {
        let c = candidate.trim_ascii();
        c == b"*" || c.strip_prefix(b"W/").unwrap_or(c) == etag.as_bytes()
    })
}

/// True when the file has not changed since the client's copy (whole seconds).
pub fn not_modified_since(header: &[u8], mtime_secs: u64) -> bool {
    std::str::from_utf8(header)
        .ok()
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .is_some_and(|since| mtime_secs <= since.as_secs())
}

/// Formats a modification time for Last-Modified.
pub fn http_date(mtime_secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(mtime_secs))
}

/// What a Range header asks of a representation of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Send the whole representation (no range, or one tine does not serve).
    Full,
    /// Send bytes `first..=last`.
    Part { first: u64, last: u64 },
    /// Answer 416.
    Unsatisfiable,
}

/// Interprets a single `bytes=` range. Several ranges, other units and syntax
/// errors fall back to the full response, which RFC 9110 allows.
pub fn range(header: &[u8], size: u64) -> RangeAnswer {
    let Some(spec) = header.trim_ascii().strip_prefix(b"bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(&b',') {
        return RangeAnswer::Full;
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (spec[..dash].trim_ascii(), spec[dash + 1..].trim_ascii());
    match (number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || size == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part { first: size.saturating_sub(n), last: size - 1 }
            }
        }
        (Some(f), None) if last.is_empty() => {
            if f >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part { first: f, last: size - 1 }
            }
        }
        (Some(f), Some(l)) if f <= l => {
            if f >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part { first: f, last: l.min(size - 1) }
            }
        }
        _ => RangeAnswer::Full,
    }
}

fn number(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// If-Range lets a range through only when the client's validator is current:
/// an exact strong ETag, or the exact Last-Modified date.
pub fn if_range_holds(header: &[u8], etag: &ETag, last_modified: &str) -> bool {
    let h = header.trim_ascii();
    if h.first() == Some(&b'"') {
        h == etag.as_bytes()
    } else {
        h == last_modified.as_bytes()
    }
}

/// The modification time of file metadata in whole seconds since the epoch.
pub fn mtime_secs(modified: std::io::Result<SystemTime>) -> u64 {
    modified.ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn etags() {
        let e = ETag::new(0x5f00, 0x10);
        assert_eq!(e.as_bytes(), b"\"5f00-10\"");
        assert!(none_match_hits(b"\"x\", W/\"5f00-10\"", &e));
        assert!(none_match_hits(b"*", &e));
        assert!(!none_match_hits(b"\"5f00-11\"", &e));
    }

    #[test]
    fn ranges() {
        assert_eq!(range(b"bytes=0-9", 100), Part { first: 0, last: 9 });
        assert_eq!(range(b"bytes=90-", 100), Part { first: 90, last: 99 });
        assert_eq!(range(b"bytes=-10", 100), Part { first: 90, last: 99 });
        assert_eq!(range(b"bytes=-1000", 100), Part { first: 0, last: 99 });
        assert_eq!(range(b"bytes=50-5000", 100), Part { first: 50, last: 99 });
        assert_eq!(range(b"bytes=100-", 100), Unsatisfiable);
        assert_eq!(range(b"bytes=-0", 100), Unsatisfiable);
        assert_eq!(range(b"bytes=0-0", 0), Unsatisfiable);
        assert_eq!(range(b"bytes=5-1", 100), Full);
        assert_eq!(range(b"bytes=0-1,5-6", 100), Full);
        assert_eq!(range(b"items=0-1", 100), Full);
        assert_eq!(range(b"bytes=x-1", 100), Full);
    }

    #[test]
    fn dates() {
        let lm = http_date(784111777);
        assert_eq!(lm, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(not_modified_since(lm.as_bytes(), 784111777));
        assert!(!not_modified_since(lm.as_bytes(), 784111778));
        assert!(!not_modified_since(b"garbage", 0));
    }
}
