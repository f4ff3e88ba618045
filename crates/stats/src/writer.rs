//! The read-write side: the master creates (or, after a binary upgrade, adopts) the
//! region, and workers inherit the same shared mapping across fork.

use crate::layout::{
    Header, Offsets, RegionState, ENDIAN_CHECK, HEADER_SIZE, HOST_SIZE, INTERFACE_CAPACITY, LAYOUT_VERSION,
    LISTENER_ENTRY_SIZE, MAGIC, MASTER_SIZE, SLOT_SIZE, UPSTREAM_ENTRY_SIZE, UPSTREAM_NAME_SIZE,
};
use crate::layout::{
    CERTIFICATE_CAPACITY, CERTIFICATE_ENTRY_SIZE, LIMIT_CAPACITY, LIMIT_ENTRY_SIZE, LIMIT_NAME_SIZE,
};
use crate::ownership;
use crate::reader::{validate, ReadError};
use crate::unix_millis;
use crate::view::RegionView;
use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
// create_new is O_CREAT|O_EXCL, which never follows a symlink at the path.
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};

/// Why a region could not be created or adopted.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("stats region {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "stats region {path} belongs to a running tine master (pid {pid}); \
         stop it or choose another --stats-path"
    )]
    InUse { path: PathBuf, pid: u64 },
    #[error(
        "stats region {path} is not this server's to use: {why}; remove it or choose another --stats-path"
    )]
    Foreign { path: PathBuf, why: String },
    #[error("stats region {path} cannot be adopted: {source}")]
    Incompatible { path: PathBuf, source: ReadError },
    #[error("a stats region needs at least one slot and at most 4096, not {0}")]
    SlotCount(usize),
    #[error("listen address {0:?} is longer than the region's 63-byte entry")]
    ListenerTooLong(String),
}

/// A read-write mapping of the region, and the open file whose lock says the
/// region is live (see [`crate::ownership`]).
pub struct Region {
    map: MmapMut,
    path: PathBuf,
    file: File,
}

impl Region {
    /// Creates a fresh region at `path` with the given slots and listen addresses.
    /// A leftover region nobody holds is replaced; one a running server holds is
    /// refused, which also stops two servers sharing one path; a file of
    /// another user, or that is not a plain file, is refused.
    pub fn create(path: &Path, slot_count: usize, listeners: &[String]) -> Result<Self, CreateError> {
        Self::create_with_upstreams(path, slot_count, listeners, &[])
    }

    /// As [`Region::create`], with a named entry per upstream server (and room
    /// for twice as many, so a reload can add servers).
    pub fn create_with_upstreams(
        path: &Path,
        slot_count: usize,
        listeners: &[String],
        upstreams: &[String],
    ) -> Result<Self, CreateError> {
        if slot_count == 0 || slot_count > 4096 {
            return Err(CreateError::SlotCount(slot_count));
        }
        if let Some(long) = listeners.iter().find(|l| l.len() >= LISTENER_ENTRY_SIZE) {
            return Err(CreateError::ListenerTooLong(long.clone()));
        }
        let io_err = |source| CreateError::Io { path: path.to_owned(), source };
        refuse_if_live(path)?;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(path)
            .map_err(io_err)?;
        if !ownership::lock(&file).map_err(io_err)? {
            // Another server created and locked it since the check above.
            return Err(CreateError::InUse { path: path.to_owned(), pid: 0 });
        }
        let capacity = (upstreams.len() * 2).max(16);
        let offsets = Offsets::compute(slot_count, listeners.len(), capacity);
        file.set_len(offsets.total as u64).map_err(io_err)?;
        let map = map_rw(&file).map_err(io_err)?;
        let mut region = Region { map, path: path.to_owned(), file };
        region.initialise(slot_count, listeners, offsets, capacity);
        region.set_upstream_names(upstreams);
        Ok(region)
    }

