//! An upstream connection over TLS: rustls's `ClientConnection` on a plain
//! TCP connection. The handshake runs once the connect completes (and a
//! PROXY protocol header, if the group sends one, is out): `establish`
//! drives it as the socket's events come, under the connect timeout. Bodies
//! are copied through user space (no splice through encryption).
//!
//! Sending: plaintext is encrypted at once and its records written; records
//! the socket could not take stay queued in rustls and leave before
//! anything else (the next send, receive or look), so a send is counted
//! once rustls holds it, and nothing is sent twice.

use super::transport::{TcpUpstream, UpstreamIo};
use crate::transport::Socket;
use rustls::{ClientConnection, HandshakeKind};
use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use tine_net::sys::{self, Peek};
use tine_tls::UpstreamClient;

/// Plaintext encrypted per send, and the records rustls may hold queued.
const CHUNK: usize = 64 * 1024;
const QUEUED_RECORDS_LIMIT: usize = CHUNK + 16 * 1024;

pub struct TlsUpstream {
    tcp: TcpUpstream,
    conn: ClientConnection,
    /// The server closed its side of the TCP connection.
    eof: bool,
    /// The last read from the socket took all it held (came back short,
    /// or would block): its next bytes raise an event of their own.
    spent: bool,
}

impl TlsUpstream {
    /// TLS on `tcp` (whose connect may still be under way); nothing is sent
    /// until [`UpstreamIo::establish`].
    pub fn new(tcp: TcpUpstream, client: &UpstreamClient) -> io::Result<Self> {
        let mut conn = ClientConnection::new(client.config.clone(), client.server_name.clone())
            .map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(QUEUED_RECORDS_LIMIT));
        Ok(TlsUpstream { tcp, conn, eof: false, spent: false })
    }

    pub fn fd(&self) -> RawFd {
        self.tcp.fd()
    }

    /// The socket has nothing more to read now (see `spent`), and rustls
    /// holds no plaintext: whatever comes next raises an event.
    pub fn drained(&mut self) -> bool {
        self.spent && self.conn.process_new_packets().is_ok_and(|s| s.plaintext_bytes_to_read() == 0)
    }

    /// The handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// The protocol agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Writes the records rustls holds; `WouldBlock` while some remain.
    fn write_out(&mut self) -> io::Result<()> {
        let mut socket = Socket(self.tcp.fd());
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads records from the socket into rustls and processes them; false
    /// when the socket had nothing now, or has ended.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let mut socket = Reading { fd: self.tcp.fd(), short: false };
        let read = self.conn.read_tls(&mut socket);
        self.spent = socket.short;
        match read {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(_) => {
                if let Err(e) = self.conn.process_new_packets() {
                    // The alert rustls queued goes out, as far as it can.
                    let _ = self.write_out();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                // Replies the records call for (key updates) leave at once.
                match self.write_out() {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                    _ => Ok(true),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.spent = true;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// The socket as rustls reads records from it, noting whether a read came
/// back short (the socket then held no more).
struct Reading {
    fd: RawFd,
    short: bool,
}

impl Read for Reading {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = sys::recv(self.fd, buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

impl UpstreamIo for TlsUpstream {
    fn connect_status(&self) -> io::Result<bool> {
        self.tcp.connect_status()
    }

    /// The handshake: `Ok(true)` once it is complete; an error whose inner
    /// error is a `rustls::Error` when rustls refused it (a certificate it
    /// would not verify, an alert from the server).
    fn establish(&mut self) -> io::Result<bool> {
        loop {
            match self.write_out() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
            if !self.conn.is_handshaking() {
                return Ok(true);
            }
            if !self.fill()? {
                if self.eof {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    ));
                }
                return Ok(false);
            }
        }
    }

    fn send(&mut self, buf: &[u8], _more: bool) -> io::Result<usize> {
        self.write_out()?;
        let n = self.conn.writer().write(&buf[..buf.len().min(CHUNK)])?;
        match self.write_out() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Records an earlier send left queued go first: the server answers
        // only once it has them.
        match self.write_out() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify: for HTTP's framing, an end
                // of stream like any other (a body cut short is told by it).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if !self.fill()? {
                return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
        }
    }

    /// Takes in what the socket holds (a pooled connection's session
    /// tickets arrive after the handshake, and are no trouble) and says
    /// whether plaintext or an end waits.
    fn peek(&mut self) -> Peek {
        loop {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => return Peek::End,
            }
        }
        match self.conn.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() > 0 => Peek::Data,
            Ok(state) if state.peer_has_closed() || self.eof => Peek::End,
            Ok(_) => Peek::Nothing,
            Err(_) => Peek::End,
        }
    }

    fn shutdown_write(&mut self) {
        self.conn.send_close_notify();
        let _ = self.write_out();
        self.tcp.shutdown_write();
    }

    fn splice_socket(&self) -> Option<RawFd> {
        None
    }
}

impl Drop for TlsUpstream {
    /// An established connection says close_notify before it closes (one
    /// write, without waiting).
    fn drop(&mut self) {
        if !self.conn.is_handshaking() && !self.eof {
            self.conn.send_close_notify();
            let _ = self.write_out();
        }
    }
}
