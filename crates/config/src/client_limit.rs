//! `[[client_limit]]`: what one client (an address, a network, or the value
//! of a header) may take of the server: requests per second or minute with
//! a burst, and connections open at once. Named by routes (`client_limits`
//! on a `[[route]]`) or by the top level (every public listener).

pub use tine_limits::{KeySource, Rate};

/// One `[[client_limit]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimit {
    /// Its name in statistics, logs and the table region (letters, digits,
    /// `-` and `_`).
    pub name: String,
    pub key: KeySource,
    /// Requests per key; None: only connections are limited.
    pub rate: Option<Rate>,
    /// Connections per key open at once (0: no limit); checked at accept,
    /// so only top-level limits keyed by address may set it.
    pub connections: u32,
    /// The status a refused request is answered with.
    pub status: u16,
    /// Keys the limit's table holds (rounded up to a power of two times 8).
    pub max_keys: usize,
}

/// Keys a table holds when `max_keys` is not given: 65,536 clients owing at
/// once, 2 MiB of shared memory.
pub const DEFAULT_MAX_KEYS: usize = 65_536;

/// Parses `N r/s` or `N r/m` (spaces allowed around the unit) into the
/// interval between two requests; the burst and delay come from their own
/// keys.
pub fn parse_rate(text: &str, burst: u32, delay: bool) -> Result<Rate, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let (count, per_us) = if let Some(n) = compact.strip_suffix("r/s") {
        (n, 1_000_000u64)
    } else if let Some(n) = compact.strip_suffix("r/m") {
        (n, 60_000_000u64)
    } else {
        return Err(format!("rate must be like \"5r/s\" or \"30r/m\", not {text:?}"));
    };
    match count.parse::<u64>() {
        Ok(n @ 1..=1_000_000) => Ok(Rate { interval_us: (per_us / n).max(1), burst, delay }),
        _ => Err(format!("rate {text:?}: the count must be a whole number from 1 to 1000000")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("5r/s", 10, false).unwrap().interval_us, 200_000);
        assert_eq!(
            parse_rate("30 r/m", 0, true).unwrap(),
            Rate { interval_us: 2_000_000, burst: 0, delay: true }
        );
        for bad in ["5", "0r/s", "r/s", "1.5r/s", "5r/h", "-1r/s"] {
            assert!(parse_rate(bad, 0, false).is_err(), "{bad}");
        }
    }
}
