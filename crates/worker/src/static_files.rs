//! The static-file handler: resolves the file a request names strictly beneath
//! the document root (through the per-worker [`FileCache`]) and writes the
//! response head, plus the whole body when the file is small, into the
//! connection's output buffer. A larger body is left to the connection, which
//! sends it with sendfile.
//!
//! Two walls keep requests inside the root: the target is normalised by
//! `tine_http::target` (no `..`, no NUL), and every open goes through
//! [`tine_fs::Root`] (openat2 with RESOLVE_BENEATH), so a symlink that leaves
//! the root fails with EXDEV.

use crate::file_cache::{Content, FileCache};
use crate::file_lookup::Miss;
use crate::responses::{error_page, error_page_with, FileBody, Framing, Reply};
use std::rc::Rc;
use std::time::Instant;
use tine_fs::Root;
use tine_http::request::{Method, Request};
use tine_http::response::Status;
use tine_http::target::TargetPath;
use tine_http::validators::{self, RangeAnswer};

/// Answers a GET or HEAD for `path`: writes the head (and a small body) into
/// `out` and returns the file body still to send, if any.
pub fn respond(
    cache: &mut FileCache,
    root: &Root,
    req: &Request<'_>,
    path: &TargetPath,
    framing: &Framing,
    now: Instant,
    out: &mut Vec<u8>,
) -> Reply {
    let selected = match cache.select(root, &path.relative, req.accept_encoding.as_ref(), now) {
        Ok(r) => r,
        Err(Miss::Redirect) => return redirect_to_directory(req.origin_target, path, framing, out),
        Err(Miss::NotAcceptable { varies }) => {
            let vary = varies.then_some(("Vary", &b"Accept-Encoding"[..]));
            return error_page(Status::NOT_ACCEPTABLE, framing, vary, out);
        }
        Err(Miss::Status(status)) => return error_page(status, framing, None, out),
    };
    let res = selected.representation;
    let not_modified = match (req.if_none_match, req.if_modified_since) {
        (Some(inm), _) => validators::none_match_hits(inm, &res.etag),
        (None, Some(ims)) => validators::not_modified_since(ims, selected.mtime_secs),
        (None, None) => false,
    };
    if not_modified {
        let mut h = framing.head(out, Status::NOT_MODIFIED);
        h.raw(&res.validators);
        h.finish(framing.persistence);
        return Reply::head_only(Status::NOT_MODIFIED);
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
            return error_page_with(Status::RANGE_NOT_SATISFIABLE, framing, &extra, out);
        }
    };
    let mut h = framing.head(out, status);
    h.raw(&res.headers).header_u64("Content-Length", end - first);
    if status == Status::PARTIAL_CONTENT {
        h.content_range(first, end - 1, size);
    }
    h.finish(framing.persistence);
    if req.method != Method::Get || end == first {
        return Reply::head_only(status);
    }
    match &res.content {
        Content::Memory(body) => {
            out.extend_from_slice(&body[first as usize..end as usize]);
            Reply { status, body: None, body_len: end - first }
        }
        Content::File(file) => {
            let body = FileBody { file: Rc::clone(file), offset: first, end };
            Reply { status, body: Some(body), body_len: end - first }
        }
    }
}

/// `/dir` names a directory: send the client to `/dir/`, keeping its query.
/// The Location is the normalised path, so it is always a path on this host
/// (`//evil.test` would be another host's), with `\\` escaped.
fn redirect_to_directory(target: &[u8], path: &TargetPath, framing: &Framing, out: &mut Vec<u8>) -> Reply {
    let query = target.iter().position(|&b| b == b'?').map_or(&b""[..], |i| &target[i..]);
    let mut location = Vec::with_capacity(path.route.len() + 1 + query.len());
    tine_http::location::push_request_bytes(&mut location, &path.route);
    location.push(b'/');
    tine_http::location::push_request_bytes(&mut location, query);
    let mut h = framing.head(out, Status::MOVED_PERMANENTLY);
    h.header("Location", &location).header_u64("Content-Length", 0);
    h.finish(framing.persistence);
    Reply::head_only(Status::MOVED_PERMANENTLY)
}
