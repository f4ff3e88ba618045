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
use crate::responses::{error_page, error_page_with, Framing, Reply};
use nix::errno::Errno;
use std::fs::{File, Metadata};
use std::io;
use std::rc::Rc;
use std::time::Instant;
use tine_config::TryFile;
pub use tine_fs::Root;
use tine_http::request::{Method, Request};
use tine_http::response::Status;
use tine_http::target::TargetPath;
use tine_http::validators::{self, RangeAnswer};

/// The body a reply sends after its head, from a descriptor shared with the
/// file cache (an entry replaced meanwhile keeps its file open until done).
pub struct FileBody {
    pub file: Rc<File>,
    pub offset: u64,
    pub end: u64,
}

/// Opens `relative` beneath the root with its metadata.
pub fn open_with_metadata(root: &Root, relative: &[u8]) -> io::Result<(File, Metadata)> {
    let file = root.open_beneath(relative)?;
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Why a path has no file to serve.
pub enum Miss {
    /// A directory asked for without its trailing slash.
    Redirect,
    /// The file exists, but in no coding the client takes (`identity;q=0`
    /// and no sibling it accepts). `varies`: it has coded representations.
    NotAcceptable {
        varies: bool,
    },
    Status(Status),
}

/// A regular file found for a request path.
pub struct Resolved {
    pub file: File,
    pub meta: Metadata,
    /// The name whose extension decides Content-Type (the index for a directory).
    pub served_name: Vec<u8>,
    /// Found through a fixed `try_files` entry (a fallback that answers any
    /// path), not through the request's own path.
    pub fallback: bool,
}

/// Finds the regular file a normalised path names: the file itself, or the
/// index.html of a directory asked for with its trailing slash.
pub fn resolve(root: &Root, relative: &[u8]) -> Result<Resolved, Miss> {
    let file = root.open_beneath(relative).map_err(|e| Miss::Status(status_for_open_error(&e)))?;
    let meta = file.metadata().map_err(|_| Miss::Status(Status::INTERNAL_SERVER_ERROR))?;
    if meta.is_file() {
        return Ok(Resolved { file, meta, served_name: relative.to_vec(), fallback: false });
    }
    if !meta.is_dir() {
        // FIFOs, sockets, devices: never served.
        return Err(Miss::Status(Status::NOT_FOUND));
    }
    if !relative.is_empty() && !relative.ends_with(b"/") {
        return Err(Miss::Redirect);
    }
    let mut index = relative.to_vec();
    index.extend_from_slice(b"index.html");
    match open_with_metadata(root, &index) {
        Ok((file, meta)) if meta.is_file() => {
            Ok(Resolved { file, meta, served_name: index, fallback: false })
        }
        // A directory without an index is not listed.
        _ => Err(Miss::Status(Status::FORBIDDEN)),
    }
}

/// `try_files`: the first of the candidates that is a regular file, or 404.
/// Directories are skipped (no index, no redirect): the list says where
/// to look instead.
pub fn resolve_first(root: &Root, relative: &[u8], try_files: &[TryFile]) -> Result<Resolved, Miss> {
    let mut candidate = Vec::with_capacity(relative.len() + 16);
    for entry in try_files {
        candidate.clear();
        match entry {
            TryFile::Request { suffix } => {
                candidate.extend_from_slice(relative);
                let suffix = suffix.as_bytes();
                let joined = candidate.is_empty() || candidate.ends_with(b"/");
                candidate.extend_from_slice(if joined {
                    suffix.strip_prefix(b"/").unwrap_or(suffix)
                } else {
                    suffix
                });
            }
            TryFile::Fixed(path) => candidate.extend_from_slice(path.as_bytes()),
        }
        match open_with_metadata(root, &candidate) {
            Ok((file, meta)) if meta.is_file() => {
                let fallback = matches!(entry, TryFile::Fixed(_));
                return Ok(Resolved { file, meta, served_name: candidate, fallback });
            }
            Ok(_) => continue,
            Err(e) => match status_for_open_error(&e) {
                status @ (Status::SERVICE_UNAVAILABLE | Status::INTERNAL_SERVER_ERROR) => {
                    return Err(Miss::Status(status))
                }
                _ => continue,
            },
        }
    }
    Err(Miss::Status(Status::NOT_FOUND))
}

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

fn status_for_open_error(e: &io::Error) -> Status {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG) => Status::NOT_FOUND,
        // EXDEV: a symlink that leaves the root; ELOOP: too many or magic links.
        Some(Errno::EACCES | Errno::EPERM | Errno::EXDEV | Errno::ELOOP) => Status::FORBIDDEN,
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM) => {
            log::error!("cannot open a file: {e}");
            Status::SERVICE_UNAVAILABLE
        }
        _ => {
            log::error!("cannot open a file: {e}");
            Status::INTERNAL_SERVER_ERROR
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
