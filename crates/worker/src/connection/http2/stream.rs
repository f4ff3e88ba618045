//! One HTTP/2 stream: the same request core as an HTTP/1.1 connection's
//! request (routing, tine's own replies, the proxy exchange), with frames
//! for framing. [`StreamIo`] is the stream's client side, what an exchange
//! reaches it by ([`Downstream`]); [`Work`] is what the stream is doing.
//!
//! Response bytes leave a stream only as fast as its flow-control window
//! and the connection's allow: a stream holds at most one upstream read
//! (16 KiB) or one file read beyond what the engine has taken, and an
//! exchange whose client window is shut stops reading its upstream, so the
//! back-pressure reaches the upstream connection rather than memory.

use crate::access::PendingEntry;
use crate::context::Ctx;
use crate::exchange::{Downstream, Exchange};
use crate::outcome::{CloseReason, Outcome};
use crate::relay::{Pump, Relay, RelayError};
use crate::responses::{FileBody, ReplyBody};
use crate::timer_wheel::Deadline;
use crate::token::ExchangeId;
use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tine_h2::{BodyChunk, Reason, RequestBody, Responder};
use tine_http::chunked::{ChunkedDecoder, ChunkedError, Output};
use tine_http::message::ResponseHead;
use tine_http::response::AddedHeaders;
use tine_http::response_head::{ResponseBody, UpstreamHead};

/// Most bytes of a file read for one DATA push.
const FILE_CHUNK: usize = 16 * 1024;

/// Fields that name a property of one HTTP/1.1 connection; an HTTP/2
/// response must not carry them (RFC 9113 section 8.2.2).
const CONNECTION_SPECIFIC: [&str; 6] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"];

/// A response head as HTTP/2 carries it: the status and the fields, less
/// any that are connection-specific or that HTTP/2 cannot carry; `date`
/// added when tine answers itself.
pub(super) fn http2_head(head: &ResponseHead, date: Option<&[u8]>) -> http::Response<()> {
    let mut response = http::Response::new(());
    *response.status_mut() =
        http::StatusCode::from_u16(head.status.0).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let fields = response.headers_mut();
    for (name, value) in head.fields.iter() {
        let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value))
        else {
            log::debug!("a response field HTTP/2 cannot carry was left out");
            continue;
        };
        if !CONNECTION_SPECIFIC.contains(&name.as_str()) {
            fields.append(name, value);
        }
    }
    if let Some(date) = date.and_then(|d| http::HeaderValue::from_bytes(d).ok()) {
        fields.insert(http::header::DATE, date);
    }
    response
}

/// What a stream is doing.
pub(super) enum Work {
    /// An exchange with an upstream, driven with the stream's [`StreamIo`].
    Proxy(Box<Exchange>),
    /// The rest of a response goes out: what `StreamIo::pending` holds,
    /// then `file` if any, then the end of the stream.
    Send { file: Option<FileBody> },
    /// The response is out and the request body still coming: it is read
    /// and dropped (`left` bytes more at most), so that the stream ends
    /// as the protocol says and its framing is still checked.
    Drain { left: u64 },
    /// Nothing more: the stream was reset.
    Done,
    /// Not answered yet: a client limit (`delay = true`) holds the request
    /// until the stream's deadline, when it is routed again.
    Waiting(Box<http::request::Parts>),
}

/// A stream's client side: its request body, its responder, the response
/// bytes not yet handed to the engine, its deadline and its log line.
pub(super) struct StreamIo {
    pub(super) owner: ExchangeId,
    pub(super) addresses: Option<(SocketAddr, SocketAddr)>,
    pub(super) body: RequestBody,
    /// The request body has no declared length: it reaches the exchange in
    /// chunked coding, which it decodes and chunks again for the upstream.
    pub(super) chunked_body: bool,
    pub(super) body_ended: bool,
    /// Request body bytes not yet taken by the exchange.
    pub(super) unread: Vec<u8>,
    pub(super) responder: Responder,
    /// Response body bytes not yet handed to the engine.
    pub(super) pending: Vec<u8>,
    /// Trailers to end the response with, once the body is out.
    pub(super) trailers: Option<http::HeaderMap>,
    /// The request is gRPC (`content-type: application/grpc...`): what tine
    /// answers itself is a gRPC status, not a page.
    pub(super) grpc: bool,
    /// Body bytes the response sends in all, for the access log.
    pub(super) body_len: u64,
    /// Body bytes handed to the engine so far.
    pub(super) sent: u64,
    /// The stream stopped for the client: a window to open, body bytes to
    /// come. Client input drives it again; nothing else would.
    pub(super) waits_on_client: bool,
    /// The client reset the stream (or the connection broke under it).
    pub(super) gone: bool,
    /// The client reset the stream with RST_STREAM.
    pub(super) client_reset: bool,
    /// tine reset the stream for a failure (not the NO_ERROR that tells a
    /// client to stop sending a body nobody reads).
    pub(super) tine_reset: bool,
    pub(super) access: Option<Box<PendingEntry>>,
    pub(super) timer: Deadline,
    /// The request was HEAD: tine's own replies send no body.
    pub(super) head_request: bool,
}

