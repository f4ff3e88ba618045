//! A worker's view of its upstream groups: which server the next request goes
//! to (smooth weighted round robin, or weighted least connections), which servers
//! are out after repeated failures (a circuit breaker: out for fail_timeout, then
//! one probe request decides), and the keep-alive pool of idle connections per
//! server: the one place idle upstream connections live.
//!
//! Every upstream connection is a link in the pool's slab, registered with
//! epoll once, under its own token ([`LinkId`]), for its whole life: an event
//! finds the exchange that holds it (whichever client connection it serves),
//! and an event on a pooled connection means its server closed it or sent
//! what nobody asked for, so it is looked at and closed then (the loop
//! takes those events first in every turn). A connection enters the pool
//! known clean: its last read left nothing behind, or one look at release
//! found nothing (after a spliced body). So a reuse needs no system call,
//! except for a connection released earlier in the same turn, whose events
//! the turn has not seen yet. The client connection that used a connection
//! last gets it back first.
//! One sweep closes the connections idle past keepalive_timeout. Nothing
//! here is shared between workers.

mod h2;
mod tls;
mod transport;

pub use h2::{any_woken, take_woken, H2Ready};
pub use tls::TlsUpstream;
pub use transport::{TcpUpstream, UpstreamIo};

use crate::counters::Counters;
use crate::slab::Slab;
use crate::token::{ConnId, ExchangeId, LinkId, Token};
#[cfg(test)]
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tine_config::{Balance, Upstream, UpstreamAddr};
use tine_net::sys::{ConnectTo, Peek};
use tine_stats::UpstreamGauge;

pub struct Server {
    pub addr: UpstreamAddr,
    weight: i64,
    current: i64,
    /// Connections of this worker to the server, busy or idle.
    pub open: u32,
    /// Exchanges of this worker with the server under way: what least_conn
    /// compares (idle pooled connections cost the server nothing).
    active: u32,
    fails: u32,
    down_until: Option<Instant>,
    /// A probe request is under way after the server was out.
    probing: bool,
    idle: Vec<Idle>,
    /// HTTP/2 connections to the server (protocol = "h2" or "h2c"), each
    /// carrying exchanges of any client.
    h2: Vec<LinkId>,
}

/// An idle keep-alive connection in the pool.
struct Idle {
    conn: UpConn,
    since: Instant,
    /// The client connection that used it last (and gets it back first).
    owner: ConnId,
}

/// An open connection to an upstream server: its transport, and its link in
/// the pool's slab (its epoll token). Only the pool opens and closes one.
pub struct UpConn {
    io: UpstreamTransport,
    link: LinkId,
    /// How far a new connection got towards carrying requests.
    pub opening: Opening,
    /// The last read from the connection left nothing behind it (a short
    /// read, or nothing to read): whatever arrives later raises an event of
    /// its own. False once bytes were spliced from it, which may stop short
    /// of more behind them.
    drained: bool,
}

/// How far a new upstream connection got towards carrying requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// The non-blocking connect is under way.
    Connecting,
    /// Connected (and the PROXY protocol header sent): the TLS handshake
    /// is under way.
    Establishing,
    Open,
}

impl UpConn {
    /// For a connection over TLS whose handshake completed: whether it
    /// resumed an earlier session.
    pub fn tls_resumed(&self) -> Option<bool> {
        match &self.io {
            UpstreamTransport::Tls(t) => Some(t.resumed()),
            _ => None,
        }
    }

    /// The last read took all there was (see `drained`): whatever comes
    /// next raises an event.
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// The protocol agreed by ALPN (over TLS).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.io {
            UpstreamTransport::Tls(t) => t.alpn_protocol(),
            _ => None,
        }
    }

    /// Bytes were spliced from the socket: whether more wait behind them
    /// is not known.
    pub fn spliced(&mut self) {
        self.drained = false;
    }
}