    /// Maps an existing region read-write so that a new master (binary upgrade)
    /// continues its counters. `inherited` is the old master's descriptor of
    /// it, which carries the lock over; without one the region must be free.
    pub fn adopt(path: &Path, inherited: Option<OwnedFd>) -> Result<Self, CreateError> {
        let io_err = |source| CreateError::Io { path: path.to_owned(), source };
        let foreign = |why: String| CreateError::Foreign { path: path.to_owned(), why };
        let file = match inherited {
            Some(fd) => File::from(fd),
            None => {
                let opened = OpenOptions::new().read(true).write(true).open(path).map_err(io_err)?;
                if !ownership::lock(&opened).map_err(io_err)? {
                    return Err(CreateError::InUse { path: path.to_owned(), pid: 0 });
                }
                opened
            }
        };
        let meta = file.metadata().map_err(io_err)?;
        if let Some(why) = ownership::foreign(&meta) {
            return Err(foreign(why));
        }
        let at_path = std::fs::symlink_metadata(path).map_err(io_err)?;
        if (at_path.dev(), at_path.ino()) != (meta.dev(), meta.ino()) {
            return Err(foreign("the file at the path is not the region handed over".into()));
        }
        let map = map_rw(&file).map_err(io_err)?;
        validate(&map).map_err(|source| CreateError::Incompatible { path: path.to_owned(), source })?;
        Ok(Region { map, path: path.to_owned(), file })
    }

    /// The descriptor that holds the region's lock, for a new master to
    /// inherit across a binary upgrade.
    pub fn lock_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn initialise(
        &mut self,
        slot_count: usize,
        listeners: &[String],
        offsets: Offsets,
        upstream_capacity: usize,
    ) {
        let bytes = &mut self.map[..];
        for (i, l) in listeners.iter().enumerate() {
            let at = offsets.listeners + i * LISTENER_ENTRY_SIZE;
            bytes[at..at + l.len()].copy_from_slice(l.as_bytes());
        }
        // SAFETY: the mapping is at least `offsets.total` bytes, page aligned, and
        // Header is repr(C) plain data whose all-zero pattern is valid.
        let header = unsafe { &mut *(bytes.as_mut_ptr() as *mut Header) };
        header.layout_version = LAYOUT_VERSION;
        header.endian_check = ENDIAN_CHECK;
        header.header_size = HEADER_SIZE as u32;
        header.master_size = MASTER_SIZE as u32;
        header.slot_count = slot_count as u32;
        header.slot_size = SLOT_SIZE as u32;
        header.listener_count = listeners.len() as u32;
        header.listener_entry_size = LISTENER_ENTRY_SIZE as u32;
        header.master_offset = offsets.master as u64;
        header.host_offset = offsets.host as u64;
        header.host_size = HOST_SIZE as u32;
        header.interface_capacity = INTERFACE_CAPACITY as u32;
        header.upstreams_offset = offsets.upstreams as u64;
        header.upstream_capacity = upstream_capacity as u32;
        header.upstream_name_size = UPSTREAM_NAME_SIZE as u32;
        header.upstream_entry_size = UPSTREAM_ENTRY_SIZE as u32;
        header.certificates_offset = offsets.certificates as u64;
        header.certificate_capacity = CERTIFICATE_CAPACITY as u32;
        header.certificate_entry_size = CERTIFICATE_ENTRY_SIZE as u32;
        header.limits_offset = offsets.limits as u64;
        header.limit_capacity = LIMIT_CAPACITY as u32;
        header.limit_entry_size = LIMIT_ENTRY_SIZE as u32;
        header.listeners_offset = offsets.listeners as u64;
        header.slots_offset = offsets.slots as u64;
        header.total_size = offsets.total as u64;
        let now = unix_millis();
        header.master_pid.store(std::process::id() as u64, Ordering::Relaxed);
        header.start_unix_ms.store(now, Ordering::Relaxed);
        header.heartbeat_unix_ms.store(now, Ordering::Relaxed);
        header.state.store(RegionState::Running as u64, Ordering::Relaxed);
        for i in 0..slot_count {
            self.slot(i).cpu.store(u64::MAX, Ordering::Relaxed);
        }
        // Readers check the magic first: publish it only after everything else.
        fence(Ordering::Release);
        self.header_mut().magic = MAGIC;
    }

    fn header_mut(&mut self) -> &mut Header {
        // SAFETY: validated or initialised to at least HEADER_SIZE bytes; page aligned.
        unsafe { &mut *(self.map.as_mut_ptr() as *mut Header) }
    }

    /// Names the upstream servers (`group address`), in configuration order;
    /// returns false, naming none, when there are more than the region has
    /// room for (a reload that adds that many needs a restart to count them).
    /// Writes them under the header's sequence lock (odd while writing),
    /// word by word with atomics, so a reader copying them meanwhile sees the
    /// odd value or a changed one and copies again.
    pub fn set_upstream_names(&self, names: &[String]) -> bool {
        let h = self.header();
        if names.len() > h.upstream_capacity as usize {
            return false;
        }
        self.rewrite_under_seq(|| {
            let per_name = h.upstream_name_size as usize / 8;
            let words = self.upstream_name_words(names.len());
            for (name, entry) in names.iter().zip(words.chunks_exact(per_name)) {
                crate::text::store(entry, name);
            }
            h.upstream_count.store(names.len() as u32, Ordering::Relaxed);
        });
        true
    }

