//! The proxy boundary attacked as an attacker would: raw-socket clients send
//! hostile bytes, and a naive raw-socket upstream (it frames requests by
//! Content-Length or chunked coding and nothing else, as many back ends do)
//! logs every byte it receives, per connection. Each test asserts what reached
//! the upstream (exactly the requests the clients sent, one per client
//! request) and that every client got its own response or a clear error.
//! The tests follow the numbered items of the proxy smuggling and desync
//! issue; docs/operations.md ("At the proxy boundary") says why each rule is.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request as the naive upstream framed it.
#[derive(Clone, Debug)]
struct Seen {
    conn: usize,
    line: String,
    head: String,
    body: Vec<u8>,
}

/// How the upstream answers a request: the raw bytes to write (any number of
/// writes, in order; an empty one waits for the test's go-ahead and reports
/// the writes after it done, see [`Gate`]), and whether to keep the connection.
type Script = dyn Fn(&Seen) -> (Vec<Vec<u8>>, bool) + Send + Sync;

/// Lets a test order the upstream's late writes against its own requests,
/// without sleeping: `open` lets the upstream go on, `wait_done` returns once
/// the writes after the pause are out.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<(bool, bool)>, std::sync::Condvar)>);

impl Gate {
    fn open(&self) {
        self.0 .0.lock().unwrap().0 = true;
        self.0 .1.notify_all();
    }
    fn pass(&self) {
        let mut state = self.0 .0.lock().unwrap();
        while !state.0 {
            state = self.0 .1.wait(state).unwrap();
        }
        state.0 = false;
    }
    fn done(&self) {
        self.0 .0.lock().unwrap().1 = true;
        self.0 .1.notify_all();
    }
    fn wait_done(&self) {
        let mut state = self.0 .0.lock().unwrap();
        while !state.1 {
            let (next, timeout) = self.0 .1.wait_timeout(state, PATIENCE).unwrap();
            assert!(!timeout.timed_out(), "the upstream never wrote its late bytes");
            state = next;
        }
        state.1 = false;
    }
}

struct RawUpstream {
    addr: SocketAddr,
    /// Every byte received, per connection, in arrival order.
    bytes: Arc<Mutex<Vec<Vec<u8>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Gate,
}

impl RawUpstream {
    fn start(script: impl Fn(&Seen) -> (Vec<Vec<u8>>, bool) + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let gate = Gate::default();
        let (b, s, g) = (bytes.clone(), seen.clone(), gate.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // Each write leaves at once, so "written" means "arrived".
                stream.set_nodelay(true).unwrap();
                let conn = {
                    let mut all = b.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let (b, s, g, script) = (b.clone(), s.clone(), g.clone(), script.clone());
                std::thread::spawn(move || serve_naively(stream, conn, &b, &s, &g, &*script));
            }
        });
        RawUpstream { addr, bytes, seen, gate }
    }

    /// An upstream that answers every request with `resp:TARGET`.
    fn echoing_target() -> RawUpstream {
        RawUpstream::start(|req| (vec![ok(&format!("resp:{}", target_of(req)))], true))
    }

    fn lines(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|s| s.line.clone()).collect()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn raw(&self, conn: usize) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()[conn]).into_owned()
    }

    fn connections(&self) -> usize {
        self.bytes.lock().unwrap().len()
    }
}

fn target_of(req: &Seen) -> &str {
    req.line.split(' ').nth(1).unwrap_or("")
}

fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// Reads requests the way a naive server does and answers each by `script`.
fn serve_naively(
    mut stream: TcpStream,
    conn: usize,
    bytes: &Mutex<Vec<Vec<u8>>>,
    seen: &Mutex<Vec<Seen>>,
    gate: &Gate,
    script: &Script,
) {
    let mut buf: Vec<u8> = Vec::new();
    let fill = |stream: &mut TcpStream, buf: &mut Vec<u8>| -> bool {
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                bytes.lock().unwrap()[conn].extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    };
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut stream, &mut buf) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let header = |name: &str| {
            head.lines()
                .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
                .map(|l| l.split_once(':').unwrap().1.trim().to_ascii_lowercase())
        };
        let mut body = Vec::new();
        if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < n {
                if !fill(&mut stream, &mut buf) {
                    return;
                }
            }
            body = buf.drain(..n).collect();
        } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if !fill(&mut stream, &mut buf) {
                        return;
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
                buf.drain(..line_end + 2);
                if size == 0 {
                    // Trailer section up to the blank line.
                    loop {
                        if buf.starts_with(b"\r\n") {
                            buf.drain(..2);
                            break;
                        }
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..i + 4);
                            break;
                        }
                        if !fill(&mut stream, &mut buf) {
                            return;
                        }
                    }
                    break;
                }
                while buf.len() < size + 2 {
                    if !fill(&mut stream, &mut buf) {
                        return;
                    }
                }
                body.extend(buf.drain(..size));
                buf.drain(..2);
            }
        }
        let line = head.lines().next().unwrap_or("").to_string();
        let req = Seen { conn, line, head, body };
        seen.lock().unwrap().push(req.clone());
        let (writes, keep) = script(&req);
        let mut gated = false;
        for w in writes {
            if w.is_empty() {
                gate.pass();
                gated = true;
                continue;
            }
            if stream.write_all(&w).is_err() {
                return;
            }
        }
        if gated {
            gate.done();
        }
        if !keep {
            return;
        }
    }
}

fn proxy_with(config: &str) -> Server {
    Server::builder().config(config).start()
}

fn proxy_to(up: &RawUpstream) -> Server {
    proxy_with(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n[[route]]\npath = \"/\"\nupstream = \"app\"\n",
        up.addr
    ))
}

/// One response, framed by Content-Length, chunked coding (decoded) or the
/// connection's end.
fn read_any(r: &mut BufReader<TcpStream>) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 "), "bad status line {line:?}");
    let status = line[9..12].parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Response { status, headers, body: Vec::new() };
    if resp.header("transfer-encoding").is_some() {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16).expect("tine's chunk sizes are bare hex");
            if n == 0 {
                line.clear();
                r.read_line(&mut line).unwrap();
                assert_eq!(line, "\r\n", "tine sends no trailers");
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            assert!(chunk.ends_with(b"\r\n"));
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = resp.header("content-length") {
        resp.body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut resp.body).unwrap();
    } else if status != 304 && status != 204 && status != 101 {
        r.read_to_end(&mut resp.body).unwrap();
    }
    resp
}

fn client(server: &Server) -> BufReader<TcpStream> {
    BufReader::new(server.connect())
}

fn send(c: &mut BufReader<TcpStream>, raw: &[u8]) -> Response {
    c.get_mut().write_all(raw).unwrap();
    read_any(c)
}

/// The client connection is closed by the server: end of stream (or a
/// reset) with nothing more; a read that times out is not a close.
fn closed(c: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    match c.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: front.test\r\n\r\n").into_bytes()
}

