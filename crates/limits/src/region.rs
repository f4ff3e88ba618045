//! The limits region: one file on tmpfs beside the statistics region, made by
//! the master and mapped by every worker it forks, holding one [`Table`] per
//! `[[client_limit]]`. docs/limits-abi.md describes the layout.
//!
//! ```text
//! offset 0                   RegionHeader (64 bytes)
//! header.directory_offset    table_count x 64-byte TableEntry (name, offset, buckets)
//! entry.offset               entry.buckets x 256-byte Bucket
//! ```

use crate::key::KeyHasher;
use crate::table::{Bucket, Table, BUCKET_SIZE, WAYS};
use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// First eight bytes of the region.
pub const MAGIC: [u8; 8] = *b"TINELIMT";
pub const LAYOUT_VERSION: u32 = 1;
const ENDIAN_CHECK: u32 = 0x0102_0304;
/// Bytes of a table's name in the directory, NUL-padded.
pub const NAME_SIZE: usize = 48;
/// Keys a table holds at most (its buckets are a power of two).
pub const MAX_KEYS: usize = 1 << 24;

#[repr(C)]
struct RegionHeader {
    magic: [u8; 8],
    layout_version: u32,
    endian_check: u32,
    header_size: u32,
    table_count: u32,
    ways: u32,
    bucket_size: u32,
    directory_offset: u64,
    hash_k0: u64,
    hash_k1: u64,
    created_unix_ms: u64,
}

#[repr(C)]
struct TableEntry {
    name: [u8; NAME_SIZE],
    offset: u64,
    buckets: u64,
}

const HEADER_SIZE: usize = std::mem::size_of::<RegionHeader>();
const ENTRY_SIZE: usize = std::mem::size_of::<TableEntry>();
const _: () = assert!(HEADER_SIZE == 64 && ENTRY_SIZE == 64);

/// One table to make: a limit's name and the keys it must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub name: String,
    pub max_keys: usize,
}

impl TableSpec {
    fn buckets(&self) -> usize {
        self.max_keys.clamp(1, MAX_KEYS).div_ceil(WAYS).next_power_of_two()
    }
}

/// Why the region could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("limits region {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("limits region {path} is not this server's to replace: {why}")]
    Foreign { path: PathBuf, why: String },
    #[error("no random bytes for the limits region's hash key: {0}")]
    Random(String),
}

struct Placed {
    name: String,
    offset: usize,
    buckets: usize,
}

/// A read-write mapping of the region.
pub struct LimitsRegion {
    map: MmapMut,
    path: PathBuf,
    hasher: KeyHasher,
    tables: Vec<Placed>,
}

