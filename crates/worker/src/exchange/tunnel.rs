//! A tunnel: bytes relayed raw both ways between the client and an upstream
//! connection, with half-closes passed on. A WebSocket becomes one after a
//! 101; a `[[stream]]` connection is one from the start. To a plain upstream
//! socket the bytes are spliced through two pipes; to an upstream without
//! one (TLS) they are copied through user space, a read at a time, each
//! written out before the next is read, so nothing piles up in memory.

use super::attempt::{Attempt, Flushed};
use super::Downstream;
use crate::context::Ctx;
use crate::outcome::{client_io, CloseReason, Outcome};
use crate::relay::{PipePool, Pump, Relay, RelayError};
use crate::upstream::{UpConn, UpstreamIo};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A tunnel: how its bytes move, and which directions have ended.
pub struct Tunnel {
    path: Path,
    up_closed: bool,
    down_closed: bool,
}

/// How a tunnel's bytes move.
enum Path {
    /// Client to upstream (`up`) and back (`down`) by splice, with the
    /// upstream's socket.
    Spliced { up: Relay, down: Relay, upstream: RawFd },
    /// Through user space: the upstream has no socket to splice with.
    Copied,
}

/// Most bytes of one read from the upstream in a copied tunnel.
const COPY_CHUNK: usize = 16 * 1024;

/// The upstream end of a tunnel, and how long it may stay silent.
pub struct TunnelEnds<'a> {
    pub upstream: &'a mut UpConn,
    pub at: &'a Attempt,
    pub idle: Duration,
}

/// What a tunnel's turn came to.
pub enum TunnelStep {
    Pause(Outcome),
    Close(CloseReason),
}

impl Tunnel {
    /// A tunnel to `upstream`: spliced when the upstream has a socket to
    /// splice with and the client takes a splice, else copied. Client bytes
    /// already read (past an upgrade request) are queued to go upstream
    /// first. None without pipes.
    pub fn open(
        client: &mut impl Downstream,
        upstream: &UpConn,
        to_upstream: &mut Vec<u8>,
        ctx: &mut Ctx,
    ) -> Option<Tunnel> {
        let path = match upstream.splice_socket().filter(|_| client.takes_splice()) {
            Some(socket) => {
                let (Ok(a), Ok(b)) = (ctx.proxy.pipes.take(), ctx.proxy.pipes.take()) else { return None };
                Path::Spliced { up: Relay::new(a, None), down: Relay::new(b, None), upstream: socket }
            }
            None => Path::Copied,
        };
        to_upstream.extend_from_slice(client.unread());
        client.consume(usize::MAX);
        Some(Tunnel { path, up_closed: false, down_closed: false })
    }

    /// Gives the pipes back.
    pub fn recycle(self, pipes: &mut PipePool) {
        if let Path::Spliced { up, down, .. } = self.path {
            pipes.give_back(up);
            pipes.give_back(down);
        }
    }

    /// Splices both ways; a side that reaches end of stream half-closes the
    /// other, and the tunnel ends when both have. Traffic either way restarts
    /// the idle deadline.
    pub fn pump(
        &mut self,
        client: &mut impl Downstream,
        mut ends: TunnelEnds<'_>,
        to_upstream: &mut Vec<u8>,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> TunnelStep {
        match client.flush(ctx) {
            None => {}
            Some(Outcome::Close(reason)) => return TunnelStep::Close(reason),
            Some(outcome) => return TunnelStep::Pause(outcome),
        }
        match ends.at.flush_to_upstream(to_upstream, ends.upstream, client, ctx) {
            Flushed::All => {}
            Flushed::Blocked => return TunnelStep::Pause(Outcome::Wait),
            Flushed::Failed => return TunnelStep::Close(CloseReason::Error),
        }
        let (up, down) = match &mut self.path {
            Path::Spliced { up, down, upstream } => {
                let relays = Relays {
                    up,
                    down,
                    upstream: *upstream,
                    up_closed: self.up_closed,
                    down_closed: self.down_closed,
                };
                match relays.splice(client, ends.at, ends.idle, ctx, budget) {
                    Ok(pumped) => pumped,
                    Err(reason) => return TunnelStep::Close(reason),
                }
            }
            Path::Copied => {
                let up = match copy_up(client, &mut ends, to_upstream, self.up_closed, ctx, budget) {
                    Ok(p) => p,
                    Err(reason) => return TunnelStep::Close(reason),
                };
                let down = match copy_down(client, &mut ends, self.down_closed, ctx, budget) {
                    Ok(p) => p,
                    Err(reason) => return TunnelStep::Close(reason),
                };
                (up, down)
            }
        };
        if up == Pump::Done && !self.up_closed {
            self.up_closed = true;
            ends.upstream.shutdown_write();
        }
        if down == Pump::Done && !self.down_closed {
            self.down_closed = true;
            client.shutdown_write();
        }
        if self.up_closed && self.down_closed {
            return TunnelStep::Close(CloseReason::Done);
        }
        TunnelStep::Pause(if up == Pump::Budget || down == Pump::Budget {
            Outcome::Yield
        } else {
            Outcome::Wait
        })
    }
}

/// The spliced tunnel's relays for one turn.
struct Relays<'a> {
    up: &'a mut Relay,
    down: &'a mut Relay,
    upstream: RawFd,
    up_closed: bool,
    down_closed: bool,
}

