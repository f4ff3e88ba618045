//! HTTP/2 connections to upstream servers (`protocol = "h2"` or `"h2c"`).
//! Unlike an HTTP/1.1 connection, which one exchange holds at a time, an
//! HTTP/2 connection stays in the pool and carries the streams of many
//! exchanges at once, of any client connection of the worker: a link whose
//! events wake every exchange it carries.
//!
//! A server gets a new connection when each of its open ones carries as
//! many streams as the server allows (its SETTINGS), or says GOAWAY: a
//! connection that said it carries its streams to the end and takes no new
//! one, and closes once they are done. An idle connection closes after
//! keepalive_timeout, like a pooled HTTP/1.1 one.
//!
//! Wake-ups are per stream: each stream is opened with a waker that names
//! its exchange ([`stream_waker`]), which the engine wakes for that stream's
//! frames, window and reset; an event on the connection wakes only those,
//! plus the exchanges still waiting for a stream (the connection opening,
//! or at its limit). The loop takes the woken ones with [`take_woken`].
//!
//! The engine (tine-h2's client) runs over bytes this module moves: what the
//! socket (plain or TLS) delivers is fed to it whole, and what it wrote goes
//! out as the socket takes it (what is left waits for the socket's next
//! writable event). Exchanges work on their streams directly and then ask
//! [`Upstreams::h2_flush`] to move the frames they queued.

use super::{closed, tls_established, tls_refused, Link, Opening, UpConn, Upstreams};
use crate::counters::Counters;
use crate::token::{ExchangeId, LinkId};
use std::cell::RefCell;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tine_h2::{ClientConnection, ClientSettings, Readiness};
use tine_stats::UpstreamGauge;

use super::transport::UpstreamIo;

thread_local! {
    /// The worker's buffer for bytes read from upstream HTTP/2 connections.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
    /// Exchanges whose streams the engine woke, for the loop to drive.
    static WOKEN: RefCell<Vec<ExchangeId>> = const { RefCell::new(Vec::new()) };
}

/// Wakes one exchange: what the engine calls when its stream can move.
struct StreamWaker(ExchangeId);

impl std::task::Wake for StreamWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        // A worker is one thread: the engine wakes on it, as it runs.
        WOKEN.with(|w| w.borrow_mut().push(self.0));
    }
}

/// The waker a stream of exchange `id` is opened with.
pub fn stream_waker(id: ExchangeId) -> std::task::Waker {
    std::task::Waker::from(std::sync::Arc::new(StreamWaker(id)))
}

/// Moves the exchanges woken since the last call onto `out` (each once).
pub fn take_woken(out: &mut Vec<ExchangeId>) {
    WOKEN.with(|w| {
        let mut w = w.borrow_mut();
        for id in w.drain(..) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
    });
}

/// Some exchange was woken and not yet taken.
pub fn any_woken() -> bool {
    WOKEN.with(|w| !w.borrow().is_empty())
}

/// An HTTP/2 connection to an upstream server and the exchanges it carries.
pub(super) struct H2Conn {
    conn: UpConn,
    engine: ClientConnection,
    /// Bytes the engine wrote that the socket has not taken yet.
    out: Vec<u8>,
    out_pos: usize,
    /// Exchanges with a stream on it, or waiting for it to open one.
    users: Vec<ExchangeId>,
    /// The part of `users` without a stream yet: woken by every event
    /// (the others by their streams' wakers).
    waiting: Vec<ExchangeId>,
    /// It failed (connect, handshake, the socket, a protocol error): its
    /// streams fail, and it closes once they have let go.
    broken: bool,
    /// Its GOAWAY was counted.
    goaway_counted: bool,
    /// Since when it carries no exchange.
    idle_since: Instant,
    /// ALPN must have agreed on h2 (over TLS).
    needs_alpn: bool,
}

/// Whether a connection's advance reads its socket: on its own events
/// only; an exchange that queued frames just has them written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    Read,
    WriteOnly,
}

/// Whether a stream can be opened on a connection now.
pub enum H2Ready {
    Ready,
    /// It is still opening, or at the server's limit: an event will tell.
    NotYet,
    /// It failed, or takes no new stream: try another.
    Failed,
}

