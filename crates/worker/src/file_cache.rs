//! Each worker's cache of resolved files: the open descriptor, the metadata,
//! the response headers already formatted, and for small files the whole body.
//! A hit on a small file therefore costs one write; a hit on a large one, a
//! write of the head and a sendfile, with no open, stat or close.
//!
//! A file has up to three representations: itself, brotli and gzip. A coded
//! one is a precompressed sibling (`file.br`, `file.gz`, no older than the
//! file) or, for a compressible type, the file compressed on the first
//! request that takes that coding and kept here (in memory, or in a memfd
//! when large, so it still goes out with sendfile), within a per-worker
//! budget. A hot compressed file then costs what an uncompressed one does.
//!
//! Entries are trusted for `cache.valid` (1 s by default); after that the path
//! is resolved again and the entry kept only if it is still the same file and
//! the same siblings (device, inode, size and modification time), so a change
//! on disk is served within that time, compressed copies included. Errors
//! (404, 403) are never cached.

use crate::file_lookup::{open_with_metadata, resolve, resolve_first, Miss};
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tine_config::{Cache as CacheConfig, Compression, StaticSite};
use tine_fs::Root;
use tine_http::content_coding::{AcceptEncoding, Coding};
use tine_http::response::push_header;
use tine_http::validators::{http_date, ETag};

/// One representation of a file: what a response with it says and sends.
pub struct Representation {
    pub size: u64,
    pub etag: ETag,
    /// `Content-Type`, `Content-Encoding`, `Vary`, `Last-Modified`, `ETag` and
    /// `Accept-Ranges` lines of a response for the whole of it
    /// (Content-Length is added per response).
    pub headers: Box<[u8]>,
    /// What a 304 repeats of those: `ETag`, `Last-Modified`, `Vary`.
    pub validators: Box<[u8]>,
    /// The file has coded representations: every answer about it, errors
    /// included, says `Vary: Accept-Encoding`.
    pub varies: bool,
    pub content: Content,
}

/// Where a representation's bytes are.
pub enum Content {
    /// Whole, for small ones: a hit costs one write.
    Memory(Arc<[u8]>),
    /// Sent with sendfile; shared with the cache, so an entry replaced
    /// meanwhile keeps its file open until the response is done.
    File(Rc<File>),
}

/// A coded representation's state.
enum Coded {
    /// Not offered: no sibling, and the file is not one to compress.
    Absent,
    /// To be compressed on the first request that takes it.
    Pending,
    /// A precompressed sibling on disk.
    Sibling(Representation),
    /// Compressed here, counted in the budget.
    Made(Representation),
}

impl Coded {
    fn ready(&self) -> Option<&Representation> {
        match self {
            Coded::Sibling(r) | Coded::Made(r) => Some(r),
            Coded::Absent | Coded::Pending => None,
        }
    }
}

/// Device, inode, modification time and size: a file replaced or changed
/// on disk has a different one.
type FileId = (u64, u64, i64, i64);

/// A file ready to be served, with its representations.
pub struct Resource {
    key: Box<[u8]>,
    ids: [Option<FileId>; 3],
    checked: Instant,
    pub mtime_secs: u64,
    pub last_modified: String,
    content_type: Box<str>,
    plain: Representation,
    brotli: Coded,
    gzip: Coded,
    /// Bytes of compressed copies this entry holds (counted in the budget).
    compressed_bytes: u64,
}

/// The representation chosen for a request, with what the response needs.
pub struct Selected<'a> {
    pub representation: &'a Representation,
    pub mtime_secs: u64,
    pub last_modified: &'a str,
}

/// How a site's files are served: the route's options and the worker's
/// compression bounds.
struct Serving {
    site: StaticSite,
    compression: Compression,
    small_file_bytes: u64,
}

/// A file opened for an entry, with its metadata.
struct Opened {
    file: File,
    meta: Metadata,
}

/// What resolving a path found: the file, and its siblings when looked for.
struct Found {
    file: Opened,
    served_name: Vec<u8>,
    fallback: bool,
    brotli: Option<Opened>,
    gzip: Option<Opened>,
}

impl Found {
    fn ids(&self) -> [Option<FileId>; 3] {
        let id = |o: &Opened| file_id(&o.meta);
        [Some(id(&self.file)), self.brotli.as_ref().map(id), self.gzip.as_ref().map(id)]
    }
}

