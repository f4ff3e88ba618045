//! The transport seam: everything the connection code does to a client's
//! socket goes through [`Transport`]. [`PlainTcp`] is what tine does on a
//! TCP connection (recv, send with MSG_MORE, sendfile, TCP_CORK, splice
//! through a pipe). A TLS transport is a second implementation: it reads
//! records into its own buffer and decrypts on `recv`, encrypts on `send`,
//! reads the file range and encrypts it on `send_file`, and relays through
//! user space where plain TCP splices; the connection code stays the same.

use crate::relay::{Pump, Relay, RelayError};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use tine_net::sys::{self, Peek};

pub trait Transport {
    /// Reads what the client sent (plaintext). `Ok(0)` is its end of stream.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes to the client; `more` says further bytes follow at once (a
    /// head before its body), so they may share a segment.
    fn send(&mut self, buf: &[u8], more: bool) -> io::Result<usize>;

    /// Sends up to `len` bytes of `file` from `offset`, advancing it.
    fn send_file(&mut self, file: RawFd, offset: &mut u64, len: usize) -> io::Result<usize>;

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

/// A client on a plain TCP connection.
pub struct PlainTcp {
    fd: OwnedFd,
}

impl PlainTcp {
    pub fn new(fd: OwnedFd) -> Self {
        PlainTcp { fd }
    }
}

impl Transport for PlainTcp {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.fd.as_raw_fd(), buf)
    }

    fn send(&mut self, buf: &[u8], more: bool) -> io::Result<usize> {
        sys::send(self.fd.as_raw_fd(), buf, more)
    }

    fn send_file(&mut self, file: RawFd, offset: &mut u64, len: usize) -> io::Result<usize> {
        sys::sendfile(self.fd.as_raw_fd(), file, offset, len)
    }

    fn cork(&mut self, on: bool) -> bool {
        sys::set_cork(self.fd.as_raw_fd(), on).is_ok()
    }

    fn shutdown_write(&mut self) {
        sys::shutdown_write(self.fd.as_raw_fd());
    }

    fn peek(&self) -> Peek {
        sys::peek(self.fd.as_raw_fd())
    }

    fn relay_from(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        relay.pump(upstream, self.fd.as_raw_fd(), budget)
    }

    fn relay_to(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        relay.pump(self.fd.as_raw_fd(), upstream, budget)
    }
}
