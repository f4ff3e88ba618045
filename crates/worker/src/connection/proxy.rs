//! Proxying one request to an upstream server, and tunnels (WebSocket after a
//! 101, and raw `[[stream]]` connections).
//!
//! ```text
//!  Connect -> SendHead -> SendBody -> AwaitHead -> Respond -> (done: pool, next request)
//!     |  refused / timed out before anything was sent: next server, else 502
//!     |  reused connection broken before any response byte (idempotent): one fresh retry
//!     |  no response head within response_timeout: 504
//!  101 Switching Protocols, or a stream: Tunnel (splice both ways, half-close)
//! ```
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

use super::{CloseReason, Conn, Outcome, Phase};
use crate::context::Ctx;
use crate::relay::{Pump, Relay};
use crate::responses::{error_page, Framing};
use crate::token::Token;
use crate::transport::Transport;
use crate::upstream::Health;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tine_config::HostHeader;
use tine_http::chunked::{ChunkedDecoder, Output};
use tine_http::forward::{self, ClientSide, Forwarding};
use tine_http::request::{Body, Method, Request, MAX_HEADERS};
use tine_http::response::{Persistence, Status};
use tine_http::response_head::{self, Asked, BadResponse, ResponseHead};
use tine_net::sys::{self, Peek};
use tine_net::Interest;
use tine_stats::layout::UpstreamStats;

/// Interim (1xx) responses accepted before the final one; an upstream that
/// sends more is broken or hostile.
const MAX_INTERIM_RESPONSES: u8 = 16;
/// Reads of a response head per turn of the loop, so that an upstream that
/// keeps sending cannot hold the worker.
const HEAD_READS_PER_TURN: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Connect,
    SendHead,
    SendBody,
    AwaitHead,
    Respond,
    Tunnel,
}

enum RequestBody {
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
}

enum BodyRelay {
    None,
    Spliced(Relay),
    Chunked(ChunkedDecoder),
}

pub struct Exchange {
    group: usize,
    server: usize,
    /// Servers already tried for this request (a bit each).
    tried: u64,
    fresh_retry_done: bool,
    idempotent: bool,
    fd: Option<OwnedFd>,
    reused: bool,
    stage: Stage,
    /// Counted among `server`'s exchanges under way (for least_conn).
    active: bool,
    /// The request head as sent upstream (kept for a retry).
    head: Vec<u8>,
    sent: usize,
    request_body: RequestBody,
    /// The client asked for a 100 (Continue) before it sends the body.
    continue_pending: bool,
    /// The response head being read (a pooled buffer, taken when needed).
    response: Option<crate::buffer_pool::ReadBuf>,
    /// Some response byte arrived (so a failure is no longer retried).
    response_started: bool,
    response_body: BodyRelay,
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
    /// A stream (raw TCP relay) rather than an HTTP exchange.
    stream: Option<Duration>,
    tunnel: Option<Tunnel>,
    /// Bytes the client sent after its upgrade request, for the upstream.
    to_upstream: Vec<u8>,
}

impl Exchange {
    fn new(group: usize) -> Self {
        Exchange {
            group,
            server: 0,
            tried: 0,
            fresh_retry_done: false,
            idempotent: false,
            fd: None,
            reused: false,
            stage: Stage::Connect,
            active: false,
            head: Vec::new(),
            sent: 0,
            request_body: RequestBody::None,
            continue_pending: false,
            response: None,
            response_started: false,
            response_body: BodyRelay::None,
            upstream_keep_alive: false,
            upstream_fin: false,
            head_request: false,
            upgrade_requested: false,
            client_http10: false,
            interim: 0,
            stream: None,
            tunnel: None,
            to_upstream: Vec::new(),
        }
    }
}

/// `fresh` in a box that an earlier exchange used, if one is free: a proxied
/// request allocates nothing in the steady state.
fn recycled(ctx: &mut Ctx, fresh: Exchange) -> Box<Exchange> {
    match ctx.exchanges.take() {
        Some(mut boxed) => {
            *boxed = fresh;
            boxed
        }
        None => Box::new(fresh),
    }
}

/// An exchange that ended (its upstream socket already dealt with): its pipes,
/// its buffers and its box go back for the next one.
fn retire(ctx: &mut Ctx, mut ex: Box<Exchange>) {
    end_active(ctx, &mut ex);
    if let Some(t) = ex.tunnel.take() {
        ctx.pipes.give_back(t.up);
        ctx.pipes.give_back(t.down);
    }
    if let BodyRelay::Spliced(relay) = std::mem::replace(&mut ex.response_body, BodyRelay::None) {
        ctx.pipes.give_back(relay);
    }
    if let Some(buf) = ex.response.take() {
        ctx.pool.put_read(buf);
    }
    ctx.pool.put_write(std::mem::take(&mut ex.head));
    ctx.pool.put_write(std::mem::take(&mut ex.to_upstream));
    ctx.exchanges.give(ex);
}

