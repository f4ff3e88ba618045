//! The ACME challenges under validation, published by the ACME process and
//! answered by the workers: a memfd the master creates before forking either,
//! so that every worker of every generation sees the same board, and no file
//! or other process does.
//!
//! An entry is a challenge: its type, the name validated, the token and the
//! key authorization (`TOKEN.THUMBPRINT`). A worker answers
//! `GET /.well-known/acme-challenge/TOKEN` (http-01) with the key
//! authorization, and a handshake offering only ALPN `acme-tls/1` for the
//! name (tls-alpn-01, RFC 8737) with a certificate it makes from the key
//! authorization's digest. Nothing secret is on the board: the account key
//! stays with the ACME process.
//!
//! One writer (the ACME process). Every field is an atomic word and each
//! entry has a sequence number, odd while it is rewritten, so a reader never
//! takes a half-written entry.

use memmap2::MmapRaw;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{fence, AtomicU64};
use std::sync::Arc;

/// Challenges the board holds at once: names of certificates being ordered
/// together.
pub const CAPACITY: usize = 64;
const NAME_WORDS: usize = 256 / 8;
const TOKEN_WORDS: usize = 128 / 8;
const KEY_AUTHORIZATION_WORDS: usize = 256 / 8;

#[repr(C)]
struct Entry {
    seq: AtomicU64,
    /// 0: free; else a [`ChallengeType`].
    kind: AtomicU64,
    name: [AtomicU64; NAME_WORDS],
    token: [AtomicU64; TOKEN_WORDS],
    key_authorization: [AtomicU64; KEY_AUTHORIZATION_WORDS],
}

const MAP_LEN: usize = CAPACITY * std::mem::size_of::<Entry>();

/// The challenge types tine answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeType {
    Http01 = 1,
    TlsAlpn01 = 2,
}

/// One challenge as published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub kind: ChallengeType,
    /// The DNS name validated, lower case.
    pub name: String,
    pub token: String,
    pub key_authorization: String,
}

/// The board: the master creates it, the ACME process and workers inherit it.
#[derive(Clone)]
pub struct ChallengeBoard {
    map: Arc<MmapRaw>,
    fd: Arc<OwnedFd>,
}

impl std::fmt::Debug for ChallengeBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeBoard").finish_non_exhaustive()
    }
}

impl ChallengeBoard {
    pub fn create() -> io::Result<Self> {
        let (fd, map) = crate::shared_memory::create(c"tine-acme-challenges", MAP_LEN)?;
        Ok(ChallengeBoard { map: Arc::new(map), fd: Arc::new(fd) })
    }

    /// The board the master passed to the ACME process by descriptor.
    pub fn adopt(fd: OwnedFd) -> io::Result<Self> {
        let (fd, map) = crate::shared_memory::adopt(fd, MAP_LEN, "challenge board")?;
        Ok(ChallengeBoard { map: Arc::new(map), fd: Arc::new(fd) })
    }

    /// The descriptor the ACME process inherits.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    fn entries(&self) -> &[Entry] {
        // SAFETY: the mapping is MAP_LEN bytes, page-aligned, shared and
        // alive as long as `self.map`; it holds CAPACITY entries of atomics
        // only (all-zero bytes are valid atomics), and every process that
        // maps it touches it through those atomics.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr() as *const Entry, CAPACITY) }
    }

    /// Publishes `challenge` in a free entry; false when the board is full
    /// or a field is longer than an entry holds.
    pub fn publish(&self, challenge: &Challenge) -> bool {
        if challenge.name.len() >= NAME_WORDS * 8
            || challenge.token.len() >= TOKEN_WORDS * 8
            || challenge.key_authorization.len() >= KEY_AUTHORIZATION_WORDS * 8
        {
            return false;
        }
        let Some(entry) = self.entries().iter().find(|e| e.kind.load(Relaxed) == 0) else { return false };
        entry.seq.fetch_add(1, Relaxed);
        fence(Release);
        store_text(&entry.name, &challenge.name);
        store_text(&entry.token, &challenge.token);
        store_text(&entry.key_authorization, &challenge.key_authorization);
        entry.kind.store(challenge.kind as u64, Relaxed);
        entry.seq.fetch_add(1, Release);
        true
    }

    /// Takes `challenge` off the board (validated, failed or abandoned).
    pub fn withdraw(&self, challenge: &Challenge) {
        for entry in self.entries() {
            if read_entry(entry).as_ref() == Some(challenge) {
                clear(entry);
            }
        }
    }

    /// Empties the board: what a previous ACME process left is stale.
    pub fn clear(&self) {
        self.entries().iter().filter(|e| e.kind.load(Relaxed) != 0).for_each(clear);
    }

    /// The http-01 challenge whose token is `token`.
    pub fn http01(&self, token: &str) -> Option<Challenge> {
        self.find(|c| c.kind == ChallengeType::Http01 && c.token == token)
    }

    /// The tls-alpn-01 challenge for `name` (lower case).
    pub fn tls_alpn01(&self, name: &str) -> Option<Challenge> {
        self.find(|c| c.kind == ChallengeType::TlsAlpn01 && c.name == name)
    }

    fn find(&self, wanted: impl Fn(&Challenge) -> bool) -> Option<Challenge> {
        self.entries().iter().filter(|e| e.kind.load(Relaxed) != 0).filter_map(read_entry).find(|c| wanted(c))
    }
}

