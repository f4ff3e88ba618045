//! A raw HTTP/2 client for the tests: frames written and read by hand over
//! a plain socket (h2c), HPACK from a library. It sends exactly what a test
//! asks for, hostile or not, and reports exactly what came back.

use super::PATIENCE;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const NO_ERROR: u32 = 0;
pub const PROTOCOL_ERROR: u32 = 1;
pub const CANCEL: u32 = 8;
pub const REFUSED_STREAM: u32 = 7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
    /// A HEADERS frame's fields, decoded as it arrived (the decoder's
    /// table depends on every block, whichever stream it is for).
    pub fields: Vec<(String, String)>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A response as the client saw it.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The stream was reset, with this code.
    pub reset: Option<u32>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// How the connection ended, when it did.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    GoAway(u32),
    /// Closed without a GOAWAY.
    Closed,
}

pub struct Client {
    pub socket: TcpStream,
    encoder: loona_hpack::Encoder<'static>,
    decoder: loona_hpack::Decoder<'static>,
    inbox: Vec<u8>,
    /// Frames read while waiting for something else.
    pub seen: Vec<Frame>,
    /// Frames of streams nobody asked about yet, kept for when one does.
    unclaimed: Vec<Frame>,
    pub ended: Option<End>,
}

impl Client {
    /// Connects and sends the preface with these settings (id, value).
    pub fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Client {
        let socket = TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        socket.set_nodelay(true).unwrap();
        let mut client = Client {
            socket,
            encoder: loona_hpack::Encoder::new(),
            decoder: loona_hpack::Decoder::new(),
            inbox: Vec::new(),
            seen: Vec::new(),
            unclaimed: Vec::new(),
            ended: None,
        };
        client.write(PREFACE);
        let payload: Vec<u8> =
            settings.iter().flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes())).collect();
        client.frame(SETTINGS, 0, 0, &payload);
        client
    }

    /// Reads until the server's SETTINGS came (and were acknowledged, so
    /// that its limits hold from the next frame on).
    pub fn settle(&mut self) {
        while let Some(f) = self.next_frame() {
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                return;
            }
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        // A server that closed may refuse the rest; what it answered is read after.
        let _ = self.socket.write_all(bytes);
    }

    pub fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.write(&encode_frame(kind, flags, stream, payload));
    }

    /// An HPACK block of these fields, pseudo-fields first as given.
    pub fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// A request's HEADERS: `GET path` to authority `a.test`, with `extra`.
    pub fn request(&mut self, stream: u32, method: &str, path: &str, extra: &[(&str, &str)], end: bool) {
        let mut fields =
            vec![(":method", method), (":scheme", "http"), (":path", path), (":authority", "a.test")];
        fields.extend_from_slice(extra);
        let block = self.block(&fields);
        self.frame(HEADERS, END_HEADERS | if end { END_STREAM } else { 0 }, stream, &block);
    }

    pub fn get(&mut self, stream: u32, path: &str) -> Response {
        self.request(stream, "GET", path, &[], true);
        self.response(stream)
    }

    /// The next frame; None once the connection closed. SETTINGS are
    /// acknowledged, and every frame is kept in `seen`.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.inbox.len() >= 9 {
                let len = u32::from_be_bytes([0, self.inbox[0], self.inbox[1], self.inbox[2]]) as usize;
                if self.inbox.len() >= 9 + len {
                    let head: Vec<u8> = self.inbox.drain(..9 + len).collect();
                    let mut frame = Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                        fields: Vec::new(),
                    };
                    if frame.kind == HEADERS {
                        let fields = self.decoder.decode(&frame.payload).expect("HPACK from tine decodes");
                        frame.fields = fields
                            .into_iter()
                            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                            .collect();
                    }
                    if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                        self.frame(SETTINGS, ACK, 0, &[]);
                    }
                    if frame.kind == GOAWAY {
                        self.ended = Some(End::GoAway(frame.error_code()));
                    }
                    self.seen.push(frame.clone());
                    return Some(frame);
                }
            }
            let mut buf = [0u8; 65536];
            match self.socket.read(&mut buf) {
                Ok(0) | Err(_) => {
                    self.ended.get_or_insert(End::Closed);
                    return None;
                }
                Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads until stream `stream` ends (or is reset), opening the windows
    /// as its data arrives.
    pub fn response(&mut self, stream: u32) -> Response {
        self.responses(&[stream]).pop().unwrap()
    }

    /// Reads until each of `streams` ended (or was reset), opening the
    /// windows as their data arrives; responses in the order asked.
    pub fn responses(&mut self, streams: &[u32]) -> Vec<Response> {
        let mut responses: Vec<Response> = streams.iter().map(|_| Response::default()).collect();
        let mut done = vec![false; streams.len()];
        let (earlier, later): (Vec<Frame>, Vec<Frame>) =
            std::mem::take(&mut self.unclaimed).into_iter().partition(|f| streams.contains(&f.stream));
        self.unclaimed = later;
        let mut earlier = earlier.into_iter();
        while done.contains(&false) {
            let Some(frame) = earlier.next().or_else(|| self.next_frame()) else { break };
            let Some(i) = streams.iter().position(|&s| s == frame.stream) else {
                if frame.stream != 0 {
                    self.unclaimed.push(frame);
                }
                continue;
            };
            if done[i] {
                continue;
            }
            let response = &mut responses[i];
            match frame.kind {
                HEADERS => {
                    for (name, value) in frame.fields {
                        if name == ":status" {
                            response.status = value.parse().unwrap();
                        } else {
                            response.headers.push((name, value));
                        }
                    }
                }
                DATA => {
                    response.body.extend_from_slice(&frame.payload);
                    if !frame.payload.is_empty() {
                        let n = (frame.payload.len() as u32).to_be_bytes();
                        self.frame(WINDOW_UPDATE, 0, 0, &n);
                        self.frame(WINDOW_UPDATE, 0, frame.stream, &n);
                    }
                }
                RST_STREAM => {
                    response.reset = Some(frame.error_code());
                    done[i] = true;
                    continue;
                }
                _ => continue,
            }
            if frame.flags & END_STREAM != 0 && response.status >= 200 {
                done[i] = true;
            }
        }
        responses
    }

    /// Reads until the connection ends: how it did.
    pub fn until_end(&mut self) -> End {
        while self.next_frame().is_some() {}
        self.ended.take().unwrap_or(End::Closed)
    }
}

pub fn encode_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A field as a literal without indexing, bytes as they are (no Huffman,
/// no checks): what a hostile client sends that an encoder would refuse.
pub fn raw_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    push_length(&mut out, name.len());
    out.extend_from_slice(name);
    push_length(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

fn push_length(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}
