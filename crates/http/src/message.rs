//! Version-neutral response heads: a status and its fields. Handlers build
//! them; a protocol session frames them (HTTP/1.1 with its status line,
//! `Connection` header and blank line, see [`write_http1_head`]; HTTP/2
//! with HPACK), so a reply of tine's own is written once for every
//! protocol.
//!
//! Fields are kept as one run of `Name: value\r\n` lines: no allocation per
//! field, a file cache can hold a representation's fields preformatted, and
//! [`Fields::iter`] gives them back as pairs to any other framing.

use crate::response::{push_header, push_u64, Persistence, Status};

/// Header fields of a message, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    lines: Vec<u8>,
}

impl Fields {
    /// Fields kept in `buf` (cleared), to reuse its allocation.
    pub fn in_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        Fields { lines: buf }
    }

    /// The buffer back, for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.lines
    }

    pub fn clear(&mut self) {
        self.lines.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn push(&mut self, name: &str, value: &[u8]) -> &mut Self {
        push_header(&mut self.lines, name.as_bytes(), value);
        self
    }

    pub fn push_u64(&mut self, name: &str, value: u64) -> &mut Self {
        self.lines.extend_from_slice(name.as_bytes());
        self.lines.extend_from_slice(b": ");
        push_u64(&mut self.lines, value);
        self.lines.extend_from_slice(b"\r\n");
        self
    }

    /// `Content-Range: bytes FIRST-LAST/SIZE`.
    pub fn content_range(&mut self, first: u64, last: u64, size: u64) -> &mut Self {
        self.lines.extend_from_slice(b"Content-Range: bytes ");
        push_u64(&mut self.lines, first);
        self.lines.push(b'-');
        push_u64(&mut self.lines, last);
        self.lines.push(b'/');
        push_u64(&mut self.lines, size);
        self.lines.extend_from_slice(b"\r\n");
        self
    }

    /// Fields already formatted as `Name: value\r\n` lines by tine itself
    /// (a file cache entry, a route's configured headers).
    pub fn push_lines(&mut self, lines: &[u8]) -> &mut Self {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\r\n"));
        self.lines.extend_from_slice(lines);
        self
    }

    /// The fields as `Name: value\r\n` lines.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// The fields as (name, value) pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()).filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..])))
        })
    }
}

/// A response head: its status and fields. Framing (the status line,
/// `Connection`, how the body is delimited) belongs to the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: Status,
    pub fields: Fields,
}

impl Default for ResponseHead {
    fn default() -> Self {
        ResponseHead { status: Status::OK, fields: Fields::default() }
    }
}

impl ResponseHead {
    /// Starts the head over for a new response of `status`.
    pub fn reset(&mut self, status: Status) {
        self.status = status;
        self.fields.clear();
    }
}

/// Writes `head` as HTTP/1.1: the status line, the fields every response of
/// tine's carries (Server, Date), the head's own, the `Connection` header
/// `persistence` calls for, and the blank line.
pub fn write_http1_head(out: &mut Vec<u8>, head: &ResponseHead, date: &[u8], persistence: Persistence) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(head.status.0));
    out.push(b' ');
    out.extend_from_slice(head.status.reason().as_bytes());
    out.extend_from_slice(b"\r\nServer: tine\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(head.fields.lines());
    match persistence {
        Persistence::KeepAlive { http10: true } => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persistence::KeepAlive { http10: false } => {}
        Persistence::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_framed_for_http1_and_its_fields_read_back_as_pairs() {
        let mut head = ResponseHead::default();
        head.reset(Status::NOT_FOUND);
        head.fields.push_u64("Content-Length", 0).content_range(0, 9, 10).push("X-A", b"b: c");
        let mut out = Vec::new();
        write_http1_head(&mut out, &head, b"Thu, 01 Jan 1970 00:00:00 GMT", Persistence::Close);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nServer: tine\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             Content-Length: 0\r\nContent-Range: bytes 0-9/10\r\nX-A: b: c\r\nConnection: close\r\n\r\n"
        );
        let pairs: Vec<(&[u8], &[u8])> = head.fields.iter().collect();
        assert_eq!(
            pairs,
            [(&b"Content-Length"[..], &b"0"[..]), (b"Content-Range", b"bytes 0-9/10"), (b"X-A", b"b: c")]
        );
        let mut n = Vec::new();
        push_u64(&mut n, u64::MAX);
        assert_eq!(n, u64::MAX.to_string().as_bytes());
    }
}
