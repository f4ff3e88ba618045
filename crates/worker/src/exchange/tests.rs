//! The exchange behind its two seams, with no HTTP/1.1 connection: a
//! recording [`Downstream`] that takes heads as values and body data raw
//! (as an HTTP/2 stream will), and scripted upstream servers. Two exchanges
//! of one client connection run at once without crossing.

use super::{Downstream, Driven, Ended, Exchange};
use crate::context::Ctx;
use crate::outcome::Outcome;
use crate::relay::{Pump, Relay, RelayError};
use crate::scripted::{open_to, script_server, Peer, World, PROXY};
use crate::token::{ConnId, ExchangeId};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;
use tine_http::chunked::{ChunkedDecoder, ChunkedError, Output};
use tine_http::response::AddedHeaders;
use tine_http::response_head::UpstreamHead;

/// A client side that records what the exchange emits, as values.
#[derive(Default)]
struct Recorder {
    /// The response's status and field names, once emitted.
    head: Option<(u16, Vec<String>)>,
    body: Vec<u8>,
    /// Request body bytes the client has sent, not yet taken.
    unread: Vec<u8>,
    deadlines: Vec<Duration>,
    continued: bool,
    /// Which exchange of the client connection this is.
    index: u32,
}

impl Downstream for Recorder {
    fn owner(&self) -> ExchangeId {
        ExchangeId { conn: ConnId::new(7, 1), index: self.index }
    }

    fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        None
    }

    fn arm(&mut self, _ctx: &mut Ctx, timeout: Duration) {
        self.deadlines.push(timeout);
    }

    fn unread(&self) -> &[u8] {
        &self.unread
    }

    fn consume(&mut self, n: usize) {
        self.unread.drain(..n.min(self.unread.len()));
    }

    fn read_more(&mut self, _ctx: &mut Ctx) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn take_end_of_stream(&mut self) -> bool {
        false
    }

    fn has_left(&self) -> bool {
        false
    }

    fn emit_continue(&mut self) {
        self.continued = true;
    }

    fn emit_head(&mut self, head: &UpstreamHead<'_, '_>, _added: &AddedHeaders, _draining: bool) -> Output {
        let names = head.headers.iter().map(|h| h.name.to_ascii_lowercase()).collect();
        self.head = Some((head.code, names));
        Output::Raw
    }

    fn emit_body(&mut self, bytes: &[u8]) {
        self.body.extend_from_slice(bytes);
    }

    fn emit_trailers(&mut self, _trailers: &http::HeaderMap) {}

    fn emit_chunked(&mut self, decoder: &mut ChunkedDecoder, input: &[u8]) -> Result<usize, ChunkedError> {
        decoder.decode(input, &mut self.body)
    }

    fn takes_splice(&self) -> bool {
        true
    }

    fn relay_body(&mut self, _: &mut Relay, _: RawFd, _: &mut usize) -> Result<Pump, RelayError> {
        unreachable!("a scripted upstream has no socket to splice")
    }

    fn relay_from(&mut self, _: &mut Relay, _: RawFd, _: &mut usize) -> Result<Pump, RelayError> {
        unreachable!("no tunnel here")
    }

    fn relay_to(&mut self, _: &mut Relay, _: RawFd, _: &mut usize) -> Result<Pump, RelayError> {
        unreachable!("no tunnel here")
    }

    fn flush(&mut self, _ctx: &mut Ctx) -> Option<Outcome> {
        None
    }

    fn has_pending_output(&self) -> bool {
        false
    }

    fn shutdown_write(&mut self) {}

    fn log_status(&mut self, _code: u16) {}
}

/// An exchange for `request`, routed by the catch-all route of [`PROXY`].
fn exchange_for(request: &[u8], ctx: &mut Ctx) -> Box<Exchange> {
    let mut slots = tine_http::request::field_slots();
    let req = tine_http::parse_request(request, &mut slots, &ctx.http.limits).unwrap().unwrap();
    let route = ctx.http.routes.iter().position(|r| r.path == "/").unwrap();
    Exchange::new(&req, route, 0, None, false, ctx)
}

