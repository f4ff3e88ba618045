//! A tunnel: bytes relayed raw both ways between the client and an upstream
//! connection, with half-closes passed on. A WebSocket becomes one after a
//! 101; a `[[stream]]` connection is one from the start.

use super::attempt::{Attempt, Flushed};
use super::Downstream;
use crate::context::Ctx;
use crate::outcome::{client_io, CloseReason, Outcome};
use crate::relay::{PipePool, Pump, Relay, RelayError};
use crate::upstream::{UpConn, UpstreamIo};
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A tunnel's two relays: client to upstream (`up`) and back (`down`).
pub struct Tunnel {
    up: Relay,
    down: Relay,
    /// The upstream's socket, which both relays splice with.
    upstream: RawFd,
    up_closed: bool,
    down_closed: bool,
}

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
    /// The pipes of a tunnel to `upstream`; client bytes already read (past
    /// an upgrade request) are queued to go upstream first. None without
    /// pipes, or for an upstream without a socket to splice with.
    pub fn open(
        client: &mut impl Downstream,
        upstream: &UpConn,
        to_upstream: &mut Vec<u8>,
        ctx: &mut Ctx,
    ) -> Option<Tunnel> {
        let Some(socket) = upstream.splice_socket() else {
            log::warn!("a tunnel needs an upstream it can splice with");
            return None;
        };
        let (Ok(a), Ok(b)) = (ctx.proxy.pipes.take(), ctx.proxy.pipes.take()) else { return None };
        to_upstream.extend_from_slice(client.unread());
        client.consume(usize::MAX);
        Some(Tunnel {
            up: Relay::new(a, None),
            down: Relay::new(b, None),
            upstream: socket,
            up_closed: false,
            down_closed: false,
        })
    }

    /// Gives the pipes back.
    pub fn recycle(self, pipes: &mut PipePool) {
        pipes.give_back(self.up);
        pipes.give_back(self.down);
    }

    /// Splices both ways; a side that reaches end of stream half-closes the
    /// other, and the tunnel ends when both have. Traffic either way restarts
    /// the idle deadline.
    pub fn pump(
        &mut self,
        client: &mut impl Downstream,
        ends: TunnelEnds<'_>,
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
        let upstream = self.upstream;
        let (before_up, before_down) = (self.up.moved, self.down.moved);
        let up =
            if self.up_closed { Ok(Pump::Done) } else { client.relay_to(&mut self.up, upstream, budget) };
        let down = if self.down_closed {
            Ok(Pump::Done)
        } else {
            client.relay_from(&mut self.down, upstream, budget)
        };
        let (moved_up, moved_down) = (self.up.moved - before_up, self.down.moved - before_down);
        ctx.stats.slot.bytes_received.fetch_add(moved_up, Relaxed);
        ctx.stats.slot.bytes_sent.fetch_add(moved_down, Relaxed);
        if let Some(st) = ends.at.stats(ctx) {
            st.bytes_spliced.fetch_add(moved_up + moved_down, Relaxed);
        }
        let (up, down) = match (up, down) {
            (Ok(u), Ok(d)) => (u, d),
            (Err(e), _) => return TunnelStep::Close(relay_failure(e, Side::ClientIsSource)),
            (_, Err(e)) => return TunnelStep::Close(relay_failure(e, Side::ClientIsDest)),
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
        if moved_up + moved_down > 0 {
            client.arm(ctx, ends.idle);
        }
        TunnelStep::Pause(if up == Pump::Budget || down == Pump::Budget {
            Outcome::Yield
        } else {
            Outcome::Wait
        })
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
