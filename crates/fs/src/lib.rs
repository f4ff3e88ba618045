//! Files tine opens on an operator's behalf, one way for each kind:
//!
//! - beneath a document root ([`Root`]): what workers serve and what the
//!   master reads from a served directory (custom error pages). openat2 with
//!   RESOLVE_BENEATH, so neither `..` nor a symlink leads out of the root;
//!   where a kernel or sandbox refuses openat2, the opened file's real path
//!   is checked instead;
//! - by a path from the configuration ([`read_regular`]): the configuration
//!   file, certificates and keys, read by the master as root;
//! - logs ([`open_log`]): appended to, never through a symlink.
//!
//! Every file is opened read-only with O_NONBLOCK (a FIFO does not block the
//! opener), and one that is read into memory must be a regular file no larger
//! than a bound (`/dev/zero` is not read until memory runs out).

#![forbid(unsafe_code)]

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Flags of every file tine opens to read: read-only, not blocking on a
/// FIFO or device, never a controlling terminal.
const READ_FLAGS: OFlag =
    OFlag::O_RDONLY.union(OFlag::O_CLOEXEC).union(OFlag::O_NONBLOCK).union(OFlag::O_NOCTTY);

/// Why a file tine reads for the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("is not a regular file (a {0})")]
    NotRegular(&'static str),
    #[error("is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("leads out of the root {0} (a symlink or `..`)")]
    Escapes(PathBuf),
}

/// A directory files are opened beneath, never outside.
pub struct Root {
    dir: OwnedFd,
    canonical: PathBuf,
    openat2: bool,
}

impl Root {
    /// Opens `path` (a directory) as the root.
    pub fn open(path: &Path) -> io::Result<Self> {
        let canonical = std::fs::canonicalize(path)?;
        let dir = nix::fcntl::open(
            canonical.as_os_str().as_bytes(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut root = Root { dir, canonical, openat2: true };
        // Probe once; a seccomp filter may refuse openat2 even on a new kernel.
        if let Err(e) = root.openat2(b".") {
            if matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::ENOSYS | Errno::EPERM)) {
                log::warn!("openat2 unavailable ({e}); checking real paths instead");
                root.openat2 = false;
            }
        }
        Ok(root)
    }

    /// The root's real path.
    pub fn path(&self) -> &Path {
        &self.canonical
    }

    /// Opens `relative` (no leading slash; empty names the root itself)
    /// read-only beneath the root. A path that leaves the root fails with
    /// EXDEV (openat2) or EXDEV after the real-path check; a magic link with
    /// ELOOP. Allocates nothing for paths under 1 KiB.
    pub fn open_beneath(&self, relative: &[u8]) -> io::Result<File> {
        let relative = if relative.is_empty() { &b"."[..] } else { relative };
        let fd = if self.openat2 { self.openat2(relative)? } else { self.openat_checked(relative)? };
        Ok(File::from(fd))
    }

    /// Reads the regular file `relative` beneath the root, at most `limit`
    /// bytes long.
    pub fn read_regular(&self, relative: &[u8], limit: u64) -> Result<Vec<u8>, FileError> {
        let file = self.open_beneath(relative).map_err(|e| match e.raw_os_error().map(Errno::from_raw) {
            Some(Errno::EXDEV | Errno::ELOOP) => FileError::Escapes(self.canonical.clone()),
            _ => FileError::Io(e),
        })?;
        read_bounded(file, limit)
    }

    fn openat2(&self, relative: &[u8]) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(READ_FLAGS)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        Ok(nix::fcntl::openat2(&self.dir, relative, how)?)
    }

    fn openat_checked(&self, relative: &[u8]) -> io::Result<OwnedFd> {
        let owned = nix::fcntl::openat(&self.dir, relative, READ_FLAGS, Mode::empty())?;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", owned.as_raw_fd()))?;
        if real != self.canonical && !real.starts_with(&self.canonical) {
            return Err(io::Error::from(Errno::EXDEV));
        }
        Ok(owned)
    }
}

