//! Proxying one request to an upstream server, and the tunnel a WebSocket
//! becomes after a 101 (which `[[stream]]` relays, in stream.rs, share).
//!
//! ```text
//!  Pick -> Connecting -> SendHead -> SendBody -> AwaitHead -> Respond -> complete: keep, pool or close
//!   ^  refused / timed out before anything was sent: next server, else 502
//!   |  reused connection broken before any response byte (idempotent): one fresh retry
//!   |  no response head within response_timeout: 504
//!  101 Switching Protocols: Tunnel (splice both ways, half-close)
//! ```
//!
//! Each [`Stage`] holds what it needs and nothing else: the upstream socket
//! from `Connecting` on, the response buffer while the head is read, the
//! relay while a body or tunnel flows. A stage function takes its stage's
//! data by value and returns [`Next`], so a stage without its socket cannot
//! be written, and only the driver ends an exchange (completes it, answers
//! with an error page, or closes), each in one place.
//!
//! Response bodies of known length, and bodies that run until the upstream
//! closes, go upstream -> pipe -> client with splice. Chunked bodies are
//! decoded strictly and chunked again by tine through user space (the
//! sender's extensions and trailers never cross). Request bodies (Content-Length
//! or chunked, re-chunked the same way) are copied.
//!
//! Response heads are parsed by tine-http's strict rules; a head that breaks
//! them is answered with 502 and its connection closed, nothing of it
//! forwarded. An upstream connection is used for another request only when
//! its last response ended exactly where its framing said and nothing
//! waits behind it (see the pool, upstream.rs).
//!
//! The exchange knows nothing of the client's protocol: it reaches its
//! client through [`Downstream`] (emit a head, body bytes or a relay; be
//! told of request body bytes and of the client leaving) and its upstream
//! through [`crate::upstream::UpstreamIo`], and it ends by telling the
//! session how ([`Ended`]): complete, failed before any response (the
//! session answers with its error page) or closed.

mod attempt;
mod downstream;
mod h2;
#[cfg(test)]
mod tests;
mod tunnel;

pub use attempt::{close_upstream, Attempt, Connected, Ready};
pub use downstream::Downstream;
pub use tunnel::{Tunnel, TunnelEnds, TunnelStep};

use crate::buffer_pool::{FreeList, ReadBuf};
use crate::context::Ctx;
use crate::outcome::{client_io, CloseReason, Outcome};
use crate::relay::{PipePool, Pump, Relay};
use crate::upstream::{UpConn, UpstreamIo};
use attempt::Flushed;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use tine_config::HostHeader;
use tine_http::chunked::{ChunkedDecoder, Output};
use tine_http::forward::{self, Forwarding};
use tine_http::request::{Body, Method, Request, MAX_HEADERS};
use tine_http::response::Status;
use tine_http::response_head::{self, Asked, BadResponse, UpstreamHead};
use tine_stats::layout::UpstreamStats;
use tunnel::{relay_failure, Side};

/// Interim (1xx) responses accepted before the final one; an upstream that
/// sends more is broken or hostile.
const MAX_INTERIM_RESPONSES: u8 = 16;
/// Reads of a response head per turn of the loop, so that an upstream that
/// keeps sending cannot hold the worker.
const HEAD_READS_PER_TURN: usize = 4;

/// Where an exchange stands, with what that stage needs.
enum Stage {
    /// Choose a server (again, after a failure), then reuse or connect.
    Pick,
    /// A non-blocking connect under way (or a pooled connection to check).
    Connecting(UpConn),
    SendHead(UpConn),
    SendBody(UpConn),
    /// The response buffer is taken when the first bytes come.
    AwaitHead(UpConn, Option<ReadBuf>),
    Respond(UpConn, BodyRelay),
    Tunnel(UpConn, Tunnel),
    /// The whole exchange as a stream on a shared HTTP/2 connection.
    H2(Box<h2::H2Stage>),
}

impl Stage {
    /// Waiting on the upstream with nothing of a response under way: what a
    /// client that goes away abandons.
    fn waiting(&self) -> bool {
        match self {
            Stage::H2(h) => h.waiting(),
            stage => matches!(
                stage,
                Stage::Pick | Stage::Connecting(_) | Stage::SendHead(_) | Stage::AwaitHead(..)
            ),
        }
    }

    /// Gives back the buffers and pipes the stage holds; returns its upstream
    /// connection, if it has one, for the caller to close or keep. An
    /// HTTP/2 stream still open is reset (counted in `st`), and its shared
    /// connection let go.
    fn dismantle(self, ctx: &mut Ctx, st: Option<&UpstreamStats>) -> Option<UpConn> {
        match self {
            Stage::Pick => None,
            Stage::H2(h) => {
                h.dismantle(ctx, st);
                None
            }
            Stage::Connecting(up) | Stage::SendHead(up) | Stage::SendBody(up) => Some(up),
            Stage::AwaitHead(up, buf) => {
                if let Some(buf) = buf {
                    ctx.pool.put_read(buf);
                }
                Some(up)
            }
            Stage::Respond(up, body) => {
                recycle_body(&mut ctx.proxy.pipes, body);
                Some(up)
            }
            Stage::Tunnel(up, t) => {
                t.recycle(&mut ctx.proxy.pipes);
                Some(up)
            }
        }
    }
}