/// The transport of an upstream connection.
enum UpstreamTransport {
    Tcp(TcpUpstream),
    Tls(Box<TlsUpstream>),
    #[cfg(test)]
    Scripted(crate::scripted::ScriptedUpstream),
}

macro_rules! each {
    ($self:ident, $t:ident => $e:expr) => {
        match &$self.io {
            UpstreamTransport::Tcp($t) => $e,
            UpstreamTransport::Tls($t) => $e,
            #[cfg(test)]
            UpstreamTransport::Scripted($t) => $e,
        }
    };
    (mut $self:ident, $t:ident => $e:expr) => {
        match &mut $self.io {
            UpstreamTransport::Tcp($t) => $e,
            UpstreamTransport::Tls($t) => $e,
            #[cfg(test)]
            UpstreamTransport::Scripted($t) => $e,
        }
    };
}

impl UpstreamIo for UpConn {
    fn connect_status(&self) -> io::Result<bool> {
        each!(self, t => t.connect_status())
    }

    fn establish(&mut self) -> io::Result<bool> {
        each!(mut self, t => t.establish())
    }

    fn send(&mut self, buf: &[u8], more: bool) -> io::Result<usize> {
        each!(mut self, t => t.send(buf, more))
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = each!(mut self, t => t.recv(buf));
        self.drained = match (&read, &mut self.io) {
            (Ok(n), UpstreamTransport::Tls(t)) => *n < buf.len() && t.drained(),
            (Ok(n), _) => *n < buf.len(),
            (Err(e), _) => e.kind() == io::ErrorKind::WouldBlock,
        };
        read
    }

    fn peek(&mut self) -> Peek {
        each!(mut self, t => t.peek())
    }

    fn shutdown_write(&mut self) {
        each!(mut self, t => t.shutdown_write())
    }

    fn splice_socket(&self) -> Option<RawFd> {
        each!(self, t => t.splice_socket())
    }
}

/// What the pool knows of an open upstream connection.
struct Link {
    group: usize,
    server: usize,
    /// The exchange that holds it; None while pooled.
    user: Option<ExchangeId>,
    /// An HTTP/2 connection, which the pool keeps while exchanges use it.
    h2: Option<Box<h2::H2Conn>>,
}

pub struct Group {
    pub config: Upstream,
    pub servers: Vec<Server>,
    /// Index of this group's first server in the stats region's upstream table.
    pub stats_base: usize,
    /// How connections to the servers speak TLS, for a group reached over it.
    pub tls: Option<tine_tls::UpstreamClient>,
}

#[derive(Default)]
pub struct Upstreams {
    pub groups: Vec<Group>,
    /// Every open upstream connection, busy or pooled.
    links: Slab<Link>,
    /// HTTP/2 connections whose exchanges queued frames this turn.
    h2_dirty: Vec<LinkId>,
    /// Scripted servers that the next new connections reach, in order,
    /// instead of a socket (unit tests).
    #[cfg(test)]
    pub scripted: VecDeque<crate::scripted::Peer>,
}

/// What an exchange's outcome did to its server's standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Unchanged,
    /// Failed once too often: out for fail_timeout.
    WentDown,
    /// Answered after being out.
    CameBack,
}

/// What a connection is asked for: a server of a group, for an exchange
/// of a client connection, from the pool if `reuse` allows.
pub struct Wanted {
    pub group: usize,
    pub server: usize,
    pub owner: ExchangeId,
    pub reuse: bool,
}

/// A connection to an upstream server, new or from the pool.
pub struct Connection {
    pub conn: UpConn,
    /// Taken from the keep-alive pool (so a failure before any response byte
    /// may be retried on a fresh connection).
    pub reused: bool,
}

