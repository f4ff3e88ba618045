//! Finding the regular file a normalised request path names beneath a
//! document root: the file itself, a directory's index.html, or the first
//! `try_files` candidate; and why there is none ([`Miss`]). The file cache
//! calls this on a miss; nothing here knows of responses.

use nix::errno::Errno;
use std::fs::{File, Metadata};
use std::io;
use tine_config::TryFile;
use tine_fs::Root;
use tine_http::response::Status;

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
