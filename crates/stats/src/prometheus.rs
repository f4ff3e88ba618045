//! The Prometheus text exposition format (version 0.0.4) of a snapshot: counters
//! as `_total`, the latency histogram as a Prometheus histogram in seconds, one
//! `worker` label per slot. `tine stats --prometheus` and the admin listener's
//! `/metrics` both print this.

use crate::layout::{
    Kind, HOST_FIELDS, LATENCY_BUCKETS, LIMIT_FIELDS, MASTER_FIELDS, SLOT_FIELDS, UPSTREAM_FIELDS,
};
use crate::snapshot::{SlotValues, Snapshot};
use crate::view::Liveness;
use std::fmt::Write;

/// A label name and value.
type Label = (&'static str, &'static str);

/// How a slot field appears: metric name (without `tine_`), a divisor turning
/// its unit into the metric's base unit, and an extra label.
fn slot_metric(name: &str) -> Option<(&'static str, f64, Option<Label>)> {
    Some(match name {
        "accepted" => ("connections_accepted", 1.0, None),
        "active" => ("connections_active", 1.0, None),
        "requests" => ("requests", 1.0, None),
        "responses_1xx" => ("responses", 1.0, Some(("class", "1xx"))),
        "responses_2xx" => ("responses", 1.0, Some(("class", "2xx"))),
        "responses_3xx" => ("responses", 1.0, Some(("class", "3xx"))),
        "responses_4xx" => ("responses", 1.0, Some(("class", "4xx"))),
        "responses_5xx" => ("responses", 1.0, Some(("class", "5xx"))),
        "bytes_received" => ("received_bytes", 1.0, None),
        "bytes_sent" => ("sent_bytes", 1.0, None),
        "bytes_sent_sendfile" => ("sent_sendfile_bytes", 1.0, None),
        "timeouts" => ("connection_timeouts", 1.0, None),
        "parse_errors" => ("parse_errors", 1.0, None),
        "closed_by_reset" => ("connection_resets", 1.0, None),
        "cpu_time_us" => ("cpu_seconds", 1e6, None),
        "rss_bytes" => ("resident_memory_bytes", 1.0, None),
        "heartbeat_unix_ms" => ("worker_heartbeat_timestamp_seconds", 1e3, None),
        "generation" => ("worker_generation", 1.0, None),
        "closed_idle_at_limit" => ("connections_closed_idle_at_limit", 1.0, None),
        "tls_handshakes" => ("tls_handshakes", 1.0, None),
        "tls_resumed" => ("tls_handshakes_resumed", 1.0, None),
        "tls_v1_3" => ("tls_handshakes_by_version", 1.0, Some(("version", "1.3"))),
        "tls_v1_2" => ("tls_handshakes_by_version", 1.0, Some(("version", "1.2"))),
        "tls_failed_protocol" => ("tls_handshake_failures", 1.0, Some(("class", "protocol"))),
        "tls_failed_timeout" => ("tls_handshake_failures", 1.0, Some(("class", "timeout"))),
        "tls_failed_no_certificate" => ("tls_handshake_failures", 1.0, Some(("class", "no_certificate"))),
        "tls_failed_plain_http" => ("tls_handshake_failures", 1.0, Some(("class", "plain_http"))),
        "tls_failed_no_common" => ("tls_handshake_failures", 1.0, Some(("class", "no_common"))),
        "tls_record_errors" => ("tls_record_errors", 1.0, None),
        "tcp_info_samples" => ("tcp_info_samples", 1.0, None),
        "sampled_retrans_segs" => ("tcp_sampled_retransmitted_segments", 1.0, None),
        "sampled_segs_out" => ("tcp_sampled_sent_segments", 1.0, None),
        "rejected_malformed" => ("rejected_requests", 1.0, Some(("reason", "malformed"))),
        "rejected_target" => ("rejected_requests", 1.0, Some(("reason", "target"))),
        "rejected_uri_too_long" => ("rejected_requests", 1.0, Some(("reason", "uri_too_long"))),
        "rejected_head_too_large" => ("rejected_requests", 1.0, Some(("reason", "head_too_large"))),
        "rejected_version" => ("rejected_requests", 1.0, Some(("reason", "version"))),
        "rejected_not_implemented" => ("rejected_requests", 1.0, Some(("reason", "not_implemented"))),
        "proxy_headers" => ("proxy_protocol_headers", 1.0, None),
        "proxy_refused_untrusted" => ("proxy_protocol_refused", 1.0, Some(("reason", "untrusted"))),
        "proxy_refused_missing" => ("proxy_protocol_refused", 1.0, Some(("reason", "missing"))),
        "proxy_refused_malformed" => ("proxy_protocol_refused", 1.0, Some(("reason", "malformed"))),
        "proxy_refused_timeout" => ("proxy_protocol_refused", 1.0, Some(("reason", "timeout"))),
        "http2_connections" => ("http2_connections", 1.0, None),
        "http2_active" => ("http2_connections_active", 1.0, None),
        "http2_requests" => ("http2_requests", 1.0, None),
        "http2_client_resets" => ("http2_stream_resets", 1.0, Some(("by", "client"))),
        "http2_tine_resets" => ("http2_stream_resets", 1.0, Some(("by", "tine"))),
        "http2_stalled" => ("http2_stalled_streams", 1.0, None),
        "http2_goaway_graceful" => ("http2_goaways", 1.0, Some(("reason", "graceful"))),
        "http2_goaway_calm" => ("http2_goaways", 1.0, Some(("reason", "enhance_your_calm"))),
        "http2_goaway_error" => ("http2_goaways", 1.0, Some(("reason", "protocol_error"))),
        _ => return None,
    })
}

