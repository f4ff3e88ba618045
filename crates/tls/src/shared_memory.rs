//! A memfd mapped shared, the way the master shares state with its children
//! and nobody else (no file, no name in the file system): made before the
//! fork, or handed over by descriptor across exec.

use memmap2::{MmapOptions, MmapRaw};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// A new zeroed memfd of `len` bytes, mapped.
pub(crate) fn create(name: &CStr, len: usize) -> io::Result<(OwnedFd, MmapRaw)> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(io::Error::from)?;
    nix::unistd::ftruncate(&fd, len as i64).map_err(io::Error::from)?;
    map(fd, len)
}

/// Maps a memfd handed over by descriptor, which must hold `len` bytes
/// (`what` names it in the error).
pub(crate) fn adopt(fd: OwnedFd, len: usize, what: &str) -> io::Result<(OwnedFd, MmapRaw)> {
    let size = std::fs::File::from(fd.try_clone()?).metadata()?.len();
    if size < len as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the inherited {what} is too small")));
    }
    map(fd, len)
}

fn map(fd: OwnedFd, len: usize) -> io::Result<(OwnedFd, MmapRaw)> {
    let map = MmapOptions::new().len(len).map_raw(fd.as_fd().as_raw_fd())?;
    Ok((fd, map))
}
