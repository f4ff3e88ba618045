//! One direction of a byte stream moved inside the kernel: source socket -> pipe
//! -> destination socket, with splice, never through user space. Bodies of known
//! length, bodies that run to the end of the stream, and both halves of a tunnel
//! are relays. Pipes come from a per-worker pool.

use crate::buffer_pool::FreeList;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use tine_net::sys;

/// Bytes moved per splice call at most (the default pipe size).
const CHUNK: usize = 64 * 1024;
/// Bytes a relay through user space holds at once.
const HELD_CHUNK: usize = 32 * 1024;

pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

/// Empty pipes kept for reuse.
pub struct PipePool {
    free: FreeList<Pipe>,
}

impl Default for PipePool {
    fn default() -> Self {
        PipePool { free: FreeList::new(256) }
    }
}

impl PipePool {
    pub fn take(&mut self) -> io::Result<Pipe> {
        match self.free.take() {
            Some(p) => Ok(p),
            None => sys::pipe().map(|(read, write)| Pipe { read, write }),
        }
    }

    /// Closes kept pipes beyond what steady traffic reuses (each holds a
    /// descriptor pair and kernel buffer pages).
    pub fn shrink(&mut self) {
        self.free.shrink_to(crate::buffer_pool::KEEP_WHEN_QUIET);
    }

    /// Only an empty pipe can be reused; one with bytes left in it is closed.
    pub fn give_back(&mut self, relay: Relay) {
        if relay.in_pipe == 0 {
            self.free.give(relay.pipe);
        }
    }
}

pub struct Relay {
    pipe: Pipe,
    /// Bytes in the pipe, read from the source but not yet written.
    in_pipe: usize,
    /// Bytes still to read from the source; `None` reads to end of stream.
    remaining: Option<u64>,
    source_ended: bool,
    /// Bytes written to the destination so far.
    pub moved: u64,
    /// A relay through user space (TLS on one side): bytes read from the
    /// source, `held_pos..held_end` not yet written. Allocated on first use.
    held: Option<Box<[u8]>>,
    held_pos: usize,
    held_end: usize,
}

/// Which side of a relay failed: the source it reads or the destination it
/// writes (the caller knows which is the client).
#[derive(Debug)]
pub enum RelayError {
    Source(io::Error),
    Dest(io::Error),
}

/// Where a relay stands after pumping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pump {
    /// Everything was moved (the length reached, or the source ended and the
    /// pipe is empty).
    Done,
    /// Waiting for the source to be readable or the destination writable.
    Blocked,
    /// Used this turn's budget; call again.
    Budget,
}

impl Relay {
    pub fn new(pipe: Pipe, remaining: Option<u64>) -> Self {
        Relay {
            pipe,
            in_pipe: 0,
            remaining,
            source_ended: false,
            moved: 0,
            held: None,
            held_pos: 0,
            held_end: 0,
        }
    }

    /// True when the source reached end of stream before the length promised.
    pub fn cut_short(&self) -> bool {
        self.source_ended && self.remaining.is_some_and(|r| r > 0)
    }

    pub fn source_ended(&self) -> bool {
        self.source_ended
    }

    /// Bytes read from the source but not yet delivered.
    pub fn pending(&self) -> usize {
        self.in_pipe + (self.held_end - self.held_pos)
    }

    /// Moves bytes through user space, for a side whose transport must see
    /// them (TLS decrypts what it reads and encrypts what it writes): `read`
    /// fills a buffer from the source, `write` takes from it. Once a `write`
    /// has blocked, the same bytes are offered to it again, as a TLS
    /// transport expects. Stops as [`Relay::pump`] does.
    pub fn pump_through(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
        budget: &mut usize,
    ) -> Result<Pump, RelayError> {
        let held = self.held.get_or_insert_with(|| vec![0u8; HELD_CHUNK].into_boxed_slice());
        loop {
            let mut progress = false;
            if self.held_pos < self.held_end {
                match write(&held[self.held_pos..self.held_end]) {
                    Ok(n) => {
                        self.held_pos += n;
                        self.moved += n as u64;
                        *budget = budget.saturating_sub(n);
                        progress = n > 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(RelayError::Dest(e)),
                }
            }
            let want_more = !self.source_ended && self.remaining != Some(0);
            if self.held_pos == self.held_end && want_more {
                let len = self.remaining.map_or(held.len(), |r| r.min(held.len() as u64) as usize);
                match read(&mut held[..len]) {
                    Ok(0) => self.source_ended = true,
                    Ok(n) => {
                        (self.held_pos, self.held_end) = (0, n);
                        if let Some(r) = self.remaining.as_mut() {
                            *r -= n as u64;
                        }
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(RelayError::Source(e)),
                }
            }
            let pending = self.in_pipe + (self.held_end - self.held_pos);
            if pending == 0 && (self.source_ended || self.remaining == Some(0)) {
                return Ok(Pump::Done);
            }
            if !progress {
                return Ok(Pump::Blocked);
            }
            if *budget == 0 {
                return Ok(Pump::Budget);
            }
        }
    }

    /// Moves bytes until both sides block, everything is through, or `budget`
    /// bytes have moved. Errors are the sockets' (reset, broken pipe), with
    /// the side they came from.
    pub fn pump(&mut self, source: RawFd, dest: RawFd, budget: &mut usize) -> Result<Pump, RelayError> {
        loop {
            let mut progress = false;
            let want_more = !self.source_ended && self.remaining != Some(0);
            if want_more && self.in_pipe < CHUNK {
                let room = (CHUNK - self.in_pipe) as u64;
                let len = self.remaining.map_or(room, |r| r.min(room)) as usize;
                match sys::splice(source, self.pipe.write.as_raw_fd(), len) {
                    Ok(0) => self.source_ended = true,
                    Ok(n) => {
                        self.in_pipe += n;
                        if let Some(r) = self.remaining.as_mut() {
                            *r -= n as u64;
                        }
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(RelayError::Source(e)),
                }
            }
            if self.in_pipe > 0 {
                match sys::splice(self.pipe.read.as_raw_fd(), dest, self.in_pipe) {
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.moved += n as u64;
                        *budget = budget.saturating_sub(n);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => return Err(RelayError::Dest(e)),
                }
            }
            if self.in_pipe == 0 && (self.source_ended || self.remaining == Some(0)) {
                return Ok(Pump::Done);
            }
            if !progress {
                return Ok(Pump::Blocked);
            }
            if *budget == 0 {
                return Ok(Pump::Budget);
            }
        }
    }
}