impl StreamIo {
    /// Hands the engine what the windows allow of the pending bytes; true
    /// when none are left. `last`: nothing follows them, so the frame that
    /// carries the last of them ends the stream.
    fn push_pending(&mut self, last: bool) -> bool {
        while !self.pending.is_empty() {
            let room = self.responder.writable(self.pending.len());
            if room == 0 {
                return false;
            }
            let n = room.min(self.pending.len());
            let data = Bytes::copy_from_slice(&self.pending[..n]);
            if self.responder.send_data(data, last && n == self.pending.len()).is_err() {
                self.gone = true;
                return false;
            }
            self.pending.drain(..n);
            self.sent += n as u64;
        }
        true
    }

    /// Sends what is left of a file range as the windows allow; true when
    /// all of it went.
    fn push_file(&mut self, file: &mut FileBody) -> io::Result<bool> {
        while file.offset < file.end {
            let left = (file.end - file.offset) as usize;
            let room = self.responder.writable(left.min(FILE_CHUNK * 4));
            if room == 0 {
                return Ok(false);
            }
            let mut chunk = vec![0u8; room.min(left).min(FILE_CHUNK)];
            let n = file.file.read_at(&mut chunk, file.offset)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was sent",
                ));
            }
            chunk.truncate(n);
            file.offset += n as u64;
            self.sent += n as u64;
            let end = file.offset == file.end;
            if self.responder.send_data(Bytes::from(chunk), end).is_err() {
                self.gone = true;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends the rest of the response: pending bytes, the file, then the
    /// end of the stream. `Ok(true)` when the stream is done.
    pub(super) fn send_rest(&mut self, file: &mut Option<FileBody>) -> io::Result<bool> {
        if !self.push_pending(file.is_none() && self.trailers.is_none()) {
            return Ok(false);
        }
        if let Some(f) = file.as_mut() {
            if !self.push_file(f)? {
                return Ok(false);
            }
        }
        *file = None;
        let ended = match self.trailers.take() {
            Some(trailers) if self.responder.in_body() => self.responder.send_trailers(trailers),
            _ if self.responder.in_body() => self.responder.send_data(Bytes::new(), true),
            _ => Ok(()),
        };
        if ended.is_err() {
            self.gone = true;
        }
        Ok(true)
    }

    /// Starts tine's own reply: its head, then its body as the windows
    /// open; returns what is left to send.
    pub(super) fn start_reply(&mut self, head: &ResponseHead, body: ReplyBody, date: &[u8]) -> Work {
        let body = if self.head_request { ReplyBody::Empty } else { body };
        self.body_len = body.byte_len();
        let end = self.body_len == 0;
        if self.responder.send_head(http2_head(head, Some(date)), end).is_err() {
            self.gone = true;
        }
        self.pending.extend_from_slice(body.bytes());
        let file = match body {
            ReplyBody::File(file) => Some(file),
            _ => None,
        };
        Work::Send { file }
    }

    /// Reads and drops what comes of the request body after the response.
    pub(super) fn drain(&mut self, left: &mut u64) -> Drained {
        loop {
            match self.body.next_chunk() {
                BodyChunk::Data(data) => {
                    self.body.release(data.len());
                    *left = left.saturating_sub(data.len() as u64);
                    if *left == 0 {
                        // Enough: the client is told to stop sending.
                        self.reset(Reason::NO_ERROR);
                        return Drained::Done;
                    }
                }
                BodyChunk::End | BodyChunk::Broken => return Drained::Done,
                BodyChunk::Pending => return Drained::More,
            }
        }
    }

    /// Ends the stream with a reset (an exchange that broke mid-response,
    /// a deadline), dropping what it held.
    pub(super) fn reset(&mut self, reason: Reason) {
        if !self.responder.is_done() && reason != Reason::NO_ERROR {
            self.tine_reset = true;
        }
        self.responder.reset(reason);
        self.pending = Vec::new();
        self.unread = Vec::new();
    }

    /// The response body bytes that went out, for the access log.
    pub(super) fn bytes_sent(&self) -> u64 {
        self.sent.min(self.body_len)
    }

    /// The client reset the stream (noted once, when first seen).
    pub(super) fn was_reset_by_client(&mut self) -> bool {
        if !self.gone && self.responder.was_reset() {
            self.gone = true;
            self.client_reset = true;
        }
        self.gone
    }

    /// Frames one DATA payload for the exchange: as it is when the body's
    /// length was declared, else as one chunk.
    fn take_data(&mut self, data: &[u8]) {
        if self.chunked_body {
            tine_http::chunked::push_chunk(&mut self.unread, data);
        } else {
            self.unread.extend_from_slice(data);
        }
    }
}