impl H2Conn {
    /// Runs the connection as far as the socket allows: its opening
    /// (connect, TLS handshake, ALPN), then bytes both ways through the
    /// engine. Statistics and log lines name server `index` of `name`.
    fn advance(&mut self, input: Input, stats: &Counters<'_>, index: usize, name: &str) {
        if self.broken {
            return;
        }
        if self.conn.opening != Opening::Open && !self.open(stats, index, name) {
            return;
        }
        loop {
            let more = input == Input::Read && self.read_in();
            let ended = self.engine.poll();
            self.write_out();
            if let Some(result) = ended {
                if let Err(e) = result {
                    log::warn!("upstream {name}: HTTP/2 connection failed: {e}");
                }
                self.broken = true;
            }
            // A GOAWAY shows as the connection refusing new streams.
            let _ = self.engine.readiness();
            if self.engine.goaway_received() && !self.goaway_counted {
                self.goaway_counted = true;
                if let Some(st) = stats.upstreams.get(index) {
                    st.h2_goaways.fetch_add(1, Relaxed);
                }
            }
            if self.broken || !more {
                return;
            }
        }
    }

    /// Drives the opening stages; true once the connection is open.
    fn open(&mut self, stats: &Counters<'_>, index: usize, name: &str) -> bool {
        let st = stats.upstreams.get(index);
        loop {
            match self.conn.opening {
                Opening::Connecting => match self.conn.connect_status() {
                    Ok(true) => self.conn.opening = Opening::Establishing,
                    Ok(false) => return false,
                    Err(e) => {
                        log::warn!("upstream {name}: connect: {e}");
                        self.broken = true;
                        return false;
                    }
                },
                Opening::Establishing => match self.conn.establish() {
                    Ok(true) => {
                        tls_established(&self.conn, st);
                        if self.needs_alpn && self.conn.alpn_protocol() != Some(tine_tls::ALPN_H2) {
                            log::warn!("upstream {name}: the server did not agree to HTTP/2 (ALPN h2)");
                            self.broken = true;
                            return false;
                        }
                        self.conn.opening = Opening::Open;
                        if let Some(st) = st {
                            st.h2_connections.fetch_add(1, Relaxed);
                        }
                    }
                    Ok(false) => return false,
                    Err(e) => {
                        tls_refused(&e, st, name);
                        self.broken = true;
                        return false;
                    }
                },
                Opening::Open => return true,
            }
        }
    }

    /// Feeds the engine what the socket holds, a read at a time; true when
    /// more may wait (the last read filled the buffer, or over TLS, did not
    /// reach the socket's end): the caller reads again once the engine has
    /// taken this.
    fn read_in(&mut self) -> bool {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                match self.conn.recv(&mut scratch) {
                    Ok(0) => {
                        self.engine.server_closed();
                        return false;
                    }
                    Ok(n) => {
                        self.engine.receive(&scratch[..n]);
                        return !self.conn.drained();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.engine.server_closed();
                        return false;
                    }
                }
            }
        })
    }

    /// Writes what the engine framed as the socket takes it; true when
    /// anything went.
    fn write_out(&mut self) -> bool {
        let mut wrote = false;
        loop {
            if self.out_pos == self.out.len() {
                self.out.clear();
                self.out_pos = 0;
                if !self.engine.has_output() {
                    return wrote;
                }
                self.engine.take_output(&mut self.out);
                // The engine's writes may have waited on a full queue.
                let _ = self.engine.poll();
            }
            match self.conn.send(&self.out[self.out_pos..], false) {
                Ok(n) => {
                    self.out_pos += n;
                    wrote |= n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return wrote,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The engine hears the connection is gone, so that its
                    // streams fail (and wake their exchanges) rather than
                    // wait for frames that will never come.
                    self.broken = true;
                    self.engine.server_closed();
                    let _ = self.engine.poll();
                    return wrote;
                }
            }
        }
    }

    /// It takes no more exchanges.
    fn retired(&self) -> bool {
        self.broken || self.engine.is_closing()
    }
}

