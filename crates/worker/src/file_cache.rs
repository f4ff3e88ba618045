//! Each worker's cache of resolved files: the open descriptor, the metadata,
//! the response headers already formatted, and for small files the whole body.
//! A hit on a small file therefore costs one write; a hit on a large one, a
//! write of the head and a sendfile, with no open, stat or close.
//!
//! Entries are trusted for `cache.valid` (1 s by default); after that the path
//! is resolved again and the entry kept only if it is still the same file
//! (device, inode, size and modification time), so a change on disk is served
//! within that time. Errors (404, 403) are never cached.

use crate::static_files::{resolve, Miss, StaticRoot};
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tine_config::Cache as CacheConfig;
use tine_http::validators::{http_date, ETag};

/// A file ready to be served.
pub struct Resource {
    key: Box<[u8]>,
    pub file: Rc<File>,
    pub size: u64,
    pub mtime_secs: u64,
    identity: (u64, u64, i64, i64),
    pub etag: ETag,
    pub last_modified: String,
    /// `Content-Type`, `Last-Modified`, `ETag` and `Accept-Ranges` lines of a
    /// response for the whole file (Content-Length is added per response).
    pub headers: Box<[u8]>,
    /// The whole file, when it is no larger than `cache.small_file_bytes`.
    pub body: Option<Box<[u8]>>,
    checked: Instant,
}

impl Resource {
    fn build(key: &[u8], file: File, meta: &Metadata, served_name: &[u8], small: u64, now: Instant) -> Self {
        let size = meta.len();
        let mtime_secs = meta.mtime().max(0) as u64;
        let etag = ETag::new(mtime_secs, size);
        let last_modified = http_date(mtime_secs);
        let mut headers = Vec::with_capacity(160);
        for (name, value) in [
            ("Content-Type", content_type(served_name).as_bytes()),
            ("Last-Modified", last_modified.as_bytes()),
            ("ETag", etag.as_bytes()),
            ("Accept-Ranges", b"bytes"),
        ] {
            headers.extend_from_slice(name.as_bytes());
            headers.extend_from_slice(b": ");
            headers.extend_from_slice(value);
            headers.extend_from_slice(b"\r\n");
        }
        let body = (size <= small).then(|| read_whole(&file, size)).flatten();
        Resource {
            key: key.into(),
            file: Rc::new(file),
            size,
            mtime_secs,
            identity: identity(meta),
            etag,
            last_modified,
            headers: headers.into_boxed_slice(),
            body,
            checked: now,
        }
    }
}

fn identity(meta: &Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec() ^ (meta.len() as i64))
}

/// Reads a small file whole; `None` if it changed size under us (it is then
/// served from the descriptor instead).
fn read_whole(file: &File, size: u64) -> Option<Box<[u8]>> {
    let mut buf = vec![0u8; size as usize];
    file.read_exact_at(&mut buf, 0).ok()?;
    Some(buf.into_boxed_slice())
}

fn content_type(name: &[u8]) -> &'static str {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(name);
    mime_guess::from_path(name).first_raw().unwrap_or("application/octet-stream")
}

pub struct FileCache {
    index: HashMap<Box<[u8]>, usize>,
    entries: Vec<Resource>,
    capacity: usize,
    small_file_bytes: u64,
    valid: Duration,
}

impl FileCache {
    pub fn new(config: &CacheConfig) -> Self {
        FileCache {
            index: HashMap::new(),
            entries: Vec::new(),
            // With the cache off, one entry still carries the file being served.
            capacity: config.open_files.max(1),
            small_file_bytes: config.small_file_bytes,
            valid: if config.open_files == 0 { Duration::ZERO } else { config.valid },
        }
    }

    /// The resource for a normalised path, from the cache when it is fresh.
    pub fn get(&mut self, root: &StaticRoot, relative: &[u8], now: Instant) -> Result<&Resource, Miss> {
        let cached = self.index.get(relative).copied();
        if let Some(i) = cached {
            if now.saturating_duration_since(self.entries[i].checked) < self.valid {
                return Ok(&self.entries[i]);
            }
        }
        let resolved = match resolve(root, relative) {
            Ok(r) => r,
            Err(miss) => {
                if let Some(i) = cached {
                    self.remove(i);
                }
                return Err(miss);
            }
        };
        if let Some(i) = cached {
            if self.entries[i].identity == identity(&resolved.meta) {
                // Still the same file: keep the entry, drop the new descriptor.
                self.entries[i].checked = now;
                return Ok(&self.entries[i]);
            }
            self.remove(i);
        }
        if self.entries.len() >= self.capacity {
            // Any entry will do; the hash order is as good as random.
            let victim = self.index.values().next().copied().unwrap_or(0);
            self.remove(victim);
        }
        let resource = Resource::build(
            relative,
            resolved.file,
            &resolved.meta,
            &resolved.served_name,
            self.small_file_bytes,
            now,
        );
        self.index.insert(relative.into(), self.entries.len());
        self.entries.push(resource);
        Ok(self.entries.last().expect("just pushed"))
    }

    fn remove(&mut self, i: usize) {
        let gone = self.entries.swap_remove(i);
        self.index.remove(&gone.key);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.key.clone(), i);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
