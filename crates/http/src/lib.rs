//! HTTP/1.1 as tine speaks it: request heads parsed strictly (anything ambiguous is
//! an error, never a guess), request targets turned into safe relative paths,
//! version-neutral response heads and their HTTP/1.1 framing, upstream response heads parsed, the cached Date header, byte ranges and validators, content
//! negotiation, and
//! heads rewritten for a reverse proxy.
//!
//! Nothing here does I/O; the worker feeds bytes in and writes bytes out.

#![forbid(unsafe_code)]

pub mod chunked;
pub mod content_coding;
pub mod date;
pub mod forward;
pub mod location;
pub mod message;
pub mod proxy_protocol;
pub mod request;
pub mod response;
pub mod response_head;
pub mod target;
pub mod validators;

pub use message::{Fields, ResponseHead};
pub use request::{parse_request, Limits, Method, Request};
pub use response::Status;

/// Why a request is refused before any handler sees it. Every variant maps to one
/// status code, and all of them close the connection after the response, because
/// after a malformed head tine cannot know where the next request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("request target longer than the limit")]
    UriTooLong,
    #[error("request head larger than the limit")]
    HeadTooLarge,
    #[error("HTTP version not supported")]
    VersionNotSupported,
    /// A well-formed request tine will not handle, such as a transfer coding
    /// other than chunked (nginx answers these with 501 too).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
}

impl HttpError {
    pub fn status(self) -> Status {
        match self {
            HttpError::BadRequest(_) => Status::BAD_REQUEST,
            HttpError::UriTooLong => Status::URI_TOO_LONG,
            HttpError::HeadTooLarge => Status::HEADER_FIELDS_TOO_LARGE,
            HttpError::VersionNotSupported => Status::VERSION_NOT_SUPPORTED,
            HttpError::NotImplemented(_) => Status::NOT_IMPLEMENTED,
        }
    }
}
