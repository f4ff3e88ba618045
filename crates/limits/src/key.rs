//! What a limit counts by: the client's address, its network, or a request
//! header's value, each reduced to a [`ClientKey`] with the table's secret
//! SipHash key.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use std::net::IpAddr;

/// A client as a table knows it: a keyed 64-bit hash, never 0 (the empty
/// way). Two clients share a key only by a collision of the hash, which a
/// client who does not know the table's secret cannot aim for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u64);

impl ClientKey {
    /// A key from a hash already computed (0 becomes 1).
    pub fn from_hash(hash: u64) -> Self {
        ClientKey(hash.max(1))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// Where a limit takes its key from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The client's address with its host bits cleared past these prefix
    /// lengths: 32 and 128 for the address itself.
    Address { v4_prefix: u8, v6_prefix: u8 },
    /// A request header's value (requests without it are not counted).
    Header(String),
}

impl KeySource {
    /// `address`, `address/N` or `header:NAME`. A prefix of 32 or less
    /// groups IPv4 clients into networks of that size (IPv6 clients by
    /// /64, a host's usual allocation); a longer one groups IPv6 clients
    /// (IPv4 clients count one by one).
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("header:") {
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            return if valid {
                Ok(KeySource::Header(name.to_ascii_lowercase()))
            } else {
                Err(format!("key {text:?}: header:NAME needs a header name (letters, digits, - and _)"))
            };
        }
        let prefix = match text.strip_prefix("address") {
            Some("") => return Ok(KeySource::Address { v4_prefix: 32, v6_prefix: 128 }),
            Some(rest) => rest.strip_prefix('/').and_then(|n| n.parse::<u8>().ok()),
            None => None,
        };
        match prefix {
            Some(n @ 1..=32) => Ok(KeySource::Address { v4_prefix: n, v6_prefix: 64 }),
            Some(n @ 33..=128) => Ok(KeySource::Address { v4_prefix: 32, v6_prefix: n }),
            _ => Err(format!(
                "key must be \"address\", \"address/N\" (N from 1 to 128) or \"header:NAME\", not {text:?}"
            )),
        }
    }

    /// Whether the key is known when a connection is accepted, before any
    /// request.
    pub fn known_at_accept(&self) -> bool {
        matches!(self, KeySource::Address { .. })
    }
}

/// The table's secret hash key: every process that shares a table hashes
/// with the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHasher {
    k0: u64,
    k1: u64,
}

impl KeyHasher {
    pub(crate) fn new(k0: u64, k1: u64) -> Self {
        KeyHasher { k0, k1 }
    }

    pub(crate) fn parts(&self) -> (u64, u64) {
        (self.k0, self.k1)
    }

    /// The key of a client at `ip` (an IPv4-mapped IPv6 address counts as
    /// the IPv4 address), grouped by the source's prefixes.
    pub fn address(&self, ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> ClientKey {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & mask32(v4_prefix);
                h.write_u8(4);
                h.write_u32(bits);
                h.write_u8(v4_prefix);
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & mask128(v6_prefix);
                h.write_u8(6);
                h.write_u128(bits);
                h.write_u8(v6_prefix);
            }
        }
        ClientKey::from_hash(h.finish())
    }

    /// The key of a header value.
    pub fn value(&self, value: &[u8]) -> ClientKey {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u8(b'h');
        h.write(value);
        ClientKey::from_hash(h.finish())
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(KeySource::parse("address"), Ok(KeySource::Address { v4_prefix: 32, v6_prefix: 128 }));
        assert_eq!(KeySource::parse("address/24"), Ok(KeySource::Address { v4_prefix: 24, v6_prefix: 64 }));
        assert_eq!(KeySource::parse("address/64"), Ok(KeySource::Address { v4_prefix: 32, v6_prefix: 64 }));
        assert_eq!(KeySource::parse("header:X-Api-Key"), Ok(KeySource::Header("x-api-key".into())));
        for bad in ["", "addr", "address/0", "address/129", "address/x", "header:", "header:a b", "cookie"] {
            assert!(KeySource::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn networks_group_addresses() {
        let h = KeyHasher::new(1, 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(h.address(ip("10.1.2.3"), 24, 64), h.address(ip("10.1.2.200"), 24, 64));
        assert_ne!(h.address(ip("10.1.2.3"), 24, 64), h.address(ip("10.1.3.3"), 24, 64));
        assert_ne!(h.address(ip("10.1.2.3"), 32, 128), h.address(ip("10.1.2.4"), 32, 128));
        assert_eq!(h.address(ip("::ffff:10.1.2.3"), 32, 128), h.address(ip("10.1.2.3"), 32, 128));
        assert_eq!(h.address(ip("2001:db8::1"), 32, 64), h.address(ip("2001:db8::ffff:1"), 32, 64));
        assert_ne!(h.value(b"a"), h.value(b"b"));
        assert_ne!(KeyHasher::new(1, 3).value(b"a"), h.value(b"a"));
    }
}