// 1. A header the Connection header names is hop-by-hop, but framing and Host
//    are never removed that way: tine writes them itself.
#[test]
fn connection_naming_the_framing_headers_smuggles_nothing() {
    let up = RawUpstream::echoing_target();
    let proxy = proxy_to(&up);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: front.test\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let mut a = client(&proxy);
    let raw = format!(
        "POST /a HTTP/1.1\r\nHost: front.test\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    assert_eq!(send(&mut a, raw.as_bytes()).body, b"resp:/a");
    assert_eq!(send(&mut a, &get("/a-next")).body, b"resp:/a-next", "a's next request gets its own answer");
    let mut chunked = format!(
        "POST /b HTTP/1.1\r\nHost: front.test\r\nConnection: Transfer-Encoding, Host\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    assert_eq!(send(&mut a, chunked.as_bytes()).body, b"resp:/b");
    chunked.clear();
    let mut b = client(&proxy);
    assert_eq!(send(&mut b, &get("/b-next")).body, b"resp:/b-next", "another client gets its own answer");
    assert_eq!(
        up.lines(),
        ["POST /a HTTP/1.1", "GET /a-next HTTP/1.1", "POST /b HTTP/1.1", "GET /b-next HTTP/1.1"],
        "the upstream saw each client request once and nothing else"
    );
    let seen = up.seen();
    assert_eq!(seen[0].body, smuggled.as_bytes(), "the body arrived as a body");
    assert_eq!(seen[2].body, smuggled.as_bytes());
    assert!(seen[0].head.contains(&format!("Content-Length: {}\r\n", smuggled.len())), "{}", seen[0].head);
    assert!(seen[2].head.contains("Host: front.test\r\n"), "{}", seen[2].head);
}

// 2. Only `chunked` alone is a request transfer coding; chunked bodies are
//    checked against the grammar and framed again by tine.
#[test]
fn request_transfer_codings_and_chunked_framing_are_strict() {
    let up = RawUpstream::echoing_target();
    let proxy = proxy_to(&up);
    for te in ["identity, chunked", "gzip, chunked", "gzip", "chunked, chunked"] {
        let mut c = client(&proxy);
        let raw =
            format!("POST /te HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nGET /\r\n0\r\n\r\n");
        let resp = send(&mut c, raw.as_bytes());
        assert_eq!(resp.status, 501, "{te}");
        assert_eq!(resp.header("connection"), Some("close"));
        assert!(closed(&mut c));
    }
    for (body, why) in [
        ("5;ext with space\r\nhello\r\n0\r\n\r\n", "a chunk extension outside the grammar"),
        ("5\r\nhello\r\n0\r\nGET /x HTTP/1.1\r\n\r\n", "a request line in the trailer section"),
        ("5\r\nhelloXX0\r\n\r\n", "chunk data not followed by CRLF"),
        ("5\nhello\r\n0\r\n\r\n", "a bare LF"),
    ] {
        let mut c = client(&proxy);
        let raw = format!("POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let resp = send(&mut c, raw.as_bytes());
        assert_eq!(resp.status, 400, "{why}");
        assert!(closed(&mut c), "{why}: the connection closes");
    }
    let mut c = client(&proxy);
    let body = "5;name=value;q=\"quoted; text\"\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let raw = format!("POST /good HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    assert_eq!(send(&mut c, raw.as_bytes()).body, b"resp:/good");
    assert_eq!(send(&mut c, &get("/after")).body, b"resp:/after");
    let seen = up.seen();
    let good: Vec<&Seen> = seen.iter().filter(|s| s.line.starts_with("POST /good")).collect();
    assert_eq!(good.len(), 1);
    assert_eq!(good[0].body, b"hello world");
    // Whatever was refused never reached the upstream, not even its head.
    assert_eq!(up.lines(), ["POST /good HTTP/1.1", "GET /after HTTP/1.1"]);
    let wire = up.raw(good[0].conn);
    assert!(
        wire.contains("Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET /after"),
        "tine's own framing: no extension, no trailer: {wire:?}"
    );
}

// 3. Response framing is strict: disagreeing or malformed Content-Length is
//    a 502 with nothing of the head forwarded; Content-Length beside chunked
//    is read as chunked and the connection is not reused.
#[test]
fn ambiguous_response_framing_is_refused_or_defused() {
    let up = RawUpstream::start(|req| {
        let raw: &[u8] = match target_of(req) {
            "/two-lengths" => b"HTTP/1.1 200 OK\r\nX-Leak: 1\r\nContent-Length: 2\r\nContent-Length: 12\r\n\r\nokHTTP/1.1 2",
            "/letters" => b"HTTP/1.1 200 OK\r\nX-Leak: 1\r\nContent-Length: abc\r\n\r\nok",
            "/plus" => b"HTTP/1.1 200 OK\r\nX-Leak: 1\r\nContent-Length: +2\r\n\r\nok",
            "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "/gzip" => b"HTTP/1.1 200 OK\r\nX-Leak: 1\r\nTransfer-Encoding: gzip\r\n\r\nok",
            _ => return (vec![ok(&format!("resp:{}", target_of(req)))], true),
        };
        (vec![raw.to_vec()], true)
    });
    // No circuit breaker: every bad head must be refused by its framing, not
    // because earlier ones took the server out.
    let proxy = proxy_with(&format!(
        "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\nmax_fails = 0\n[[route]]\npath = \"/\"\nupstream = \"app\"\n",
        up.addr
    ));
    for path in ["/two-lengths", "/letters", "/plus", "/gzip"] {
        let mut c = client(&proxy);
        let resp = send(&mut c, &get(path));
        assert_eq!(resp.status, 502, "{path}");
        assert!(resp.header("x-leak").is_none(), "{path}: nothing of the bad head is forwarded");
        assert!(closed(&mut c), "{path}");
    }
    let mut c = client(&proxy);
    let before = up.connections();
    let resp = send(&mut c, &get("/both"));
    assert_eq!((resp.status, &resp.body[..]), (200, &b"ok"[..]));
    assert_eq!(resp.header("content-length"), None, "{:?}", resp.headers);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(send(&mut c, &get("/next")).body, b"resp:/next");
    let seen = up.seen();
    let both = seen.iter().find(|s| s.line.starts_with("GET /both")).unwrap();
    let next = seen.iter().find(|s| s.line.starts_with("GET /next")).unwrap();
    assert_eq!(both.conn, before);
    assert_ne!(next.conn, both.conn, "the connection with ambiguous framing was not reused");
    // Every upstream connection that sent a bad head was closed by tine: each
    // carried exactly one request.
    let seen = up.seen();
    for bad in ["/two-lengths", "/letters", "/plus", "/gzip"] {
        let conn = seen.iter().find(|s| target_of(s) == bad).unwrap().conn;
        assert_eq!(seen.iter().filter(|s| s.conn == conn).count(), 1, "{bad}");
    }
}

// 4. An endless stream of interim responses costs a bounded amount of work
//    and ends in a 502; the worker goes on serving others meanwhile.
#[test]
fn an_endless_stream_of_100_continue_is_cut_off() {
    let up = RawUpstream::start(|req| {
        if target_of(req) == "/flood" {
            // Far more interim responses than tine accepts, in writes large
            // enough to keep every read of the worker busy.
            let burst = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(2000);
            return (vec![burst; 200], true);
        }
        (vec![ok("fine")], true)
    });
    let proxy = proxy_to(&up);
    let worker = proxy.worker_pids()[0];
    let mut flood = client(&proxy);
    let resp = send(&mut flood, &get("/flood"));
    assert_eq!(resp.status, 502);
    assert_eq!(send(&mut client(&proxy), &get("/other")).body, b"fine");
    assert_eq!(proxy.worker_pids(), [worker], "the worker was never killed");
    assert_eq!(proxy.stats()["master"]["watchdog_kills"], 0);
}

// 5. A 101 to a request that asked for no upgrade opens no tunnel.
#[test]
fn a_101_without_an_upgrade_request_is_a_502() {
    let up = RawUpstream::start(|req| match target_of(req) {
        "/switch" => (
            vec![b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: upgrade\r\n\r\n".to_vec()],
            true,
        ),
        other => (vec![ok(&format!("resp:{other}"))], true),
    });
    let proxy = proxy_to(&up);
    let mut c = client(&proxy);
    // The second request is pipelined: were a tunnel opened, it would reach the
    // upstream raw, outside its route and without forwarding headers.
    let mut both = get("/switch");
    both.extend_from_slice(b"GET /raw HTTP/1.1\r\nHost: front.test\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n");
    let resp = send(&mut c, &both);
    assert_eq!(resp.status, 502);
    assert!(closed(&mut c));
    assert_eq!(up.lines(), ["GET /switch HTTP/1.1"]);
    assert!(!up.raw(0).contains("/raw"), "{}", up.raw(0));
    // A real upgrade request may still switch.
    let mut ws = client(&proxy);
    ws.get_mut()
        .write_all(b"GET /switch HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n")
        .unwrap();
    assert_eq!(read_any(&mut ws).status, 101);
}

// 6. A response with bytes after its end never lets those bytes answer the
//    next request, whether they came with the head or after it (but before
//    the next request: bytes that arrive after a request was sent on the
//    connection cannot be told from its response, in HTTP/1.1, by anyone).
#[test]
fn bytes_after_a_response_never_answer_the_next_request() {
    let poison = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npoison".to_vec();
    let up = RawUpstream::start(move |req| match target_of(req) {
        "/with-head" => {
            let mut w = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
            w.extend_from_slice(&poison);
            (vec![w], true)
        }
        // The extra bytes arrive after tine has read the response.
        "/after-head" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), Vec::new(), poison.clone()],
            true,
        ),
        "/chunked-extra" => {
            let mut w = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec();
            w.extend_from_slice(&poison);
            (vec![w], true)
        }
        "/big-then-extra" => {
            // Long enough to be spliced rather than copied with the head.
            let body = "x".repeat(200_000);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            (vec![head.into_bytes(), body.into_bytes(), Vec::new(), poison.clone()], true)
        }
        "/head-then-body-and-extra" => {
            // The head alone; once the client has it, the body with the
            // extra bytes in the same segment: the body is spliced, and the
            // extra bytes raise no event of their own.
            let mut tail = b"ok".to_vec();
            tail.extend_from_slice(&poison);
            (vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_vec(), Vec::new(), tail], true)
        }
        "/big-with-extra" => {
            let mut body = vec![b'x'; 200_000];
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            body.extend_from_slice(&poison);
            (vec![head.into_bytes(), body], true)
        }
        other => (vec![ok(&format!("resp:{other}"))], true),
    });
    let proxy = proxy_to(&up);
    let mut c = client(&proxy);
    c.get_mut().write_all(&get("/head-then-body-and-extra")).unwrap();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(c.read_line(&mut head).unwrap() > 0, "{head}");
    }
    up.gate.open();
    let mut body = [0u8; 2];
    c.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"ok");
    up.gate.wait_done();
    for i in 0..3 {
        let next = format!("/next-{i}");
        assert_eq!(send(&mut c, &get(&next)).body, format!("resp:{next}").as_bytes(), "after a spliced body");
    }
    for first in ["/with-head", "/after-head", "/chunked-extra", "/big-then-extra", "/big-with-extra"] {
        let mut c = client(&proxy);
        let resp = send(&mut c, &get(first));
        assert_eq!(resp.status, 200, "{first}");
        if first.ends_with("-head") && first != "/with-head" || first == "/big-then-extra" {
            // The client has the whole response, so tine has read it: now the
            // stray bytes, and the next request only once they are out.
            up.gate.open();
            up.gate.wait_done();
        }
        for i in 0..3 {
            let next = format!("/next-{i}");
            let resp = send(&mut c, &get(&next));
            assert_eq!(resp.body, format!("resp:{next}").as_bytes(), "after {first}");
        }
    }
}