impl Upstreams {
    /// The groups of `configs`; `tls` holds the client configurations of
    /// those reached over TLS.
    pub fn new(configs: &[Upstream], tls: Option<&tine_tls::TlsContext>) -> Self {
        let mut base = 0;
        let groups = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let servers = c
                    .servers
                    .iter()
                    .map(|s| Server {
                        addr: s.addr.clone(),
                        weight: s.weight as i64,
                        current: 0,
                        open: 0,
                        active: 0,
                        fails: 0,
                        down_until: None,
                        probing: false,
                        idle: Vec::new(),
                        h2: Vec::new(),
                    })
                    .collect::<Vec<_>>();
                let tls = tls.and_then(|t| t.upstreams.get(i).cloned().flatten());
                let group = Group { config: c.clone(), stats_base: base, servers, tls };
                base += c.servers.len();
                group
            })
            .collect();
        Upstreams { groups, ..Default::default() }
    }

    /// The server for the next request, skipping those in `tried` (a bit per
    /// server) and those out after failures. A server whose time out has passed
    /// gets one probe request.
    pub fn pick(&mut self, group: usize, tried: u64, now: Instant) -> Option<usize> {
        let g = &mut self.groups[group];
        let usable = |i: usize, s: &Server| {
            let untried = i >= 64 || tried & (1 << i) == 0;
            let up = match s.down_until {
                None => true,
                Some(until) => now >= until && !s.probing,
            };
            untried && up
        };
        // No collecting: this runs for every proxied request.
        let chosen = match g.config.balance {
            Balance::RoundRobin => smooth_round_robin(&mut g.servers, |i, s| usable(i, s))?,
            Balance::LeastConn => {
                // The fewest exchanges under way relative to weight; round
                // robin among the servers that tie, so that a lightly loaded
                // worker does not send everything to the first one.
                let mut least: Option<(u32, i64)> = None;
                for (i, s) in g.servers.iter().enumerate() {
                    if usable(i, s)
                        && least.is_none_or(|(a, w)| (s.active as i64 * w) < (a as i64 * s.weight))
                    {
                        least = Some((s.active, s.weight));
                    }
                }
                let (a, w) = least?;
                smooth_round_robin(&mut g.servers, |i, s| {
                    usable(i, s) && s.active as i64 * w == a as i64 * s.weight
                })?
            }
        };
        if g.servers[chosen].down_until.is_some() {
            g.servers[chosen].probing = true;
        }
        Some(chosen)
    }

    /// An exchange with the server begins (`true`) or ends (`false`).
    pub fn set_active(&mut self, group: usize, server: usize, begins: bool) {
        let s = &mut self.groups[group].servers[server];
        s.active = if begins { s.active + 1 } else { s.active.saturating_sub(1) };
    }

    /// For client connection `owner`, when it may take a pooled connection
    /// (`reuse`): a pooled connection that is young enough and has nothing
    /// waiting on it (the one `owner` used last first, then the most
    /// recently idle); else, or without one, a new non-blocking connect,
    /// registered with `epoll` under its own token. A group that sends a
    /// PROXY protocol header reuses only `owner`'s own connections: the
    /// header that began one names its client.
    pub fn connect(
        &mut self,
        wanted: Wanted,
        now: Instant,
        stats: &Counters<'_>,
        epoll: &tine_net::Epoll,
    ) -> io::Result<Connection> {
        let Wanted { group, server, owner, reuse } = wanted;
        let g = &mut self.groups[group];
        let keepalive_timeout = g.config.keepalive_timeout;
        let index = g.stats_base + server;
        let stat = stats.upstreams.get(index);
        let private = g.config.send_proxy.is_some();
        let s = &mut g.servers[server];
        let reusable = |idle: &[Idle]| {
            if !reuse {
                return None;
            }
            let own = idle.iter().rposition(|c| c.owner == owner.conn);
            if private {
                own
            } else {
                own.or(idle.len().checked_sub(1))
            }
        };
        while let Some(i) = reusable(&s.idle) {
            let mut c = s.idle.swap_remove(i);
            // Anything waiting (bytes nobody asked for, the server's close)
            // would be read as the next response. The pool looked when the
            // connection came back (see release), and what arrived since
            // raised an event that this turn handled before any request
            // (the loop takes pooled connections' events first), except
            // for a connection released earlier in this very turn: that
            // one is looked at.
            let young = now.saturating_duration_since(c.since) < keepalive_timeout;
            if young && (c.since != now || c.conn.peek() == Peek::Nothing) {
                if let Some(st) = stat {
                    st.pool_hits.fetch_add(1, Relaxed);
                }
                if let Some(link) = self.links.get_mut(c.conn.link.0) {
                    link.user = Some(owner);
                }
                return Ok(Connection { conn: c.conn, reused: true });
            }
            self.links.remove(c.conn.link.0);
            closed(s, stats, index, 1);
        }
        if let Some(st) = stat {
            st.pool_misses.fetch_add(1, Relaxed);
        }
        #[cfg(test)]
        if let Some(peer) = self.scripted.pop_front() {
            let link = LinkId(self.links.insert(Link { group, server, user: Some(owner), h2: None }));
            s.open += 1;
            stats.gauges.upstream(index, UpstreamGauge::Open, 1);
            let io = UpstreamTransport::Scripted(crate::scripted::ScriptedUpstream(peer));
            let conn = UpConn { io, link, opening: Opening::Connecting, drained: true };
            return Ok(Connection { conn, reused: false });
        }
        let link = LinkId(self.links.insert(Link { group, server, user: Some(owner), h2: None }));
        let g = &self.groups[group];
        let conn = match open_transport(&g.servers[server].addr, g, link, epoll) {
            Ok(conn) => conn,
            Err(e) => {
                self.links.remove(link.0);
                return Err(e);
            }
        };
        let s = &mut self.groups[group].servers[server];
        s.open += 1;
        stats.gauges.upstream(index, UpstreamGauge::Open, 1);
        Ok(Connection { conn, reused: false })
    }

    /// An event came for upstream connection `link`: the exchanges to wake
    /// go to `wake`. For an HTTP/1.1 connection, the exchange that holds it;
    /// or, for a pooled one, its server closed it or sent what nobody asked
    /// for (`trouble`: readable or hung up), so it is closed now rather than
    /// found broken by a request. For an HTTP/2 connection, its bytes move
    /// and every exchange it carries is woken.
    pub fn link_event(
        &mut self,
        link: LinkId,
        trouble: bool,
        stats: &Counters<'_>,
        wake: &mut Vec<ExchangeId>,
    ) {
        let Some(l) = self.links.get_mut(link.0) else { return };
        if l.h2.is_some() {
            self.h2_event(link, stats, wake);
            return;
        }
        if let Some(user) = l.user {
            wake.push(user);
            return;
        }
        if !trouble {
            return;
        }
        let (group, server) = (l.group, l.server);
        let g = &mut self.groups[group];
        let s = &mut g.servers[server];
        let Some(i) = s.idle.iter().position(|c| c.conn.link == link) else { return };
        // The event may be the last edge of the response just read: only
        // what is there now counts.
        if s.idle[i].conn.peek() == Peek::Nothing {
            return;
        }
        s.idle.swap_remove(i);
        self.links.remove(link.0);
        closed(s, stats, g.stats_base + server, 1);
    }

    /// Client connection `owner` closed: the idle connections it left in
    /// groups that send a PROXY protocol header began with a header naming
    /// it, so nobody else may reuse them; they close with it.
    pub fn client_gone(&mut self, owner: ConnId, stats: &Counters<'_>) {
        let links = &mut self.links;
        for g in self.groups.iter_mut().filter(|g| g.config.send_proxy.is_some()) {
            for (i, s) in g.servers.iter_mut().enumerate() {
                let dropped = drop_idle(&mut s.idle, links, |c| c.owner == owner);
                if dropped > 0 {
                    closed(s, stats, g.stats_base + i, dropped);
                }
            }
        }
    }

    /// Closes the idle connections that have been idle for the group's
    /// keepalive_timeout.
    pub fn close_expired(&mut self, now: Instant, stats: &Counters<'_>) {
        self.close_idle_h2(now, stats);
        for g in &mut self.groups {
            let timeout = g.config.keepalive_timeout;
            for (i, s) in g.servers.iter_mut().enumerate() {
                let expired = drop_idle(&mut s.idle, &mut self.links, |c| {
                    now.saturating_duration_since(c.since) >= timeout
                });
                if expired > 0 {
                    closed(s, stats, g.stats_base + i, expired);
                }
            }
        }
    }

    /// Keeps a connection whose exchange for client connection `owner`
    /// completed cleanly, or closes it when the pool is full.
    pub fn release(&mut self, mut conn: UpConn, owner: ConnId, now: Instant, stats: &Counters<'_>) {
        // Bytes left behind the response would answer the next request. A
        // connection whose last read emptied it is known clean (what comes
        // later raises an event); one that may not have been (a spliced
        // body) is looked at once.
        if !conn.drained && conn.peek() != Peek::Nothing {
            self.close(conn, stats);
            return;
        }
        let Some(link) = self.links.get_mut(conn.link.0) else { return };
        link.user = None;
        let (group, server) = (link.group, link.server);
        let g = &mut self.groups[group];
        if g.servers[server].idle.len() < g.config.keepalive {
            g.servers[server].idle.push(Idle { conn, since: now, owner });
        } else {
            self.close(conn, stats);
        }
    }

    /// Closes a connection that cannot be kept (closing the socket takes it
    /// out of epoll).
    pub fn close(&mut self, conn: UpConn, stats: &Counters<'_>) {
        let Some(link) = self.links.remove(conn.link.0) else { return };
        let g = &mut self.groups[link.group];
        closed(&mut g.servers[link.server], stats, g.stats_base + link.server, 1);
    }

    /// Records how an exchange with the server went, for the circuit breaker;
    /// says whether that took the server out or brought it back.
    pub fn report(&mut self, group: usize, server: usize, ok: bool, now: Instant) -> Health {
        let g = &mut self.groups[group];
        let (max_fails, fail_timeout) = (g.config.max_fails, g.config.fail_timeout);
        let s = &mut g.servers[server];
        s.probing = false;
        let was_down = s.down_until.is_some();
        if ok {
            s.fails = 0;
            s.down_until = None;
            return if was_down { Health::CameBack } else { Health::Unchanged };
        }
        s.fails += 1;
        if max_fails > 0 && (s.fails >= max_fails || was_down) {
            s.down_until = Some(now + fail_timeout);
            if !was_down {
                log::warn!(
                    "upstream {} ({}) failed {} times in a row; out for {fail_timeout:?}",
                    g.config.name,
                    s.addr,
                    s.fails
                );
                return Health::WentDown;
            }
        }
        Health::Unchanged
    }

    /// The worker stops: its idle connections close, and the gauges it added
    /// to (open connections, servers it holds out) lose its share.
    pub fn close_all(&mut self, stats: &Counters<'_>) {
        self.close_all_h2(stats);
        for g in &mut self.groups {
            for (i, s) in g.servers.iter_mut().enumerate() {
                let index = g.stats_base + i;
                let idle = drop_idle(&mut s.idle, &mut self.links, |_| true);
                closed(s, stats, index, idle);
                if s.down_until.take().is_some() {
                    stats.gauges.upstream(index, UpstreamGauge::Down, -1);
                }
            }
        }
    }

    pub fn group_of_stats(&self, group: usize, server: usize) -> usize {
        self.groups[group].stats_base + server
    }
}

