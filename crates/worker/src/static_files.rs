//! The static-file handler: resolves the file a request names strictly beneath
//! the document root (through the per-worker [`FileCache`]) and answers with
//! a head and a body: the cached bytes of a small file, or a file range that
//! the session sends (with sendfile where it can).
//!
//! Two walls keep requests inside the root: the target is normalised by
//! `tine_http::target` (no `..`, no NUL), and every open goes through
//! [`tine_fs::Root`] (openat2 with RESOLVE_BENEATH), so a symlink that leaves
//! the root fails with EXDEV.

use crate::file_cache::{Content, FileCache};
use crate::file_lookup::Miss;
use crate::responses::{error_page, error_page_with, FileBody, ReplyBody, ReplyTo};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tine_fs::Root;
use tine_http::message::ResponseHead;
use tine_http::request::{Method, Request};
use tine_http::response::Status;
use tine_http::target::TargetPath;
use tine_http::validators::{self, RangeAnswer};

/// Answers a GET or HEAD for `path`: writes the head into `head` and
/// returns the body.
pub fn respond(
    cache: &mut FileCache,
    root: &Root,
    req: &Request<'_>,
    path: &TargetPath,
    to: &ReplyTo,
    now: Instant,
    head: &mut ResponseHead,
) -> ReplyBody {
    let selected = match cache.select(root, &path.relative, req.accept_encoding.as_ref(), now) {
        Ok(r) => r,
        Err(Miss::Redirect) => return redirect_to_directory(req.origin_target, path, to, head),
        Err(Miss::NotAcceptable { varies }) => {
            let vary = varies.then_some(("Vary", &b"Accept-Encoding"[..]));
            return error_page(Status::NOT_ACCEPTABLE, to, vary, head);
        }
        Err(Miss::Status(status)) => return error_page(status, to, None, head),
    };
    let res = selected.representation;
    let not_modified = match (req.if_none_match, req.if_modified_since) {
        (Some(inm), _) => validators::none_match_hits(inm, &res.etag),
        (None, Some(ims)) => validators::not_modified_since(ims, selected.mtime_secs),
        (None, None) => false,
    };
    if not_modified {
        to.start(head, Status::NOT_MODIFIED);
        head.fields.push_lines(&res.validators);
        return ReplyBody::Empty;
    }
    let size = res.size;
    let range = match req.range {
        Some(r)
            if req
                .if_range
                .is_none_or(|ir| validators::if_range_holds(ir, &res.etag, selected.last_modified)) =>
        {
            validators::range(r, size)
        }
        _ => RangeAnswer::Full,
    };
    let (status, first, end) = match range {
        RangeAnswer::Full => (Status::OK, 0, size),
        RangeAnswer::Part { first, last } => (Status::PARTIAL_CONTENT, first, last + 1),
        RangeAnswer::Unsatisfiable => {
            let mut value = b"bytes */".to_vec();
            tine_http::response::push_u64(&mut value, size);
            let mut extra = vec![("Content-Range", &value[..])];
            if res.varies {
                extra.push(("Vary", b"Accept-Encoding"));
            }
            return error_page_with(Status::RANGE_NOT_SATISFIABLE, to, &extra, head);
        }
    };
    to.start(head, status);
    head.fields.push_lines(&res.headers).push_u64("Content-Length", end - first);
    if status == Status::PARTIAL_CONTENT {
        head.fields.content_range(first, end - 1, size);
    }
    if req.method != Method::Get || end == first {
        return ReplyBody::Empty;
    }
    match &res.content {
        Content::Memory(bytes) => ReplyBody::Shared(Arc::clone(bytes), first as usize..end as usize),
        Content::File(file) => ReplyBody::File(FileBody { file: Rc::clone(file), offset: first, end }),
    }
}

/// `/dir` names a directory: send the client to `/dir/`, keeping its query.
/// The Location is the normalised path, so it is always a path on this host
/// (`//evil.test` would be another host's), with `\\` escaped.
fn redirect_to_directory(
    target: &[u8],
    path: &TargetPath,
    to: &ReplyTo,
    head: &mut ResponseHead,
) -> ReplyBody {
    let query = target.iter().position(|&b| b == b'?').map_or(&b""[..], |i| &target[i..]);
    let mut location = Vec::with_capacity(path.route.len() + 1 + query.len());
    tine_http::location::push_request_bytes(&mut location, &path.route);
    location.push(b'/');
    tine_http::location::push_request_bytes(&mut location, query);
    to.start(head, Status::MOVED_PERMANENTLY);
    head.fields.push("Location", &location).push_u64("Content-Length", 0);
    ReplyBody::Empty
}
