//! An HTTP/2 connection: the engine (tine-h2) between the client's socket
//! and the connection's streams, each stream one request of the same core
//! an HTTP/1.1 connection uses (see stream.rs).
//!
//! One drive of the connection: read what the client sent into the engine,
//! take up the requests it accepted, drive the streams that can move (in
//! turn, starting after the one that went first last time, so no stream
//! always goes first), then write what the engine framed to the socket.
//! A stream moves when an event names it: its upstream connection's, or
//! the client's input when the stream waits on the client (a window to
//! open, request body to come). Each stream has its own deadline in the
//! wheel (exchange index = slot + 1); the connection's own (index 0)
//! bounds a client that does not read, and an idle connection.

mod stream;

use super::{answer, Answer, Arrival, Conn, Drive, Phase};
use crate::access::PendingEntry;
use crate::context::{Ctx, Rejection};
use crate::counters::GrpcStatus;
use crate::exchange::{Downstream, Driven, Ended};
use crate::outcome::{client_io, CloseReason, Outcome};
use crate::responses::{error_page, ReplyTo};
use crate::token::ExchangeId;
use crate::transport::Transport;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use stream::{Drained, StreamIo, Work};
use tine_h2::{Accepted, Polled, Reason, ServerConnection};
use tine_http::message::ResponseHead;
use tine_http::request::{request_from_http2, Body, Http2Head, Method};
use tine_http::HttpError;

/// The connection preface of HTTP/2 with prior knowledge (RFC 9113
/// section 3.4): how an h2c connection starts on a plain listener.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Rounds of reading, driving and writing per drive, so that one busy
/// connection cannot hold the worker.
const ROUNDS: usize = 16;

/// One stream of the connection.
struct Stream {
    io: StreamIo,
    work: Work,
    /// Something may have changed for it: drive it.
    wake: bool,
}

/// What driving one stream came to.
enum Step {
    /// It waits for an event.
    Waiting,
    /// It used its share of the turn: drive it again next turn.
    Yielded,
    /// Its response is out (or it was reset): its slot is free.
    Finished,
}

/// An HTTP/2 connection's state, held in [`Phase::Http2`].
pub struct Http2Session {
    engine: ServerConnection,
    /// Slot `i` holds the stream whose exchange index is `i + 1`.
    streams: Vec<Option<Stream>>,
    free: Vec<usize>,
    /// Where the next round of streams starts.
    next: usize,
    addresses: Option<(SocketAddr, SocketAddr)>,
    /// Some stream yielded: the connection is driven again next turn.
    yielded: bool,
    /// The connection waits to be driven at the end of the turn's events.
    scheduled: bool,
    /// The engine ended the connection; it closes once its output is out.
    ended: Option<CloseReason>,
}

impl Http2Session {
    fn stream_mut(&mut self, index: u32) -> Option<&mut Stream> {
        let slot = (index as usize).checked_sub(1)?;
        self.streams.get_mut(slot)?.as_mut()
    }

    /// The client sent something, or took something: the streams that
    /// wait on it (a window to open, body bytes to come) try again, and so
    /// do streams it reset, so that what they hold (an upstream connection)
    /// is let go at once rather than at their deadline.
    fn wake_streams_waiting_on_client(&mut self) {
        for stream in self.streams.iter_mut().flatten() {
            stream.wake |= stream.io.waits_on_client || stream.io.was_reset_by_client();
        }
    }

    fn open_streams(&self) -> usize {
        self.streams.len() - self.free.len()
    }

    /// The deadline of the stream with exchange index `index`.
    pub fn timer(&mut self, index: u32) -> Option<&mut crate::timer_wheel::Deadline> {
        self.stream_mut(index).map(|s| &mut s.io.timer)
    }