pub fn render(s: &Snapshot, worker: Option<usize>) -> String {
    let mut out = String::new();
    let live = s.liveness == Liveness::Live;
    family(&mut out, "up", "gauge", "1 while the master is running and its heartbeat is fresh");
    let _ = writeln!(out, "tine_up {}", u8::from(live));
    family(&mut out, "master_uptime_seconds", "gauge", "seconds since the stats region was created");
    let _ = writeln!(
        out,
        "tine_master_uptime_seconds {}",
        s.taken_unix_ms.saturating_sub(s.start_unix_ms) / 1000
    );
    for (i, f) in MASTER_FIELDS.iter().enumerate() {
        let (name, kind) = match f.kind {
            Kind::Counter => (format!("master_{}", f.name), "counter"),
            _ => (format!("master_{}", f.name), "gauge"),
        };
        family(&mut out, &name, kind, f.help);
        let _ = writeln!(out, "tine_{name}{} {}", suffix(kind), s.master.get(i));
    }

    let slots: Vec<&SlotValues> = s.used_slots().filter(|v| worker.is_none_or(|w| v.slot == w)).collect();
    family(&mut out, "worker_info", "gauge", "one series per worker slot: pid, CPU and state as labels");
    for v in &slots {
        let cpu = if v.fields.cpu == u64::MAX { String::new() } else { v.fields.cpu.to_string() };
        let _ = writeln!(
            out,
            "tine_worker_info{{worker=\"{}\",pid=\"{}\",cpu=\"{cpu}\",state=\"{}\"}} 1",
            v.slot,
            v.fields.pid,
            v.state()
        );
    }
    let mut seen = Vec::new();
    for (i, f) in SLOT_FIELDS.iter().enumerate() {
        let Some((name, divisor, label)) = slot_metric(f.name) else { continue };
        let kind = if f.kind == Kind::Counter { "counter" } else { "gauge" };
        if !seen.contains(&name) {
            seen.push(name);
            let help = match name {
                "responses" => "responses sent, by status class",
                "tls_handshakes_by_version" => "TLS handshakes completed, by protocol version",
                "tls_handshake_failures" => {
                    "TLS handshakes failed, by class: protocol, timeout, no_certificate, no_common, plain_http"
                }
                _ => f.help,
            };
            family(&mut out, name, kind, help);
        }
        for v in &slots {
            let raw = v.fields.get(i);
            let raw = if f.kind == Kind::Gauge && (raw as i64) < 0 { 0 } else { raw };
            let extra = label.map_or(String::new(), |(k, val)| format!(",{k}=\"{val}\""));
            let _ = writeln!(
                out,
                "tine_{name}{}{{worker=\"{}\"{extra}}} {}",
                suffix(kind),
                v.slot,
                number(raw as f64 / divisor)
            );
        }
    }
    histogram(&mut out, &slots);
    certificates(&mut out, s);
    upstreams(&mut out, s);
    client_limits(&mut out, s);
    host(&mut out, s);
    out
}

/// `tine_client_limit_*{limit="NAME"}`: each limit's counters over every
/// worker, and the master's count of its keys.
fn client_limits(out: &mut String, s: &Snapshot) {
    if s.limits.is_empty() {
        return;
    }
    let label = |name: &str| name.replace('\\', "\\\\").replace('"', "\\\"");
    for (i, f) in LIMIT_FIELDS.iter().enumerate() {
        let name = format!("client_limit_{}", f.name);
        family(out, &name, "counter", f.help);
        for l in &s.limits {
            let _ = writeln!(out, "tine_{name}_total{{limit=\"{}\"}} {}", label(&l.name), l.fields.get(i));
        }
    }
    family(
        out,
        "client_limit_keys",
        "gauge",
        "keys that still owe a rate debt or hold connections, sampled by the master once a second",
    );
    for l in &s.limits {
        let _ = writeln!(out, "tine_client_limit_keys{{limit=\"{}\"}} {}", label(&l.name), l.keys);
    }
    family(out, "client_limit_max_keys", "gauge", "keys the limit's table holds");
    for l in &s.limits {
        let _ = writeln!(out, "tine_client_limit_max_keys{{limit=\"{}\"}} {}", label(&l.name), l.max_keys);
    }
}

