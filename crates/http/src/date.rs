//! The Date header, formatted once a second rather than once a response.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LEN: usize = 29;

pub struct DateCache {
    second: u64,
    text: [u8; DATE_LEN],
}

impl Default for DateCache {
    fn default() -> Self {
        let mut cache = DateCache { second: u64::MAX, text: [b' '; DATE_LEN] };
        cache.refresh(SystemTime::now());
        cache
    }
}

impl DateCache {
    /// Re-formats only when the second has changed.
    pub fn refresh(&mut self, now: SystemTime) {
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == DATE_LEN {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.text
    }
}