impl Upstreams {
    /// An HTTP/2 connection to `server` of `group` for exchange `owner`: one
    /// already open (or opening) that takes another stream, else a new one
    /// (registered with `epoll`). Returns its link, and whether it was
    /// there already.
    pub fn h2_link(
        &mut self,
        group: usize,
        server: usize,
        owner: ExchangeId,
        stats: &Counters<'_>,
        epoll: &tine_net::Epoll,
    ) -> io::Result<(LinkId, bool)> {
        let g = &self.groups[group];
        let index = g.stats_base + server;
        let stat = stats.upstreams.get(index);
        let existing = g.servers[server].h2.iter().copied().find(|&link| {
            self.links.get(link.0).and_then(|l| l.h2.as_deref()).is_some_and(|c| {
                !c.retired() && (c.conn.opening != Opening::Open || c.users.len() < c.engine.max_streams())
            })
        });
        if let Some(link) = existing {
            if let Some(c) = self.links.get_mut(link.0).and_then(|l| l.h2.as_deref_mut()) {
                c.users.push(owner);
                c.waiting.push(owner);
            }
            if let Some(st) = stat {
                st.pool_hits.fetch_add(1, Relaxed);
            }
            return Ok((link, true));
        }
        if let Some(st) = stat {
            st.pool_misses.fetch_add(1, Relaxed);
        }
        let g = &mut self.groups[group];
        let needs_alpn = g.config.protocol == tine_config::UpstreamProtocol::H2;
        let link = LinkId(self.links.insert(Link { group, server, user: None, h2: None }));
        let conn = match super::open_transport(&g.servers[server].addr, g, link, epoll) {
            Ok(conn) => conn,
            Err(e) => {
                self.links.remove(link.0);
                return Err(e);
            }
        };
        let h2 = H2Conn {
            conn,
            engine: ClientConnection::new(&ClientSettings::default()),
            out: Vec::new(),
            out_pos: 0,
            users: vec![owner],
            waiting: vec![owner],
            broken: false,
            goaway_counted: false,
            idle_since: Instant::now(),
            needs_alpn,
        };
        if let Some(l) = self.links.get_mut(link.0) {
            l.h2 = Some(Box::new(h2));
        }
        let s = &mut g.servers[server];
        s.h2.push(link);
        s.open += 1;
        stats.gauges.upstream(index, UpstreamGauge::Open, 1);
        Ok((link, false))
    }

    /// Whether a stream can be opened on `link` now (its opening is driven
    /// on the way).
    pub fn h2_ready(&mut self, link: LinkId, stats: &Counters<'_>) -> H2Ready {
        let Some((c, index, name)) = self.h2_conn(link) else { return H2Ready::Failed };
        c.advance(Input::WriteOnly, stats, index, name);
        if c.broken {
            return H2Ready::Failed;
        }
        if c.conn.opening != Opening::Open {
            return H2Ready::NotYet;
        }
        match c.engine.readiness() {
            Readiness::Ready => H2Ready::Ready,
            Readiness::NotYet => H2Ready::NotYet,
            Readiness::Closed => H2Ready::Failed,
        }
    }

    /// Opens a stream for exchange `owner` on `link` (which said it is
    /// ready), woken from then on by its own events.
    pub fn h2_open(
        &mut self,
        link: LinkId,
        owner: ExchangeId,
        head: http::Request<()>,
        end: bool,
    ) -> Result<tine_h2::ClientStream, tine_h2::OpenError> {
        let Some(c) = self.links.get_mut(link.0).and_then(|l| l.h2.as_deref_mut()) else {
            return Err(tine_h2::OpenError::Closed);
        };
        let stream = c.engine.open_stream(head, end, stream_waker(owner))?;
        c.waiting.retain(|&w| w != owner);
        Ok(stream)
    }

    /// Runs the engine of `link` for the frames an exchange queued (and the
    /// window it grants); they reach the socket with the other streams'
    /// when the turn ends ([`Upstreams::write_h2`]): one write for many.
    pub fn h2_flush(&mut self, link: LinkId, _stats: &Counters<'_>) {
        let Some(c) = self.links.get_mut(link.0).and_then(|l| l.h2.as_deref_mut()) else { return };
        if c.broken || c.conn.opening != Opening::Open {
            return;
        }
        let _ = c.engine.poll();
        if !self.h2_dirty.contains(&link) {
            self.h2_dirty.push(link);
        }
    }

