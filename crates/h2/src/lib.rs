//! The HTTP/2 engine wrapper: the `h2` crate's server connection (clients
//! to tine) and client connection (tine to upstreams), run inside tine's
//! synchronous event loop.
//!
//! `h2` is written for async runtimes, but it does no I/O of its own: it
//! reads and writes through `AsyncRead`/`AsyncWrite` and is otherwise a
//! state machine. Here its transport is a [`Wire`]: two byte queues that
//! the session moves between the client's socket and the engine (what the
//! client sent, fed with [`ServerConnection::receive`]; what the engine
//! wrote, taken with [`ServerConnection::take_output`]). A read with nothing
//! queued is "pending", and the engine is polled again, with a waker that
//! does nothing, each time the loop has moved bytes. No runtime, no thread,
//! no timer: the loop's readiness events are the only clock.
//!
//! What `h2` brings, and why it is wrapped rather than written again: a
//! maintained implementation of RFC 9113 and HPACK with the defences a
//! front end needs (resets of streams not yet accepted, the 2023 Rapid
//! Reset; locally refused streams; CONTINUATION floods and header lists
//! bounded by `max_header_list_size`; send buffers bounded per stream).

#![forbid(unsafe_code)]

mod client;
mod stream;
mod wire;

pub use client::{ClientConnection, ClientSettings, ClientStream, Head, OpenError, Readiness};
pub use h2::Reason;
pub use stream::{Accepted, BodyChunk, RequestBody, Responder, StreamGone};
pub use wire::Wire;

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use wire::WireIo;

/// What an HTTP/2 server connection advertises and holds its client to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Streams the client may have open at once.
    pub max_concurrent_streams: u32,
    /// Bytes of request body per stream the client may send before tine
    /// reads them (the stream's flow-control window).
    pub initial_window_size: u32,
    /// Decoded bytes of one request head (names, values and 32 per field).
    pub max_header_list_size: u32,
    /// Streams the client may reset before tine has accepted them; past it,
    /// the connection ends with ENHANCE_YOUR_CALM (Rapid Reset).
    pub max_pending_accept_reset_streams: usize,
    /// Streams tine may reset itself because the client broke the rules;
    /// past it, the connection ends.
    pub max_local_error_reset_streams: usize,
    /// Bytes of response body buffered per stream before its sender waits.
    pub max_send_buffer_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_concurrent_streams: 128,
            initial_window_size: 65_536,
            max_header_list_size: 32_768,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_send_buffer_size: 64 * 1024,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 connection: {0}")]
pub struct ConnectionError(#[from] h2::Error);

impl ConnectionError {
    /// The HTTP/2 error code the connection ended with, if it was one.
    pub fn reason(&self) -> Option<Reason> {
        self.0.reason()
    }

    /// The code of the GOAWAY the server sent to end the connection (the
    /// client broke the protocol, or abused it), as opposed to one the
    /// client sent or a broken transport.
    pub fn sent_goaway(&self) -> Option<Reason> {
        (self.0.is_go_away() && !self.0.is_remote()).then(|| self.0.reason()).flatten()
    }
}

/// Where a server connection stands.
enum State {
    /// The connection preface and the first SETTINGS are under way.
    Handshake(Pin<Box<h2::server::Handshake<WireIo, Bytes>>>),
    Open(Box<h2::server::Connection<WireIo, Bytes>>),
    Ended,
}

/// One client's HTTP/2 connection, driven by the session that owns it.
pub struct ServerConnection {
    state: State,
    wire: Wire,
}

/// What one poll of the connection came to.
pub enum Polled {
    /// A new request (boxed: a head is large beside the other outcomes).
    Request(Box<Accepted>),
    /// Nothing more until more bytes move.
    Idle,
    /// The connection has ended, cleanly (`Ok`) or not; its last frames
    /// (a GOAWAY) may still be in the output.
    Ended(Result<(), ConnectionError>),
}

impl ServerConnection {
    pub fn new(settings: &Settings) -> Self {
        let wire = Wire::default();
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(settings.max_concurrent_streams)
            .initial_window_size(settings.initial_window_size)
            .max_header_list_size(settings.max_header_list_size)
            .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(settings.max_local_error_reset_streams))
            .max_send_buffer_size(settings.max_send_buffer_size);
        let handshake = builder.handshake(wire.io());
        ServerConnection { state: State::Handshake(Box::pin(handshake)), wire }
    }

    /// Bytes the client sent.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.wire.push_inbound(bytes);
    }

    /// The client closed its side: no more bytes come.
    pub fn client_closed(&mut self) {
        self.wire.close_inbound();
    }

    /// Moves what the engine wrote for the client onto the end of `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        self.wire.take_outbound(out);
    }

    /// Runs the connection as far as the bytes received allow: the
    /// handshake, frames read and written, flow control. Returns a new
    /// request when there is one; call again until `Idle`.
    pub fn poll(&mut self) -> Polled {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match &mut self.state {
                State::Handshake(handshake) => match handshake.as_mut().poll(&mut cx) {
                    Poll::Pending => return Polled::Idle,
                    Poll::Ready(Ok(conn)) => self.state = State::Open(Box::new(conn)),
                    Poll::Ready(Err(e)) => return self.end(Err(e.into())),
                },
                State::Open(conn) => {
                    return match conn.poll_accept(&mut cx) {
                        Poll::Pending => Polled::Idle,
                        Poll::Ready(Some(Ok((request, respond)))) => {
                            Polled::Request(Box::new(Accepted::new(request, respond)))
                        }
                        Poll::Ready(Some(Err(e))) => self.end(Err(e.into())),
                        Poll::Ready(None) => self.end(Ok(())),
                    }
                }
                State::Ended => return Polled::Idle,
            }
        }
    }

    /// Bytes the client sent that the engine has not read yet: more are
    /// read from the socket only once these are.
    pub fn unread_input(&self) -> usize {
        self.wire.inbound_len()
    }

    /// Bytes the engine wrote that the session has not taken yet.
    pub fn has_output(&self) -> bool {
        self.wire.outbound_len() > 0
    }

    /// Gives back what the byte queues hold while empty (an idle
    /// connection).
    pub fn shrink(&mut self) {
        self.wire.shrink();
    }

    /// Ends the connection at once with GOAWAY(`reason`): the streams
    /// under way end with it.
    pub fn abrupt_shutdown(&mut self, reason: Reason) {
        if let State::Open(conn) = &mut self.state {
            conn.abrupt_shutdown(reason);
        }
    }

    /// Starts a graceful close: a GOAWAY now, the streams under way finish.
    pub fn graceful_shutdown(&mut self) {
        if let State::Open(conn) = &mut self.state {
            conn.graceful_shutdown();
        }
    }

    fn end(&mut self, result: Result<(), ConnectionError>) -> Polled {
        self.state = State::Ended;
        Polled::Ended(result)
    }
}

#[cfg(test)]
mod tests;
