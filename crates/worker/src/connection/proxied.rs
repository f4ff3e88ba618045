//! An HTTP/1.1 connection's side of a proxied request: it drives the
//! exchange (exchange.rs) with its client side, and carries on when the
//! exchange ends: the next request after a complete response, its own
//! error page for an exchange that failed before any response, or the close.

use super::{CloseReason, Conn, Discard, Outcome, Phase, Sending, Started};
use crate::context::Ctx;
use crate::exchange::{Downstream, Driven, Ended, Exchange, Failure};
use crate::responses::{error_page, ReplyTo};

impl Conn {
    /// Runs the exchange until it blocks or ends. While it runs the
    /// connection's phase is not `Proxy`; it is put back when the exchange
    /// pauses, and set to what follows when it ends.
    pub(super) fn drive_proxy(
        &mut self,
        ex: Box<Exchange>,
        ctx: &mut Ctx,
        budget: &mut usize,
    ) -> Option<Outcome> {
        let driven = ex.drive(&mut self.io, ctx, budget);
        self.after_exchange(driven, ctx)
    }

    /// The connection's deadline passed mid-exchange: the exchange decides
    /// what that means (the next server, a 504, the close).
    pub(super) fn proxy_deadline(&mut self, ex: Box<Exchange>, ctx: &mut Ctx) -> Outcome {
        let driven = ex.on_deadline(&mut self.io, ctx);
        match self.after_exchange(driven, ctx) {
            Some(outcome) => outcome,
            None => self.drive(ctx),
        }
    }

    /// Where the connection stands after its exchange ran: `None` to go on
    /// with the phase now set.
    fn after_exchange(&mut self, driven: Driven, ctx: &mut Ctx) -> Option<Outcome> {
        match driven {
            Driven::Paused(ex, outcome) => {
                self.phase = Phase::Proxy(ex);
                Some(outcome)
            }
            Driven::Ready(ex) => {
                self.phase = Phase::Proxy(ex);
                None
            }
            Driven::Ended(Ended::Complete) => self.finish_response(ctx, Sending::buffered(ctx.clock.now)),
            Driven::Ended(Ended::Failed(failure)) => self.answer_failure(failure, ctx),
            Driven::Ended(Ended::Close(reason)) => Some(Outcome::Close(reason)),
        }
    }

    /// The exchange failed before its response began: the client gets the
    /// route's error page (400, 502, 504), unless something of a response
    /// is already on its way, when the connection closes instead.
    fn answer_failure(&mut self, failure: Failure, ctx: &mut Ctx) -> Option<Outcome> {
        if self.io.has_pending_output() {
            return Some(Outcome::Close(CloseReason::Error));
        }
        if self.io.wbuf.capacity() == 0 {
            self.io.wbuf = ctx.pool.write_buf();
        }
        if failure.close {
            self.io.keep_alive = false;
        }
        let route = failure.route.map_or(&crate::responses::NO_ROUTE, |r| &ctx.http.route_replies[r]);
        let to = ReplyTo { head_request: failure.head_request, route };
        let body = error_page(failure.status, &to, None, &mut self.io.head);
        let keep_alive = self.io.keep_alive && !ctx.draining;
        self.begin_send(ctx, Started { body, keep_alive, discard: Discard::Nothing });
        None
    }
}
