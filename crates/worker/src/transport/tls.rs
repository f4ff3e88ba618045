//! A client over TLS, terminated with rustls's buffered `ServerConnection`.
//!
//! Receiving: one recv takes up to 64 KiB of records from the socket into a
//! per-worker scratch buffer, which is fed to rustls from memory (rustls
//! would otherwise read 4 KiB per call); what rustls cannot take yet (its
//! plaintext buffer is full) waits in the connection's own `pending_in`, and
//! the connection counts as still readable, since edge-triggered epoll will
//! not report those bytes again.
//!
//! Sending: plaintext is encrypted in chunks of up to 64 KiB and counted as
//! sent only once all its records are on the wire; until then a `send` that
//! blocks reports `WouldBlock` and the caller offers the same bytes again
//! (see [`super::Transport`]). Per connection, rustls holds at most one chunk
//! of records, one record being assembled and 16 KiB of plaintext received.
//!
//! The connection drives the handshake as a phase of its own
//! ([`Tls::advance_handshake`], under the header timeout) and, once it
//! completes, lets the protocol agreed by ALPN ([`Tls::alpn_protocol`]) choose
//! what serves the connection. Its outcome is read for the statistics:
//! [`Tls::take_handshake`] once it completes, [`Tls::failure`] when the
//! connection closes before.

use super::Transport;
use crate::relay::{Pump, Relay, RelayError};
use rustls::server::ServerConfig;
use rustls::{HandshakeKind, ProtocolVersion, ServerConnection};
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use tine_net::sys::{self, Peek};

/// Ciphertext taken from the socket per recv, and plaintext encrypted per
/// send: four full records.
const CHUNK: usize = 64 * 1024;
/// rustls's limit on queued records: one chunk and its record overhead.
const QUEUED_RECORDS_LIMIT: usize = CHUNK + 16 * 1024;

/// What a plain HTTP request on a TLS port gets (as nginx's 497), in clear.
const PLAIN_HTTP_REPLY: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 56\r\n\
Connection: close\r\n\
\r\n\
This port speaks HTTPS; a plain HTTP request was sent.\r\n";

/// A fatal unrecognized_name alert in a plaintext record (sent before any
/// ServerHello, so unencrypted in every TLS version).
const UNRECOGNIZED_NAME_ALERT: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

/// How a handshake rustls refused is counted.
fn failure_class(error: &rustls::Error) -> TlsFailure {
    use rustls::PeerIncompatible as P;
    match error {
        rustls::Error::General(m) if m.contains("certificate") => TlsFailure::NoCertificate,
        rustls::Error::PeerIncompatible(
            P::NoCipherSuitesInCommon | P::NoSignatureSchemesInCommon | P::NoKxGroupsInCommon,
        ) => TlsFailure::NoCommon,
        _ => TlsFailure::Protocol,
    }
}

thread_local! {
    /// The worker's one buffer for records just received and file bytes
    /// about to be encrypted (a worker is one thread).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; CHUNK].into_boxed_slice());
}

/// Why a handshake failed, as counted in the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// Not TLS, a malformed or truncated handshake, an alert from the client,
    /// no common protocol version or ALPN protocol.
    Protocol,
    /// Not complete within the header timeout.
    Timeout,
    /// No certificate for the name the client asked for (refused under
    /// `unknown_name = "refuse"`).
    NoCertificate,
    /// The client offered no cipher suite, signature scheme or key-exchange
    /// group that tine's certificates and configuration can serve.
    NoCommon,
    /// A plain HTTP request (answered with a plain-text 400).
    PlainHttp,
}

/// Where a handshake stands after the records at hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeProgress {
    Done,
    /// The socket has nothing more now; the next readiness event resumes it.
    NeedMore,
    /// The client closed before the handshake completed.
    Closed,
}

/// A completed handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub tls13: bool,
    pub resumed: bool,
}

enum State {
    Handshaking { received: bool },
    Established { reported: bool },
    Failed(TlsFailure),
}

pub struct Tls {
    fd: OwnedFd,
    conn: ServerConnection,
    /// Records received that rustls could not take yet.
    pending_in: Vec<u8>,
    /// Plaintext the caller handed over whose records are not all written.
    unacked: usize,
    /// The last socket read came back short or empty.
    spent: bool,
    /// The last read from rustls filled the caller's buffer: more may wait.
    plaintext_left: bool,
    /// The client closed its side of the TCP connection.
    eof: bool,
    state: State,
    /// A record failed after the handshake (bad record, an alert).
    record_error: bool,
    /// close_notify has been queued.
    closing: bool,
}