/// Opens a log for appending, creating it with `mode` if missing. The last
/// component is never a symlink followed (a user who can write the log's
/// directory could otherwise point the root master at any file), nor
/// anything but a regular file (a FIFO does not block the open: it fails).
/// The exceptions are the process's own streams (`/dev/stdout`,
/// `/dev/stderr`, `/dev/fd/N`, `/proc/self/fd/N`), which name no file
/// another user could have planted.
pub fn open_log(path: &Path, mode: u32) -> io::Result<File> {
    let append = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let mode = Mode::from_bits_truncate(mode);
    if is_own_stream(path) {
        return Ok(File::from(nix::fcntl::open(path, append, mode)?));
    }
    let fd = nix::fcntl::open(path, append | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK, mode).map_err(|e| {
        if e == Errno::ELOOP {
            io::Error::other("is a symlink, which tine does not follow for a log")
        } else {
            io::Error::from(e)
        }
    })?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("is not a regular file (a {})", kind_of(&meta))));
    }
    // Appends to a regular file never block; keep writes plainly blocking.
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_APPEND))?;
    Ok(file)
}

/// The process's own standard streams, by the names they go by.
fn is_own_stream(path: &Path) -> bool {
    let text = path.as_os_str().as_bytes();
    let numbered = |prefix: &[u8]| {
        text.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
    };
    matches!(text, b"/dev/stdout" | b"/dev/stderr") || numbered(b"/dev/fd/") || numbered(b"/proc/self/fd/")
}

/// Reads the regular file at `path`, at most `limit` bytes long: opened
/// without blocking, refused unless it is a regular file.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let fd = nix::fcntl::open(path, READ_FLAGS, Mode::empty()).map_err(io::Error::from)?;
    read_bounded(File::from(fd), limit)
}

/// Reads an opened file that must be regular and at most `limit` bytes; a
/// file that grows while it is read is still cut at the bound.
fn read_bounded(file: File, limit: u64) -> Result<Vec<u8>, FileError> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(kind_of(&meta)));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    Ok(bytes)
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlink_out_of_the_root_is_refused_and_one_inside_is_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("page.html"), b"page").unwrap();
        symlink(outside.path().join("secret"), dir.path().join("escape.html")).unwrap();
        symlink(
            "../".to_string() + &outside.path().file_name().unwrap().to_string_lossy() + "/secret",
            dir.path().join("relative.html"),
        )
        .unwrap();
        symlink("page.html", dir.path().join("alias.html")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        assert_eq!(root.read_regular(b"page.html", 100).unwrap(), b"page");
        assert_eq!(root.read_regular(b"alias.html", 100).unwrap(), b"page");
        assert!(matches!(root.read_regular(b"escape.html", 100), Err(FileError::Escapes(_))));
        assert!(matches!(root.read_regular(b"relative.html", 100), Err(FileError::Escapes(_))));
        assert!(matches!(root.read_regular(b"../x", 100), Err(FileError::Escapes(_))));
    }

    #[test]
    fn a_log_is_never_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("root-only");
        std::fs::write(&target, b"keep").unwrap();
        symlink(&target, dir.path().join("access.log")).unwrap();
        let e = open_log(&dir.path().join("access.log"), 0o640).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        nix::unistd::mkfifo(&dir.path().join("fifo.log"), Mode::S_IRWXU).unwrap();
        assert!(open_log(&dir.path().join("fifo.log"), 0o640).is_err());
        let mut log = open_log(&dir.path().join("new.log"), 0o640).unwrap();
        std::io::Write::write_all(&mut log, b"line\n").unwrap();
        assert_eq!(std::fs::read(dir.path().join("new.log")).unwrap(), b"line\n");
        assert!(open_log(Path::new("/dev/stderr"), 0o640).is_ok());
        assert!(is_own_stream(Path::new("/proc/self/fd/1")));
        assert!(!is_own_stream(Path::new("/dev/shm/x")));
    }

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; 101]).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), Mode::S_IRWXU).unwrap();
        assert!(matches!(
            read_regular(&dir.path().join("big"), 100),
            Err(FileError::TooLarge { limit: 100 })
        ));
        assert_eq!(read_regular(&dir.path().join("big"), 101).unwrap().len(), 101);
        // Opening a FIFO nobody writes returns at once (O_NONBLOCK) and is refused.
        assert!(matches!(read_regular(&dir.path().join("fifo"), 100), Err(FileError::NotRegular("FIFO"))));
        assert!(matches!(read_regular(Path::new("/dev/zero"), 100), Err(FileError::NotRegular(_))));
        assert!(matches!(read_regular(dir.path(), 100), Err(FileError::NotRegular("directory"))));
        let root = Root::open(dir.path()).unwrap();
        assert!(matches!(root.read_regular(b"fifo", 100), Err(FileError::NotRegular("FIFO"))));
    }
}
