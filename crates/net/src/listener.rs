//! The listener set: for every listen address, one SO_REUSEPORT socket per worker
//! slot, bound by the master before it forks and held open for the master's whole
//! life. With SO_REUSEPORT each socket has its own accept queue; because the master
//! keeps every socket open, a crashed worker's queue waits for its replacement
//! instead of being reset.
//!
//! A reload rebuilds the set with [`ListenerSet::rebind`], which keeps the sockets
//! of every address that did not change. A binary upgrade hands the set to the
//! new master by descriptor ([`ListenerSet::to_env`], [`ListenerSet::inherit`]).
//!
//! Under systemd socket activation ([`ListenerSet::from_systemd`]) an address
//! has the one socket systemd bound: every slot gets a duplicate of it and
//! the workers share its queue, and a reload keeps it like any other.

use crate::sys;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Environment variable through which a master passes its sockets to the new
/// binary on upgrade: `REQUESTED|BOUND|FD,FD,...` per address, joined by `;`.
pub const LISTENERS_ENV: &str = "TINE_LISTENERS";

/// The addresses of the sockets systemd passed, with their names.
pub type PassedSockets = Vec<(SocketAddr, String)>;

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const SYSTEMD_FIRST_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot set up a socket for {addr}: {source}")]
    Socket { addr: SocketAddr, source: io::Error },
    #[error("inherited listeners ({LISTENERS_ENV}) are unusable: {0}")]
    Inherit(String),
}

/// The sockets of one listen address, one per slot.
pub struct ListenerGroup {
    /// The address as configured (port 0 stays 0 here).
    requested: SocketAddr,
    /// The address bound (port 0 resolved to the port the kernel chose).
    bound: SocketAddr,
    sockets: Vec<OwnedFd>,
    /// The socket came from systemd: more slots share it (duplicates)
    /// rather than binding sockets of their own.
    activated: bool,
}

impl ListenerGroup {
    fn bind(requested: SocketAddr, slots: usize, backlog: u32) -> Result<Self, NetError> {
        let mut group = ListenerGroup {
            requested,
            bound: requested,
            sockets: Vec::with_capacity(slots),
            activated: false,
        };
        group.grow(slots, backlog)?;
        Ok(group)
    }

    /// Binds sockets until there is one per slot. For port 0 the first socket
    /// picks the port and the others join it, so all slots share one port.
    fn grow(&mut self, slots: usize, backlog: u32) -> Result<(), NetError> {
        while self.sockets.len() < slots {
            let addr = self.bound;
            if let Some(first) = self.sockets.first().filter(|_| self.activated) {
                let fd = sys::dup_cloexec(first.as_raw_fd())
                    .map_err(|source| NetError::Socket { addr, source })?;
                self.sockets.push(fd);
                continue;
            }
            let fd =
                sys::reuseport_listener(addr, backlog).map_err(|source| NetError::Bind { addr, source })?;
            if addr.port() == 0 {
                self.bound =
                    sys::local_addr(fd.as_raw_fd()).map_err(|source| NetError::Socket { addr, source })?;
            }
            self.sockets.push(fd);
        }
        Ok(())
    }

    fn answers_to(&self, addr: SocketAddr) -> bool {
        self.requested == addr || self.bound == addr
    }
}

/// All listening sockets, indexed `[address][slot]`.
#[derive(Default)]
pub struct ListenerSet {
    groups: Vec<ListenerGroup>,
}

impl ListenerSet {
    pub fn bind(addrs: &[SocketAddr], slots: usize, backlog: u32) -> Result<Self, NetError> {
        let mut set = ListenerSet::default();
        set.rebind(addrs, slots, backlog)?;
        Ok(set)
    }

