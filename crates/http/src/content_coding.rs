//! Content codings and Accept-Encoding (RFC 9110 section 12.5.3): which of
//! the representations tine has (brotli, gzip, the file as it is) a client
//! takes, honouring q-values, `*`, and `identity;q=0`.
//!
//! Parsing is lenient the way clients need it to be: an element that does
//! not parse (a bad q-value, a stray parameter) is skipped, never an error,
//! because refusing a request over its Accept-Encoding would break a page
//! that the file as it is would have served.

/// A content coding tine can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coding {
    Brotli,
    Gzip,
    Identity,
}

impl Coding {
    /// The token for `Content-Encoding` (none for identity).
    pub fn token(self) -> Option<&'static str> {
        match self {
            Coding::Brotli => Some("br"),
            Coding::Gzip => Some("gzip"),
            Coding::Identity => None,
        }
    }

    /// The file-name suffix of a precompressed sibling.
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Coding::Brotli => Some(".br"),
            Coding::Gzip => Some(".gz"),
            Coding::Identity => None,
        }
    }
}

/// A q-value in thousandths (0..=1000).
type Q = u16;

/// What a request's Accept-Encoding fields say, merged over every field.
/// `None` for a coding means the request did not name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptEncoding {
    br: Option<Q>,
    gzip: Option<Q>,
    identity: Option<Q>,
    any: Option<Q>,
}

impl AcceptEncoding {
    /// Adds one Accept-Encoding field's list. A coding named twice keeps its
    /// first q-value, as if the fields were one list read left to right.
    pub fn add_field(&mut self, value: &[u8]) {
        for element in value.split(|&b| b == b',') {
            let mut parts = element.split(|&b| b == b';');
            let name = trim(parts.next().unwrap_or_default());
            let Some(q) = parse_params(parts) else { continue };
            let slot = if name.eq_ignore_ascii_case(b"br") {
                &mut self.br
            } else if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") {
                &mut self.gzip
            } else if name.eq_ignore_ascii_case(b"identity") {
                &mut self.identity
            } else if name == b"*" {
                &mut self.any
            } else {
                continue;
            };
            slot.get_or_insert(q);
        }
    }

    /// How much the client wants `coding` (0: not acceptable). `present` is
    /// whether the request had an Accept-Encoding field at all: without one,
    /// only the file as it is is sent (any coding would be allowed, but
    /// clients that send none are the ones that cannot decode).
    fn weight(&self, coding: Coding, present: bool) -> Q {
        if !present {
            return if coding == Coding::Identity { 1000 } else { 0 };
        }
        let named = match coding {
            Coding::Brotli => self.br,
            Coding::Gzip => self.gzip,
            Coding::Identity => self.identity,
        };
        match (named, self.any, coding) {
            (Some(q), _, _) => q,
            (None, Some(q), _) => q,
            // Identity is acceptable unless refused by name or by `*;q=0`,
            // but any coding the client named is preferred to it.
            (None, None, Coding::Identity) => 1,
            (None, None, _) => 0,
        }
    }

    /// The best of `available` for this client: highest q-value, ties going
    /// to brotli, then gzip, then identity. `None` when none is acceptable:
    /// a 406, unless the caller prefers to send identity anyway.
    pub fn choose(accept: Option<&AcceptEncoding>, available: &[Coding]) -> Option<Coding> {
        Self::best(accept, available).first()
    }

    /// Every coding of `available` the client takes as much as the best one
    /// (equal highest q-value), brotli first: a server with the bytes at hand
    /// sends the smallest of them.
    pub fn best(accept: Option<&AcceptEncoding>, available: &[Coding]) -> Best {
        let present = accept.is_some();
        let accept = accept.copied().unwrap_or_default();
        let weighted = [Coding::Brotli, Coding::Gzip, Coding::Identity]
            .map(|c| (c, if available.contains(&c) { accept.weight(c, present) } else { 0 }));
        let top = weighted.iter().map(|&(_, q)| q).max().unwrap_or(0);
        let mut best = Best { codings: [Coding::Identity; 3], len: 0 };
        if top > 0 {
            for (c, q) in weighted {
                if q == top {
                    best.codings[best.len] = c;
                    best.len += 1;
                }
            }
        }
        best
    }
}

/// The codings a client takes most, in tine's order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Best {
    codings: [Coding; 3],
    len: usize,
}

impl Best {
    pub fn as_slice(&self) -> &[Coding] {
        &self.codings[..self.len]
    }

