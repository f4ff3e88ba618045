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
    let page = page_for(status);
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

/// The page for each status tine answers with on its own, as static text: a
/// flood of 404s or 400s costs no allocation.
fn page_for(status: Status) -> &'static str {
    macro_rules! page {
        ($code:literal, $reason:literal) => {
            concat!(
                "<html><head><title>",
                $code,
                " ",
                $reason,
                "</title></head><body><h1>",
                $code,
                " ",
                $reason,
                "</h1></body></html>\n"
            )
        };
    }
    match status.0 {
        308 => page!("308", "Permanent Redirect"),
        400 => page!("400", "Bad Request"),
        403 => page!("403", "Forbidden"),
        404 => page!("404", "Not Found"),
        405 => page!("405", "Method Not Allowed"),
        406 => page!("406", "Not Acceptable"),
        413 => page!("413", "Content Too Large"),
        414 => page!("414", "URI Too Long"),
        416 => page!("416", "Range Not Satisfiable"),
        431 => page!("431", "Request Header Fields Too Large"),
        500 => page!("500", "Internal Server Error"),
        502 => page!("502", "Bad Gateway"),
        503 => page!("503", "Service Unavailable"),
        504 => page!("504", "Gateway Timeout"),
        505 => page!("505", "HTTP Version Not Supported"),
        _ => page!("500", "Internal Server Error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_names_its_status() {
        for code in [308u16, 400, 403, 404, 405, 406, 413, 414, 416, 431, 500, 502, 503, 504, 505] {
            let status = Status(code);
            let page = page_for(status);
            assert!(page.contains(&format!("{code} {}", status.reason())), "{code}: {page}");
        }
    }
}