struct Tunnel {
    up: Relay,
    down: Relay,
    up_closed: bool,
    down_closed: bool,
}

impl Conn {
    /// A connection accepted on a `[[stream]]` listener: relay it raw.
    pub(super) fn start_stream(&mut self, stream: usize, ctx: &mut Ctx) {
        let s = &ctx.streams[stream];
        let mut exchange = Exchange::new(s.upstream);
        exchange.fresh_retry_done = true;
        exchange.stream = Some(s.idle_timeout);
        self.exchange = Some(recycled(ctx, exchange));
        self.phase = Phase::Proxy;
    }

    pub(super) fn drive_proxy(&mut self, ctx: &mut Ctx, budget: &mut usize) -> Option<Outcome> {
        loop {
            let stage = self.exchange.as_ref()?.stage;
            if self.client_gave_up(stage) {
                // What nginx logs for a request its client abandoned.
                if let Some(entry) = self.access.as_mut() {
                    entry.set_status(499);
                }
                return Some(Outcome::Close(CloseReason::PeerClosed));
            }
            let step = match stage {
                Stage::Connect => self.proxy_connect(ctx),
                Stage::SendHead => self.proxy_send_head(ctx),
                Stage::SendBody => self.proxy_send_body(ctx),
                Stage::AwaitHead => self.proxy_await_head(ctx),
                Stage::Respond => self.proxy_respond(ctx, budget),
                Stage::Tunnel => self.proxy_tunnel(ctx, budget),
            };
            match step {
                Step::Next => continue,
                Step::Wait => return Some(Outcome::Wait),
                Step::Yield => return Some(Outcome::Yield),
                Step::Close(r) => return Some(Outcome::Close(r)),
                Step::Finished => return None,
            }
        }
    }

