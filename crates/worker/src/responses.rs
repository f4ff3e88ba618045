//! Replies: error pages and their heads, what a route adds to every reply
//! it gives (headers, its own error pages), and the file body a reply may
//! send after its head.

use std::fs::File;
use std::rc::Rc;
use tine_http::response::{AddedHeaders, HeadWriter, Persistence, Status};

/// The body a reply sends after its head, from a descriptor shared with the
/// file cache (an entry replaced meanwhile keeps its file open until done).
pub struct FileBody {
    pub file: Rc<File>,
    pub offset: u64,
    pub end: u64,
}

/// What every reply to one request shares: the Date, whether the connection
/// stays open, whether the request was HEAD (so no body may follow), and the
/// route's additions.
pub struct Framing<'a> {
    pub date: &'a [u8],
    pub persistence: Persistence,
    pub head_request: bool,
    pub route: &'a RouteReplies,
}

impl<'a> Framing<'a> {
    /// Starts a head: status line, Server, Date, and the route's headers.
    pub fn head<'o>(&self, out: &'o mut Vec<u8>, status: Status) -> HeadWriter<'o> {
        let mut h = HeadWriter::start(out, status, self.date);
        h.raw(self.route.headers.lines());
        h
    }
}

/// What a route adds to the replies tine gives on it.
#[derive(Debug, Default)]
pub struct RouteReplies {
    pub headers: AddedHeaders,
    /// Custom pages for the errors tine answers with, by status.
    pub error_pages: Vec<(Status, ErrorPage)>,
}

/// Replies outside any route (a malformed head, the admin listener).
pub static NO_ROUTE: RouteReplies = RouteReplies { headers: AddedHeaders::NONE, error_pages: Vec::new() };

impl RouteReplies {
    pub fn new(route: &tine_config::Route) -> Self {
        let headers = AddedHeaders::new(route.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let error_pages = route
            .error_pages
            .iter()
            .map(|(status, page)| {
                let name = std::path::Path::new(&page.path);
                let content_type = mime_guess::from_path(name).first_raw().unwrap_or("text/html");
                (Status(*status), ErrorPage { content_type, body: page.body.clone().into_boxed_slice() })
            })
            .collect();
        RouteReplies { headers, error_pages }
    }

    fn error_page(&self, status: Status) -> Option<&ErrorPage> {
        self.error_pages.iter().find(|(s, _)| *s == status).map(|(_, page)| page)
    }
}

/// A route's page for one status, held in memory.
#[derive(Debug)]
pub struct ErrorPage {
    content_type: &'static str,
    body: Box<[u8]>,
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
    error_page_with(status, framing, extra.as_slice(), out)
}

/// [`error_page`] with any number of extra header lines.
pub fn error_page_with(
    status: Status,
    framing: &Framing,
    extra: &[(&str, &[u8])],
    out: &mut Vec<u8>,
) -> Reply {
    let (content_type, page) = match framing.route.error_page(status) {
        Some(custom) => (custom.content_type, &custom.body[..]),
        None => ("text/html", page_for(status).as_bytes()),
    };
    let mut h = framing.head(out, status);
    h.header("Content-Type", content_type.as_bytes()).header_u64("Content-Length", page.len() as u64);
    for (name, value) in extra {
        h.header(name, value);
    }
    h.finish(framing.persistence);
    if framing.head_request {
        return Reply::head_only(status);
    }
    out.extend_from_slice(page);
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
        301 => page!("301", "Moved Permanently"),
        302 => page!("302", "Found"),
        303 => page!("303", "See Other"),
        307 => page!("307", "Temporary Redirect"),
        308 => page!("308", "Permanent Redirect"),
        400 => page!("400", "Bad Request"),
        403 => page!("403", "Forbidden"),
        404 => page!("404", "Not Found"),
        405 => page!("405", "Method Not Allowed"),
        406 => page!("406", "Not Acceptable"),
        413 => page!("413", "Content Too Large"),
        414 => page!("414", "URI Too Long"),
        416 => page!("416", "Range Not Satisfiable"),
        421 => page!("421", "Misdirected Request"),
        431 => page!("431", "Request Header Fields Too Large"),
        500 => page!("500", "Internal Server Error"),
        501 => page!("501", "Not Implemented"),
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
        for code in
            [301u16, 302, 303, 307, 308, 400, 403, 404, 405, 406, 413, 414, 416, 431, 500, 502, 503, 504, 505]
        {
            let status = Status(code);
            let page = page_for(status);
            assert!(page.contains(&format!("{code} {}", status.reason())), "{code}: {page}");
        }
    }
}
