//! TCP socket options: the `[tcp]` table, which applies to every listener,
//! and `[tcp.listener."ADDRESS"]` tables that override it for one listen
//! address (of any kind: HTTP, admin, stream). Every value is checked
//! against the limits the kernel itself enforces, so `tine check` refuses
//! what a setsockopt would refuse.

use std::time::Duration;

/// Options for the sockets of a listener; `None` leaves the kernel's value.
/// Accepted connections inherit all of them from the listener.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// TCP_NODELAY.
    pub nodelay: Option<bool>,
    /// TCP keepalive (SO_KEEPALIVE with TCP_KEEPIDLE); zero turns it off.
    pub keepalive_idle: Option<Duration>,
    /// TCP_KEEPINTVL.
    pub keepalive_interval: Option<Duration>,
    /// TCP_KEEPCNT.
    pub keepalive_count: Option<u32>,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged.
    pub user_timeout: Option<Duration>,
    /// SO_SNDBUF in bytes (the kernel doubles it, and stops autotuning it).
    pub send_buffer: Option<u32>,
    /// SO_RCVBUF in bytes (as SO_SNDBUF).
    pub receive_buffer: Option<u32>,
    /// TCP_FASTOPEN: the queue of pending Fast Open connections (listeners).
    pub fastopen: Option<u32>,
    /// TCP_CONGESTION: the congestion control algorithm's name.
    pub congestion: Option<String>,
    /// TCP_DEFER_ACCEPT (listeners whose clients speak first).
    pub defer_accept: Option<Duration>,
    /// TCP_NOTSENT_LOWAT in bytes.
    pub notsent_lowat: Option<u32>,
}

impl TcpOptions {
    /// What every listener starts from: no Nagle.
    pub fn production_defaults() -> Self {
        TcpOptions { nodelay: Some(true), ..TcpOptions::default() }
    }

    /// Keepalive that notices a vanished peer in about two minutes (the
    /// kernel's defaults take over two hours): the default of stream
    /// listeners, whose relayed connections may stay quiet for long. HTTP
    /// connections end by tine's own header, idle and send timeouts, so a
    /// probe timer per connection would only add to every connection's cost.
    pub fn stream_keepalive() -> Self {
        TcpOptions {
            keepalive_idle: Some(Duration::from_secs(60)),
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_count: Some(6),
            ..TcpOptions::default()
        }
    }

    /// These options with every value that `over` sets replacing this one's.
    pub fn overlaid(&self, over: &TcpOptions) -> TcpOptions {
        TcpOptions {
            nodelay: over.nodelay.or(self.nodelay),
            keepalive_idle: over.keepalive_idle.or(self.keepalive_idle),
            keepalive_interval: over.keepalive_interval.or(self.keepalive_interval),
            keepalive_count: over.keepalive_count.or(self.keepalive_count),
            user_timeout: over.user_timeout.or(self.user_timeout),
            send_buffer: over.send_buffer.or(self.send_buffer),
            receive_buffer: over.receive_buffer.or(self.receive_buffer),
            fastopen: over.fastopen.or(self.fastopen),
            congestion: over.congestion.clone().or_else(|| self.congestion.clone()),
            defer_accept: over.defer_accept.or(self.defer_accept),
            notsent_lowat: over.notsent_lowat.or(self.notsent_lowat),
        }
    }
}

/// Largest TCP_KEEPIDLE and TCP_KEEPINTVL the kernel takes, in seconds.
pub const MAX_KEEPALIVE_SECONDS: u64 = 32_767;
/// Largest TCP_KEEPCNT the kernel takes.
pub const MAX_KEEPALIVE_COUNT: i64 = 127;
/// Longest congestion control name the kernel takes (TCP_CA_NAME_MAX - 1).
pub const MAX_CONGESTION_NAME: usize = 15;

/// A duration where zero means "off" (keepalive_idle, defer_accept).
pub(crate) fn duration_or_off(text: &str) -> Result<Duration, String> {
    match text.trim().trim_end_matches(['s', 'm', 'h']) {
        "0" => Ok(Duration::ZERO),
        _ => crate::parse_duration(text),
    }
}

/// Whole seconds from 0 (or 1) to `max`, as the kernel wants them.
pub(crate) fn seconds(name: &str, d: Duration, min: u64, max: u64) -> Result<Duration, String> {
    if d.subsec_nanos() != 0 {
        return Err(format!("{name} must be whole seconds, not {d:?}"));
    }
    if !(min..=max).contains(&d.as_secs()) {
        return Err(format!("{name} must be from {min}s to {max}s, not {}s", d.as_secs()));
    }
    Ok(d)
}

/// A byte count or queue length that fits the kernel's int.
pub(crate) fn int_value(name: &str, v: i64, min: i64, max: i64) -> Result<u32, String> {
    if (min..=max).contains(&v) {
        Ok(v as u32)
    } else {
        Err(format!("{name} must be from {min} to {max}, not {v}"))
    }
}

pub(crate) fn congestion_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_CONGESTION_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!("congestion must be an algorithm's name (up to {MAX_CONGESTION_NAME} letters, digits, _ or -), not {name:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_replaces_only_what_it_sets() {
        let base = TcpOptions::production_defaults().overlaid(&TcpOptions::stream_keepalive());
        let over =
            TcpOptions { keepalive_count: Some(3), congestion: Some("bbr".into()), ..Default::default() };
        let both = base.overlaid(&over);
        assert_eq!(both.keepalive_count, Some(3));
        assert_eq!(both.congestion.as_deref(), Some("bbr"));
        assert_eq!(both.keepalive_idle, base.keepalive_idle);
        assert_eq!(both.nodelay, Some(true));
    }

    #[test]
    fn kernel_limits() {
        assert!(seconds("x", Duration::from_millis(1500), 1, 10).is_err());
        assert!(seconds("x", Duration::from_secs(0), 1, 10).is_err());
        assert!(seconds("x", Duration::from_secs(10), 1, 10).is_ok());
        assert!(int_value("x", 128, 1, MAX_KEEPALIVE_COUNT).is_err());
        assert!(congestion_name("bbr").is_ok());
        assert!(congestion_name("a name").is_err());
        assert!(congestion_name("abcdefghijklmnop").is_err());
    }
}
