//! Trying a group's servers, shared by the proxy exchange and the stream
//! relay: which server a request or stream is using, picking the next one
//! not yet tried, taking a pooled or new connection to it, the PROXY
//! protocol header a new connection begins with, and what the circuit
//! breaker and the statistics hear of it.

use super::Downstream;
use crate::context::Ctx;
use crate::upstream::{tls_established, tls_refused, Health, Opening, UpConn, UpstreamIo, Wanted};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tine_stats::layout::UpstreamStats;
use tine_stats::UpstreamGauge;

/// Which server of its group a request or a stream is using, and how
/// trying the group went so far.
pub struct Attempt {
    pub group: usize,
    pub server: usize,
    /// Servers already tried (a bit each).
    pub tried: u64,
    /// When the current server was picked: its response time runs from here
    /// to the final response head.
    pub picked_at: Instant,
    /// The upstream connection came from the keep-alive pool.
    pub reused: bool,
    /// Counted among `server`'s exchanges under way (for least_conn).
    active: bool,
    /// A pooled connection found broken was replaced by a fresh one already
    /// (or must not be: a stream).
    pub fresh_retry_done: bool,
    /// A connection from the keep-alive pool may serve (not for a stream,
    /// whose raw bytes must start on a connection of their own).
    pub pooled: bool,
}

/// What taking a connection for an attempt came to.
pub enum Connected {
    To(UpConn),
    /// The connect failed at once (counted against the server): pick again.
    Failed,
    /// Every server was tried or is out.
    NoServer,
}

/// Whether a connection just taken can carry bytes.
pub enum Ready {
    Yes,
    /// The connect is under way.
    NotYet,
    Failed,
}

/// How far a queue of bytes for the upstream got.
pub enum Flushed {
    All,
    Blocked,
    Failed,
}

impl Attempt {
    pub fn new(group: usize) -> Self {
        Attempt {
            group,
            server: 0,
            tried: 0,
            picked_at: Instant::now(),
            reused: false,
            active: false,
            fresh_retry_done: false,
            pooled: true,
        }
    }

    /// The current server may be tried again (a pooled connection to it
    /// broke, which is no failure of the server).
    pub fn untry_server(&mut self) {
        self.tried &= !(1u64.checked_shl(self.server as u32).unwrap_or(0));
    }

