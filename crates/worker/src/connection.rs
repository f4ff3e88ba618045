//! One client connection, as an explicit state machine:
//!
//! ```text
//!            accept (read at once: the listener defers until the request is there)
//!              |
//!   [ProxyHeader] -> [Handshake: TLS; ALPN chooses the session]
//!              |
//!              v
//!   +----> ReadHead --(route)--> Send(Sending) ------(done, keep-alive)-----+
//!   |          |      \--------> Proxy(Exchange) --> (Send) ---------------+
//!   |   (bad head: error page)                  (done, close)              |
//!   |          +--> Send ---------+--> client asked, nothing unread: closed |
//!   |                             +--> Linger { drained } --> closed        |
//!   +----------------------------------------------------------------------+
//! ```
//!
//! Sockets are edge-triggered, so the connection remembers readability itself and
//! reads until EAGAIN. Pipelined requests are answered one at a time, in order,
//! straight from the read buffer. Bodies of requests that take none are read and
//! thrown away before the next head is parsed, so they can never be misread as a
//! request. After the last response of a connection that the client asked to
//! close, with nothing of its input unread, the connection simply closes.
//! Otherwise the write side is shut and the rest of the client's input is
//! drained for a moment (a lingering close), so that unread input does not
//! turn the close into a reset that destroys the response in flight.

mod client_io;
mod http2;
mod proxied;
mod stream;

pub use crate::exchange::Exchange;

use crate::access::PendingEntry;
use crate::client_limits::{Check, ConnHolds, Refusal};
use crate::context::{Ctx, Rejection};
use crate::exchange::Downstream;
pub use crate::framing::{plan_framing, reply_to, Discard, DiscardError, Started};
use crate::outcome::client_io;
pub use crate::outcome::{CloseReason, Outcome};
use crate::responses::{error_page, FileBody, ReplyBody, ReplyTo};
use crate::static_files;
use crate::timer_wheel::Deadline;
use crate::token::ConnId;
use crate::transport::{Client, Transport};
use client_io::ClientIo;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tine_http::message::{write_http1_head, ResponseHead};
use tine_http::request::{Method, Request, Version};
use tine_http::response::{Persistence, Status};
use tine_http::{location, parse_request, HttpError};

use crate::buffer_pool::ReadBuf;

/// Most body bytes one connection sends per turn of the loop before letting
/// others run, so one fast reader of a large file cannot starve the rest.
const SEND_BUDGET: usize = 1 << 20;
/// Bodies at least this large are sent with the socket corked (TCP_CORK), so
/// that the segments of every sendfile call leave full; for smaller ones the
/// two extra system calls cost more than they save, and MSG_MORE on the head
/// is enough.
const CORK_BODIES_FROM: u64 = 256 * 1024;
/// How long a closing connection's leftover input is drained.
const LINGER: Duration = Duration::from_secs(2);
/// How much leftover input a closing connection drains at most.
const LINGER_BYTES: u64 = 1 << 20;

/// When a connection wants to be driven for an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive {
    Now,
    /// Once the turn's events are all dispatched: an HTTP/2 connection
    /// whose streams' upstreams answered in one batch frames all their
    /// responses and writes them to the client at once. `first`: it was
    /// not already waiting for the batch to end.
    AfterBatch {
        first: bool,
    },
}

/// What the connection is doing; a phase's own data lives in its variant.
pub enum Phase {
    /// A listener behind a load balancer: the PROXY protocol header comes
    /// first, read from the socket itself before any transport (TLS
    /// included) sees a byte. `trusted`: the peer may (and must) send one.
    ProxyHeader { trusted: bool },
    /// A TLS connection's handshake; what follows it is `then`, or for an
    /// HTTP listener the session the protocol agreed by ALPN names.
    Handshake(AfterHandshake),
    /// Waiting for (or reading) a request head.
    ReadHead,
    /// Writing a response: the output buffer, then a file range if any.
    Send(Sending),
    /// An exchange with an upstream server (see exchange.rs, and proxied.rs
    /// for this connection's side of it).
    Proxy(Box<Exchange>),
    /// An HTTP/2 connection: its engine and its streams (see http2.rs).
    Http2(Box<http2::Http2Session>),
    /// A `[[stream]]` connection relayed raw to its upstream (see stream.rs).
    Stream(Box<stream::StreamRelay>),
    /// The write side is shut; the client's leftover input is drained for a
    /// moment so that it does not turn the close into a reset.
    Linger { drained: u64 },
    /// A request a client limit holds back (`delay = true`): its head waits
    /// in the read buffer until the connection's deadline, when it is
    /// answered.
    Delayed,
}

/// What a TLS connection becomes once its handshake completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterHandshake {
    /// An HTTP listener: the session for the protocol agreed by ALPN.
    Http,
    /// A `[[stream]]` listener that terminates TLS: the relay to its upstream.
    Stream(usize),
}

/// The protocols an HTTP session can speak, by their ALPN names; a client
/// that offered no ALPN speaks HTTP/1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// An ACME server's tls-alpn-01 validation: the handshake (with the
    /// challenge certificate) was all it wanted (RFC 8737 section 3).
    AcmeTls,
}

impl Protocol {
    pub fn from_alpn(alpn: Option<&[u8]>) -> Option<Protocol> {
        match alpn {
            None | Some(b"http/1.1") => Some(Protocol::Http1),
            Some(b"h2") => Some(Protocol::Http2),
            Some(b"acme-tls/1") => Some(Protocol::AcmeTls),
            Some(_) => None,
        }
    }
}

/// Where an HTTP connection starts (after any PROXY protocol header): its
/// TLS handshake, or its first request.
fn first_http_phase(transport: &Client) -> Phase {
    if transport.is_tls() {
        Phase::Handshake(AfterHandshake::Http)
    } else {
        Phase::ReadHead
    }
}

