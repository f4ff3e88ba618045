//! The exchange's stage for an upstream spoken to over HTTP/2 (`protocol =
//! "h2"` or `"h2c"`): the same exchange, routed and answered the same way,
//! with one stream on a connection the pool shares instead of a connection
//! of its own.
//!
//! ```text
//!  Pick -> Link (a shared connection, or a new one) -> Open (a stream, when the
//!  connection is open and below the server's limit) -> Streaming:
//!    request body -> DATA within the server's windows      } both at once, so a
//!    HEADERS -> head; DATA -> body; trailers -> trailers    } bidirectional stream flows
//!  -> Done (the stream ended both ways), or a reset each way on failure
//! ```
//!
//! Back-pressure both ways: the request body is read from the client only
//! as fast as the server's windows take it; a response DATA frame's bytes
//! are given back to the server's window only once the client has taken
//! them, so a slow client holds one window of body per stream, never more.
//!
//! gRPC rides on this unchanged: trailers go to the client as trailers,
//! `te: trailers` reaches the server, and `grpc-timeout` bounds the whole
//! exchange. What tine itself answers to a gRPC request that failed is the
//! session's (a gRPC status in a trailers-only response).

use super::{Downstream, Exchange, Next, Stage};
use crate::context::Ctx;
use crate::counters::GrpcStatus;
use crate::outcome::{client_io, CloseReason, Outcome};
use crate::token::{ExchangeId, LinkId};
use crate::upstream::H2Ready;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};
use tine_h2::{BodyChunk, ClientStream, Head, Reason};
use tine_http::chunked::Output;
use tine_http::response::Status;
use tine_http::response_head::{ResponseBody, UpstreamHead};
use tine_stats::layout::UpstreamStats;

/// Most request body bytes read from the client ahead of the server's
/// window.
const BODY_CHUNK: usize = 16 * 1024;

/// An exchange's HTTP/2 stream and what it needs.
pub struct H2Stage {
    /// The exchange (for the connection's list of whom to wake), known
    /// once it is first driven.
    owner: Option<ExchangeId>,
    /// The connection it uses, once one was picked.
    link: Option<LinkId>,
    /// The request head, kept to open the stream again on another server.
    method: http::Method,
    uri: http::Uri,
    fields: http::HeaderMap,
    stream: Option<ClientStream>,
    /// The request's END_STREAM went out.
    request_ended: bool,
    /// Some of the request body was taken from the client (so it cannot be
    /// sent again to another server).
    body_started: bool,
    /// Decoded request body bytes waiting for the server's window.
    pending: Vec<u8>,
    response: Receiving,
    /// Response bytes handed to the client and not yet given back to the
    /// server's window (they are, once the client has taken them).
    unreleased: usize,
    /// `grpc-timeout`: the whole exchange ends by then.
    deadline: Option<Instant>,
}

/// Where the response stands.
enum Receiving {
    Head,
    /// The body, framed as the client's session wants it.
    Body(Output),
    Done,
}

impl H2Stage {
    /// The stage for `req`, whose upstream head is `fields` (see
    /// tine_http::forward::upstream_h2_fields).
    pub fn new(method: http::Method, uri: http::Uri, fields: http::HeaderMap) -> Self {
        let deadline =
            fields.get("grpc-timeout").and_then(|v| grpc_timeout(v.as_bytes())).map(|d| Instant::now() + d);
        H2Stage {
            owner: None,
            link: None,
            method,
            uri,
            fields,
            stream: None,
            request_ended: false,
            body_started: false,
            pending: Vec::new(),
            response: Receiving::Head,
            unreleased: 0,
            deadline,
        }
    }

    fn request(&self) -> http::Request<()> {
        let mut req = http::Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.fields.clone();
        req
    }

    /// Nothing of a response has come: what a client that leaves abandons.
    pub fn waiting(&self) -> bool {
        matches!(self.response, Receiving::Head)
    }