// 7. Routes are chosen on the normalised path: no spelling of a path reaches
//    a route another spelling of it would not; redirects use that path too.
#[test]
fn routes_are_chosen_on_the_normalised_path() {
    let public = RawUpstream::echoing_target();
    let private = RawUpstream::start(|req| (vec![ok(&format!("private:{}", target_of(req)))], true));
    let proxy = proxy_with(&format!(
        "[[upstream]]\nname = \"public\"\nservers = [\"{}\"]\n[[upstream]]\nname = \"private\"\nservers = [\"{}\"]\n\
         [[route]]\npath = \"/api/\"\nupstream = \"public\"\n[[route]]\npath = \"/api/private/\"\nupstream = \"private\"\n\
         [[route]]\npath = \"/\"\nroot = \"{{root}}\"\n",
        public.addr, private.addr
    ));
    for spelling in
        ["/api/private/x", "/api//private/x", "/api/./private/x", "/api/%70rivate/x", "//api/private/x"]
    {
        let resp = send(&mut client(&proxy), &get(spelling));
        assert!(
            resp.body.starts_with(b"private:"),
            "{spelling} went to {:?}",
            String::from_utf8_lossy(&resp.body)
        );
    }
    assert!(public.lines().is_empty(), "the /api/ upstream saw {:?}", public.lines());
    // The target goes upstream as the client wrote it; only routing normalises.
    assert!(private.lines().contains(&"GET /api/%70rivate/x HTTP/1.1".to_string()));
    std::fs::create_dir(proxy.root.join("sub")).unwrap();
    for (target, location) in [("//sub", "/sub/"), ("/./sub?q=1", "/sub/?q=1"), ("/%73ub", "/sub/")] {
        let resp = send(&mut client(&proxy), &get(target));
        assert_eq!((resp.status, resp.header("location")), (301, Some(location)), "{target}");
    }
}