    /// An event for the upstream connection of stream `index`: the stream
    /// is driven once the turn's events are dispatched, with every other
    /// stream of the connection that had one.
    pub fn on_upstream_event(&mut self, index: u32, peer_closed: bool) -> Drive {
        if let Some(stream) = self.stream_mut(index) {
            stream.wake = true;
            if let (Work::Proxy(exchange), true) = (&mut stream.work, peer_closed) {
                exchange.note_upstream_fin();
            }
        }
        Drive::AfterBatch { first: !std::mem::replace(&mut self.scheduled, true) }
    }

    /// A graceful stop: GOAWAY now, the streams under way finish.
    pub fn start_grace(&mut self) {
        self.engine.graceful_shutdown();
    }

    /// The connection closes: every stream's exchange is abandoned, its
    /// deadline removed and its line logged.
    pub fn release(&mut self, ctx: &mut Ctx, peer: Option<SocketAddr>) {
        ctx.stats.gauges.http2_connections(-1);
        for slot in 0..self.streams.len() {
            if let Some(stream) = self.streams[slot].take() {
                finish(stream, ctx, peer);
            }
        }
        self.free.clear();
        self.streams.clear();
    }
}

/// A stream leaves the connection: its exchange, if any, is abandoned,
/// its deadline disarmed and its access-log line written.
fn finish(mut stream: Stream, ctx: &mut Ctx, peer: Option<SocketAddr>) {
    ctx.timers.wheel.disarm(&mut stream.io.timer);
    let slot = ctx.stats.slot;
    if stream.io.client_reset {
        slot.http2_client_resets.fetch_add(1, Relaxed);
    } else if stream.io.tine_reset {
        slot.http2_tine_resets.fetch_add(1, Relaxed);
    }
    if let Work::Proxy(exchange) = stream.work {
        exchange.abandon(ctx);
    }
    if let (Some(entry), Some(log)) = (stream.io.access.take(), ctx.access_log.as_mut()) {
        entry.write(log, ctx.clock.unix_secs, peer.map(|p| p.ip()), stream.io.bytes_sent());
    }
}

/// Counts a GOAWAY tine sent because of the client: abuse (too many
/// resets, a CONTINUATION flood) or another protocol error. Graceful ones
/// are counted where tine decides on them.
fn count_goaway(sent: Option<Reason>, ctx: &Ctx) {
    let slot = ctx.stats.slot;
    match sent {
        Some(Reason::NO_ERROR) | None => {}
        Some(Reason::ENHANCE_YOUR_CALM) => {
            slot.http2_goaway_calm.fetch_add(1, Relaxed);
        }
        Some(_) => {
            slot.http2_goaway_error.fetch_add(1, Relaxed);
        }
    }
}

/// The reset a stream ends with when its exchange closes.
fn reset_reason(reason: CloseReason) -> Reason {
    match reason {
        CloseReason::Error => Reason::INTERNAL_ERROR,
        _ => Reason::CANCEL,
    }
}

impl Conn {
    /// The connection speaks HTTP/2 from now on; `early` is what was read
    /// of it already (an h2c preface read as a request head).
    pub(super) fn start_http2(&mut self, early: &[u8], ctx: &mut Ctx) {
        ctx.stats.slot.http2_connections.fetch_add(1, Relaxed);
        ctx.stats.gauges.http2_connections(1);
        let mut engine = ServerConnection::new(&ctx.http.http2);
        engine.receive(early);
        let local = tine_net::sys::local_addr(self.io.transport.socket()).ok();
        let session = Http2Session {
            engine,
            streams: Vec::new(),
            free: Vec::new(),
            next: 0,
            addresses: self.io.peer.zip(local),
            yielded: false,
            scheduled: false,
            ended: None,
        };
        // The engine's output queue lends its buffer to the socket's writes.
        self.io.wbuf.clear();
        self.io.wpos = 0;
        self.phase = Phase::Http2(Box::new(session));
        self.io.arm(ctx, ctx.timers.timeouts.header);
    }

