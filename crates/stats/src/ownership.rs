//! Who a region file belongs to. A region is live while a master holds a
//! write lock on it: an open-file-description lock (fcntl F_OFD_SETLK), which
//! only a process that opened the file for writing can take, lasts exactly as
//! long as some descriptor of that opening is open (the master's, its
//! workers', a new master's after a binary upgrade), and vanishes when they
//! all exit, however they exit. A pid written in the file proves nothing (any
//! user can write any pid into a file of their own), and a read-only reader
//! cannot take the lock, so neither a squatter nor an ops tool can make a
//! region look live.

use nix::fcntl::{fcntl, FcntlArg};
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;

fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: libc::flock is plain data; all-zero is a valid value of it.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

/// Takes the write lock that marks a live region. `Ok(false)`: another
/// process holds a lock on it.
pub fn lock(file: &File) -> io::Result<bool> {
    match fcntl(file, FcntlArg::F_OFD_SETLK(&whole_file(libc::F_WRLCK))) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether some process holds the write lock of a live region. Works on a
/// read-only descriptor, and a reader's own read lock never counts.
pub fn held(file: &File) -> io::Result<bool> {
    let mut probe = whole_file(libc::F_RDLCK);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe))?;
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

/// The effective user of this process.
pub fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Why a file at a region's path cannot be taken as one of ours.
pub fn foreign(meta: &Metadata) -> Option<String> {
    if !meta.is_file() {
        return Some("it is not a regular file".into());
    }
    let me = current_uid();
    (meta.uid() != me).then(|| format!("it is owned by uid {}, not by this user (uid {me})", meta.uid()))
}
