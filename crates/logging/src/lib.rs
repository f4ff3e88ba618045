//! tine's two logs. The error log is the sink behind the `log` crate for master
//! and workers alike; the access log is one buffered writer per worker. Both
//! append with O_APPEND and write whole lines in one `write`, so processes never
//! interleave inside a line, and both reopen their file on demand so logrotate
//! can move it away (USR1).

#![forbid(unsafe_code)]

mod access;
mod clock;
mod error_log;

pub use access::{AccessEntry, AccessLog};
pub use clock::{iso8601_utc, CivilTime};
pub use error_log::{install, reopen_error_log, ErrorLogTarget};

use std::fs::File;
use std::io;
use std::path::Path;

/// Opens a log file for appending, creating it with mode 0644 if needed;
/// never through a symlink (see [`tine_fs::open_log`]).
pub fn open_append(path: &Path) -> io::Result<File> {
    tine_fs::open_log(path, 0o644)
}