    /// Reads, drives the streams and writes until the socket blocks or the
    /// rounds are spent.
    pub(super) fn drive_http2(&mut self, mut s: Box<Http2Session>, ctx: &mut Ctx) -> Option<Outcome> {
        s.yielded = false;
        s.scheduled = false;
        for _ in 0..ROUNDS {
            let read = match self.read_into_engine(&mut s, ctx) {
                Ok(n) => n,
                Err(outcome) => return self.http2_paused(s, outcome, ctx),
            };
            self.accept_streams(&mut s, ctx);
            if read > 0 {
                s.wake_streams_waiting_on_client();
            }
            self.drive_streams(&mut s, ctx);
            // What the streams handed over is framed by this poll.
            self.accept_streams(&mut s, ctx);
            let wrote = match self.write_engine_output(&mut s, ctx) {
                Ok(wrote) => wrote,
                Err(outcome) => return self.http2_paused(s, outcome, ctx),
            };
            if wrote {
                // What the engine held of the streams' data went out, so
                // their windows may hold room again.
                s.wake_streams_waiting_on_client();
            }
            if let Some(reason) = s.ended.filter(|_| !s.engine.has_output() && self.io.wbuf.is_empty()) {
                return self.http2_paused(s, Outcome::Close(reason), ctx);
            }
            if read == 0 && !wrote && !s.streams.iter().flatten().any(|st| st.wake) {
                break;
            }
        }
        let outcome = if s.yielded { Outcome::Yield } else { Outcome::Wait };
        self.http2_paused(s, outcome, ctx)
    }

    /// The connection stops until `outcome`, its own deadline set for what
    /// it waits on: a client that does not read what was written, an idle
    /// connection, or nothing (its streams have deadlines of their own).
    fn http2_paused(&mut self, mut s: Box<Http2Session>, outcome: Outcome, ctx: &mut Ctx) -> Option<Outcome> {
        if !matches!(outcome, Outcome::Close(_)) {
            if self.io.wpos < self.io.wbuf.len() {
                self.io.arm(ctx, ctx.timers.timeouts.send);
            } else if s.open_streams() == 0 {
                let idle =
                    if ctx.draining { ctx.timers.timeouts.keepalive_grace } else { ctx.timers.timeouts.idle };
                self.io.arm(ctx, idle);
                // Nothing in flight: an idle connection holds no buffer of ours.
                if !s.engine.has_output() && s.engine.unread_input() == 0 {
                    s.engine.shrink();
                    self.release_buffers(ctx);
                }
            } else {
                ctx.timers.wheel.disarm(&mut self.io.timer);
            }
        }
        self.phase = Phase::Http2(s);
        Some(outcome)
    }

    /// Reads what the client sent into the engine, once the engine has
    /// read what it had; returns how many bytes came.
    fn read_into_engine(&mut self, s: &mut Http2Session, ctx: &mut Ctx) -> Result<usize, Outcome> {
        if !self.io.readable || s.engine.unread_input() > 0 || s.ended.is_some() {
            return Ok(0);
        }
        let buf = self.io.rbuf.get_or_insert_with(|| ctx.pool.read_buf());
        match self.io.transport.recv(buf.spare()) {
            Ok(0) => {
                s.engine.client_closed();
                self.io.readable = false;
                Ok(0)
            }
            Ok(n) => {
                buf.commit(n);
                s.engine.receive(buf.filled());
                buf.consume(n);
                if self.io.transport.read_spent() {
                    self.io.readable = false;
                }
                ctx.stats.slot.bytes_received.fetch_add(n as u64, Relaxed);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.io.readable = false;
                Ok(0)
            }
            Err(e) => match client_io(e) {
                None => Ok(0),
                Some(outcome) => Err(outcome),
            },
        }
    }

