//! The byte layout of the region, version 1. docs/stats-abi.md describes it for
//! readers in other languages; change the two together.
//!
//! ```text
//! offset 0              Header         (HEADER_SIZE bytes)
//! header.master_offset  MasterSection  (one writer: the master)
//! header.host_offset    Host           (one writer: the master)
//! header.listeners_offset  listener_count x 64-byte NUL-padded address text
//! header.slots_offset   slot_count x slot_size bytes, one Slot per worker slot
//! ```
//!
//! Every number is a native-endian u64 (the header's `endian_check` tells a reader
//! which endianness that is), every section starts on a 64-byte boundary, and each
//! slot is padded to whole cache lines so two workers never share one.

use std::sync::atomic::{AtomicU32, AtomicU64};

/// First eight bytes of every region.
pub const MAGIC: [u8; 8] = *b"TINESTAT";
/// Bumped only for changes an old reader would misread; appending fields to a
/// section grows its size in the header instead.
pub const LAYOUT_VERSION: u32 = 1;
/// Written natively; reads back as 0x04030201 on a machine of the other endianness.
pub const ENDIAN_CHECK: u32 = 0x0102_0304;
/// Bytes reserved for each listen address, NUL-padded.
pub const LISTENER_ENTRY_SIZE: usize = 64;

/// The fixed header at offset 0.
#[repr(C, align(64))]
pub struct Header {
    /// [`MAGIC`]; written last when a region is created, so a reader that sees it
    /// sees a fully initialised region.
    pub magic: [u8; 8],
    pub layout_version: u32,
    pub endian_check: u32,
    pub header_size: u32,
    pub master_size: u32,
    pub slot_count: u32,
    pub slot_size: u32,
    pub listener_count: u32,
    pub listener_entry_size: u32,
    pub master_offset: u64,
    pub listeners_offset: u64,
    pub slots_offset: u64,
    pub total_size: u64,
    /// Pid of the master that owns the region now (changes on binary upgrade).
    pub master_pid: AtomicU64,
    /// When the region was created: counters count from here.
    pub start_unix_ms: AtomicU64,
    /// Stamped by the master about once a second while it runs.
    pub heartbeat_unix_ms: AtomicU64,
    /// A [`RegionState`] value.
    pub state: AtomicU64,
    /// Where the host section starts, and its size.
    pub host_offset: u64,
    pub host_size: u32,
    /// Interface entries the host section has room for.
    pub interface_capacity: u32,
    /// Where the upstream section starts (names, then per-slot entries).
    pub upstreams_offset: u64,
    /// Upstream servers named in the section (a reload rewrites it, under
    /// `upstream_names_seq`), and room for how many.
    pub upstream_count: AtomicU32,
    pub upstream_capacity: u32,
    /// Bytes per upstream name and per upstream stats entry.
    pub upstream_name_size: u32,
    pub upstream_entry_size: u32,
    /// Sequence lock of the upstream names and count: odd while the master
    /// rewrites them; a reader whose copy began and ended on the same even
    /// value has a consistent one. It guards the certificate table too.
    pub upstream_names_seq: AtomicU64,
    /// Where the certificate table starts (0 in regions that predate it),
    /// entries in use (under `upstream_names_seq`), room, bytes per entry.
    pub certificates_offset: u64,
    pub certificate_count: AtomicU32,
    pub certificate_capacity: u32,
    pub certificate_entry_size: u32,
    /// Room for client limits in the limits section (0 in regions that
    /// predate it), where it starts, entries in use (under
    /// `upstream_names_seq`), and bytes per per-slot entry.
    pub limit_capacity: u32,
    pub limits_offset: u64,
    pub limit_count: AtomicU32,
    pub limit_entry_size: u32,
}

/// Lifecycle of the whole region, as stored in [`Header::state`].
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionState {
    Running = 1,
    Stopping = 2,
    Stopped = 3,
    /// Serving, but asking load balancers to take it out: a drain
    /// (`tine signal drain`), the drain_delay of a graceful stop, or an
    /// upgrade under way. Health checks answer 503.
    Draining = 4,
}

