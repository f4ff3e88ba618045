//! The client's side of a connection: its transport, its input and output
//! buffers, its deadline and what the access log needs of the response in
//! flight. The connection's own phases and an exchange on it both reach the
//! client through this.

use crate::access::PendingEntry;
use crate::buffer_pool::ReadBuf;
use crate::context::Ctx;
use crate::timer_wheel::Deadline;
use crate::token::ConnId;
use crate::transport::Client;
use std::net::SocketAddr;
use std::time::Duration;

pub struct ClientIo {
    pub(super) id: ConnId,
    /// The client's socket, behind the transport seam.
    pub(super) transport: Client,
    /// The client: the socket's peer, or the address a trusted load
    /// balancer's PROXY protocol header named.
    pub(super) peer: Option<SocketAddr>,
    /// Unread input; `None` while idle so an idle connection holds no buffer.
    pub(super) rbuf: Option<ReadBuf>,
    /// The response head (and small bodies) being written; empty while idle.
    pub(super) wbuf: Vec<u8>,
    pub(super) wpos: usize,
    /// Body bytes the response in flight sends in all.
    pub(super) body_len: u64,
    /// The access-log line of the response in flight, when logging.
    pub(super) access: Option<Box<PendingEntry>>,
    /// The connection stays open after the response in flight.
    pub(super) keep_alive: bool,
    /// Edge-triggered readiness not yet consumed by a read that hit EAGAIN.
    pub(super) readable: bool,
    /// The client shut down its side since this was last looked at.
    pub(super) client_fin: bool,
    /// When the current phase times out.
    pub(super) timer: Deadline,
}

impl ClientIo {
    pub(super) fn new(id: ConnId, transport: Client, peer: Option<SocketAddr>) -> Self {
        ClientIo {
            id,
            transport,
            peer,
            rbuf: None,
            wbuf: Vec::new(),
            wpos: 0,
            body_len: 0,
            access: None,
            keep_alive: true,
            readable: false,
            client_fin: false,
            timer: Deadline::default(),
        }
    }

    /// The connection's deadline is now `timeout` from this turn.
    pub(super) fn arm(&mut self, ctx: &mut Ctx, timeout: Duration) {
        let tick = ctx.timers.wheel.deadline(ctx.clock.now, timeout);
        ctx.timers.wheel.arm(&mut self.timer, self.id, tick);
    }
}
