//! The listener set: for every listen address, one SO_REUSEPORT socket per worker
//! slot, bound by the master before it forks and held open for the master's whole
//! life. With SO_REUSEPORT each socket has its own accept queue; because the master
//! keeps every socket open, a crashed worker's queue waits for its replacement
//! instead of being reset.

use crate::sys;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot set up a socket for {addr}: {source}")]
    Socket { addr: SocketAddr, source: io::Error },
}

/// All listening sockets, indexed `[address][slot]`.
pub struct ListenerSet {
    /// The bound addresses (port 0 resolved to the port the kernel chose).
    addrs: Vec<SocketAddr>,
    sockets: Vec<Vec<OwnedFd>>,
}

impl ListenerSet {
    /// Binds `slots` sockets on each address. For port 0 the first socket picks the
    /// port and the others join it, so all slots share one port.
    pub fn bind(addrs: &[SocketAddr], slots: usize, backlog: u32) -> Result<Self, NetError> {
        let mut set = ListenerSet { addrs: Vec::new(), sockets: Vec::new() };
        for &requested in addrs {
            let mut addr = requested;
            let mut group = Vec::with_capacity(slots);
            for _ in 0..slots {
                let fd = sys::reuseport_listener(addr, backlog)
                    .map_err(|source| NetError::Bind { addr, source })?;
                if addr.port() == 0 {
                    addr = sys::local_addr(fd.as_raw_fd())
                        .map_err(|source| NetError::Socket { addr, source })?;
                }
                group.push(fd);
            }
            set.addrs.push(addr);
            set.sockets.push(group);
        }
        Ok(set)
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn slots(&self) -> usize {
        self.sockets.first().map_or(0, Vec::len)
    }

    /// The sockets of one slot, one per address, in address order.
    pub fn for_slot(&self, slot: usize) -> Vec<RawFd> {
        self.sockets.iter().map(|group| group[slot].as_raw_fd()).collect()
    }

    /// Every socket except those of `slot`, for a worker to close what it must
    /// not accept on.
    pub fn all_but_slot(&self, slot: usize) -> Vec<RawFd> {
        self.sockets
            .iter()
            .flat_map(|group| {
                group.iter().enumerate().filter(|(i, _)| *i != slot).map(|(_, fd)| fd.as_raw_fd())
            })
            .collect()
    }
}
