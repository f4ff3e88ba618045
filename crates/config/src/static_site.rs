//! Static routes: a root and how files from it are served (content codings,
//! media types, try_files), redirect routes, custom error pages, and the
//! `[compression]` table that bounds on-the-fly
//! compression for every worker.

use std::path::PathBuf;

/// A static route's document root and its serving options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticSite {
    pub root: PathBuf,
    /// `file.br` / `file.gz` beside `file` are served to clients that take
    /// them (and are no older than `file`).
    pub precompressed: bool,
    /// Compressible files without a sibling are compressed once, on the
    /// first request that takes a coding, and kept in the file cache.
    pub compress: bool,
    /// Content-Type by file extension (lower case, without the dot), over
    /// the built-in table.
    pub mime_types: Vec<(String, String)>,
    /// Added as `; charset=...` to text types that name none.
    pub charset: Option<String>,
    /// Where a request looks for its file, in order; empty: the path itself
    /// (a directory's index.html, with a redirect to add the slash).
    pub try_files: Vec<TryFile>,
}

/// One `try_files` entry: a regular file to serve if it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TryFile {
    /// `$uri` then `suffix` (`$uri`, `$uri/index.html`, `$uri.html`).
    Request { suffix: String },
    /// A fixed path under the root (`/index.html` for a single-page app).
    Fixed(String),
}

impl TryFile {
    /// `$uri[suffix]` or `/path`; no `..` segment, no NUL.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("try_files entry {entry:?} {why}"));
        if entry.contains('\0') || entry.split('/').any(|s| s == "..") {
            return bad("must not contain .. or NUL");
        }
        if let Some(suffix) = entry.strip_prefix("$uri") {
            if suffix.contains('$') {
                return bad("may use $uri once, at its start");
            }
            return Ok(TryFile::Request { suffix: suffix.to_string() });
        }
        match entry.strip_prefix('/') {
            Some(path) if !entry.contains('$') => Ok(TryFile::Fixed(path.to_string())),
            _ => bad("must start with $uri or /"),
        }
    }
}

/// A route that answers every request with a redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// A URL, or with `keep_path` the prefix that replaces the route's path.
    pub to: String,
    /// `redirect_prefix`: the rest of the path after the route's prefix and
    /// the query are kept.
    pub keep_path: bool,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A custom error page, read when the configuration loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorPage {
    /// As configured (`/404.html`): its extension gives the Content-Type.
    pub path: String,
    pub body: Vec<u8>,
}

impl StaticSite {
    /// A root served with the defaults: siblings and compression on.
    pub fn new(root: PathBuf) -> Self {
        StaticSite {
            root,
            precompressed: true,
            compress: true,
            mime_types: Vec::new(),
            charset: None,
            try_files: Vec::new(),
        }
    }
}

/// `[compression]`: what workers compress on the fly, and how hard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    /// Smaller files are sent as they are: the coding's framing would eat
    /// the gain.
    pub min_bytes: u64,
    /// Larger files are compressed only if a precompressed sibling exists:
    /// encoding runs on the event loop, and this bounds how long it takes.
    pub max_bytes: u64,
    /// Each worker's budget for compressed copies; past it, older copies
    /// are dropped to make room.
    pub memory_bytes: u64,
    /// Brotli quality (0..=11).
    pub brotli_level: u32,
    /// Gzip level (1..=9).
    pub gzip_level: u32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            min_bytes: 256,
            max_bytes: 1024 * 1024,
            memory_bytes: 64 * 1024 * 1024,
            brotli_level: 5,
            gzip_level: 6,
        }
    }
}