/// A new connection to `addr` for group `g` under `link`: a non-blocking
/// connect registered with `epoll`, TLS on it for a group reached over TLS.
fn open_transport(
    addr: &UpstreamAddr,
    g: &Group,
    link: LinkId,
    epoll: &tine_net::Epoll,
) -> io::Result<UpConn> {
    let target = match addr {
        UpstreamAddr::Tcp(a) => ConnectTo::Tcp(*a),
        UpstreamAddr::Unix(p) => ConnectTo::Unix(p),
    };
    let tcp = TcpUpstream::connect(&target, &g.config.tcp)?;
    epoll.add(tcp.fd(), Token::Upstream(link).encode(), tine_net::Interest::CONNECTION)?;
    let io = match &g.tls {
        None => UpstreamTransport::Tcp(tcp),
        Some(client) => UpstreamTransport::Tls(Box::new(TlsUpstream::new(tcp, client)?)),
    };
    Ok(UpConn { io, link, opening: Opening::Connecting, drained: true })
}

/// A TLS handshake with a server completed: counted in its entry `st`.
pub fn tls_established(conn: &UpConn, st: Option<&tine_stats::layout::UpstreamStats>) {
    let (Some(resumed), Some(st)) = (conn.tls_resumed(), st) else { return };
    st.tls_handshakes.fetch_add(1, Relaxed);
    if resumed {
        st.tls_resumed.fetch_add(1, Relaxed);
    }
}