impl RegionState {
    pub fn from_raw(v: u64) -> Option<Self> {
        match v {
            1 => Some(Self::Running),
            2 => Some(Self::Stopping),
            3 => Some(Self::Stopped),
            4 => Some(Self::Draining),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Draining => "draining",
        }
    }
}

/// Lifecycle of one worker slot, as stored in [`Slot::state`].
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    Empty = 0,
    Starting = 1,
    Running = 2,
    Draining = 3,
    Dead = 4,
    Backoff = 5,
    /// No longer used after a reload lowered the worker count; its counters stay.
    Retired = 6,
}

impl SlotState {
    pub fn from_raw(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::Empty),
            1 => Some(Self::Starting),
            2 => Some(Self::Running),
            3 => Some(Self::Draining),
            4 => Some(Self::Dead),
            5 => Some(Self::Backoff),
            6 => Some(Self::Retired),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Dead => "dead",
            Self::Backoff => "backoff",
            Self::Retired => "retired",
        }
    }
}

/// How a reader should treat a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever increases for the life of the region.
    Counter,
    /// Goes up and down; the sum over slots is meaningful.
    Gauge,
    /// Describes the slot (pid, cpu, ...); never summed.
    Info,
}

/// One u64 field of a section, for renderers and the ABI document.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub offset: usize,
    pub help: &'static str,
}

