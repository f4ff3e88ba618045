//! Scripted peers for unit tests of the session and the request core: a
//! client and an upstream server that are byte sequences, not sockets. The
//! test holds a handle to each script, feeds it what the peer sends (in
//! the pieces it arrives in), and reads back exactly what tine sent it.

use crate::context::Ctx;
use crate::relay::{Pump, Relay, RelayError};
use crate::transport::Transport;
use crate::upstream::UpstreamIo;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use tine_config::Config;
use tine_net::sys::Peek;
use tine_stats::{GaugeShare, Region};

/// One peer's side of a scripted connection.
#[derive(Default)]
pub struct Script {
    /// Bytes the peer sent that tine has not read, in the pieces they
    /// arrive in (a read never spans two pieces).
    pub input: VecDeque<Vec<u8>>,
    /// The peer closed its side once `input` is read.
    pub closed: bool,
    /// The connection is reset: every read and write fails.
    pub reset: bool,
    /// Everything tine sent the peer.
    pub output: Vec<u8>,
    /// How many more bytes the peer's socket takes before it blocks
    /// (`None`: any number).
    pub window: Option<usize>,
    /// tine shut its side down.
    pub write_shut: bool,
    /// A connect under way (an upstream): `Ok(false)` until it completes.
    pub connect: Option<io::ErrorKind>,
    pub connecting: bool,
}

/// A handle the test keeps while tine holds the peer.
#[derive(Clone, Default)]
pub struct Peer(pub Rc<RefCell<Script>>);

impl Peer {
    pub fn new() -> Self {
        Peer::default()
    }

    /// The peer sends `bytes` (as one piece).
    pub fn send(&self, bytes: &[u8]) {
        self.0.borrow_mut().input.push_back(bytes.to_vec());
    }

    /// The peer closes its side.
    pub fn close(&self) {
        self.0.borrow_mut().closed = true;
    }

    /// What tine sent the peer so far, taken.
    pub fn take_output(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.borrow_mut().output)
    }

    pub fn output_text(&self) -> String {
        String::from_utf8_lossy(&self.0.borrow().output).into_owned()
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if s.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let Some(mut piece) = s.input.pop_front() else {
            return if s.closed { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        };
        let n = piece.len().min(buf.len());
        buf[..n].copy_from_slice(&piece[..n]);
        if n < piece.len() {
            piece.drain(..n);
            s.input.push_front(piece);
        }
        Ok(n)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if s.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if s.write_shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = s.window.map_or(buf.len(), |w| w.min(buf.len()));
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(w) = s.window.as_mut() {
            *w -= n;
        }
        s.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn peek(&self) -> Peek {
        let s = self.0.borrow();
        match () {
            _ if s.reset => Peek::Broken,
            _ if !s.input.is_empty() => Peek::Data,
            _ if s.closed => Peek::End,
            _ => Peek::Nothing,
        }
    }
}

/// A scripted client, as a connection's transport.
pub struct ScriptedClient(pub Peer);

impl Transport for ScriptedClient {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }

    fn read_spent(&self) -> bool {
        self.0 .0.borrow().input.is_empty()
    }

    fn send(&mut self, buf: &[u8], _more: bool) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn send_file(&mut self, _file: RawFd, _offset: &mut u64, _len: usize) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn cork(&mut self, _on: bool) -> bool {
        false
    }

    fn shutdown_write(&mut self) {
        self.0 .0.borrow_mut().write_shut = true;
    }

    fn peek(&self) -> Peek {
        self.0.peek()
    }

    fn relay_from(&mut self, _: &mut Relay, _: RawFd, _: &mut usize) -> Result<Pump, RelayError> {
        Err(RelayError::Dest(io::ErrorKind::Unsupported.into()))
    }

    fn relay_to(&mut self, _: &mut Relay, _: RawFd, _: &mut usize) -> Result<Pump, RelayError> {
        Err(RelayError::Source(io::ErrorKind::Unsupported.into()))
    }
}

/// A scripted upstream server, as an upstream connection's transport. It
/// has no socket, so bodies are copied, never spliced, as over TLS.
pub struct ScriptedUpstream(pub Peer);

impl UpstreamIo for ScriptedUpstream {
    fn connect_status(&self) -> io::Result<bool> {
        let s = self.0 .0.borrow();
        match s.connect {
            Some(kind) => Err(kind.into()),
            None => Ok(!s.connecting),
        }
    }

    fn send(&mut self, buf: &[u8], _more: bool) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }

    fn peek(&mut self) -> Peek {
        self.0.peek()
    }

    fn shutdown_write(&mut self) {
        self.0 .0.borrow_mut().write_shut = true;
    }

    fn splice_socket(&self) -> Option<RawFd> {
        None
    }
}

/// A worker's context built from a configuration, over a stats region of
/// its own in a temporary directory.
pub struct World {
    _dir: tempfile::TempDir,
    region: Region,
    share: GaugeShare,
    config: Config,
}

impl World {
    pub fn new(config: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(config, &dir.path().join("tine.toml")).unwrap();
        let names: Vec<String> =
            config.upstreams.iter().flat_map(|u| u.servers.iter().map(|s| s.addr.to_string())).collect();
        let region = Region::create_with_upstreams(&dir.path().join("stats"), 1, &[], &names).unwrap();
        let share = GaugeShare::new(names.len() * 2).unwrap();
        World { _dir: dir, region, share, config }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        let shared = crate::Shared {
            region: &self.region,
            slot: 0,
            gauge_share: &self.share,
            tls: None,
            acme_challenges: None,
            client_limits: None,
        };
        crate::worker_context(&self.config, shared, None).unwrap()
    }
}

/// Two servers in group `app` (the second is where failover goes), `/`
/// proxied to it, and a redirect route for replies of tine's own.
pub const PROXY: &str = r#"
[[upstream]]
name = "app"
servers = ["192.0.2.1:80", "192.0.2.2:80"]
[[route]]
path = "/old/"
redirect = "https://example.test/new/"
[[route]]
path = "/"
upstream = "app"
"#;

/// The next new upstream connection reaches a server scripted as `peer`.
pub fn script_server(ctx: &mut Ctx) -> Peer {
    let server = Peer::new();
    ctx.proxy.upstreams.scripted.push_back(server.clone());
    server
}

/// Connections of this worker open to server `server` of group `app`.
pub fn open_to(ctx: &Ctx, server: usize) -> u32 {
    ctx.proxy.upstreams.groups[0].servers[server].open
}
