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
//! its last response ended exactly where its framing said, and only after a
//! look shows nothing waiting on it.

use super::{CloseReason, Conn, Outcome, Phase, Sending};
use crate::buffer_pool::{FreeList, ReadBuf};
use crate::context::Ctx;
use crate::outcome::client_io;
use crate::relay::{PipePool, Pump, Relay, RelayError};
use crate::responses::{error_page, Framing};
use crate::transport::Transport;
use crate::upstream::{Health, UpConn, UpstreamIo, Wanted};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tine_config::HostHeader;
use tine_http::chunked::{ChunkedDecoder, Output};
use tine_http::forward::{self, ClientSide, Forwarding};
use tine_http::request::{Body, Method, Request, MAX_HEADERS};
use tine_http::response::{Persistence, Status};
use tine_http::response_head::{self, Asked, BadResponse, ResponseHead};
use tine_net::sys::Peek;
use tine_stats::layout::UpstreamStats;
use tine_stats::UpstreamGauge;

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
}

impl Stage {
    /// Waiting on the upstream with nothing of a response under way: what a
    /// client that goes away abandons.
    fn waiting(&self) -> bool {
        matches!(self, Stage::Pick | Stage::Connecting(_) | Stage::SendHead(_) | Stage::AwaitHead(..))
    }

