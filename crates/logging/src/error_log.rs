//! The error log: every `log::` record of master and workers, one line each,
//! `2026-11-22T03:17:32Z [warn] tine[4711]: message`, to stderr or a file.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;

/// Where error-log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorLogTarget {
    Stderr,
    File(PathBuf),
}

struct Sink {
    target: ErrorLogTarget,
    file: Option<File>,
}

// Processes are single-threaded, so the lock is never contended and never
// held across a fork.
static SINK: Mutex<Sink> = Mutex::new(Sink { target: ErrorLogTarget::Stderr, file: None });

struct ErrorLog;

impl Log for ErrorLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= Level::Info
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{} [{}] tine[{}]: {}\n",
            crate::iso8601_utc(),
            record.level().as_str().to_ascii_lowercase(),
            std::process::id(),
            record.args()
        );
        let sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
        let written = match &sink.file {
            Some(f) => (&*f).write_all(line.as_bytes()),
            None => Err(io::ErrorKind::NotFound.into()),
        };
        if written.is_err() {
            let _ = io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the error log as the `log` crate's sink (once per process; later
/// calls only change the target).
pub fn install(target: ErrorLogTarget) -> io::Result<()> {
    {
        let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
        sink.file = open(&target)?;
        sink.target = target;
    }
    if log::set_logger(&ErrorLog).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
    Ok(())
}

/// Opens the error log file again (after logrotate moved it). On failure the
/// old file stays in use and the error is returned.
pub fn reopen_error_log() -> io::Result<()> {
    let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    let file = open(&sink.target)?;
    sink.file = file;
    Ok(())
}

fn open(target: &ErrorLogTarget) -> io::Result<Option<File>> {
    match target {
        ErrorLogTarget::Stderr => Ok(None),
        ErrorLogTarget::File(path) => crate::open_append(path)
            .map(Some)
            .map_err(|e| io::Error::new(e.kind(), format!("error log {}: {e}", path.display()))),
    }
}