fn certificates(out: &mut String, s: &Snapshot) {
    if s.certificates.is_empty() {
        return;
    }
    family(
        out,
        "tls_certificate_expiry_seconds",
        "gauge",
        "seconds until the certificate expires (negative: expired)",
    );
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    for c in &s.certificates {
        let _ = writeln!(
            out,
            "tine_tls_certificate_expiry_seconds{{certificate=\"{}\",file=\"{}\"}} {}",
            escape(&c.name),
            escape(&c.file),
            c.expires_in(s.taken_unix_ms)
        );
    }
    let acme: Vec<_> =
        s.certificates.iter().filter(|c| c.source != crate::certificates::CertificateSource::File).collect();
    if acme.is_empty() {
        return;
    }
    family(
        out,
        "acme_certificate_info",
        "gauge",
        "certificates obtained by ACME: 1, with source acme or acme-temporary (a self-signed stand-in)",
    );
    for c in &acme {
        let _ = writeln!(
            out,
            "tine_acme_certificate_info{{certificate=\"{}\",source=\"{}\"}} 1",
            escape(&c.name),
            c.source.as_str()
        );
    }
    family(
        out,
        "acme_failures",
        "gauge",
        "ACME orders failed in a row for the certificate (0 since the last success)",
    );
    for c in &acme {
        let _ = writeln!(out, "tine_acme_failures{{certificate=\"{}\"}} {}", escape(&c.name), c.failures);
    }
    family(
        out,
        "acme_next_attempt_timestamp_seconds",
        "gauge",
        "when the certificate's next ACME order is due",
    );
    for c in &acme {
        let _ = writeln!(
            out,
            "tine_acme_next_attempt_timestamp_seconds{{certificate=\"{}\"}} {}",
            escape(&c.name),
            c.next_attempt_unix
        );
    }
}

fn upstreams(out: &mut String, s: &Snapshot) {
    for (i, f) in UPSTREAM_FIELDS.iter().enumerate() {
        let kind = if f.kind == Kind::Counter { "counter" } else { "gauge" };
        let name = format!("upstream_{}", f.name);
        family(out, &name, kind, f.help);
        for u in &s.upstreams {
            let label = u.name.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "tine_{name}{}{{upstream=\"{label}\"}} {}", suffix(kind), u.fields.get(i));
        }
    }
}

fn histogram(out: &mut String, slots: &[&SlotValues]) {
    microsecond_histogram(
        out,
        slots,
        "request_duration_seconds",
        "time from the first byte of a request to the last byte of its response",
        |f| (&f.latency_us, f.latency_us_sum),
    );
    microsecond_histogram(
        out,
        slots,
        "tcp_rtt_seconds",
        "smoothed RTT (TCP_INFO) of sampled client connections as they closed",
        |f| (&f.sampled_rtt_us, f.sampled_rtt_us_sum),
    );
}

/// A per-worker histogram kept in power-of-two microsecond buckets, in seconds.
fn microsecond_histogram(
    out: &mut String,
    slots: &[&SlotValues],
    name: &str,
    help: &str,
    pick: impl Fn(&crate::layout::SlotFields) -> (&[u64; LATENCY_BUCKETS], u64),
) {
    family(out, name, "histogram", help);
    for v in slots {
        let (buckets, sum_us) = pick(&v.fields);
        let mut cumulative = 0u64;
        for (i, &n) in buckets.iter().enumerate() {
            cumulative = cumulative.wrapping_add(n);
            let le =
                if i == LATENCY_BUCKETS - 1 { "+Inf".to_string() } else { number((1u64 << i) as f64 / 1e6) };
            let _ = writeln!(out, "tine_{name}_bucket{{worker=\"{}\",le=\"{le}\"}} {cumulative}", v.slot);
        }
        let _ = writeln!(out, "tine_{name}_sum{{worker=\"{}\"}} {}", v.slot, number(sum_us as f64 / 1e6));
        let _ = writeln!(out, "tine_{name}_count{{worker=\"{}\"}} {cumulative}", v.slot);
    }
}

fn host(out: &mut String, s: &Snapshot) {
    for (i, f) in HOST_FIELDS.iter().enumerate() {
        if f.kind != Kind::Counter {
            continue;
        }
        let name = format!("host_{}", f.name);
        family(out, &name, "counter", f.help);
        let _ = writeln!(out, "tine_{name}_total {}", s.host.get(i));
    }
    type Pick = fn(&crate::snapshot::Interface) -> u64;
    let per_interface: [(&str, &str, Pick); 4] = [
        ("host_interface_receive_bytes", "bytes received by the interface", |i| i.rx_bytes),
        ("host_interface_receive_drops", "packets the interface dropped on receive", |i| i.rx_drops),
        ("host_interface_transmit_bytes", "bytes sent by the interface", |i| i.tx_bytes),
        ("host_interface_transmit_drops", "packets the interface dropped on send", |i| i.tx_drops),
    ];
    for (name, help, pick) in per_interface {
        family(out, name, "counter", help);
        for iface in &s.interfaces {
            let label = iface.name.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "tine_{name}_total{{interface=\"{label}\"}} {}", pick(iface));
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP tine_{name}{} {help}", suffix(kind));
    let _ = writeln!(out, "# TYPE tine_{name}{} {kind}", suffix(kind));
}

fn suffix(kind: &str) -> &'static str {
    if kind == "counter" {
        "_total"
    } else {
        ""
    }
}

/// Whole numbers print without a fraction, others in plain decimal.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
