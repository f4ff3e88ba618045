//! The engine against `h2`'s own client, both run over in-memory queues
//! with no runtime: what a browser's HTTP/2 does, and what an attacker's
//! does, with the bytes moved by hand between the two.

use super::*;
use std::task::{Context, Poll, Waker};

/// A client connection over a wire of its own, and the server it talks to.
struct Pair {
    server: ServerConnection,
    client_wire: Wire,
    client: Option<h2::client::Connection<WireIo, Bytes>>,
    send: Option<h2::client::SendRequest<Bytes>>,
    accepted: Vec<Accepted>,
    ended: Option<Result<(), ConnectionError>>,
    /// How the client's connection ended, once it did.
    client_ended: Option<Result<(), h2::Error>>,
}

impl Pair {
    fn new(settings: &Settings) -> Pair {
        let client_wire = Wire::default();
        let mut pair = Pair {
            server: ServerConnection::new(settings),
            client_wire,
            client: None,
            send: None,
            accepted: Vec::new(),
            ended: None,
            client_ended: None,
        };
        let mut handshake = Box::pin(h2::client::handshake(pair.client_wire.io()));
        for _ in 0..16 {
            pair.move_bytes();
            if let Poll::Ready(result) = handshake.as_mut().poll(&mut cx()) {
                let (send, conn) = result.unwrap();
                pair.send = Some(send);
                pair.client = Some(conn);
                break;
            }
        }
        pair.turns(8);
        assert!(pair.send.is_some(), "the client's handshake completes");
        pair
    }

    /// Moves the bytes each side wrote to the other, and runs the server.
    fn move_bytes(&mut self) {
        let mut to_client = Vec::new();
        self.server.take_output(&mut to_client);
        self.client_wire.push_inbound(&to_client);
        let mut to_server = Vec::new();
        self.client_wire.take_outbound(&mut to_server);
        self.server.receive(&to_server);
        loop {
            match self.server.poll() {
                Polled::Request(accepted) => self.accepted.push(*accepted),
                Polled::Idle => break,
                Polled::Ended(result) => {
                    self.ended = Some(result);
                    break;
                }
            }
        }
    }

    /// A few rounds of both sides running and bytes moving.
    fn turns(&mut self, n: usize) {
        for _ in 0..n {
            self.move_bytes();
            self.run_client();
        }
    }

    fn run_client(&mut self) {
        if let Some(conn) = self.client.as_mut() {
            if let Poll::Ready(result) = Pin::new(conn).poll(&mut cx()) {
                self.client_ended = Some(result);
                self.client = None;
            }
        }
    }
}

fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(format!("https://a.test{path}")).body(()).unwrap()
}

#[test]
fn a_request_and_its_response_cross_with_no_runtime() {
    let mut pair = Pair::new(&Settings::default());
    let send = pair.send.as_mut().unwrap();
    let (mut response, _) = send.send_request(get("/x?y=1"), true).unwrap();
    pair.turns(4);
    let mut accepted = pair.accepted.pop().expect("the server accepted the request");
    assert_eq!(accepted.head.method, "GET");
    assert_eq!(accepted.head.uri.path_and_query().unwrap().as_str(), "/x?y=1");
    assert_eq!(accepted.head.uri.authority().unwrap().as_str(), "a.test");
    assert!(accepted.body.is_end_stream());
    let head = http::Response::builder().status(200).header("x-a", "1").body(()).unwrap();
    let respond = &mut accepted.responder;
    respond.send_head(head, false).unwrap();
    assert!(respond.writable(5) >= 5, "the default window has room");
    respond.send_data(Bytes::from_static(b"hello"), true).unwrap();
    assert!(respond.is_done());
    pair.turns(4);
    let Poll::Ready(Ok(resp)) = Pin::new(&mut response).poll(&mut cx()) else { panic!("no response") };
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-a"], "1");
    let mut data = resp.into_body();
    let Poll::Ready(Some(Ok(chunk))) = data.poll_data(&mut cx()) else { panic!("no body") };
    assert_eq!(&chunk[..], b"hello");
}

#[test]
fn the_settings_are_advertised_to_the_client() {
    let settings = Settings { max_concurrent_streams: 7, ..Settings::default() };
    let mut pair = Pair::new(&settings);
    pair.turns(4);
    let conn = pair.client.as_ref().unwrap();
    assert_eq!(conn.max_concurrent_send_streams(), 7);
}

#[test]
fn a_request_body_larger_than_the_window_arrives_as_the_server_reads_it() {
    let settings = Settings { initial_window_size: 16_384, ..Settings::default() };
    let mut pair = Pair::new(&settings);
    let send = pair.send.as_mut().unwrap();
    let req = http::Request::post("https://a.test/up").body(()).unwrap();
    let (_response, mut upload) = send.send_request(req, false).unwrap();
    let total = 100_000;
    upload.reserve_capacity(total);
    let mut sent = 0;
    let mut received = 0;
    for _ in 0..200 {
        pair.turns(1);
        let capacity = upload.capacity();
        if sent < total && capacity > 0 {
            let n = capacity.min(total - sent);
            upload.send_data(Bytes::from(vec![b'u'; n]), sent + n == total).unwrap();
            sent += n;
        }
        if let Some(accepted) = pair.accepted.last_mut() {
            while let BodyChunk::Data(chunk) = accepted.body.next_chunk() {
                received += chunk.len();
                // Passing it on is what opens the window again.
                accepted.body.release(chunk.len());
            }
        }
        if received == total {
            break;
        }
    }
    assert_eq!(received, total, "the whole body, through a 16 KiB window");
}

#[test]
fn bytes_that_are_not_http2_end_the_connection_with_an_error() {
    let mut server = ServerConnection::new(&Settings::default());
    server.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let ended = (0..4).find_map(|_| match server.poll() {
        Polled::Ended(result) => Some(result),
        _ => None,
    });
    assert!(matches!(ended, Some(Err(_))), "an HTTP/1.1 head is no connection preface");
}

#[test]
fn a_rapid_reset_flood_ends_the_connection() {
    let settings = Settings { max_pending_accept_reset_streams: 5, ..Settings::default() };
    let mut pair = Pair::new(&settings);
    // Open streams and reset them at once, before the server accepts any.
    for i in 0..50 {
        let send = pair.send.as_mut().unwrap();
        let Ok((_, mut stream)) = send.send_request(get(&format!("/{i}")), false) else { break };
        stream.send_reset(h2::Reason::CANCEL);
        let mut to_server = Vec::new();
        pair.client_wire.take_outbound(&mut to_server);
        pair.server.receive(&to_server);
        pair.run_client();
    }
    // The server runs only now, as a loop turn would after a burst.
    pair.turns(2);
    match &pair.ended {
        Some(Err(e)) => assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e}"),
        other => panic!("the connection must end with an error, got {:?}", other.as_ref().map(|r| r.is_ok())),
    }
    // The client was told why, in a GOAWAY.
    match &pair.client_ended {
        Some(Err(e)) => assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e}"),
        other => panic!("the client's connection must end with the server's reason, got {other:?}"),
    }
}
