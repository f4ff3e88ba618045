//! The worker cycle: one thread, one epoll loop. Each turn waits for events,
//! accepts on this slot's listeners, drives the connections that are ready,
//! expires deadlines from the timer wheel and stamps the heartbeat. Read this
//! file top to bottom to see everything a worker does.

use crate::connection::{CloseReason, Conn, Drive, Outcome};
use crate::context::Ctx;
use crate::slab::Slab;
use crate::token::{ConnId, ExchangeId, Token};
use crate::transport::{Client, PlainTcp, Tls};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};
use tine_config::ListenerRole;
use tine_net::{sys, Event, Interest};
use tine_stats::SlotState;

/// Connections accepted per listener event, so that one busy listener cannot
/// keep the loop from serving the connections it already has.
const ACCEPT_BATCH: usize = 64;
/// Most idle keep-alive connections closed at once to make room at the limit.
const RECLAIM_BATCH: usize = 32;

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// TERM or INT: stop at once.
    Terminated,
    /// QUIT (or the master's death): every connection finished or the drain
    /// timeout passed.
    Drained,
}

pub struct EventLoop<'a> {
    /// The slot generation this worker was started as; once the master starts
    /// a newer worker in the slot (reload, upgrade), this one stops writing the
    /// slot's descriptive fields and only adds to its counters.
    generation: u64,
    signals: SignalFd,
    listeners: Vec<RawFd>,
    roles: Vec<ListenerRole>,
    accepting: bool,
    /// Accepting is paused until then after the process ran out of descriptors.
    accept_retry_at: Option<Instant>,
    max_connections: usize,
    conns: Slab<Conn>,
    ctx: Ctx<'a>,
    events: Vec<Event>,
    /// Connections that used their send budget while still writable.
    ready: Vec<ConnId>,
    /// Deadlines that came due this turn (a connection's, or one of its exchanges').
    expired: Vec<ExchangeId>,
    /// Exchanges an upstream connection's event wakes (reused each time).
    woken: Vec<ExchangeId>,
    /// Scratch list of idle keep-alive connections, oldest first once sorted.
    reclaimable: Vec<(Instant, ConnId)>,
    drain_deadline: Option<Instant>,
    /// When the once-a-second housekeeping next runs.
    next_housekeeping: Instant,
    /// Most connections open at once since memory was last given back.
    peak_conns: usize,
    /// Connections closed, for sampling one in TCP_INFO_SAMPLE_EVERY.
    closed: u64,
}

impl<'a> EventLoop<'a> {
    pub fn new(
        ctx: Ctx<'a>,
        generation: u64,
        listeners: Vec<RawFd>,
        roles: Vec<ListenerRole>,
        signals: SignalFd,
        max_connections: usize,
    ) -> io::Result<Self> {
        ctx.epoll.add(signals.as_raw_fd(), Token::Signals.encode(), Interest::READABLE)?;
        let ctx_now = ctx.clock.now;
        let mut el = EventLoop {
            generation,
            signals,
            listeners,
            roles,
            accepting: false,
            accept_retry_at: None,
            max_connections,
            conns: Slab::default(),
            ctx,
            events: Vec::with_capacity(512),
            ready: Vec::new(),
            expired: Vec::new(),
            woken: Vec::new(),
            reclaimable: Vec::new(),
            drain_deadline: None,
            next_housekeeping: ctx_now,
            peak_conns: 0,
            closed: 0,
        };
        el.resume_accepting()?;
        Ok(el)
    }

    /// The access log, opened once the worker runs as its own user.
    pub fn set_access_log(&mut self, log: tine_logging::AccessLog) {
        self.ctx.access_log = Some(log);
    }

    pub fn run(&mut self) -> io::Result<Exit> {
        self.set_slot_state(SlotState::Running);
        let exit = self.turn_until_exit();
        // Whatever is still open closes through the one path that keeps the
        // gauges and the access log right.
        for id in self.conns.ids() {
            self.close(id, CloseReason::Drained);
        }
        self.ctx.proxy.upstreams.close_all(&self.ctx.stats);
        if let Some(log) = self.ctx.access_log.as_mut() {
            log.flush();
        }
        exit
    }

