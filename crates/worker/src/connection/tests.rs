//! The HTTP/1.1 session and the proxy exchange, driven with scripted byte
//! sequences for the client and the upstream servers: no sockets, no
//! threads, no clock. Each test says what each side sent, and checks what
//! each side was sent and how the connection and its exchange ended.

use super::{CloseReason, Conn, Outcome, Protocol};
use crate::context::Ctx;
use crate::scripted::{open_to, script_server, Peer, ScriptedClient, World, PROXY};
use crate::token::ConnId;
use crate::transport::Client;

/// A client connection from 203.0.113.7 with its script.
fn connect(ctx: &mut Ctx) -> (Conn, Peer) {
    let client = Peer::new();
    let transport = Client::Scripted(ScriptedClient(client.clone()));
    let peer = Some("203.0.113.7:40000".parse().unwrap());
    (Conn::new(ConnId::new(0, 1), transport, peer, false, ctx), client)
}

/// A client connection whose GET went upstream to a scripted server, which
/// has not answered yet.
fn proxied_get(ctx: &mut Ctx) -> (Conn, Peer, Peer) {
    let (mut conn, client) = connect(ctx);
    let server = script_server(ctx);
    client.send(GET);
    assert_eq!(turn(&mut conn, ctx), Outcome::Wait);
    (conn, client, server)
}

/// One turn of the loop for the connection, after its client sent something.
fn turn(conn: &mut Conn, ctx: &mut Ctx) -> Outcome {
    conn.mark_readable();
    conn.drive(ctx)
}

/// The text without its Date header, which follows the clock.
fn dateless(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.split("\r\n").filter(|l| !l.starts_with("Date: ")).collect::<Vec<_>>().join("\r\n")
}

/// The data of a chunked body, which must be whole and well framed.
fn dechunk(body: &[u8]) -> Vec<u8> {
    use tine_http::chunked::{ChunkedDecoder, Output};
    let mut decoder = ChunkedDecoder::new(Output::Raw);
    let mut data = Vec::new();
    assert_eq!(decoder.decode(body, &mut data), Ok(body.len()));
    assert!(decoder.is_done());
    data
}

const GET: &[u8] = b"GET /a?b=1 HTTP/1.1\r\nHost: front.test\r\nUser-Agent: t\r\n\r\n";
const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello";

#[test]
fn alpn_chooses_the_session() {
    assert_eq!(Protocol::from_alpn(None), Some(Protocol::Http1));
    assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Some(Protocol::Http1));
    assert_eq!(Protocol::from_alpn(Some(b"h2")), Some(Protocol::Http2));
    assert_eq!(Protocol::from_alpn(Some(b"")), None);
}

#[test]
fn a_proxied_request_is_rewritten_upstream_and_its_response_reaches_the_client() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client) = connect(&mut ctx);
    let server = script_server(&mut ctx);
    client.send(GET);
    assert_eq!(turn(&mut conn, &mut ctx), Outcome::Wait);
    let sent = server.output_text();
    assert!(sent.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{sent}");
    assert!(sent.contains("Host: front.test\r\n"), "{sent}");
    assert!(sent.contains("X-Forwarded-For: 203.0.113.7\r\n"), "{sent}");
    assert!(sent.ends_with("\r\n\r\n"), "{sent}");
    assert!(client.output_text().is_empty(), "nothing before the upstream answers");

    server.send(OK_HELLO);
    assert_eq!(conn.drive(&mut ctx), Outcome::Wait);
    let got = client.output_text();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("X-Up: 1\r\n") && got.ends_with("\r\n\r\nhello"), "{got}");
    assert!(conn.is_idle(), "the connection waits for its next request");
    assert_eq!(ctx.proxy.upstreams.groups[0].servers[0].open, 1, "the upstream connection is pooled");
}

/// The reference run: what the client and the server are sent for one GET
/// answered with a Content-Length body, with both arriving whole.
fn reference_exchange(world: &World) -> (String, String) {
    let mut ctx = world.ctx();
    let (mut conn, client) = connect(&mut ctx);
    let server = script_server(&mut ctx);
    client.send(GET);
    turn(&mut conn, &mut ctx);
    server.send(OK_HELLO);
    conn.drive(&mut ctx);
    (dateless(&client.take_output()), server.output_text())
}