/// Declares a section once and derives from it the shared-memory struct, the
/// plain-value struct a snapshot holds, and the field table renderers walk, so
/// the three can never disagree.
macro_rules! section {
    (
        $(#[$meta:meta])*
        $section:ident / $values:ident / $fields:ident {
            $( $name:ident : $kind:ident = $help:literal, )*
        }
        $( arrays { $( $aname:ident : [$alen:expr] = $ahelp:literal, )* } )?
        $( after_arrays { $( $tname:ident : $tkind:ident = $thelp:literal, )* } )?
        $( tail_arrays { $( $zname:ident : [$zlen:expr] = $zhelp:literal, )* } )?
        $( after_tail { $( $wname:ident : $wkind:ident = $whelp:literal, )* } )?
    ) => {
        $(#[$meta])*
        #[repr(C, align(64))]
        pub struct $section {
            $( #[doc = $help] pub $name: AtomicU64, )*
            $($( #[doc = $ahelp] pub $aname: [AtomicU64; $alen], )*)?
            $($( #[doc = $thelp] pub $tname: AtomicU64, )*)?
            $($( #[doc = $zhelp] pub $zname: [AtomicU64; $zlen], )*)?
            $($( #[doc = $whelp] pub $wname: AtomicU64, )*)?
        }

        /// Plain copy of every field of the section, loaded with relaxed atomics.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $values {
            $( #[doc = $help] pub $name: u64, )*
            $($( #[doc = $thelp] pub $tname: u64, )*)?
            $($( #[doc = $whelp] pub $wname: u64, )*)?
            $($( #[doc = $ahelp] pub $aname: [u64; $alen], )*)?
            $($( #[doc = $zhelp] pub $zname: [u64; $zlen], )*)?
        }

        impl $section {
            pub fn load(&self) -> $values {
                $values {
                    $( $name: self.$name.load(std::sync::atomic::Ordering::Relaxed), )*
                    $($( $tname: self.$tname.load(std::sync::atomic::Ordering::Relaxed), )*)?
                    $($( $wname: self.$wname.load(std::sync::atomic::Ordering::Relaxed), )*)?
                    $($( $aname: std::array::from_fn(|i| self.$aname[i].load(std::sync::atomic::Ordering::Relaxed)), )*)?
                    $($( $zname: std::array::from_fn(|i| self.$zname[i].load(std::sync::atomic::Ordering::Relaxed)), )*)?
                }
            }
        }

        impl $values {
            /// Scalar fields from values in field-table order (arrays left zero).
            pub fn from_values(values: &[u64]) -> Self {
                let mut it = values.iter().copied();
                $values {
                    $( $name: it.next().unwrap_or(0), )*
                    $($( $tname: it.next().unwrap_or(0), )*)?
                    $($( $wname: it.next().unwrap_or(0), )*)?
                    $($( $aname: [0; $alen], )*)?
                    $($( $zname: [0; $zlen], )*)?
                }
            }

            /// The value of the scalar field at this index of the field table.
            pub fn get(&self, index: usize) -> u64 {
                let all = [$( self.$name, )* $($( self.$tname, )*)? $($( self.$wname, )*)?];
                all[index]
            }
        }

        /// Scalar fields in table order: those before the arrays, then any
        /// appended after them (which sit in what was the section's padding,
        /// so no earlier offset moved when they were added).
        pub const $fields: &[Field] = &[
            $( Field {
                name: stringify!($name),
                kind: Kind::$kind,
                offset: std::mem::offset_of!($section, $name),
                help: $help,
            }, )*
            $($( Field {
                name: stringify!($tname),
                kind: Kind::$tkind,
                offset: std::mem::offset_of!($section, $tname),
                help: $thelp,
            }, )*)?
            $($( Field {
                name: stringify!($wname),
                kind: Kind::$wkind,
                offset: std::mem::offset_of!($section, $wname),
                help: $whelp,
            }, )*)?
        ];
    };
}

section! {
    /// One worker slot. Written by its worker (one writer, relaxed adds) and by the
    /// master only while no worker runs in it.
    Slot / SlotFields / SLOT_FIELDS {
        pid: Info = "pid of the worker now in the slot (0 when none)",
        cpu: Info = "CPU the slot is pinned to",
        state: Info = "slot state: 0 empty, 1 starting, 2 running, 3 draining, 4 dead, 5 backoff, 6 retired",
        generation: Info = "how many workers have been started in this slot",
        started_unix_ms: Info = "when the current worker started (ms since the epoch)",
        heartbeat_unix_ms: Info = "stamped by the worker as its event loop turns (ms since the epoch)",
        accepted: Counter = "connections accepted",
        active: Gauge = "connections open now",
        requests: Counter = "requests whose head was parsed",
        responses_1xx: Counter = "responses with a 1xx status",
        responses_2xx: Counter = "responses with a 2xx status",
        responses_3xx: Counter = "responses with a 3xx status",
        responses_4xx: Counter = "responses with a 4xx status",
        responses_5xx: Counter = "responses with a 5xx status",
        bytes_received: Counter = "bytes read from clients",
        bytes_sent: Counter = "bytes written to clients, heads and bodies, by any means",
        bytes_sent_sendfile: Counter = "the part of bytes_sent that went out by sendfile",
        timeouts: Counter = "connections closed by a header, idle or send timeout",
        parse_errors: Counter = "requests refused as malformed: bad heads (400, 414, 431, 505) and unsafe paths (400)",
        closed_by_reset: Counter = "connections the client reset or broke mid-response",
        cpu_time_us: Counter = "CPU time (user + system) of the slot's workers in microseconds, sampled by the master once a second",
        rss_bytes: Gauge = "resident memory of the slot's workers in bytes, sampled by the master once a second",
        latency_us_sum: Counter = "sum of all request latencies in microseconds (first request byte to last response byte)",
    }
    arrays {
        latency_us: [LATENCY_BUCKETS] = "request latency histogram: bucket i counts requests that took less than 2^i microseconds and at least 2^(i-1) (bucket 0: under 1 us)",
    }
    after_arrays {
        closed_idle_at_limit: Counter = "idle keep-alive connections closed to admit new clients at the per-worker connection limit",
        tls_handshakes: Counter = "TLS handshakes completed",
        tls_resumed: Counter = "the part of tls_handshakes that resumed a session from a ticket",
        tls_v1_3: Counter = "the part of tls_handshakes that negotiated TLS 1.3",
        tls_v1_2: Counter = "the part of tls_handshakes that negotiated TLS 1.2",
        tls_failed_protocol: Counter = "TLS handshakes failed on a protocol error: not TLS, malformed or truncated, an alert from the client, nothing in common",
        tls_failed_timeout: Counter = "TLS handshakes not complete within the header timeout",
        tls_failed_no_certificate: Counter = "TLS handshakes refused because no certificate covers the name asked for (unknown_name = \"refuse\")",
        tls_failed_plain_http: Counter = "plain HTTP requests on a TLS port, answered with a plain-text 400",
        tls_record_errors: Counter = "established TLS connections closed on a bad record or an alert from the client",
        tcp_info_samples: Counter = "client connections whose TCP_INFO was sampled as they closed (one in TCP_INFO_SAMPLE_EVERY)",
        sampled_rtt_us_sum: Counter = "sum of the sampled connections' smoothed RTT (tcpi_rtt) in microseconds",
        sampled_retrans_segs: Counter = "segments the sampled connections retransmitted (tcpi_total_retrans)",
        sampled_segs_out: Counter = "segments the sampled connections sent (tcpi_segs_out)",
    }
    tail_arrays {
        sampled_rtt_us: [LATENCY_BUCKETS] = "the sampled connections' smoothed RTT histogram, buckets as latency_us",
    }
    after_tail {
        rejected_malformed: Counter = "the part of parse_errors answered 400 for the head: it does not parse, or its framing or Host is ambiguous or invalid",
        rejected_target: Counter = "the part of parse_errors answered 400 for the target: not a path, a bad escape, a dot-dot segment, an encoded slash or NUL",
        rejected_uri_too_long: Counter = "the part of parse_errors answered 414: a target longer than limits.uri_bytes",
        rejected_head_too_large: Counter = "the part of parse_errors answered 431: a head larger than limits.request_head_bytes, or too many fields",
        rejected_version: Counter = "the part of parse_errors answered 505: an HTTP version other than 1.0 and 1.1",
        rejected_not_implemented: Counter = "the part of parse_errors answered 501: a transfer coding other than chunked",
        proxy_headers: Counter = "PROXY protocol headers accepted from trusted sources",
        proxy_refused_untrusted: Counter = "connections refused for sending a PROXY protocol header from a source [proxy_protocol] does not trust",
        proxy_refused_missing: Counter = "connections from a trusted source refused for not beginning with a PROXY protocol header",
        proxy_refused_malformed: Counter = "connections refused for a malformed or oversized PROXY protocol header",
        proxy_refused_timeout: Counter = "connections whose PROXY protocol header did not arrive within [proxy_protocol] timeout",
        tls_failed_no_common: Counter = "TLS handshakes refused because the client offered no cipher suite, signature scheme or key-exchange group the certificates can serve",
        http2_connections: Counter = "connections that spoke HTTP/2 (ALPN h2, or the preface on an h2c listener)",
        http2_active: Gauge = "HTTP/2 connections open now",
        http2_requests: Counter = "the part of requests that came on HTTP/2 streams (the rest came over HTTP/1.x)",
        http2_client_resets: Counter = "HTTP/2 streams the client reset (RST_STREAM) after tine took them up, before their response ended",
        http2_tine_resets: Counter = "HTTP/2 streams tine reset: a malformed request (PROTOCOL_ERROR), a response cut short, a window shut past the send timeout",
        http2_stalled: Counter = "the part of http2_tine_resets whose window stayed shut past the send timeout (a zero-window stall)",
        http2_goaway_graceful: Counter = "HTTP/2 connections tine ended with GOAWAY(NO_ERROR): a reload, upgrade or drain, or an idle timeout",
        http2_goaway_calm: Counter = "HTTP/2 connections tine ended with GOAWAY(ENHANCE_YOUR_CALM) for abuse: too many streams reset by the client (Rapid Reset) or by tine, a CONTINUATION flood",
        http2_goaway_error: Counter = "HTTP/2 connections tine ended with GOAWAY for another protocol error (PROTOCOL_ERROR, FLOW_CONTROL_ERROR, COMPRESSION_ERROR, ...)",
        grpc_ok: Counter = "gRPC responses with grpc-status 0 (OK), from the upstream or from tine",
        grpc_cancelled: Counter = "gRPC responses with grpc-status 1 (CANCELLED), from the upstream or from tine",
        grpc_unknown: Counter = "gRPC responses with grpc-status 2 (UNKNOWN), from the upstream or from tine",
        grpc_invalid_argument: Counter = "gRPC responses with grpc-status 3 (INVALID_ARGUMENT), from the upstream or from tine",
        grpc_deadline_exceeded: Counter = "gRPC responses with grpc-status 4 (DEADLINE_EXCEEDED), from the upstream or from tine",
        grpc_not_found: Counter = "gRPC responses with grpc-status 5 (NOT_FOUND), from the upstream or from tine",
        grpc_already_exists: Counter = "gRPC responses with grpc-status 6 (ALREADY_EXISTS), from the upstream or from tine",
        grpc_permission_denied: Counter = "gRPC responses with grpc-status 7 (PERMISSION_DENIED), from the upstream or from tine",
        grpc_resource_exhausted: Counter = "gRPC responses with grpc-status 8 (RESOURCE_EXHAUSTED), from the upstream or from tine",
        grpc_failed_precondition: Counter = "gRPC responses with grpc-status 9 (FAILED_PRECONDITION), from the upstream or from tine",
        grpc_aborted: Counter = "gRPC responses with grpc-status 10 (ABORTED), from the upstream or from tine",
        grpc_out_of_range: Counter = "gRPC responses with grpc-status 11 (OUT_OF_RANGE), from the upstream or from tine",
        grpc_unimplemented: Counter = "gRPC responses with grpc-status 12 (UNIMPLEMENTED), from the upstream or from tine",
        grpc_internal: Counter = "gRPC responses with grpc-status 13 (INTERNAL), from the upstream or from tine",
        grpc_unavailable: Counter = "gRPC responses with grpc-status 14 (UNAVAILABLE), from the upstream or from tine",
        grpc_data_loss: Counter = "gRPC responses with grpc-status 15 (DATA_LOSS), from the upstream or from tine",
        grpc_unauthenticated: Counter = "gRPC responses with grpc-status 16 (UNAUTHENTICATED), from the upstream or from tine",
        grpc_by_tine: Counter = "the part of the grpc_* counters that tine answered itself (no upstream, a timeout): UNAVAILABLE or DEADLINE_EXCEEDED in a trailers-only response",
    }
}

/// One closing client connection in this many has its TCP_INFO sampled: a
/// bounded cost (one getsockopt) for a view of the network path.
pub const TCP_INFO_SAMPLE_EVERY: u64 = 16;

/// Buckets of the latency histogram: the last one holds everything from
/// 2^30 us (about 18 minutes) up.
pub const LATENCY_BUCKETS: usize = 32;

/// The histogram bucket for a latency: the smallest i with `us < 2^i`.
pub fn latency_bucket(us: u64) -> usize {
    ((u64::BITS - us.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

/// Interface entries the host section has room for.
pub const INTERFACE_CAPACITY: usize = 16;

section! {
    /// Host-wide network health, sampled by the master once a second from
    /// /proc/net/snmp, /proc/net/netstat and /proc/net/dev. These are the
    /// kernel's counters for the master's network namespace, not tine's own.
    HostSection / HostFields / HOST_FIELDS {
        sampled_unix_ms: Info = "when the master last sampled (ms since the epoch)",
        tcp_active_opens: Counter = "Tcp ActiveOpens: connections this host opened",
        tcp_passive_opens: Counter = "Tcp PassiveOpens: connections this host accepted",
        tcp_attempt_fails: Counter = "Tcp AttemptFails: connection attempts that failed (e.g. refused)",
        tcp_estab_resets: Counter = "Tcp EstabResets: established connections reset",
        tcp_retrans_segs: Counter = "Tcp RetransSegs: segments retransmitted",
        tcp_in_errs: Counter = "Tcp InErrs: segments received in error",
        tcp_listen_overflows: Counter = "TcpExt ListenOverflows: connections refused because an accept queue was full",
        tcp_listen_drops: Counter = "TcpExt ListenDrops: SYNs dropped at a listening socket",
        interface_count: Info = "interface entries in use",
    }
}

/// One network interface, from /proc/net/dev.
#[repr(C, align(64))]
pub struct InterfaceEntry {
    /// Interface name, ASCII, NUL-padded, 16 bytes (stored as two u64 words in
    /// memory order).
    pub name: [AtomicU64; 2],
    pub rx_bytes: AtomicU64,
    pub rx_drops: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_drops: AtomicU64,
}

/// Entries of the certificate table: one per `[[certificate]]`.
pub const CERTIFICATE_CAPACITY: usize = 32;
/// Bytes per certificate entry: notAfter (seconds since the epoch, i64),
/// then `NAME FILE` (its first DNS name and its file), NUL-padded, up to
/// [`CERTIFICATE_TEXT_END`]; then where it comes from and its ACME state
/// (docs/stats-abi.md). Entries were 128 bytes before the ACME fields.
pub const CERTIFICATE_ENTRY_SIZE: usize = 256;
/// Where an entry's `NAME FILE` text ends.
pub const CERTIFICATE_TEXT_END: usize = 128;
/// Where an entry's ACME fields start: source, next attempt, failures, then
/// the last error text to the end of the entry.
pub const CERTIFICATE_ACME_OFFSET: usize = 128;
/// Where an entry's last error text starts.
pub const CERTIFICATE_ERROR_OFFSET: usize = 152;

/// Bytes of text naming one upstream server (`group address`), NUL-padded.
pub const UPSTREAM_NAME_SIZE: usize = 64;

section! {
    /// One worker's counters for one upstream server.
    UpstreamStats / UpstreamFields / UPSTREAM_FIELDS {
        requests: Counter = "requests sent to the server (each retry counts)",
        failures: Counter = "connects refused or failed, and exchanges broken before a response",
        timeouts: Counter = "connects or response heads that took too long",
        pool_hits: Counter = "requests sent on a kept-alive connection",
        pool_misses: Counter = "requests that needed a new connection",
        open: Gauge = "this worker's connections to the server, busy or idle",
        down: Gauge = "workers of the slot holding the server out after failures: 1, or 2 while an old worker drains beside a new one",
        bytes_spliced: Counter = "response and tunnel bytes moved by splice, never through user space",
        bytes_copied: Counter = "bytes copied through user space (heads, chunked bodies, request bodies)",
        active: Gauge = "this worker's exchanges with the server under way (requests, tunnels): what least_conn compares",
        responses: Counter = "final response heads received from the server",
        response_us_sum: Counter = "microseconds from picking the server to its final response head, summed over `responses` (connect, send and the server's think time)",
        tls_handshakes: Counter = "TLS handshakes completed with the server (tls = true)",
        tls_resumed: Counter = "the part of tls_handshakes that resumed an earlier session",
        tls_failed: Counter = "TLS handshakes with the server that failed for a reason other than its certificate: an alert, a protocol error, nothing in common, a close",
        tls_verify_expired: Counter = "handshakes refused because the server's certificate has expired or is not valid yet",
        tls_verify_unknown_issuer: Counter = "handshakes refused because the server's certificate is not issued by a trusted CA (tls_ca, or the system's store)",
        tls_verify_name: Counter = "handshakes refused because the server's certificate is not valid for tls_server_name",
        tls_verify_other: Counter = "handshakes refused for another fault of the server's certificate (bad signature, revoked, unsuitable, malformed)",
        h2_connections: Counter = "HTTP/2 connections opened to the server (protocol = \"h2\" or \"h2c\")",
        h2_streams: Counter = "exchanges carried to the server as HTTP/2 streams",
        h2_goaways: Counter = "GOAWAY frames from the server: its connection drained, new exchanges went to a new one",
        h2_resets: Counter = "HTTP/2 streams to the server reset: by tine for a client that went away or a deadline, or by the server",
    }
}

/// Client limits the limits section has room for.
pub const LIMIT_CAPACITY: usize = 32;
/// Bytes per client limit's description: its name (NUL-padded, 48 bytes),
/// then two words the master writes: keys in use, and the keys its table
/// holds.
pub const LIMIT_INFO_SIZE: usize = 64;
/// Bytes of a limit's name in its description.
pub const LIMIT_NAME_SIZE: usize = 48;

section! {
    /// One worker's counters for one `[[client_limit]]`.
    LimitStats / LimitFields / LIMIT_FIELDS {
        checked: Counter = "requests checked against the limit's rate",
        delayed: Counter = "the part of checked that waited for their turn (delay = true)",
        refused: Counter = "the part of checked refused for going over the rate and the burst",
        connections_refused: Counter = "connections closed at accept because their key had `connections` open",
        evictions: Counter = "keys that still owed pushed out of the limit's full table by a new key",
    }
}

/// The host section: fields, then INTERFACE_CAPACITY interface entries.
#[repr(C, align(64))]
pub struct Host {
    pub fields: HostSection,
    pub interfaces: [InterfaceEntry; INTERFACE_CAPACITY],
}

section! {
    /// Counters about the master itself.
    MasterSection / MasterFields / MASTER_FIELDS {
        generation: Info = "configuration generation, 1 at start, +1 per successful reload",
        reloads: Counter = "successful configuration reloads",
        reloads_failed: Counter = "reloads refused because the new configuration was invalid",
        respawns: Counter = "workers started again after one exited unexpectedly",
        watchdog_kills: Counter = "workers killed because their heartbeat stopped",
        backoffs: Counter = "respawns delayed because a slot kept crashing right after start",
    }
}

/// Header size rounded to its alignment, as stored in the header.
pub const HEADER_SIZE: usize = std::mem::size_of::<Header>();
pub const MASTER_SIZE: usize = std::mem::size_of::<MasterSection>();
pub const SLOT_SIZE: usize = std::mem::size_of::<Slot>();
pub const HOST_SIZE: usize = std::mem::size_of::<Host>();
pub const INTERFACE_ENTRY_SIZE: usize = std::mem::size_of::<InterfaceEntry>();
pub const UPSTREAM_ENTRY_SIZE: usize = std::mem::size_of::<UpstreamStats>();
pub const LIMIT_ENTRY_SIZE: usize = std::mem::size_of::<LimitStats>();

/// Where each section lives for a region with this many slots and listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub master: usize,
    pub host: usize,
    pub listeners: usize,
    pub slots: usize,
    pub upstreams: usize,
    pub certificates: usize,
    pub limits: usize,
    pub total: usize,
}

impl Offsets {
    pub fn compute(slot_count: usize, listener_count: usize, upstream_capacity: usize) -> Self {
        let master = HEADER_SIZE;
        let host = master + MASTER_SIZE;
        let listeners = host + HOST_SIZE;
        let slots = round_up(listeners + listener_count * LISTENER_ENTRY_SIZE, 64);
        let upstreams = slots + slot_count * SLOT_SIZE;
        let certificates = round_up(
            upstreams + upstream_capacity * (UPSTREAM_NAME_SIZE + slot_count * UPSTREAM_ENTRY_SIZE),
            64,
        );
        let limits = round_up(certificates + CERTIFICATE_CAPACITY * CERTIFICATE_ENTRY_SIZE, 64);
        let total = limits + LIMIT_CAPACITY * (LIMIT_INFO_SIZE + slot_count * LIMIT_ENTRY_SIZE);
        Offsets { master, host, listeners, slots, upstreams, certificates, limits, total }
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

// The ABI promises these; a change here is a layout change.
const _: () = assert!(HEADER_SIZE == 192);
const _: () = assert!(UPSTREAM_ENTRY_SIZE == 192);
const _: () = assert!(LIMIT_ENTRY_SIZE == 64);
const _: () = assert!(std::mem::offset_of!(Header, limits_offset) == 176);
const _: () = assert!(SLOT_SIZE.is_multiple_of(64));
// Fields appended after the histogram live in the slot's former padding.
const _: () = assert!(SLOT_SIZE == 1152);
const _: () = assert!(MASTER_SIZE.is_multiple_of(64));
const _: () = assert!(HOST_SIZE.is_multiple_of(64));
const _: () = assert!(INTERFACE_ENTRY_SIZE == 64);
const _: () = assert!(std::mem::align_of::<Slot>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 1);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(4), 3);
        assert_eq!(latency_bucket(1023), 10);
        assert_eq!(latency_bucket(1024), 11);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }
}
