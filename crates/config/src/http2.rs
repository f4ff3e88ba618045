//! The `[http2]` table: whether clients may speak HTTP/2 (by ALPN on TLS
//! listeners, by prior knowledge on plain ones) and the limits each HTTP/2
//! connection is held to.

/// The `[http2]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http2 {
    /// TLS listeners offer `h2` by ALPN (before `http/1.1`).
    pub enabled: bool,
    /// Plain listeners take HTTP/2 with prior knowledge: a connection whose
    /// first bytes are the HTTP/2 preface speaks it.
    pub h2c: bool,
    /// Streams a client may have open at once; more are refused
    /// (REFUSED_STREAM) and the connection goes on.
    pub max_concurrent_streams: u32,
    /// Bytes of request body per stream the client may send before tine
    /// has passed them on (the stream's flow-control window).
    pub initial_window_size: u32,
    /// Decoded bytes of one request head (HPACK-decoded names and values,
    /// plus 32 per field); a larger head is refused.
    pub max_header_list_size: u32,
    /// Streams a client may reset before tine has taken them up (the 2023
    /// Rapid Reset); past it, the connection ends with ENHANCE_YOUR_CALM.
    pub max_pending_resets: u32,
    /// Streams tine may reset because the client broke the protocol on
    /// them; past it, the connection ends with ENHANCE_YOUR_CALM.
    pub max_stream_errors: u32,
}

impl Default for Http2 {
    fn default() -> Self {
        Http2 {
            enabled: true,
            h2c: false,
            max_concurrent_streams: 128,
            initial_window_size: 65_536,
            max_header_list_size: 32_768,
            max_pending_resets: 20,
            max_stream_errors: 1024,
        }
    }
}
