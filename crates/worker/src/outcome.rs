//! What driving a connection (or an exchange on it) came to, and what an
//! error on the client's socket means: shared by every session and the
//! request core, so that none of them depends on another for it.

use std::io;

/// What the event loop must do with the connection after driving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Blocked on the socket; the next epoll event resumes it.
    Wait,
    /// Used its turn's send budget while still writable; drive it again soon.
    Yield,
    Close(CloseReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Done,
    PeerClosed,
    Reset,
    Timeout,
    Drained,
    /// An idle keep-alive connection closed to admit a new client at the
    /// connection limit.
    Reclaimed,
    Error,
}

/// What an error on the client's socket means, on every path (static files,
/// the proxy, tunnels and streams alike): EAGAIN waits for the next event
/// (`Some(Wait)`), EINTR retries (`None`), a reset, broken pipe or abort by
/// the client closes as a reset (counted in `closed_by_reset`), the kernel
/// giving up on the client (ETIMEDOUT: TCP_USER_TIMEOUT, keepalive) closes
/// as a timeout (counted in `timeouts`), anything else closes as an error. docs/stats-abi.md states these counting rules.
pub(crate) fn client_io(e: io::Error) -> Option<Outcome> {
    match e.kind() {
        io::ErrorKind::WouldBlock => Some(Outcome::Wait),
        io::ErrorKind::Interrupted => None,
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            Some(Outcome::Close(CloseReason::Reset))
        }
        // The kernel gave up on the peer: TCP_USER_TIMEOUT with data
        // unacknowledged, or keepalive probes unanswered.
        io::ErrorKind::TimedOut => Some(Outcome::Close(CloseReason::Timeout)),
        _ => Some(Outcome::Close(CloseReason::Error)),
    }
}