fn file_id(meta: &Metadata) -> FileId {
    (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec() ^ (meta.len() as i64))
}

impl Serving {
    fn find(&self, root: &Root, relative: &[u8]) -> Result<Found, Miss> {
        let resolved = match &self.site.try_files[..] {
            [] => resolve(root, relative)?,
            candidates => resolve_first(root, relative, candidates)?,
        };
        let file = Opened { file: resolved.file, meta: resolved.meta };
        let (brotli, gzip) = if self.site.precompressed {
            let sibling = |coding| self.sibling(root, &resolved.served_name, &file.meta, coding);
            (sibling(Coding::Brotli), sibling(Coding::Gzip))
        } else {
            (None, None)
        };
        Ok(Found { file, served_name: resolved.served_name, fallback: resolved.fallback, brotli, gzip })
    }

    /// `name.br` or `name.gz`, if it is a regular file no older than `name`.
    fn sibling(&self, root: &Root, name: &[u8], original: &Metadata, coding: Coding) -> Option<Opened> {
        let mut path = name.to_vec();
        path.extend_from_slice(coding.suffix()?.as_bytes());
        let (file, meta) = open_with_metadata(root, &path).ok()?;
        let fresh = (meta.mtime(), meta.mtime_nsec()) >= (original.mtime(), original.mtime_nsec());
        (meta.is_file() && fresh).then_some(Opened { file, meta })
    }

    fn build(&self, key: &[u8], found: Found, now: Instant) -> Resource {
        let ids = found.ids();
        let content_type = content_type(&found.served_name, &self.site);
        let size = found.file.meta.len();
        let mtime = mtime_secs(&found.file.meta);
        let last_modified = http_date(mtime);
        let compress = self.site.compress
            && self.compression.memory_bytes > 0
            && (self.compression.min_bytes..=self.compression.max_bytes).contains(&size)
            && tine_compress::compressible(&content_type);
        let coded = |sibling: Option<Opened>, coding: Coding| match sibling {
            Some(s) => {
                let etag = ETag::coded(mtime_secs(&s.meta), s.meta.len(), coding.token());
                Coded::Sibling(self.representation(s, etag, &content_type, Some(coding), true))
            }
            None if compress => Coded::Pending,
            None => Coded::Absent,
        };
        let brotli = coded(found.brotli, Coding::Brotli);
        let gzip = coded(found.gzip, Coding::Gzip);
        let varies = !matches!((&brotli, &gzip), (Coded::Absent, Coded::Absent));
        let plain = self.representation(found.file, ETag::new(mtime, size), &content_type, None, varies);
        Resource {
            key: key.into(),
            ids,
            checked: now,
            mtime_secs: mtime,
            last_modified,
            content_type: content_type.into(),
            plain,
            brotli,
            gzip,
            compressed_bytes: 0,
        }
    }

    fn representation(
        &self,
        opened: Opened,
        etag: ETag,
        content_type: &str,
        coding: Option<Coding>,
        varies: bool,
    ) -> Representation {
        let size = opened.meta.len();
        let content = match (size <= self.small_file_bytes).then(|| read_whole(&opened.file, size)).flatten()
        {
            Some(bytes) => Content::Memory(Arc::from(bytes)),
            None => Content::File(Rc::new(opened.file)),
        };
        let last_modified = http_date(mtime_secs(&opened.meta));
        let (headers, validators) = head_lines(content_type, coding, varies, &last_modified, &etag);
        Representation { size, etag, headers, validators, varies, content }
    }
}

/// The header lines of a representation, and the subset a 304 repeats.
fn head_lines(
    content_type: &str,
    coding: Option<Coding>,
    varies: bool,
    last_modified: &str,
    etag: &ETag,
) -> (Box<[u8]>, Box<[u8]>) {
    let mut validators = Vec::with_capacity(96);
    push_header(&mut validators, b"Last-Modified", last_modified.as_bytes());
    push_header(&mut validators, b"ETag", etag.as_bytes());
    if varies {
        push_header(&mut validators, b"Vary", b"Accept-Encoding");
    }
    let mut headers = Vec::with_capacity(192);
    push_header(&mut headers, b"Content-Type", content_type.as_bytes());
    if let Some(token) = coding.and_then(Coding::token) {
        push_header(&mut headers, b"Content-Encoding", token.as_bytes());
    }
    headers.extend_from_slice(&validators);
    push_header(&mut headers, b"Accept-Ranges", b"bytes");
    (headers.into_boxed_slice(), validators.into_boxed_slice())
}