    /// A response starts for the client: counted, and its status kept for the
    /// access log.
    fn count_proxied_response(&mut self, ctx: &mut Ctx, code: u16) {
        super::count_response(ctx, Status(code));
        if let Some(entry) = self.access.as_mut() {
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
    fn client_gave_up(&mut self, stage: Stage) -> bool {
        if !std::mem::take(&mut self.client_fin) {
            return false;
        }
        let http = self.exchange.as_ref().is_some_and(|ex| ex.stream.is_none());
        let waiting = http && matches!(stage, Stage::Connect | Stage::SendHead | Stage::AwaitHead);
        let nothing_buffered = self.rbuf.as_ref().is_none_or(|b| b.is_empty());
        waiting && nothing_buffered && self.transport.peek() == Peek::End
    }

    /// Picks a server (not yet tried) and starts connecting, from the pool when
    /// it can; with none left, answers 502.
    fn proxy_connect(&mut self, ctx: &mut Ctx) -> Step {
        let ex = self.exchange.as_mut().expect("exchange");
        if ex.fd.is_none() {
            end_active(ctx, ex);
            let Some(server) = ctx.upstreams.pick(ex.group, ex.tried, ctx.now) else {
                return self.proxy_fail(ctx, Status::BAD_GATEWAY);
            };
            ex.server = server;
            begin_active(ctx, ex);
            if server < 64 {
                ex.tried |= 1 << server;
            }
            let stats = server_stats(ctx, ex.group, server);
            if let Some(p) = self.parked.take() {
                // Anything waiting on the kept connection (bytes nobody asked
                // for, the server's close) would be read as this request's
                // response: look first. An event for it may be queued behind
                // this request's in the same turn, so check_parked is not enough.
                let same = p.group == ex.group && p.server == server;
                if same && sys::peek(p.fd.as_raw_fd()) != Peek::Nothing {
                    close_parked(ctx, p);
                } else if same {
                    if let Some(st) = stats {
                        st.requests.fetch_add(1, Relaxed);
                        st.pool_hits.fetch_add(1, Relaxed);
                    }
                    ex.reused = true;
                    ex.fd = Some(p.fd);
                    ex.upstream_fin = false;
                    ex.stage = Stage::SendHead;
                    let timeout = ctx.upstreams.groups[ex.group].config.io_timeout;
                    self.arm(ctx, timeout);
                    return Step::Next;
                } else {
                    self.parked = Some(p);
                    self.unpark(ctx);
                }
            }
            let ex = self.exchange.as_mut().expect("exchange");
            match ctx.upstreams.connect(ex.group, server, ctx.now, ctx.upstream_stats) {
                Ok(c) => {
                    let token = Token::Upstream(self.id).encode();
                    if ctx.epoll.add(c.fd.as_raw_fd(), token, Interest::CONNECTION).is_err() {
                        ctx.upstreams.forget(ex.group, server, ctx.upstream_stats);
                        return self.proxy_fail(ctx, Status::BAD_GATEWAY);
                    }
                    ex.reused = c.reused;
                    ex.fd = Some(c.fd);
                    ex.upstream_fin = false;
                    if let Some(st) = stats {
                        st.requests.fetch_add(1, Relaxed);
                    }
                    let timeout = ctx.upstreams.groups[ex.group].config.connect_timeout;
                    self.arm(ctx, timeout);
                }
                Err(e) => {
                    log::warn!(
                        "upstream {}: connect: {e}",
                        ctx.upstreams.groups[ex.group].servers[server].addr
                    );
                    if let Some(st) = stats {
                        st.failures.fetch_add(1, Relaxed);
                    }
                    report(ctx, ex.group, server, false);
                    return Step::Next;
                }
            }
        }
        let ex = self.exchange.as_mut().expect("exchange");
        let fd = ex.fd.as_ref().expect("connecting").as_raw_fd();
        if !ex.reused {
            match sys::connect_status(fd) {
                Ok(true) => {}
                Ok(false) => return Step::Wait,
                Err(_) => return self.proxy_server_failed(ctx, false),
            }
        }
        let ex = self.exchange.as_mut().expect("exchange");
        if ex.stream.is_some() {
            return self.start_tunnel(ctx);
        }
        ex.stage = Stage::SendHead;
        let timeout = ctx.upstreams.groups[ex.group].config.io_timeout;
        self.arm(ctx, timeout);
        Step::Next
    }

    fn proxy_send_head(&mut self, ctx: &mut Ctx) -> Step {
        let ex = self.exchange.as_mut().expect("exchange");
        let fd = ex.fd.as_ref().expect("upstream").as_raw_fd();
        while ex.sent < ex.head.len() {
            match sys::send(fd, &ex.head[ex.sent..], false) {
                Ok(n) => {
                    ex.sent += n;
                    count_copied(ctx, ex, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.proxy_server_failed(ctx, false),
            }
        }
        ex.stage = Stage::SendBody;
        Step::Next
    }

    /// Copies the request body, from what is buffered and then from the client,
    /// through a small queue so that a full upstream socket loses nothing.
    fn proxy_send_body(&mut self, ctx: &mut Ctx) -> Step {
        let ex = self.exchange.as_mut().expect("exchange");
        // The upstream took the head: invite the body, unless it is on its way.
        if std::mem::take(&mut ex.continue_pending) && self.rbuf.as_ref().is_none_or(|b| b.is_empty()) {
            self.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        loop {
            if let Some(step) = self.flush_client(ctx) {
                return step;
            }
            if let Some(step) = self.flush_to_upstream(ctx) {
                return match step {
                    Step::Close(_) => self.proxy_server_failed(ctx, true),
                    other => other,
                };
            }
            let ex = self.exchange.as_mut().expect("exchange");
            let done = match &ex.request_body {
                RequestBody::None => true,
                RequestBody::Length(n) => *n == 0,
                RequestBody::Chunked(d) => d.is_done(),
            };
            if done {
                ex.stage = Stage::AwaitHead;
                let timeout = ctx.upstreams.groups[ex.group].config.response_timeout;
                self.arm(ctx, timeout);
                // The answer cannot be there yet; its arrival raises an event.
                return Step::Wait;
            }
            if self.rbuf.as_ref().is_none_or(|b| b.is_empty()) {
                let buf = self.rbuf.get_or_insert_with(|| ctx.pool.read_buf());
                match self.transport.recv(buf.spare()) {
                    Ok(0) => return Step::Close(CloseReason::PeerClosed),
                    Ok(n) => {
                        buf.commit(n);
                        ctx.stats.bytes_received.fetch_add(n as u64, Relaxed);
                        // io_timeout bounds a pause in the body, not the whole upload.
                        let timeout = ctx.upstreams.groups[ex.group].config.io_timeout;
                        self.arm(ctx, timeout);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close(CloseReason::Reset),
                }
                continue;
            }
            let buf = self.rbuf.as_mut().expect("buffered");
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
                        ctx.stats.parse_errors.fetch_add(1, Relaxed);
                        return self.proxy_fail(ctx, Status::BAD_REQUEST);
                    }
                },
                RequestBody::None => 0,
            };
            buf.consume(take);
        }
    }

    fn flush_to_upstream(&mut self, ctx: &mut Ctx) -> Option<Step> {
        let ex = self.exchange.as_mut().expect("exchange");
        let fd = ex.fd.as_ref().expect("upstream").as_raw_fd();
        let timeout = ctx.upstreams.groups[ex.group].config.io_timeout;
        let mut step = None;
        let mut moved = false;
        while !ex.to_upstream.is_empty() {
            match sys::send(fd, &ex.to_upstream, false) {
                Ok(n) => {
                    ex.to_upstream.drain(..n);
                    count_copied(ctx, ex, n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    step = Some(Step::Wait);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(Step::Close(CloseReason::Error)),
            }
        }
        if moved {
            // A slow reader upstream is fine as long as it keeps reading.
            self.arm(ctx, timeout);
        }
        step
    }

    /// Reads the response head; on a complete one, writes the cleaned head for
    /// the client and decides how the body travels. Interim responses are
    /// read past, a bounded number of them; a few reads per turn at most.
    fn proxy_await_head(&mut self, ctx: &mut Ctx) -> Step {
        for _ in 0..HEAD_READS_PER_TURN {
            let ex = self.exchange.as_mut().expect("exchange");
            let fd = ex.fd.as_ref().expect("upstream").as_raw_fd();
            let buf = ex.response.get_or_insert_with(|| ctx.pool.read_buf());
            // The parser refuses a head that fills the buffer, so there is room.
            match sys::recv(fd, buf.spare()) {
                Ok(0) => return self.proxy_server_failed(ctx, true),
                Ok(n) => {
                    buf.commit(n);
                    ex.response_started = true;
                    count_copied(ctx, ex, n);
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return Step::Wait,
                    io::ErrorKind::Interrupted => continue,
                    _ => return self.proxy_server_failed(ctx, true),
                },
            }
            if let Some(step) = self.parse_response_heads(ctx) {
                return step;
            }
        }
        Step::Yield
    }

    /// Parses the heads buffered so far: interim ones are dropped, a final
    /// one starts the response. `None` asks for more bytes.
    fn parse_response_heads(&mut self, ctx: &mut Ctx) -> Option<Step> {
        let limit = ctx.http_limits.head_bytes;
        loop {
            let ex = self.exchange.as_mut().expect("exchange");
            let asked = Asked { head: ex.head_request, upgrade: ex.upgrade_requested };
            let buf = ex.response.as_mut().expect("response buffer");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let head = match response_head::parse_response(buf.filled(), &mut headers, asked, limit) {
                Ok(None) => return None,
                Err(why) => return Some(self.proxy_bad_response(ctx, why)),
                Ok(Some(head)) => head,
            };
            if head.is_interim() {
                ex.interim += 1;
                if ex.interim > MAX_INTERIM_RESPONSES {
                    return Some(self.proxy_bad_response(ctx, BadResponse::Malformed));
                }
                let len = head.head_len;
                buf.consume(len);
                continue;
            }
            if head.body == response_head::ResponseBody::UntilClose || head.code == 101 {
                self.keep_alive = false;
            }
            if ex.client_http10 && head.body == response_head::ResponseBody::Chunked {
                // Decoded for an HTTP/1.0 client, the body ends with the connection.
                self.keep_alive = false;
            }
            if self.wbuf.capacity() == 0 {
                self.wbuf = ctx.pool.write_buf();
            }
            let client =
                ClientSide { http10: ex.client_http10, keep_alive: self.keep_alive && !ctx.draining };
            forward::client_response_head(&mut self.wbuf, &head, client);
            let head_facts = FinalHead::of(&head);
            buf.consume(head.head_len);
            return Some(self.proxy_begin_response(ctx, head_facts));
        }
    }

    /// An upstream response head broke the rules: the client gets a 502 and
    /// the connection closes (nothing of the head was forwarded), the
    /// upstream connection is closed, and the server's failure is counted.
    fn proxy_bad_response(&mut self, ctx: &mut Ctx, why: BadResponse) -> Step {
        let ex = self.exchange.as_mut().expect("exchange");
        log::warn!("upstream {}: {why}", ctx.upstreams.groups[ex.group].servers[ex.server].addr);
        if let Some(st) = server_stats(ctx, ex.group, ex.server) {
            st.failures.fetch_add(1, Relaxed);
        }
        report(ctx, ex.group, ex.server, false);
        self.keep_alive = false;
        self.proxy_fail(ctx, Status::BAD_GATEWAY)
    }

    /// The client's head is written; decide how the body travels, starting with
    /// whatever body bytes came in with the head.
    fn proxy_begin_response(&mut self, ctx: &mut Ctx, head: FinalHead) -> Step {
        let upgrade = head.code == 101;
        self.count_proxied_response(ctx, head.code);
        let ex = self.exchange.as_mut().expect("exchange");
        ex.upstream_keep_alive = head.reusable;
        let early: &[u8] = ex.response.as_ref().map_or(&[][..], |b| b.filled());
        let before = self.wbuf.len();
        let (body, used) = match head.body {
            _ if upgrade => {
                // The upstream's first tunnel bytes go to the client as they are.
                self.wbuf.extend_from_slice(early);
                (BodyRelay::None, early.len())
            }
            response_head::ResponseBody::None => (BodyRelay::None, 0),
            response_head::ResponseBody::Chunked => {
                let output = if ex.client_http10 { Output::Raw } else { Output::Chunked };
                let mut decoder = ChunkedDecoder::new(output);
                match decoder.decode(early, &mut self.wbuf) {
                    Ok(k) => (BodyRelay::Chunked(decoder), k),
                    Err(e) => {
                        log::warn!("upstream sent a chunked body with broken framing: {e}");
                        return Step::Close(CloseReason::Error);
                    }
                }
            }
            response_head::ResponseBody::Length(n) => {
                let have = (early.len() as u64).min(n) as usize;
                self.wbuf.extend_from_slice(&early[..have]);
                if have as u64 == n {
                    (BodyRelay::None, have)
                } else {
                    match ctx.pipes.take() {
                        Ok(pipe) => (BodyRelay::Spliced(Relay::new(pipe, Some(n - have as u64))), have),
                        Err(_) => return Step::Close(CloseReason::Error),
                    }
                }
            }
            response_head::ResponseBody::UntilClose => {
                self.wbuf.extend_from_slice(early);
                match ctx.pipes.take() {
                    Ok(pipe) => (BodyRelay::Spliced(Relay::new(pipe, None)), early.len()),
                    Err(_) => return Step::Close(CloseReason::Error),
                }
            }
        };
        if used < early.len() {
            // Bytes after the end of the response: never read as the answer to
            // another request.
            ex.upstream_keep_alive = false;
        }
        ex.response_body = body;
        self.body_len = (self.wbuf.len() - before) as u64;
        if let Some(buf) = ex.response.take() {
            ctx.pool.put_read(buf);
        }
        self.wpos = 0;
        report(ctx, ex.group, ex.server, true);
        if upgrade {
            return self.start_tunnel(ctx);
        }
        ex.stage = Stage::Respond;
        let timeout = ctx.upstreams.groups[ex.group].config.io_timeout;
        self.arm(ctx, timeout);
        Step::Next
    }

    /// Sends the head and the body to the client.
    fn proxy_respond(&mut self, ctx: &mut Ctx, budget: &mut usize) -> Step {
        loop {
            if let Some(step) = self.flush_client(ctx) {
                return step;
            }
            let ex = self.exchange.as_mut().expect("exchange");
            let upstream = ex.fd.as_ref().expect("upstream").as_raw_fd();
            match &mut ex.response_body {
                BodyRelay::None => return self.proxy_complete(ctx),
                BodyRelay::Spliced(relay) => {
                    let before = relay.moved;
                    let pumped = self.transport.relay_from(relay, upstream, budget);
                    let moved = relay.moved - before;
                    ctx.stats.bytes_sent.fetch_add(moved, Relaxed);
                    self.body_len += moved;
                    if let Some(st) = server_stats(ctx, ex.group, ex.server) {
                        st.bytes_spliced.fetch_add(moved, Relaxed);
                    }
                    if moved > 0 {
                        let timeout = ctx.upstreams.groups[ex.group].config.io_timeout;
                        self.arm(ctx, timeout);
                    }
                    let ex = self.exchange.as_mut().expect("exchange");
                    let BodyRelay::Spliced(relay) = &ex.response_body else { unreachable!() };
                    return match pumped {
                        Ok(Pump::Done) if relay.cut_short() => {
                            log::warn!("upstream closed in the middle of a response body");
                            Step::Close(CloseReason::Error)
                        }
                        Ok(Pump::Done) => self.proxy_complete(ctx),
                        Ok(Pump::Blocked) => Step::Wait,
                        Ok(Pump::Budget) => Step::Yield,
                        Err(_) => Step::Close(CloseReason::Error),
                    };
                }
                BodyRelay::Chunked(decoder) => {
                    if decoder.is_done() {
                        return self.proxy_complete(ctx);
                    }
                    let mut chunk = [0u8; 16 * 1024];
                    match sys::recv(upstream, &mut chunk) {
                        Ok(0) => {
                            log::warn!("upstream closed in the middle of a chunked body");
                            return Step::Close(CloseReason::Error);
                        }
                        Ok(n) => {
                            let before = self.wbuf.len();
                            let k = match decoder.decode(&chunk[..n], &mut self.wbuf) {
                                Ok(k) => k,
                                Err(e) => {
                                    log::warn!("upstream sent a chunked body with broken framing: {e}");
                                    return Step::Close(CloseReason::Error);
                                }
                            };
                            if k < n {
                                ex.upstream_keep_alive = false;
                            }
                            count_copied(ctx, ex, n);
                            self.body_len += (self.wbuf.len() - before) as u64;
                            let timeout = ctx.upstreams.groups[ex.group].config.io_timeout;
                            self.arm(ctx, timeout);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Step::Close(CloseReason::Error),
                    }
                }
            }
        }
    }

    /// Writes what is in the output buffer to the client. `None` when all of it
    /// went out.
    fn flush_client(&mut self, ctx: &mut Ctx) -> Option<Step> {
        while self.wpos < self.wbuf.len() {
            match self.transport.send(&self.wbuf[self.wpos..], false) {
                Ok(n) => {
                    self.wpos += n;
                    ctx.stats.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(Step::Wait),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(Step::Close(CloseReason::Reset)),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        None
    }

    /// The response is complete: the upstream connection goes back to the pool
    /// when it can carry another request, and the client connection goes on.
    fn proxy_complete(&mut self, ctx: &mut Ctx) -> Step {
        let mut ex = self.exchange.take().expect("exchange");
        if ex.upstream_fin {
            ex.upstream_keep_alive = false;
        }
        if let Some(fd) = ex.fd.take() {
            if ex.upstream_keep_alive && self.keep_alive && !ctx.draining {
                // Keep it with this client connection, still registered, for
                // its next request: no trip through the pool, no epoll change.
                self.parked = Some(Parked { group: ex.group, server: ex.server, fd, since: ctx.now });
            } else {
                let _ = ctx.epoll.delete(fd.as_raw_fd());
                if ex.upstream_keep_alive {
                    ctx.upstreams.release(ex.group, ex.server, fd, ctx.now, ctx.upstream_stats);
                } else {
                    release_closed(ctx, &ex);
                }
            }
        }
        retire(ctx, ex);
        self.phase = Phase::Send;
        self.finish_response(ctx);
        Step::Finished
    }

    /// The server failed us. Before anything reached the client, try another
    /// server (or a fresh connection to the same one); otherwise close.
    fn proxy_server_failed(&mut self, ctx: &mut Ctx, after_sending: bool) -> Step {
        let ex = self.exchange.as_mut().expect("exchange");
        let stats = server_stats(ctx, ex.group, ex.server);
        if let Some(fd) = ex.fd.take() {
            let _ = ctx.epoll.delete(fd.as_raw_fd());
            release_closed(ctx, ex);
        }
        // A pooled connection the server had closed meanwhile is no failure of
        // the server: retry once on a fresh connection (if the request may be
        // repeated), without counting it against the server.
        if ex.reused && !ex.response_started && ex.idempotent && !ex.fresh_retry_done {
            ex.fresh_retry_done = true;
            ex.reused = false;
            ex.sent = 0;
            ex.stage = Stage::Connect;
            ex.tried &= !(1u64.checked_shl(ex.server as u32).unwrap_or(0));
            return Step::Next;
        }
        if let Some(st) = stats {
            st.failures.fetch_add(1, Relaxed);
        }
        report(ctx, ex.group, ex.server, false);
        let nothing_sent = !after_sending || (ex.sent == 0 && matches!(ex.request_body, RequestBody::None));
        if nothing_sent || (ex.idempotent && !ex.response_started && ex.stream.is_none()) {
            ex.sent = 0;
            if let Some(buf) = ex.response.take() {
                ctx.pool.put_read(buf);
            }
            ex.stage = Stage::Connect;
            return Step::Next;
        }
        self.proxy_fail(ctx, Status::BAD_GATEWAY)
    }

    /// Ends the exchange with an error page (502, 504), if the client has not
    /// been sent anything of a response yet; else closes.
    fn proxy_fail(&mut self, ctx: &mut Ctx, status: Status) -> Step {
        let mut ex = self.exchange.take().expect("exchange");
        if let Some(fd) = ex.fd.take() {
            let _ = ctx.epoll.delete(fd.as_raw_fd());
            release_closed(ctx, &ex);
        }
        if ex.stream.is_some() || !self.wbuf.is_empty() {
            retire(ctx, ex);
            return Step::Close(CloseReason::Error);
        }
        if self.wbuf.capacity() == 0 {
            self.wbuf = ctx.pool.write_buf();
        }
        // Whatever of the request body was not relayed cannot be told from the
        // next request: close after the answer.
        let unfinished_body = match ex.request_body {
            RequestBody::None => false,
            RequestBody::Length(n) => n > 0,
            RequestBody::Chunked(d) => !d.is_done(),
        };
        if unfinished_body {
            self.keep_alive = false;
        }
        let persistence = if self.keep_alive && !ctx.draining {
            Persistence::KeepAlive { http10: false }
        } else {
            Persistence::Close
        };
        let head_request = ex.head_request;
        retire(ctx, ex);
        let framing = Framing { date: ctx.date.bytes(), persistence, head_request };
        let reply = error_page(status, &framing, None, &mut self.wbuf);
        self.count_proxied_response(ctx, status.0);
        self.body_len = reply.body_len;
        self.wpos = 0;
        self.phase = Phase::Send;
        let timeout = ctx.timeouts.send;
        self.arm(ctx, timeout);
        Step::Next
    }

    fn start_tunnel(&mut self, ctx: &mut Ctx) -> Step {
        let (Ok(a), Ok(b)) = (ctx.pipes.take(), ctx.pipes.take()) else {
            return Step::Close(CloseReason::Error);
        };
        let ex = self.exchange.as_mut().expect("exchange");
        // Client bytes already read past the upgrade request go upstream first.
        if let Some(buf) = self.rbuf.as_mut() {
            ex.to_upstream.extend_from_slice(buf.filled());
            buf.consume(usize::MAX);
        }
        ex.tunnel = Some(Tunnel {
            up: Relay::new(a, None),
            down: Relay::new(b, None),
            up_closed: false,
            down_closed: false,
        });
        ex.stage = Stage::Tunnel;
        let idle = ex.stream.unwrap_or(ctx.upstreams.groups[ex.group].config.io_timeout);
        report(ctx, ex.group, ex.server, true);
        self.arm(ctx, idle);
        Step::Next
    }

    /// Splices both ways; a side that reaches end of stream half-closes the
    /// other, and the tunnel ends when both have.
    fn proxy_tunnel(&mut self, ctx: &mut Ctx, budget: &mut usize) -> Step {
        if let Some(step) = self.flush_client(ctx) {
            return step;
        }
        if let Some(step) = self.flush_to_upstream(ctx) {
            return step;
        }
        let ex = self.exchange.as_mut().expect("exchange");
        let upstream = ex.fd.as_ref().expect("upstream").as_raw_fd();
        let idle = ex.stream.unwrap_or(ctx.upstreams.groups[ex.group].config.io_timeout);
        let t = ex.tunnel.as_mut().expect("tunnel");
        let (before_up, before_down) = (t.up.moved, t.down.moved);
        let up =
            if t.up_closed { Ok(Pump::Done) } else { self.transport.relay_to(&mut t.up, upstream, budget) };
        let down = if t.down_closed {
            Ok(Pump::Done)
        } else {
            self.transport.relay_from(&mut t.down, upstream, budget)
        };
        let (moved_up, moved_down) = (t.up.moved - before_up, t.down.moved - before_down);
        ctx.stats.bytes_received.fetch_add(moved_up, Relaxed);
        ctx.stats.bytes_sent.fetch_add(moved_down, Relaxed);
        if let Some(st) = server_stats(ctx, ex.group, ex.server) {
            st.bytes_spliced.fetch_add(moved_up + moved_down, Relaxed);
        }
        let (up, down) = match (up, down) {
            (Ok(u), Ok(d)) => (u, d),
            _ => return Step::Close(CloseReason::Reset),
        };
        if up == Pump::Done && !t.up_closed {
            t.up_closed = true;
            sys::shutdown_write(upstream);
        }
        if down == Pump::Done && !t.down_closed {
            t.down_closed = true;
            self.transport.shutdown_write();
        }
        if t.up_closed && t.down_closed {
            return Step::Close(CloseReason::Done);
        }
        if moved_up + moved_down > 0 {
            self.arm(ctx, idle);
        }
        if up == Pump::Budget || down == Pump::Budget {
            Step::Yield
        } else {
            Step::Wait
        }
    }

    /// The proxy's part of closing: pipes back, upstream socket closed.
    pub(super) fn release_exchange(&mut self, ctx: &mut Ctx) {
        self.unpark(ctx);
        let Some(mut ex) = self.exchange.take() else { return };
        if let Some(fd) = ex.fd.take() {
            let _ = ctx.epoll.delete(fd.as_raw_fd());
            release_closed(ctx, &ex);
        }
        retire(ctx, ex);
    }

    /// What a passed deadline means mid-exchange: a connect that took too long
    /// tries the next server; a response head that took too long is a 504.
    pub(super) fn proxy_deadline(&mut self, ctx: &mut Ctx) -> Option<Outcome> {
        let ex = self.exchange.as_mut()?;
        let stats = server_stats(ctx, ex.group, ex.server);
        let step = match ex.stage {
            Stage::Connect | Stage::SendHead if ex.sent == 0 => {
                if let Some(st) = stats {
                    st.timeouts.fetch_add(1, Relaxed);
                }
                log::warn!(
                    "upstream {}: connect timed out",
                    ctx.upstreams.groups[ex.group].servers[ex.server].addr
                );
                self.proxy_server_failed(ctx, false)
            }
            Stage::AwaitHead if !ex.response_started => {
                if let Some(st) = stats {
                    st.timeouts.fetch_add(1, Relaxed);
                }
                report(ctx, ex.group, ex.server, false);
                self.proxy_fail(ctx, Status::GATEWAY_TIMEOUT)
            }
            Stage::Tunnel => Step::Close(CloseReason::Done),
            _ => Step::Close(CloseReason::Timeout),
        };
        Some(match step {
            Step::Next | Step::Finished => self.drive(ctx),
            Step::Wait => Outcome::Wait,
            Step::Yield => Outcome::Yield,
            Step::Close(r) => Outcome::Close(r),
        })
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
/// `group`; `raw_head` is the request head as received.
pub(super) fn new_exchange(
    req: &Request<'_>,
    raw_head: &[u8],
    route: usize,
    group: usize,
    peer: Option<std::net::IpAddr>,
    ctx: &mut Ctx,
) -> Box<Exchange> {
    let mut head = ctx.pool.write_buf();
    let config = &ctx.upstreams.groups[group].config;
    let rule = match &ctx.routes[route].handler {
        tine_config::Handler::Proxy { host, .. } => host,
        tine_config::Handler::Static(_) => &HostHeader::Keep,
    };
    let host: &[u8] = match rule {
        // A request without a Host (HTTP/1.0) still names one upstream.
        HostHeader::Keep => req.host.filter(|h| !h.is_empty()).unwrap_or(config.name.as_bytes()),
        HostHeader::Fixed(h) => h.as_bytes(),
        HostHeader::Upstream => config.name.as_bytes(),
    };
    let fwd = Forwarding { host, peer, underscores: config.underscores_in_headers };
    forward::upstream_request_head(&mut head, req, raw_head, &fwd);
    let mut exchange = Exchange::new(group);
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
    recycled(ctx, exchange)
}

/// An upstream connection a client connection keeps between its requests.
pub struct Parked {
    group: usize,
    server: usize,
    fd: OwnedFd,
    /// Idle since then (the pool's keepalive_timeout counts from here).
    since: std::time::Instant,
}

/// Closes a parked connection that cannot be used again.
fn close_parked(ctx: &mut Ctx, p: Parked) {
    let _ = ctx.epoll.delete(p.fd.as_raw_fd());
    ctx.upstreams.forget(p.group, p.server, ctx.upstream_stats);
}

impl Conn {
    /// Gives a parked upstream connection to the worker's pool.
    pub(super) fn unpark(&mut self, ctx: &mut Ctx) {
        let Some(p) = self.parked.take() else { return };
        let _ = ctx.epoll.delete(p.fd.as_raw_fd());
        ctx.upstreams.release(p.group, p.server, p.fd, p.since, ctx.upstream_stats);
    }

    /// The upstream's end of stream came with an event of the exchange: once
    /// the edge is consumed no later event would tell, so remember it.
    pub(super) fn note_upstream_fin(&mut self) {
        if let Some(ex) = self.exchange.as_mut() {
            ex.upstream_fin = true;
        }
    }

    /// An event on the upstream side while no exchange runs: the server
    /// closed the parked connection (or sent what nobody asked for). Close it
    /// now, not when the client's next request finds it.
    pub(super) fn check_parked(&mut self, ctx: &mut Ctx) {
        let Some(p) = self.parked.take() else { return };
        if sys::peek(p.fd.as_raw_fd()) == Peek::Nothing {
            self.parked = Some(p);
        } else {
            close_parked(ctx, p);
        }
    }
}

enum Step {
    Next,
    Wait,
    Yield,
    Close(CloseReason),
    /// The exchange is over; the connection's own state machine goes on.
    Finished,
}

/// This worker's entry of the region's table for a server.
fn server_stats<'a>(ctx: &Ctx<'a>, group: usize, server: usize) -> Option<&'a UpstreamStats> {
    ctx.upstream_stats.get(ctx.upstreams.group_of_stats(group, server))
}

/// The exchange counts among its server's exchanges under way.
fn begin_active(ctx: &mut Ctx, ex: &mut Exchange) {
    ex.active = true;
    ctx.upstreams.set_active(ex.group, ex.server, true);
    if let Some(st) = server_stats(ctx, ex.group, ex.server) {
        st.active.fetch_add(1, Relaxed);
    }
}

/// The exchange no longer counts among its server's exchanges under way.
fn end_active(ctx: &mut Ctx, ex: &mut Exchange) {
    if std::mem::take(&mut ex.active) {
        ctx.upstreams.set_active(ex.group, ex.server, false);
        if let Some(st) = server_stats(ctx, ex.group, ex.server) {
            st.active.fetch_sub(1, Relaxed);
        }
    }
}

fn release_closed(ctx: &mut Ctx, ex: &Exchange) {
    ctx.upstreams.forget(ex.group, ex.server, ctx.upstream_stats);
}

fn count_copied(ctx: &Ctx, ex: &Exchange, n: usize) {
    if let Some(st) = server_stats(ctx, ex.group, ex.server) {
        st.bytes_copied.fetch_add(n as u64, Relaxed);
    }
}

/// Tells the circuit breaker how the server did; the down gauge follows its
/// decisions (it counts the workers of the slot that hold the server out).
fn report(ctx: &mut Ctx, group: usize, server: usize, ok: bool) {
    let health = ctx.upstreams.report(group, server, ok, ctx.now);
    let Some(st) = server_stats(ctx, group, server) else { return };
    match health {
        Health::WentDown => {
            st.down.fetch_add(1, Relaxed);
        }
        Health::CameBack => {
            st.down.fetch_sub(1, Relaxed);
        }
        Health::Unchanged => {}
    }
}