// 8. Absolute-form targets are routed by their authority; Host is checked;
//    HTTP/1.0 without Host still names a host upstream; underscored header
//    names are dropped unless the upstream group allows them.
#[test]
fn request_targets_hosts_and_header_names() {
    let site = RawUpstream::echoing_target();
    let other = RawUpstream::start(|_| (vec![ok("other")], true));
    let proxy = proxy_with(&format!(
        "[[upstream]]\nname = \"site\"\nservers = [\"{}\"]\n[[upstream]]\nname = \"other\"\nservers = [\"{}\"]\n\
         underscores_in_headers = true\n\
         [[route]]\nhost = \"site.test\"\npath = \"/\"\nupstream = \"site\"\n[[route]]\npath = \"/\"\nupstream = \"other\"\n",
        site.addr, other.addr
    ));
    let resp = send(&mut client(&proxy), b"GET http://site.test/abs?q HTTP/1.1\r\nHost: elsewhere\r\n\r\n");
    assert_eq!(resp.body, b"resp:/abs?q", "the authority chose the route");
    let seen = site.seen();
    assert_eq!(seen[0].line, "GET /abs?q HTTP/1.1", "origin-form upstream");
    assert!(seen[0].head.contains("Host: site.test\r\n"), "{}", seen[0].head);
    for bad in ["a b", "evil.test/x", "a?b", "user@site.test", ""] {
        let mut c = client(&proxy);
        let raw = format!("GET / HTTP/1.1\r\nHost: {bad}\r\nHost: {bad}\r\n\r\n");
        assert_eq!(send(&mut c, raw.as_bytes()).status, 400, "two Hosts {bad:?}");
        let mut c = client(&proxy);
        if !bad.is_empty() {
            let raw = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(send(&mut c, raw.as_bytes()).status, 400, "Host {bad:?}");
        }
    }
    let mut old = client(&proxy);
    let resp = send(&mut old, b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(resp.body, b"other");
    let last = other.seen().pop().unwrap();
    assert!(last.head.contains("Host: other\r\n"), "HTTP/1.0 without Host: {}", last.head);
    let headers = "X_Forwarded_For: 6.6.6.6\r\nTransfer_Encoding: chunked\r\nX-Real: 1\r\n";
    send(&mut client(&proxy), format!("GET /u HTTP/1.1\r\nHost: site.test\r\n{headers}\r\n").as_bytes());
    let to_site = site.seen().pop().unwrap();
    assert!(!to_site.head.contains('_') && to_site.head.contains("X-Real: 1"), "{}", to_site.head);
    send(&mut client(&proxy), format!("GET /u HTTP/1.1\r\nHost: x.test\r\n{headers}\r\n").as_bytes());
    let to_other = other.seen().pop().unwrap();
    assert!(to_other.head.contains("X_Forwarded_For: 6.6.6.6"), "kept where allowed: {}", to_other.head);
    assert_eq!(site.lines().len() + other.lines().len(), 4, "nothing refused went upstream");
}

// 9. At the connection limit, idle keep-alive connections make room for new
//    clients instead of locking them out until they time out.
#[test]
fn idle_keep_alive_connections_make_room_at_the_limit() {
    let server =
        Server::builder().config("[limits]\nconnections_per_worker = 4\n[timeouts]\nidle = \"1h\"\n").start();
    server.write_file("a.txt", b"abc");
    let mut idle: Vec<BufReader<TcpStream>> = (0..4).map(|_| client(&server)).collect();
    for c in &mut idle {
        assert_eq!(send(c, b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n").body, b"abc");
    }
    let mut newcomer = client(&server);
    assert_eq!(send(&mut newcomer, b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n").body, b"abc");
    // One newcomer, one idle connection closed for it: none is closed while
    // nobody waits.
    let reclaimed = server.total("closed_idle_at_limit");
    assert_eq!(reclaimed, 1);
    // The ones closed end at once; the others still answer.
    let mut gone = 0;
    for c in &mut idle {
        let _ = c.get_mut().write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut line = String::new();
        match c.read_line(&mut line) {
            Ok(0) | Err(_) => gone += 1,
            Ok(_) => assert!(line.starts_with("HTTP/1.1 200"), "{line}"),
        }
    }
    assert_eq!(gone, reclaimed, "the idle connections it closed are the ones counted");
}
