//! The engine's transport: two byte queues in memory. The session feeds
//! the inbound one from the client's socket and drains the outbound one to
//! it; the engine reads and writes them through tokio's I/O traits, and a
//! read with nothing queued is pending until the session feeds more.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes the engine may have written and the session not yet taken before
/// its writes wait: what a client that reads slowly can make a connection
/// hold beyond the streams' own buffers.
const OUTBOUND_LIMIT: usize = 64 * 1024;

#[derive(Default)]
struct Queues {
    inbound: VecDeque<u8>,
    /// The client closed its side: once `inbound` is read, end of stream.
    inbound_closed: bool,
    outbound: Vec<u8>,
}

/// Both queues of one connection, shared by the session's handle and the
/// engine's transport (one thread: a worker is one).
#[derive(Clone, Default)]
pub struct Wire(Rc<RefCell<Queues>>);

impl Wire {
    pub(crate) fn io(&self) -> WireIo {
        WireIo(self.clone())
    }

    pub(crate) fn push_inbound(&self, bytes: &[u8]) {
        self.0.borrow_mut().inbound.extend(bytes);
    }

    pub(crate) fn close_inbound(&self) {
        self.0.borrow_mut().inbound_closed = true;
    }

    pub(crate) fn take_outbound(&self, out: &mut Vec<u8>) {
        let mut q = self.0.borrow_mut();
        if out.is_empty() && out.capacity() < q.outbound.capacity() {
            // Hand over the queue's buffer rather than copy it.
            std::mem::swap(out, &mut q.outbound);
        } else {
            out.append(&mut q.outbound);
        }
    }

    /// Gives back the memory of queues that are empty: an idle connection
    /// holds none.
    pub(crate) fn shrink(&self) {
        let mut q = self.0.borrow_mut();
        if q.inbound.is_empty() {
            q.inbound = VecDeque::new();
        }
        if q.outbound.is_empty() {
            q.outbound = Vec::new();
        }
    }

    pub(crate) fn inbound_len(&self) -> usize {
        self.0.borrow().inbound.len()
    }

    pub(crate) fn outbound_len(&self) -> usize {
        self.0.borrow().outbound.len()
    }
}

/// The engine's end of the wire.
pub(crate) struct WireIo(Wire);

impl AsyncRead for WireIo {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut q = self.0 .0.borrow_mut();
        if q.inbound.is_empty() {
            // Nothing read at all is the end of stream, once the client closed.
            return if q.inbound_closed { Poll::Ready(Ok(())) } else { Poll::Pending };
        }
        let n = buf.remaining().min(q.inbound.len());
        let (front, back) = q.inbound.as_slices();
        let from_front = n.min(front.len());
        buf.put_slice(&front[..from_front]);
        buf.put_slice(&back[..n - from_front]);
        q.inbound.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WireIo {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut q = self.0 .0.borrow_mut();
        let room = OUTBOUND_LIMIT.saturating_sub(q.outbound.len());
        if room == 0 {
            // The session polls again once it has written some out.
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        q.outbound.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
