//! Durations as operators write them: `500ms`, `10s`, `2m`, `1h`, `30d`, or a
//! bare number of seconds.

use std::time::Duration;

/// A timeout or interval: more than zero, at most a week.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_within(text, 7, "a week")
}

/// A span of a certificate's life (ACME's `renew_before`): more than zero,
/// at most a year.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    parse_within(text, 366, "a year")
}

fn parse_within(text: &str, max_days: u64, max_name: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (use e.g. 500ms, 10s, 2m, 1h, 30d)"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        other => return Err(format!("{text:?}: unknown unit {other:?} (use ms, s, m, h or d)")),
    };
    if d.is_zero() {
        return Err(format!("{text:?}: a duration must be more than zero"));
    }
    if d > Duration::from_secs(max_days * 86_400) {
        return Err(format!("{text:?}: a duration must be at most {max_name}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("8d").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn periods_reach_a_year() {
        assert_eq!(parse_period("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_period("50s"), Ok(Duration::from_secs(50)));
        assert!(parse_period("400d").is_err());
    }
}