#[test]
fn a_request_head_split_at_every_byte_is_proxied_the_same() {
    let world = World::new(PROXY);
    let (want_client, want_server) = reference_exchange(&world);
    for split in 1..GET.len() {
        let mut ctx = world.ctx();
        let (mut conn, client) = connect(&mut ctx);
        let server = script_server(&mut ctx);
        client.send(&GET[..split]);
        assert_eq!(turn(&mut conn, &mut ctx), Outcome::Wait);
        assert!(
            server.output_text().is_empty(),
            "split {split}: nothing goes upstream before the head is whole"
        );
        client.send(&GET[split..]);
        turn(&mut conn, &mut ctx);
        server.send(OK_HELLO);
        conn.drive(&mut ctx);
        assert_eq!(server.output_text(), want_server, "split {split}");
        assert_eq!(dateless(&client.take_output()), want_client, "split {split}");
    }
}

#[test]
fn a_response_split_at_every_byte_reaches_the_client_the_same() {
    let world = World::new(PROXY);
    let (want_client, _) = reference_exchange(&world);
    for split in 1..OK_HELLO.len() {
        let mut ctx = world.ctx();
        let (mut conn, client) = connect(&mut ctx);
        let server = script_server(&mut ctx);
        client.send(GET);
        turn(&mut conn, &mut ctx);
        server.send(&OK_HELLO[..split]);
        assert_eq!(conn.drive(&mut ctx), Outcome::Wait, "split {split}");
        server.send(&OK_HELLO[split..]);
        assert_eq!(conn.drive(&mut ctx), Outcome::Wait, "split {split}");
        assert_eq!(dateless(&client.take_output()), want_client, "split {split}");
        assert!(conn.is_idle(), "split {split}");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_pooled_upstream_connection() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client) = connect(&mut ctx);
    let server = script_server(&mut ctx);
    let mut three = GET.to_vec();
    three.extend_from_slice(b"GET /old/x HTTP/1.1\r\nHost: front.test\r\n\r\n");
    three.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: front.test\r\n\r\n");
    client.send(&three);
    turn(&mut conn, &mut ctx);
    server.send(OK_HELLO);
    conn.drive(&mut ctx);
    // The redirect is tine's own; the third request reuses the connection.
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye");
    conn.drive(&mut ctx);
    let got = client.output_text();
    let first = got.find("hello").unwrap();
    let second = got.find("Location: https://example.test/new/").unwrap_or_else(|| panic!("{got}"));
    let third = got.find("bye").unwrap();
    assert!(first < second && second < third, "{got}");
    let upstream = server.output_text();
    assert_eq!(upstream.matches("GET ").count(), 2, "{upstream}");
    assert!(upstream.find("GET /a?b=1").unwrap() < upstream.find("GET /c").unwrap());
    assert_eq!(open_to(&ctx, 0), 1, "one connection served both");
    assert!(conn.is_idle());
}

#[test]
fn a_chunked_response_is_chunked_again_for_http11_and_decoded_for_http10() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n";
    for (request, want_body, keeps) in [
        (GET, "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", true),
        (&b"GET /a HTTP/1.0\r\nHost: front.test\r\n\r\n"[..], "abcde", false),
    ] {
        let world = World::new(PROXY);
        let mut ctx = world.ctx();
        let (mut conn, client) = connect(&mut ctx);
        let server = script_server(&mut ctx);
        client.send(request);
        turn(&mut conn, &mut ctx);
        server.send(chunked);
        let outcome = conn.drive(&mut ctx);
        let got = client.output_text();
        assert!(got.ends_with(&format!("\r\n\r\n{want_body}")), "{got}");
        assert!(!got.contains("ext=1") && !got.contains("Trailer: x"), "{got}");
        if keeps {
            assert!(got.contains("Transfer-Encoding: chunked\r\n") && conn.is_idle(), "{got}");
        } else {
            // An HTTP/1.0 client's body ends with the connection.
            assert!(!got.contains("Transfer-Encoding"), "{got}");
            assert!(got.contains("Connection: close\r\n"), "{got}");
            assert!(matches!(outcome, Outcome::Close(_)) || client.0.borrow().write_shut, "{outcome:?}");
        }
    }
}