    /// The group's configuration.
    pub fn config<'c>(&self, ctx: &'c Ctx) -> &'c tine_config::Upstream {
        &ctx.proxy.upstreams.groups[self.group].config
    }

    /// This worker's entry of the region's table for the current server.
    pub fn stats<'a>(&self, ctx: &Ctx<'a>) -> Option<&'a UpstreamStats> {
        server_stats(ctx, self.group, self.server)
    }

    /// Picks a server of the group not yet tried, and takes a connection to
    /// it from the pool (the one `client` used last first) or opens one,
    /// under the connect timeout (a pooled one under io_timeout).
    pub fn connect_next(&mut self, client: &mut impl Downstream, ctx: &mut Ctx) -> Connected {
        let Some(server) = self.take_next_server(ctx) else { return Connected::NoServer };
        let wanted = Wanted { group: self.group, server, owner: client.owner(), reuse: self.pooled };
        let taken = ctx.proxy.upstreams.connect(wanted, ctx.clock.now, &ctx.stats, &ctx.epoll);
        let Some(c) = self.count_taken(taken, ctx) else { return Connected::Failed };
        self.reused = c.reused;
        let config = self.config(ctx);
        let timeout = if c.reused { config.io_timeout } else { config.connect_timeout };
        client.arm(ctx, timeout);
        Connected::To(c.conn)
    }

    /// For an HTTP/2 group: picks a server of the group not yet tried and a
    /// connection to it the pool shares (one that takes another stream, or a
    /// new one). `None`: every server was tried or is out; `Err`: the
    /// connect failed at once (counted against the server), pick again.
    pub fn link_next(
        &mut self,
        client: &mut impl Downstream,
        ctx: &mut Ctx,
    ) -> Option<Result<crate::token::LinkId, ()>> {
        let server = self.take_next_server(ctx)?;
        let taken = ctx.proxy.upstreams.h2_link(self.group, server, client.owner(), &ctx.stats, &ctx.epoll);
        Some(match self.count_taken(taken, ctx) {
            Some((link, reused)) => {
                self.reused = reused;
                Ok(link)
            }
            None => Err(()),
        })
    }

    /// Picks a server of the group not yet tried; the attempt counts among
    /// its exchanges under way from now.
    fn take_next_server(&mut self, ctx: &mut Ctx) -> Option<usize> {
        self.end_active(ctx);
        let server = ctx.proxy.upstreams.pick(self.group, self.tried, ctx.clock.now)?;
        self.server = server;
        self.picked_at = ctx.clock.now;
        self.begin_active(ctx);
        if server < 64 {
            self.tried |= 1 << server;
        }
        Some(server)
    }

    /// Counts how taking a connection to the current server went: a request
    /// sent its way, or a failure the breaker hears of.
    fn count_taken<T>(&self, taken: io::Result<T>, ctx: &mut Ctx) -> Option<T> {
        let stats = self.stats(ctx);
        match taken {
            Ok(t) => {
                if let Some(st) = stats {
                    st.requests.fetch_add(1, Relaxed);
                }
                Some(t)
            }
            Err(e) => {
                log::warn!("upstream {}: connect: {e}", self.server_name(ctx));
                if let Some(st) = stats {
                    st.failures.fetch_add(1, Relaxed);
                }
                self.report(ctx, false);
                None
            }
        }
    }

    /// Whether a connection just taken is ready to carry the client's bytes:
    /// a new one once its connect completed, the PROXY protocol header went
    /// out first (for a group that asks), and its TLS handshake (for a group
    /// reached over TLS) is complete.
    pub fn connection_ready(&self, client: &impl Downstream, conn: &mut UpConn, ctx: &Ctx) -> Ready {
        if self.reused {
            return Ready::Yes;
        }
        loop {
            match conn.opening {
                Opening::Connecting => {
                    match conn.connect_status() {
                        Ok(true) => {}
                        Ok(false) => return Ready::NotYet,
                        Err(_) => return Ready::Failed,
                    }
                    if let Some(version) = self.config(ctx).send_proxy {
                        if send_proxy_header(version, client, conn).is_err() {
                            return Ready::Failed;
                        }
                    }
                    conn.opening = Opening::Establishing;
                }
                Opening::Establishing => match conn.establish() {
                    Ok(true) => {
                        tls_established(conn, self.stats(ctx));
                        conn.opening = Opening::Open;
                    }
                    Ok(false) => return Ready::NotYet,
                    Err(e) => {
                        let who = format!("{} ({})", self.config(ctx).name, self.server_name(ctx));
                        tls_refused(&e, self.stats(ctx), &who);
                        return Ready::Failed;
                    }
                },
                Opening::Open => return Ready::Yes,
            }
        }
    }

    /// Sends what is queued for the upstream; progress restarts io_timeout
    /// (a slow reader upstream is fine as long as it keeps reading).
    pub fn flush_to_upstream(
        &self,
        queue: &mut Vec<u8>,
        upstream: &mut UpConn,
        client: &mut impl Downstream,
        ctx: &mut Ctx,
    ) -> Flushed {
        let mut flushed = Flushed::All;
        let mut moved = false;
        while !queue.is_empty() {
            match upstream.send(queue, false) {
                Ok(n) => {
                    queue.drain(..n);
                    self.count_copied(ctx, n);
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
            let timeout = self.config(ctx).io_timeout;
            client.arm(ctx, timeout);
        }
        flushed
    }

    /// The server failed (refused, reset, timed out, broke the protocol):
    /// counted against it.
    pub fn count_failure(&self, ctx: &mut Ctx) {
        if let Some(st) = self.stats(ctx) {
            st.failures.fetch_add(1, Relaxed);
        }
        self.report(ctx, false);
    }

    /// Tells the circuit breaker how the server did; the down gauge follows
    /// its decisions (it counts the workers of the slot that hold the server
    /// out).
    pub fn report(&self, ctx: &mut Ctx, ok: bool) {
        let health = ctx.proxy.upstreams.report(self.group, self.server, ok, ctx.clock.now);
        let index = ctx.proxy.upstreams.group_of_stats(self.group, self.server);
        match health {
            Health::WentDown => ctx.stats.gauges.upstream(index, UpstreamGauge::Down, 1),
            Health::CameBack => ctx.stats.gauges.upstream(index, UpstreamGauge::Down, -1),
            Health::Unchanged => {}
        }
    }

    /// Bytes copied through user space to or from the server.
    pub fn count_copied(&self, ctx: &Ctx, n: usize) {
        if let Some(st) = self.stats(ctx) {
            st.bytes_copied.fetch_add(n as u64, Relaxed);
        }
    }

    /// The current server's address, for the log.
    pub fn server_name<'c>(&self, ctx: &'c Ctx) -> &'c tine_config::UpstreamAddr {
        &ctx.proxy.upstreams.groups[self.group].servers[self.server].addr
    }

    /// The attempt counts among its server's exchanges under way.
    fn begin_active(&mut self, ctx: &mut Ctx) {
        self.active = true;
        ctx.proxy.upstreams.set_active(self.group, self.server, true);
        let index = ctx.proxy.upstreams.group_of_stats(self.group, self.server);
        ctx.stats.gauges.upstream(index, UpstreamGauge::Active, 1);
    }

    /// The attempt no longer counts among its server's exchanges under way.
    pub fn end_active(&mut self, ctx: &mut Ctx) {
        if std::mem::take(&mut self.active) {
            ctx.proxy.upstreams.set_active(self.group, self.server, false);
            let index = ctx.proxy.upstreams.group_of_stats(self.group, self.server);
            ctx.stats.gauges.upstream(index, UpstreamGauge::Active, -1);
        }
    }
}

/// The PROXY protocol header a group's servers get first on a new
/// connection. It is a few dozen bytes into a socket that has sent nothing
/// yet, so one send takes it whole; anything less is a failure.
fn send_proxy_header(
    version: tine_config::ProxyVersion,
    client: &impl Downstream,
    conn: &mut UpConn,
) -> io::Result<()> {
    use tine_http::proxy_protocol::{write_v1, write_v2};
    let (client, local) = client.addresses().ok_or_else(|| io::Error::other("no client address"))?;
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

/// This worker's entry of the region's table for a server.
fn server_stats<'a>(ctx: &Ctx<'a>, group: usize, server: usize) -> Option<&'a UpstreamStats> {
    ctx.stats.upstreams.get(ctx.proxy.upstreams.group_of_stats(group, server))
}

/// Closes an upstream connection that cannot be kept.
pub fn close_upstream(ctx: &mut Ctx, conn: UpConn) {
    ctx.proxy.upstreams.close(conn, &ctx.stats);
}
