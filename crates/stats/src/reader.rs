//! The read-only side: maps a region with PROT_READ (so no reader can corrupt a
//! counter) and refuses anything that is not a complete region of a layout it knows.

use crate::layout::{
    Header, ENDIAN_CHECK, HEADER_SIZE, HOST_SIZE, INTERFACE_ENTRY_SIZE, LAYOUT_VERSION, LISTENER_ENTRY_SIZE,
    MAGIC, MASTER_SIZE, SLOT_SIZE,
};
use crate::view::RegionView;
use memmap2::Mmap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub use crate::view::{Liveness, STALE_AFTER_MS};

/// Why a region cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no stats region at {path}: is tine running, and with this --stats-path?")]
    Missing { path: PathBuf },
    #[error("cannot open stats region {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("not a tine stats region (bad magic or too short; {0} bytes)")]
    NotARegion(usize),
    #[error("stats region has layout version {found}; this tine reads version {LAYOUT_VERSION}")]
    Version { found: u32 },
    #[error("stats region was written on a machine of the other byte order")]
    Endianness,
    #[error("stats region is inconsistent: {0}")]
    Corrupt(&'static str),
}

/// A read-only mapping of a validated region.
pub struct Reader {
    map: Mmap,
    path: PathBuf,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ReadError::Missing { path: path.to_owned() },
            _ => ReadError::Io { path: path.to_owned(), source },
        })?;
        // SAFETY: a read-only shared mapping; the writers change it only through
        // atomics, and every read of a changing field here is an atomic load.
        let map =
            unsafe { Mmap::map(&file) }.map_err(|source| ReadError::Io { path: path.to_owned(), source })?;
        validate(&map)?;
        Ok(Reader { map, path: path.to_owned() })
    }
}

impl RegionView for Reader {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Checks that `bytes` hold a complete region of the layout this crate knows.
pub(crate) fn validate(bytes: &[u8]) -> Result<(), ReadError> {
    if bytes.len() < HEADER_SIZE || bytes[..8] != MAGIC {
        return Err(ReadError::NotARegion(bytes.len()));
    }
    // SAFETY: at least HEADER_SIZE bytes, and the mapping is page aligned.
    let h = unsafe { &*(bytes.as_ptr() as *const Header) };
    if h.endian_check != ENDIAN_CHECK {
        return Err(if h.endian_check == ENDIAN_CHECK.swap_bytes() {
            ReadError::Endianness
        } else {
            ReadError::Corrupt("endianness marker")
        });
    }
    if h.layout_version != LAYOUT_VERSION {
        return Err(ReadError::Version { found: h.layout_version });
    }
    // A newer writer may append fields; never read past what it declares, and
    // never accept sections smaller than what this reader knows.
    if (h.header_size as usize) < HEADER_SIZE
        || (h.master_size as usize) < MASTER_SIZE
        || (h.slot_size as usize) < SLOT_SIZE
        || h.slot_size % 64 != 0
    {
        return Err(ReadError::Corrupt("section sizes"));
    }
    if (h.host_size as usize) < HOST_SIZE
        || (h.host_size as usize)
            < std::mem::size_of::<crate::layout::HostSection>()
                + h.interface_capacity as usize * INTERFACE_ENTRY_SIZE
    {
        return Err(ReadError::Corrupt("host section size"));
    }
    if h.upstream_entry_size as usize != crate::layout::UPSTREAM_ENTRY_SIZE
        || (h.upstream_name_size as usize) < 16
        || !h.upstream_name_size.is_multiple_of(8)
        || h.upstream_count.load(std::sync::atomic::Ordering::Relaxed) > h.upstream_capacity
        || h.upstreams_offset % 64 != 0
    {
        return Err(ReadError::Corrupt("upstream section"));
    }
    let upstream_bytes = (h.upstream_capacity as u64).saturating_mul(
        h.upstream_name_size as u64 + (h.slot_count as u64).saturating_mul(h.upstream_entry_size as u64),
    );
    if h.upstreams_offset.checked_add(upstream_bytes).is_none_or(|end| end > bytes.len() as u64) {
        return Err(ReadError::Corrupt("upstream section offsets"));
    }
    if h.certificates_offset != 0 {
        let table = (h.certificate_capacity as u64).saturating_mul(h.certificate_entry_size as u64);
        if h.certificates_offset % 64 != 0
            || h.certificate_entry_size < 16
            || !h.certificate_entry_size.is_multiple_of(8)
            || h.certificate_count.load(std::sync::atomic::Ordering::Relaxed) > h.certificate_capacity
            || h.certificates_offset.checked_add(table).is_none_or(|end| end > bytes.len() as u64)
        {
            return Err(ReadError::Corrupt("certificate table"));
        }
    }
    if h.limits_offset != 0 {
        let section = (h.limit_capacity as u64).saturating_mul(
            crate::layout::LIMIT_INFO_SIZE as u64
                + (h.slot_count as u64).saturating_mul(h.limit_entry_size as u64),
        );
        if h.limits_offset % 64 != 0
            || h.limit_entry_size as usize != crate::layout::LIMIT_ENTRY_SIZE
            || h.limit_count.load(std::sync::atomic::Ordering::Relaxed) > h.limit_capacity
            || h.limits_offset.checked_add(section).is_none_or(|end| end > bytes.len() as u64)
        {
            return Err(ReadError::Corrupt("client limit section"));
        }
    }
    if (h.listener_entry_size as usize) < LISTENER_ENTRY_SIZE {
        return Err(ReadError::Corrupt("listener entry size"));
    }
    let len = bytes.len() as u64;
    let within = |offset: u64, size: u64| offset.checked_add(size).is_some_and(|end| end <= len);
    let slots_bytes = (h.slot_count as u64).saturating_mul(h.slot_size as u64);
    let listener_bytes = (h.listener_count as u64).saturating_mul(h.listener_entry_size as u64);
    if h.total_size > len
        || h.master_offset % 64 != 0
        || h.slots_offset % 64 != 0
        || h.host_offset % 64 != 0
        || !within(h.master_offset, h.master_size as u64)
        || !within(h.host_offset, h.host_size as u64)
        || !within(h.listeners_offset, listener_bytes)
        || !within(h.slots_offset, slots_bytes)
    {
        return Err(ReadError::Corrupt("section offsets"));
    }
    Ok(())
}
