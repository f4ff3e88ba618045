//! The exchange's view of its client: the narrow interface a protocol
//! session implements so that one copy of the proxy exchange serves it.
//! An HTTP/1.1 connection implements it with its own framing (`Connection`,
//! chunked bodies, a 100 Continue line); an HTTP/2 stream implements it
//! with frames. Nothing here names a connection's fields.

use crate::context::Ctx;
use crate::outcome::Outcome;
use crate::relay::{Pump, Relay, RelayError};
use crate::token::ExchangeId;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;
use tine_http::chunked::{ChunkedDecoder, ChunkedError, Output};
use tine_http::response::AddedHeaders;
use tine_http::response_head::UpstreamHead;

/// What an exchange does to its client.
pub trait Downstream {
    /// The exchange among its client connection's: what the events of the
    /// upstream connection it holds are for, and (by its connection) whom
    /// the pool gives the connections it used back to first.
    fn owner(&self) -> ExchangeId;

    /// The client's address and the local address it reached (for a PROXY
    /// protocol header sent upstream).
    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)>;

    /// The exchange's deadline is now `timeout` from this turn.
    fn arm(&mut self, ctx: &mut Ctx, timeout: Duration);

    /// Request bytes the client sent that nobody has taken yet.
    fn unread(&self) -> &[u8];

    /// The exchange took the first `n` bytes of [`Downstream::unread`].
    fn consume(&mut self, n: usize);

    /// Reads more of the client's input onto [`Downstream::unread`]; `Ok(0)`
    /// is the client's end of stream.
    fn read_more(&mut self, ctx: &mut Ctx) -> io::Result<usize>;

    /// An end of stream from the client came since this was last asked.
    fn take_end_of_stream(&mut self) -> bool;

    /// The client has closed its side and nothing of its input is left.
    fn has_left(&self) -> bool;

    /// Invites the request body (`100 Continue`).
    fn emit_continue(&mut self);

    /// The final response head, framed as the session frames it (`draining`:
    /// the server is stopping, so the client's connection ends after it);
    /// returns the form in which the session wants a chunked body's data.
    fn emit_head(&mut self, head: &UpstreamHead<'_, '_>, added: &AddedHeaders, draining: bool) -> Output;

    /// Response body bytes, as they are.
    fn emit_body(&mut self, bytes: &[u8]);

    /// Trailers after the response body (an HTTP/2 upstream's, gRPC's
    /// status); a session that cannot carry them leaves them out.
    fn emit_trailers(&mut self, trailers: &http::HeaderMap);

    /// Response body bytes of a chunked body, through `decoder`; returns how
    /// many input bytes belong to the body.
    fn emit_chunked(&mut self, decoder: &mut ChunkedDecoder, input: &[u8]) -> Result<usize, ChunkedError>;

    /// Response bodies may reach this client by splice (a socket of its
    /// own, written by nothing else meanwhile); else they are copied
    /// through [`Downstream::emit_body`].
    fn takes_splice(&self) -> bool;

    /// Moves response body bytes straight from the upstream socket to the
    /// client through `relay` (a failed source is the upstream, a failed
    /// destination the client).
    fn relay_body(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError>;

    /// Moves a tunnel's bytes from the upstream socket to the client.
    fn relay_from(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError>;

    /// Moves the client's bytes straight to the upstream socket (a tunnel).
    fn relay_to(
        &mut self,
        relay: &mut Relay,
        upstream: RawFd,
        budget: &mut usize,
    ) -> Result<Pump, RelayError>;

    /// Writes out what was emitted. `None` when all of it went; else Wait, or
    /// Close when the client's connection broke.
    fn flush(&mut self, ctx: &mut Ctx) -> Option<Outcome>;

    /// Something of a response was emitted and not yet written out.
    fn has_pending_output(&self) -> bool;

    /// No more bytes go to the client (a tunnel's upstream half-closed).
    fn shutdown_write(&mut self);

    /// The response's status, for the access log.
    fn log_status(&mut self, code: u16);
}
