//! Replies that do not come from a file: error pages and their heads.

use crate::static_files::FileBody;
use tine_http::response::{HeadWriter, Persistence, Status};

/// What every reply to one request shares: the Date, whether the connection
/// stays open, and whether the request was HEAD (so no body may follow).
pub struct Framing<'a> {
    pub date: &'a [u8],
    pub persistence: Persistence,
    pub head_request: bool,
}

/// What the connection sends after the head already written to its buffer.
pub struct Reply {
    pub status: Status,
    pub body: Option<FileBody>,
    /// Body bytes the reply sends in all (in the buffer after the head, or from
    /// the file), for the access log.
    pub body_len: u64,
}

impl Reply {
    pub fn head_only(status: Status) -> Self {
        Reply { status, body: None, body_len: 0 }
    }
}

/// A small HTML page for `status` (head, and body unless the request was HEAD)
/// written into `out`, with one optional extra header.
pub fn error_page(
    status: Status,
    framing: &Framing,
    extra: Option<(&str, &[u8])>,
    out: &mut Vec<u8>,
) -> Reply {
    let page = format!(
        "<html><head><title>{code} {reason}</title></head><body><h1>{code} {reason}</h1></body></html>\n",
        code = status.0,
        reason = status.reason()
    );
    let mut h = HeadWriter::start(out, status, framing.date);
    h.header("Content-Type", b"text/html").header_u64("Content-Length", page.len() as u64);
    if let Some((name, value)) = extra {
        h.header(name, value);
    }
    h.finish(framing.persistence);
    if framing.head_request {
        return Reply::head_only(status);
    }
    out.extend_from_slice(page.as_bytes());
    Reply { status, body: None, body_len: page.len() as u64 }
}
