//! The PROXY protocol (HAProxy's, versions 1 and 2): the header an L4 load
//! balancer puts before a client's first byte to say who the client is.
//! ppp does the parsing, and takes partial input; this module adds what a
//! front end needs on top: a size limit, the client's address as one value,
//! and a cheap test of whether bytes begin like a header at all (a
//! connection from an untrusted address that sends one is refused).

use ppp::PartialResult;
use std::net::SocketAddr;

/// Largest header accepted: a version 1 header is at most 107 bytes, a
/// version 2 header 16 bytes and its addresses (216 for UNIX sockets) and
/// TLVs; balancers send a few TLVs at most.
pub const MAX_HEADER_BYTES: usize = 512;

const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A header read from the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A complete header of `len` bytes. `client` is the address it names,
    /// or None for one that names none (version 2 LOCAL, a balancer's own
    /// health check; version 1 UNKNOWN; UNIX sockets), where the
    /// connection's own peer stands.
    Header { len: usize, client: Option<SocketAddr> },
}

/// Why a header is refused (the connection is closed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY protocol header longer than {MAX_HEADER_BYTES} bytes")]
    TooLarge,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
}

/// Whether `buf` begins like a PROXY protocol header: Some(true) or
/// Some(false) once that can be told, None while too few bytes have come.
pub fn begins_like_header(buf: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for signature in [V1_SIGNATURE, V2_SIGNATURE] {
        let n = buf.len().min(signature.len());
        if buf[..n] == signature[..n] {
            if n == signature.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(false)
}

/// Parses the header at the front of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    match begins_like_header(buf) {
        None => Ok(Parsed::Incomplete),
        Some(false) => Err(ProxyHeaderError::Missing),
        Some(true) if buf.starts_with(V2_SIGNATURE) => parse_v2(buf),
        Some(true) => parse_v1(buf),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    use ppp::v2::{Addresses, Command, Header};
    // The length is known from the 16th byte: refuse an oversized header
    // before waiting for it.
    if let Some(declared) = buf.get(14..16) {
        if 16 + usize::from(u16::from_be_bytes([declared[0], declared[1]])) > MAX_HEADER_BYTES {
            return Err(ProxyHeaderError::TooLarge);
        }
    }
    let header = match Header::try_from(buf) {
        Ok(h) => h,
        Err(e) if e.is_incomplete() => return Ok(Parsed::Incomplete),
        Err(e) => return Err(ProxyHeaderError::Malformed(e.to_string())),
    };
    // TLVs are skipped, but a header whose TLVs do not add up is refused.
    if let Some(Err(e)) = header.tlvs().find(Result::is_err) {
        return Err(ProxyHeaderError::Malformed(e.to_string()));
    }
    let client = match (header.command, header.addresses) {
        (Command::Proxy, Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
        (Command::Proxy, Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
        _ => None,
    };
    Ok(Parsed::Header { len: header.len(), client })
}

/// Longest version 1 header, CRLF included.
const V1_MAX: usize = 107;

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    use ppp::v1::{Addresses, Header};
    // A version 1 header is one line: it is parsed once the line has ended,
    // so that no prefix of a good header is mistaken for a bad one.
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX { Err(ProxyHeaderError::TooLarge) } else { Ok(Parsed::Incomplete) };
    };
    let line = &buf[..end + 1];
    if !line.ends_with(b"\r\n") {
        return Err(ProxyHeaderError::Malformed("line not ended by CRLF".into()));
    }
    // The line is whole: whatever ppp finds missing is missing for good.
    let header = match Header::try_from(line) {
        Ok(h) => h,
        Err(ppp::v1::BinaryParseError::Parse(ppp::v1::ParseError::HeaderTooLong)) => {
            return Err(ProxyHeaderError::TooLarge)
        }
        Err(e) => return Err(ProxyHeaderError::Malformed(e.to_string())),
    };
    let client = match header.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unknown => None,
    };
    Ok(Parsed::Header { len: header.header.len(), client })
}

/// Appends a version 1 header naming `client` as the source and `server`
/// as the destination (both as IPv6 when their families differ).
pub fn write_v1(out: &mut Vec<u8>, client: SocketAddr, server: SocketAddr) {
    use std::io::Write;
    let (client, server) = same_family(client, server);
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let _ =
        write!(out, "PROXY {family} {} {} {} {}\r\n", client.ip(), server.ip(), client.port(), server.port());
}

/// Appends a version 2 header (PROXY, TCP) naming `client` and `server`.
pub fn write_v2(out: &mut Vec<u8>, client: SocketAddr, server: SocketAddr) {
    let (client, server) = same_family(client, server);
    out.extend_from_slice(V2_SIGNATURE);
    out.push(0x21);
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&s.ip().octets());
        }
        (c, s) => {
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6(c.ip()).octets());
            out.extend_from_slice(&v6(s.ip()).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&server.port().to_be_bytes());
}

fn v6(ip: std::net::IpAddr) -> std::net::Ipv6Addr {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    }
}