/// Drives until the exchange pauses or ends.
fn drive(ex: Box<Exchange>, client: &mut Recorder, ctx: &mut Ctx) -> Driven {
    ex.drive(client, ctx, &mut usize::MAX.clone())
}

fn paused(driven: Driven) -> Box<Exchange> {
    match driven {
        Driven::Paused(ex, Outcome::Wait) => ex,
        Driven::Paused(_, other) => panic!("paused with {other:?}"),
        Driven::Ready(_) => panic!("ready, not paused"),
        Driven::Ended(_) => panic!("ended, not paused"),
    }
}

#[test]
fn a_response_reaches_a_non_http1_client_as_a_head_and_raw_body_data() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let server = script_server(&mut ctx);
    let mut client = Recorder::default();
    let ex = paused(drive(
        exchange_for(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n", &mut ctx),
        &mut client,
        &mut ctx,
    ));
    assert!(server.output_text().starts_with("GET /x HTTP/1.1\r\n"));
    server.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n4\r\nwiki\r\n0\r\n\r\n");
    assert!(matches!(drive(ex, &mut client, &mut ctx), Driven::Ended(Ended::Complete)));
    let (status, names) = client.head.unwrap();
    assert_eq!(status, 200);
    assert!(names.contains(&"x-a".to_string()), "{names:?}");
    assert_eq!(client.body, b"wiki", "the client side chose raw data, not chunks");
    assert_eq!(open_to(&ctx, 0), 1, "the upstream connection is pooled");
}

#[test]
fn two_exchanges_of_one_client_connection_run_at_once_without_crossing() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let first_server = script_server(&mut ctx);
    let second_server = script_server(&mut ctx);
    let (mut one, mut two) = (Recorder::default(), Recorder { index: 1, ..Recorder::default() });
    let a =
        paused(drive(exchange_for(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n", &mut ctx), &mut one, &mut ctx));
    let b =
        paused(drive(exchange_for(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n", &mut ctx), &mut two, &mut ctx));
    let to = |p: &Peer| p.output_text().lines().next().unwrap_or_default().to_string();
    let (first_line, second_line) = (to(&first_server), to(&second_server));
    assert!(first_line.contains("/one") || second_line.contains("/one"));
    assert!(first_line.contains("/two") || second_line.contains("/two"));
    let (one_server, two_server) = if first_line.contains("/one") {
        (&first_server, &second_server)
    } else {
        (&second_server, &first_server)
    };
    // The second answers first.
    two_server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo");
    assert!(matches!(drive(b, &mut two, &mut ctx), Driven::Ended(Ended::Complete)));
    let a = paused(drive(a, &mut one, &mut ctx));
    one_server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none");
    assert!(matches!(drive(a, &mut one, &mut ctx), Driven::Ended(Ended::Complete)));
    assert_eq!((one.body.as_slice(), two.body.as_slice()), (&b"one"[..], &b"two"[..]));
}

#[test]
fn an_exchange_that_fails_before_its_response_leaves_the_answer_to_the_session() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    for _ in 0..2 {
        script_server(&mut ctx).0.borrow_mut().connect = Some(io::ErrorKind::ConnectionRefused);
    }
    let mut client = Recorder::default();
    let request = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n";
    match drive(exchange_for(request, &mut ctx), &mut client, &mut ctx) {
        Driven::Ended(Ended::Failed(failure)) => {
            assert_eq!(failure.status.0, 502);
            assert!(failure.close, "the unread request body ends the client connection");
        }
        _ => panic!("a 502 for the session to answer"),
    }
    assert!(client.head.is_none() && client.body.is_empty(), "nothing was emitted");
}

#[test]
fn a_request_body_the_client_already_sent_goes_upstream_without_a_100_continue() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let server = script_server(&mut ctx);
    let mut client = Recorder { unread: b"data".to_vec(), ..Recorder::default() };
    let request = b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let _ex = paused(drive(exchange_for(request, &mut ctx), &mut client, &mut ctx));
    assert!(server.output_text().ends_with("\r\n\r\ndata"), "{}", server.output_text());
    assert!(!client.continued, "the body was on its way: no invitation");
    assert!(client.unread.is_empty());
}