fn mtime_secs(meta: &Metadata) -> u64 {
    meta.mtime().max(0) as u64
}

/// A memfd holding `bytes`, for a compressed copy too large to keep in the
/// heap-allocated small-body form: it goes out with sendfile like a file.
fn memory_file(bytes: &[u8]) -> Option<File> {
    let mut file = File::from(tine_net::sys::memory_file(c"tine-compressed").ok()?);
    file.write_all(bytes).ok()?;
    Some(file)
}

/// Reads a small file whole; `None` if it changed size under us (it is then
/// served from the descriptor instead).
fn read_whole(file: &File, size: u64) -> Option<Box<[u8]>> {
    let mut buf = vec![0u8; size as usize];
    file.read_exact_at(&mut buf, 0).ok()?;
    Some(buf.into_boxed_slice())
}

/// The Content-Type for a served name: the route's own table first, then
/// the built-in one, with the route's charset on text types.
fn content_type(name: &[u8], site: &StaticSite) -> String {
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
    let extension = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    let configured = extension
        .as_deref()
        .and_then(|e| site.mime_types.iter().find(|(ext, _)| ext == e))
        .map(|(_, t)| t.clone());
    let mut media_type = configured.unwrap_or_else(|| {
        mime_guess::from_path(path).first_raw().unwrap_or("application/octet-stream").to_string()
    });
    if let Some(charset) = &site.charset {
        if takes_charset(&media_type) {
            media_type.push_str("; charset=");
            media_type.push_str(charset);
        }
    }
    media_type
}

/// Text types that name no charset yet.
fn takes_charset(media_type: &str) -> bool {
    let lower = media_type.to_ascii_lowercase();
    let essence = lower.split(';').next().unwrap_or_default().trim();
    !lower.contains("charset=")
        && (essence.starts_with("text/")
            || matches!(essence, "application/javascript" | "application/json" | "application/xml"))
}

pub struct FileCache {
    index: HashMap<Box<[u8]>, usize>,
    entries: Vec<Resource>,
    capacity: usize,
    valid: Duration,
    serving: Serving,
    /// Compressed copies held by all entries.
    compressed_bytes: u64,
}

impl FileCache {
    pub fn new(config: &CacheConfig, site: &StaticSite, compression: &Compression) -> Self {
        FileCache {
            index: HashMap::new(),
            entries: Vec::new(),
            // With the cache off, one entry still carries the file being served.
            capacity: config.open_files.max(1),
            valid: if config.open_files == 0 { Duration::ZERO } else { config.valid },
            serving: Serving {
                site: site.clone(),
                compression: *compression,
                small_file_bytes: config.small_file_bytes,
            },
            compressed_bytes: 0,
        }
    }