    /// Runs the engine: the requests it accepted become streams; its end is
    /// noted (the connection closes once its last frames are out).
    fn accept_streams(&mut self, s: &mut Http2Session, ctx: &mut Ctx) {
        loop {
            match s.engine.poll() {
                Polled::Request(accepted) => self.open_stream(s, *accepted, ctx),
                Polled::Idle => return,
                Polled::Ended(result) => {
                    let reason = match result {
                        Ok(()) if ctx.draining => CloseReason::Drained,
                        Ok(()) => CloseReason::Done,
                        Err(e) => {
                            log::debug!("connection {:?}: {e}", self.io.id);
                            count_goaway(e.sent_goaway(), ctx);
                            if e.reason().is_some() {
                                CloseReason::Error
                            } else {
                                CloseReason::PeerClosed
                            }
                        }
                    };
                    s.ended.get_or_insert(reason);
                    return;
                }
            }
        }
    }

    /// A request the engine accepted becomes a stream: routed once, and
    /// answered by an exchange or a reply of tine's own.
    fn open_stream(&mut self, s: &mut Http2Session, accepted: Accepted, ctx: &mut Ctx) {
        let Accepted { head: parts, body, responder } = accepted;
        let slot = s.free.pop().unwrap_or_else(|| {
            s.streams.push(None);
            s.streams.len() - 1
        });
        let mut io = StreamIo {
            owner: ExchangeId { conn: self.io.id, index: slot as u32 + 1 },
            addresses: s.addresses,
            chunked_body: false,
            body_ended: body.is_end_stream(),
            body,
            unread: Vec::new(),
            responder,
            trailers: None,
            grpc: is_grpc(&parts.headers),
            pending: Vec::new(),
            body_len: 0,
            sent: 0,
            waits_on_client: false,
            gone: false,
            client_reset: false,
            tine_reset: false,
            access: None,
            timer: Default::default(),
            head_request: parts.method == http::Method::HEAD,
        };
        let work = match self.answer_stream(&parts, &mut io, ctx, false) {
            Ok(work) => work,
            Err(wait) => {
                io.arm(ctx, wait);
                Work::Waiting(Box::new(parts))
            }
        };
        s.streams[slot] = Some(Stream { io, work, wake: true });
    }

    /// Routes a stream's request and starts its answer; Err when a client
    /// limit holds it back for that long (`limits_passed`: it has waited
    /// already, and is not counted again).
    fn answer_stream(
        &mut self,
        parts: &http::request::Parts,
        io: &mut StreamIo,
        ctx: &mut Ctx,
        limits_passed: bool,
    ) -> Result<Work, std::time::Duration> {
        let mut fields = Vec::with_capacity(parts.headers.len());
        let mut cookie = Vec::new();
        for (name, value) in parts.headers.iter() {
            // RFC 9113 section 8.2.3: cookie crumbs are one field again
            // for an HTTP/1.1 hop.
            if name == http::header::COOKIE {
                if !cookie.is_empty() {
                    cookie.extend_from_slice(b"; ");
                }
                cookie.extend_from_slice(value.as_bytes());
                continue;
            }
            fields.push(httparse::Header { name: name.as_str(), value: value.as_bytes() });
        }
        if !cookie.is_empty() {
            fields.push(httparse::Header { name: "cookie", value: &cookie });
        }
        let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
        let request_line = format!("{} {path} HTTP/2.0", parts.method);
        let head = Http2Head {
            method: parts.method.as_str(),
            path: path.as_bytes(),
            authority: parts.uri.authority().map(|a| a.as_str().as_bytes()),
            fields: &fields,
            end_stream: io.body_ended,
            request_line: request_line.as_bytes(),
        };
        let req = match request_from_http2(head, &ctx.http.limits) {
            Ok(req) => req,
            Err(e) => {
                log::debug!("connection {:?}: malformed HTTP/2 request: {e}", self.io.id);
                ctx.stats.count_rejection(Rejection::Head(e));
                if ctx.access_log.is_some() {
                    io.access = Some(PendingEntry::malformed(request_line.as_bytes(), 0));
                }
                if let HttpError::BadRequest(_) = e {
                    // RFC 9113 section 8.1.1: a malformed request is a
                    // stream error; nothing of it is answered or passed on.
                    io.log_status(e.status().0);
                    io.reset(Reason::PROTOCOL_ERROR);
                    return Ok(Work::Done);
                }
                let to = ReplyTo { head_request: io.head_request, route: &crate::responses::NO_ROUTE };
                let body = error_page(e.status(), &to, None, &mut self.io.head);
                return Ok(start_reply(io, &self.io.head, body, ctx));
            }
        };
        let arrival = Arrival { admin: false, limits_passed, ..self.arrival() };
        let answered = answer(&req, arrival, ctx, &mut self.io.head);
        if let Answer::Wait(wait) = answered {
            return Err(wait);
        }
        ctx.stats.slot.http2_requests.fetch_add(1, Relaxed);
        io.chunked_body = req.body == Body::Chunked;
        io.head_request = req.method == Method::Head;
        if ctx.access_log.is_some() {
            io.access = Some(PendingEntry::capture(&req, 0));
        }
        Ok(match answered {
            Answer::Proxy(exchange) => Work::Proxy(exchange),
            Answer::Reply(started) => start_reply(io, &self.io.head, started.body, ctx),
            Answer::Wait(_) => Work::Done,
        })
    }

