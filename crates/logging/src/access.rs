//! The access log in the combined format, buffered per worker and flushed in
//! whole lines when the buffer fills or at least once a second.
//!
//! `127.0.0.1 - - [22/Nov/2026:03:17:32 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8.5"`

use crate::{open_append, CivilTime};
use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FLUSH_BYTES: usize = 64 * 1024;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What one access-log line says.
pub struct AccessEntry<'a> {
    pub client: Option<IpAddr>,
    pub request_line: &'a [u8],
    pub status: u16,
    pub body_bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

pub struct AccessLog {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    last_flush: Instant,
    clf_second: u64,
    clf_time: String,
}

impl AccessLog {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open_append(path)
            .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))?;
        Ok(AccessLog {
            path: path.to_owned(),
            file,
            buf: Vec::with_capacity(FLUSH_BYTES),
            last_flush: Instant::now(),
            clf_second: u64::MAX,
            clf_time: String::new(),
        })
    }

    /// Appends one line; flushes if the buffer is full.
    pub fn record(&mut self, unix_secs: u64, e: &AccessEntry<'_>) {
        if unix_secs != self.clf_second {
            self.clf_second = unix_secs;
            self.clf_time = CivilTime::from_unix(unix_secs).clf();
        }
        let b = &mut self.buf;
        match e.client {
            Some(ip) => {
                let _ = write!(b, "{ip}");
            }
            None => b.push(b'-'),
        }
        b.extend_from_slice(b" - - [");
        b.extend_from_slice(self.clf_time.as_bytes());
        b.extend_from_slice(b"] \"");
        escaped(b, e.request_line);
        let _ = write!(b, "\" {} {} \"", e.status, e.body_bytes);
        escaped(b, e.referer.unwrap_or(b"-"));
        b.extend_from_slice(b"\" \"");
        escaped(b, e.user_agent.unwrap_or(b"-"));
        b.extend_from_slice(b"\"\n");
        if self.buf.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// Flushes if a second has passed since the last flush.
    pub fn tick(&mut self, now: Instant) {
        if !self.buf.is_empty() && now.duration_since(self.last_flush) >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// Writes the buffered lines with one append.
    pub fn flush(&mut self) {
        self.last_flush = Instant::now();
        if self.buf.is_empty() {
            return;
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            log::error!("access log {}: {e}; {} bytes of log lost", self.path.display(), self.buf.len());
        }
        self.buf.clear();
    }

    /// Flushes what is buffered into the old file, then opens the path again.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.flush();
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Copies request text into the log, escaping what could forge a line or a
/// field: quotes, backslashes, control and non-ASCII bytes become \xHH.
fn escaped(out: &mut Vec<u8>, text: &[u8]) {
    for &c in text {
        if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
            let _ = write!(out, "\\x{c:02X}");
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_format_with_escaping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut log = AccessLog::open(&path).unwrap();
        log.record(
            784_111_777,
            &AccessEntry {
                client: Some("127.0.0.1".parse().unwrap()),
                request_line: b"GET /a\"b HTTP/1.1",
                status: 200,
                body_bytes: 5,
                referer: None,
                user_agent: Some(b"curl\n/8"),
            },
        );
        drop(log);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1 - - [06/Nov/1994:08:49:37 +0000] \"GET /a\\x22b HTTP/1.1\" 200 5 \"-\" \"curl\\x0A/8\"\n"
        );
    }
}
