//! Checks chunked transfer coding (RFC 9112 section 7.1) as bytes stream past,
//! so a proxy can relay a chunked body verbatim and still know exactly where it
//! ends, and refuse one whose framing is broken.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size { digits: u8 },
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedError;

#[derive(Clone, Copy, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size { digits: 0 }, size: 0 }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes of the body; returns how many belong to it (all of them,
    /// unless the body ends inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < bytes.len() && self.state != State::Done {
            let b = bytes[i];
            self.state = match self.state {
                State::Data(left) => {
                    let take = (left.min((bytes.len() - i) as u64)) as usize;
                    i += take;
                    let left = left - take as u64;
                    if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    }
                }
                state => {
                    i += 1;
                    self.step(state, b)?
                }
            };
        }
        Ok(i)
    }

    fn step(&mut self, state: State, b: u8) -> Result<State, ChunkedError> {
        Ok(match state {
            State::Size { digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 15 => {
                    let v = (b as char).to_digit(16).expect("hex digit") as u64;
                    self.size = self.size * 16 + v;
                    State::Size { digits: digits + 1 }
                }
                b';' | b' ' | b'\t' if digits > 0 => State::Extension,
                b'\r' if digits > 0 => State::SizeLf,
                _ => return Err(ChunkedError),
            },
            State::Extension => match b {
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkedError),
                _ => State::Extension,
            },
            State::SizeLf if b == b'\n' => {
                let size = std::mem::take(&mut self.size);
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data(size)
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size { digits: 0 },
            State::TrailerStart if b == b'\r' => State::EndLf,
            State::TrailerStart | State::Trailer if b != b'\r' && b != b'\n' => State::Trailer,
            State::Trailer if b == b'\r' => State::TrailerLf,
            State::TrailerLf if b == b'\n' => State::TrailerStart,
            State::EndLf if b == b'\n' => State::Done,
            _ => return Err(ChunkedError),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_in_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::default();
            let a = d.feed(&body[..split]).unwrap();
            let b = d.feed(&body[split..]).unwrap();
            assert_eq!(a + b, end, "split at {split}");
            assert!(d.is_done());
        }
    }

    #[test]
    fn broken_framing_is_refused() {
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"\r\n", b"fffffffffffffffff\r\n", b"5\nhello"] {
            assert!(ChunkedDecoder::default().feed(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