/// A TLS handshake with a server failed: counted in its entry `st` by why,
/// and said in the log (`who` names the server).
pub fn tls_refused(error: &io::Error, st: Option<&tine_stats::layout::UpstreamStats>, who: &str) {
    let refused = error.get_ref().and_then(|e| e.downcast_ref::<tine_tls::rustls::Error>());
    let class = refused.and_then(tine_tls::VerifyFailure::of);
    match class {
        Some(class) => log::warn!("upstream {who}: TLS handshake refused: {}: {error}", class.describe()),
        None => log::warn!("upstream {who}: TLS handshake failed: {error}"),
    }
    let Some(st) = st else { return };
    let counter = match class {
        None => &st.tls_failed,
        Some(tine_tls::VerifyFailure::Expired) => &st.tls_verify_expired,
        Some(tine_tls::VerifyFailure::UnknownIssuer) => &st.tls_verify_unknown_issuer,
        Some(tine_tls::VerifyFailure::NameMismatch) => &st.tls_verify_name,
        Some(tine_tls::VerifyFailure::Other) => &st.tls_verify_other,
    };
    counter.fetch_add(1, Relaxed);
}

/// Closes the idle connections `which` selects, with their links; how many.
fn drop_idle(idle: &mut Vec<Idle>, links: &mut Slab<Link>, which: impl Fn(&Idle) -> bool) -> usize {
    let before = idle.len();
    idle.retain(|c| {
        let drop = which(c);
        if drop {
            links.remove(c.conn.link.0);
        }
        !drop
    });
    before - idle.len()
}

/// `n` connections to the server were closed: fewer open in the worker's own
/// count (what least_conn and the pool see) and in the region's gauge.
fn closed(s: &mut Server, stats: &Counters<'_>, index: usize, n: usize) {
    s.open = s.open.saturating_sub(n as u32);
    stats.gauges.upstream(index, UpstreamGauge::Open, -(n as i64));
}

/// Smooth weighted round robin over the servers `eligible` accepts: each gains
/// its weight, the richest is chosen and pays the total of the round.
fn smooth_round_robin(servers: &mut [Server], eligible: impl Fn(usize, &Server) -> bool) -> Option<usize> {
    let mut total = 0;
    let mut best: Option<usize> = None;
    for i in 0..servers.len() {
        if !eligible(i, &servers[i]) {
            continue;
        }
        servers[i].current += servers[i].weight;
        total += servers[i].weight;
        if best.is_none_or(|b| servers[i].current > servers[b].current) {
            best = Some(i);
        }
    }
    let best = best?;
    servers[best].current -= total;
    Some(best)
}
