//! The pid file: written once the master is ready, refused when it names a live
//! process, removed when the master exits.

use crate::MasterError;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Refuses to go on if the file names a live process, so a second
    /// `tine serve` with the same pid file does not clobber a running server.
    pub fn check_free(path: &Path) -> Result<(), MasterError> {
        match read_pid(path) {
            Some(pid) if pid as u32 != std::process::id() && tine_stats::pid_alive(pid as u64) => {
                Err(MasterError::AlreadyRunning { path: path.to_owned(), pid })
            }
            _ => Ok(()),
        }
    }

    /// Writes this process's pid atomically (temporary file, then rename).
    pub fn write(path: &Path) -> Result<Self, MasterError> {
        Self::check_free(path)?;
        let err = |source| MasterError::PidFile { path: path.to_owned(), source };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        writeln!(f, "{}", std::process::id()).map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(PidFile { path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if it still names this process.
    pub fn remove(&self) {
        if read_pid(&self.path) == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for PidFile {
    /// A master that fails after writing its pid file leaves none behind. (A
    /// worker never runs this: it exits without unwinding the master's frames.)
    fn drop(&mut self) {
        self.remove();
    }
}

/// The pid a pid file names, if it exists and holds one.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|&p: &i32| p > 0)
}