    /// The representation of a normalised path this client takes, from the
    /// cache when it is fresh; compressed now if it is the first to want it.
    pub fn select(
        &mut self,
        root: &Root,
        relative: &[u8],
        accept: Option<&AcceptEncoding>,
        now: Instant,
    ) -> Result<Selected<'_>, Miss> {
        let i = self.entry(root, relative, now)?;
        // The codings the client takes most, made if need be; of those, the
        // fewest bytes. One that turns out not worth having is no longer
        // offered, and the choice is made again.
        let coding = loop {
            let mut codings = [Coding::Identity; 3];
            let n = self.entries[i].available(&mut codings);
            let available = &codings[..n];
            let best = AcceptEncoding::best(accept, available);
            if best.is_empty() {
                return Err(Miss::NotAcceptable { varies: available.len() > 1 });
            }
            if best.as_slice().iter().all(|&c| self.prepare(i, c)) {
                let entry = &self.entries[i];
                let size = |c: &Coding| entry.representation(*c).size;
                break best.as_slice().iter().copied().min_by_key(size).unwrap_or(Coding::Identity);
            }
        };
        let entry = &self.entries[i];
        let representation = entry.representation(coding);
        Ok(Selected { representation, mtime_secs: entry.mtime_secs, last_modified: &entry.last_modified })
    }

    /// The entry for a path: cached and fresh, revalidated, or new.
    fn entry(&mut self, root: &Root, relative: &[u8], now: Instant) -> Result<usize, Miss> {
        let cached = self.index.get(relative).copied();
        if let Some(i) = cached {
            if now.saturating_duration_since(self.entries[i].checked) < self.valid {
                return Ok(i);
            }
        }
        let found = match self.serving.find(root, relative) {
            Ok(found) => found,
            Err(miss) => {
                if let Some(i) = cached {
                    self.remove(i);
                }
                return Err(miss);
            }
        };
        // A try_files fallback answers any path: its entry is keyed by the
        // file it serves, so that a flood of made-up paths shares one entry
        // (and its compressed copies) instead of churning the cache and
        // compressing the same file again for each.
        let key = if found.fallback { found.served_name.clone() } else { relative.to_vec() };
        let existing = match cached {
            Some(i) if key != relative => {
                self.remove(i);
                self.index.get(&key[..]).copied()
            }
            Some(i) => Some(i),
            None => self.index.get(&key[..]).copied(),
        };
        if let Some(i) = existing {
            if self.entries[i].ids == found.ids() {
                // Still the same files: keep the entry, drop the new descriptors.
                self.entries[i].checked = now;
                return Ok(i);
            }
            self.remove(i);
        }
        if self.entries.len() >= self.capacity {
            // Any entry will do; the hash order is as good as random.
            let victim = self.index.values().next().copied().unwrap_or(0);
            self.remove(victim);
        }
        let resource = self.serving.build(&key, found, now);
        self.index.insert(key.into_boxed_slice(), self.entries.len());
        self.entries.push(resource);
        Ok(self.entries.len() - 1)
    }

    /// Makes `coding` of entry `i` ready if it is pending; false when it
    /// turned out not worth having (then it is no longer offered).
    fn prepare(&mut self, i: usize, coding: Coding) -> bool {
        let pending = match coding {
            Coding::Brotli => matches!(self.entries[i].brotli, Coded::Pending),
            Coding::Gzip => matches!(self.entries[i].gzip, Coded::Pending),
            Coding::Identity => false,
        };
        if !pending {
            return true;
        }
        let made = self.compress(i, coding);
        let entry = &mut self.entries[i];
        let slot = if coding == Coding::Brotli { &mut entry.brotli } else { &mut entry.gzip };
        match made {
            Some(r) => {
                entry.compressed_bytes += r.size;
                self.compressed_bytes += r.size;
                *slot = Coded::Made(r);
                true
            }
            None => {
                *slot = Coded::Absent;
                false
            }
        }
    }

    /// Compresses entry `i`'s file; None when that gains too little, cannot
    /// be read, or cannot fit the budget.
    fn compress(&mut self, i: usize, coding: Coding) -> Option<Representation> {
        let entry = &self.entries[i];
        let plain = &entry.plain;
        let input = match &plain.content {
            Content::Memory(bytes) => Box::from(&bytes[..]),
            Content::File(file) => read_whole(file, plain.size)?,
        };
        let levels = tine_compress::Levels {
            brotli: self.serving.compression.brotli_level,
            gzip: self.serving.compression.gzip_level,
        };
        let encoded = tine_compress::encode(&input, coding, levels);
        let size = encoded.len() as u64;
        // Less than 5% smaller: not worth a second representation.
        if size * 20 >= plain.size * 19 {
            return None;
        }
        self.make_room(size, i)?;
        let entry = &self.entries[i];
        let etag = ETag::coded(entry.mtime_secs, entry.plain.size, coding.token());
        let content = if size <= self.serving.small_file_bytes {
            Content::Memory(Arc::from(encoded))
        } else {
            Content::File(Rc::new(memory_file(&encoded)?))
        };
        let (headers, validators) =
            head_lines(&entry.content_type, Some(coding), true, &entry.last_modified, &etag);
        Some(Representation { size, etag, headers, validators, varies: true, content })
    }

    /// Drops other entries' compressed copies until `bytes` more fit the
    /// budget; None if they never can.
    fn make_room(&mut self, bytes: u64, keep: usize) -> Option<()> {
        let budget = self.serving.compression.memory_bytes;
        if bytes > budget {
            return None;
        }
        let mut i = 0;
        while self.compressed_bytes + bytes > budget && i < self.entries.len() {
            if i != keep {
                self.compressed_bytes -= self.entries[i].forget_compressed();
            }
            i += 1;
        }
        (self.compressed_bytes + bytes <= budget).then_some(())
    }

    fn remove(&mut self, i: usize) {
        let gone = self.entries.swap_remove(i);
        self.compressed_bytes -= gone.compressed_bytes;
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

    /// Bytes of compressed copies held.
    pub fn compressed_bytes(&self) -> u64 {
        self.compressed_bytes
    }
}