/// Where draining a request body stands.
pub(super) enum Drained {
    /// More may come.
    More,
    /// The body ended, broke, or was cut off.
    Done,
}

fn no_splice() -> RelayError {
    RelayError::Dest(io::Error::other("an HTTP/2 stream takes no splice"))
}

/// An HTTP/2 stream's client, as an exchange sees it: the response head
/// becomes a HEADERS frame, its body DATA frames within the windows, a
/// chunked body decoded (HTTP/2 frames it itself).
impl Downstream for StreamIo {
    fn owner(&self) -> ExchangeId {
        self.owner
    }

    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.addresses
    }

    fn arm(&mut self, ctx: &mut Ctx, timeout: Duration) {
        let tick = ctx.timers.wheel.deadline(ctx.clock.now, timeout);
        ctx.timers.wheel.arm(&mut self.timer, self.owner, tick);
    }

    fn unread(&self) -> &[u8] {
        &self.unread
    }

    fn consume(&mut self, n: usize) {
        self.unread.drain(..n.min(self.unread.len()));
    }

    fn read_more(&mut self, ctx: &mut Ctx) -> io::Result<usize> {
        loop {
            match self.body.next_chunk() {
                BodyChunk::Data(data) if data.is_empty() => {}
                BodyChunk::Data(data) => {
                    let before = self.unread.len();
                    self.take_data(&data);
                    // The window reopens by what was taken: one frame at a
                    // time waits here, and the exchange reads again only
                    // once the upstream took the last.
                    self.body.release(data.len());
                    ctx.stats.slot.bytes_received.fetch_add(data.len() as u64, Relaxed);
                    return Ok(self.unread.len() - before);
                }
                BodyChunk::End if self.chunked_body && !self.body_ended => {
                    self.body_ended = true;
                    self.unread.extend_from_slice(tine_http::chunked::LAST_CHUNK);
                    return Ok(tine_http::chunked::LAST_CHUNK.len());
                }
                BodyChunk::End => {
                    self.body_ended = true;
                    return Ok(0);
                }
                BodyChunk::Pending => {
                    self.waits_on_client = true;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                BodyChunk::Broken => {
                    self.gone = true;
                    return Err(io::ErrorKind::ConnectionReset.into());
                }
            }
        }
    }

    fn take_end_of_stream(&mut self) -> bool {
        self.was_reset_by_client()
    }

    fn has_left(&self) -> bool {
        self.gone
    }

    fn emit_continue(&mut self) {
        let interim = http::Response::builder().status(http::StatusCode::CONTINUE).body(());
        if let Ok(interim) = interim {
            if self.responder.send_interim(interim).is_err() {
                self.gone = true;
            }
        }
    }

    fn emit_head(&mut self, head: &UpstreamHead<'_, '_>, added: &AddedHeaders, _draining: bool) -> Output {
        let mut fields = ResponseHead::default();
        tine_http::forward::client_response_fields(&mut fields, head, added);
        let end = matches!(head.body, ResponseBody::None | ResponseBody::Length(0));
        if self.responder.send_head(http2_head(&fields, None), end).is_err() {
            self.gone = true;
        }
        self.body_len = 0;
        // HTTP/2 frames the body itself: a chunked one arrives decoded.
        Output::Raw
    }

    fn emit_body(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.body_len += bytes.len() as u64;
    }

    fn emit_trailers(&mut self, trailers: &http::HeaderMap) {
        self.trailers = Some(trailers.clone());
    }

    fn emit_chunked(&mut self, decoder: &mut ChunkedDecoder, input: &[u8]) -> Result<usize, ChunkedError> {
        let before = self.pending.len();
        let taken = decoder.decode(input, &mut self.pending)?;
        self.body_len += (self.pending.len() - before) as u64;
        Ok(taken)
    }

    fn takes_splice(&self) -> bool {
        false
    }

    fn relay_body(&mut self, _: &mut Relay, _: RawFd, _: &mut usize) -> Result<Pump, RelayError> {
        Err(no_splice())
    }

    fn relay_from(&mut self, _: &mut Relay, _: RawFd, _: &mut usize) -> Result<Pump, RelayError> {
        Err(no_splice())
    }

    fn relay_to(&mut self, _: &mut Relay, _: RawFd, _: &mut usize) -> Result<Pump, RelayError> {
        Err(no_splice())
    }

    fn flush(&mut self, _ctx: &mut Ctx) -> Option<Outcome> {
        if self.push_pending(false) {
            return None;
        }
        if self.gone {
            return Some(Outcome::Close(CloseReason::Reset));
        }
        self.waits_on_client = true;
        Some(Outcome::Wait)
    }

    fn has_pending_output(&self) -> bool {
        !self.pending.is_empty() || !self.responder.at_head()
    }

    fn shutdown_write(&mut self) {}

    fn log_status(&mut self, code: u16) {
        if let Some(entry) = self.access.as_mut() {
            entry.set_status(code);
        }
    }
}