/// A response on its way out: its head (and a small body) are in the
/// connection's output buffer; `file` is the range sent after them.
pub struct Sending {
    file: Option<FileBody>,
    /// TCP_CORK is set for this response.
    corked: bool,
    /// When the response started going out, and the bytes that went out
    /// since: what `min_send_rate` holds a reader to.
    started: Instant,
    sent: u64,
}

impl Sending {
    /// A response wholly in the output buffer.
    fn buffered(now: Instant) -> Self {
        Sending { file: None, corked: false, started: now, sent: 0 }
    }

    /// How long the client may still take before it has read too slowly:
    /// the send timeout as a grace, plus the time its bytes so far were
    /// worth at `min_rate` bytes per second, counted from the start.
    /// `None` without a minimum rate.
    fn rate_allowance(&self, min_rate: u64, grace: Duration, now: Instant) -> Option<Duration> {
        if min_rate == 0 {
            return None;
        }
        let earned = Duration::from_secs_f64(self.sent as f64 / min_rate as f64);
        Some((grace + earned).saturating_sub(now.saturating_duration_since(self.started)))
    }
}

pub struct Conn {
    /// The client's side of the connection: what an exchange reaches it by.
    io: ClientIo,
    phase: Phase,
    /// The body of the last request, still to read and throw away.
    discard: Discard,
    /// The client itself asked to close after this response (`Connection:
    /// close`, or HTTP/1.0 without keep-alive), so it sends nothing more.
    client_closes: bool,
    /// Connection accepted on the admin listener: answers /metrics and
    /// /stats.json instead of files.
    admin: bool,
    /// When the first byte of the request in progress arrived.
    request_started: Option<Instant>,
    served: u64,
    /// When the connection last went idle between requests.
    idle_since: Instant,
    /// The request in the buffer waited out a client limit's delay.
    limits_passed: bool,
    /// What the connection counts against client limits of connections.
    limit_holds: ConnHolds,
}

impl Conn {
    pub fn new(id: ConnId, transport: Client, peer: Option<SocketAddr>, admin: bool, ctx: &mut Ctx) -> Self {
        let phase = first_http_phase(&transport);
        let mut conn = Conn {
            io: ClientIo::new(id, transport, peer),
            phase,
            discard: Discard::Nothing,
            client_closes: false,
            admin,
            request_started: None,
            served: 0,
            idle_since: ctx.clock.now,
            limits_passed: false,
            limit_holds: ConnHolds::default(),
        };
        conn.io.arm(ctx, ctx.timers.timeouts.header);
        conn
    }

    /// The deadline of exchange `index` (an HTTP/1.1 connection's one
    /// exchange shares the connection's own, index 0; an HTTP/2
    /// connection's streams have their own), for the timer wheel.
    pub fn timer(&mut self, index: u32) -> Option<&mut Deadline> {
        match (index, &mut self.phase) {
            (0, _) => Some(&mut self.io.timer),
            (_, Phase::Http2(session)) => session.timer(index),
            _ => None,
        }
    }

