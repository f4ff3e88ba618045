//! The session-ticket key ring. rustls's own ticketer keeps its keys in the
//! process that made them, and each forked worker would rotate to keys of its
//! own: with SO_REUSEPORT sending a returning client to any worker, a ticket
//! would resume about one time in N. Here the master owns the keys, in a
//! memfd mapped shared with its workers only (never the readable stats region,
//! never a file), and rotates them on a schedule: the current key encrypts new
//! tickets, the previous one still decrypts for one more period, and the one
//! before is overwritten. A binary upgrade hands the memfd to the new master.
//!
//! Tickets are `key name (16) | nonce (12) | AES-256-GCM(state) | tag (16)`,
//! with the key name as associated data.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use memmap2::MmapRaw;
use rustls::server::ProducesTickets;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{fence, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const SLOT_WORDS: usize = (NAME_LEN + KEY_LEN) / 8;
const MAP_LEN: usize = 4096;

/// The shared page. Every field is atomic, so that a worker reading while
/// the master rotates sees a torn copy at worst, which the sequence number
/// (odd while a rotation is under way) makes it read again.
#[repr(C)]
struct Shared {
    seq: AtomicU64,
    rotated_unix_secs: AtomicU64,
    /// `[0]` encrypts and decrypts; `[1]` only decrypts. An all-zero name
    /// marks an empty slot.
    slots: [[AtomicU64; SLOT_WORDS]; 2],
}

const _: () = assert!(std::mem::size_of::<Shared>() <= MAP_LEN);

#[derive(Clone, Copy)]
struct Key {
    name: [u8; NAME_LEN],
    secret: [u8; KEY_LEN],
}

impl Key {
    fn is_empty(&self) -> bool {
        self.name == [0; NAME_LEN]
    }

    fn aead(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, &self.secret).ok().map(LessSafeKey::new)
    }
}

/// The master's handle on the ring (workers inherit it across fork).
pub struct TicketKeyRing {
    map: Arc<MmapRaw>,
    fd: OwnedFd,
}

impl TicketKeyRing {
    /// A new ring with a fresh current key.
    pub fn create() -> io::Result<Self> {
        let (fd, map) = crate::shared_memory::create(c"tine-ticket-keys", MAP_LEN)?;
        let ring = TicketKeyRing { map: Arc::new(map), fd };
        ring.rotate()?;
        Ok(ring)
    }

    /// The ring an old master handed over on a binary upgrade.
    pub fn adopt(fd: OwnedFd) -> io::Result<Self> {
        let (fd, map) = crate::shared_memory::adopt(fd, MAP_LEN, "ticket key ring")?;
        Ok(TicketKeyRing { map: Arc::new(map), fd })
    }

    /// The descriptor a binary upgrade passes on.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A new current key; the current one becomes the previous; the previous
    /// one is overwritten.
    pub fn rotate(&self) -> io::Result<()> {
        let mut fresh = Key { name: [0; NAME_LEN], secret: [0; KEY_LEN] };
        while fresh.is_empty() {
            aws_lc_rs::rand::fill(&mut fresh.name).map_err(|_| io::Error::other("no randomness"))?;
        }
        aws_lc_rs::rand::fill(&mut fresh.secret).map_err(|_| io::Error::other("no randomness"))?;
        let shared = shared(&self.map);
        // One writer (the master): mark the page as changing, write, mark done.
        shared.seq.fetch_add(1, Relaxed);
        fence(Release);
        for w in 0..SLOT_WORDS {
            shared.slots[1][w].store(shared.slots[0][w].load(Relaxed), Relaxed);
        }
        store_key(&shared.slots[0], &fresh);
        shared.rotated_unix_secs.store(unix_secs(), Relaxed);
        shared.seq.fetch_add(1, Release);
        fresh.secret.fill(0);
        Ok(())
    }

    /// Rotates when the current key is `period` old; true when it did.
    pub fn rotate_if_due(&self, period: Duration) -> io::Result<bool> {
        let rotated = shared(&self.map).rotated_unix_secs.load(Relaxed);
        if unix_secs().saturating_sub(rotated) < period.as_secs() {
            return Ok(false);
        }
        self.rotate()?;
        Ok(true)
    }

    /// The rustls side of the ring, for a worker's server configuration.
    pub fn ticketer(&self, period: Duration) -> SharedTicketer {
        SharedTicketer { map: self.map.clone(), lifetime: period.as_secs().min(u64::from(u32::MAX)) as u32 }
    }
}

/// Encrypts and decrypts tickets with the ring's keys as they are at the time.
pub struct SharedTicketer {
    map: Arc<MmapRaw>,
    lifetime: u32,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer").field("lifetime", &self.lifetime).finish()
    }
}