    /// The stage ends: an unfinished stream is reset (the server stops
    /// work nobody will read), and the connection is let go.
    pub fn dismantle(mut self, ctx: &mut Ctx, st: Option<&UpstreamStats>) {
        let (Some(link), Some(owner)) = (self.link, self.owner) else { return };
        if let Some(stream) = self.stream.as_mut() {
            if !(self.request_ended && matches!(self.response, Receiving::Done)) {
                stream.reset(Reason::CANCEL);
                if let Some(st) = st {
                    st.h2_resets.fetch_add(1, Relaxed);
                }
            }
        }
        self.stream = None;
        let upstreams = &mut ctx.proxy.upstreams;
        upstreams.h2_flush(link, &ctx.stats);
        upstreams.h2_leave(link, owner, ctx.clock.now, &ctx.stats);
    }

    /// How long the exchange may wait now: `timeout`, or less when its
    /// `grpc-timeout` comes first.
    fn bounded(&self, timeout: Duration, now: Instant) -> Duration {
        self.deadline.map_or(timeout, |d| timeout.min(d.saturating_duration_since(now)))
    }

    /// Request body bytes wait and the server's window now takes some.
    fn body_waits_for_window(&mut self) -> bool {
        let want = self.pending.len();
        want > 0 && !self.request_ended && self.stream.as_mut().is_some_and(|s| s.writable(want) > 0)
    }

    /// The `grpc-timeout` has passed.
    pub fn past_deadline(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }
}

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How the stream's work ends, short of a retry.
enum Stop {
    /// The response is complete.
    Done,
    Close(CloseReason),
    /// The client's body broke its framing: 400, and the connection closes.
    BadRequest,
}

impl From<Stop> for Next {
    fn from(stop: Stop) -> Next {
        match stop {
            Stop::Done => Next::Done,
            Stop::Close(reason) => Next::Close { reason, upstream: None },
            Stop::BadRequest => Next::Fail { status: Status::BAD_REQUEST, upstream: None, close: true },
        }
    }
}

/// What one pass over the stream came to.
enum Flow {
    /// Bytes moved: go round again.
    Moved,
    /// Nothing can move until an event.
    Idle,
    Stop(Stop),
    /// The stream failed before its response: another server (`refused`:
    /// the server cannot have acted on it).
    Retry {
        refused: bool,
    },
}

