//! Text in the region: NUL-padded bytes in 64-bit words, in memory order
//! (names of upstream servers, limits and certificates, ACME errors).

use std::sync::atomic::{AtomicU64, Ordering};

/// Stores `text` into `words` with atomics, NUL-padded, cut short so that
/// at least one NUL ends it.
pub(crate) fn store(words: &[AtomicU64], text: &str) {
    let text = &text.as_bytes()[..text.len().min((words.len() * 8).saturating_sub(1))];
    for (k, word) in words.iter().enumerate() {
        let mut bytes = [0u8; 8];
        let from = (k * 8).min(text.len());
        let part = &text[from..(from + 8).min(text.len())];
        bytes[..part.len()].copy_from_slice(part);
        word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
    }
}

/// NUL-padded text stored in words, in memory order.
pub(crate) fn load(words: &[u64]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