impl SharedTicketer {
    /// The two keys, copied out consistently.
    fn keys(&self) -> [Key; 2] {
        let shared = shared(&self.map);
        loop {
            let before = shared.seq.load(Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let keys = [load_key(&shared.slots[0]), load_key(&shared.slots[1])];
            fence(Acquire);
            if shared.seq.load(Relaxed) == before {
                return keys;
            }
        }
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let [mut current, _] = self.keys();
        let sealed = seal(&current, plain);
        current.secret.fill(0);
        sealed
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let mut keys = self.keys();
        let opened = keys
            .iter()
            .find(|k| !k.is_empty() && k.name[..] == ticket[..NAME_LEN])
            .and_then(|key| open(key, ticket));
        for k in &mut keys {
            k.secret.fill(0);
        }
        opened
    }
}

fn seal(key: &Key, plain: &[u8]) -> Option<Vec<u8>> {
    if key.is_empty() {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).ok()?;
    let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&key.name);
    out.extend_from_slice(&nonce);
    let mut body = plain.to_vec();
    key.aead()?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&key.name), &mut body)
        .ok()?;
    out.extend_from_slice(&body);
    Some(out)
}

fn open(key: &Key, ticket: &[u8]) -> Option<Vec<u8>> {
    let nonce = Nonce::try_assume_unique_for_key(&ticket[NAME_LEN..NAME_LEN + NONCE_LEN]).ok()?;
    let mut body = ticket[NAME_LEN + NONCE_LEN..].to_vec();
    let plain_len = key.aead()?.open_in_place(nonce, Aad::from(&key.name), &mut body).ok()?.len();
    body.truncate(plain_len);
    Some(body)
}

fn shared(map: &MmapRaw) -> &Shared {
    // SAFETY: the mapping is page-aligned and MAP_LEN long, more than a
    // `Shared` (asserted above), and lives as long as `map`; every field is
    // an atomic, for which any bit pattern (a fresh memfd is zeroes) is valid.
    unsafe { &*(map.as_ptr() as *const Shared) }
}

fn store_key(slot: &[AtomicU64; SLOT_WORDS], key: &Key) {
    let mut bytes = [0u8; NAME_LEN + KEY_LEN];
    bytes[..NAME_LEN].copy_from_slice(&key.name);
    bytes[NAME_LEN..].copy_from_slice(&key.secret);
    for (w, chunk) in bytes.chunks_exact(8).enumerate() {
        slot[w].store(u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8])), Relaxed);
    }
    bytes.fill(0);
}

fn load_key(slot: &[AtomicU64; SLOT_WORDS]) -> Key {
    let mut bytes = [0u8; NAME_LEN + KEY_LEN];
    for (w, chunk) in bytes.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&slot[w].load(Relaxed).to_ne_bytes());
    }
    let mut key = Key { name: [0; NAME_LEN], secret: [0; KEY_LEN] };
    key.name.copy_from_slice(&bytes[..NAME_LEN]);
    key.secret.copy_from_slice(&bytes[NAME_LEN..]);
    bytes.fill(0);
    key
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_outlive_one_rotation_not_two() {
        let ring = TicketKeyRing::create().unwrap();
        let ticketer = ring.ticketer(Duration::from_secs(3600));
        let ticket = ticketer.encrypt(b"session state").unwrap();
        assert_eq!(ticketer.decrypt(&ticket).unwrap(), b"session state");
        ring.rotate().unwrap();
        assert_eq!(ticketer.decrypt(&ticket).unwrap(), b"session state", "the previous key still decrypts");
        ring.rotate().unwrap();
        assert_eq!(ticketer.decrypt(&ticket), None, "a key two rotations old is gone");
    }

    #[test]
    fn forged_and_damaged_tickets_are_refused() {
        let ring = TicketKeyRing::create().unwrap();
        let ticketer = ring.ticketer(Duration::from_secs(3600));
        let mut ticket = ticketer.encrypt(b"state").unwrap();
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert_eq!(ticketer.decrypt(&ticket), None);
        // The empty previous slot (all-zero name and key) never matches.
        let mut forged = vec![0u8; NAME_LEN + NONCE_LEN];
        forged.extend_from_slice(b"body and a sixteen-byte tag");
        assert_eq!(ticketer.decrypt(&forged), None);
        for len in 0..NAME_LEN + NONCE_LEN + TAG_LEN + 2 {
            assert_eq!(ticketer.decrypt(&vec![7u8; len]), None);
        }
    }

    #[test]
    fn a_copy_mapped_from_the_descriptor_sees_rotations() {
        let ring = TicketKeyRing::create().unwrap();
        let other = TicketKeyRing::adopt(ring.fd.try_clone().unwrap()).unwrap();
        let theirs = other.ticketer(Duration::from_secs(60));
        let ticket = ring.ticketer(Duration::from_secs(60)).encrypt(b"x").unwrap();
        assert_eq!(theirs.decrypt(&ticket).unwrap(), b"x");
        ring.rotate().unwrap();
        ring.rotate().unwrap();
        assert_eq!(theirs.decrypt(&ticket), None);
    }
}