impl Exchange {
    /// Runs the HTTP/2 stage once: a server and a connection, the stream,
    /// then both directions until neither can move.
    pub(super) fn h2_advance(
        &mut self,
        client: &mut impl Downstream,
        mut h: Box<H2Stage>,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Next {
        let Some(link) = h.link else { return self.h2_pick(client, h, ctx) };
        if h.stream.is_none() {
            match ctx.proxy.upstreams.h2_ready(link, &ctx.stats) {
                H2Ready::NotYet => return Next::Pause(Stage::H2(h), Outcome::Wait),
                H2Ready::Failed => return self.h2_retry(h, ctx, true),
                H2Ready::Ready => {}
            }
            if !self.h2_open(client, &mut h, link, ctx) {
                return self.h2_retry(h, ctx, true);
            }
        }
        loop {
            let sent = match self.h2_send_body(client, &mut h, ctx) {
                Ok(moved) => moved,
                Err(stop) => return self.h2_stop(h, stop),
            };
            let received = self.h2_receive(client, &mut h, ctx, budget);
            ctx.proxy.upstreams.h2_flush(link, &ctx.stats);
            match received {
                Flow::Stop(stop) => return self.h2_stop(h, stop),
                Flow::Retry { refused } => return self.h2_retry(h, ctx, refused),
                Flow::Moved if *budget == 0 => return Next::Pause(Stage::H2(h), Outcome::Yield),
                Flow::Moved => {}
                Flow::Idle if sent => {}
                // The engine grants a stream its share of the window as it
                // runs (in the flush just done), not when asked: body bytes
                // that waited for it may go now.
                Flow::Idle if h.body_waits_for_window() => {}
                Flow::Idle => return Next::Pause(Stage::H2(h), Outcome::Wait),
            }
        }
    }

    /// The stream's work ends: the stage stays for the exchange to take
    /// apart as it retires (an unfinished stream reset, the connection let
    /// go), whichever way it ended.
    fn h2_stop(&mut self, h: Box<H2Stage>, stop: Stop) -> Next {
        self.stage = Stage::H2(h);
        stop.into()
    }

    /// Picks a server and a connection to it (shared, or a new one).
    fn h2_pick(&mut self, client: &mut impl Downstream, mut h: Box<H2Stage>, ctx: &mut Ctx) -> Next {
        if self.upgrade_requested {
            log::warn!("upstream {}: an upgrade cannot go over HTTP/2", self.at.config(ctx).name);
            return Next::Fail { status: Status::BAD_GATEWAY, upstream: None, close: true };
        }
        h.owner = Some(client.owner());
        match self.at.link_next(client, ctx) {
            Some(Ok(link)) => {
                h.link = Some(link);
                let timeout = h.bounded(self.at.config(ctx).connect_timeout, ctx.clock.now);
                client.arm(ctx, timeout);
                Next::Go(Stage::H2(h))
            }
            Some(Err(())) => Next::Go(Stage::H2(h)),
            None => Next::Fail { status: Status::BAD_GATEWAY, upstream: None, close: false },
        }
    }

    /// Opens the stream with the request head; false when the connection
    /// would not.
    fn h2_open(
        &mut self,
        client: &mut impl Downstream,
        h: &mut H2Stage,
        link: LinkId,
        ctx: &mut Ctx,
    ) -> bool {
        let end = self.request_body.done();
        let request = h.request();
        let owner = client.owner();
        let stream = match ctx.proxy.upstreams.h2_open(link, owner, request, end) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!("HTTP/2 upstream: {e}");
                return false;
            }
        };
        h.stream = Some(stream);
        h.request_ended = end;
        if let Some(st) = self.at.stats(ctx) {
            st.h2_streams.fetch_add(1, Relaxed);
        }
        if std::mem::take(&mut self.continue_pending) && client.unread().is_empty() {
            client.emit_continue();
        }
        let timeout = h.bounded(self.at.config(ctx).response_timeout, ctx.clock.now);
        client.arm(ctx, timeout);
        true
    }

    /// The connection failed (or took no new stream) before this exchange's
    /// stream began: the server's failure, and the next server. `refused`:
    /// the server cannot have acted on the request (no stream, REFUSED_STREAM,
    /// beyond a GOAWAY), so even a request that is not idempotent goes again.
    fn h2_retry(&mut self, mut h: Box<H2Stage>, ctx: &mut Ctx, refused: bool) -> Next {
        if let (Some(link), Some(owner)) = (h.link.take(), h.owner) {
            h.stream = None;
            ctx.proxy.upstreams.h2_leave(link, owner, ctx.clock.now, &ctx.stats);
        }
        self.at.count_failure(ctx);
        if (refused || self.idempotent) && !h.body_started {
            h.response = Receiving::Head;
            h.request_ended = false;
            h.unreleased = 0;
            return Next::Go(Stage::H2(h));
        }
        Next::Fail { status: Status::BAD_GATEWAY, upstream: None, close: false }
    }

    /// Sends what the windows take of the request body; `Ok(true)` when
    /// bytes went.
    fn h2_send_body(
        &mut self,
        client: &mut impl Downstream,
        h: &mut H2Stage,
        ctx: &mut Ctx,
    ) -> Result<bool, Stop> {
        let mut moved = false;
        while !h.request_ended {
            let Some(stream) = h.stream.as_mut() else { return Ok(moved) };
            if h.pending.is_empty() {
                if self.request_body.done() {
                    if stream.send_data(Bytes::new(), true).is_err() {
                        return Ok(moved);
                    }
                    h.request_ended = true;
                    return Ok(true);
                }
                if client.unread().is_empty() {
                    match client.read_more(ctx) {
                        Ok(0) => {
                            return Err(Stop::Close(CloseReason::PeerClosed));
                        }
                        Ok(_) => {
                            let timeout = h.bounded(self.at.config(ctx).io_timeout, ctx.clock.now);
                            client.arm(ctx, timeout);
                        }
                        Err(e) => match client_io(e) {
                            None => continue,
                            Some(Outcome::Close(reason)) => return Err(Stop::Close(reason)),
                            Some(_) => return Ok(moved),
                        },
                    }
                }
                let before = h.pending.len();
                self.decode_request_body(client, &mut h.pending)?;
                h.body_started |= h.pending.len() > before || !self.request_body.done();
                continue;
            }
            let room = stream.writable(h.pending.len());
            if room == 0 {
                return Ok(moved);
            }
            let n = room.min(h.pending.len());
            let last = n == h.pending.len() && self.request_body.done();
            let data = Bytes::copy_from_slice(&h.pending[..n]);
            if stream.send_data(data, last).is_err() {
                // The stream is gone: the response side says how.
                h.request_ended = true;
                return Ok(moved);
            }
            h.pending.drain(..n);
            self.at.count_copied(ctx, n);
            h.request_ended = last;
            moved = true;
        }
        Ok(moved)
    }

    /// Takes a piece of the client's body (in its HTTP/1.1 framing) into
    /// `out` as plain bytes.
    fn decode_request_body(&mut self, client: &mut impl Downstream, out: &mut Vec<u8>) -> Result<(), Stop> {
        let input = client.unread();
        let take = input.len().min(BODY_CHUNK);
        let used = match &mut self.request_body {
            super::RequestBody::None => 0,
            super::RequestBody::Length(left) => {
                let n = (*left).min(take as u64) as usize;
                out.extend_from_slice(&input[..n]);
                *left -= n as u64;
                n
            }
            super::RequestBody::Chunked(decoder) => match decoder.decode(&input[..take], out) {
                Ok(n) => n,
                Err(e) => {
                    log::debug!("client sent a broken chunked body: {e}");
                    return Err(Stop::BadRequest);
                }
            },
        };
        client.consume(used);
        Ok(())
    }

    /// Moves the response: its head, body bytes as the client takes them,
    /// then its trailers.
    fn h2_receive(
        &mut self,
        client: &mut impl Downstream,
        h: &mut H2Stage,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Flow {
        // What the client took goes back to the server's window.
        match client.flush(ctx) {
            None => {}
            Some(Outcome::Close(reason)) => return Flow::Stop(Stop::Close(reason)),
            Some(_) => return Flow::Idle,
        }
        let Some(stream) = h.stream.as_mut() else { return Flow::Idle };
        if h.unreleased > 0 {
            stream.release(std::mem::take(&mut h.unreleased));
        }
        match h.response {
            Receiving::Head => match stream.poll_head() {
                Head::Pending => match stream.reset_by_server() {
                    Some(reason) => {
                        if let Some(st) = self.at.stats(ctx) {
                            st.h2_resets.fetch_add(1, Relaxed);
                        }
                        log::warn!(
                            "upstream {}: reset the stream before its response ({reason:?})",
                            self.at.server_name(ctx)
                        );
                        h.stream = None;
                        Flow::Retry { refused: reason == Reason::REFUSED_STREAM }
                    }
                    None => Flow::Idle,
                },
                Head::Failed(e) => {
                    let refused =
                        e.reason() == Some(Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote());
                    log::warn!(
                        "upstream {}: HTTP/2 stream failed before its response: {e}",
                        self.at.server_name(ctx)
                    );
                    h.stream = None;
                    Flow::Retry { refused }
                }
                Head::Ready(parts) => {
                    let ended = stream.response_ended();
                    let form = self.h2_begin_response(client, &parts, ended, ctx);
                    h.response = Receiving::Body(form);
                    let timeout = h.bounded(self.at.config(ctx).io_timeout, ctx.clock.now);
                    client.arm(ctx, timeout);
                    Flow::Moved
                }
            },
            Receiving::Body(form) => match stream.next_chunk() {
                BodyChunk::Data(data) => {
                    if matches!(form, Output::Chunked) && !data.is_empty() {
                        let mut framed = Vec::with_capacity(data.len() + 16);
                        tine_http::chunked::push_chunk(&mut framed, &data);
                        client.emit_body(&framed);
                    } else {
                        client.emit_body(&data);
                    }
                    h.unreleased += data.len();
                    *budget = budget.saturating_sub(data.len());
                    self.at.count_copied(ctx, data.len());
                    let timeout = h.bounded(self.at.config(ctx).io_timeout, ctx.clock.now);
                    client.arm(ctx, timeout);
                    Flow::Moved
                }
                BodyChunk::Pending => Flow::Idle,
                BodyChunk::End => match stream.trailers() {
                    Poll::Pending => Flow::Idle,
                    Poll::Ready(Ok(trailers)) => {
                        if let Some(t) = &trailers {
                            if let Some(status) = t.get("grpc-status") {
                                ctx.stats.count_grpc(GrpcStatus::parse(status.as_bytes()), false);
                            }
                            client.emit_trailers(t);
                        }
                        if matches!(form, Output::Chunked) {
                            client.emit_body(tine_http::chunked::LAST_CHUNK);
                        }
                        h.response = Receiving::Done;
                        Flow::Moved
                    }
                    Poll::Ready(Err(_)) => Flow::Stop(self.h2_broken_body(ctx)),
                },
                BodyChunk::Broken => Flow::Stop(self.h2_broken_body(ctx)),
            },
            // What was emitted went out (the flush above): the session ends
            // the response.
            Receiving::Done if h.request_ended => Flow::Stop(Stop::Done),
            // The response is whole while the request still goes (a server
            // that answered before reading it all): the rest is not sent.
            Receiving::Done => {
                stream.reset(Reason::NO_ERROR);
                h.request_ended = true;
                Flow::Moved
            }
        }
    }

    /// The body broke after its head went to the client: nothing can be
    /// said any more but a reset (or a close).
    fn h2_broken_body(&mut self, ctx: &mut Ctx) -> Stop {
        log::warn!(
            "upstream {}: the HTTP/2 stream broke in the middle of a response",
            self.at.server_name(ctx)
        );
        if let Some(st) = self.at.stats(ctx) {
            st.h2_resets.fetch_add(1, Relaxed);
        }
        Stop::Close(CloseReason::Error)
    }

    /// The response head arrived: counted, and emitted to the client as an
    /// upstream head; returns the form the client wants the body in.
    /// `ended`: the stream ended with the head (a trailers-only response),
    /// which the client then gets as such.
    fn h2_begin_response(
        &mut self,
        client: &mut impl Downstream,
        parts: &http::response::Parts,
        ended: bool,
        ctx: &mut Ctx,
    ) -> Output {
        let code = parts.status.as_u16();
        self.response_started = true;
        ctx.stats.count_response(Status(code));
        client.log_status(code);
        if let Some(st) = self.at.stats(ctx) {
            let took = ctx.clock.now.saturating_duration_since(self.at.picked_at);
            st.responses.fetch_add(1, Relaxed);
            st.response_us_sum.fetch_add(took.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
        }
        self.at.report(ctx, true);
        if let Some(status) = parts.headers.get("grpc-status") {
            // A trailers-only response: the status came with the head.
            ctx.stats.count_grpc(GrpcStatus::parse(status.as_bytes()), false);
        }
        let headers: Vec<httparse::Header<'_>> = parts
            .headers
            .iter()
            .map(|(name, value)| httparse::Header { name: name.as_str(), value: value.as_bytes() })
            .collect();
        let content_length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = if ended || self.head_request || code == 204 || code == 304 {
            ResponseBody::None
        } else {
            content_length.map_or(ResponseBody::Chunked, ResponseBody::Length)
        };
        let head = UpstreamHead {
            code,
            reason: parts.status.canonical_reason().unwrap_or("").as_bytes(),
            headers: &headers,
            head_len: 0,
            body,
            content_length,
            reusable: true,
        };
        let added =
            self.route.map_or(&crate::responses::NO_ROUTE.headers, |r| &ctx.http.route_replies[r].headers);
        let form = client.emit_head(&head, added, ctx.draining);
        match body {
            ResponseBody::Chunked => form,
            _ => Output::Raw,
        }
    }
}

/// A deadline passed in the HTTP/2 stage.
pub(super) fn h2_deadline_next(ex: &mut Exchange, h: Box<H2Stage>, ctx: &mut Ctx) -> Next {
    let timed_out = |ex: &Exchange, ctx: &mut Ctx| {
        if let Some(st) = ex.at.stats(ctx) {
            st.timeouts.fetch_add(1, Relaxed);
        }
    };
    if h.stream.is_none() && !h.past_deadline(ctx.clock.now) {
        // The connect (or its handshake) took too long: the next server.
        timed_out(ex, ctx);
        log::warn!("upstream {}: connect timed out", ex.at.server_name(ctx));
        return ex.h2_retry(h, ctx, true);
    }
    let head_pending = h.waiting();
    h.dismantle(ctx, ex.at.stats(ctx));
    timed_out(ex, ctx);
    if head_pending {
        ex.at.report(ctx, false);
        return Next::Fail { status: Status::GATEWAY_TIMEOUT, upstream: None, close: false };
    }
    Next::Close { reason: CloseReason::Timeout, upstream: None }
}
