//! A `[[stream]]` connection: relayed raw to a server of its upstream
//! group. It is a kind of its own beside the HTTP exchange, and shares with
//! it what both do: picking and connecting to a server (the next one when a
//! connect fails or times out, a PROXY protocol header first where the group
//! asks), and the tunnel that relays a WebSocket after a 101.
//!
//! ```text
//!  Pick -> Connecting -> Relay (splice both ways, half-close) -> closed
//!   ^  refused or timed out: the next server; none left: closed
//! ```

use super::{CloseReason, Conn, Outcome, Phase};
use crate::context::Ctx;
use crate::exchange::{close_upstream, Attempt, Connected, Ready, Tunnel, TunnelEnds, TunnelStep};
use crate::upstream::UpConn;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A stream connection's relay to its upstream.
pub struct StreamRelay {
    stage: StreamStage,
    at: Attempt,
    /// The relay closes after this long without traffic either way.
    idle: Duration,
    /// Client bytes on their way upstream (read before the relay began).
    to_upstream: Vec<u8>,
}

/// Where a stream stands, with what that stage needs.
enum StreamStage {
    Pick,
    Connecting(UpConn),
    Relay(UpConn, Tunnel),
}

impl Conn {
    /// A connection accepted on a `[[stream]]` listener (after its TLS
    /// handshake, for one that terminates TLS): relay it raw.
    pub(super) fn start_stream(&mut self, stream: usize, ctx: &mut Ctx) {
        let s = &ctx.proxy.streams[stream];
        let mut at = Attempt::new(s.upstream);
        // A stream's raw bytes start on a connection of their own.
        at.pooled = false;
        at.fresh_retry_done = true;
        let relay =
            StreamRelay { stage: StreamStage::Pick, at, idle: s.idle_timeout, to_upstream: Vec::new() };
        self.phase = Phase::Stream(Box::new(relay));
    }

    /// Runs the stream until it blocks or ends.
    pub(super) fn drive_stream(
        &mut self,
        mut relay: Box<StreamRelay>,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Option<Outcome> {
        loop {
            relay.stage = match std::mem::replace(&mut relay.stage, StreamStage::Pick) {
                StreamStage::Pick => match relay.at.connect_next(&mut self.io, ctx) {
                    Connected::To(conn) => StreamStage::Connecting(conn),
                    Connected::Failed => StreamStage::Pick,
                    Connected::NoServer => return self.end_stream(relay, None, CloseReason::Error, ctx),
                },
                StreamStage::Connecting(mut conn) => {
                    match relay.at.connection_ready(&self.io, &mut conn, ctx) {
                        Ready::Yes => match Tunnel::open(&mut self.io, &conn, &mut relay.to_upstream, ctx) {
                            Some(tunnel) => {
                                relay.at.report(ctx, true);
                                self.io.arm(ctx, relay.idle);
                                StreamStage::Relay(conn, tunnel)
                            }
                            None => return self.end_stream(relay, Some(conn), CloseReason::Error, ctx),
                        },
                        Ready::NotYet => {
                            return self.pause_stream(relay, StreamStage::Connecting(conn), Outcome::Wait)
                        }
                        Ready::Failed => {
                            stream_server_failed(&relay.at, conn, ctx);
                            StreamStage::Pick
                        }
                    }
                }
                StreamStage::Relay(mut conn, mut tunnel) => {
                    let r = &mut *relay;
                    let ends = TunnelEnds { upstream: &mut conn, at: &r.at, idle: r.idle };
                    match tunnel.pump(&mut self.io, ends, &mut r.to_upstream, ctx, budget) {
                        TunnelStep::Pause(outcome) => {
                            return self.pause_stream(relay, StreamStage::Relay(conn, tunnel), outcome)
                        }
                        TunnelStep::Close(reason) => {
                            tunnel.recycle(&mut ctx.proxy.pipes);
                            return self.end_stream(relay, Some(conn), reason, ctx);
                        }
                    }
                }
            };
        }
    }

    fn pause_stream(
        &mut self,
        mut relay: Box<StreamRelay>,
        stage: StreamStage,
        outcome: Outcome,
    ) -> Option<Outcome> {
        relay.stage = stage;
        self.phase = Phase::Stream(relay);
        Some(outcome)
    }

    fn end_stream(
        &mut self,
        mut relay: Box<StreamRelay>,
        conn: Option<UpConn>,
        reason: CloseReason,
        ctx: &mut Ctx,
    ) -> Option<Outcome> {
        if let Some(conn) = conn {
            close_upstream(ctx, conn);
        }
        relay.at.end_active(ctx);
        Some(Outcome::Close(reason))
    }

    /// A stream's deadline passed: a connect that took too long moves on to
    /// the next server; a relay silent for its idle timeout closes.
    pub(super) fn stream_deadline(&mut self, mut relay: Box<StreamRelay>, ctx: &mut Ctx) -> Outcome {
        match std::mem::replace(&mut relay.stage, StreamStage::Pick) {
            StreamStage::Relay(conn, tunnel) => {
                tunnel.recycle(&mut ctx.proxy.pipes);
                let _ = self.end_stream(relay, Some(conn), CloseReason::Done, ctx);
                Outcome::Close(CloseReason::Done)
            }
            stage => {
                if let Some(st) = relay.at.stats(ctx) {
                    st.timeouts.fetch_add(1, Relaxed);
                }
                log::warn!("upstream {}: connect timed out", relay.at.server_name(ctx));
                if let StreamStage::Connecting(conn) = stage {
                    stream_server_failed(&relay.at, conn, ctx);
                }
                self.phase = Phase::Stream(relay);
                self.drive(ctx)
            }
        }
    }

    /// The connection closes with its stream under way.
    pub(super) fn release_stream(&mut self, mut relay: Box<StreamRelay>, ctx: &mut Ctx) {
        match std::mem::replace(&mut relay.stage, StreamStage::Pick) {
            StreamStage::Pick => {}
            StreamStage::Connecting(conn) => close_upstream(ctx, conn),
            StreamStage::Relay(conn, tunnel) => {
                tunnel.recycle(&mut ctx.proxy.pipes);
                close_upstream(ctx, conn);
            }
        }
        relay.at.end_active(ctx);
    }
}

/// The server failed a stream's connect: counted against it, and its
/// connection closed.
fn stream_server_failed(at: &Attempt, conn: UpConn, ctx: &mut Ctx) {
    close_upstream(ctx, conn);
    at.count_failure(ctx);
}