    /// Gives back the buffers and pipes the stage holds; returns its upstream
    /// socket, if it has one, for the caller to close or keep.
    fn dismantle(self, ctx: &mut Ctx) -> Option<UpConn> {
        match self {
            Stage::Pick => None,
            Stage::Connecting(fd) | Stage::SendHead(fd) | Stage::SendBody(fd) => Some(fd),
            Stage::AwaitHead(fd, buf) => {
                if let Some(buf) = buf {
                    ctx.pool.put_read(buf);
                }
                Some(fd)
            }
            Stage::Respond(fd, body) => {
                recycle_body(&mut ctx.proxy.pipes, body);
                Some(fd)
            }
            Stage::Tunnel(fd, t) => {
                recycle_tunnel(&mut ctx.proxy.pipes, t);
                Some(fd)
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
    /// The server failed (refused, reset, closed early): try again where the
    /// request allows it, else 502.
    ServerFailed { upstream: Option<UpConn>, after_sending: bool },
    /// Answer with this error page if nothing of a response went out yet,
    /// else close.
    Fail { status: Status, upstream: Option<UpConn> },
    /// Close the client connection.
    Close { reason: CloseReason, upstream: Option<UpConn> },
}

/// After the driver applied a [`Next`]: the exchange goes on, or it is over
/// (with what the connection's state machine does next).
enum Flow {
    Continue(Box<Exchange>),
    Done(Option<Outcome>),
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
    Spliced(Relay),
    Chunked(ChunkedDecoder),
}

/// Which server of its group a request or a stream is using, and how
/// trying the group went so far.
pub(super) struct Attempt {
    pub(super) group: usize,
    pub(super) server: usize,
    /// Servers already tried (a bit each).
    pub(super) tried: u64,
    /// When the current server was picked: its response time runs from here
    /// to the final response head.
    pub(super) picked_at: std::time::Instant,
    /// The upstream connection came from the keep-alive pool.
    pub(super) reused: bool,
    /// Counted among `server`'s exchanges under way (for least_conn).
    pub(super) active: bool,
    /// A pooled connection found broken was replaced by a fresh one already
    /// (or must not be: a stream).
    pub(super) fresh_retry_done: bool,
    /// A connection from the keep-alive pool may serve (not for a stream,
    /// whose raw bytes must start on a connection of their own).
    pub(super) pooled: bool,
}

impl Attempt {
    pub(super) fn new(group: usize) -> Self {
        Attempt {
            group,
            server: 0,
            tried: 0,
            picked_at: std::time::Instant::now(),
            reused: false,
            active: false,
            fresh_retry_done: false,
            pooled: true,
        }
    }
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
    /// The client speaks HTTP/1.0: a chunked response reaches it decoded.
    client_http10: bool,
    /// Interim responses read so far.
    interim: u8,
    /// Request bytes on their way upstream (body, or a tunnel's first bytes).
    to_upstream: Vec<u8>,
}

impl Exchange {
    fn new(group: usize) -> Self {
        Exchange {
            stage: Stage::Pick,
            at: Attempt::new(group),
            route: None,
            idempotent: false,
            head: Vec::new(),
            sent: 0,
            request_body: RequestBody::None,
            continue_pending: false,
            response_started: false,
            upstream_keep_alive: false,
            upstream_fin: false,
            head_request: false,
            upgrade_requested: false,
            client_http10: false,
            interim: 0,
            to_upstream: Vec::new(),
        }
    }

    /// The upstream's end of stream came with an event: once the edge is
    /// consumed no later event would tell, so remember it.
    pub(super) fn note_upstream_fin(&mut self) {
        self.upstream_fin = true;
    }
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

/// An exchange that ended: whatever its stage still holds goes back (an
/// upstream socket is closed), then its buffers and its box.
fn retire(ctx: &mut Ctx, mut ex: Box<Exchange>) {
    if let Some(fd) = std::mem::replace(&mut ex.stage, Stage::Pick).dismantle(ctx) {
        close_upstream(ctx, fd);
    }
    end_active(ctx, &mut ex.at);
    ctx.pool.put_write(std::mem::take(&mut ex.head));
    ctx.pool.put_write(std::mem::take(&mut ex.to_upstream));
    SPARE_EXCHANGES.with(|spare| spare.borrow_mut().give(ex));
}

/// Closes an upstream connection that cannot be kept.
pub(super) fn close_upstream(ctx: &mut Ctx, conn: UpConn) {
    ctx.proxy.upstreams.close(conn, &ctx.stats);
}

fn recycle_body(pipes: &mut PipePool, body: BodyRelay) {
    if let BodyRelay::Spliced(relay) = body {
        pipes.give_back(relay);
    }
}

pub(super) fn recycle_tunnel(pipes: &mut PipePool, t: Tunnel) {
    pipes.give_back(t.up);
    pipes.give_back(t.down);
}

/// A tunnel's two relays: client to upstream (`up`) and back (`down`).
pub(super) struct Tunnel {
    up: Relay,
    down: Relay,
    up_closed: bool,
    down_closed: bool,
}

/// The upstream end of a tunnel, and how long it may stay silent.
pub(super) struct TunnelEnds<'a> {
    pub(super) upstream: &'a mut UpConn,
    pub(super) at: &'a Attempt,
    pub(super) idle: Duration,
}

/// What a tunnel's turn came to.
pub(super) enum TunnelStep {
    Pause(Outcome),
    Close(CloseReason),
}

/// What taking a connection for an attempt came to.
pub(super) enum Connected {
    To(UpConn),
    /// The connect failed at once (counted against the server): pick again.
    Failed,
    /// Every server was tried or is out.
    NoServer,
}

/// Whether a connection just taken can carry bytes.
pub(super) enum Ready {
    Yes,
    /// The connect is under way.
    NotYet,
    Failed,
}

/// What one read of a chunked body came to.
enum Copied {
    More,
    Blocked,
    /// The upstream closed early or broke the framing.
    Broken,
}

/// How far a queue of bytes for the upstream got.
enum Flushed {
    All,
    Blocked,
    Failed,
}

/// What the response heads read so far amount to.
enum Parsed {
    More,
    Bad(BadResponse),
    Final(FinalHead),
}

impl Conn {
    /// Runs the exchange until it blocks or ends. While it runs the
    /// connection's phase is not `Proxy`; it is put back when the exchange
    /// pauses, and set to what follows when it ends.
    pub(super) fn drive_proxy(
        &mut self,
        mut ex: Box<Exchange>,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Option<Outcome> {
        loop {
            if self.client_gave_up(&ex) {
                // What nginx logs for a request its client abandoned.
                if let Some(entry) = self.io.access.as_mut() {
                    entry.set_status(499);
                }
                retire(ctx, ex);
                return Some(Outcome::Close(CloseReason::PeerClosed));
            }
            let next = self.advance(&mut ex, ctx, budget);
            match self.settle_exchange(ex, next, ctx) {
                Flow::Continue(more) => ex = more,
                Flow::Done(outcome) => return outcome,
            }
        }
    }

    /// Runs the exchange's current stage once.
    fn advance(&mut self, ex: &mut Exchange, ctx: &mut Ctx, budget: &mut usize) -> Next {
        match std::mem::replace(&mut ex.stage, Stage::Pick) {
            Stage::Pick => self.pick_server(ex, ctx),
            Stage::Connecting(fd) => self.finish_connect(ex, fd, ctx),
            Stage::SendHead(fd) => self.send_head(ex, fd, ctx),
            Stage::SendBody(fd) => self.send_body(ex, fd, ctx),
            Stage::AwaitHead(fd, buf) => self.await_head(ex, fd, buf, ctx),
            Stage::Respond(fd, body) => self.respond(ex, fd, body, ctx, budget),
            Stage::Tunnel(fd, t) => self.tunnel(ex, fd, t, ctx, budget),
        }
    }

    /// Applies what a stage decided: the one place an exchange goes on,
    /// pauses, completes, fails over, answers with an error or closes.
    fn settle_exchange(&mut self, mut ex: Box<Exchange>, mut next: Next, ctx: &mut Ctx) -> Flow {
        loop {
            next = match next {
                Next::Go(stage) => {
                    ex.stage = stage;
                    return Flow::Continue(ex);
                }
                Next::Pause(stage, outcome) => {
                    ex.stage = stage;
                    self.phase = Phase::Proxy(ex);
                    return Flow::Done(Some(outcome));
                }
                Next::Complete(fd) => return Flow::Done(self.complete(ex, fd, ctx)),
                Next::ServerFailed { upstream, after_sending } => {
                    self.server_failed(&mut ex, upstream, after_sending, ctx)
                }
                Next::Fail { status, upstream } => return Flow::Done(self.fail(ex, status, upstream, ctx)),
                Next::Close { reason, upstream } => {
                    if let Some(fd) = upstream {
                        close_upstream(ctx, fd);
                    }
                    retire(ctx, ex);
                    return Flow::Done(Some(Outcome::Close(reason)));
                }
            };
        }
    }

    /// A response starts for the client: counted, and its status kept for the
    /// access log.
    fn count_proxied_response(&mut self, ctx: &mut Ctx, code: u16) {
        ctx.stats.count_response(Status(code));
        if let Some(entry) = self.io.access.as_mut() {
            entry.set_status(code);
        }
    }

    /// The client closed its connection while its request waits for the
    /// upstream: the exchange is abandoned (and its upstream connection closed,
    /// never pooled) rather than finished for nobody, as nginx does unless
    /// told to ignore client aborts. Only an end of stream that arrives during
    /// the exchange counts, and only with nothing left to read: a client that
    /// half-closed after sending its requests is served. Streams relay
    /// half-closes instead.
    fn client_gave_up(&mut self, ex: &Exchange) -> bool {
        if !std::mem::take(&mut self.io.client_fin) {
            return false;
        }
        let waiting = ex.stage.waiting();
        let nothing_buffered = self.io.rbuf.as_ref().is_none_or(|b| b.is_empty());
        waiting && nothing_buffered && self.io.transport.peek() == Peek::End
    }

    /// Picks a server (not yet tried) and takes a connection to it from the
    /// pool (the one this client connection used last first) or a new one;
    /// with no server left, 502.
    fn pick_server(&mut self, ex: &mut Exchange, ctx: &mut Ctx) -> Next {
        match self.connect_next(&mut ex.at, ctx) {
            Connected::To(conn) => {
                ex.upstream_fin = false;
                Next::Go(Stage::Connecting(conn))
            }
            Connected::Failed => Next::Go(Stage::Pick),
            Connected::NoServer => Next::Fail { status: Status::BAD_GATEWAY, upstream: None },
        }
    }

    /// Picks a server of the attempt's group not yet tried, and takes a
    /// connection to it from the pool (the one this client connection used
    /// last first) or opens one, under the connect timeout (a pooled one
    /// under io_timeout).
    pub(super) fn connect_next(&mut self, at: &mut Attempt, ctx: &mut Ctx) -> Connected {
        end_active(ctx, at);
        let Some(server) = ctx.proxy.upstreams.pick(at.group, at.tried, ctx.clock.now) else {
            return Connected::NoServer;
        };
        at.server = server;
        at.picked_at = ctx.clock.now;
        begin_active(ctx, at);
        if server < 64 {
            at.tried |= 1 << server;
        }
        let stats = server_stats(ctx, at.group, server);
        let wanted = Wanted { group: at.group, server, owner: self.io.id, reuse: at.pooled };
        match ctx.proxy.upstreams.connect(wanted, ctx.clock.now, &ctx.stats, &ctx.epoll) {
            Ok(c) => {
                at.reused = c.reused;
                if let Some(st) = stats {
                    st.requests.fetch_add(1, Relaxed);
                }
                let config = &ctx.proxy.upstreams.groups[at.group].config;
                let timeout = if c.reused { config.io_timeout } else { config.connect_timeout };
                self.io.arm(ctx, timeout);
                Connected::To(c.conn)
            }
            Err(e) => {
                log::warn!(
                    "upstream {}: connect: {e}",
                    ctx.proxy.upstreams.groups[at.group].servers[server].addr
                );
                if let Some(st) = stats {
                    st.failures.fetch_add(1, Relaxed);
                }
                report(ctx, at.group, server, false);
                Connected::Failed
            }
        }
    }

    fn finish_connect(&mut self, ex: &mut Exchange, mut fd: UpConn, ctx: &mut Ctx) -> Next {
        match self.connection_ready(&ex.at, &mut fd, ctx) {
            Ready::Yes => {}
            Ready::NotYet => return Next::Pause(Stage::Connecting(fd), Outcome::Wait),
            Ready::Failed => return Next::ServerFailed { upstream: Some(fd), after_sending: false },
        }
        let timeout = ctx.proxy.upstreams.groups[ex.at.group].config.io_timeout;
        self.io.arm(ctx, timeout);
        Next::Go(Stage::SendHead(fd))
    }

    /// Whether a connection just taken is ready to carry the client's bytes:
    /// a new one once its connect completed and, for a group that asks, the
    /// PROXY protocol header went out first.
    pub(super) fn connection_ready(&self, at: &Attempt, conn: &mut UpConn, ctx: &Ctx) -> Ready {
        if at.reused {
            return Ready::Yes;
        }
        match conn.connect_status() {
            Ok(true) => {}
            Ok(false) => return Ready::NotYet,
            Err(_) => return Ready::Failed,
        }
        if let Some(version) = ctx.proxy.upstreams.groups[at.group].config.send_proxy {
            if self.send_proxy_header(version, conn).is_err() {
                return Ready::Failed;
            }
        }
        Ready::Yes
    }

    /// The PROXY protocol header a group's servers get first on a new
    /// connection. It is a few dozen bytes into a socket that has sent
    /// nothing yet, so one send takes it whole; anything less is a failure.
    fn send_proxy_header(&self, version: tine_config::ProxyVersion, conn: &mut UpConn) -> io::Result<()> {
        use tine_http::proxy_protocol::{write_v1, write_v2};
        let (client, local) = self.client_and_local().ok_or_else(|| io::Error::other("no client address"))?;
        let mut header = Vec::with_capacity(64);
        match version {
            tine_config::ProxyVersion::V1 => write_v1(&mut header, client, local),
            tine_config::ProxyVersion::V2 => write_v2(&mut header, client, local),
        }
        match conn.send(&header, true)? {
            n if n == header.len() => Ok(()),
            _ => Err(io::Error::other("PROXY protocol header cut short")),
        }
    }

    fn send_head(&mut self, ex: &mut Exchange, mut fd: UpConn, ctx: &mut Ctx) -> Next {
        while ex.sent < ex.head.len() {
            match fd.send(&ex.head[ex.sent..], false) {
                Ok(n) => {
                    ex.sent += n;
                    count_copied(ctx, &ex.at, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Next::Pause(Stage::SendHead(fd), Outcome::Wait)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::ServerFailed { upstream: Some(fd), after_sending: false },
            }
        }
        Next::Go(Stage::SendBody(fd))
    }

    /// Copies the request body, from what is buffered and then from the client,
    /// through a small queue so that a full upstream socket loses nothing.
    fn send_body(&mut self, ex: &mut Exchange, mut fd: UpConn, ctx: &mut Ctx) -> Next {
        // The upstream took the head: invite the body, unless it is on its way.
        if std::mem::take(&mut ex.continue_pending) && self.io.rbuf.as_ref().is_none_or(|b| b.is_empty()) {
            self.io.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        loop {
            match self.flush_client(ctx) {
                None => {}
                Some(Outcome::Close(reason)) => return Next::Close { reason, upstream: Some(fd) },
                Some(outcome) => return Next::Pause(Stage::SendBody(fd), outcome),
            }
            match self.flush_to_upstream(&ex.at, &mut ex.to_upstream, &mut fd, ctx) {
                Flushed::All => {}
                Flushed::Blocked => return Next::Pause(Stage::SendBody(fd), Outcome::Wait),
                Flushed::Failed => return Next::ServerFailed { upstream: Some(fd), after_sending: true },
            }
            if ex.request_body.done() {
                let timeout = ctx.proxy.upstreams.groups[ex.at.group].config.response_timeout;
                self.io.arm(ctx, timeout);
                // The answer cannot be there yet; its arrival raises an event.
                return Next::Pause(Stage::AwaitHead(fd, None), Outcome::Wait);
            }
            let buf = self.io.rbuf.get_or_insert_with(|| ctx.pool.read_buf());
            if buf.is_empty() {
                match self.io.transport.recv(buf.spare()) {
                    Ok(0) => return Next::Close { reason: CloseReason::PeerClosed, upstream: Some(fd) },
                    Ok(n) => {
                        buf.commit(n);
                        ctx.stats.slot.bytes_received.fetch_add(n as u64, Relaxed);
                        // io_timeout bounds a pause in the body, not the whole upload.
                        let timeout = ctx.proxy.upstreams.groups[ex.at.group].config.io_timeout;
                        self.io.arm(ctx, timeout);
                    }
                    Err(e) => match client_io(e) {
                        None => {}
                        Some(Outcome::Close(reason)) => return Next::Close { reason, upstream: Some(fd) },
                        Some(outcome) => return Next::Pause(Stage::SendBody(fd), outcome),
                    },
                }
                continue;
            }
            let data = buf.filled();
            let take = match &mut ex.request_body {
                RequestBody::Length(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    ex.to_upstream.extend_from_slice(&data[..take]);
                    take
                }
                // Decoded and chunked again: the client's framing bytes
                // (extensions, trailers) never reach the upstream.
                RequestBody::Chunked(d) => match d.decode(data, &mut ex.to_upstream) {
                    Ok(k) => k,
                    Err(e) => {
                        log::info!("client request body refused: {e}");
                        ctx.stats.count_rejection(crate::context::Rejection::Body);
                        return Next::Fail { status: Status::BAD_REQUEST, upstream: Some(fd) };
                    }
                },
                RequestBody::None => 0,
            };
            buf.consume(take);
        }
    }

    /// Sends what is queued for the upstream.
    fn flush_to_upstream(
        &mut self,
        at: &Attempt,
        queue: &mut Vec<u8>,
        upstream: &mut UpConn,
        ctx: &mut Ctx,
    ) -> Flushed {
        let timeout = ctx.proxy.upstreams.groups[at.group].config.io_timeout;
        let mut flushed = Flushed::All;
        let mut moved = false;
        while !queue.is_empty() {
            match upstream.send(queue, false) {
                Ok(n) => {
                    queue.drain(..n);
                    count_copied(ctx, at, n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    flushed = Flushed::Blocked;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Flushed::Failed,
            }
        }
        if moved {
            // A slow reader upstream is fine as long as it keeps reading.
            self.io.arm(ctx, timeout);
        }
        flushed
    }

    /// Reads the response head; on a complete one, writes the cleaned head for
    /// the client and decides how the body travels. Interim responses are
    /// read past, a bounded number of them; a few reads per turn at most.
    fn await_head(&mut self, ex: &mut Exchange, mut fd: UpConn, buf: Option<ReadBuf>, ctx: &mut Ctx) -> Next {
        let mut buf = buf.unwrap_or_else(|| ctx.pool.read_buf());
        for _ in 0..HEAD_READS_PER_TURN {
            // The parser refuses a head that fills the buffer, so there is room.
            match fd.recv(buf.spare()) {
                Ok(0) => {
                    ctx.pool.put_read(buf);
                    return Next::ServerFailed { upstream: Some(fd), after_sending: true };
                }
                Ok(n) => {
                    buf.commit(n);
                    ex.response_started = true;
                    count_copied(ctx, &ex.at, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Next::Pause(Stage::AwaitHead(fd, Some(buf)), Outcome::Wait)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    ctx.pool.put_read(buf);
                    return Next::ServerFailed { upstream: Some(fd), after_sending: true };
                }
            }
            match self.parse_response_heads(ex, &mut buf, ctx) {
                Parsed::More => {}
                Parsed::Bad(why) => {
                    ctx.pool.put_read(buf);
                    return self.bad_response(ex, fd, why, ctx);
                }
                Parsed::Final(head) => return self.begin_response(ex, fd, buf, head, ctx),
            }
        }
        Next::Pause(Stage::AwaitHead(fd, Some(buf)), Outcome::Yield)
    }

    /// Parses the heads buffered so far: interim ones are dropped, a final
    /// one writes the client's head and is consumed from the buffer.
    fn parse_response_heads(&mut self, ex: &mut Exchange, buf: &mut ReadBuf, ctx: &mut Ctx) -> Parsed {
        let limit = ctx.http.limits.head_bytes;
        let asked = Asked { head: ex.head_request, upgrade: ex.upgrade_requested };
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let head = match response_head::parse_response(buf.filled(), &mut headers, asked, limit) {
                Ok(None) => return Parsed::More,
                Err(why) => return Parsed::Bad(why),
                Ok(Some(head)) => head,
            };
            if head.is_interim() {
                ex.interim += 1;
                if ex.interim > MAX_INTERIM_RESPONSES {
                    return Parsed::Bad(BadResponse::Malformed);
                }
                let len = head.head_len;
                buf.consume(len);
                continue;
            }
            if head.body == response_head::ResponseBody::UntilClose || head.code == 101 {
                self.io.keep_alive = false;
            }
            if ex.client_http10 && head.body == response_head::ResponseBody::Chunked {
                // Decoded for an HTTP/1.0 client, the body ends with the connection.
                self.io.keep_alive = false;
            }
            if self.io.wbuf.capacity() == 0 {
                self.io.wbuf = ctx.pool.write_buf();
            }
            let client =
                ClientSide { http10: ex.client_http10, keep_alive: self.io.keep_alive && !ctx.draining };
            let added =
                ex.route.map_or(&crate::responses::NO_ROUTE.headers, |r| &ctx.http.route_replies[r].headers);
            forward::client_response_head(&mut self.io.wbuf, &head, client, added);
            let facts = FinalHead::of(&head);
            buf.consume(head.head_len);
            return Parsed::Final(facts);
        }
    }

    /// An upstream response head broke the rules: the client gets a 502 and
    /// the connection closes (nothing of the head was forwarded), the
    /// upstream connection is closed, and the server's failure is counted.
    fn bad_response(&mut self, ex: &mut Exchange, fd: UpConn, why: BadResponse, ctx: &mut Ctx) -> Next {
        log::warn!("upstream {}: {why}", ctx.proxy.upstreams.groups[ex.at.group].servers[ex.at.server].addr);
        if let Some(st) = server_stats(ctx, ex.at.group, ex.at.server) {
            st.failures.fetch_add(1, Relaxed);
        }
        report(ctx, ex.at.group, ex.at.server, false);
        self.io.keep_alive = false;
        Next::Fail { status: Status::BAD_GATEWAY, upstream: Some(fd) }
    }

    /// The client's head is written; decide how the body travels, starting with
    /// whatever body bytes came in with the head.
    fn begin_response(
        &mut self,
        ex: &mut Exchange,
        fd: UpConn,
        buf: ReadBuf,
        head: FinalHead,
        ctx: &mut Ctx,
    ) -> Next {
        let upgrade = head.code == 101;
        self.count_proxied_response(ctx, head.code);
        if let Some(st) = server_stats(ctx, ex.at.group, ex.at.server) {
            let took = ctx.clock.now.saturating_duration_since(ex.at.picked_at);
            st.responses.fetch_add(1, Relaxed);
            st.response_us_sum.fetch_add(took.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
        }
        ex.upstream_keep_alive = head.reusable;
        let early: &[u8] = buf.filled();
        let before = self.io.wbuf.len();
        let relay = match head.body {
            _ if upgrade => {
                // The upstream's first tunnel bytes go to the client as they are.
                self.io.wbuf.extend_from_slice(early);
                Ok((BodyRelay::None, early.len()))
            }
            response_head::ResponseBody::None => Ok((BodyRelay::None, 0)),
            response_head::ResponseBody::Chunked => {
                let output = if ex.client_http10 { Output::Raw } else { Output::Chunked };
                let mut decoder = ChunkedDecoder::new(output);
                match decoder.decode(early, &mut self.io.wbuf) {
                    Ok(k) => Ok((BodyRelay::Chunked(decoder), k)),
                    Err(e) => {
                        log::warn!("upstream sent a chunked body with broken framing: {e}");
                        Err(())
                    }
                }
            }
            response_head::ResponseBody::Length(n) => {
                let have = (early.len() as u64).min(n) as usize;
                self.io.wbuf.extend_from_slice(&early[..have]);
                if have as u64 == n {
                    Ok((BodyRelay::None, have))
                } else {
                    ctx.proxy
                        .pipes
                        .take()
                        .map(|pipe| (BodyRelay::Spliced(Relay::new(pipe, Some(n - have as u64))), have))
                        .map_err(|_| ())
                }
            }
            response_head::ResponseBody::UntilClose => {
                self.io.wbuf.extend_from_slice(early);
                ctx.proxy
                    .pipes
                    .take()
                    .map(|pipe| (BodyRelay::Spliced(Relay::new(pipe, None)), early.len()))
                    .map_err(|_| ())
            }
        };
        let early_len = early.len();
        ctx.pool.put_read(buf);
        let Ok((body, used)) = relay else {
            return Next::Close { reason: CloseReason::Error, upstream: Some(fd) };
        };
        if used < early_len {
            // Bytes after the end of the response: never read as the answer to
            // another request.
            ex.upstream_keep_alive = false;
        }
        self.io.body_len = (self.io.wbuf.len() - before) as u64;
        self.io.wpos = 0;
        report(ctx, ex.at.group, ex.at.server, true);
        if upgrade {
            recycle_body(&mut ctx.proxy.pipes, body);
            return self.start_tunnel(ex, fd, ctx);
        }
        let timeout = ctx.proxy.upstreams.groups[ex.at.group].config.io_timeout;
        self.io.arm(ctx, timeout);
        Next::Go(Stage::Respond(fd, body))
    }

    /// Sends the head and the body to the client.
    /// Relays the response body to the client: spliced, or decoded and
    /// chunked again, or nothing more (the buffer held it all).
    fn respond(
        &mut self,
        ex: &mut Exchange,
        mut fd: UpConn,
        mut body: BodyRelay,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Next {
        loop {
            match self.flush_client(ctx) {
                None => {}
                Some(Outcome::Close(reason)) => {
                    recycle_body(&mut ctx.proxy.pipes, body);
                    return Next::Close { reason, upstream: Some(fd) };
                }
                Some(outcome) => return Next::Pause(Stage::Respond(fd, body), outcome),
            }
            body = match body {
                BodyRelay::None => return Next::Complete(fd),
                BodyRelay::Spliced(relay) => return self.splice_body(ex, fd, relay, ctx, budget),
                BodyRelay::Chunked(decoder) if decoder.is_done() => return Next::Complete(fd),
                BodyRelay::Chunked(mut decoder) => match self.copy_chunks(ex, &mut fd, &mut decoder, ctx) {
                    Copied::More => BodyRelay::Chunked(decoder),
                    Copied::Blocked => {
                        return Next::Pause(Stage::Respond(fd, BodyRelay::Chunked(decoder)), Outcome::Wait)
                    }
                    Copied::Broken => return Next::Close { reason: CloseReason::Error, upstream: Some(fd) },
                },
            };
        }
    }

    /// Splices the body from the upstream to the client, within the turn's
    /// budget.
    fn splice_body(
        &mut self,
        ex: &mut Exchange,
        fd: UpConn,
        mut relay: Relay,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Next {
        let before = relay.moved;
        let pumped = self.io.transport.relay_from(&mut relay, fd.socket(), budget);
        let moved = relay.moved - before;
        let cut_short = relay.cut_short();
        ctx.stats.slot.bytes_sent.fetch_add(moved, Relaxed);
        self.io.body_len += moved;
        if let Some(st) = server_stats(ctx, ex.at.group, ex.at.server) {
            st.bytes_spliced.fetch_add(moved, Relaxed);
        }
        if moved > 0 {
            let timeout = ctx.proxy.upstreams.groups[ex.at.group].config.io_timeout;
            self.io.arm(ctx, timeout);
        }
        let outcome = match pumped {
            Ok(Pump::Blocked) => Outcome::Wait,
            Ok(Pump::Budget) => Outcome::Yield,
            Ok(Pump::Done) if !cut_short => {
                ctx.proxy.pipes.give_back(relay);
                return Next::Complete(fd);
            }
            Ok(Pump::Done) => {
                log::warn!("upstream closed in the middle of a response body");
                ctx.proxy.pipes.give_back(relay);
                return Next::Close { reason: CloseReason::Error, upstream: Some(fd) };
            }
            Err(e) => {
                ctx.proxy.pipes.give_back(relay);
                return Next::Close { reason: relay_failure(e, Side::ClientIsDest), upstream: Some(fd) };
            }
        };
        Next::Pause(Stage::Respond(fd, BodyRelay::Spliced(relay)), outcome)
    }

    /// Reads what the upstream sent of a chunked body, decodes it and chunks
    /// it again into the client's output buffer.
    fn copy_chunks(
        &mut self,
        ex: &mut Exchange,
        upstream: &mut UpConn,
        decoder: &mut ChunkedDecoder,
        ctx: &mut Ctx,
    ) -> Copied {
        let mut chunk = [0u8; 16 * 1024];
        match upstream.recv(&mut chunk) {
            Ok(0) => {
                log::warn!("upstream closed in the middle of a chunked body");
                Copied::Broken
            }
            Ok(n) => {
                let before = self.io.wbuf.len();
                let k = match decoder.decode(&chunk[..n], &mut self.io.wbuf) {
                    Ok(k) => k,
                    Err(e) => {
                        log::warn!("upstream sent a chunked body with broken framing: {e}");
                        return Copied::Broken;
                    }
                };
                if k < n {
                    ex.upstream_keep_alive = false;
                }
                count_copied(ctx, &ex.at, n);
                self.io.body_len += (self.io.wbuf.len() - before) as u64;
                let timeout = ctx.proxy.upstreams.groups[ex.at.group].config.io_timeout;
                self.io.arm(ctx, timeout);
                Copied::More
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Copied::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Copied::More,
            Err(_) => Copied::Broken,
        }
    }

    /// Writes what is in the output buffer to the client. `None` when all of it
    /// went out; else Wait, or Close on a broken connection.
    fn flush_client(&mut self, ctx: &mut Ctx) -> Option<Outcome> {
        while self.io.wpos < self.io.wbuf.len() {
            match self.io.transport.send(&self.io.wbuf[self.io.wpos..], false) {
                Ok(n) => {
                    self.io.wpos += n;
                    ctx.stats.slot.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                Err(e) => {
                    if let Some(outcome) = client_io(e) {
                        return Some(outcome);
                    }
                }
            }
        }
        self.io.wbuf.clear();
        self.io.wpos = 0;
        None
    }

    /// The response is complete: the upstream connection goes to the pool
    /// when it can carry another request (still registered under this client
    /// connection's token, which gets it back first), and the client
    /// connection goes on.
    fn complete(&mut self, mut ex: Box<Exchange>, fd: UpConn, ctx: &mut Ctx) -> Option<Outcome> {
        if ex.upstream_fin {
            ex.upstream_keep_alive = false;
        }
        if ex.upstream_keep_alive {
            ctx.proxy.upstreams.release(fd, self.io.id, ctx.clock.now, &ctx.stats);
        } else {
            close_upstream(ctx, fd);
        }
        retire(ctx, ex);
        self.finish_response(ctx, Sending::buffered(ctx.clock.now))
    }

    /// The server failed us. Before anything reached the client, try another
    /// server (or a fresh connection to the same one); otherwise 502.
    fn server_failed(
        &mut self,
        ex: &mut Exchange,
        upstream: Option<UpConn>,
        after_sending: bool,
        ctx: &mut Ctx,
    ) -> Next {
        if let Some(fd) = upstream {
            close_upstream(ctx, fd);
        }
        // A pooled connection the server had closed meanwhile is no failure of
        // the server: retry once on a fresh connection (if the request may be
        // repeated), without counting it against the server.
        if ex.at.reused && !ex.response_started && ex.idempotent && !ex.at.fresh_retry_done {
            ex.at.fresh_retry_done = true;
            ex.at.reused = false;
            ex.sent = 0;
            ex.at.tried &= !(1u64.checked_shl(ex.at.server as u32).unwrap_or(0));
            return Next::Go(Stage::Pick);
        }
        if let Some(st) = server_stats(ctx, ex.at.group, ex.at.server) {
            st.failures.fetch_add(1, Relaxed);
        }
        report(ctx, ex.at.group, ex.at.server, false);
        let nothing_sent = !after_sending || (ex.sent == 0 && matches!(ex.request_body, RequestBody::None));
        if nothing_sent || (ex.idempotent && !ex.response_started) {
            ex.sent = 0;
            return Next::Go(Stage::Pick);
        }
        Next::Fail { status: Status::BAD_GATEWAY, upstream: None }
    }

    /// Ends the exchange with an error page (400, 502, 504), if the client has
    /// not been sent anything of a response yet; else closes.
    fn fail(
        &mut self,
        ex: Box<Exchange>,
        status: Status,
        upstream: Option<UpConn>,
        ctx: &mut Ctx,
    ) -> Option<Outcome> {
        if let Some(fd) = upstream {
            close_upstream(ctx, fd);
        }
        if !self.io.wbuf.is_empty() {
            retire(ctx, ex);
            return Some(Outcome::Close(CloseReason::Error));
        }
        if self.io.wbuf.capacity() == 0 {
            self.io.wbuf = ctx.pool.write_buf();
        }
        // Whatever of the request body was not relayed cannot be told from the
        // next request: close after the answer.
        if !ex.request_body.done() {
            self.io.keep_alive = false;
        }
        let persistence = if self.io.keep_alive && !ctx.draining {
            Persistence::KeepAlive { http10: false }
        } else {
            Persistence::Close
        };
        let head_request = ex.head_request;
        let route = ex.route.map_or(&crate::responses::NO_ROUTE, |r| &ctx.http.route_replies[r]);
        let framing = Framing { date: ctx.clock.date.bytes(), persistence, head_request, route };
        let reply = error_page(status, &framing, None, &mut self.io.wbuf);
        retire(ctx, ex);
        self.count_proxied_response(ctx, status.0);
        self.io.body_len = reply.body_len;
        self.io.wpos = 0;
        self.phase = Phase::Send(Sending::buffered(ctx.clock.now));
        let timeout = ctx.timers.timeouts.send;
        self.io.arm(ctx, timeout);
        None
    }

    /// A 101 answered the upgrade: the connection becomes a tunnel.
    fn start_tunnel(&mut self, ex: &mut Exchange, fd: UpConn, ctx: &mut Ctx) -> Next {
        let Some(tunnel) = self.open_tunnel(&mut ex.to_upstream, ctx) else {
            return Next::Close { reason: CloseReason::Error, upstream: Some(fd) };
        };
        let idle = ctx.proxy.upstreams.groups[ex.at.group].config.io_timeout;
        report(ctx, ex.at.group, ex.at.server, true);
        self.io.arm(ctx, idle);
        Next::Go(Stage::Tunnel(fd, tunnel))
    }

    /// The pipes of a tunnel; client bytes already read (past an upgrade
    /// request) are queued to go upstream first. None without pipes.
    pub(super) fn open_tunnel(&mut self, to_upstream: &mut Vec<u8>, ctx: &mut Ctx) -> Option<Tunnel> {
        let (Ok(a), Ok(b)) = (ctx.proxy.pipes.take(), ctx.proxy.pipes.take()) else { return None };
        if let Some(buf) = self.io.rbuf.as_mut() {
            to_upstream.extend_from_slice(buf.filled());
            buf.consume(usize::MAX);
        }
        Some(Tunnel {
            up: Relay::new(a, None),
            down: Relay::new(b, None),
            up_closed: false,
            down_closed: false,
        })
    }

    fn tunnel(
        &mut self,
        ex: &mut Exchange,
        mut fd: UpConn,
        mut t: Tunnel,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Next {
        let idle = ctx.proxy.upstreams.groups[ex.at.group].config.io_timeout;
        let ends = TunnelEnds { upstream: &mut fd, at: &ex.at, idle };
        match self.pump_tunnel(&mut t, ends, &mut ex.to_upstream, ctx, budget) {
            TunnelStep::Pause(outcome) => Next::Pause(Stage::Tunnel(fd, t), outcome),
            TunnelStep::Close(reason) => {
                recycle_tunnel(&mut ctx.proxy.pipes, t);
                Next::Close { reason, upstream: Some(fd) }
            }
        }
    }

    /// Splices both ways; a side that reaches end of stream half-closes the
    /// other, and the tunnel ends when both have. Traffic either way restarts
    /// the idle deadline.
    pub(super) fn pump_tunnel(
        &mut self,
        t: &mut Tunnel,
        ends: TunnelEnds<'_>,
        to_upstream: &mut Vec<u8>,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> TunnelStep {
        match self.flush_client(ctx) {
            None => {}
            Some(Outcome::Close(reason)) => return TunnelStep::Close(reason),
            Some(outcome) => return TunnelStep::Pause(outcome),
        }
        match self.flush_to_upstream(ends.at, to_upstream, ends.upstream, ctx) {
            Flushed::All => {}
            Flushed::Blocked => return TunnelStep::Pause(Outcome::Wait),
            Flushed::Failed => return TunnelStep::Close(CloseReason::Error),
        }
        let upstream = ends.upstream.socket();
        let (before_up, before_down) = (t.up.moved, t.down.moved);
        let up = if t.up_closed {
            Ok(Pump::Done)
        } else {
            self.io.transport.relay_to(&mut t.up, upstream, budget)
        };
        let down = if t.down_closed {
            Ok(Pump::Done)
        } else {
            self.io.transport.relay_from(&mut t.down, upstream, budget)
        };
        let (moved_up, moved_down) = (t.up.moved - before_up, t.down.moved - before_down);
        ctx.stats.slot.bytes_received.fetch_add(moved_up, Relaxed);
        ctx.stats.slot.bytes_sent.fetch_add(moved_down, Relaxed);
        if let Some(st) = server_stats(ctx, ends.at.group, ends.at.server) {
            st.bytes_spliced.fetch_add(moved_up + moved_down, Relaxed);
        }
        let (up, down) = match (up, down) {
            (Ok(u), Ok(d)) => (u, d),
            (Err(e), _) => return TunnelStep::Close(relay_failure(e, Side::ClientIsSource)),
            (_, Err(e)) => return TunnelStep::Close(relay_failure(e, Side::ClientIsDest)),
        };
        if up == Pump::Done && !t.up_closed {
            t.up_closed = true;
            ends.upstream.shutdown_write();
        }
        if down == Pump::Done && !t.down_closed {
            t.down_closed = true;
            self.io.transport.shutdown_write();
        }
        if t.up_closed && t.down_closed {
            return TunnelStep::Close(CloseReason::Done);
        }
        if moved_up + moved_down > 0 {
            self.io.arm(ctx, ends.idle);
        }
        TunnelStep::Pause(if up == Pump::Budget || down == Pump::Budget {
            Outcome::Yield
        } else {
            Outcome::Wait
        })
    }

    /// The proxy's part of closing: an exchange under way is abandoned (its
    /// socket closed). Idle connections this one used stay in the pool.
    pub(super) fn release_exchange(&mut self, ctx: &mut Ctx, exchange: Option<Box<Exchange>>) {
        if let Some(ex) = exchange {
            retire(ctx, ex);
        }
    }

    /// What a passed deadline means mid-exchange: a connect that took too long
    /// tries the next server; a response head that took too long is a 504.
    pub(super) fn proxy_deadline(&mut self, mut ex: Box<Exchange>, ctx: &mut Ctx) -> Outcome {
        let stats = server_stats(ctx, ex.at.group, ex.at.server);
        let next = match std::mem::replace(&mut ex.stage, Stage::Pick) {
            stage @ (Stage::Pick | Stage::Connecting(_) | Stage::SendHead(_)) if ex.sent == 0 => {
                if let Some(st) = stats {
                    st.timeouts.fetch_add(1, Relaxed);
                }
                log::warn!(
                    "upstream {}: connect timed out",
                    ctx.proxy.upstreams.groups[ex.at.group].servers[ex.at.server].addr
                );
                Next::ServerFailed { upstream: stage.dismantle(ctx), after_sending: false }
            }
            Stage::AwaitHead(fd, buf) if !ex.response_started => {
                if let Some(st) = stats {
                    st.timeouts.fetch_add(1, Relaxed);
                }
                if let Some(buf) = buf {
                    ctx.pool.put_read(buf);
                }
                report(ctx, ex.at.group, ex.at.server, false);
                Next::Fail { status: Status::GATEWAY_TIMEOUT, upstream: Some(fd) }
            }
            Stage::Tunnel(fd, t) => {
                recycle_tunnel(&mut ctx.proxy.pipes, t);
                Next::Close { reason: CloseReason::Done, upstream: Some(fd) }
            }
            stage => Next::Close { reason: CloseReason::Timeout, upstream: stage.dismantle(ctx) },
        };
        match self.settle_exchange(ex, next, ctx) {
            Flow::Continue(ex) => {
                self.phase = Phase::Proxy(ex);
                self.drive(ctx)
            }
            Flow::Done(Some(outcome)) => outcome,
            Flow::Done(None) => self.drive(ctx),
        }
    }
}

/// What a final response head decided, kept once the head's borrow ends.
struct FinalHead {
    code: u16,
    body: response_head::ResponseBody,
    reusable: bool,
}

impl FinalHead {
    fn of(head: &ResponseHead<'_, '_>) -> Self {
        FinalHead { code: head.code, body: head.body, reusable: head.reusable }
    }
}

/// The exchange for a request that route `route` sends to upstream group
/// `group`.
pub(super) fn new_exchange(
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
    forward::upstream_request_head(&mut head, req, &fwd);
    let mut exchange = Exchange::new(group);
    exchange.route = Some(route);
    exchange.request_body = match req.body {
        Body::None => RequestBody::None,
        Body::Length(n) => RequestBody::Length(n),
        Body::Chunked => RequestBody::Chunked(ChunkedDecoder::new(Output::Chunked)),
    };
    exchange.continue_pending = req.expect_continue && req.body.has_bytes();
    exchange.idempotent = matches!(req.method_text, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE");
    exchange.head = head;
    exchange.head_request = req.method == Method::Head;
    exchange.upgrade_requested = req.upgrade.is_some();
    exchange.client_http10 = req.minor_version == 0;
    recycled(exchange)
}

/// Which end of a relay is the client.
enum Side {
    ClientIsSource,
    ClientIsDest,
}

/// Why a failed relay closes the connection: the client's side maps as
/// every client error does (a reset counts as one); the upstream's side is
/// the upstream failing mid-stream.
fn relay_failure(e: RelayError, side: Side) -> CloseReason {
    let client_error = match (e, side) {
        (RelayError::Source(e), Side::ClientIsSource) | (RelayError::Dest(e), Side::ClientIsDest) => e,
        (RelayError::Source(e), Side::ClientIsDest) | (RelayError::Dest(e), Side::ClientIsSource) => {
            log::warn!("upstream connection failed mid-stream: {e}");
            return CloseReason::Error;
        }
    };
    match client_io(client_error) {
        Some(Outcome::Close(reason)) => reason,
        _ => CloseReason::Error,
    }
}

/// This worker's entry of the region's table for a server.
pub(super) fn server_stats<'a>(ctx: &Ctx<'a>, group: usize, server: usize) -> Option<&'a UpstreamStats> {
    ctx.stats.upstreams.get(ctx.proxy.upstreams.group_of_stats(group, server))
}

/// The attempt counts among its server's exchanges under way.
fn begin_active(ctx: &mut Ctx, at: &mut Attempt) {
    at.active = true;
    ctx.proxy.upstreams.set_active(at.group, at.server, true);
    let index = ctx.proxy.upstreams.group_of_stats(at.group, at.server);
    ctx.stats.gauges.upstream(index, UpstreamGauge::Active, 1);
}

/// The attempt no longer counts among its server's exchanges under way.
pub(super) fn end_active(ctx: &mut Ctx, at: &mut Attempt) {
    if std::mem::take(&mut at.active) {
        ctx.proxy.upstreams.set_active(at.group, at.server, false);
        let index = ctx.proxy.upstreams.group_of_stats(at.group, at.server);
        ctx.stats.gauges.upstream(index, UpstreamGauge::Active, -1);
    }
}

fn count_copied(ctx: &Ctx, at: &Attempt, n: usize) {
    if let Some(st) = server_stats(ctx, at.group, at.server) {
        st.bytes_copied.fetch_add(n as u64, Relaxed);
    }
}

/// Tells the circuit breaker how the server did; the down gauge follows its
/// decisions (it counts the workers of the slot that hold the server out).
pub(super) fn report(ctx: &mut Ctx, group: usize, server: usize, ok: bool) {
    let health = ctx.proxy.upstreams.report(group, server, ok, ctx.clock.now);
    let index = ctx.proxy.upstreams.group_of_stats(group, server);
    match health {
        Health::WentDown => ctx.stats.gauges.upstream(index, UpstreamGauge::Down, 1),
        Health::CameBack => ctx.stats.gauges.upstream(index, UpstreamGauge::Down, -1),
        Health::Unchanged => {}
    }
}
