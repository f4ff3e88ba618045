//! The client's side of a connection: its transport, its input and output
//! buffers, its deadline and what the access log needs of the response in
//! flight. The connection's own phases and an exchange on it both reach the
//! client through this.

use crate::access::PendingEntry;
use crate::buffer_pool::ReadBuf;
use crate::context::Ctx;
use crate::exchange::Downstream;
use crate::outcome::{client_io, Outcome};
use crate::relay::{Pump, Relay, RelayError};
use crate::timer_wheel::Deadline;
use crate::token::{ConnId, ExchangeId};
use crate::transport::{Client, Transport};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tine_http::chunked::{ChunkedDecoder, ChunkedError, Output};
use tine_http::forward;
use tine_http::response::AddedHeaders;
use tine_http::response_head::{ResponseBody, UpstreamHead};
use tine_net::sys::Peek;

pub struct ClientIo {
    pub(super) id: ConnId,
    /// The client's socket, behind the transport seam.
    pub(super) transport: Client,
    /// The client: the socket's peer, or the address a trusted load
    /// balancer's PROXY protocol header named.
    pub(super) peer: Option<SocketAddr>,
    /// Unread input; `None` while idle so an idle connection holds no buffer.
    pub(super) rbuf: Option<ReadBuf>,
    /// The response head (and small bodies) being written; empty while idle.
    pub(super) wbuf: Vec<u8>,
    pub(super) wpos: usize,
    /// The head of a reply of tine's own, built here by its handler and
    /// framed by the session (kept to reuse its buffer).
    pub(super) head: tine_http::message::ResponseHead,
    /// Body bytes the response in flight sends in all.
    pub(super) body_len: u64,
    /// The access-log line of the response in flight, when logging.
    pub(super) access: Option<Box<PendingEntry>>,
    /// The connection stays open after the response in flight.
    pub(super) keep_alive: bool,
    /// The request in flight is HTTP/1.0's: a proxied chunked response
    /// reaches it decoded, ended by the close.
    pub(super) http10: bool,
    /// Edge-triggered readiness not yet consumed by a read that hit EAGAIN.
    pub(super) readable: bool,
    /// The client shut down its side since this was last looked at.
    pub(super) client_fin: bool,
    /// When the current phase times out.
    pub(super) timer: Deadline,
}

impl ClientIo {
    pub(super) fn new(id: ConnId, transport: Client, peer: Option<SocketAddr>) -> Self {
        ClientIo {
            id,
            transport,
            peer,
            rbuf: None,
            wbuf: Vec::new(),
            wpos: 0,
            head: Default::default(),
            body_len: 0,
            access: None,
            keep_alive: true,
            http10: false,
            readable: false,
            client_fin: false,
            timer: Deadline::default(),
        }
    }

    /// The connection, and its one exchange at a time: index 0, which the
    /// connection's own deadline and its exchange's share.
    pub(super) fn exchange(&self) -> ExchangeId {
        ExchangeId { conn: self.id, index: 0 }
    }

    /// The connection's deadline is now `timeout` from this turn.
    pub(super) fn arm(&mut self, ctx: &mut Ctx, timeout: Duration) {
        let tick = ctx.timers.wheel.deadline(ctx.clock.now, timeout);
        let owner = self.exchange();
        ctx.timers.wheel.arm(&mut self.timer, owner, tick);
    }
}

/// An HTTP/1.1 connection's client, as an exchange sees it: the response
/// is framed here, in HTTP/1.1's way (its `Connection` header, chunked
/// bodies for an HTTP/1.1 client, decoded ones ended by the close for an
/// HTTP/1.0 client).
impl Downstream for ClientIo {
    fn owner(&self) -> ExchangeId {
        self.exchange()
    }

    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        let local = tine_net::sys::local_addr(self.transport.socket()).ok()?;
        Some((self.peer?, local))
    }

    fn arm(&mut self, ctx: &mut Ctx, timeout: Duration) {
        ClientIo::arm(self, ctx, timeout);
    }

    fn unread(&self) -> &[u8] {
        self.rbuf.as_ref().map_or(&[], ReadBuf::filled)
    }

    fn consume(&mut self, n: usize) {
        if let Some(buf) = self.rbuf.as_mut() {
            buf.consume(n);
        }
    }

    fn read_more(&mut self, ctx: &mut Ctx) -> io::Result<usize> {
        let buf = self.rbuf.get_or_insert_with(|| ctx.pool.read_buf());
        let n = self.transport.recv(buf.spare())?;
        buf.commit(n);
        ctx.stats.slot.bytes_received.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    fn take_end_of_stream(&mut self) -> bool {
        std::mem::take(&mut self.client_fin)
    }

    fn has_left(&self) -> bool {
        self.unread().is_empty() && self.transport.peek() == Peek::End
    }

    fn emit_continue(&mut self) {
        self.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    fn emit_head(&mut self, head: &UpstreamHead<'_, '_>, added: &AddedHeaders, draining: bool) -> Output {
        if head.body == ResponseBody::UntilClose || head.code == 101 {
            self.keep_alive = false;
        }
        if self.http10 && head.body == ResponseBody::Chunked {
            // Decoded for an HTTP/1.0 client, the body ends with the connection.
            self.keep_alive = false;
        }
        let client = forward::ClientSide { http10: self.http10, keep_alive: self.keep_alive && !draining };
        forward::client_response_head(&mut self.wbuf, head, client, added);
        self.body_len = 0;
        self.wpos = 0;
        if self.http10 {
            Output::Raw
        } else {
            Output::Chunked
        }
    }

    fn emit_body(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
        self.body_len += bytes.len() as u64;
    }

    fn emit_trailers(&mut self, _trailers: &http::HeaderMap) {
        // HTTP/1.1 clients of a proxy rarely ask for trailers (TE:
        // trailers) and gRPC never comes this way: the body ends without.
    }

    fn emit_chunked(&mut self, decoder: &mut ChunkedDecoder, input: &[u8]) -> Result<usize, ChunkedError> {
        let before = self.wbuf.len();
        let taken = decoder.decode(input, &mut self.wbuf)?;
        self.body_len += (self.wbuf.len() - before) as u64;
        Ok(taken)
    }

    fn takes_splice(&self) -> bool {
        true
    }

    fn relay_body(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        let before = relay.moved;
        let pumped = self.transport.relay_from(relay, upstream, budget);
        self.body_len += relay.moved - before;
        pumped
    }

    fn relay_from(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        self.transport.relay_from(relay, upstream, budget)
    }

    fn relay_to(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        self.transport.relay_to(relay, upstream, budget)
    }

    fn flush(&mut self, ctx: &mut Ctx) -> Option<Outcome> {
        while self.wpos < self.wbuf.len() {
            match self.transport.send(&self.wbuf[self.wpos..], false) {
                Ok(n) => {
                    self.wpos += n;
                    ctx.stats.slot.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                Err(e) => {
                    if let Some(outcome) = client_io(e) {
                        return Some(outcome);
                    }
                }
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        None
    }

    fn has_pending_output(&self) -> bool {
        !self.wbuf.is_empty()
    }

    fn shutdown_write(&mut self) {
        self.transport.shutdown_write();
    }

    fn log_status(&mut self, code: u16) {
        if let Some(entry) = self.access.as_mut() {
            entry.set_status(code);
        }
    }
}
