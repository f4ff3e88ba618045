//! Static routes: a root and how files from it are served (content codings,
//! media types), and the `[compression]` table that bounds on-the-fly
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
}

impl StaticSite {
    /// A root served with the defaults: siblings and compression on.
    pub fn new(root: PathBuf) -> Self {
        StaticSite { root, precompressed: true, compress: true, mime_types: Vec::new(), charset: None }
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