    /// Drives the streams that can move, each once per round, starting
    /// after the one that started the last round.
    fn drive_streams(&mut self, s: &mut Http2Session, ctx: &mut Ctx) {
        let n = s.streams.len();
        if n == 0 {
            return;
        }
        let first = s.next % n;
        s.next = first + 1;
        for k in 0..n {
            let slot = (first + k) % n;
            let Some(stream) = s.streams[slot].as_mut().filter(|st| st.wake) else { continue };
            stream.wake = false;
            match self.drive_h2_stream(stream, ctx) {
                Step::Waiting => {}
                Step::Yielded => {
                    stream.wake = true;
                    s.yielded = true;
                }
                Step::Finished => {
                    if let Some(done) = s.streams[slot].take() {
                        finish(done, ctx, self.io.peer);
                        s.free.push(slot);
                    }
                }
            }
        }
    }

    /// Moves one stream on as far as it can go now.
    fn drive_h2_stream(&mut self, stream: &mut Stream, ctx: &mut Ctx) -> Step {
        let mut budget = super::SEND_BUDGET;
        loop {
            stream.io.waits_on_client = false;
            let driven = match std::mem::replace(&mut stream.work, Work::Done) {
                Work::Proxy(exchange) => exchange.drive(&mut stream.io, ctx, &mut budget),
                Work::Done => return Step::Finished,
                Work::Waiting(parts) => {
                    stream.work = Work::Waiting(parts);
                    return Step::Waiting;
                }
                Work::Drain { mut left } => {
                    return match stream.io.drain(&mut left) {
                        Drained::Done => Step::Finished,
                        Drained::More => {
                            stream.io.waits_on_client = true;
                            stream.work = Work::Drain { left };
                            Step::Waiting
                        }
                    };
                }
                Work::Send { mut file } => {
                    let before = stream.io.sent;
                    return match stream.io.send_rest(&mut file) {
                        Ok(true) if stream.io.body.is_end_stream() || stream.io.gone => Step::Finished,
                        Ok(true) => {
                            stream.work = Work::Drain { left: ctx.http.discard_body_bytes.max(1) };
                            stream.io.arm(ctx, ctx.timers.timeouts.header);
                            continue;
                        }
                        Ok(false) if stream.io.gone => Step::Finished,
                        Ok(false) => {
                            if stream.io.sent > before {
                                stream.io.arm(ctx, ctx.timers.timeouts.send);
                            }
                            stream.io.waits_on_client = true;
                            stream.work = Work::Send { file };
                            Step::Waiting
                        }
                        Err(e) => {
                            log::warn!("connection {:?}: {e}; resetting the stream", self.io.id);
                            stream.io.reset(Reason::INTERNAL_ERROR);
                            Step::Finished
                        }
                    };
                }
            };
            if let Some(step) = self.after_stream_exchange(stream, driven, ctx) {
                return step;
            }
        }
    }

