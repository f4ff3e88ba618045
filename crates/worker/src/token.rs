//! The one token type of a worker. Every epoll registration carries a
//! [`Token`] saying what the event is for: a client connection, an upstream
//! connection, a listener, or the signal descriptor. A client connection is
//! named by its [`ConnId`] (slab index and generation), which the timer
//! wheel and the loop's lists use as well; an upstream connection by its
//! [`LinkId`] in the upstream pool's slab. The bit layout is defined here and
//! nowhere else:
//!
//! ```text
//!  63 62 | 61 ........ 32 | 31 ........ 0
//!  kind  | generation     | index (connection or link) or listener number
//!  00 client connection, 01 upstream connection, 10 listener, 11 signals
//! ```

/// A connection's key in the slab. The generation changes every time the
/// slot is reused, so an event or a timer left over from a closed connection
/// never reaches its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

/// Generations wrap within the bits a token has for them.
pub const GENERATION_MASK: u32 = (1 << 30) - 1;

impl ConnId {
    pub(crate) fn new(index: u32, generation: u32) -> Self {
        ConnId { index, generation: generation & GENERATION_MASK }
    }

    pub fn index(self) -> u32 {
        self.index
    }

    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// One exchange of a client connection: the connection, and which of its
/// exchanges (an HTTP/1.1 connection has one at a time, index 0; an HTTP/2
/// connection names its streams). What an upstream connection's events are
/// for while an exchange holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeId {
    pub conn: ConnId,
    pub index: u32,
}

/// An upstream connection's key in the upstream pool's slab: its own epoll
/// token, so that an event finds it whether an exchange holds it (whichever
/// client connection that exchange serves) or the pool keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkId(pub ConnId);

/// What an epoll event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The client socket of a connection.
    Client(ConnId),
    /// An upstream connection, busy in an exchange or a tunnel, or pooled.
    Upstream(LinkId),
    /// The listener at this index of the worker's listener list.
    Listener(u32),
    /// The worker's signalfd.
    Signals,
}

const KIND_SHIFT: u32 = 62;
const CLIENT: u64 = 0;
const UPSTREAM: u64 = 1;
const LISTENER: u64 = 2;
const SIGNALS: u64 = 3;

impl Token {
    /// The token as epoll's 64-bit user data.
    pub fn encode(self) -> u64 {
        let (kind, high, low) = match self {
            Token::Client(id) => (CLIENT, id.generation, id.index),
            Token::Upstream(LinkId(id)) => (UPSTREAM, id.generation, id.index),
            Token::Listener(i) => (LISTENER, 0, i),
            Token::Signals => (SIGNALS, 0, 0),
        };
        (kind << KIND_SHIFT) | (u64::from(high & GENERATION_MASK) << 32) | u64::from(low)
    }

    /// The token epoll's user data names.
    pub fn decode(raw: u64) -> Token {
        let id = || ConnId::new(raw as u32, (raw >> 32) as u32);
        match raw >> KIND_SHIFT {
            CLIENT => Token::Client(id()),
            UPSTREAM => Token::Upstream(LinkId(id())),
            LISTENER => Token::Listener(raw as u32),
            _ => Token::Signals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_survives_its_encoding() {
        let id = ConnId::new(7, GENERATION_MASK);
        for token in [Token::Client(id), Token::Upstream(LinkId(id)), Token::Listener(3), Token::Signals] {
            assert_eq!(Token::decode(token.encode()), token);
        }
        assert_ne!(Token::Client(id).encode(), Token::Upstream(LinkId(id)).encode());
        assert_eq!(ConnId::new(1, GENERATION_MASK + 1).generation(), 0, "generations wrap");
    }
}