#[test]
fn a_request_body_reaches_the_upstream_and_a_chunked_one_is_chunked_again() {
    let world = World::new(PROXY);
    for (framing, body) in [
        ("Content-Length: 11", &b"hello world"[..]),
        ("Transfer-Encoding: chunked", b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n"),
    ] {
        let mut ctx = world.ctx();
        let (mut conn, client) = connect(&mut ctx);
        let server = script_server(&mut ctx);
        client.send(format!("POST /form HTTP/1.1\r\nHost: front.test\r\n{framing}\r\n\r\n").as_bytes());
        turn(&mut conn, &mut ctx);
        // The body comes a byte at a time.
        for b in body {
            client.send(&[*b]);
            turn(&mut conn, &mut ctx);
        }
        let upstream = server.output_text();
        let (head, sent_body) = upstream.split_once("\r\n\r\n").unwrap();
        if head.contains("Transfer-Encoding: chunked") {
            // Chunked again as it came (a chunk per piece read), without
            // the client's extensions and trailer.
            assert!(!sent_body.contains("x=y") && !sent_body.contains("T: 1"), "{sent_body}");
            assert_eq!(dechunk(sent_body.as_bytes()), b"hello world", "{sent_body}");
        } else {
            assert_eq!(sent_body, "hello world");
        }
        server.send(b"HTTP/1.1 204 No Content\r\n\r\n");
        conn.drive(&mut ctx);
        assert!(client.output_text().starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(conn.is_idle());
    }
}

#[test]
fn a_refused_connect_moves_on_to_the_next_server_and_with_none_left_the_client_gets_502() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client) = connect(&mut ctx);
    let refused = script_server(&mut ctx);
    refused.0.borrow_mut().connect = Some(std::io::ErrorKind::ConnectionRefused);
    let second = script_server(&mut ctx);
    client.send(GET);
    turn(&mut conn, &mut ctx);
    assert!(refused.output_text().is_empty());
    assert!(second.output_text().starts_with("GET /a?b=1 "), "the next server has the request");
    second.send(OK_HELLO);
    conn.drive(&mut ctx);
    assert!(client.output_text().ends_with("hello"));
    assert_eq!(open_to(&ctx, 0), 0, "the refused connection is closed");

    // Both refuse: 502, and the connection goes on.
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client) = connect(&mut ctx);
    for _ in 0..2 {
        script_server(&mut ctx).0.borrow_mut().connect = Some(std::io::ErrorKind::ConnectionRefused);
    }
    client.send(GET);
    turn(&mut conn, &mut ctx);
    let got = client.output_text();
    assert!(got.starts_with("HTTP/1.1 502 "), "{got}");
    assert!(conn.is_idle(), "a 502 of tine's own keeps the connection");
}

#[test]
fn an_upstream_that_closes_before_its_head_is_retried_for_get_and_a_502_for_post() {
    for (request, retried) in [
        (GET.to_vec(), true),
        (b"POST /p HTTP/1.1\r\nHost: front.test\r\nContent-Length: 2\r\n\r\nhi".to_vec(), false),
    ] {
        let world = World::new(PROXY);
        let mut ctx = world.ctx();
        let (mut conn, client) = connect(&mut ctx);
        let first = script_server(&mut ctx);
        let second = script_server(&mut ctx);
        client.send(&request);
        turn(&mut conn, &mut ctx);
        assert!(!first.output_text().is_empty());
        first.close();
        conn.on_upstream_event(0, true);
        conn.drive(&mut ctx);
        if retried {
            assert!(
                second.output_text().starts_with("GET "),
                "an idempotent request goes to the next server"
            );
            second.send(OK_HELLO);
            conn.drive(&mut ctx);
            assert!(client.output_text().ends_with("hello"));
        } else {
            assert!(second.output_text().is_empty(), "a POST that was sent is never sent twice");
            assert!(client.output_text().starts_with("HTTP/1.1 502 "), "{}", client.output_text());
        }
        assert_eq!(open_to(&ctx, 0), 0, "the failed connection is closed");
    }
}

#[test]
fn an_upstream_that_breaks_off_its_body_closes_the_client_connection() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client, server) = proxied_get(&mut ctx);
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel");
    assert_eq!(conn.drive(&mut ctx), Outcome::Wait);
    server.close();
    assert_eq!(conn.drive(&mut ctx), Outcome::Close(CloseReason::Error));
    assert!(client.output_text().ends_with("\r\n\r\nhel"), "what came went out, and no more");
    assert_eq!(open_to(&ctx, 0), 0);
}