impl Resource {
    /// The representation in `coding`, the file itself when that one is
    /// not ready.
    fn representation(&self, coding: Coding) -> &Representation {
        match coding {
            Coding::Brotli => self.brotli.ready(),
            Coding::Gzip => self.gzip.ready(),
            Coding::Identity => None,
        }
        .unwrap_or(&self.plain)
    }

    /// The codings this file can be sent in.
    /// Written into `out` (no allocation: this runs for every request); the
    /// count is returned.
    fn available(&self, out: &mut [Coding; 3]) -> usize {
        let mut n = 0;
        for (coded, coding) in [(&self.brotli, Coding::Brotli), (&self.gzip, Coding::Gzip)] {
            if !matches!(coded, Coded::Absent) {
                out[n] = coding;
                n += 1;
            }
        }
        out[n] = Coding::Identity;
        n + 1
    }

    /// Drops compressed copies made on the fly (they are made again when
    /// next wanted); returns the bytes freed. Siblings stay.
    fn forget_compressed(&mut self) -> u64 {
        if self.compressed_bytes == 0 {
            return 0;
        }
        for slot in [&mut self.brotli, &mut self.gzip] {
            if matches!(slot, Coded::Made(_)) {
                *slot = Coded::Pending;
            }
        }
        std::mem::take(&mut self.compressed_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tine_config::TryFile;

    fn cache_for(dir: &std::path::Path, try_files: Vec<TryFile>) -> (Root, FileCache) {
        let mut site = StaticSite::new(dir.to_path_buf());
        site.try_files = try_files;
        let cache = tine_config::Config::default().cache;
        (Root::open(dir).unwrap(), FileCache::new(&cache, &site, &Compression::default()))
    }

    fn brotli() -> AcceptEncoding {
        let mut accept = AcceptEncoding::default();
        accept.add_field(b"br");
        accept
    }

    #[test]
    fn made_up_paths_that_fall_back_share_one_entry_and_one_compressed_copy() {
        let dir = tempfile::tempdir().unwrap();
        let shell: String = (0..2000).map(|i| format!("<div id=\"n{i}\">item {i}</div>\n")).collect();
        std::fs::write(dir.path().join("index.html"), &shell).unwrap();
        let try_files = vec![TryFile::Request { suffix: String::new() }, TryFile::Fixed("index.html".into())];
        let (root, mut cache) = cache_for(dir.path(), try_files);
        let now = Instant::now();
        let accept = brotli();
        for i in 0..500 {
            let path = format!("app/route{i}/deep");
            let selected = cache.select(&root, path.as_bytes(), Some(&accept), now).ok().unwrap();
            assert!(selected.representation.etag.as_bytes().ends_with(b"-br\""));
        }
        assert_eq!(cache.len(), 1);
        let one_copy = cache.compressed_bytes();
        assert!(one_copy > 0 && one_copy < shell.len() as u64 / 4, "{one_copy}");
    }

    #[test]
    fn the_budget_bounds_compressed_copies() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            let text: String = (0..3000).map(|j| format!("line {j} of file {i}\n")).collect();
            std::fs::write(dir.path().join(format!("f{i}.txt")), text).unwrap();
        }
        let mut site = StaticSite::new(dir.path().to_path_buf());
        site.try_files = Vec::new();
        let compression = Compression { memory_bytes: 40_000, ..Compression::default() };
        let root = Root::open(dir.path()).unwrap();
        let mut cache = FileCache::new(&tine_config::Config::default().cache, &site, &compression);
        let accept = brotli();
        for i in 0..20 {
            let path = format!("f{i}.txt");
            let selected = cache.select(&root, path.as_bytes(), Some(&accept), Instant::now()).ok().unwrap();
            assert!(selected.representation.etag.as_bytes().ends_with(b"-br\""), "f{i} compressed");
            assert!(cache.compressed_bytes() <= 40_000, "{}", cache.compressed_bytes());
        }
    }
}