impl Tls {
    pub fn new(fd: OwnedFd, config: Arc<ServerConfig>) -> io::Result<Self> {
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(QUEUED_RECORDS_LIMIT));
        Ok(Tls {
            fd,
            conn,
            pending_in: Vec::new(),
            unacked: 0,
            spent: false,
            plaintext_left: false,
            eof: false,
            state: State::Handshaking { received: false },
            record_error: false,
            closing: false,
        })
    }

    pub fn socket(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The handshake that completed since this was last asked, once.
    pub fn take_handshake(&mut self) -> Option<Handshake> {
        let State::Established { reported: reported @ false } = &mut self.state else { return None };
        *reported = true;
        Some(Handshake {
            tls13: self.conn.protocol_version() == Some(ProtocolVersion::TLSv1_3),
            resumed: self.conn.handshake_kind() == Some(HandshakeKind::Resumed),
        })
    }

    /// Why the handshake failed, for a connection closing now (`timed_out`:
    /// its deadline passed). A client that connected and left without
    /// sending a byte is not a failed handshake.
    pub fn failure(&self, timed_out: bool) -> Option<TlsFailure> {
        match self.state {
            State::Failed(class) => Some(class),
            State::Handshaking { .. } if timed_out => Some(TlsFailure::Timeout),
            State::Handshaking { received: true } => Some(TlsFailure::Protocol),
            State::Handshaking { received: false } | State::Established { .. } => None,
        }
    }

    /// A record was refused after the handshake.
    pub fn record_error(&self) -> bool {
        self.record_error
    }

    fn handshaking(&self) -> bool {
        matches!(self.state, State::Handshaking { .. })
    }

    /// Drives the handshake with what the socket holds (its next flight goes
    /// out as records come in).
    pub fn advance_handshake(&mut self) -> io::Result<HandshakeProgress> {
        while self.handshaking() {
            if !self.fill()? {
                return Ok(if self.eof { HandshakeProgress::Closed } else { HandshakeProgress::NeedMore });
            }
        }
        Ok(HandshakeProgress::Done)
    }

    /// The application protocol the handshake agreed on by ALPN, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// rustls refused what the client sent: the alert it queued goes out,
    /// and the failure is remembered by class.
    fn refuse(&mut self, error: rustls::Error) -> io::Error {
        // The records of one read may hold the handshake's last message and
        // a bad record after it: that is a record error on a completed
        // handshake, whatever this connection's state said before the read.
        if self.handshaking() && !self.conn.is_handshaking() {
            self.state = State::Established { reported: false };
        }
        if !self.handshaking() {
            self.record_error = true;
            let _ = self.write_out();
            return io::Error::new(io::ErrorKind::InvalidData, error);
        }
        let class = failure_class(&error);
        self.state = State::Failed(class);
        if class == TlsFailure::NoCertificate {
            // rustls answers a resolver that found nothing with access_denied,
            // which scanners and clients read as a server fault; a name the
            // server refuses is unrecognized_name (RFC 6066 section 3).
            let _ = sys::send(self.fd.as_raw_fd(), UNRECOGNIZED_NAME_ALERT, false);
        } else {
            let _ = self.write_out();
        }
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    /// Answers a plain HTTP request in clear, then the connection closes.
    fn refuse_plain_http(&mut self) -> io::Error {
        self.state = State::Failed(TlsFailure::PlainHttp);
        let _ = sys::send(self.fd.as_raw_fd(), PLAIN_HTTP_REPLY, false);
        sys::shutdown_write(self.fd.as_raw_fd());
        io::Error::new(io::ErrorKind::InvalidData, "plain HTTP request on a TLS port")
    }

    /// Feeds received records to rustls and processes them; what it cannot
    /// take yet is kept.
    fn absorb(&mut self, mut records: &[u8]) -> io::Result<()> {
        while !records.is_empty() {
            match self.conn.read_tls(&mut records) {
                // close_notify arrived: nothing after it is read.
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(self.refuse(rustls::Error::General(e.to_string())))
                }
                // Its plaintext buffer is full: the rest waits.
                Err(_) => break,
            }
            if let Err(e) = self.conn.process_new_packets() {
                return Err(self.refuse(e));
            }
        }
        self.pending_in.extend_from_slice(records);
        if self.handshaking() && !self.conn.is_handshaking() {
            self.state = State::Established { reported: false };
        }
        // The handshake's next flight, session tickets: out as soon as can be.
        match self.write_out() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads records from the socket into rustls; false when the socket had
    /// nothing (it is spent) or reached its end.
    fn fill(&mut self) -> io::Result<bool> {
        if !self.pending_in.is_empty() {
            // Rare (rustls's plaintext buffer was full): the buffer is not
            // kept, so an idle connection holds none.
            let records = std::mem::take(&mut self.pending_in);
            self.absorb(&records)?;
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = match sys::recv(self.fd.as_raw_fd(), &mut scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.spent = true;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
            self.spent = n < scratch.len();
            if n == 0 {
                self.eof = true;
                // Tells rustls the stream ended, so that a truncated stream
                // is told apart from a close_notify.
                let _ = self.conn.read_tls(&mut &[][..]);
                return Ok(false);
            }
            if let State::Handshaking { received } = &mut self.state {
                if !*received && scratch[0].is_ascii_uppercase() {
                    // A TLS record starts with its type (22 for a
                    // handshake); an HTTP request with its method.
                    return Err(self.refuse_plain_http());
                }
                *received = true;
            }
            self.absorb(&scratch[..n])?;
            Ok(true)
        })
    }

    /// Writes queued records to the socket until none are left.
    fn write_out(&mut self) -> io::Result<()> {
        let mut socket = Socket(self.fd.as_raw_fd());
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Acknowledges plaintext handed over earlier once its records are out.
    fn ack(&mut self, offered: usize) -> io::Result<usize> {
        self.write_out()?;
        let n = self.unacked.min(offered);
        self.unacked = 0;
        Ok(n)
    }

    /// Encrypts `plain` (one chunk at most) and writes the records; `Ok(n)`
    /// once they are all out.
    fn encrypt_and_write(&mut self, plain: &[u8], more: bool) -> io::Result<usize> {
        let n = self.conn.writer().write(&plain[..plain.len().min(CHUNK)])?;
        if more {
            // The rest follows at once: both leave in one write.
            return Ok(n);
        }
        self.unacked = n;
        self.ack(n)
    }
}

/// The socket as rustls writes records to it: one sendmsg for all it queued
/// (client connections here, upstream ones in upstream/tls.rs).
pub(crate) struct Socket(pub(crate) RawFd);

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send(self.0, buf, false)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        sys::send_vectored(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Tls {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => {
                    self.plaintext_left = n == buf.len() && n > 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The client closed without close_notify: for HTTP's own
                // framing that is an end of stream like any other.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            self.plaintext_left = false;
            if !self.fill()? {
                if self.eof {
                    return Ok(0);
                }
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    fn read_spent(&self) -> bool {
        self.spent && self.pending_in.is_empty() && !self.plaintext_left
    }

    fn send(&mut self, buf: &[u8], more: bool) -> io::Result<usize> {
        if self.unacked > 0 {
            return self.ack(buf.len());
        }
        self.encrypt_and_write(buf, more)
    }

    fn send_file(&mut self, file: RawFd, offset: &mut u64, len: usize) -> io::Result<usize> {
        let n = if self.unacked > 0 {
            self.ack(len)?
        } else {
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let want = len.min(scratch.len());
                let read = sys::pread(file, &mut scratch[..want], *offset)?;
                if read == 0 {
                    return Ok(0);
                }
                self.encrypt_and_write(&scratch[..read], false)
            })?
        };
        *offset += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()
    }

    fn cork(&mut self, _on: bool) -> bool {
        // Records already leave in chunks of up to 64 KiB.
        false
    }

    fn shutdown_write(&mut self) {
        if matches!(self.state, State::Established { .. }) && !self.closing {
            self.closing = true;
            self.conn.send_close_notify();
            let _ = self.write_out();
        }
        sys::shutdown_write(self.fd.as_raw_fd());
    }

    fn peek(&self) -> Peek {
        if !self.pending_in.is_empty() || self.plaintext_left {
            return Peek::Data;
        }
        sys::peek(self.fd.as_raw_fd())
    }

    fn relay_from(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        relay.pump_through(|buf| sys::recv(upstream, buf), |buf| self.send(buf, false), budget)
    }

    fn relay_to(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        relay.pump_through(|buf| self.recv(buf), |buf| sys::send(upstream, buf, false), budget)
    }
}

impl Drop for Tls {
    /// An established connection says close_notify before it closes (one
    /// write, without waiting: the close follows either way).
    fn drop(&mut self) {
        if matches!(self.state, State::Established { .. }) && !self.closing && !self.record_error {
            self.conn.send_close_notify();
            let _ = self.write_out();
        }
    }
}