fn clear(entry: &Entry) {
    entry.seq.fetch_add(1, Relaxed);
    fence(Release);
    entry.kind.store(0, Relaxed);
    entry.seq.fetch_add(1, Release);
}

/// A consistent copy of `entry`, None when it is free (or keeps changing).
fn read_entry(entry: &Entry) -> Option<Challenge> {
    for _ in 0..4 {
        let before = entry.seq.load(Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let kind = match entry.kind.load(Relaxed) {
            1 => Some(ChallengeType::Http01),
            2 => Some(ChallengeType::TlsAlpn01),
            _ => None,
        };
        let name = load_text(&entry.name);
        let token = load_text(&entry.token);
        let key_authorization = load_text(&entry.key_authorization);
        fence(Acquire);
        if entry.seq.load(Relaxed) == before {
            return kind.map(|kind| Challenge { kind, name, token, key_authorization });
        }
    }
    None
}

fn store_text(words: &[AtomicU64], text: &str) {
    for (k, word) in words.iter().enumerate() {
        let mut bytes = [0u8; 8];
        let from = (k * 8).min(text.len());
        let part = &text.as_bytes()[from..(from + 8).min(text.len())];
        bytes[..part.len()].copy_from_slice(part);
        word.store(u64::from_ne_bytes(bytes), Relaxed);
    }
}

fn load_text(words: &[AtomicU64]) -> String {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.load(Relaxed).to_ne_bytes()).collect();
    bytes.truncate(bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len()));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The tls-alpn-01 certificate for `name` (RFC 8737): self-signed, for the
/// name alone, with the critical acmeIdentifier extension holding the
/// SHA-256 digest of the key authorization. Its key is made for it and
/// thrown away with it.
pub fn challenge_certificate(
    name: &str,
    key_authorization: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let key_pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let cert = params.self_signed(&key_pair).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http01(token: &str) -> Challenge {
        Challenge {
            kind: ChallengeType::Http01,
            name: "example.com".into(),
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
        }
    }

    #[test]
    fn published_challenges_are_found_until_withdrawn() {
        let board = ChallengeBoard::create().unwrap();
        let a = http01("token-a");
        let b = Challenge { kind: ChallengeType::TlsAlpn01, ..http01("token-b") };
        assert!(board.publish(&a) && board.publish(&b));
        assert_eq!(board.http01("token-a"), Some(a.clone()));
        assert_eq!(board.http01("token-b"), None, "a tls-alpn-01 challenge is no http-01 answer");
        assert_eq!(board.tls_alpn01("example.com"), Some(b.clone()));
        board.withdraw(&a);
        assert_eq!(board.http01("token-a"), None);
        board.clear();
        assert_eq!(board.tls_alpn01("example.com"), None);
    }

    #[test]
    fn a_full_board_or_an_oversized_field_is_refused() {
        let board = ChallengeBoard::create().unwrap();
        for i in 0..CAPACITY {
            assert!(board.publish(&http01(&format!("t{i}"))));
        }
        assert!(!board.publish(&http01("one-more")));
        board.clear();
        assert!(!board.publish(&http01(&"x".repeat(200))));
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest() {
        let key = challenge_certificate("example.com", "token.thumb", &crate::provider()).unwrap();
        let der = key.end_entity_cert().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"token.thumb");
        // DER OCTET STRING of 32 bytes: 0x04 0x20 then the digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], digest.as_ref());
    }
}
