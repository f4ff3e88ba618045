//! Chunked transfer coding (RFC 9112 section 7.1), decoded strictly as bytes
//! stream past and framed again by tine. A proxy never relays the sender's
//! framing bytes: chunk extensions are checked against the grammar and
//! dropped, the trailer section is checked to be header fields and dropped,
//! and what goes on is either canonical chunked coding (`size CRLF data CRLF`
//! ... `0 CRLF CRLF`) or the bare data. Whatever the input, the output is one
//! well-framed body, so a peer that parses chunked coding differently from
//! tine cannot be shown a second message inside it.

/// Longest chunk-size line (size and extensions) accepted.
pub const MAX_SIZE_LINE: u32 = 4096;
/// Largest trailer section accepted (it is read and dropped).
pub const MAX_TRAILER: u32 = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size {
        digits: u8,
    },
    /// Whitespace after the size: only an extension may follow.
    SizeSpace,
    ExtBeforeName,
    ExtName,
    ExtAfterName,
    ExtBeforeValue,
    ExtToken,
    ExtQuoted,
    ExtQuotedPair,
    ExtAfterValue,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// The body's framing is broken; the message cannot be relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkedError(pub &'static str);

/// What the decoder writes for the data it decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Canonical chunked coding, ending in `0\r\n\r\n`.
    Chunked,
    /// The data alone (for a recipient that reads until the connection closes).
    Raw,
    /// Nothing: the body is checked and thrown away (a body sent to a
    /// static route, read so that the next request on the connection can be).
    Discard,
}

#[derive(Clone, Copy, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    /// Bytes of the current size line, or of the trailer section so far.
    counted: u32,
    output: Output,
}

impl ChunkedDecoder {
    pub fn new(output: Output) -> Self {
        ChunkedDecoder { state: State::Size { digits: 0 }, size: 0, counted: 0, output }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes of the body and appends what they decode to (framed as
    /// `Output` says) to `out`. Returns how many input bytes belong to the body:
    /// all of them, unless the body ends inside `input`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if let State::Data(left) = self.state {
                let take = left.min((input.len() - i) as u64) as usize;
                self.emit_data(&input[i..i + take], out);
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                continue;
            }
            self.state = self.step(input[i])?;
            i += 1;
            if self.state == State::Done && self.output == Output::Chunked {
                out.extend_from_slice(LAST_CHUNK);
            }
        }
        Ok(i)
    }

    fn emit_data(&self, data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        match self.output {
            Output::Discard => {}
            Output::Raw => out.extend_from_slice(data),
            Output::Chunked => push_chunk(out, data),
        }
    }

    fn step(&mut self, b: u8) -> Result<State, ChunkedError> {
        use State::*;
        if self.in_size_line() {
            self.counted += 1;
            if self.counted > MAX_SIZE_LINE {
                return Err(ChunkedError("chunk-size line too long"));
            }
        } else if self.in_trailer() {
            self.counted += 1;
            if self.counted > MAX_TRAILER {
                return Err(ChunkedError("trailer section too large"));
            }
        }
        let ws = b == b' ' || b == b'\t';
        Ok(match (self.state, b) {
            (Size { digits }, _) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err(ChunkedError("chunk size too large"));
                }
                self.size = self.size * 16 + u64::from(hex_value(b));
                Size { digits: digits + 1 }
            }
            (Size { digits: 1.. }, b';') => ExtBeforeName,
            (Size { digits: 1.. }, _) if ws => SizeSpace,
            (Size { digits: 1.. }, b'\r') => SizeLf,
            (Size { .. }, _) => return Err(ChunkedError("bad chunk size")),
            (SizeSpace, _) if ws => SizeSpace,
            (SizeSpace, b';') => ExtBeforeName,
            (ExtBeforeName, _) if ws => ExtBeforeName,
            (ExtBeforeName, _) if is_tchar(b) => ExtName,
            (ExtName, _) if is_tchar(b) => ExtName,
            (ExtName, _) if ws => ExtAfterName,
            (ExtName | ExtAfterName, b'=') => ExtBeforeValue,
            (ExtName | ExtAfterName, b';') => ExtBeforeName,
            (ExtName, b'\r') => SizeLf,
            (ExtAfterName, _) if ws => ExtAfterName,
            (ExtBeforeValue, _) if ws => ExtBeforeValue,
            (ExtBeforeValue, b'"') => ExtQuoted,
            (ExtBeforeValue, _) if is_tchar(b) => ExtToken,
            (ExtToken, _) if is_tchar(b) => ExtToken,
            (ExtToken, b';') => ExtBeforeName,
            (ExtToken, b'\r') => SizeLf,
            (ExtToken, _) if ws => ExtAfterValue,
            (ExtQuoted, b'"') => ExtAfterValue,
            (ExtQuoted, b'\\') => ExtQuotedPair,
            (ExtQuoted, _) if is_qdtext(b) => ExtQuoted,
            (ExtQuotedPair, _) if ws || is_vchar_or_obs(b) => ExtQuoted,
            (ExtAfterValue, _) if ws => ExtAfterValue,
            (ExtAfterValue, b';') => ExtBeforeName,
            (ExtAfterValue, b'\r') => SizeLf,
            (SizeLf, b'\n') => {
                self.counted = 0;
                match std::mem::take(&mut self.size) {
                    0 => TrailerLineStart,
                    n => Data(n),
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size { digits: 0 },
            (TrailerLineStart, b'\r') => EndLf,
            (TrailerLineStart | TrailerName, _) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, _) if ws || is_vchar_or_obs(b) => TrailerValue,
            (TrailerLf, b'\n') => TrailerLineStart,
            (EndLf, b'\n') => Done,
            (TrailerLineStart | TrailerName | TrailerValue | TrailerLf | EndLf, _) => {
                return Err(ChunkedError("trailer section is not header fields"))
            }
            (DataCr | DataLf, _) => return Err(ChunkedError("chunk data not followed by CRLF")),
            (SizeLf, _) => return Err(ChunkedError("chunk-size line not ended by CRLF")),
            _ => return Err(ChunkedError("bad chunk extension")),
        })
    }

    fn in_size_line(&self) -> bool {
        use State::*;
        matches!(
            self.state,
            Size { .. }
                | SizeSpace
                | ExtBeforeName
                | ExtName
                | ExtAfterName
                | ExtBeforeValue
                | ExtToken
                | ExtQuoted
                | ExtQuotedPair
                | ExtAfterValue
                | SizeLf
        )
    }

    fn in_trailer(&self) -> bool {
        use State::*;
        matches!(self.state, TrailerLineStart | TrailerName | TrailerValue | TrailerLf | EndLf)
    }
}