    /// Where a stream stands after its exchange ran: `None` to go on with
    /// the work now set.
    fn after_stream_exchange(&mut self, stream: &mut Stream, driven: Driven, ctx: &mut Ctx) -> Option<Step> {
        match driven {
            Driven::Paused(exchange, outcome) => {
                stream.work = Work::Proxy(exchange);
                Some(if outcome == Outcome::Yield { Step::Yielded } else { Step::Waiting })
            }
            Driven::Ready(exchange) => {
                stream.work = Work::Proxy(exchange);
                None
            }
            Driven::Ended(Ended::Complete) => {
                stream.work = Work::Send { file: None };
                stream.io.arm(ctx, ctx.timers.timeouts.send);
                None
            }
            Driven::Ended(Ended::Failed(failure)) if stream.io.grpc && !stream.io.has_pending_output() => {
                stream.work = grpc_failure(&mut stream.io, failure.status, ctx);
                None
            }
            Driven::Ended(Ended::Failed(failure)) if !stream.io.has_pending_output() => {
                let route = failure.route.map_or(&crate::responses::NO_ROUTE, |r| &ctx.http.route_replies[r]);
                let to = ReplyTo { head_request: failure.head_request, route };
                let body = error_page(failure.status, &to, None, &mut self.io.head);
                stream.work = start_reply(&mut stream.io, &self.io.head, body, ctx);
                None
            }
            Driven::Ended(Ended::Failed(_)) => {
                stream.io.reset(Reason::INTERNAL_ERROR);
                Some(Step::Finished)
            }
            Driven::Ended(Ended::Close(reason)) => {
                stream.io.reset(reset_reason(reason));
                Some(Step::Finished)
            }
        }
    }