impl Relays<'_> {
    /// Splices both ways within the budget.
    fn splice(
        self,
        client: &mut impl Downstream,
        at: &Attempt,
        idle: Duration,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Result<(Pump, Pump), CloseReason> {
        let (before_up, before_down) = (self.up.moved, self.down.moved);
        let up =
            if self.up_closed { Ok(Pump::Done) } else { client.relay_to(self.up, self.upstream, budget) };
        let down = if self.down_closed {
            Ok(Pump::Done)
        } else {
            client.relay_from(self.down, self.upstream, budget)
        };
        let (moved_up, moved_down) = (self.up.moved - before_up, self.down.moved - before_down);
        ctx.stats.slot.bytes_received.fetch_add(moved_up, Relaxed);
        ctx.stats.slot.bytes_sent.fetch_add(moved_down, Relaxed);
        if let Some(st) = at.stats(ctx) {
            st.bytes_spliced.fetch_add(moved_up + moved_down, Relaxed);
        }
        if moved_up + moved_down > 0 {
            client.arm(ctx, idle);
        }
        match (up, down) {
            (Ok(u), Ok(d)) => Ok((u, d)),
            (Err(e), _) => Err(relay_failure(e, Side::ClientIsSource)),
            (_, Err(e)) => Err(relay_failure(e, Side::ClientIsDest)),
        }
    }
}

/// Copies what the client sent to the upstream, until either side blocks
/// or the budget is spent; `Done` at the client's end of stream.
fn copy_up(
    client: &mut impl Downstream,
    ends: &mut TunnelEnds<'_>,
    to_upstream: &mut Vec<u8>,
    closed: bool,
    ctx: &mut Ctx,
    budget: &mut usize,
) -> Result<Pump, CloseReason> {
    if closed {
        return Ok(Pump::Done);
    }
    loop {
        if *budget == 0 {
            return Ok(Pump::Budget);
        }
        if client.unread().is_empty() {
            match client.read_more(ctx) {
                Ok(0) => return Ok(Pump::Done),
                Ok(_) => {}
                Err(e) => match client_io(e) {
                    None => continue,
                    Some(Outcome::Close(reason)) => return Err(reason),
                    Some(_) => return Ok(Pump::Blocked),
                },
            }
        }
        let n = client.unread().len();
        to_upstream.extend_from_slice(client.unread());
        client.consume(n);
        *budget = budget.saturating_sub(n);
        client.arm(ctx, ends.idle);
        match ends.at.flush_to_upstream(to_upstream, ends.upstream, client, ctx) {
            Flushed::All => {}
            Flushed::Blocked => return Ok(Pump::Blocked),
            Flushed::Failed => return Err(CloseReason::Error),
        }
    }
}

/// Copies what the upstream sent to the client, a read at a time, each
/// written out before the next; `Done` at the upstream's end of stream.
fn copy_down(
    client: &mut impl Downstream,
    ends: &mut TunnelEnds<'_>,
    closed: bool,
    ctx: &mut Ctx,
    budget: &mut usize,
) -> Result<Pump, CloseReason> {
    if closed {
        return Ok(Pump::Done);
    }
    let mut chunk = [0u8; COPY_CHUNK];
    loop {
        if *budget == 0 {
            return Ok(Pump::Budget);
        }
        match ends.upstream.recv(&mut chunk) {
            Ok(0) => return Ok(Pump::Done),
            Ok(n) => {
                client.emit_body(&chunk[..n]);
                ends.at.count_copied(ctx, n);
                *budget = budget.saturating_sub(n);
                client.arm(ctx, ends.idle);
                match client.flush(ctx) {
                    None => {}
                    Some(Outcome::Close(reason)) => return Err(reason),
                    Some(_) => return Ok(Pump::Blocked),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Pump::Blocked),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("upstream connection failed mid-stream: {e}");
                return Err(CloseReason::Error);
            }
        }
    }
}

/// Which end of a relay is the client.
pub enum Side {
    ClientIsSource,
    ClientIsDest,
}

/// Why a failed relay closes the connection: the client's side maps as
/// every client error does (a reset counts as one); the upstream's side is
/// the upstream failing mid-stream.
pub fn relay_failure(e: RelayError, side: Side) -> CloseReason {
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