    /// Records the certificates served, with their source and ACME state,
    /// under the same sequence lock as the upstream names; false, recording
    /// none, when they do not fit (or the region predates the table).
    pub fn set_certificates(&self, certificates: &[crate::certificates::CertificateExpiry]) -> bool {
        let h = self.header();
        if certificates.len() > h.certificate_capacity as usize {
            return false;
        }
        self.rewrite_under_seq(|| {
            let per_entry = h.certificate_entry_size as usize / 8;
            let words = self.certificate_words(certificates.len());
            for (c, entry) in certificates.iter().zip(words.chunks_exact(per_entry)) {
                crate::certificates::encode(c, entry);
            }
            h.certificate_count.store(certificates.len() as u32, Ordering::Relaxed);
        });
        true
    }

    /// Describes the client limits: entry i names the limit counted under
    /// index i of every slot's limit entries (None: no limit uses it now),
    /// with the keys its table holds. Under the same sequence lock as the
    /// upstream names; false, describing none, when they do not fit (or
    /// the region predates the section).
    pub fn set_limits(&self, limits: &[Option<(String, u64)>]) -> bool {
        let h = self.header();
        if limits.len() > h.limit_capacity as usize {
            return false;
        }
        self.rewrite_under_seq(|| {
            for (i, info) in self.limit_infos().iter().enumerate() {
                let (name, max_keys) = limits.get(i).cloned().flatten().unwrap_or_default();
                crate::text::store(&info[..LIMIT_NAME_SIZE / 8], &name);
                info[LIMIT_NAME_SIZE / 8].store(0, Ordering::Relaxed);
                info[LIMIT_NAME_SIZE / 8 + 1].store(max_keys, Ordering::Relaxed);
            }
            h.limit_count.store(limits.len() as u32, Ordering::Relaxed);
        });
        true
    }

    /// Runs `write` under the header's sequence lock (odd while writing),
    /// so a reader copying what it writes meanwhile sees the odd value or a
    /// changed one and copies again.
    fn rewrite_under_seq(&self, write: impl FnOnce()) {
        let h = self.header();
        let seq = h.upstream_names_seq.load(Ordering::Relaxed);
        h.upstream_names_seq.store(seq.wrapping_add(1) | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        write();
        h.upstream_names_seq.store((seq | 1).wrapping_add(1), Ordering::Release);
    }

    /// The master's sample of a limit's keys in use.
    pub fn set_limit_keys(&self, index: usize, keys: u64) {
        if let Some(info) = self.limit_infos().get(index) {
            info[LIMIT_NAME_SIZE / 8].store(keys, Ordering::Relaxed);
        }
    }

    pub fn set_state(&self, state: RegionState) {
        self.header().state.store(state as u64, Ordering::Relaxed);
    }

    /// Records that this process is now the region's master.
    pub fn claim_master(&self) {
        let h = self.header();
        h.master_pid.store(std::process::id() as u64, Ordering::Relaxed);
        h.state.store(RegionState::Running as u64, Ordering::Relaxed);
        self.heartbeat();
    }

    pub fn heartbeat(&self) {
        self.header().heartbeat_unix_ms.store(unix_millis(), Ordering::Relaxed);
    }
}

impl RegionView for Region {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

fn map_rw(file: &File) -> io::Result<MmapMut> {
    // SAFETY: the file is tine's own region; other processes change it only
    // through atomics, which is how this mapping is read as well.
    unsafe { MmapMut::map_mut(file) }
}

/// Refuses a file at the path that a running server holds, that belongs to
/// another user, or that is not a plain file (a symlink is not followed).
fn refuse_if_live(path: &Path) -> Result<(), CreateError> {
    let io_err = |source| CreateError::Io { path: path.to_owned(), source };
    let foreign = |why: String| CreateError::Foreign { path: path.to_owned(), why };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    if let Some(why) = ownership::foreign(&meta) {
        return Err(foreign(why));
    }
    let file = File::open(path).map_err(io_err)?;
    let opened = file.metadata().map_err(io_err)?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err(foreign("it was replaced while it was checked".into()));
    }
    if ownership::held(&file).map_err(io_err)? {
        let pid = crate::Reader::open(path).map_or(0, |r| r.header().master_pid.load(Ordering::Relaxed));
        return Err(CreateError::InUse { path: path.to_owned(), pid });
    }
    Ok(())
}