    /// Makes the set match `addrs` x `slots`. Addresses already bound keep their
    /// sockets (and so their queued connections); new ones are bound; sockets no
    /// longer wanted (removed addresses, slots beyond `slots`) are returned, for
    /// the caller to close once nothing accepts on them anymore. On error nothing
    /// has changed.
    pub fn rebind(
        &mut self,
        addrs: &[SocketAddr],
        slots: usize,
        backlog: u32,
    ) -> Result<Vec<OwnedFd>, NetError> {
        // Match each wanted address to at most one existing group.
        let mut claimed = vec![false; self.groups.len()];
        let mut plan: Vec<Option<usize>> = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let found = (0..self.groups.len()).find(|&i| !claimed[i] && self.groups[i].answers_to(addr));
            if let Some(i) = found {
                claimed[i] = true;
            }
            plan.push(found);
        }
        // Bind everything new first, so a failure leaves the set untouched.
        let mut fresh: Vec<ListenerGroup> = Vec::with_capacity(addrs.len());
        for (&addr, &old) in addrs.iter().zip(&plan) {
            let group = match old {
                Some(i) => {
                    let g = &self.groups[i];
                    let mut more = ListenerGroup {
                        requested: g.requested,
                        bound: g.bound,
                        sockets: g
                            .sockets
                            .iter()
                            .take(1)
                            .map(|s| sys::dup_cloexec(s.as_raw_fd()))
                            .collect::<Result<_, _>>()
                            .map_err(|source| NetError::Socket { addr, source })?,
                        activated: g.activated,
                    };
                    // `more` holds a duplicate of the first socket only so that
                    // an activated group can grow from it; it goes back below.
                    let template = usize::from(!more.sockets.is_empty());
                    more.grow(slots.saturating_sub(g.sockets.len()) + template, backlog)?;
                    more.sockets.drain(..template);
                    more.grow(slots.saturating_sub(g.sockets.len()), backlog)?;
                    more
                }
                None => ListenerGroup::bind(addr, slots, backlog)?,
            };
            fresh.push(group);
        }
        let mut old: Vec<Option<ListenerGroup>> =
            std::mem::take(&mut self.groups).into_iter().map(Some).collect();
        let mut retired = Vec::new();
        for (new, from) in fresh.into_iter().zip(plan) {
            let group = match from.and_then(|i| old[i].take()) {
                Some(mut g) => {
                    g.sockets.extend(new.sockets);
                    retired.extend(g.sockets.drain(slots..));
                    g
                }
                None => new,
            };
            self.groups.push(group);
        }
        retired.extend(old.into_iter().flatten().flat_map(|g| g.sockets));
        Ok(retired)
    }

    /// The bound addresses, in configuration order.
    /// Lets the passed socket bound to `bound` stand for the configured
    /// address `requested` (socket activation by name, when the addresses
    /// differ). False when no socket is bound there.
    pub fn stand_for(&mut self, bound: SocketAddr, requested: SocketAddr) -> bool {
        match self.groups.iter_mut().find(|g| g.activated && g.bound == bound) {
            Some(g) => {
                g.requested = requested;
                true
            }
            None => false,
        }
    }

    /// Closes every listening socket (a stop: nothing will accept again).
    pub fn close_all(&mut self) {
        self.groups.clear();
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.groups.iter().map(|g| g.bound).collect()
    }

    /// Sets TCP options on every socket of the address at `index` (in
    /// binding order); returns the options the kernel refused, once each.
    pub fn configure(
        &self,
        index: usize,
        options: &tine_config::TcpOptions,
    ) -> Vec<(&'static str, io::Error)> {
        let mut refused = Vec::new();
        for s in self.groups.get(index).map_or(&[][..], |g| &g.sockets) {
            for (name, e) in sys::apply_tcp_options(s.as_raw_fd(), options) {
                if !refused.iter().any(|(n, _)| *n == name) {
                    refused.push((name, e));
                }
            }
        }
        refused
    }

    /// The sockets of one slot, one per address, in address order.
    pub fn for_slot(&self, slot: usize) -> Vec<RawFd> {
        self.groups.iter().map(|g| g.sockets[slot].as_raw_fd()).collect()
    }

    /// Every socket except those of `slot`, for a worker to close what it must
    /// not accept on.
    pub fn all_but_slot(&self, slot: usize) -> Vec<RawFd> {
        self.all().into_iter().filter(|fd| !self.for_slot(slot).contains(fd)).collect()
    }

    pub fn all(&self) -> Vec<RawFd> {
        self.groups.iter().flat_map(|g| g.sockets.iter().map(|s| s.as_raw_fd())).collect()
    }

    /// The value of [`LISTENERS_ENV`] describing this set.
    pub fn to_env(&self) -> String {
        self.groups
            .iter()
            .map(|g| {
                let fds: Vec<String> = g.sockets.iter().map(|s| s.as_raw_fd().to_string()).collect();
                let origin = if g.activated { "|systemd" } else { "" };
                format!("{}|{}|{}{origin}", g.requested, g.bound, fds.join(","))
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Adopts the sockets an old master passed in [`LISTENERS_ENV`]. Each must be
    /// a listening TCP socket bound to the address it is said to be.
    pub fn inherit(value: &str) -> Result<Self, NetError> {
        let bad = |m: String| NetError::Inherit(m);
        let mut set = ListenerSet::default();
        for part in value.split(';').filter(|p| !p.is_empty()) {
            let fields: Vec<&str> = part.split('|').collect();
            let (requested, bound, fds, activated) = match fields[..] {
                [r, b, f] => (r, b, f, false),
                [r, b, f, "systemd"] => (r, b, f, true),
                _ => return Err(bad(format!("malformed entry {part:?}"))),
            };
            let requested: SocketAddr =
                requested.parse().map_err(|_| bad(format!("bad address {requested:?}")))?;
            let bound: SocketAddr = bound.parse().map_err(|_| bad(format!("bad address {bound:?}")))?;
            let mut group = ListenerGroup { requested, bound, sockets: Vec::new(), activated };
            for fd in fds.split(',') {
                let fd: RawFd = fd.parse().map_err(|_| bad(format!("bad descriptor {fd:?}")))?;
                if !sys::is_listener_on(fd, bound) {
                    return Err(bad(format!("descriptor {fd} is not a socket listening on {bound}")));
                }
                // SAFETY: the descriptor was passed to this process for it to own,
                // and was just checked to be an open listening socket.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                sys::set_cloexec(fd);
                group.sockets.push(owned);
            }
            set.groups.push(group);
        }
        Ok(set)
    }
}

impl ListenerSet {
    /// The sockets systemd passed (socket activation: LISTEN_PID names this
    /// process, LISTEN_FDS counts descriptors from 3, LISTEN_FDNAMES names
    /// them), one group each, with their names; None when systemd passed
    /// none. The variables are removed, so no child takes them for its own.
    pub fn from_systemd() -> Result<Option<(Self, PassedSockets)>, NetError> {
        let bad = |m: String| NetError::Inherit(format!("systemd socket activation: {m}"));
        let for_us =
            std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
        let names: Vec<String> =
            std::env::var("LISTEN_FDNAMES").unwrap_or_default().split(':').map(str::to_string).collect();
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(var);
        }
        if !for_us || count <= 0 {
            return Ok(None);
        }
        let mut set = ListenerSet::default();
        let mut labels = Vec::new();
        for fd in SYSTEMD_FIRST_FD..SYSTEMD_FIRST_FD + count {
            let bound = sys::local_addr(fd).map_err(|e| bad(format!("descriptor {fd}: {e}")))?;
            if !sys::is_listener_on(fd, bound) {
                return Err(bad(format!("descriptor {fd} is not a listening TCP socket")));
            }
            sys::set_cloexec(fd);
            sys::set_nonblocking(fd).map_err(|e| bad(format!("descriptor {fd}: {e}")))?;
            // SAFETY: systemd passed this descriptor for this process to own,
            // and it was just checked to be an open listening socket.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            set.groups.push(ListenerGroup { requested: bound, bound, sockets: vec![owned], activated: true });
            let name = names.get((fd - SYSTEMD_FIRST_FD) as usize).cloned().unwrap_or_default();
            labels.push((bound, name));
        }
        Ok(Some((set, labels)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebind_keeps_unchanged_addresses_and_retires_the_rest() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut set = ListenerSet::bind(&[any], 2, 16).unwrap();
        let kept = set.for_slot(0)[0];
        let bound = set.addrs()[0];
        let other: SocketAddr = "127.0.0.2:0".parse().unwrap();
        // Same address (by its requested form), one slot more, plus a new address.
        let retired = set.rebind(&[any, other], 3, 16).unwrap();
        assert!(retired.is_empty());
        assert_eq!(set.for_slot(0)[0], kept, "socket kept across the rebind");
        assert_eq!(set.addrs()[0], bound);
        assert_eq!(set.for_slot(2).len(), 2);
        // Down to one slot of the new address only.
        let retired = set.rebind(&[set.addrs()[1]], 1, 16).unwrap();
        assert_eq!(retired.len(), 3 + 2);
        assert_eq!(set.all().len(), 1);
    }

    #[test]
    fn a_failed_rebind_changes_nothing() {
        let mut set = ListenerSet::bind(&["127.0.0.1:0".parse().unwrap()], 1, 16).unwrap();
        let before = set.all();
        // An address this host does not have cannot be bound.
        let err = set.rebind(&[set.addrs()[0], "192.0.2.1:80".parse().unwrap()], 1, 16);
        assert!(err.is_err());
        assert_eq!(set.all(), before);
    }

    #[test]
    fn env_round_trip_checks_each_descriptor() {
        let set = ListenerSet::bind(&["127.0.0.1:0".parse().unwrap()], 2, 16).unwrap();
        let env = set.to_env();
        // Hand the descriptors over as an exec would: the old owner forgets them.
        let fds = set.all();
        std::mem::forget(set);
        let adopted = ListenerSet::inherit(&env).unwrap();
        assert_eq!(adopted.all(), fds);
        assert!(ListenerSet::inherit("127.0.0.1:1|127.0.0.1:1|0").is_err(), "stdin is no listener");
        assert!(ListenerSet::inherit("garbage").is_err());
    }
}
