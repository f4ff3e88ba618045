//! The client side: one HTTP/2 connection to an upstream server, run the
//! same way as the server side (over a [`Wire`], polled with a waker that
//! does nothing), and the streams the proxy opens on it. Every call returns
//! at once; what would wait in an async program is `Pending` here, and the
//! caller asks again once bytes have moved.

use crate::stream::{cx, BodyChunk, StreamGone};
use crate::wire::{Wire, WireIo};
use crate::ConnectionError;
use bytes::Bytes;
use h2::client::{Connection, ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// What tine asks of an upstream server's HTTP/2 connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// Bytes of response body per stream the server may send before tine
    /// has passed them on (the stream's window): the back-pressure from a
    /// slow client reaches the server through it.
    pub initial_window_size: u32,
    /// The same for all the connection's streams together.
    pub connection_window_size: u32,
    /// Decoded bytes of one response head or trailer block.
    pub max_header_list_size: u32,
    /// Bytes of request body buffered per stream before its sender waits.
    pub max_send_buffer_size: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            initial_window_size: 65_535,
            connection_window_size: 4 * 1024 * 1024,
            max_header_list_size: 65_536,
            max_send_buffer_size: 64 * 1024,
        }
    }
}

type Handshake =
    Pin<Box<dyn Future<Output = Result<(SendRequest<Bytes>, Connection<WireIo, Bytes>), h2::Error>>>>;

enum State {
    Handshake(Handshake),
    Open { send: SendRequest<Bytes>, conn: Box<Connection<WireIo, Bytes>> },
    Ended,
}

/// One HTTP/2 connection to an upstream server.
pub struct ClientConnection {
    state: State,
    wire: Wire,
    /// The server sent GOAWAY, or the connection failed: no new stream.
    closing: bool,
    /// The server sent GOAWAY.
    goaway: bool,
}

/// Whether a new stream may be opened now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The handshake is under way, or the connection is at its limit.
    NotYet,
    /// The server sent GOAWAY, or the connection ended: never again.
    Closed,
}

/// Why opening a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the connection takes no new stream")]
    Closed,
    #[error("HTTP/2 stream: {0}")]
    Refused(#[from] h2::Error),
}

impl ClientConnection {
    pub fn new(settings: &ClientSettings) -> Self {
        let wire = Wire::default();
        let mut builder = h2::client::Builder::new();
        builder
            .enable_push(false)
            .initial_window_size(settings.initial_window_size)
            .initial_connection_window_size(settings.connection_window_size)
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buffer_size(settings.max_send_buffer_size);
        let io = wire.io();
        let handshake: Handshake = Box::pin(async move { builder.handshake::<_, Bytes>(io).await });
        ClientConnection { state: State::Handshake(handshake), wire, closing: false, goaway: false }
    }

    /// Bytes the server sent.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.wire.push_inbound(bytes);
    }

    /// The server closed its side: no more bytes come.
    pub fn server_closed(&mut self) {
        self.wire.close_inbound();
    }

    /// Moves what the engine wrote for the server onto the end of `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        self.wire.take_outbound(out);
    }

    /// Bytes the engine wrote that were not taken yet.
    pub fn has_output(&self) -> bool {
        self.wire.outbound_len() > 0
    }

    /// Runs the connection as far as the bytes received allow: the
    /// preface, frames read and written, flow control. `Some` once it has
    /// ended (cleanly, or not).
    pub fn poll(&mut self) -> Option<Result<(), ConnectionError>> {
        loop {
            match &mut self.state {
                State::Handshake(handshake) => match handshake.as_mut().poll(&mut cx()) {
                    Poll::Pending => return None,
                    Poll::Ready(Ok((send, conn))) => {
                        self.state = State::Open { send, conn: Box::new(conn) };
                    }
                    Poll::Ready(Err(e)) => return Some(self.end(Err(e.into()))),
                },
                State::Open { conn, .. } => {
                    return match Pin::new(conn.as_mut()).poll(&mut cx()) {
                        Poll::Pending => None,
                        Poll::Ready(result) => Some(self.end(result.map_err(Into::into))),
                    }
                }
                State::Ended => return Some(Ok(())),
            }
        }
    }

    fn end(&mut self, result: Result<(), ConnectionError>) -> Result<(), ConnectionError> {
        self.state = State::Ended;
        self.closing = true;
        // tine never ends an upstream connection by GOAWAY itself: a clean
        // end is the server's GOAWAY and close.
        self.goaway |= match &result {
            Ok(()) => true,
            Err(e) => e.0.is_go_away() && e.0.is_remote(),
        };
        result
    }

    /// The server said GOAWAY.
    pub fn goaway_received(&self) -> bool {
        self.goaway
    }

    /// Whether a stream may be opened now.
    pub fn readiness(&mut self) -> Readiness {
        if self.closing {
            return Readiness::Closed;
        }
        let State::Open { send, .. } = &mut self.state else {
            return if matches!(self.state, State::Ended) { Readiness::Closed } else { Readiness::NotYet };
        };
        match send.poll_ready(&mut cx()) {
            Poll::Ready(Ok(())) => Readiness::Ready,
            Poll::Pending => Readiness::NotYet,
            Poll::Ready(Err(e)) => {
                self.closing = true;
                self.goaway |= e.is_go_away() && e.is_remote();
                Readiness::Closed
            }
        }
    }

    /// Streams the server lets this connection have open at once.
    pub fn max_streams(&self) -> usize {
        match &self.state {
            State::Open { send, .. } => send.current_max_send_streams(),
            _ => 1,
        }
    }

    /// The server said GOAWAY (or the connection ended): it takes no new
    /// stream; those under way finish.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Opens a stream with the request head `head`; `end`: no body follows.
    /// Call only when [`ClientConnection::readiness`] said `Ready`. The
    /// engine wakes `waker` when something happens to the stream (a frame
    /// for it, window for its body, a reset, the connection's end), so its
    /// owner is driven for its own stream's events only.
    pub fn open_stream(
        &mut self,
        head: http::Request<()>,
        end: bool,
        waker: Waker,
    ) -> Result<ClientStream, OpenError> {
        let State::Open { send, .. } = &mut self.state else { return Err(OpenError::Closed) };
        match send.send_request(head, end) {
            Ok((response, body)) => Ok(ClientStream { response: Response::Head(response), body, waker }),
            Err(e) => {
                if e.is_go_away() || e.is_io() {
                    self.closing = true;
                }
                Err(OpenError::Refused(e))
            }
        }
    }

    /// Gives back what the byte queues hold while empty.
    pub fn shrink(&mut self) {
        self.wire.shrink();
    }
}

