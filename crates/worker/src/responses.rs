//! Replies of tine's own: a version-neutral head (status and fields, written
//! into a head the session lends) plus a body (buffered bytes or a file
//! range). Error pages, what a route adds to every reply it gives (headers,
//! its own error pages). Only the session frames a reply for its protocol.

use std::fs::File;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use tine_http::message::ResponseHead;
use tine_http::response::{AddedHeaders, Status};

/// The body a reply sends after its head, from a descriptor shared with the
/// file cache (an entry replaced meanwhile keeps its file open until done).
pub struct FileBody {
    pub file: Rc<File>,
    pub offset: u64,
    pub end: u64,
}

/// A reply's body.
pub enum ReplyBody {
    /// None (HEAD, 304, a redirect).
    Empty,
    /// Text built into tine (its error pages, the dashboard).
    Static(&'static [u8]),
    /// Part of bytes held in memory and shared (a cached small file, a
    /// route's error page).
    Shared(Arc<[u8]>, Range<usize>),
    /// Bytes made for this reply (the admin documents).
    Owned(Vec<u8>),
    /// A range of a file, sent after the head (with sendfile where it can).
    File(FileBody),
}

impl ReplyBody {
    /// How many bytes it sends.
    pub fn byte_len(&self) -> u64 {
        match self {
            ReplyBody::Empty => 0,
            ReplyBody::Static(b) => b.len() as u64,
            ReplyBody::Shared(_, range) => range.len() as u64,
            ReplyBody::Owned(b) => b.len() as u64,
            ReplyBody::File(f) => f.end - f.offset,
        }
    }

    /// The bytes of a body held in memory (none for a file or no body).
    pub fn bytes(&self) -> &[u8] {
        match self {
            ReplyBody::Static(b) => b,
            ReplyBody::Shared(bytes, range) => &bytes[range.clone()],
            ReplyBody::Owned(b) => b,
            ReplyBody::Empty | ReplyBody::File(_) => &[],
        }
    }
}

/// What every reply to one request shares: whether the request was HEAD (so
/// no body may follow), and the route's additions.
pub struct ReplyTo<'a> {
    pub head_request: bool,
    pub route: &'a RouteReplies,
}

impl ReplyTo<'_> {
    /// Starts `head` for a reply of `status`, with the route's headers.
    pub fn start(&self, head: &mut ResponseHead, status: Status) {
        head.reset(status);
        head.fields.push_lines(self.route.headers.lines());
    }

    /// `body`, unless the request was HEAD.
    pub fn body(&self, body: ReplyBody) -> ReplyBody {
        if self.head_request {
            ReplyBody::Empty
        } else {
            body
        }
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
                (Status(*status), ErrorPage { content_type, body: Arc::from(page.body.clone()) })
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
    body: Arc<[u8]>,
}

/// A small HTML page for `status` (head, and body unless the request was
/// HEAD) with one optional extra header.
pub fn error_page(
    status: Status,
    to: &ReplyTo,
    extra: Option<(&str, &[u8])>,
    head: &mut ResponseHead,
) -> ReplyBody {
    error_page_with(status, to, extra.as_slice(), head)
}

/// [`error_page`] with any number of extra header lines.
pub fn error_page_with(
    status: Status,
    to: &ReplyTo,
    extra: &[(&str, &[u8])],
    head: &mut ResponseHead,
) -> ReplyBody {
    let (content_type, page) = match to.route.error_page(status) {
        Some(custom) => {
            (custom.content_type, ReplyBody::Shared(Arc::clone(&custom.body), 0..custom.body.len()))
        }
        None => ("text/html", ReplyBody::Static(page_for(status).as_bytes())),
    };
    to.start(head, status);
    head.fields.push("Content-Type", content_type.as_bytes()).push_u64("Content-Length", page.byte_len());
    for (name, value) in extra {
        head.fields.push(name, value);
    }
    to.body(page)
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
        429 => page!("429", "Too Many Requests"),
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
