//! One accepted stream, as the session drives it: its request body read
//! a frame at a time, and its response sent within the flow-control window.
//! Every call returns at once; what would wait in an async program is
//! `Pending` here, and the session asks again when bytes have moved.

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use std::task::{Context, Poll, Waker};

pub(crate) fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// What the request body has next.
#[derive(Debug)]
pub enum BodyChunk {
    Data(Bytes),
    /// The client ended the stream: the body is complete.
    End,
    /// Nothing until the client sends more.
    Pending,
    /// The stream was reset or the connection broke.
    Broken,
}

/// A stream's request body.
pub struct RequestBody(RecvStream);

impl RequestBody {
    /// The next piece of the body. Its bytes keep the client's window shut
    /// until they are [`RequestBody::release`]d.
    pub fn next_chunk(&mut self) -> BodyChunk {
        match self.0.poll_data(&mut cx()) {
            Poll::Ready(Some(Ok(data))) => BodyChunk::Data(data),
            Poll::Ready(None) => BodyChunk::End,
            Poll::Pending => BodyChunk::Pending,
            Poll::Ready(Some(Err(_))) => BodyChunk::Broken,
        }
    }

    /// `n` bytes were passed on: the client may send as many more.
    pub fn release(&mut self, n: usize) {
        // An error here means the stream is gone, which the next read says.
        let _ = self.0.flow_control().release_capacity(n);
    }

    /// The client has ended the stream (nothing more will come).
    pub fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// Why a response could not be sent: the stream is gone (reset by the
/// client, or the connection ended).
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 stream: {0}")]
pub struct StreamGone(#[from] h2::Error);

/// Where a stream's response stands.
enum Sending {
    Head(SendResponse<Bytes>),
    Body(SendStream<Bytes>),
    /// The end of the stream was sent, or the stream was reset.
    Done,
}

/// A stream's response side.
pub struct Responder {
    sending: Sending,
}

impl Responder {
    pub(crate) fn new(respond: SendResponse<Bytes>) -> Self {
        Responder { sending: Sending::Head(respond) }
    }

    /// Sends an interim response (100 Continue) before the final head.
    pub fn send_interim(&mut self, head: http::Response<()>) -> Result<(), StreamGone> {
        match &mut self.sending {
            Sending::Head(respond) => Ok(respond.send_informational(head)?),
            _ => Ok(()),
        }
    }

    /// Sends the final response head; `end`: no body follows.
    pub fn send_head(&mut self, head: http::Response<()>, end: bool) -> Result<(), StreamGone> {
        let Sending::Head(respond) = &mut self.sending else { return Ok(()) };
        let body = respond.send_response(head, end)?;
        self.sending = if end { Sending::Done } else { Sending::Body(body) };
        Ok(())
    }

    /// Nothing of the final response was sent yet.
    pub fn at_head(&self) -> bool {
        matches!(self.sending, Sending::Head(_))
    }

    /// The head is sent and the body not yet ended.
    pub fn in_body(&self) -> bool {
        matches!(self.sending, Sending::Body(_))
    }

    /// How many body bytes may be sent now without being buffered beyond
    /// the windows: asks for `want`, and returns what the stream and the
    /// connection windows grant so far (0: wait for a WINDOW_UPDATE).
    pub fn writable(&mut self, want: usize) -> usize {
        let Sending::Body(body) = &mut self.sending else { return 0 };
        body.reserve_capacity(want);
        // Capacity granted since the last ask shows here (the poll only
        // moves it from the connection's pool to this stream).
        let _ = body.poll_capacity(&mut cx());
        body.capacity()
    }

    /// Sends body bytes (within [`Responder::writable`]); `end` ends the
    /// stream with them.
    pub fn send_data(&mut self, data: Bytes, end: bool) -> Result<(), StreamGone> {
        let Sending::Body(body) = &mut self.sending else { return Ok(()) };
        body.send_data(data, end)?;
        if end {
            self.sending = Sending::Done;
        }
        Ok(())
    }

    /// Ends the stream with trailers after the body (gRPC's status).
    pub fn send_trailers(&mut self, trailers: http::HeaderMap) -> Result<(), StreamGone> {
        let Sending::Body(body) = &mut self.sending else { return Ok(()) };
        body.send_trailers(trailers)?;
        self.sending = Sending::Done;
        Ok(())
    }

    /// Ends the stream with RST_STREAM(`reason`).
    pub fn reset(&mut self, reason: Reason) {
        match &mut self.sending {
            Sending::Head(respond) => respond.send_reset(reason),
            Sending::Body(body) => body.send_reset(reason),
            Sending::Done => return,
        }
        self.sending = Sending::Done;
    }

    /// The client reset the stream (RST_STREAM), or the connection broke.
    pub fn was_reset(&mut self) -> bool {
        let polled = match &mut self.sending {
            Sending::Head(respond) => respond.poll_reset(&mut cx()),
            Sending::Body(body) => body.poll_reset(&mut cx()),
            Sending::Done => return false,
        };
        polled.is_ready()
    }

    /// The stream's end was sent (or it was reset).
    pub fn is_done(&self) -> bool {
        matches!(self.sending, Sending::Done)
    }
}

/// A request the engine has accepted: its head, its body, and where its
/// response goes.
pub struct Accepted {
    pub head: http::request::Parts,
    pub body: RequestBody,
    pub responder: Responder,
}

impl Accepted {
    pub(crate) fn new(request: http::Request<RecvStream>, respond: SendResponse<Bytes>) -> Self {
        let (head, body) = request.into_parts();
        Accepted { head, body: RequestBody(body), responder: Responder::new(respond) }
    }
}