    pub fn first(&self) -> Option<Coding> {
        self.as_slice().first().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The q-value among an element's parameters (1 when absent); `None` when
/// the element is malformed and should be skipped.
fn parse_params<'a>(params: impl Iterator<Item = &'a [u8]>) -> Option<Q> {
    let mut q = 1000;
    for param in params {
        let param = trim(param);
        let eq = param.iter().position(|&b| b == b'=')?;
        let (name, value) = (trim(&param[..eq]), trim(&param[eq + 1..]));
        if name.eq_ignore_ascii_case(b"q") {
            q = parse_q(value)?;
        }
    }
    Some(q)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`.
fn parse_q(value: &[u8]) -> Option<Q> {
    let (whole, fraction) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: Q = 0;
    for i in 0..3 {
        thousandths = thousandths * 10 + fraction.get(i).map_or(0, |d| Q::from(d - b'0'));
    }
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Coding::*;

    fn pick(fields: &[&str], available: &[Coding]) -> Option<Coding> {
        if fields.is_empty() {
            return AcceptEncoding::choose(None, available);
        }
        let mut a = AcceptEncoding::default();
        for f in fields {
            a.add_field(f.as_bytes());
        }
        AcceptEncoding::choose(Some(&a), available)
    }

    const ALL: &[Coding] = &[Brotli, Gzip, Identity];

    #[test]
    fn brotli_is_preferred_among_equals() {
        assert_eq!(pick(&["gzip, deflate, br, zstd"], ALL), Some(Brotli));
        assert_eq!(pick(&["gzip, deflate, br"], &[Gzip, Identity]), Some(Gzip));
        assert_eq!(pick(&["gzip"], ALL), Some(Gzip));
    }

    #[test]
    fn q_values_decide() {
        assert_eq!(pick(&["br;q=0.5, gzip;q=0.8"], ALL), Some(Gzip));
        assert_eq!(pick(&["br;q=0, gzip;q=0"], ALL), Some(Identity));
        assert_eq!(pick(&["br;q=0.001"], ALL), Some(Brotli));
        assert_eq!(pick(&["br;q=1.0, identity;q=0.5"], ALL), Some(Brotli));
        assert_eq!(pick(&["BR ; Q=0.9 , GZip;q=0.95"], ALL), Some(Gzip));
    }

    #[test]
    fn wildcard_and_identity() {
        assert_eq!(pick(&["*"], ALL), Some(Brotli));
        assert_eq!(pick(&["*;q=0"], ALL), None);
        assert_eq!(pick(&["*;q=0, identity"], ALL), Some(Identity));
        assert_eq!(pick(&["identity;q=0"], &[Identity]), None);
        assert_eq!(pick(&["gzip, identity;q=0"], &[Identity]), None);
        assert_eq!(pick(&["gzip, identity;q=0"], ALL), Some(Gzip));
        assert_eq!(pick(&["br;q=0, *"], ALL), Some(Gzip));
    }

    #[test]
    fn no_field_means_the_file_as_it_is_and_an_empty_one_too() {
        assert_eq!(pick(&[], ALL), Some(Identity));
        assert_eq!(pick(&[""], ALL), Some(Identity));
        assert_eq!(pick(&[], &[Brotli]), None);
    }

    #[test]
    fn fields_merge_and_the_first_naming_wins() {
        assert_eq!(pick(&["gzip;q=0.2", "br;q=0.1"], ALL), Some(Gzip));
        assert_eq!(pick(&["br;q=0", "br"], ALL), Some(Identity));
        assert_eq!(pick(&["x-gzip"], &[Gzip, Identity]), Some(Gzip));
    }

    #[test]
    fn malformed_elements_are_skipped() {
        for bad in ["br;q=2", "br;q=1.5", "br;q=0.0001", "br;q=abc", "br;q", "br;q=", "br;q=.5", "br;q=-0"] {
            assert_eq!(pick(&[bad], ALL), Some(Identity), "{bad}");
        }
        assert_eq!(pick(&["br;level=5"], ALL), Some(Brotli));
        assert_eq!(pick(&[",,, ,br,"], ALL), Some(Brotli));
    }

    #[test]
    fn equals_are_all_offered_to_pick_the_smallest() {
        let best = |field: &str, available: &[Coding]| {
            let mut a = AcceptEncoding::default();
            a.add_field(field.as_bytes());
            AcceptEncoding::best(Some(&a), available).as_slice().to_vec()
        };
        assert_eq!(best("gzip, deflate, br", ALL), [Brotli, Gzip]);
        assert_eq!(best("gzip;q=0.9, br", ALL), [Brotli]);
        assert_eq!(best("*", ALL), [Brotli, Gzip, Identity]);
        assert_eq!(best("identity", ALL), [Identity]);
        assert_eq!(best("identity;q=0", &[Identity]), []);
    }

    #[test]
    fn q_grammar() {
        assert_eq!(parse_q(b"1"), Some(1000));
        assert_eq!(parse_q(b"1.000"), Some(1000));
        assert_eq!(parse_q(b"0.5"), Some(500));
        assert_eq!(parse_q(b"0.05"), Some(50));
        assert_eq!(parse_q(b"0."), Some(0));
        assert_eq!(parse_q(b"1.001"), None);
        assert_eq!(parse_q(b"01"), None);
    }
}