    fn turn_until_exit(&mut self) -> io::Result<Exit> {
        loop {
            // The turn's own clock is late by the turn's work, a few
            // microseconds: a tick that much late is fine, a clock read is saved.
            let timeout = if self.ready.is_empty() && !crate::upstream::any_woken() {
                self.ctx.timers.wheel.until_next_tick(self.ctx.clock.now)
            } else {
                0
            };
            self.ctx.epoll.wait(&mut self.events, timeout)?;
            self.begin_turn();
            // Upstream connections' events first: a pooled connection its
            // server closed, or that received what nobody asked for, is
            // closed before a request later in the batch could take it.
            for upstreams_first in [true, false] {
                for i in 0..self.events.len() {
                    let event = self.events[i];
                    let upstream = matches!(Token::decode(event.token()), Token::Upstream(_));
                    if upstream != upstreams_first {
                        continue;
                    }
                    if let Some(exit) = self.dispatch(event)? {
                        return Ok(exit);
                    }
                }
            }
            self.wake_streams();
            self.drive_ready();
            self.wake_streams();
            self.ctx.proxy.upstreams.write_h2(&self.ctx.stats);
            self.expire_deadlines();
            self.housekeeping();
            self.maybe_resume_accepting()?;
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() || self.ctx.clock.now >= deadline {
                    return Ok(Exit::Drained);
                }
            }
        }
    }

    fn begin_turn(&mut self) {
        self.ctx.clock.now = Instant::now();
        let wall = SystemTime::now();
        self.ctx.clock.date.refresh(wall);
        let since_epoch = wall.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.ctx.clock.unix_secs = since_epoch.as_secs();
        if self.owns_slot() {
            self.ctx.stats.slot.heartbeat_unix_ms.store(since_epoch.as_millis() as u64, Relaxed);
        }
        if let Some(log) = self.ctx.access_log.as_mut() {
            log.tick(self.ctx.clock.now);
        }
    }

    fn owns_slot(&self) -> bool {
        self.ctx.stats.slot.generation.load(Relaxed) == self.generation
    }

    fn set_slot_state(&self, state: SlotState) {
        if self.owns_slot() {
            self.ctx.stats.slot.state.store(state as u64, Relaxed);
        }
    }

    fn dispatch(&mut self, event: Event) -> io::Result<Option<Exit>> {
        let id = match Token::decode(event.token()) {
            Token::Signals => return self.on_signals(),
            Token::Listener(i) => {
                self.accept_batch(i as usize);
                return Ok(None);
            }
            Token::Client(id) => id,
            // An upstream connection: the exchanges it serves (one for an
            // HTTP/1.1 connection, every stream's for an HTTP/2 one) are
            // driven by their client connections; the pool deals with a
            // pooled one.
            Token::Upstream(link) => {
                let mut woken = std::mem::take(&mut self.woken);
                let stats = &self.ctx.stats;
                self.ctx.proxy.upstreams.link_event(link, event.readable(), stats, &mut woken);
                for exchange in woken.drain(..) {
                    self.wake_exchange(exchange, event.peer_closed());
                }
                self.woken = woken;
                return Ok(None);
            }
        };
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(None);
        };
        if event.readable() {
            conn.mark_readable();
            if event.peer_closed() {
                conn.mark_client_fin();
            }
        }
        let outcome = conn.drive(&mut self.ctx);
        self.settle(id, outcome);
        Ok(None)
    }

    /// Drives the exchanges whose HTTP/2 upstream streams the engine woke
    /// (as it ran for another exchange, or for its connection's event).
    fn wake_streams(&mut self) {
        let mut woken = std::mem::take(&mut self.woken);
        for _ in 0..8 {
            crate::upstream::take_woken(&mut woken);
            if woken.is_empty() {
                break;
            }
            for exchange in woken.drain(..) {
                self.wake_exchange(exchange, false);
            }
        }
        self.woken = woken;
    }

    /// An event of its upstream connection for `exchange`: its client
    /// connection drives it now, or after the batch (an HTTP/2 session
    /// gathers its streams' wake-ups).
    fn wake_exchange(&mut self, exchange: ExchangeId, peer_closed: bool) {
        let Some(conn) = self.conns.get_mut(exchange.conn) else { return };
        match conn.on_upstream_event(exchange.index, peer_closed) {
            Drive::Now => {}
            Drive::AfterBatch { first } => {
                if first {
                    self.ready.push(exchange.conn);
                }
                return;
            }
        }
        let outcome = conn.drive(&mut self.ctx);
        self.settle(exchange.conn, outcome);
    }

    fn on_signals(&mut self) -> io::Result<Option<Exit>> {
        while let Some(info) = self.signals.read_signal().map_err(io::Error::from)? {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => return Ok(Some(Exit::Terminated)),
                Ok(Signal::SIGQUIT) => self.start_draining(),
                Ok(Signal::SIGUSR1) => self.reopen_logs(),
                #[cfg(feature = "test-hooks")]
                Ok(Signal::SIGUSR2) => crate::test_hooks::hang(),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Graceful stop: take the connections already queued (served with
    /// `Connection: close`), then let go of the listening sockets, give idle
    /// keep-alive connections a short grace to send one more request, and
    /// let every connection finish its response and close. On a reload the
    /// sockets live on in the master and the new workers; on a stop, once
    /// the master has let go too, a new connection is refused at once
    /// rather than queued for nobody and reset at exit.
    fn start_draining(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        log::info!("worker draining {} connection(s)", self.conns.len());
        self.ctx.draining = true;
        self.set_slot_state(SlotState::Draining);
        self.drain_deadline = Some(self.ctx.clock.now + self.ctx.timers.timeouts.drain);
        for index in 0..self.listeners.len() {
            self.accept_batch(index);
        }
        self.pause_accepting();
        for fd in self.listeners.drain(..) {
            tine_net::sys::close_inherited(fd);
        }
        for id in self.conns.ids() {
            if let Some(conn) = self.conns.get_mut(id) {
                if conn.start_grace(&mut self.ctx) {
                    let outcome = conn.drive(&mut self.ctx);
                    self.settle(id, outcome);
                }
            }
        }
    }

    /// USR1: logrotate moved the logs; open them again by name.
    fn reopen_logs(&mut self) {
        if let Some(log) = self.ctx.access_log.as_mut() {
            if let Err(e) = log.reopen() {
                log::error!("cannot reopen the access log: {e}");
            }
        }
        if let Err(e) = tine_logging::reopen_error_log() {
            log::error!("cannot reopen the error log: {e}");
        }
    }

    fn accept_batch(&mut self, index: usize) {
        let Some(&listener) = self.listeners.get(index) else {
            return;
        };
        for _ in 0..ACCEPT_BATCH {
            if self.conns.len() >= self.max_connections {
                // Idle connections give way only to a client that is waiting:
                // with none queued, they stay (the next arrival wakes us).
                if !sys::readable_now(listener) {
                    return;
                }
                if !self.reclaim_idle_connections() {
                    // Every connection is busy: the rest wait in the kernel's
                    // queue until one closes or goes idle.
                    self.pause_accepting();
                    return;
                }
            }
            match sys::accept(listener) {
                Ok(Some((fd, peer))) => {
                    let role = self.roles.get(index).copied().unwrap_or(ListenerRole::Http);
                    let proxy_header =
                        self.ctx.proxy_headers.on_listener.get(index).copied().unwrap_or(false);
                    self.open(fd, peer, role, proxy_header)
                }
                Ok(None) => return,
                Err(e) => match e.raw_os_error().map(nix::errno::Errno::from_raw) {
                    Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM) => {
                        log::error!("accept: {e}; pausing accepts for a moment");
                        self.pause_accepting();
                        self.accept_retry_at = Some(self.ctx.clock.now + crate::timer_wheel::TICK * 5);
                        return;
                    }
                    // The client gave up while queued, or a transient error.
                    Some(Errno::ECONNABORTED | Errno::EINTR | Errno::EPROTO | Errno::EPERM) => {}
                    _ => {
                        log::error!("accept: {e}");
                        return;
                    }
                },
            }
        }
    }

    /// At the connection limit, idle keep-alive connections give way to new
    /// clients (as nginx reuses connections): the longest-idle ones are
    /// closed, up to an eighth of them at once. A client finds its idle
    /// connection closed, which HTTP allows at any time, instead of a new
    /// client waiting until an idle timeout frees a place. False when no
    /// connection is idle.
    fn reclaim_idle_connections(&mut self) -> bool {
        self.reclaimable.clear();
        self.reclaimable.extend(self.conns.iter().filter_map(|(t, c)| Some((c.idle_keep_alive_since()?, t))));
        if self.reclaimable.is_empty() {
            return false;
        }
        let n = (self.reclaimable.len() / 8).clamp(1, RECLAIM_BATCH);
        if n < self.reclaimable.len() {
            self.reclaimable.select_nth_unstable(n - 1);
        }
        for i in 0..n {
            let (_, id) = self.reclaimable[i];
            self.close(id, CloseReason::Reclaimed);
        }
        true
    }

    /// A new connection is read at once, before it is registered with epoll:
    /// a request already there is answered in this turn, and a connection
    /// that ends with that answer (`Connection: close`) never costs an epoll
    /// call. Registration is edge-triggered, and readiness that arrives after
    /// the first read is reported when the connection is registered.
    fn open(
        &mut self,
        fd: OwnedFd,
        peer: Option<std::net::SocketAddr>,
        role: ListenerRole,
        proxy_header: bool,
    ) {
        let admin = role == ListenerRole::Admin;
        let trusted = proxy_header && peer.is_some_and(|p| self.ctx.proxy_headers.settings.trusts(p.ip()));
        // Connections count against client limits before a byte is read;
        // behind a trusted balancer, once its header names the client.
        let mut limit_holds = None;
        if matches!(role, ListenerRole::Http | ListenerRole::Https)
            && !trusted
            && self.ctx.client_limits.counts_connections()
        {
            if let Some(peer) = peer {
                match self.ctx.client_limits.admit_connection(peer.ip()) {
                    Some(holds) => limit_holds = Some(holds),
                    // Dropping the descriptor closes the connection.
                    None => return,
                }
            }
        }
        let raw = fd.as_raw_fd();
        let transport = match self.client_transport(fd, role) {
            Ok(t) => t,
            Err(e) => {
                log::error!("cannot start TLS on a new connection: {e}");
                if let Some(holds) = limit_holds {
                    self.ctx.client_limits.release(holds);
                }
                return;
            }
        };
        let ctx = &mut self.ctx;
        let id = self.conns.insert_with(|id| Conn::new(id, transport, peer, admin, ctx));
        self.peak_conns = self.peak_conns.max(self.conns.len());
        self.ctx.stats.slot.accepted.fetch_add(1, Relaxed);
        self.ctx.stats.gauges.connections(1);
        let Some(conn) = self.conns.get_mut(id) else { return };
        if let Some(holds) = limit_holds {
            conn.hold_limits(holds);
        }
        let outcome = match role {
            ListenerRole::Stream(stream) => conn.begin_stream(stream, &mut self.ctx),
            ListenerRole::Http | ListenerRole::Https | ListenerRole::Admin => {
                if proxy_header {
                    conn.expect_proxy_header(trusted, &mut self.ctx);
                }
                conn.mark_readable();
                conn.drive(&mut self.ctx)
            }
        };
        if let Outcome::Close(reason) = outcome {
            self.close(id, reason);
            return;
        }
        if let Err(e) = self.ctx.epoll.add(raw, Token::Client(id).encode(), Interest::CONNECTION) {
            log::error!("epoll add: {e}");
            self.close(id, CloseReason::Error);
            return;
        }
        self.settle(id, outcome);
    }

    /// Plain TCP, or TLS for HTTPS listeners and TLS streams.
    fn client_transport(&self, fd: OwnedFd, role: ListenerRole) -> io::Result<Client> {
        let tls_config = match (role, &self.ctx.tls) {
            (ListenerRole::Https, Some(tls)) => Some(&tls.https),
            (ListenerRole::Stream(i), Some(tls)) if self.ctx.proxy.streams.get(i).is_some_and(|s| s.tls) => {
                Some(&tls.stream)
            }
            _ => None,
        };
        match tls_config {
            Some(config) => Ok(Client::Tls(Box::new(Tls::new(fd, config.clone())?))),
            None => Ok(Client::Plain(PlainTcp::new(fd))),
        }
    }

    fn settle(&mut self, id: ConnId, outcome: Outcome) {
        match outcome {
            Outcome::Wait => {}
            Outcome::Yield => self.ready.push(id),
            Outcome::Close(reason) => self.close(id, reason),
        }
    }

    fn drive_ready(&mut self) {
        for id in std::mem::take(&mut self.ready) {
            if let Some(conn) = self.conns.get_mut(id) {
                let outcome = conn.drive(&mut self.ctx);
                self.settle(id, outcome);
            }
        }
    }

    fn expire_deadlines(&mut self) {
        self.ctx.timers.wheel.advance(self.ctx.clock.now, &mut self.expired);
        // Index, not drain: the list keeps its allocation from turn to turn.
        for i in 0..self.expired.len() {
            let due = self.expired[i];
            let Some(conn) = self.conns.get_mut(due.conn) else { continue };
            let Some(timer) = conn.timer(due.index) else { continue };
            if self.ctx.timers.wheel.came_due(timer, due, self.ctx.clock.now) {
                let outcome = conn.on_deadline(due.index, &mut self.ctx);
                self.settle(due.conn, outcome);
            }
        }
        self.expired.clear();
    }

    /// Once a second: idle upstream connections past their keepalive_timeout
    /// are closed, rather than waiting for a request to find them stale, and
    /// memory a burst left behind is given back.
    fn housekeeping(&mut self) {
        if self.ctx.clock.now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = self.ctx.clock.now + Duration::from_secs(1);
        self.ctx.proxy.upstreams.close_expired(self.ctx.clock.now, &self.ctx.stats);
        self.give_back_memory();
    }

    /// After a burst (a slowloris run, a flash crowd) the worker's freed
    /// buffers would stay resident: the buffer pool keeps up to its bound and
    /// the allocator keeps the rest. Once connections have fallen to a
    /// quarter of their peak, the pools are cut to what steady traffic reuses
    /// and the allocator returns its free pages to the kernel.
    fn give_back_memory(&mut self) {
        const BURST: usize = 256;
        let live = self.conns.len();
        if self.peak_conns >= BURST && live <= self.peak_conns / 4 {
            self.ctx.pool.shrink();
            self.ctx.proxy.pipes.shrink();
            tine_net::sys::trim_heap();
            self.peak_conns = live;
        }
    }

    fn close(&mut self, id: ConnId, reason: CloseReason) {
        let Some(mut conn) = self.conns.remove(id) else {
            return;
        };
        conn.release(&mut self.ctx);
        conn.count_tls_end(reason, &self.ctx);
        self.closed += 1;
        if self.closed.is_multiple_of(tine_stats::layout::TCP_INFO_SAMPLE_EVERY) {
            self.sample_path(&conn);
        }
        self.ctx.stats.gauges.connections(-1);
        let stats = self.ctx.stats.slot;
        match reason {
            CloseReason::Timeout => {
                stats.timeouts.fetch_add(1, Relaxed);
            }
            CloseReason::Reset => {
                stats.closed_by_reset.fetch_add(1, Relaxed);
            }
            CloseReason::Reclaimed => {
                stats.closed_idle_at_limit.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        // Dropping the descriptor closes it, which also removes it from epoll.
        drop(conn);
    }

    /// What the kernel knows of a closing connection's network path: its
    /// smoothed RTT and retransmissions, into the slot's counters. A
    /// connection that never got an ACK (rtt 0) says nothing.
    fn sample_path(&self, conn: &Conn) {
        if let Some(info) = sys::tcp_info(conn.client_socket()).filter(|i| i.rtt_us > 0) {
            self.ctx.stats.record_tcp_info(info);
        }
    }

    fn pause_accepting(&mut self) {
        if !self.accepting {
            return;
        }
        for &fd in &self.listeners {
            let _ = self.ctx.epoll.delete(fd);
        }
        self.accepting = false;
    }

    fn resume_accepting(&mut self) -> io::Result<()> {
        for (i, &fd) in self.listeners.iter().enumerate() {
            self.ctx.epoll.add(fd, Token::Listener(i as u32).encode(), Interest::READABLE)?;
        }
        self.accepting = true;
        Ok(())
    }

    fn maybe_resume_accepting(&mut self) -> io::Result<()> {
        if self.accepting || self.ctx.draining {
            return Ok(());
        }
        if self.accept_retry_at.is_some_and(|at| self.ctx.clock.now < at) {
            return Ok(());
        }
        let full = self.conns.len() >= self.max_connections;
        if full && !self.conns.iter().any(|(_, c)| c.idle_keep_alive_since().is_some()) {
            // Every connection is busy; look again in a tick, not every turn.
            self.accept_retry_at = Some(self.ctx.clock.now + crate::timer_wheel::TICK);
            return Ok(());
        }
        self.accept_retry_at = None;
        // Listeners are level-triggered: a non-empty queue reports at once.
        self.resume_accepting()
    }
}