    /// True when the connection is between requests with nothing buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::ReadHead)
            && !self.discard.pending()
            && self.io.rbuf.as_ref().is_none_or(ReadBuf::is_empty)
    }

    /// Since when the connection has been an idle keep-alive connection:
    /// it has been served and waits for its next request with nothing read.
    /// These are the connections a worker at its limit closes first.
    pub fn idle_keep_alive_since(&self) -> Option<Instant> {
        (self.served > 0 && self.is_idle()).then_some(self.idle_since)
    }

    pub fn mark_readable(&mut self) {
        self.io.readable = true;
    }

    pub fn mark_client_fin(&mut self) {
        self.io.client_fin = true;
    }

    /// An event for the upstream connection that exchange `index` of this
    /// connection holds (an HTTP/1.1 connection has one at a time); says
    /// when the connection wants to be driven for it.
    pub fn on_upstream_event(&mut self, index: u32, peer_closed: bool) -> Drive {
        match &mut self.phase {
            Phase::Proxy(exchange) if peer_closed => exchange.note_upstream_fin(),
            Phase::Http2(session) => return session.on_upstream_event(index, peer_closed),
            _ => {}
        }
        Drive::Now
    }

    /// The deadline of exchange `index` passed: usually the connection
    /// closes, but an upstream exchange may move on to another server or
    /// answer 504, and an HTTP/2 stream's deadline is the stream's alone.
    pub fn on_deadline(&mut self, index: u32, ctx: &mut Ctx) -> Outcome {
        match std::mem::replace(&mut self.phase, Phase::ReadHead) {
            Phase::Http2(session) if index > 0 => self.http2_stream_deadline(session, index, ctx),
            Phase::Http2(session) => self.http2_deadline(session, ctx),
            Phase::Proxy(exchange) => self.proxy_deadline(exchange, ctx),
            Phase::Stream(relay) => self.stream_deadline(relay, ctx),
            Phase::ProxyHeader { .. } => {
                ctx.stats.slot.proxy_refused_timeout.fetch_add(1, Relaxed);
                Outcome::Close(CloseReason::Timeout)
            }
            Phase::Delayed => {
                // The delay is over: the held request is answered now,
                // without being counted again.
                self.limits_passed = true;
                self.drive(ctx)
            }
            other => {
                self.phase = other;
                Outcome::Close(self.timeout_reason(ctx.draining))
            }
        }
    }

    /// A connection accepted on a `[[stream]]` listener starts as a tunnel.
    pub fn begin_stream(&mut self, stream: usize, ctx: &mut Ctx) -> Outcome {
        if self.io.transport.is_tls() {
            self.phase = Phase::Handshake(AfterHandshake::Stream(stream));
        } else {
            self.start_stream(stream, ctx);
        }
        self.drive(ctx)
    }

    /// Why the connection closes when its deadline passes.
    pub fn timeout_reason(&self, draining: bool) -> CloseReason {
        match self.phase {
            Phase::Linger { .. } => CloseReason::Done,
            // The keep-alive grace of a graceful stop ran out.
            Phase::ReadHead if draining && self.is_idle() => CloseReason::Drained,
            _ => CloseReason::Timeout,
        }
    }

    /// A graceful stop began: an idle connection may still send one more request
    /// (it will be answered with `Connection: close`) within the grace period.
    /// An HTTP/2 connection is told GOAWAY at once: true when it must be
    /// driven for that to go out.
    pub fn start_grace(&mut self, ctx: &mut Ctx) -> bool {
        if let Phase::Http2(session) = &mut self.phase {
            session.start_grace();
            ctx.stats.slot.http2_goaway_graceful.fetch_add(1, Relaxed);
            return true;
        }
        if self.is_idle() {
            self.io.arm(ctx, ctx.timers.timeouts.keepalive_grace);
        }
        false
    }

    /// Before the connection is dropped: logs a response cut short, ends any
    /// upstream exchange (its idle upstream connections stay in the pool), and
    /// gives the buffers back.
    pub fn release(&mut self, ctx: &mut Ctx) {
        ctx.timers.wheel.disarm(&mut self.io.timer);
        ctx.client_limits.release(std::mem::take(&mut self.limit_holds));
        self.log_access(ctx);
        match std::mem::replace(&mut self.phase, Phase::ReadHead) {
            Phase::Proxy(exchange) => exchange.abandon(ctx),
            Phase::Stream(relay) => self.release_stream(relay, ctx),
            Phase::Http2(mut session) => session.release(ctx, self.io.peer),
            _ => {}
        }
        self.release_buffers(ctx);
        ctx.proxy.upstreams.client_gone(self.io.id, &ctx.stats);
    }

    /// Between requests: buffers go back to the pool so an idle connection
    /// holds none.
    fn release_buffers(&mut self, ctx: &mut Ctx) {
        if let Some(buf) = self.io.rbuf.take() {
            ctx.pool.put_read(buf);
        }
        if self.io.wbuf.capacity() > 0 {
            ctx.pool.put_write(std::mem::take(&mut self.io.wbuf));
        }
    }

    /// Runs the state machine until the socket blocks, the turn's budget is
    /// spent, or the connection is done.
    pub fn drive(&mut self, ctx: &mut Ctx) -> Outcome {
        // What the transport queued itself (a TLS handshake's flight) goes
        // out first; what cannot go yet waits for the socket to drain.
        if let Err(e) = self.io.transport.flush() {
            if e.kind() != io::ErrorKind::WouldBlock {
                return client_io(e).unwrap_or(Outcome::Close(CloseReason::Error));
            }
        }
        let outcome = self.run_phases(ctx);
        if let Some(done) = self.io.transport.tls().and_then(|t| t.take_handshake()) {
            ctx.stats.count_handshake(done);
        }
        outcome
    }

    /// The client's socket, for TCP_INFO.
    pub fn client_socket(&self) -> std::os::fd::RawFd {
        self.io.transport.socket()
    }

    /// Counts how a TLS connection ended, when that is worth counting: a
    /// handshake that failed (by class), or a bad record after it.
    pub fn count_tls_end(&mut self, reason: CloseReason, ctx: &Ctx) {
        let Some(tls) = self.io.transport.tls() else { return };
        if let Some(failure) = tls.failure(reason == CloseReason::Timeout) {
            ctx.stats.count_tls_failure(failure);
        } else if tls.record_error() {
            ctx.stats.slot.tls_record_errors.fetch_add(1, Relaxed);
        }
    }

    fn run_phases(&mut self, ctx: &mut Ctx) -> Outcome {
        let mut budget = SEND_BUDGET;
        loop {
            // Each phase's step runs with the phase taken out of the
            // connection and sets the phase that follows (read_head runs in
            // ReadHead, the placeholder; the others put theirs back).
            let step = match std::mem::replace(&mut self.phase, Phase::ReadHead) {
                Phase::ProxyHeader { trusted } => self.read_proxy_header(trusted, ctx),
                Phase::Handshake(then) => self.handshake(then, ctx),
                Phase::ReadHead => self.read_head(ctx),
                Phase::Send(sending) => self.send(sending, ctx, &mut budget),
                Phase::Proxy(exchange) => self.drive_proxy(exchange, ctx, &mut budget),
                Phase::Http2(session) => self.drive_http2(session, ctx),
                Phase::Stream(relay) => self.drive_stream(relay, ctx, &mut budget),
                Phase::Linger { drained } => self.linger(drained),
                Phase::Delayed => {
                    self.phase = Phase::Delayed;
                    Some(Outcome::Wait)
                }
            };
            if let Some(outcome) = step {
                return outcome;
            }
        }
    }

    /// What the connection counted against client limits at accept, given
    /// back when it closes.
    pub fn hold_limits(&mut self, holds: ConnHolds) {
        self.limit_holds = holds;
    }

    /// Starts the connection with a PROXY protocol header to read (a
    /// listener behind a load balancer), within its own short timeout.
    pub fn expect_proxy_header(&mut self, trusted: bool, ctx: &mut Ctx) {
        self.phase = Phase::ProxyHeader { trusted };
        self.io.arm(ctx, ctx.proxy_headers.settings.timeout);
    }

    /// A trusted peer's header is measured with MSG_PEEK and exactly its
    /// bytes are then read, so that the transport (TLS too) starts at the
    /// client's first byte; the address it carries becomes the client's.
    /// An untrusted peer is only looked at: one that sends a header is
    /// refused, any other goes on as a client of its own.
    fn read_proxy_header(&mut self, trusted: bool, ctx: &mut Ctx) -> Option<Outcome> {
        use tine_http::proxy_protocol::{
            begins_like_header, parse, Parsed, ProxyHeaderError, MAX_HEADER_BYTES,
        };
        let fd = self.io.transport.socket();
        let mut head = [0u8; MAX_HEADER_BYTES];
        let n = match tine_net::sys::peek_into(fd, &mut head) {
            Ok(0) => return Some(Outcome::Close(CloseReason::PeerClosed)),
            Ok(n) => n,
            Err(e) => {
                self.phase = Phase::ProxyHeader { trusted };
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.io.readable = false;
                }
                return client_io(e);
            }
        };
        let seen = &head[..n];
        let slot = ctx.stats.slot;
        if !trusted {
            return match begins_like_header(seen) {
                Some(true) => {
                    log::info!(
                        "connection from {:?}: a PROXY protocol header from an untrusted source",
                        self.io.peer
                    );
                    slot.proxy_refused_untrusted.fetch_add(1, Relaxed);
                    Some(Outcome::Close(CloseReason::Error))
                }
                Some(false) => self.begin_requests(ctx),
                None => self.wait_for_more_header(trusted),
            };
        }
        match parse(seen) {
            Ok(Parsed::Header { len, client }) => {
                if let Err(e) = tine_net::sys::recv(fd, &mut head[..len]).and_then(|got| {
                    (got == len).then_some(()).ok_or_else(|| io::Error::other("the header shrank"))
                }) {
                    return client_io(e);
                }
                slot.proxy_headers.fetch_add(1, Relaxed);
                ctx.stats.slot.bytes_received.fetch_add(len as u64, Relaxed);
                if let Some(client) = client {
                    self.io.peer = Some(client);
                    // Behind a balancer, connections count against the
                    // client it names, now that it is known.
                    if ctx.client_limits.counts_connections() {
                        match ctx.client_limits.admit_connection(client.ip()) {
                            Some(holds) => self.limit_holds = holds,
                            None => return Some(Outcome::Close(CloseReason::Done)),
                        }
                    }
                }
                // Bytes after the header were left in place: read them now.
                self.io.readable = n > len || self.io.readable;
                self.begin_requests(ctx)
            }
            Ok(Parsed::Incomplete) => self.wait_for_more_header(trusted),
            Err(e) => {
                log::info!("connection from {:?}: {e}", self.io.peer);
                let counter = match e {
                    ProxyHeaderError::Missing => &slot.proxy_refused_missing,
                    ProxyHeaderError::TooLarge | ProxyHeaderError::Malformed(_) => {
                        &slot.proxy_refused_malformed
                    }
                };
                counter.fetch_add(1, Relaxed);
                Some(Outcome::Close(CloseReason::Error))
            }
        }
    }

    /// Part of a header (or of what may be one) has come: wait for the
    /// rest, which edge-triggered epoll reports when it arrives.
    fn wait_for_more_header(&mut self, trusted: bool) -> Option<Outcome> {
        self.phase = Phase::ProxyHeader { trusted };
        self.io.readable = false;
        Some(Outcome::Wait)
    }

    /// The header is dealt with: the TLS handshake or the requests follow,
    /// under the header timeout.
    fn begin_requests(&mut self, ctx: &mut Ctx) -> Option<Outcome> {
        self.phase = first_http_phase(&self.io.transport);
        self.io.arm(ctx, ctx.timers.timeouts.header);
        None
    }

    /// Advances the TLS handshake; once it is complete, the connection
    /// becomes what `then` says, an HTTP listener's by the protocol agreed.
    fn handshake(&mut self, then: AfterHandshake, ctx: &mut Ctx) -> Option<Outcome> {
        use crate::transport::HandshakeProgress;
        let Some(tls) = self.io.transport.tls() else {
            return self.after_handshake(then, Some(Protocol::Http1), ctx);
        };
        if !self.io.readable {
            self.phase = Phase::Handshake(then);
            return Some(Outcome::Wait);
        }
        match tls.advance_handshake() {
            Ok(HandshakeProgress::Done) => {
                let protocol = Protocol::from_alpn(tls.alpn_protocol());
                // Records after the handshake's last may hold the first request.
                self.io.readable = true;
                self.after_handshake(then, protocol, ctx)
            }
            Ok(HandshakeProgress::NeedMore) => {
                self.phase = Phase::Handshake(then);
                self.io.readable = false;
                Some(Outcome::Wait)
            }
            Ok(HandshakeProgress::Closed) => Some(Outcome::Close(CloseReason::PeerClosed)),
            Err(e) => {
                self.phase = Phase::Handshake(then);
                client_io(e)
            }
        }
    }

    /// The protocol choice point: what serves the connection now.
    fn after_handshake(
        &mut self,
        then: AfterHandshake,
        protocol: Option<Protocol>,
        ctx: &mut Ctx,
    ) -> Option<Outcome> {
        match (then, protocol) {
            (AfterHandshake::Stream(stream), _) => self.start_stream(stream, ctx),
            (AfterHandshake::Http, Some(Protocol::Http1)) => self.phase = Phase::ReadHead,
            (AfterHandshake::Http, Some(Protocol::Http2)) => self.start_http2(&[], ctx),
            (AfterHandshake::Http, Some(Protocol::AcmeTls)) => {
                return Some(Outcome::Close(CloseReason::Done))
            }
            (AfterHandshake::Http, None) => {
                log::warn!("connection {:?}: ALPN agreed on a protocol tine does not serve", self.io.id);
                return Some(Outcome::Close(CloseReason::Error));
            }
        }
        None
    }

    /// Reads and answers requests: what is left of the last request's body
    /// is thrown away first, then a complete head in the buffer is answered,
    /// else more is read from the client.
    fn read_head(&mut self, ctx: &mut Ctx) -> Option<Outcome> {
        if self.discard.pending() && self.throw_away_body(ctx) {
            return None;
        }
        if self.answer_buffered_request(ctx) {
            return None;
        }
        self.fill_read_buffer(ctx)
    }

    /// Drops what the buffer holds of a body being thrown away; true when
    /// it cannot be framed, and the connection now lingers to its close.
    fn throw_away_body(&mut self, ctx: &mut Ctx) -> bool {
        let Some(buf) = self.io.rbuf.as_mut() else { return false };
        match self.discard.consume(buf.filled()) {
            Ok(n) => {
                buf.consume(n);
                false
            }
            Err(e) => {
                // The response went out whole; what follows cannot be
                // framed, so the connection ends without reading it as
                // a request (lingering, so that it ends without a reset).
                log::debug!("connection {:?}: the discarded body {e}; closing", self.io.id);
                buf.consume(usize::MAX);
                self.discard = Discard::Nothing;
                self.io.transport.shutdown_write();
                self.phase = Phase::Linger { drained: 0 };
                self.io.arm(ctx, LINGER);
                true
            }
        }
    }

    /// Answers the request whose head is complete in the read buffer, if
    /// there is one: true when it was answered or refused, and the phase
    /// has moved on.
    fn answer_buffered_request(&mut self, ctx: &mut Ctx) -> bool {
        if self.discard.pending() {
            return false;
        }
        let mut buf = match self.io.rbuf.take() {
            Some(buf) if !buf.is_empty() => buf,
            other => {
                self.io.rbuf = other;
                return false;
            }
        };
        if self.may_speak_h2c(ctx) {
            let seen = buf.filled();
            let n = seen.len().min(http2::PREFACE.len());
            if seen[..n] == http2::PREFACE[..n] {
                if n == http2::PREFACE.len() {
                    self.start_http2(seen, ctx);
                    buf.consume(usize::MAX);
                    self.io.rbuf = Some(buf);
                    return true;
                }
                // Part of the preface: wait for the rest.
                self.io.rbuf = Some(buf);
                return false;
            }
        }
        let mut slots = tine_http::request::field_slots();
        let answered = match parse_request(buf.filled(), &mut slots, &ctx.http.limits) {
            Ok(Some(req)) => {
                let head_len = req.http1.head_len;
                if self.start_request(&req, ctx) {
                    buf.consume(head_len);
                }
                true
            }
            Err(e) => {
                self.reject(ctx, e, &mut buf);
                true
            }
            Ok(None) => false,
        };
        self.io.rbuf = Some(buf);
        answered
    }

    /// Routes a request once and starts its answer: an exchange with an
    /// upstream, or a reply of tine's own on its way out. False when a
    /// client limit holds it back: its head stays in the buffer, to be
    /// answered when the delay is over.
    fn start_request(&mut self, req: &Request<'_>, ctx: &mut Ctx) -> bool {
        let answer = answer(req, self.arrival(), ctx, &mut self.io.head);
        if let Answer::Wait(wait) = answer {
            self.phase = Phase::Delayed;
            self.io.arm(ctx, wait);
            return false;
        }
        if self.io.wbuf.capacity() == 0 {
            self.io.wbuf = ctx.pool.write_buf();
        }
        self.client_closes = !req.http1.keep_alive;
        self.io.http10 = req.version == Version::Http10;
        if ctx.access_log.is_some() {
            self.io.access = Some(PendingEntry::capture(req, 0));
        }
        match answer {
            Answer::Proxy(exchange) => {
                self.io.keep_alive = req.http1.keep_alive && !ctx.draining;
                self.phase = Phase::Proxy(exchange);
                // An end of stream seen before this request was read
                // is the client's half-close, not a change of mind.
                self.io.client_fin = false;
            }
            Answer::Reply(started) => self.begin_send(ctx, started),
            Answer::Wait(_) => {}
        }
        true
    }

    /// A plain connection's first bytes may be the HTTP/2 preface (h2c with
    /// prior knowledge, when configured; never on the admin listener).
    fn may_speak_h2c(&self, ctx: &Ctx) -> bool {
        ctx.http.h2c && self.served == 0 && !self.admin && !self.io.transport.is_tls()
    }

    /// What routing needs to know of the connection a request came on.
    fn arrival(&mut self) -> Arrival {
        Arrival {
            admin: self.admin,
            tls: self.io.transport.is_tls(),
            peer: self.io.peer.map(|p| p.ip()),
            limits_passed: std::mem::take(&mut self.limits_passed),
        }
    }

    /// Reads more of the client's input into the buffer (none is held while
    /// the connection idles).
    fn fill_read_buffer(&mut self, ctx: &mut Ctx) -> Option<Outcome> {
        if !self.io.readable {
            if self.is_idle() {
                self.release_buffers(ctx);
            }
            return Some(Outcome::Wait);
        }
        let buf = self.io.rbuf.get_or_insert_with(|| ctx.pool.read_buf());
        let was_empty = buf.is_empty();
        let spare = buf.spare();
        if spare.is_empty() {
            // The parser refuses a full buffer as too large; never spin on one.
            return Some(Outcome::Close(CloseReason::Error));
        }
        match self.io.transport.recv(spare) {
            Ok(0) => Some(Outcome::Close(CloseReason::PeerClosed)),
            Ok(n) => {
                buf.commit(n);
                // Skip the read that would only say EAGAIN (see read_spent).
                if self.io.transport.read_spent() {
                    self.io.readable = false;
                }
                ctx.stats.slot.bytes_received.fetch_add(n as u64, Relaxed);
                if was_empty && self.request_started.is_none() {
                    // The turn began when epoll reported these bytes: the
                    // closest time to their arrival, and no clock read.
                    self.request_started = Some(ctx.clock.now);
                }
                if was_empty && self.served > 0 && !self.discard.pending() {
                    // A new request began on a kept-alive connection: from now
                    // on the head must arrive within the header timeout.
                    self.io.arm(ctx, ctx.timers.timeouts.header);
                }
                None
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Loop once more: read_head then decides between Wait and Close.
                self.io.readable = false;
                None
            }
            Err(e) => client_io(e),
        }
    }

    /// Frames a reply of tine's own for HTTP/1.1 (its head is in the
    /// connection's head, its body in `started`) and starts sending it.
    fn begin_send(&mut self, ctx: &mut Ctx, started: Started) {
        let status = self.io.head.status;
        ctx.stats.count_response(status);
        self.io.log_status(status.0);
        self.io.keep_alive = started.keep_alive;
        self.discard = started.discard;
        let persistence = if started.keep_alive {
            Persistence::KeepAlive { http10: self.io.http10 }
        } else {
            Persistence::Close
        };
        write_http1_head(&mut self.io.wbuf, &self.io.head, ctx.clock.date.bytes(), persistence);
        self.io.body_len = started.body.byte_len();
        self.io.wbuf.extend_from_slice(started.body.bytes());
        let file = match started.body {
            ReplyBody::File(file) => Some(file),
            _ => None,
        };
        let corked = file.as_ref().is_some_and(|b| b.end - b.offset >= CORK_BODIES_FROM)
            && self.io.transport.cork(true);
        self.io.wpos = 0;
        self.phase = Phase::Send(Sending { file, corked, started: ctx.clock.now, sent: 0 });
        self.io.arm(ctx, ctx.timers.timeouts.send);
    }

    /// Answers a head that cannot be parsed, then closes: after a malformed head
    /// there is no telling where the next request would start.
    fn reject(&mut self, ctx: &mut Ctx, e: HttpError, buf: &mut ReadBuf) {
        ctx.stats.count_rejection(Rejection::Head(e));
        if self.io.wbuf.capacity() == 0 {
            self.io.wbuf = ctx.pool.write_buf();
        }
        let to = ReplyTo { head_request: false, route: &crate::responses::NO_ROUTE };
        let body = error_page(e.status(), &to, None, &mut self.io.head);
        // After a malformed head, what else the client sends is unknown.
        self.client_closes = false;
        if ctx.access_log.is_some() {
            self.io.access = Some(PendingEntry::malformed(buf.filled(), 0));
        }
        buf.consume(usize::MAX);
        self.begin_send(ctx, Started { body, keep_alive: false, discard: Discard::Nothing });
    }

    fn send(&mut self, mut sending: Sending, ctx: &mut Ctx, budget: &mut usize) -> Option<Outcome> {
        while self.io.wpos < self.io.wbuf.len() {
            match self.io.transport.send(&self.io.wbuf[self.io.wpos..], sending.file.is_some()) {
                Ok(n) => {
                    self.io.wpos += n;
                    sending.sent += n as u64;
                    ctx.stats.slot.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                Err(e) => return self.blocked_sending(sending, ctx, e),
            }
        }
        if let Some(body) = sending.file.as_mut() {
            while body.offset < body.end {
                if *budget == 0 {
                    self.phase = Phase::Send(sending);
                    return Some(Outcome::Yield);
                }
                let chunk = (body.end - body.offset).min(*budget as u64) as usize;
                match self.io.transport.send_file(body.file.as_raw_fd(), &mut body.offset, chunk) {
                    Ok(0) => {
                        log::warn!("a file shrank while it was being sent; closing the connection");
                        self.phase = Phase::Send(sending);
                        return Some(Outcome::Close(CloseReason::Error));
                    }
                    Ok(n) => {
                        *budget -= n;
                        sending.sent += n as u64;
                        ctx.stats.slot.bytes_sent.fetch_add(n as u64, Relaxed);
                        if !self.io.transport.is_tls() {
                            ctx.stats.slot.bytes_sent_sendfile.fetch_add(n as u64, Relaxed);
                        }
                    }
                    Err(e) => return self.blocked_sending(sending, ctx, e),
                }
            }
        }
        // Whatever the transport still holds of the response (a head sent
        // with "more follows" before an empty body) goes out before it counts
        // as sent.
        if let Err(e) = self.io.transport.flush() {
            return self.blocked_sending(sending, ctx, e);
        }
        self.finish_response(ctx, sending)
    }

    /// The response stays in flight (the phase keeps what is left of it).
    fn blocked_sending(&mut self, sending: Sending, ctx: &mut Ctx, e: io::Error) -> Option<Outcome> {
        if e.kind() == io::ErrorKind::WouldBlock {
            // Progress was made or the response just started: the client has
            // another full send timeout to read, unless it reads so slowly
            // that it falls behind `min_send_rate` (a slow-read attack
            // keeps a connection and its file forever by taking a few bytes
            // at a time).
            let send = ctx.timers.timeouts.send;
            let timeout = match sending.rate_allowance(ctx.http.min_send_rate, send, ctx.clock.now) {
                Some(left) if left.is_zero() => {
                    self.phase = Phase::Send(sending);
                    return Some(Outcome::Close(CloseReason::Timeout));
                }
                Some(left) => left.min(send),
                None => send,
            };
            self.io.arm(ctx, timeout);
        }
        self.phase = Phase::Send(sending);
        client_io(e)
    }

    /// The response is out: log it, then wait for the next request, or close:
    /// at once when the client asked to and left nothing unread (its own
    /// close follows, so nothing can turn ours into a reset), else with a
    /// lingering close.
    fn finish_response(&mut self, ctx: &mut Ctx, sending: Sending) -> Option<Outcome> {
        self.log_access(ctx);
        if sending.corked {
            // Uncorking pushes out the last partial segment at once.
            self.io.transport.cork(false);
        }
        let done = Instant::now();
        if let Some(started) = self.request_started.take() {
            ctx.stats.record_latency(done.saturating_duration_since(started));
        }
        self.io.wbuf.clear();
        self.io.wpos = 0;
        self.served += 1;
        if self.io.rbuf.as_ref().is_some_and(|b| !b.is_empty()) {
            // A pipelined request was already waiting: it starts now.
            self.request_started = Some(done);
        }
        let pending = self.io.rbuf.as_ref().is_some_and(|b| !b.is_empty());
        let unread = pending || self.io.readable || self.discard.pending();
        if self.io.keep_alive && !ctx.draining {
            self.phase = Phase::ReadHead;
            self.idle_since = done;
            let timeout = if pending { ctx.timers.timeouts.header } else { ctx.timers.timeouts.idle };
            self.io.arm(ctx, timeout);
            None
        } else if self.client_closes && !unread {
            Some(Outcome::Close(CloseReason::Done))
        } else {
            self.io.transport.shutdown_write();
            self.phase = Phase::Linger { drained: 0 };
            self.io.arm(ctx, LINGER);
            None
        }
    }

    /// Writes the access-log line of the response in flight, with the body bytes
    /// that really went out (everything planned, less what is still unsent).
    fn log_access(&mut self, ctx: &mut Ctx) {
        let (Some(entry), Some(log)) = (self.io.access.take(), ctx.access_log.as_mut()) else { return };
        let unsent_buffer = self.io.wbuf.len().saturating_sub(self.io.wpos) as u64;
        let unsent_file = match &self.phase {
            Phase::Send(Sending { file: Some(file), .. }) => file.end - file.offset,
            _ => 0,
        };
        let sent = self.io.body_len.saturating_sub(unsent_buffer + unsent_file);
        entry.write(log, ctx.clock.unix_secs, self.io.peer.map(|p| p.ip()), sent);
    }

    fn linger(&mut self, mut drained: u64) -> Option<Outcome> {
        let mut scratch = [0u8; 4096];
        loop {
            match self.io.transport.recv(&mut scratch) {
                Ok(0) => return Some(Outcome::Close(CloseReason::Done)),
                Ok(n) => {
                    drained += n as u64;
                    if drained > LINGER_BYTES {
                        return Some(Outcome::Close(CloseReason::Done));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.phase = Phase::Linger { drained };
                    return Some(Outcome::Wait);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(Outcome::Close(CloseReason::Done)),
            }
        }
    }
}

/// Where a request goes: decided once, from its normalised path and host,
/// and carried as a value to the handler that answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Routed {
    /// Accepted on the admin listener: /metrics, /stats.json and /health.
    Admin,
    /// The configured health_path on a public listener.
    Health,
    /// An http-01 challenge of the ACME process, on a plain listener.
    AcmeChallenge,
    /// `route` of the route table sends it to upstream group `group`.
    Proxy {
        route: usize,
        group: usize,
    },
    /// A static route: site `site` of the worker's sites.
    Static {
        route: usize,
        site: usize,
    },
    /// A route that answers with a redirect.
    Redirect {
        route: usize,
    },
    NoRoute,
    /// A `redirect_to_https` route reached over plain HTTP: 308 to https.
    ToHttps,
    /// The target does not normalise (not a path, a bad escape, `..` above
    /// the root): 400, and never proxied, whatever its text starts with.
    BadTarget(HttpError),
    /// Refused by a `[[client_limit]]`: its status, with Retry-After.
    Limited(Refusal),
}

impl Routed {
    /// The route a request was routed to, if any.
    fn route(self) -> Option<usize> {
        match self {
            Routed::Proxy { route, .. } | Routed::Static { route, .. } | Routed::Redirect { route } => {
                Some(route)
            }
            _ => None,
        }
    }
}

/// How a request is answered, decided once for every protocol.
enum Answer {
    /// By an exchange with an upstream.
    Proxy(Box<Exchange>),
    /// By a reply of tine's own, its head built in the head given.
    Reply(Started),
    /// Not yet: a client limit with `delay = true` holds the request this
    /// long, after which it is answered again (`Arrival::limits_passed`).
    Wait(std::time::Duration),
}

/// What routing needs to know of the connection a request came on.
#[derive(Clone, Copy)]
struct Arrival {
    /// The admin listener's.
    admin: bool,
    tls: bool,
    peer: Option<std::net::IpAddr>,
    /// The request was counted against its client limits already (it
    /// waited out a delay they asked for).
    limits_passed: bool,
}

/// Routes a request once and starts its answer: the one place, for
/// HTTP/1.1 and HTTP/2 alike, where a request becomes an exchange or a
/// reply (its head into `head`).
fn answer(req: &Request<'_>, arrival: Arrival, ctx: &mut Ctx, head: &mut ResponseHead) -> Answer {
    let routed = if arrival.admin {
        Routed::Admin
    } else if is_health_check(req, ctx) {
        Routed::Health
    } else if !arrival.tls && crate::acme::is_challenge(req, ctx) {
        Routed::AcmeChallenge
    } else {
        route(req, arrival.tls, ctx)
    };
    let routed = match check_client_limits(req, arrival, routed, ctx) {
        Ok(routed) => routed,
        Err(wait) => return Answer::Wait(wait),
    };
    if let Routed::Proxy { route, group } = routed {
        ctx.stats.slot.requests.fetch_add(1, Relaxed);
        return Answer::Proxy(Exchange::new(req, route, group, arrival.peer, arrival.tls, ctx));
    }
    Answer::Reply(match routed {
        Routed::Admin => crate::admin::respond(req, ctx, head),
        Routed::Health => crate::admin::health(req, ctx, head),
        Routed::AcmeChallenge => crate::acme::answer(req, ctx, head),
        other => start_response(req, other, ctx, head),
    })
}

/// Counts a public request (not the health check) against the top-level
/// client limits and its route's: routed as before, refused, or to wait.
fn check_client_limits(
    req: &Request<'_>,
    arrival: Arrival,
    routed: Routed,
    ctx: &mut Ctx,
) -> Result<Routed, std::time::Duration> {
    if arrival.admin || arrival.limits_passed || matches!(routed, Routed::Health | Routed::AcmeChallenge) {
        return Ok(routed);
    }
    let route_limits = routed.route().map_or(&[][..], |r| &ctx.http.routes[r].client_limits[..]);
    match ctx.client_limits.check_request(route_limits, arrival.peer, req.fields) {
        Check::Pass => Ok(routed),
        Check::Delay(wait) => Err(wait),
        Check::Refuse(refusal) => Ok(Routed::Limited(refusal)),
    }
}

/// Whether a public listener's request is the configured health check
/// (its path exactly, any query).
fn is_health_check(req: &Request<'_>, ctx: &Ctx) -> bool {
    let Some(path) = ctx.http.health_path.as_deref() else { return false };
    let target = req.origin_target.split(|&b| b == b'?').next().unwrap_or_default();
    target == path.as_bytes()
}

/// Routes a request on its normalised path (left in `ctx.http.path` for the
/// handler), so `/api//x`, `/api/./x` and `/%61pi/x` all go where `/api/x` goes.
fn route(req: &Request<'_>, tls: bool, ctx: &mut Ctx) -> Routed {
    if let Err(e) = tine_http::target::normalise(req.origin_target, &mut ctx.http.path) {
        return Routed::BadTarget(e);
    }
    let Some(route) = tine_config::proxy::route_for(&ctx.http.routes, req.host, &ctx.http.path.route) else {
        return Routed::NoRoute;
    };
    if ctx.http.routes[route].redirect_to_https && !tls {
        return Routed::ToHttps;
    }
    match ctx.http.routes[route].handler {
        tine_config::Handler::Proxy { upstream, .. } => Routed::Proxy { route, group: upstream },
        tine_config::Handler::Static(_) => match ctx.http.route_sites[route] {
            Some(site) => Routed::Static { route, site },
            None => Routed::NoRoute,
        },
        tine_config::Handler::Redirect(_) => Routed::Redirect { route },
    }
}

/// Where a plain-HTTP request to a `redirect_to_https` route is sent: the
/// same host (its port replaced by the HTTPS listener's, left out when 443)
/// and target. None without a Host to name.
fn https_location(req: &Request<'_>, https_port: Option<u16>) -> Option<Vec<u8>> {
    let host = req.host.filter(|h| !h.is_empty())?;
    let name = tine_http::request::host_without_port(host);
    let mut location = Vec::with_capacity(16 + host.len() + req.origin_target.len());
    location.extend_from_slice(b"https://");
    location.extend_from_slice(name);
    if let Some(port) = https_port.filter(|&p| p != 443) {
        location.push(b':');
        tine_http::response::push_u64(&mut location, port.into());
    }
    location::push_request_bytes(&mut location, req.origin_target);
    Some(location)
}

/// A redirect route's answer: its URL, or with `redirect_prefix` its prefix
/// in place of the route's, followed by the rest of the normalised path and
/// the query. Any method is redirected (307 and 308 keep it).
fn redirect(
    req: &Request<'_>,
    to: &tine_config::Redirect,
    route_path: &str,
    path: &tine_http::target::TargetPath,
    reply: &ReplyTo,
    head: &mut ResponseHead,
) -> ReplyBody {
    let mut location = to.to.as_bytes().to_vec();
    if to.keep_path {
        let rest = path.route.get(route_path.len()..).unwrap_or_default();
        location::join_path(&mut location, rest);
        if let Some(q) = req.origin_target.iter().position(|&b| b == b'?') {
            location::push_request_bytes(&mut location, &req.origin_target[q..]);
        }
    }
    if location::leaves_the_host(&location) {
        return error_page(Status::BAD_REQUEST, reply, None, head);
    }
    error_page(Status(to.status), reply, Some(("Location", &location)), head)
}

/// Answers a request that is not proxied: its head into `head`.
fn start_response(req: &Request<'_>, routed: Routed, ctx: &mut Ctx, head: &mut ResponseHead) -> Started {
    ctx.stats.slot.requests.fetch_add(1, Relaxed);
    let (keep_alive, discard) = plan_framing(req, ctx);
    let replies = match routed {
        Routed::Static { route, .. } | Routed::Redirect { route } => &ctx.http.route_replies[route],
        _ => &crate::responses::NO_ROUTE,
    };
    let to = reply_to(req, replies);
    let refuse = |ctx: &Ctx, why: Rejection, head: &mut ResponseHead| {
        ctx.stats.count_rejection(why);
        let status = match why {
            Rejection::Head(e) => e.status(),
            Rejection::Target | Rejection::Body => Status::BAD_REQUEST,
        };
        error_page(status, &to, None, head)
    };
    let body = match (req.method, routed) {
        (_, Routed::BadTarget(_)) => refuse(ctx, Rejection::Target, head),
        (_, Routed::Limited(r)) => {
            let retry_after = r.retry_after_secs.to_string();
            error_page(Status(r.status), &to, Some(("Retry-After", retry_after.as_bytes())), head)
        }
        (_, Routed::ToHttps) => match https_location(req, ctx.http.https_port) {
            Some(location) => {
                error_page(Status::PERMANENT_REDIRECT, &to, Some(("Location", &location)), head)
            }
            None => refuse(ctx, Rejection::Head(HttpError::BadRequest("no Host to redirect to https")), head),
        },
        (_, Routed::Redirect { route }) => match &ctx.http.routes[route].handler {
            tine_config::Handler::Redirect(r) => {
                redirect(req, r, &ctx.http.routes[route].path, &ctx.http.path, &to, head)
            }
            _ => error_page(Status::NOT_FOUND, &to, None, head),
        },
        (Method::Other, _) => {
            error_page(Status::METHOD_NOT_ALLOWED, &to, Some(("Allow", b"GET, HEAD")), head)
        }
        (_, Routed::Static { site, .. }) => match ctx.http.path.decode_file_path() {
            Err(_) => refuse(ctx, Rejection::Target, head),
            Ok(()) => {
                let site = &mut ctx.http.sites[site];
                static_files::respond(
                    &mut site.files,
                    &site.root,
                    req,
                    &ctx.http.path,
                    &to,
                    ctx.clock.now,
                    head,
                )
            }
        },
        (
            _,
            Routed::NoRoute | Routed::Admin | Routed::Health | Routed::AcmeChallenge | Routed::Proxy { .. },
        ) => error_page(Status::NOT_FOUND, &to, None, head),
    };
    Started { body, keep_alive, discard }
}

#[cfg(test)]
mod tests;
