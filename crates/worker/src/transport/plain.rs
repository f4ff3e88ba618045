//! A client on a plain TCP connection: system calls straight on its socket.

use super::Transport;
use crate::relay::{Pump, Relay, RelayError};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use tine_net::sys::{self, Peek};

pub struct PlainTcp {
    fd: OwnedFd,
    /// The last recv filled less than its buffer, or found nothing.
    spent: bool,
}

impl PlainTcp {
    pub fn new(fd: OwnedFd) -> Self {
        PlainTcp { fd, spent: false }
    }

    pub fn socket(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Transport for PlainTcp {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = sys::recv(self.fd.as_raw_fd(), buf);
        // A short read emptied the socket: the read that would only say
        // EAGAIN is skipped. Data arriving later raises a new edge-triggered
        // event (and a FIN raises EPOLLRDHUP), so nothing is missed.
        self.spent = match &result {
            Ok(n) => *n < buf.len(),
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        result
    }

    fn read_spent(&self) -> bool {
        self.spent
    }

    fn send(&mut self, buf: &[u8], more: bool) -> io::Result<usize> {
        sys::send(self.fd.as_raw_fd(), buf, more)
    }

    fn send_file(&mut self, file: RawFd, offset: &mut u64, len: usize) -> io::Result<usize> {
        sys::sendfile(self.fd.as_raw_fd(), file, offset, len)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
