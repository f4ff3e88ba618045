//! A minimal epoll wrapper: a token per registration, edge or level triggered.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What a registration waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest(u32);

impl Interest {
    /// Readable, writable and hang-up, edge triggered: what a connection needs.
    pub const CONNECTION: Interest =
        Interest((libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32);
    /// Readable, level triggered: listeners, whose backlog is drained in bounded
    /// batches, and signal descriptors.
    pub const READABLE: Interest = Interest(libc::EPOLLIN as u32);
}

/// One readiness report.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Event(libc::epoll_event);

impl Event {
    pub fn token(&self) -> u64 {
        self.0.u64
    }
    pub fn readable(&self) -> bool {
        self.0.events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
    /// The peer shut down its side (or the connection broke).
    pub fn peer_closed(&self) -> bool {
        self.0.events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
    pub fn writable(&self) -> bool {
        self.0.events & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
    }
}

pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    /// Gives an existing registration a new token (and interest).
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, Interest(0))
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: interest.0, u64: token };
        // SAFETY: `ev` lives across the call; the kernel copies it.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1 forever) and fills `events`; EINTR counts as
    /// zero events so callers simply loop.
    pub fn wait(&self, events: &mut Vec<Event>, timeout_ms: i32) -> io::Result<usize> {
        events.clear();
        if events.capacity() == 0 {
            // The kernel writes into the spare capacity: there must be some.
            events.reserve(64);
        }
        let cap = events.capacity().min(i32::MAX as usize);
        // SAFETY: Event is repr(transparent) over epoll_event; the kernel writes at most `cap` entries into the spare capacity,
        // and set_len covers exactly the number it reports.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr() as *mut libc::epoll_event,
                cap as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
        }
        // SAFETY: see above; n <= cap.
        unsafe { events.set_len(n as usize) };
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_with_an_empty_buffer_gets_room_for_the_events() {
        let epoll = Epoll::new().unwrap();
        let (_read, write) = crate::sys::pipe().unwrap();
        // A pipe's write end is writable at once: one event is ready.
        epoll.add(write.as_raw_fd(), 42, Interest(libc::EPOLLOUT as u32)).unwrap();
        let mut events = Vec::new();
        assert_eq!(epoll.wait(&mut events, 1000).unwrap(), 1);
        assert_eq!(events[0].token(), 42);
        assert!(events[0].writable());
    }
}
