//! This worker's counters in the stats region, and the ways they are
//! counted: the slot, its upstream entries and gauges (changed only through
//! [`tine_stats::Gauges`]), and the whole region for the admin documents.

use std::sync::atomic::Ordering::Relaxed;
use tine_stats::layout::UpstreamStats;
use tine_stats::{Region, Slot};

/// This worker's counters in the stats region.
pub struct Counters<'a> {
    /// The worker's slot.
    pub slot: &'a Slot,
    /// This worker's entries of the region's upstream table.
    pub upstreams: &'a [UpstreamStats],
    /// The slot's gauges, which change only through this (see tine_stats::gauges).
    pub gauges: tine_stats::Gauges<'a>,
    /// The whole region, for the admin listener's documents.
    pub region: &'a Region,
}

/// Why a request was refused before anything answered it.
#[derive(Clone, Copy, Debug)]
pub enum Rejection {
    /// The head: its error says which limit or rule it broke.
    Head(tine_http::HttpError),
    /// The target does not normalise to a safe path.
    Target,
    /// The body's framing is broken (a chunked body bound for an upstream).
    Body,
}

/// The status codes of gRPC (grpc-status), as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum GrpcStatus {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcStatus {
    /// The status a `grpc-status` value names; one that is not a number
    /// of the protocol counts as UNKNOWN.
    pub fn parse(value: &[u8]) -> GrpcStatus {
        let code = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<u16>().ok());
        match code.unwrap_or(2) {
            0 => GrpcStatus::Ok,
            1 => GrpcStatus::Cancelled,
            3 => GrpcStatus::InvalidArgument,
            4 => GrpcStatus::DeadlineExceeded,
            5 => GrpcStatus::NotFound,
            6 => GrpcStatus::AlreadyExists,
            7 => GrpcStatus::PermissionDenied,
            8 => GrpcStatus::ResourceExhausted,
            9 => GrpcStatus::FailedPrecondition,
            10 => GrpcStatus::Aborted,
            11 => GrpcStatus::OutOfRange,
            12 => GrpcStatus::Unimplemented,
            13 => GrpcStatus::Internal,
            14 => GrpcStatus::Unavailable,
            15 => GrpcStatus::DataLoss,
            16 => GrpcStatus::Unauthenticated,
            _ => GrpcStatus::Unknown,
        }
    }
}

impl Counters<'_> {
    /// A gRPC response ended with `status`; `by_tine`: tine answered it.
    pub fn count_grpc(&self, status: GrpcStatus, by_tine: bool) {
        let s = self.slot;
        let counter = match status {
            GrpcStatus::Ok => &s.grpc_ok,
            GrpcStatus::Cancelled => &s.grpc_cancelled,
            GrpcStatus::Unknown => &s.grpc_unknown,
            GrpcStatus::InvalidArgument => &s.grpc_invalid_argument,
            GrpcStatus::DeadlineExceeded => &s.grpc_deadline_exceeded,
            GrpcStatus::NotFound => &s.grpc_not_found,
            GrpcStatus::AlreadyExists => &s.grpc_already_exists,
            GrpcStatus::PermissionDenied => &s.grpc_permission_denied,
            GrpcStatus::ResourceExhausted => &s.grpc_resource_exhausted,
            GrpcStatus::FailedPrecondition => &s.grpc_failed_precondition,
            GrpcStatus::Aborted => &s.grpc_aborted,
            GrpcStatus::OutOfRange => &s.grpc_out_of_range,
            GrpcStatus::Unimplemented => &s.grpc_unimplemented,
            GrpcStatus::Internal => &s.grpc_internal,
            GrpcStatus::Unavailable => &s.grpc_unavailable,
            GrpcStatus::DataLoss => &s.grpc_data_loss,
            GrpcStatus::Unauthenticated => &s.grpc_unauthenticated,
        };
        counter.fetch_add(1, Relaxed);
        if by_tine {
            s.grpc_by_tine.fetch_add(1, Relaxed);
        }
    }

    /// A refused request: counted in parse_errors and by its reason.
    pub fn count_rejection(&self, why: Rejection) {
        use tine_http::HttpError;
        let s = self.slot;
        s.parse_errors.fetch_add(1, Relaxed);
        let reason = match why {
            Rejection::Target => &s.rejected_target,
            Rejection::Body | Rejection::Head(HttpError::BadRequest(_)) => &s.rejected_malformed,
            Rejection::Head(HttpError::UriTooLong) => &s.rejected_uri_too_long,
            Rejection::Head(HttpError::HeadTooLarge) => &s.rejected_head_too_large,
            Rejection::Head(HttpError::VersionNotSupported) => &s.rejected_version,
            Rejection::Head(HttpError::NotImplemented(_)) => &s.rejected_not_implemented,
        };
        reason.fetch_add(1, Relaxed);
    }

    /// A response starts: counted by its status class.
    pub fn count_response(&self, status: tine_http::Status) {
        let s = self.slot;
        let counter = match status.class() {
            1 => &s.responses_1xx,
            2 => &s.responses_2xx,
            3 => &s.responses_3xx,
            4 => &s.responses_4xx,
            _ => &s.responses_5xx,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// A TLS handshake completed.
    pub fn count_handshake(&self, done: crate::transport::Handshake) {
        let s = self.slot;
        s.tls_handshakes.fetch_add(1, Relaxed);
        if done.resumed {
            s.tls_resumed.fetch_add(1, Relaxed);
        }
        let version = if done.tls13 { &s.tls_v1_3 } else { &s.tls_v1_2 };
        version.fetch_add(1, Relaxed);
    }

    /// A TLS handshake failed, by class.
    pub fn count_tls_failure(&self, failure: crate::transport::TlsFailure) {
        use crate::transport::TlsFailure;
        let s = self.slot;
        let counter = match failure {
            TlsFailure::Protocol => &s.tls_failed_protocol,
            TlsFailure::Timeout => &s.tls_failed_timeout,
            TlsFailure::NoCertificate => &s.tls_failed_no_certificate,
            TlsFailure::NoCommon => &s.tls_failed_no_common,
            TlsFailure::PlainHttp => &s.tls_failed_plain_http,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// What TCP_INFO said of a closing connection's path.
    pub fn record_tcp_info(&self, info: tine_net::sys::TcpInfo) {
        let s = self.slot;
        s.tcp_info_samples.fetch_add(1, Relaxed);
        s.sampled_rtt_us_sum.fetch_add(u64::from(info.rtt_us), Relaxed);
        s.sampled_rtt_us[tine_stats::layout::latency_bucket(u64::from(info.rtt_us))].fetch_add(1, Relaxed);
        s.sampled_retrans_segs.fetch_add(u64::from(info.total_retrans), Relaxed);
        s.sampled_segs_out.fetch_add(u64::from(info.segs_out), Relaxed);
    }

    /// A request took `took`, from its first byte to its response's last.
    pub fn record_latency(&self, took: std::time::Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.slot.latency_us[tine_stats::layout::latency_bucket(us)].fetch_add(1, Relaxed);
        self.slot.latency_us_sum.fetch_add(us, Relaxed);
    }
}