/// What a stage function decided.
enum Next {
    /// Go on at once, in this stage.
    Go(Stage),
    /// Stop in this stage until an event (Wait) or the next turn (Yield).
    Pause(Stage, Outcome),
    /// The response is complete; its upstream connection may be kept.
    Complete(UpConn),
    /// The response is complete, on a stream of a shared connection.
    Done,
    /// The server failed (refused, reset, closed early): try again where the
    /// request allows it, else 502.
    ServerFailed { upstream: Option<UpConn>, after_sending: bool },
    /// Answer with this error page if nothing of a response went out yet,
    /// else close; `close`: the client connection ends after it.
    Fail { status: Status, upstream: Option<UpConn>, close: bool },
    /// Close the client connection.
    Close { reason: CloseReason, upstream: Option<UpConn> },
}

/// What driving an exchange came to.
pub enum Driven {
    /// It waits for an event (Wait) or the next turn (Yield).
    Paused(Box<Exchange>, Outcome),
    /// Its deadline moved it on (to another server): drive it again.
    Ready(Box<Exchange>),
    Ended(Ended),
}

/// How an exchange ended, for the session to carry on from.
pub enum Ended {
    /// The response went out whole (its upstream connection is pooled or
    /// closed already).
    Complete,
    /// Nothing of a response was emitted: the session answers `status`
    /// itself, with the route's error page.
    Failed(Failure),
    /// The client connection closes.
    Close(CloseReason),
}

/// An exchange that failed before its response began.
#[derive(Clone, Copy, Debug)]
pub struct Failure {
    pub status: Status,
    /// The route whose error pages and headers the answer takes.
    pub route: Option<usize>,
    pub head_request: bool,
    /// The client connection cannot carry another request after this one
    /// (its body was not all read, or the upstream broke the protocol).
    pub close: bool,
}