impl LimitsRegion {
    /// Makes a region at `path` (replacing what a previous server left
    /// there) with a table per spec. A table of `previous` with the same
    /// name and size starts with its keys' state, and the hash key carries
    /// over so those keys are found again.
    pub fn create(
        path: &Path,
        specs: &[TableSpec],
        previous: Option<&LimitsRegion>,
    ) -> Result<Self, LimitsError> {
        let io_err = |source| LimitsError::Io { path: path.to_owned(), source };
        remove_leftover(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        let mut tables = Vec::with_capacity(specs.len());
        let mut at = round_up(HEADER_SIZE + specs.len() * ENTRY_SIZE, 4096);
        for spec in specs {
            let buckets = spec.buckets();
            tables.push(Placed { name: spec.name.clone(), offset: at, buckets });
            at = round_up(at + buckets * BUCKET_SIZE, 4096);
        }
        file.set_len(at as u64).map_err(io_err)?;
        // SAFETY: a file this process just created with O_EXCL and mode 0600;
        // other processes (its workers) touch the tables only through atomics.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io_err)?;
        let hasher = match previous {
            Some(p) => p.hasher,
            None => fresh_hasher()?,
        };
        let mut region = LimitsRegion { map, path: path.to_owned(), hasher, tables };
        region.write_header();
        if let Some(previous) = previous {
            for (i, placed) in region.tables.iter().enumerate() {
                let Some(j) = previous.position(&placed.name) else { continue };
                if previous.tables[j].buckets == placed.buckets {
                    if let (Some(to), Some(from)) = (region.table(i), previous.table(j)) {
                        to.copy_from(&from);
                    }
                }
            }
        }
        Ok(region)
    }

    /// True when the region already has exactly these tables (a reload that
    /// changed no limit's name or size keeps it as it is).
    pub fn fits(&self, specs: &[TableSpec]) -> bool {
        self.tables.len() == specs.len()
            && self.tables.iter().zip(specs).all(|(t, s)| t.name == s.name && t.buckets == s.buckets())
    }

    /// The table of the limit at this index of the specs.
    pub fn table(&self, index: usize) -> Option<Table<'_>> {
        let placed = self.tables.get(index)?;
        let bytes = self.map.get(placed.offset..placed.offset + placed.buckets * BUCKET_SIZE)?;
        // SAFETY: in bounds (checked above), aligned (offsets are multiples
        // of 4096 in a page-aligned mapping), and Bucket is atomics and
        // padding, valid as any bytes; every process accesses it atomically.
        let buckets = unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const Bucket, placed.buckets) };
        Some(Table::new(buckets))
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name == name)
    }

    pub fn hasher(&self) -> KeyHasher {
        self.hasher
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_header(&mut self) {
        let (k0, k1) = self.hasher.parts();
        let header = RegionHeader {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            endian_check: ENDIAN_CHECK,
            header_size: HEADER_SIZE as u32,
            table_count: self.tables.len() as u32,
            ways: WAYS as u32,
            bucket_size: BUCKET_SIZE as u32,
            directory_offset: HEADER_SIZE as u64,
            hash_k0: k0,
            hash_k1: k1,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        // SAFETY: the mapping is at least a page long and page aligned, and
        // nothing else has it yet: the header is written before any fork.
        unsafe { std::ptr::write(self.map.as_mut_ptr() as *mut RegionHeader, header) };
        for (i, placed) in self.tables.iter().enumerate() {
            let mut name = [0u8; NAME_SIZE];
            let text = &placed.name.as_bytes()[..placed.name.len().min(NAME_SIZE - 1)];
            name[..text.len()].copy_from_slice(text);
            let entry = TableEntry { name, offset: placed.offset as u64, buckets: placed.buckets as u64 };
            // SAFETY: the directory lies within the first page (checked by
            // the round_up above), at a 64-byte multiple; as for the header.
            unsafe {
                std::ptr::write(
                    self.map.as_mut_ptr().add(HEADER_SIZE + i * ENTRY_SIZE) as *mut TableEntry,
                    entry,
                )
            };
        }
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

fn fresh_hasher() -> Result<KeyHasher, LimitsError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| LimitsError::Random(e.to_string()))?;
    let (a, b) = bytes.split_at(8);
    let word = |s: &[u8]| u64::from_ne_bytes(s.try_into().unwrap_or_default());
    Ok(KeyHasher::new(word(a), word(b)))
}

/// Removes a region a previous server left at `path`; refuses a symlink,
/// something that is not a plain file, or another user's file.
fn remove_leftover(path: &Path) -> Result<(), LimitsError> {
    let foreign = |why: String| LimitsError::Foreign { path: path.to_owned(), why };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(LimitsError::Io { path: path.to_owned(), source }),
    };
    if meta.file_type().is_symlink() || !meta.is_file() {
        return Err(foreign("it is not a regular file".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(foreign(format!("it is owned by uid {}, not by this user (uid {me})", meta.uid())));
    }
    std::fs::remove_file(path).map_err(|source| LimitsError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Rate;
    use std::os::unix::fs::PermissionsExt;

    fn spec(name: &str, max_keys: usize) -> TableSpec {
        TableSpec { name: name.into(), max_keys }
    }

    #[test]
    fn created_private_and_state_carried_to_a_new_region() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tine.limits");
        let first = LimitsRegion::create(&path, &[spec("login", 100), spec("api", 1000)], None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(first.table(0).unwrap().capacity(), 128);
        let rate = Rate { interval_us: 1_000_000, burst: 0, delay: false };
        let key = first.hasher().value(b"k");
        let now = 5_000_000;
        assert_eq!(first.table(1).unwrap().check_rate(key, &rate, now).outcome, crate::Verdict::Allow);
        assert!(first.fits(&[spec("login", 100), spec("api", 1000)]));
        assert!(!first.fits(&[spec("api", 1000)]));

        let second =
            LimitsRegion::create(&path, &[spec("api", 1000), spec("new", 10)], Some(&first)).unwrap();
        let key_again = second.hasher().value(b"k");
        assert_eq!(key, key_again);
        let table = second.table(second.position("api").unwrap()).unwrap();
        assert!(matches!(table.check_rate(key, &rate, now).outcome, crate::Verdict::Refuse { .. }));
        assert_eq!(&std::fs::read(&path).unwrap()[..8], b"TINELIMT");
    }

    #[test]
    fn a_symlink_at_the_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tine.limits");
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(matches!(
            LimitsRegion::create(&path, &[spec("a", 8)], None),
            Err(LimitsError::Foreign { .. })
        ));
    }
}
