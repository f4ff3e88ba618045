//! The transport seam: everything the connection code does to a client's
//! socket goes through [`Transport`]. [`PlainTcp`] is what tine does on a
//! TCP connection (recv, send with MSG_MORE, sendfile, TCP_CORK, splice
//! through a pipe). [`Tls`] terminates TLS with rustls: it decrypts what it
//! receives, encrypts what it sends, reads file ranges into memory to
//! encrypt them (no sendfile without kernel TLS) and relays through user
//! space where plain TCP splices. The connection code is the same for both;
//! [`Client`] is the one it holds.

mod plain;
mod tls;

pub use plain::PlainTcp;
pub(crate) use tls::Socket;
pub use tls::{Handshake, HandshakeProgress, Tls, TlsFailure};

use crate::relay::{Pump, Relay, RelayError};
use std::io;
use std::os::fd::RawFd;
use tine_net::sys::Peek;

/// What a connection does to its client's socket.
///
/// Sending follows OpenSSL's rule: after `send` or `send_file` fails with
/// `WouldBlock`, the next call offers the same bytes again (a transport that
/// encrypts may already hold them, and counts them sent only once they are
/// on the wire).
pub trait Transport {
    /// Reads what the client sent (plaintext). `Ok(0)` is its end of stream.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// True when the last `recv` took all the client had sent: edge-triggered
    /// readiness is spent, and the next read waits for an event.
    fn read_spent(&self) -> bool;

    /// Writes to the client; `more` says further bytes follow at once (a
    /// head before its body), so they may share a segment.
    fn send(&mut self, buf: &[u8], more: bool) -> io::Result<usize>;

    /// Sends up to `len` bytes of `file` from `offset`, advancing it.
    fn send_file(&mut self, file: RawFd, offset: &mut u64, len: usize) -> io::Result<usize>;

    /// Writes out what the transport itself queued (handshake messages,
    /// alerts); `WouldBlock` while some remains.
    fn flush(&mut self) -> io::Result<()>;

    /// Holds partial segments back (`true`) until released (`false`), for a
    /// large body; false when the transport cannot.
    fn cork(&mut self, on: bool) -> bool;

    /// No more bytes go to the client (its read side stays open).
    fn shutdown_write(&mut self);

    /// What waits from the client, without taking it.
    fn peek(&self) -> Peek;

    /// Moves bytes from an upstream socket to the client through `relay`
    /// (a failed source is the upstream, a failed destination the client).
    fn relay_from(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError>;

    /// Moves bytes from the client to an upstream socket through `relay`
    /// (a failed source is the client, a failed destination the upstream).
    fn relay_to(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError>;
}

/// A client connection's transport, as the connection holds it.
pub enum Client {
    Plain(PlainTcp),
    Tls(Box<Tls>),
    /// A client that is a byte sequence (unit tests).
    #[cfg(test)]
    Scripted(crate::scripted::ScriptedClient),
}

impl Client {
    pub fn tls(&mut self) -> Option<&mut Tls> {
        match self {
            Client::Tls(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Client::Tls(_))
    }

    /// The client's socket, for what the kernel says of it (TCP_INFO).
    pub fn socket(&self) -> RawFd {
        match self {
            Client::Plain(t) => t.socket(),
            Client::Tls(t) => t.socket(),
            #[cfg(test)]
            Client::Scripted(_) => -1,
        }
    }
}

macro_rules! both {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            Client::Plain($t) => $e,
            Client::Tls($t) => $e,
            #[cfg(test)]
            Client::Scripted($t) => $e,
        }
    };
}

impl Transport for Client {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        both!(self, t => t.recv(buf))
    }

    fn read_spent(&self) -> bool {
        both!(self, t => t.read_spent())
    }

    fn send(&mut self, buf: &[u8], more: bool) -> io::Result<usize> {
        both!(self, t => t.send(buf, more))
    }

    fn send_file(&mut self, file: RawFd, offset: &mut u64, len: usize) -> io::Result<usize> {
        both!(self, t => t.send_file(file, offset, len))
    }

    fn flush(&mut self) -> io::Result<()> {
        both!(self, t => t.flush())
    }

    fn cork(&mut self, on: bool) -> bool {
        both!(self, t => t.cork(on))
    }

    fn shutdown_write(&mut self) {
        both!(self, t => t.shutdown_write())
    }

    fn peek(&self) -> Peek {
        both!(self, t => t.peek())
    }

    fn relay_from(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        both!(self, t => t.relay_from(relay, upstream, budget))
    }

    fn relay_to(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        both!(self, t => t.relay_to(relay, upstream, budget))
    }
}