#[test]
fn a_broken_chunked_body_closes_and_a_malformed_head_is_a_502() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client, server) = proxied_get(&mut ctx);
    server.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n");
    assert_eq!(conn.drive(&mut ctx), Outcome::Close(CloseReason::Error));
    assert_eq!(
        client.output_text(),
        "",
        "the response broke in the read that brought its head: none of it went out"
    );

    for head in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"SMTP ready\r\n\r\n",
    ] {
        let mut ctx = world.ctx();
        let (mut conn, client, server) = proxied_get(&mut ctx);
        server.send(head);
        conn.drive(&mut ctx);
        let got = client.output_text();
        assert!(got.starts_with("HTTP/1.1 502 "), "{got}");
        assert!(got.contains("Connection: close\r\n"), "{got}");
        assert!(!got.contains("Content-Length: 1\r\n") && !got.contains("Bad Header"), "{got}");
        assert_eq!(open_to(&ctx, 0), 0, "the upstream connection is closed");
    }
}

#[test]
fn bytes_after_a_response_keep_its_connection_out_of_the_pool() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client, server) = proxied_get(&mut ctx);
    let mut smuggled = OK_HELLO.to_vec();
    smuggled.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged");
    server.send(&smuggled);
    conn.drive(&mut ctx);
    let got = client.output_text();
    assert!(got.ends_with("hello") && !got.contains("forged"), "{got}");
    assert_eq!(open_to(&ctx, 0), 0, "never pooled: its extra bytes would answer the next request");
}

#[test]
fn a_connect_that_times_out_moves_on_and_a_head_that_times_out_is_a_504() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client) = connect(&mut ctx);
    let slow = script_server(&mut ctx);
    slow.0.borrow_mut().connecting = true;
    let second = script_server(&mut ctx);
    client.send(GET);
    assert_eq!(turn(&mut conn, &mut ctx), Outcome::Wait);
    assert!(slow.output_text().is_empty() && second.output_text().is_empty());
    assert_eq!(conn.on_deadline(0, &mut ctx), Outcome::Wait);
    assert!(second.output_text().starts_with("GET "), "the next server has the request");
    // The response head does not come in time.
    assert_eq!(conn.on_deadline(0, &mut ctx), Outcome::Wait);
    let got = client.output_text();
    assert!(got.starts_with("HTTP/1.1 504 "), "{got}");
    assert_eq!(open_to(&ctx, 0) + open_to(&ctx, 1), 0, "both upstream connections are closed");
    assert!(conn.is_idle());
}

#[test]
fn a_client_that_leaves_while_its_request_waits_abandons_the_exchange() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client, server) = proxied_get(&mut ctx);
    assert!(!server.output_text().is_empty(), "the request went upstream");
    client.close();
    conn.mark_client_fin();
    assert_eq!(turn(&mut conn, &mut ctx), Outcome::Close(CloseReason::PeerClosed));
    assert_eq!(open_to(&ctx, 0), 0, "the upstream connection is closed, not pooled");
    conn.release(&mut ctx);
    assert!(client.output_text().is_empty());
}

#[test]
fn a_client_that_leaves_mid_response_closes_both_sides() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client, server) = proxied_get(&mut ctx);
    client.0.borrow_mut().window = Some(10);
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
    assert_eq!(conn.drive(&mut ctx), Outcome::Wait, "the client's socket is full");
    client.0.borrow_mut().reset = true;
    server.send(&[b'x'; 100]);
    assert_eq!(conn.drive(&mut ctx), Outcome::Close(CloseReason::Reset));
    conn.release(&mut ctx);
    assert_eq!(open_to(&ctx, 0), 0);
    assert_eq!(client.output_text().len(), 10);
}

#[test]
fn a_malformed_request_head_gets_a_400_and_the_connection_ends() {
    let world = World::new(PROXY);
    let mut ctx = world.ctx();
    let (mut conn, client) = connect(&mut ctx);
    let server = script_server(&mut ctx);
    client.send(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    let outcome = turn(&mut conn, &mut ctx);
    let got = client.output_text();
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert!(got.contains("Connection: close\r\n"), "{got}");
    assert!(outcome == Outcome::Close(CloseReason::Done) || client.0.borrow().write_shut, "{outcome:?}");
    assert!(server.output_text().is_empty(), "nothing went upstream");
    assert_eq!(open_to(&ctx, 0), 0);
}