/// Where a stream's response stands.
enum Response {
    Head(ResponseFuture),
    Body(RecvStream),
    /// The body ended; its trailers, if any, were taken.
    Done,
}

/// What the response head came to.
pub enum Head {
    Pending,
    Ready(Box<http::response::Parts>),
    /// The stream was reset or the connection failed before a head.
    Failed(h2::Error),
}

/// A stream tine opened on an upstream connection: its request body going
/// out within the server's windows, its response coming in within tine's.
pub struct ClientStream {
    response: Response,
    body: SendStream<Bytes>,
    waker: Waker,
}

impl ClientStream {
    /// The response head, once it is there (interim responses are skipped
    /// by the engine).
    pub fn poll_head(&mut self) -> Head {
        let Response::Head(future) = &mut self.response else { return Head::Pending };
        match Pin::new(future).poll(&mut Context::from_waker(&self.waker)) {
            Poll::Pending => Head::Pending,
            Poll::Ready(Ok(response)) => {
                let (parts, body) = response.into_parts();
                self.response = Response::Body(body);
                Head::Ready(Box::new(parts))
            }
            Poll::Ready(Err(e)) => {
                self.response = Response::Done;
                Head::Failed(e)
            }
        }
    }

    /// The response ended with its head (no body, no trailers: a gRPC
    /// trailers-only response).
    pub fn response_ended(&self) -> bool {
        match &self.response {
            Response::Body(body) => body.is_end_stream(),
            Response::Head(_) => false,
            Response::Done => true,
        }
    }

    /// The next piece of the response body. Its bytes keep the server's
    /// window shut until they are [`ClientStream::release`]d.
    pub fn next_chunk(&mut self) -> BodyChunk {
        let Response::Body(body) = &mut self.response else { return BodyChunk::End };
        match body.poll_data(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(Some(Ok(data))) => BodyChunk::Data(data),
            Poll::Ready(None) => BodyChunk::End,
            Poll::Pending => BodyChunk::Pending,
            Poll::Ready(Some(Err(_))) => BodyChunk::Broken,
        }
    }

    /// `n` bytes of the response body were passed on: the server may send
    /// as many more.
    pub fn release(&mut self, n: usize) {
        if let Response::Body(body) = &mut self.response {
            let _ = body.flow_control().release_capacity(n);
        }
    }

    /// The trailers after the body ([`BodyChunk::End`] came first):
    /// `Ok(None)` for none, `Err` for a stream that broke.
    pub fn trailers(&mut self) -> Poll<Result<Option<http::HeaderMap>, StreamGone>> {
        let Response::Body(body) = &mut self.response else { return Poll::Ready(Ok(None)) };
        match body.poll_trailers(&mut Context::from_waker(&self.waker)) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.response = Response::Done;
                Poll::Ready(result.map_err(StreamGone::from))
            }
        }
    }

    /// How many request body bytes the server's windows take now (asks for
    /// `want`; 0: wait for a WINDOW_UPDATE).
    pub fn writable(&mut self, want: usize) -> usize {
        self.body.reserve_capacity(want);
        let _ = self.body.poll_capacity(&mut Context::from_waker(&self.waker));
        self.body.capacity()
    }

    /// Sends request body bytes (within [`ClientStream::writable`]); `end`
    /// ends the request with them.
    pub fn send_data(&mut self, data: Bytes, end: bool) -> Result<(), StreamGone> {
        Ok(self.body.send_data(data, end)?)
    }

    /// Ends the request with trailers.
    pub fn send_trailers(&mut self, trailers: http::HeaderMap) -> Result<(), StreamGone> {
        Ok(self.body.send_trailers(trailers)?)
    }

    /// Ends the stream with RST_STREAM(`reason`): the client went away, or
    /// its deadline passed.
    pub fn reset(&mut self, reason: Reason) {
        self.body.send_reset(reason);
        self.response = Response::Done;
    }

    /// The server reset the stream (with the code it gave).
    pub fn reset_by_server(&mut self) -> Option<Reason> {
        match self.body.poll_reset(&mut Context::from_waker(&self.waker)) {
            Poll::Ready(Ok(reason)) => Some(reason),
            _ => None,
        }
    }
}
