//! What an HTTP/1.1 connection does around a reply of tine's own (a file, a
//! page, a redirect, the admin endpoint): whether the connection stays open
//! after it, and what of the request's body is read and thrown away first,
//! so that the next request on the connection can be read.

use crate::context::Ctx;
use crate::responses::{ReplyBody, ReplyTo, RouteReplies};
use tine_http::chunked::{ChunkedDecoder, Output};
use tine_http::request::{Body, Method, Request};

/// What a handler decided about a request (its head is in the head the
/// session lent it).
pub struct Started {
    pub body: ReplyBody,
    pub keep_alive: bool,
    pub discard: Discard,
}

/// The body of a request tine answers itself (a static file, an error, the
/// admin endpoint), read after the answer and thrown away, as nginx does, so
/// that the next request on the connection can be read.
#[derive(Debug)]
pub enum Discard {
    Nothing,
    /// This many bytes of a Content-Length body.
    Length(u64),
    /// A chunked body, checked as it goes; `budget` is how many more bytes
    /// of it (data and framing) may be read.
    Chunked {
        decoder: ChunkedDecoder,
        budget: u64,
    },
}

/// Why a body could not be thrown away: the connection closes after the answer.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    #[error("is larger than discard_body_bytes")]
    TooLarge,
    #[error("is not well framed ({0})")]
    Malformed(#[from] tine_http::chunked::ChunkedError),
}

impl Discard {
    pub fn pending(&self) -> bool {
        !matches!(self, Discard::Nothing)
    }

    /// How many bytes at the front of `input` belong to the body (and are
    /// dropped); becomes `Nothing` once the body has ended.
    pub fn consume(&mut self, input: &[u8]) -> Result<usize, DiscardError> {
        let n = match self {
            Discard::Nothing => 0,
            Discard::Length(left) => {
                let n = (*left).min(input.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Discard::Nothing;
                }
                n as usize
            }
            Discard::Chunked { decoder, budget } => {
                let n = decoder.decode(input, &mut Vec::new())?;
                *budget = budget.checked_sub(n as u64).ok_or(DiscardError::TooLarge)?;
                if decoder.is_done() {
                    *self = Discard::Nothing;
                }
                n
            }
        };
        Ok(n)
    }
}

/// How a request's body and connection are handled whatever answers it: a body
/// small enough is read and thrown away, anything else closes after the answer.
pub fn plan_framing(req: &Request<'_>, ctx: &Ctx) -> (bool, Discard) {
    let mut keep_alive = req.http1.keep_alive && !ctx.draining;
    let budget = ctx.http.discard_body_bytes;
    let discard = match req.body {
        Body::None | Body::Length(0) => Discard::Nothing,
        // The client waits for a 100 (Continue) that never comes, and may
        // then send its body or not: which it did cannot be told, so the
        // connection closes after the answer.
        _ if req.expect_continue => {
            keep_alive = false;
            Discard::Nothing
        }
        Body::Length(n) if n <= budget => Discard::Length(n),
        // A chunked body's size is known only at its end: it is read within
        // the same budget, and the connection closes if it runs over.
        Body::Chunked => Discard::Chunked { decoder: ChunkedDecoder::new(Output::Discard), budget },
        // Too large to throw away: answer, then close.
        Body::Length(_) => {
            keep_alive = false;
            Discard::Nothing
        }
    };
    (keep_alive, discard)
}

/// What the replies to `req` on `route` share.
pub fn reply_to<'a>(req: &Request<'_>, route: &'a RouteReplies) -> ReplyTo<'a> {
    ReplyTo { route, head_request: req.method == Method::Head }
}