/// `tchar` of RFC 9110 section 5.6.2: what a token (a header or extension
/// name) is made of.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_vchar_or_obs(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn is_qdtext(b: u8) -> bool {
    b == b'\t'
        || b == b' '
        || b == 0x21
        || (0x23..=0x5b).contains(&b)
        || (0x5d..=0x7e).contains(&b)
        || b >= 0x80
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Writes `data` as one chunk of chunked coding (not empty: an empty chunk
/// ends the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    push_hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and the empty trailer section that end a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn push_hex(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = v;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discarded_body_is_checked_and_ends_where_the_others_do() {
        let body = b"5;x=y\r\nhello\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\nGET /next";
        let (n, out, done) = decode_all(body, Output::Discard).unwrap();
        assert!(done && out.is_empty());
        assert_eq!(n, decode_all(body, Output::Raw).unwrap().0);
        assert!(decode_all(b"5\r\nhelloX\r\n", Output::Discard).is_err());
    }

    fn decode_all(input: &[u8], output: Output) -> Result<(usize, Vec<u8>, bool), ChunkedError> {
        let mut d = ChunkedDecoder::new(output);
        let mut out = Vec::new();
        let n = d.decode(input, &mut out)?;
        Ok((n, out, d.is_done()))
    }

    #[test]
    fn finds_the_end_in_any_split_and_reframes_the_same_data() {
        let body =
            b"5\r\nhello\r\n1a;ext=1;q=\"a \\\" b\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::new(Output::Raw);
            let mut out = Vec::new();
            let a = d.decode(&body[..split], &mut out).unwrap();
            let b = d.decode(&body[split..], &mut out).unwrap();
            assert_eq!(a + b, end, "split at {split}");
            assert!(d.is_done());
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
        }
        let (_, framed, _) = decode_all(body, Output::Chunked).unwrap();
        assert_eq!(framed, b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n");
    }

    #[test]
    fn extensions_follow_the_grammar() {
        for good in [
            &b"1;a\r\nx\r\n0\r\n\r\n"[..],
            b"1 ;a = b\r\nx\r\n0\r\n\r\n",
            b"1;a=\"q;\\\"\"\r\nx\r\n0\r\n\r\n",
            b"1;a;b=c\r\nx\r\n0;last\r\n\r\n",
        ] {
            let (_, out, done) = decode_all(good, Output::Chunked).unwrap();
            assert!(done, "{:?}", String::from_utf8_lossy(good));
            assert_eq!(out, b"1\r\nx\r\n0\r\n\r\n");
        }
        for bad in [
            &b"1;\r\nx\r\n0\r\n\r\n"[..],
            b"1 \r\nx\r\n0\r\n\r\n",
            b"1;a=\r\nx\r\n0\r\n\r\n",
            b"1;a=\"open\r\nx\r\n0\r\n\r\n",
            b"1;a b\r\nx\r\n0\r\n\r\n",
            b"1;a\x00\r\nx\r\n0\r\n\r\n",
            b"1;a\nx\r\n0\r\n\r\n",
        ] {
            assert!(decode_all(bad, Output::Raw).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE as usize));
        assert_eq!(decode_all(&long, Output::Raw).unwrap_err(), ChunkedError("chunk-size line too long"));
    }

    #[test]
    fn a_trailer_section_must_be_header_fields_and_is_dropped() {
        let (_, out, done) = decode_all(b"0\r\nA: 1\r\nB-c:\r\n\r\n", Output::Chunked).unwrap();
        assert!(done);
        assert_eq!(out, b"0\r\n\r\n");
        for bad in [
            &b"0\r\nGET /x HTTP/1.1\r\n\r\n"[..],
            b"0\r\n folded\r\n\r\n",
            b"0\r\nA: 1\n\r\n",
            b"0\r\n: novalue\r\n\r\n",
            b"0\r\nA: \x01\r\n\r\n",
        ] {
            assert!(decode_all(bad, Output::Raw).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut big = b"0\r\n".to_vec();
        while big.len() < MAX_TRAILER as usize + 10 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(decode_all(&big, Output::Raw).is_err());
    }

    #[test]
    fn broken_framing_is_refused() {
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"\r\n", b"fffffffffffffffff\r\n", b"5\nhello", b"-5\r\n"]
        {
            assert!(decode_all(bad, Output::Raw).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