/// Both addresses in one family: IPv6 (IPv4-mapped) when they differ.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (SocketAddr::new(v6(a.ip()).into(), a.port()), SocketAddr::new(v6(b.ip()).into(), b.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(buf: &[u8]) -> (usize, Option<SocketAddr>) {
        match parse(buf) {
            Ok(Parsed::Header { len, client }) => (len, client),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        out.extend_from_slice(addresses);
        out.extend_from_slice(tlvs);
        out
    }

    // The examples of the specification (haproxy doc/proxy-protocol.txt,
    // section 2.1), followed by the client's own bytes.
    #[test]
    fn version_1_as_the_specification_writes_it() {
        let tcp4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(header(tcp4), (47, Some("192.168.0.1:56324".parse().unwrap())));
        let tcp6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\nGET /";
        assert_eq!(header(tcp6), (46, Some("[2001:db8::1]:56324".parse().unwrap())));
        assert_eq!(header(b"PROXY UNKNOWN\r\nGET /"), (15, None));
        let unknown = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(header(unknown).1, None);
        // A whole line that lacks a field is malformed, not incomplete.
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4\r\n"), Err(ProxyHeaderError::Malformed(_))));
        assert_eq!(parse(b"PROXY\r\n"), Err(ProxyHeaderError::Missing));
    }

    #[test]
    fn version_2_proxy_local_and_unix() {
        let mut ipv4 = vec![10, 1, 2, 3, 10, 0, 0, 1];
        ipv4.extend_from_slice(&40000u16.to_be_bytes());
        ipv4.extend_from_slice(&443u16.to_be_bytes());
        // A NOOP TLV and a PP2_TYPE_AUTHORITY TLV are skipped.
        let tlvs = [0x04, 0, 1, 0, 0x02, 0, 3, b'a', b'.', b't'];
        let mut buf = v2(1, 0x11, &ipv4, &tlvs);
        let len = buf.len();
        buf.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(header(&buf), (len, Some("10.1.2.3:40000".parse().unwrap())));
        let mut ipv6 = [0u8; 36];
        ipv6[15] = 1;
        ipv6[31] = 2;
        ipv6[32..34].copy_from_slice(&5555u16.to_be_bytes());
        assert_eq!(header(&v2(1, 0x21, &ipv6, &[])).1, Some("[::1]:5555".parse().unwrap()));
        // LOCAL: the balancer speaking for itself (a health check).
        assert_eq!(header(&v2(0, 0x00, &[], &[])), (16, None));
        assert_eq!(header(&v2(0, 0x11, &ipv4, &[])).1, None);
        assert_eq!(header(&v2(1, 0x31, &[0u8; 216], &[])).1, None);
    }

    #[test]
    fn what_tine_writes_parses_back_to_the_same_client() {
        let cases = [
            ("203.0.113.7:40000", "192.0.2.1:80"),
            ("[2001:db8::9]:1", "[2001:db8::1]:443"),
            ("203.0.113.7:40000", "[2001:db8::1]:443"),
        ];
        for (client, server) in cases {
            let (client, server): (SocketAddr, SocketAddr) =
                (client.parse().unwrap(), server.parse().unwrap());
            for write in [write_v1, write_v2] {
                let mut out = Vec::new();
                write(&mut out, client, server);
                let (len, parsed) = header(&out);
                assert_eq!(len, out.len());
                let expected =
                    if client.is_ipv4() == server.is_ipv4() { client } else { same_family(client, server).0 };
                assert_eq!(parsed, Some(expected), "{:?}", String::from_utf8_lossy(&out));
            }
        }
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        let full = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        for end in 0..full.len() {
            assert_eq!(parse(&full[..end]), Ok(Parsed::Incomplete), "{end}");
        }
        let bin = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2], &[]);
        for end in 0..bin.len() {
            assert_eq!(parse(&bin[..end]), Ok(Parsed::Incomplete), "{end}");
        }
    }

    #[test]
    fn what_is_not_a_header_or_not_a_good_one() {
        for plain in
            [&b"GET / HTTP/1.1\r\n"[..], b"\x16\x03\x01\x02\x00", b"PROPFIND / HTTP/1.1", b"\r\n\r\nGET"]
        {
            assert_eq!(parse(plain), Err(ProxyHeaderError::Missing), "{:?}", String::from_utf8_lossy(plain));
        }
        for bad in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP6 {} ", "1".repeat(120));
        assert_eq!(parse(long.as_bytes()), Err(ProxyHeaderError::TooLarge));
        // Version 2 that declares more than the limit is refused at once.
        assert_eq!(parse(&v2(1, 0x11, &[0; 600], &[])[..16]), Err(ProxyHeaderError::TooLarge));
        // Addresses that do not fit the length, and TLVs that overrun it.
        assert!(matches!(parse(&v2(1, 0x11, &[1, 2, 3], &[])), Err(ProxyHeaderError::Malformed(_))));
        let bad_tlv = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2], &[0x04, 0, 9, 0]);
        assert!(matches!(parse(&bad_tlv), Err(ProxyHeaderError::Malformed(_))));
        let mut bad_version = v2(1, 0x11, &[0; 12], &[]);
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Err(ProxyHeaderError::Malformed(_))));
    }
}