enum RequestBody {
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl RequestBody {
    fn done(&self) -> bool {
        match self {
            RequestBody::None => true,
            RequestBody::Length(n) => *n == 0,
            RequestBody::Chunked(d) => d.is_done(),
        }
    }
}

enum BodyRelay {
    /// Nothing more to read from the upstream: the buffer holds the rest.
    None,
    /// Spliced from the upstream's socket `from` (plain TCP).
    Spliced {
        relay: Relay,
        from: RawFd,
    },
    /// Copied through user space (an upstream without a socket to splice):
    /// `left` bytes more, or until the upstream closes.
    Copied {
        left: Option<u64>,
    },
    Chunked(ChunkedDecoder),
}

/// What one read of a copied body came to.
enum Copied {
    More,
    Blocked,
    /// The body ended (an upstream that closed to end it).
    Ended,
    /// The upstream closed early or broke the framing.
    Broken,
}

/// What the response heads read so far amount to.
enum Parsed {
    More,
    Bad(BadResponse),
    Final(FinalHead),
}

/// One request's exchange with its upstream group: the facts that hold
/// across stages, and the stage.
pub struct Exchange {
    stage: Stage,
    /// The server of the group it goes to, and how trying it went.
    at: Attempt,
    /// The route that sent the request here: its headers and error pages go
    /// on the client's response.
    route: Option<usize>,
    idempotent: bool,
    /// The request head as sent upstream (kept for a retry).
    head: Vec<u8>,
    sent: usize,
    request_body: RequestBody,
    /// The client asked for a 100 (Continue) before it sends the body.
    continue_pending: bool,
    /// Some response byte arrived (so a failure is no longer retried).
    response_started: bool,
    upstream_keep_alive: bool,
    /// The upstream shut down its side during the exchange: the connection
    /// cannot be kept, whatever the response said.
    upstream_fin: bool,
    head_request: bool,
    /// The request asked to switch protocols: only then may a 101 answer it.
    upgrade_requested: bool,
    /// Interim responses read so far.
    interim: u8,
    /// Request bytes on their way upstream (body, or a tunnel's first bytes).
    to_upstream: Vec<u8>,
}

thread_local! {
    /// Boxes of exchanges that ended, for the next proxied requests (a worker
    /// is one thread).
    static SPARE_EXCHANGES: std::cell::RefCell<FreeList<Box<Exchange>>> =
        std::cell::RefCell::new(FreeList::new(1024));
}

/// `fresh` in a box that an earlier exchange used, if one is free: a proxied
/// request allocates nothing in the steady state.
fn recycled(fresh: Exchange) -> Box<Exchange> {
    match SPARE_EXCHANGES.with(|spare| spare.borrow_mut().take()) {
        Some(mut boxed) => {
            *boxed = fresh;
            boxed
        }
        None => Box::new(fresh),
    }
}

fn recycle_body(pipes: &mut PipePool, body: BodyRelay) {
    if let BodyRelay::Spliced { relay, .. } = body {
        pipes.give_back(relay);
    }
}

impl Exchange {
    /// The exchange for a request that route `route` sends to upstream group
    /// `group`: the upstream request head is built from the parsed request.
    pub fn new(
        req: &Request<'_>,
        route: usize,
        group: usize,
        peer: Option<std::net::IpAddr>,
        https: bool,
        ctx: &mut Ctx,
    ) -> Box<Exchange> {
        let mut head = ctx.pool.write_buf();
        let config = &ctx.proxy.upstreams.groups[group].config;
        let rule = match &ctx.http.routes[route].handler {
            tine_config::Handler::Proxy { host, .. } => host,
            tine_config::Handler::Static(_) | tine_config::Handler::Redirect(_) => &HostHeader::Keep,
        };
        let host: &[u8] = match rule {
            // A request without a Host (HTTP/1.0) still names one upstream.
            HostHeader::Keep => req.host.filter(|h| !h.is_empty()).unwrap_or(config.name.as_bytes()),
            HostHeader::Fixed(h) => h.as_bytes(),
            HostHeader::Upstream => config.name.as_bytes(),
        };
        let fwd = Forwarding { host, peer, underscores: config.underscores_in_headers, https };
        let (stage, chunks) = if config.protocol.is_http2() {
            // HTTP/2 frames the body itself: a chunked one is decoded.
            (Stage::H2(Box::new(h2_stage(req, &fwd, config.tls.is_some()))), Output::Raw)
        } else {
            forward::upstream_request_head(&mut head, req, &fwd);
            (Stage::Pick, Output::Chunked)
        };
        recycled(Exchange {
            stage,
            at: Attempt::new(group),
            route: Some(route),
            idempotent: matches!(req.method_text, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"),
            head,
            sent: 0,
            request_body: match req.body {
                Body::None => RequestBody::None,
                Body::Length(n) => RequestBody::Length(n),
                Body::Chunked => RequestBody::Chunked(ChunkedDecoder::new(chunks)),
            },
            continue_pending: req.expect_continue && req.body.has_bytes(),
            response_started: false,
            upstream_keep_alive: false,
            upstream_fin: false,
            head_request: req.method == Method::Head,
            upgrade_requested: req.upgrade.is_some(),
            interim: 0,
            to_upstream: Vec::new(),
        })
    }

    /// The upstream's end of stream came with an event: once the edge is
    /// consumed no later event would tell, so remember it.
    pub fn note_upstream_fin(&mut self) {
        self.upstream_fin = true;
    }

    /// Runs the exchange until it blocks or ends.
    pub fn drive(
        mut self: Box<Self>,
        client: &mut impl Downstream,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Driven {
        loop {
            if self.client_gave_up(client) {
                // What nginx logs for a request its client abandoned.
                client.log_status(499);
                self.retire(ctx);
                return Driven::Ended(Ended::Close(CloseReason::PeerClosed));
            }
            let next = self.advance(client, ctx, budget);
            match self.settle(next, client, ctx) {
                Driven::Ready(more) => self = more,
                driven => return driven,
            }
        }
    }

    /// What a passed deadline means mid-exchange: a connect that took too long
    /// tries the next server; a response head that took too long is a 504.
    pub fn on_deadline(mut self: Box<Self>, client: &mut impl Downstream, ctx: &mut Ctx) -> Driven {
        let next = match std::mem::replace(&mut self.stage, Stage::Pick) {
            stage @ (Stage::Pick | Stage::Connecting(_) | Stage::SendHead(_)) if self.sent == 0 => {
                if let Some(st) = self.at.stats(ctx) {
                    st.timeouts.fetch_add(1, Relaxed);
                }
                log::warn!("upstream {}: connect timed out", self.at.server_name(ctx));
                let st = self.at.stats(ctx);
                Next::ServerFailed { upstream: stage.dismantle(ctx, st), after_sending: false }
            }
            Stage::AwaitHead(up, buf) if !self.response_started => {
                if let Some(st) = self.at.stats(ctx) {
                    st.timeouts.fetch_add(1, Relaxed);
                }
                if let Some(buf) = buf {
                    ctx.pool.put_read(buf);
                }
                self.at.report(ctx, false);
                Next::Fail { status: Status::GATEWAY_TIMEOUT, upstream: Some(up), close: false }
            }
            Stage::Tunnel(up, t) => {
                t.recycle(&mut ctx.proxy.pipes);
                Next::Close { reason: CloseReason::Done, upstream: Some(up) }
            }
            Stage::H2(h) => h2::h2_deadline_next(&mut self, h, ctx),
            stage => {
                let st = self.at.stats(ctx);
                Next::Close { reason: CloseReason::Timeout, upstream: stage.dismantle(ctx, st) }
            }
        };
        self.settle(next, client, ctx)
    }

    /// The client connection closes with the exchange under way: it is
    /// abandoned (its upstream connection closed, never pooled).
    pub fn abandon(self: Box<Self>, ctx: &mut Ctx) {
        self.retire(ctx);
    }

    /// Runs the exchange's current stage once.
    fn advance(&mut self, client: &mut impl Downstream, ctx: &mut Ctx, budget: &mut usize) -> Next {
        match std::mem::replace(&mut self.stage, Stage::Pick) {
            Stage::Pick => self.pick_server(client, ctx),
            Stage::Connecting(up) => self.finish_connect(client, up, ctx),
            Stage::SendHead(up) => self.send_head(up, ctx),
            Stage::SendBody(up) => self.send_body(client, up, ctx),
            Stage::AwaitHead(up, buf) => self.await_head(client, up, buf, ctx),
            Stage::Respond(up, body) => self.respond(client, up, body, ctx, budget),
            Stage::Tunnel(up, t) => self.tunnel(client, up, t, ctx, budget),
            Stage::H2(h) => self.h2_advance(client, h, ctx, budget),
        }
    }

    /// Applies what a stage decided: the one place an exchange goes on,
    /// pauses, completes, fails over, fails or closes.
    fn settle(mut self: Box<Self>, mut next: Next, client: &mut impl Downstream, ctx: &mut Ctx) -> Driven {
        loop {
            next = match next {
                Next::Go(stage) => {
                    self.stage = stage;
                    return Driven::Ready(self);
                }
                Next::Pause(stage, outcome) => {
                    self.stage = stage;
                    return Driven::Paused(self, outcome);
                }
                Next::Complete(up) => {
                    self.complete(client, up, ctx);
                    return Driven::Ended(Ended::Complete);
                }
                Next::Done => {
                    self.retire(ctx);
                    return Driven::Ended(Ended::Complete);
                }
                Next::ServerFailed { upstream, after_sending } => {
                    self.server_failed(upstream, after_sending, ctx)
                }
                Next::Fail { status, upstream, close } => {
                    if let Some(up) = upstream {
                        close_upstream(ctx, up);
                    }
                    let failure = Failure {
                        status,
                        route: self.route,
                        head_request: self.head_request,
                        // Whatever of the request body was not relayed cannot
                        // be told from the next request.
                        close: close || !self.request_body.done(),
                    };
                    self.retire(ctx);
                    return Driven::Ended(Ended::Failed(failure));
                }
                Next::Close { reason, upstream } => {
                    if let Some(up) = upstream {
                        close_upstream(ctx, up);
                    }
                    self.retire(ctx);
                    return Driven::Ended(Ended::Close(reason));
                }
            };
        }
    }

    /// An exchange that ended: whatever its stage still holds goes back (an
    /// upstream connection is closed), then its buffers and its box.
    fn retire(mut self: Box<Self>, ctx: &mut Ctx) {
        let st = self.at.stats(ctx);
        if let Some(up) = std::mem::replace(&mut self.stage, Stage::Pick).dismantle(ctx, st) {
            close_upstream(ctx, up);
        }
        self.at.end_active(ctx);
        ctx.pool.put_write(std::mem::take(&mut self.head));
        ctx.pool.put_write(std::mem::take(&mut self.to_upstream));
        SPARE_EXCHANGES.with(|spare| spare.borrow_mut().give(self));
    }

    /// The client closed its connection while its request waits for the
    /// upstream: the exchange is abandoned (and its upstream connection closed,
    /// never pooled) rather than finished for nobody, as nginx does unless
    /// told to ignore client aborts. Only an end of stream that arrives during
    /// the exchange counts, and only with nothing left to read: a client that
    /// half-closed after sending its requests is served. Tunnels relay
    /// half-closes instead.
    fn client_gave_up(&self, client: &mut impl Downstream) -> bool {
        client.take_end_of_stream() && self.stage.waiting() && client.has_left()
    }

    /// Picks a server (not yet tried) and takes a connection to it from the
    /// pool (the one this client connection used last first) or a new one;
    /// with no server left, 502.
    fn pick_server(&mut self, client: &mut impl Downstream, ctx: &mut Ctx) -> Next {
        match self.at.connect_next(client, ctx) {
            Connected::To(up) => {
                self.upstream_fin = false;
                Next::Go(Stage::Connecting(up))
            }
            Connected::Failed => Next::Go(Stage::Pick),
            Connected::NoServer => Next::Fail { status: Status::BAD_GATEWAY, upstream: None, close: false },
        }
    }

    fn finish_connect(&mut self, client: &mut impl Downstream, mut up: UpConn, ctx: &mut Ctx) -> Next {
        match self.at.connection_ready(client, &mut up, ctx) {
            Ready::Yes => {}
            Ready::NotYet => return Next::Pause(Stage::Connecting(up), Outcome::Wait),
            Ready::Failed => return Next::ServerFailed { upstream: Some(up), after_sending: false },
        }
        let timeout = self.at.config(ctx).io_timeout;
        client.arm(ctx, timeout);
        Next::Go(Stage::SendHead(up))
    }

    fn send_head(&mut self, mut up: UpConn, ctx: &mut Ctx) -> Next {
        while self.sent < self.head.len() {
            match up.send(&self.head[self.sent..], false) {
                Ok(n) => {
                    self.sent += n;
                    self.at.count_copied(ctx, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Next::Pause(Stage::SendHead(up), Outcome::Wait)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::ServerFailed { upstream: Some(up), after_sending: false },
            }
        }
        Next::Go(Stage::SendBody(up))
    }

    /// Copies the request body, from what is buffered and then from the client,
    /// through a small queue so that a full upstream socket loses nothing.
    fn send_body(&mut self, client: &mut impl Downstream, mut up: UpConn, ctx: &mut Ctx) -> Next {
        // The upstream took the head: invite the body, unless it is on its way.
        if std::mem::take(&mut self.continue_pending) && client.unread().is_empty() {
            client.emit_continue();
        }
        loop {
            match client.flush(ctx) {
                None => {}
                Some(Outcome::Close(reason)) => return Next::Close { reason, upstream: Some(up) },
                Some(outcome) => return Next::Pause(Stage::SendBody(up), outcome),
            }
            match self.at.flush_to_upstream(&mut self.to_upstream, &mut up, client, ctx) {
                Flushed::All => {}
                Flushed::Blocked => return Next::Pause(Stage::SendBody(up), Outcome::Wait),
                Flushed::Failed => return Next::ServerFailed { upstream: Some(up), after_sending: true },
            }
            if self.request_body.done() {
                let timeout = self.at.config(ctx).response_timeout;
                client.arm(ctx, timeout);
                // The answer cannot be there yet; its arrival raises an event.
                return Next::Pause(Stage::AwaitHead(up, None), Outcome::Wait);
            }
            if client.unread().is_empty() {
                match client.read_more(ctx) {
                    Ok(0) => return Next::Close { reason: CloseReason::PeerClosed, upstream: Some(up) },
                    Ok(_) => {
                        // io_timeout bounds a pause in the body, not the whole upload.
                        let timeout = self.at.config(ctx).io_timeout;
                        client.arm(ctx, timeout);
                    }
                    Err(e) => match client_io(e) {
                        None => {}
                        Some(Outcome::Close(reason)) => return Next::Close { reason, upstream: Some(up) },
                        Some(outcome) => return Next::Pause(Stage::SendBody(up), outcome),
                    },
                }
                continue;
            }
            match self.queue_body(client.unread()) {
                Ok(take) => client.consume(take),
                Err(e) => {
                    log::info!("client request body refused: {e}");
                    ctx.stats.count_rejection(crate::context::Rejection::Body);
                    return Next::Fail { status: Status::BAD_REQUEST, upstream: Some(up), close: false };
                }
            }
        }
    }

    /// Queues what of `data` belongs to the request body for the upstream;
    /// returns how many bytes that was.
    fn queue_body(&mut self, data: &[u8]) -> Result<usize, tine_http::chunked::ChunkedError> {
        Ok(match &mut self.request_body {
            RequestBody::Length(n) => {
                let take = (*n).min(data.len() as u64) as usize;
                *n -= take as u64;
                self.to_upstream.extend_from_slice(&data[..take]);
                take
            }
            // Decoded and chunked again: the client's framing bytes
            // (extensions, trailers) never reach the upstream.
            RequestBody::Chunked(d) => d.decode(data, &mut self.to_upstream)?,
            RequestBody::None => 0,
        })
    }

    /// Reads the response head; on a complete one, emits the cleaned head for
    /// the client and decides how the body travels. Interim responses are
    /// read past, a bounded number of them; a few reads per turn at most.
    fn await_head(
        &mut self,
        client: &mut impl Downstream,
        mut up: UpConn,
        buf: Option<ReadBuf>,
        ctx: &mut Ctx,
    ) -> Next {
        let mut buf = buf.unwrap_or_else(|| ctx.pool.read_buf());
        for _ in 0..HEAD_READS_PER_TURN {
            // The parser refuses a head that fills the buffer, so there is room.
            match up.recv(buf.spare()) {
                Ok(0) => {
                    ctx.pool.put_read(buf);
                    return Next::ServerFailed { upstream: Some(up), after_sending: true };
                }
                Ok(n) => {
                    buf.commit(n);
                    self.response_started = true;
                    self.at.count_copied(ctx, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Next::Pause(Stage::AwaitHead(up, Some(buf)), Outcome::Wait)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    ctx.pool.put_read(buf);
                    return Next::ServerFailed { upstream: Some(up), after_sending: true };
                }
            }
            match self.parse_response_heads(client, &mut buf, ctx) {
                Parsed::More => {}
                Parsed::Bad(why) => {
                    ctx.pool.put_read(buf);
                    return self.bad_response(up, why, ctx);
                }
                Parsed::Final(head) => return self.begin_response(client, up, buf, head, ctx),
            }
        }
        Next::Pause(Stage::AwaitHead(up, Some(buf)), Outcome::Yield)
    }

    /// Parses the heads buffered so far: interim ones are dropped, a final
    /// one is emitted to the client and consumed from the buffer.
    fn parse_response_heads(
        &mut self,
        client: &mut impl Downstream,
        buf: &mut ReadBuf,
        ctx: &mut Ctx,
    ) -> Parsed {
        let limit = ctx.http.limits.head_bytes;
        let asked = Asked { head: self.head_request, upgrade: self.upgrade_requested };
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let head = match response_head::parse_response(buf.filled(), &mut headers, asked, limit) {
                Ok(None) => return Parsed::More,
                Err(why) => return Parsed::Bad(why),
                Ok(Some(head)) => head,
            };
            if head.is_interim() {
                self.interim += 1;
                if self.interim > MAX_INTERIM_RESPONSES {
                    return Parsed::Bad(BadResponse::Malformed);
                }
                let len = head.head_len;
                buf.consume(len);
                continue;
            }
            let added = self
                .route
                .map_or(&crate::responses::NO_ROUTE.headers, |r| &ctx.http.route_replies[r].headers);
            let chunks = client.emit_head(&head, added, ctx.draining);
            let facts = FinalHead::of(&head, chunks);
            buf.consume(head.head_len);
            return Parsed::Final(facts);
        }
    }
}

impl Exchange {
    /// An upstream response head broke the rules: the client gets a 502 and
    /// the connection closes (nothing of the head was forwarded), the
    /// upstream connection is closed, and the server's failure is counted.
    fn bad_response(&mut self, up: UpConn, why: BadResponse, ctx: &mut Ctx) -> Next {
        log::warn!("upstream {}: {why}", self.at.server_name(ctx));
        self.at.count_failure(ctx);
        Next::Fail { status: Status::BAD_GATEWAY, upstream: Some(up), close: true }
    }

    /// The client's head is emitted; decide how the body travels, starting
    /// with whatever body bytes came in with the head.
    fn begin_response(
        &mut self,
        client: &mut impl Downstream,
        up: UpConn,
        buf: ReadBuf,
        head: FinalHead,
        ctx: &mut Ctx,
    ) -> Next {
        let upgrade = head.code == 101;
        ctx.stats.count_response(Status(head.code));
        client.log_status(head.code);
        if let Some(st) = self.at.stats(ctx) {
            let took = ctx.clock.now.saturating_duration_since(self.at.picked_at);
            st.responses.fetch_add(1, Relaxed);
            st.response_us_sum.fetch_add(took.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
        }
        self.upstream_keep_alive = head.reusable;
        let early: &[u8] = buf.filled();
        let relay = match head.body {
            _ if upgrade => {
                // The upstream's first tunnel bytes go to the client as they are.
                client.emit_body(early);
                Ok((BodyRelay::None, early.len()))
            }
            response_head::ResponseBody::None => Ok((BodyRelay::None, 0)),
            response_head::ResponseBody::Chunked => {
                let mut decoder = ChunkedDecoder::new(head.chunks);
                match client.emit_chunked(&mut decoder, early) {
                    Ok(k) => Ok((BodyRelay::Chunked(decoder), k)),
                    Err(e) => {
                        log::warn!("upstream sent a chunked body with broken framing: {e}");
                        Err(())
                    }
                }
            }
            response_head::ResponseBody::Length(n) => {
                let have = (early.len() as u64).min(n) as usize;
                client.emit_body(&early[..have]);
                if have as u64 == n {
                    Ok((BodyRelay::None, have))
                } else {
                    body_relay(client, &up, Some(n - have as u64), &mut ctx.proxy.pipes).map(|r| (r, have))
                }
            }
            response_head::ResponseBody::UntilClose => {
                client.emit_body(early);
                body_relay(client, &up, None, &mut ctx.proxy.pipes).map(|r| (r, early.len()))
            }
        };
        let early_len = early.len();
        ctx.pool.put_read(buf);
        let Ok((body, used)) = relay else {
            return Next::Close { reason: CloseReason::Error, upstream: Some(up) };
        };
        if used < early_len {
            // Bytes after the end of the response: never read as the answer to
            // another request.
            self.upstream_keep_alive = false;
        }
        self.at.report(ctx, true);
        if upgrade {
            recycle_body(&mut ctx.proxy.pipes, body);
            return self.start_tunnel(client, up, ctx);
        }
        let timeout = self.at.config(ctx).io_timeout;
        client.arm(ctx, timeout);
        Next::Go(Stage::Respond(up, body))
    }

    /// Relays the response body to the client: spliced, or decoded and
    /// chunked again, or nothing more (the buffer held it all).
    fn respond(
        &mut self,
        client: &mut impl Downstream,
        mut up: UpConn,
        mut body: BodyRelay,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Next {
        loop {
            match client.flush(ctx) {
                None => {}
                Some(Outcome::Close(reason)) => {
                    recycle_body(&mut ctx.proxy.pipes, body);
                    return Next::Close { reason, upstream: Some(up) };
                }
                Some(outcome) => return Next::Pause(Stage::Respond(up, body), outcome),
            }
            body = match body {
                BodyRelay::None => return Next::Complete(up),
                BodyRelay::Spliced { relay, from } => {
                    return self.splice_body(client, up, relay, from, ctx, budget)
                }
                BodyRelay::Copied { left: Some(0) } => return Next::Complete(up),
                BodyRelay::Copied { mut left } => match self.copy_body(client, &mut up, &mut left, ctx) {
                    Copied::More => BodyRelay::Copied { left },
                    Copied::Blocked => {
                        return Next::Pause(Stage::Respond(up, BodyRelay::Copied { left }), Outcome::Wait)
                    }
                    Copied::Ended => return Next::Complete(up),
                    Copied::Broken => return Next::Close { reason: CloseReason::Error, upstream: Some(up) },
                },
                BodyRelay::Chunked(decoder) if decoder.is_done() => return Next::Complete(up),
                BodyRelay::Chunked(mut decoder) => match self.copy_chunks(client, &mut up, &mut decoder, ctx)
                {
                    Copied::More => BodyRelay::Chunked(decoder),
                    Copied::Blocked => {
                        return Next::Pause(Stage::Respond(up, BodyRelay::Chunked(decoder)), Outcome::Wait)
                    }
                    Copied::Ended | Copied::Broken => {
                        return Next::Close { reason: CloseReason::Error, upstream: Some(up) }
                    }
                },
            };
        }
    }

    /// Splices the body from the upstream to the client, within the turn's
    /// budget.
    fn splice_body(
        &mut self,
        client: &mut impl Downstream,
        mut up: UpConn,
        mut relay: Relay,
        from: RawFd,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Next {
        let before = relay.moved;
        let pumped = client.relay_body(&mut relay, from, budget);
        let moved = relay.moved - before;
        let cut_short = relay.cut_short();
        ctx.stats.slot.bytes_sent.fetch_add(moved, Relaxed);
        if let Some(st) = self.at.stats(ctx) {
            st.bytes_spliced.fetch_add(moved, Relaxed);
        }
        if moved > 0 {
            let timeout = self.at.config(ctx).io_timeout;
            client.arm(ctx, timeout);
        }
        up.spliced();
        let outcome = match pumped {
            Ok(Pump::Blocked) => Outcome::Wait,
            Ok(Pump::Budget) => Outcome::Yield,
            Ok(Pump::Done) if !cut_short => {
                ctx.proxy.pipes.give_back(relay);
                return Next::Complete(up);
            }
            Ok(Pump::Done) => {
                log::warn!("upstream closed in the middle of a response body");
                ctx.proxy.pipes.give_back(relay);
                return Next::Close { reason: CloseReason::Error, upstream: Some(up) };
            }
            Err(e) => {
                ctx.proxy.pipes.give_back(relay);
                return Next::Close { reason: relay_failure(e, Side::ClientIsDest), upstream: Some(up) };
            }
        };
        Next::Pause(Stage::Respond(up, BodyRelay::Spliced { relay, from }), outcome)
    }

    /// Reads what the upstream sent of a body that is copied (no socket to
    /// splice from) and emits it; bytes past its length are never sent on.
    fn copy_body(
        &mut self,
        client: &mut impl Downstream,
        up: &mut UpConn,
        left: &mut Option<u64>,
        ctx: &mut Ctx,
    ) -> Copied {
        let mut chunk = [0u8; 16 * 1024];
        match up.recv(&mut chunk) {
            Ok(0) if left.is_none() => Copied::Ended,
            Ok(0) => {
                log::warn!("upstream closed in the middle of a response body");
                Copied::Broken
            }
            Ok(n) => {
                let body = left.map_or(n, |l| (l.min(n as u64)) as usize);
                if body < n {
                    self.upstream_keep_alive = false;
                }
                if let Some(l) = left.as_mut() {
                    *l -= body as u64;
                }
                client.emit_body(&chunk[..body]);
                self.at.count_copied(ctx, n);
                let timeout = self.at.config(ctx).io_timeout;
                client.arm(ctx, timeout);
                Copied::More
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Copied::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Copied::More,
            Err(_) => Copied::Broken,
        }
    }

    /// Reads what the upstream sent of a chunked body and emits its data.
    fn copy_chunks(
        &mut self,
        client: &mut impl Downstream,
        up: &mut UpConn,
        decoder: &mut ChunkedDecoder,
        ctx: &mut Ctx,
    ) -> Copied {
        let mut chunk = [0u8; 16 * 1024];
        match up.recv(&mut chunk) {
            Ok(0) => {
                log::warn!("upstream closed in the middle of a chunked body");
                Copied::Broken
            }
            Ok(n) => {
                let k = match client.emit_chunked(decoder, &chunk[..n]) {
                    Ok(k) => k,
                    Err(e) => {
                        log::warn!("upstream sent a chunked body with broken framing: {e}");
                        return Copied::Broken;
                    }
                };
                if k < n {
                    self.upstream_keep_alive = false;
                }
                self.at.count_copied(ctx, n);
                let timeout = self.at.config(ctx).io_timeout;
                client.arm(ctx, timeout);
                Copied::More
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Copied::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Copied::More,
            Err(_) => Copied::Broken,
        }
    }

    /// The response is complete: the upstream connection goes to the pool
    /// when it can carry another request (the client connection that used
    /// it gets it back first), else it closes.
    fn complete(self: Box<Self>, client: &impl Downstream, up: UpConn, ctx: &mut Ctx) {
        if self.upstream_keep_alive && !self.upstream_fin {
            ctx.proxy.upstreams.release(up, client.owner().conn, ctx.clock.now, &ctx.stats);
        } else {
            close_upstream(ctx, up);
        }
        self.retire(ctx);
    }

    /// The server failed us. Before anything reached the client, try another
    /// server (or a fresh connection to the same one); otherwise 502.
    fn server_failed(&mut self, upstream: Option<UpConn>, after_sending: bool, ctx: &mut Ctx) -> Next {
        if let Some(up) = upstream {
            close_upstream(ctx, up);
        }
        // A pooled connection the server had closed meanwhile is no failure of
        // the server: retry once on a fresh connection (if the request may be
        // repeated), without counting it against the server.
        if self.at.reused && !self.response_started && self.idempotent && !self.at.fresh_retry_done {
            self.at.fresh_retry_done = true;
            self.at.reused = false;
            self.sent = 0;
            self.at.untry_server();
            return Next::Go(Stage::Pick);
        }
        self.at.count_failure(ctx);
        let nothing_sent =
            !after_sending || (self.sent == 0 && matches!(self.request_body, RequestBody::None));
        if nothing_sent || (self.idempotent && !self.response_started) {
            self.sent = 0;
            return Next::Go(Stage::Pick);
        }
        Next::Fail { status: Status::BAD_GATEWAY, upstream: None, close: false }
    }

    /// A 101 answered the upgrade: the exchange becomes a tunnel.
    fn start_tunnel(&mut self, client: &mut impl Downstream, up: UpConn, ctx: &mut Ctx) -> Next {
        let Some(tunnel) = Tunnel::open(client, &up, &mut self.to_upstream, ctx) else {
            return Next::Close { reason: CloseReason::Error, upstream: Some(up) };
        };
        // The breaker heard of the 101 in begin_response.
        let idle = self.at.config(ctx).io_timeout;
        client.arm(ctx, idle);
        Next::Go(Stage::Tunnel(up, tunnel))
    }

    fn tunnel(
        &mut self,
        client: &mut impl Downstream,
        mut up: UpConn,
        mut t: Tunnel,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Next {
        let idle = self.at.config(ctx).io_timeout;
        let ends = TunnelEnds { upstream: &mut up, at: &self.at, idle };
        match t.pump(client, ends, &mut self.to_upstream, ctx, budget) {
            TunnelStep::Pause(outcome) => Next::Pause(Stage::Tunnel(up, t), outcome),
            TunnelStep::Close(reason) => {
                t.recycle(&mut ctx.proxy.pipes);
                Next::Close { reason, upstream: Some(up) }
            }
        }
    }
}

/// How a body of known length (`left` bytes more) or one that runs until
/// the upstream closes travels: spliced where the upstream has a plain
/// socket and the client takes a splice, else copied.
fn body_relay(
    client: &impl Downstream,
    up: &UpConn,
    left: Option<u64>,
    pipes: &mut PipePool,
) -> Result<BodyRelay, ()> {
    match up.splice_socket().filter(|_| client.takes_splice()) {
        Some(from) => pipes
            .take()
            .map(|pipe| BodyRelay::Spliced { relay: Relay::new(pipe, left), from })
            .map_err(|_| ()),
        None => Ok(BodyRelay::Copied { left }),
    }
}

/// The HTTP/2 stage of a request: its head as an HTTP/2 upstream gets it.
fn h2_stage(req: &Request<'_>, fwd: &Forwarding<'_>, tls: bool) -> h2::H2Stage {
    let method = http::Method::from_bytes(req.method_text.as_bytes()).unwrap_or(http::Method::GET);
    let mut uri = http::Uri::builder().scheme(if tls { "https" } else { "http" });
    if let Ok(authority) = http::uri::Authority::try_from(fwd.host) {
        uri = uri.authority(authority);
    }
    let uri = uri.path_and_query(req.origin_target).build().unwrap_or_default();
    let mut fields = http::HeaderMap::with_capacity(req.fields.len() + 4);
    forward::upstream_h2_fields(req, fwd, |name, value| {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value))
        {
            fields.append(name, value);
        }
    });
    h2::H2Stage::new(method, uri, fields)
}

/// What a final response head decided, kept once the head's borrow ends.
struct FinalHead {
    code: u16,
    body: response_head::ResponseBody,
    reusable: bool,
    /// The form the client's session wants a chunked body's data in.
    chunks: Output,
}

impl FinalHead {
    fn of(head: &UpstreamHead<'_, '_>, chunks: Output) -> Self {
        FinalHead { code: head.code, body: head.body, reusable: head.reusable, chunks }
    }
}