    /// Writes what the engine framed to the socket; true when anything went.
    fn write_engine_output(&mut self, s: &mut Http2Session, ctx: &mut Ctx) -> Result<bool, Outcome> {
        let mut wrote = false;
        loop {
            if self.io.wpos == self.io.wbuf.len() {
                self.io.wbuf.clear();
                self.io.wpos = 0;
                if !s.engine.has_output() {
                    break;
                }
                s.engine.take_output(&mut self.io.wbuf);
                // The engine's writes may have waited on a full queue.
                self.accept_streams(s, ctx);
            }
            match self.io.transport.send(&self.io.wbuf[self.io.wpos..], false) {
                Ok(n) => {
                    self.io.wpos += n;
                    wrote |= n > 0;
                    ctx.stats.slot.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                Err(e) => match client_io(e) {
                    None => {}
                    Some(Outcome::Wait) => return Ok(wrote),
                    Some(outcome) => return Err(outcome),
                },
            }
        }
        match self.io.transport.flush() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                Err(client_io(e).unwrap_or(Outcome::Close(CloseReason::Error)))
            }
            _ => Ok(wrote),
        }
    }

    /// The deadline of stream `index` passed: an exchange decides what that
    /// means (the next server, a 504); a response the client does not take
    /// is reset, and what it held freed.
    pub(super) fn http2_stream_deadline(
        &mut self,
        mut s: Box<Http2Session>,
        index: u32,
        ctx: &mut Ctx,
    ) -> Outcome {
        if let Some(slot) = (index as usize).checked_sub(1).filter(|&i| i < s.streams.len()) {
            if let Some(stream) = s.streams[slot].as_mut() {
                let step = match std::mem::replace(&mut stream.work, Work::Done) {
                    Work::Proxy(exchange) => {
                        let driven = exchange.on_deadline(&mut stream.io, ctx);
                        stream.wake = true;
                        self.after_stream_exchange(stream, driven, ctx)
                    }
                    Work::Done => Some(Step::Finished),
                    Work::Waiting(parts) => {
                        // The delay is over: answered now, not counted again.
                        stream.work = match self.answer_stream(&parts, &mut stream.io, ctx, true) {
                            Ok(work) => work,
                            Err(_) => {
                                stream.io.reset(Reason::INTERNAL_ERROR);
                                Work::Done
                            }
                        };
                        stream.wake = true;
                        None
                    }
                    Work::Send { .. } | Work::Drain { .. } => {
                        log::debug!(
                            "connection {:?}: a stream's window stayed shut; resetting it",
                            self.io.id
                        );
                        ctx.stats.slot.http2_stalled.fetch_add(1, Relaxed);
                        stream.io.reset(Reason::CANCEL);
                        Some(Step::Finished)
                    }
                };
                if let Some(Step::Finished) = step {
                    if let Some(done) = s.streams[slot].take() {
                        finish(done, ctx, self.io.peer);
                        s.free.push(slot);
                    }
                }
            }
        }
        self.drive_http2(s, ctx).unwrap_or(Outcome::Wait)
    }

    /// The connection's own deadline passed: an idle connection, or a
    /// client that does not read, is told GOAWAY and closed.
    pub(super) fn http2_deadline(&mut self, mut s: Box<Http2Session>, ctx: &mut Ctx) -> Outcome {
        let idle = s.open_streams() == 0 && self.io.wpos == self.io.wbuf.len();
        s.engine.abrupt_shutdown(Reason::NO_ERROR);
        ctx.stats.slot.http2_goaway_graceful.fetch_add(1, Relaxed);
        s.engine.poll();
        let _ = self.write_engine_output(&mut s, ctx);
        self.phase = Phase::Http2(s);
        Outcome::Close(match (idle, ctx.draining) {
            (true, true) => CloseReason::Drained,
            _ => CloseReason::Timeout,
        })
    }
}

/// Starts tine's own reply on a stream (its head in `head`): counted,
/// logged with its status, and sent as the windows open.
/// A gRPC request: `content-type: application/grpc`, alone or with a
/// subtype (`+proto`, `+json`).
fn is_grpc(fields: &http::HeaderMap) -> bool {
    fields.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// What tine answers a gRPC request whose exchange failed before any
/// response: a status the client library understands, in a trailers-only
/// response (HTTP 200, as Envoy answers), never an HTML page. A timeout is
/// DEADLINE_EXCEEDED; anything else (no server, a refused connect, a broken
/// stream) UNAVAILABLE, which clients may retry.
fn grpc_failure(io: &mut StreamIo, status: tine_http::Status, ctx: &mut Ctx) -> Work {
    let (code, message) = match status.0 {
        504 => (GrpcStatus::DeadlineExceeded, "tine: the upstream did not answer in time"),
        400 => (GrpcStatus::Internal, "tine: the request body was malformed"),
        _ => (GrpcStatus::Unavailable, "tine: no upstream server is available"),
    };
    let mut head = http::Response::new(());
    let fields = head.headers_mut();
    fields.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    fields.insert("grpc-status", http::HeaderValue::from(code as u16));
    fields.insert("grpc-message", http::HeaderValue::from_static(message));
    ctx.stats.count_response(tine_http::Status::OK);
    ctx.stats.count_grpc(code, true);
    io.log_status(200);
    if io.responder.send_head(head, true).is_err() {
        io.gone = true;
    }
    Work::Done
}

fn start_reply(
    io: &mut StreamIo,
    head: &ResponseHead,
    body: crate::responses::ReplyBody,
    ctx: &mut Ctx,
) -> Work {
    ctx.stats.count_response(head.status);
    io.log_status(head.status.0);
    let work = io.start_reply(head, body, ctx.clock.date.bytes());
    io.arm(ctx, ctx.timers.timeouts.send);
    work
}
