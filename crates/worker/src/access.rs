//! The part of an access-log line known when a response starts (request line,
//! referer, user agent, status), kept until the response ends and the number of
//! body bytes really sent is known. Captured only when an access log is on.

use std::net::IpAddr;
use std::ops::Range;
use tine_http::Request;
use tine_logging::{AccessEntry, AccessLog};

/// Longest piece of a malformed head copied into the log.
const MAX_RAW_LINE: usize = 1024;

pub struct PendingEntry {
    text: Vec<u8>,
    line: Range<usize>,
    referer: Option<Range<usize>>,
    user_agent: Option<Range<usize>>,
    status: u16,
}

impl PendingEntry {
    pub fn capture(req: &Request<'_>, status: u16) -> Box<Self> {
        let mut text = Vec::with_capacity(128);
        let line = push(&mut text, req.http1.request_line);
        let referer = req.referer.map(|r| push(&mut text, r));
        let user_agent = req.user_agent.map(|u| push(&mut text, u));
        Box::new(PendingEntry { text, line, referer, user_agent, status })
    }

    /// The status, once known (a proxied response's comes from upstream).
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// For a head that did not parse: its first line, as far as it goes.
    pub fn malformed(head: &[u8], status: u16) -> Box<Self> {
        let end = head.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(head.len()).min(MAX_RAW_LINE);
        let mut text = Vec::new();
        let line = push(&mut text, &head[..end]);
        Box::new(PendingEntry { text, line, referer: None, user_agent: None, status })
    }

    pub fn write(&self, log: &mut AccessLog, unix_secs: u64, client: Option<IpAddr>, body_bytes: u64) {
        let part = |r: &Option<Range<usize>>| r.clone().map(|r| &self.text[r]);
        log.record(
            unix_secs,
            &AccessEntry {
                client,
                request_line: &self.text[self.line.clone()],
                status: self.status,
                body_bytes,
                referer: part(&self.referer),
                user_agent: part(&self.user_agent),
            },
        );
    }
}

fn push(text: &mut Vec<u8>, part: &[u8]) -> Range<usize> {
    let start = text.len();
    text.extend_from_slice(part);
    start..text.len()
}
