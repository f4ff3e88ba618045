//! The upstream seam: everything the proxy exchange and the stream relay do
//! to an upstream connection goes through [`UpstreamIo`]. [`TcpUpstream`]
//! is plain TCP (or a Unix socket): system calls straight on the socket,
//! which a relay may splice to and from. [`super::tls::TlsUpstream`] is
//! TLS over it; a connection without a socket to splice has its bodies
//! copied.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use tine_net::sys::{self, ConnectTo, Peek};

/// What the proxy does to an upstream connection.
pub trait UpstreamIo {
    /// Whether a non-blocking connect completed (`Ok(false)`: still under
    /// way); an error is the connect's failure.
    fn connect_status(&self) -> io::Result<bool>;

    /// Drives what the connection needs, once connected, before it carries
    /// a request (a TLS handshake); `Ok(true)` once done, `Ok(false)` while
    /// it waits for the socket.
    fn establish(&mut self) -> io::Result<bool> {
        Ok(true)
    }

    /// Writes to the upstream; `more` says further bytes follow at once.
    fn send(&mut self, buf: &[u8], more: bool) -> io::Result<usize>;

    /// Reads what the upstream sent. `Ok(0)` is its end of stream.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// What waits from the upstream, without taking it (a transport that
    /// decrypts takes in records, but no plaintext).
    fn peek(&mut self) -> Peek;

    /// No more bytes go to the upstream (a tunnel's client half-closed).
    fn shutdown_write(&mut self);

    /// The socket a relay may splice to and from; `None` when bytes must be
    /// copied through user space (no plain socket under the connection).
    fn splice_socket(&self) -> Option<RawFd>;
}

/// A plain TCP (or Unix socket) connection to an upstream server.
pub struct TcpUpstream {
    fd: OwnedFd,
}

impl TcpUpstream {
    /// Starts a non-blocking connect to `to`.
    pub fn connect(to: &ConnectTo<'_>, options: &tine_config::TcpOptions) -> io::Result<Self> {
        sys::connect_start(to, options).map(|fd| TcpUpstream { fd })
    }

    /// The socket, for epoll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl UpstreamIo for TcpUpstream {
    fn connect_status(&self) -> io::Result<bool> {
        sys::connect_status(self.fd.as_raw_fd())
    }

    fn send(&mut self, buf: &[u8], more: bool) -> io::Result<usize> {
        sys::send(self.fd.as_raw_fd(), buf, more)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.fd.as_raw_fd(), buf)
    }

    fn peek(&mut self) -> Peek {
        sys::peek(self.fd.as_raw_fd())
    }

    fn shutdown_write(&mut self) {
        sys::shutdown_write(self.fd.as_raw_fd());
    }

    fn splice_socket(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}