    /// Writes what the turn's exchanges queued on their connections.
    pub fn write_h2(&mut self, stats: &Counters<'_>) {
        let mut dirty = std::mem::take(&mut self.h2_dirty);
        for link in dirty.drain(..) {
            if let Some((c, index, name)) = self.h2_conn(link) {
                c.advance(Input::WriteOnly, stats, index, name);
                if c.broken {
                    // The write failed: every exchange on it hears so now.
                    WOKEN.with(|w| w.borrow_mut().extend_from_slice(&c.users));
                }
            }
        }
        self.h2_dirty = dirty;
    }

    /// Exchange `owner` is done with `link`: a connection that is broken or
    /// said GOAWAY closes once nobody uses it.
    pub fn h2_leave(&mut self, link: LinkId, owner: ExchangeId, now: Instant, stats: &Counters<'_>) {
        let Some(l) = self.links.get_mut(link.0) else { return };
        let Some(c) = l.h2.as_deref_mut() else { return };
        c.users.retain(|&u| u != owner);
        c.waiting.retain(|&u| u != owner);
        if c.users.is_empty() {
            c.idle_since = now;
            if c.retired() {
                self.close_h2(link, stats);
            }
        }
    }

    /// An event on an HTTP/2 link: its bytes move; the exchanges waiting
    /// for a stream on it are woken (`wake`), and those with one as the
    /// engine wakes them (every one, when the connection broke).
    pub(super) fn h2_event(&mut self, link: LinkId, stats: &Counters<'_>, wake: &mut Vec<ExchangeId>) {
        let Some((c, index, name)) = self.h2_conn(link) else { return };
        c.advance(Input::Read, stats, index, name);
        wake.extend_from_slice(if c.broken { &c.users } else { &c.waiting });
        take_woken(wake);
        if c.users.is_empty() && c.retired() {
            self.close_h2(link, stats);
        }
    }

    /// Closes the HTTP/2 connections of every group that carry nothing and
    /// are broken, said GOAWAY, or have been idle for keepalive_timeout.
    pub(super) fn close_idle_h2(&mut self, now: Instant, stats: &Counters<'_>) {
        let mut done = Vec::new();
        for g in &self.groups {
            let timeout = g.config.keepalive_timeout;
            for s in &g.servers {
                for &link in &s.h2 {
                    let Some(c) = self.links.get(link.0).and_then(|l| l.h2.as_deref()) else { continue };
                    if c.users.is_empty()
                        && (c.retired() || now.saturating_duration_since(c.idle_since) >= timeout)
                    {
                        done.push(link);
                    }
                }
            }
        }
        for link in done {
            self.close_h2(link, stats);
        }
    }

    /// Closes every HTTP/2 connection (the worker stops).
    pub(super) fn close_all_h2(&mut self, stats: &Counters<'_>) {
        let links: Vec<LinkId> =
            self.groups.iter().flat_map(|g| g.servers.iter().flat_map(|s| s.h2.clone())).collect();
        for link in links {
            self.close_h2(link, stats);
        }
    }

    fn close_h2(&mut self, link: LinkId, stats: &Counters<'_>) {
        let Some(l) = self.links.remove(link.0) else { return };
        let g = &mut self.groups[l.group];
        let s = &mut g.servers[l.server];
        s.h2.retain(|&x| x != link);
        closed(s, stats, g.stats_base + l.server, 1);
    }

    /// The connection of `link`, with its server's index in the region and
    /// its group's name.
    fn h2_conn(&mut self, link: LinkId) -> Option<(&mut H2Conn, usize, &str)> {
        let l = self.links.get_mut(link.0)?;
        let g = &self.groups[l.group];
        let c = l.h2.as_deref_mut()?;
        Some((c, g.stats_base + l.server, g.config.name.as_str()))
    }
}
