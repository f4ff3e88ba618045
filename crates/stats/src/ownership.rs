//! Who a region file belongs to. A region is live while a server holds an
//! exclusive lock on it (flock(2), through std's `File::try_lock`): the lock
//! belongs to the open file, so it lasts exactly as long as some descriptor
//! of that opening is open (the master's, its workers', a new master's after
//! a binary upgrade) and vanishes when they all exit, however they exit. A pid
//! written in the file proves nothing: any user can write any pid into a file
//! of their own. A region is created mode 0640, so only the server's user and
//! group can open it to lock it at all.

use std::fs::{File, Metadata, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;

/// Takes the lock that marks a live region. `Ok(false)`: another open file
/// holds a lock on it.
pub fn lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Whether a running server holds the region's lock. The probe takes a
/// shared lock for a moment on `file` (its own opening), which a holder of
/// the exclusive lock refuses.
pub fn held(file: &File) -> io::Result<bool> {
    match file.try_lock_shared() {
        Ok(()) => {
            file.unlock()?;
            Ok(false)
        }
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The effective user of this process.
pub fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Why a file at a region's path cannot be taken as one of ours; `meta` is
/// read without following a symlink.
pub fn foreign(meta: &Metadata) -> Option<String> {
    if meta.file_type().is_symlink() {
        return Some("it is a symbolic link".into());
    }
    if !meta.is_file() {
        return Some("it is not a regular file".into());
    }
    let me = current_uid();
    (meta.uid() != me).then(|| format!("it is owned by uid {}, not by this user (uid {me})", meta.uid()))
}
