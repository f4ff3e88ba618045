//! Renders a [`Snapshot`] as the text table and the JSON document `tine stats`
//! prints. Field names come from the layout's field tables, so a counter added
//! there shows up here without further change.

use crate::layout::{Kind, HOST_FIELDS, LATENCY_BUCKETS, MASTER_FIELDS, SLOT_FIELDS};
use crate::snapshot::{SlotValues, Snapshot};
use crate::view::Liveness;
use serde_json::{json, Map, Value};
use std::fmt::Write;

/// The JSON document: `master`, `host`, `listeners`, `total` and a `workers`
/// array (only `worker`'s slot when given).
pub fn json(s: &Snapshot, worker: Option<usize>) -> Value {
    let mut master = Map::new();
    master.insert("pid".into(), json!(s.master_pid));
    master.insert("state".into(), json!(s.state));
    master.insert("live".into(), json!(s.liveness == Liveness::Live));
    master.insert("start_unix_ms".into(), json!(s.start_unix_ms));
    master.insert("heartbeat_unix_ms".into(), json!(s.heartbeat_unix_ms));
    master.insert("uptime_seconds".into(), json!(uptime_ms(s) / 1000));
    for (i, f) in MASTER_FIELDS.iter().enumerate() {
        master.insert(f.name.into(), json!(s.master.get(i)));
    }
    let mut total: Map<String, Value> =
        s.totals().values.into_iter().map(|(n, v)| (n.to_string(), json!(v))).collect();
    total.insert("latency_us".into(), json!(s.latency().to_vec()));
    total.insert("sampled_rtt_us".into(), json!(s.sampled_rtt().to_vec()));
    let mut host = Map::new();
    for (i, f) in HOST_FIELDS.iter().enumerate() {
        host.insert(f.name.into(), json!(s.host.get(i)));
    }
    host.insert("interfaces".into(), json!(s.interfaces));
    let workers: Vec<Value> = selected(s, worker).map(worker_json).collect();
    json!({
        "path": s.path,
        "master": master,
        "host": host,
        "upstreams": s.upstreams,
        "certificates": s.certificates.iter().map(|c| json!({
            "name": c.name,
            "file": c.file,
            "not_after_unix": c.not_after_unix,
            "expires_in_seconds": c.expires_in(s.taken_unix_ms),
            "source": c.source,
            "next_attempt_unix": c.next_attempt_unix,
            "acme_failures": c.failures,
            "last_error": c.last_error,
        })).collect::<Vec<_>>(),
        "client_limits": s.limits,
        "listeners": s.listeners,
        "total": total,
        "workers": workers,
    })
}

fn worker_json(slot: &SlotValues) -> Value {
    let mut w = Map::new();
    w.insert("slot".into(), json!(slot.slot));
    for (i, f) in SLOT_FIELDS.iter().enumerate() {
        let v = shown(f.kind, slot.fields.get(i));
        let value = match f.name {
            "state" => json!(slot.state()),
            "cpu" if v == u64::MAX => Value::Null,
            _ => json!(v),
        };
        w.insert(f.name.into(), value);
    }
    w.insert("latency_us".into(), json!(slot.fields.latency_us.to_vec()));
    w.insert("sampled_rtt_us".into(), json!(slot.fields.sampled_rtt_us.to_vec()));
    Value::Object(w)
}

fn selected(s: &Snapshot, worker: Option<usize>) -> impl Iterator<Item = &SlotValues> {
    s.used_slots().filter(move |v| worker.is_none_or(|w| v.slot == w))
}

/// The latency below which a fraction `q` of the requests in `hist` finished, in
/// microseconds, interpolated within its log2 bucket; `None` with no requests.
pub fn percentile(hist: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    if total == 0 {
        return None;
    }
    let target = (q * total as f64).max(1.0);
    let mut seen = 0.0;
    for (i, &n) in hist.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if seen + n as f64 >= target {
            let low = if i == 0 { 0.0 } else { (1u64 << (i - 1)) as f64 };
            let high = (1u64 << i) as f64;
            return Some(low + (high - low) * (target - seen) / n as f64);
        }
        seen += n as f64;
    }
    Some((1u64 << (LATENCY_BUCKETS - 1)) as f64)
}

/// `p50 850us  p90 1.2ms  p99 3.4ms` for a histogram.
fn quantiles(hist: &[u64; LATENCY_BUCKETS]) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}",
        human_latency(percentile(hist, 0.5)),
        human_latency(percentile(hist, 0.9)),
        human_latency(percentile(hist, 0.99))
    )
}

/// Bucket-wise difference of two histograms (newer minus older).
pub fn histogram_delta(new: &[u64; LATENCY_BUCKETS], old: &[u64; LATENCY_BUCKETS]) -> [u64; LATENCY_BUCKETS] {
    std::array::from_fn(|i| new[i].saturating_sub(old[i]))
}

/// A latency in microseconds for people: `850us`, `12.5ms`, `1.20s`.
pub fn human_latency(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1000.0 => format!("{us:.0}us"),
        Some(us) if us < 1_000_000.0 => format!("{:.1}ms", us / 1000.0),
        Some(us) => format!("{:.2}s", us / 1_000_000.0),
    }
}

fn uptime_ms(s: &Snapshot) -> u64 {
    let end = match s.liveness {
        Liveness::Live => s.taken_unix_ms,
        Liveness::Stale { since_unix_ms } => since_unix_ms,
    };
    end.saturating_sub(s.start_unix_ms)
}

/// Columns of the per-worker table: (heading, field name).
const TABLE: &[(&str, &str)] = &[
    ("accepted", "accepted"),
    ("active", "active"),
    ("requests", "requests"),
    ("2xx", "responses_2xx"),
    ("3xx", "responses_3xx"),
    ("4xx", "responses_4xx"),
    ("5xx", "responses_5xx"),
    ("rx bytes", "bytes_received"),
    ("tx bytes", "bytes_sent"),
    ("timeouts", "timeouts"),
    ("errors", "parse_errors"),
];

/// The human table: a summary line, totals, then one row per worker slot.
pub fn text(s: &Snapshot, worker: Option<usize>) -> String {
    let mut out = String::new();
    let live = match s.liveness {
        Liveness::Live => String::new(),
        Liveness::Stale { .. } => " (master gone: figures are final)".into(),
    };
    let _ = writeln!(
        out,
        "tine master {} {}{}, up {}, generation {}, {} worker slot(s) in use",
        s.master_pid,
        s.state,
        live,
        human_duration(uptime_ms(s) / 1000),
        s.master.generation,
        s.used_slots().count()
    );
    let _ = writeln!(out, "region {}  listening on {}", s.path, s.listeners.join(", "));
    let _ = writeln!(
        out,
        "reloads {} (failed {}), respawns {}, watchdog kills {}, backoffs {}",
        s.master.reloads,
        s.master.reloads_failed,
        s.master.respawns,
        s.master.watchdog_kills,
        s.master.backoffs
    );
    out.push('\n');
    let _ = write!(out, "{:>5} {:>8} {:>4} {:<9} {:>4}", "slot", "pid", "cpu", "state", "gen");
    for (heading, _) in TABLE {
        let _ = write!(out, " {heading:>12}");
    }
    out.push('\n');
    for slot in selected(s, worker) {
        let f = &slot.fields;
        let cpu = if f.cpu == u64::MAX { "-".to_string() } else { f.cpu.to_string() };
        let _ =
            write!(out, "{:>5} {:>8} {:>4} {:<9} {:>4}", slot.slot, f.pid, cpu, slot.state(), f.generation);
        for (_, name) in TABLE {
            let _ = write!(out, " {:>12}", slot_value(slot, name));
        }
        out.push('\n');
    }
    let totals = s.totals();
    let _ = write!(out, "{:>5} {:>8} {:>4} {:<9} {:>4}", "total", "", "", "", "");
    for (_, name) in TABLE {
        let _ = write!(out, " {:>12}", totals.get(name).unwrap_or(0));
    }
    out.push('\n');
    let hist = s.latency();
    let _ = writeln!(out, "\nlatency since start: {}", quantiles(&hist));
    out.push_str(&path_line(s));
    out.push_str(&refused_line(s));
    out.push_str(&tls_lines(s));
    out.push_str(&http2_line(s));
    out.push_str(&grpc_line(s));
    out.push_str(&limit_lines(s));
    out.push_str(&upstream_lines(s));
    out.push_str(&host_lines(s, None));
    out
}

/// The network path as TCP_INFO of sampled connections shows it.
fn path_line(s: &Snapshot) -> String {
    let t = s.totals();
    let v = |name: &str| t.get(name).unwrap_or(0);
    let samples = v("tcp_info_samples");
    if samples == 0 {
        return String::new();
    }
    let rtt = s.sampled_rtt();
    let retrans = v("sampled_retrans_segs");
    let sent = v("sampled_segs_out").max(1);
    format!(
        "client RTT ({samples} connections sampled): p50 {}  p90 {}  p99 {}; retransmitted {retrans} of {} segments ({:.2}%)\n",
        human_latency(percentile(&rtt, 0.5)),
        human_latency(percentile(&rtt, 0.9)),
        human_latency(percentile(&rtt, 0.99)),
        v("sampled_segs_out"),
        retrans as f64 * 100.0 / sent as f64
    )
}

/// Refused requests by reason, when any was refused.
fn refused_line(s: &Snapshot) -> String {
    let t = s.totals();
    let v = |name: &str| t.get(name).unwrap_or(0);
    if v("parse_errors") == 0 {
        return String::new();
    }
    format!(
        "refused requests: {} malformed, {} bad target, {} URI too long (414), {} head too large (431), {} version (505), {} coding (501)\n",
        v("rejected_malformed"),
        v("rejected_target"),
        v("rejected_uri_too_long"),
        v("rejected_head_too_large"),
        v("rejected_version"),
        v("rejected_not_implemented")
    )
}

/// HTTP/2 connections, their streams' resets and their GOAWAYs, when any
/// client ever spoke HTTP/2.
fn http2_line(s: &Snapshot) -> String {
    let t = s.totals();
    let v = |name: &str| t.get(name).unwrap_or(0);
    if v("http2_connections") == 0 {
        return String::new();
    }
    let share = 100.0 * v("http2_requests") as f64 / v("requests").max(1) as f64;
    format!(
        "http2: connections {} (open {}), requests {} ({share:.0}% of all); streams reset by clients {}, \
         by tine {} (stalled {}); GOAWAY graceful {}, abuse {}, protocol error {}\n",
        v("http2_connections"),
        v("http2_active"),
        v("http2_requests"),
        v("http2_client_resets"),
        v("http2_tine_resets"),
        v("http2_stalled"),
        v("http2_goaway_graceful"),
        v("http2_goaway_calm"),
        v("http2_goaway_error"),
    )
}

/// gRPC responses by grpc-status (the statuses seen), when there were any.
fn grpc_line(s: &Snapshot) -> String {
    let t = s.totals();
    let seen: Vec<String> = SLOT_FIELDS
        .iter()
        .filter_map(|f| f.name.strip_prefix("grpc_").filter(|n| *n != "by_tine").map(|n| (f.name, n)))
        .filter_map(|(field, status)| t.get(field).filter(|&n| n > 0).map(|n| format!("{status} {n}")))
        .collect();
    if seen.is_empty() {
        return String::new();
    }
    format!("grpc: {} (answered by tine {})\n", seen.join(", "), t.get("grpc_by_tine").unwrap_or(0))
}

/// A line per `[[client_limit]]`.
fn limit_lines(s: &Snapshot) -> String {
    let mut out = String::new();
    for l in &s.limits {
        let f = &l.fields;
        let _ = writeln!(
            out,
            "client limit {}: checked {}, delayed {}, refused {}; connections refused {}; keys {} of {}, \
             evictions {}",
            l.name, f.checked, f.delayed, f.refused, f.connections_refused, l.keys, l.max_keys, f.evictions
        );
    }
    out
}

/// TLS handshakes and their failures, when anything was ever TLS.
fn tls_lines(s: &Snapshot) -> String {
    let t = s.totals();
    let v = |name: &str| t.get(name).unwrap_or(0);
    let failed = [
        "tls_failed_protocol",
        "tls_failed_timeout",
        "tls_failed_no_certificate",
        "tls_failed_no_common",
        "tls_failed_plain_http",
    ];
    let mut out = String::new();
    for c in &s.certificates {
        let _ = writeln!(out, "{}", certificate_line(c, s.taken_unix_ms));
    }
    if v("tls_handshakes") == 0 && failed.iter().all(|f| v(f) == 0) {
        return out;
    }
    out + &format!(
        "tls: handshakes {} (resumed {}, TLS 1.3 {}, TLS 1.2 {}); failed: protocol {}, timeout {}, \
         no certificate {}, nothing in common {}, plain HTTP {}; record errors {}\n",
        v("tls_handshakes"),
        v("tls_resumed"),
        v("tls_v1_3"),
        v("tls_v1_2"),
        v("tls_failed_protocol"),
        v("tls_failed_timeout"),
        v("tls_failed_no_certificate"),
        v("tls_failed_no_common"),
        v("tls_failed_plain_http"),
        v("tls_record_errors"),
    )
}

fn upstream_lines(s: &Snapshot) -> String {
    if s.upstreams.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{:<36} {:>5} {:>6} {:>10} {:>9} {:>9} {:>10} {:>10} {:>6} {:>13} {:>11}\n",
        "upstream",
        "state",
        "active",
        "requests",
        "failures",
        "timeouts",
        "pool hits",
        "pool miss",
        "open",
        "spliced",
        "copied"
    );
    for u in &s.upstreams {
        let f = &u.fields;
        let state = if f.down > 0 { "down" } else { "up" };
        let _ = writeln!(
            out,
            "{:<36} {:>5} {:>6} {:>10} {:>9} {:>9} {:>10} {:>10} {:>6} {:>13} {:>11}",
            u.name,
            state,
            f.active,
            f.requests,
            f.failures,
            f.timeouts,
            f.pool_hits,
            f.pool_misses,
            f.open,
            f.bytes_spliced,
            f.bytes_copied
        );
        // Counters from a region may be anything: compared, never summed.
        let tls = [
            f.tls_handshakes,
            f.tls_verify_expired,
            f.tls_verify_unknown_issuer,
            f.tls_verify_name,
            f.tls_verify_other,
            f.tls_failed,
        ];
        if tls.iter().any(|&v| v > 0) {
            let _ = writeln!(
                out,
                "  tls: handshakes {} (resumed {}), certificate refused: expired {}, unknown issuer {}, wrong name {}, other {}; failed {}",
                f.tls_handshakes,
                f.tls_resumed,
                f.tls_verify_expired,
                f.tls_verify_unknown_issuer,
                f.tls_verify_name,
                f.tls_verify_other,
                f.tls_failed
            );
        }
        if f.h2_connections > 0 {
            let _ = writeln!(
                out,
                "  http/2: connections {}, streams {}, goaways received {}, streams reset {}",
                f.h2_connections, f.h2_streams, f.h2_goaways, f.h2_resets
            );
        }
    }
    out
}

/// Host TCP health: cumulative, or per second against an earlier snapshot.
fn host_lines(s: &Snapshot, prev: Option<(&Snapshot, f64)>) -> String {
    let field = |snap: &Snapshot, name: &str| {
        HOST_FIELDS.iter().position(|f| f.name == name).map_or(0, |i| snap.host.get(i))
    };
    let show = |name: &str| match prev {
        Some((p, secs)) => format!("{:.0}/s", field(s, name).saturating_sub(field(p, name)) as f64 / secs),
        None => field(s, name).to_string(),
    };
    let mut out = format!(
        "host tcp: opens {} active / {} passive, attempt fails {}, resets {}, retransmits {}, in errors {}\n\
         host accept queues: overflows {}, drops {}\n",
        show("tcp_active_opens"),
        show("tcp_passive_opens"),
        show("tcp_attempt_fails"),
        show("tcp_estab_resets"),
        show("tcp_retrans_segs"),
        show("tcp_in_errs"),
        show("tcp_listen_overflows"),
        show("tcp_listen_drops"),
    );
    for iface in &s.interfaces {
        let _ = writeln!(
            out,
            "interface {:<10} rx {} bytes ({} dropped)  tx {} bytes ({} dropped)",
            iface.name, iface.rx_bytes, iface.rx_drops, iface.tx_bytes, iface.tx_drops
        );
    }
    out
}

/// One frame of `tine stats --watch`: rates against the previous snapshot,
/// recent latency percentiles, one row per worker with CPU%, host TCP health.
pub fn watch_frame(prev: &Snapshot, s: &Snapshot, worker: Option<usize>) -> String {
    let secs = (s.taken_unix_ms.saturating_sub(prev.taken_unix_ms) as f64 / 1000.0).max(0.001);
    let (now_t, prev_t) = (s.totals(), prev.totals());
    let rate =
        |name: &str| now_t.get(name).unwrap_or(0).saturating_sub(prev_t.get(name).unwrap_or(0)) as f64 / secs;
    let recent = histogram_delta(&s.latency(), &prev.latency());
    let mut out = String::new();
    let live = match s.liveness {
        Liveness::Live => "",
        Liveness::Stale { .. } => "  MASTER GONE",
    };
    let _ = writeln!(
        out,
        "tine master {} {}{}  up {}  generation {}  reloads {} (failed {})  respawns {}  watchdog kills {}",
        s.master_pid,
        s.state,
        live,
        human_duration(uptime_ms(s) / 1000),
        s.master.generation,
        s.master.reloads,
        s.master.reloads_failed,
        s.master.respawns,
        s.master.watchdog_kills
    );
    let _ = writeln!(
        out,
        "requests {:.0}/s  accepted {:.0}/s  in {}/s  out {}/s  open connections {}  errors {:.0}/s  timeouts {:.0}/s",
        rate("requests"),
        rate("accepted"),
        human_bytes(rate("bytes_received")),
        human_bytes(rate("bytes_sent")),
        now_t.get("active").unwrap_or(0),
        rate("parse_errors"),
        rate("timeouts"),
    );
    let _ = writeln!(out, "latency (last {secs:.1}s): {}\n", quantiles(&recent));
    let _ = writeln!(
        out,
        "{:>5} {:>8} {:>4} {:<9} {:>6} {:>10} {:>9} {:>10} {:>10} {:>9}",
        "slot", "pid", "cpu", "state", "CPU%", "RSS", "active", "req/s", "out/s", "p99"
    );
    for v in selected(s, worker) {
        let old = prev.slots.iter().find(|p| p.slot == v.slot);
        let d = |f: fn(&SlotValues) -> u64| old.map_or(0, |o| f(v).saturating_sub(f(o)));
        let cpu_pct = d(|x| x.fields.cpu_time_us) as f64 / (secs * 1e6) * 100.0;
        let p99 = old.map(|o| histogram_delta(&v.fields.latency_us, &o.fields.latency_us));
        let cpu = if v.fields.cpu == u64::MAX { "-".to_string() } else { v.fields.cpu.to_string() };
        let _ = writeln!(
            out,
            "{:>5} {:>8} {:>4} {:<9} {:>5.1}% {:>10} {:>9} {:>10.0} {:>10} {:>9}",
            v.slot,
            v.fields.pid,
            cpu,
            v.state(),
            cpu_pct,
            human_bytes(v.fields.rss_bytes as f64),
            shown(Kind::Gauge, v.fields.active),
            d(|x| x.fields.requests) as f64 / secs,
            human_bytes(d(|x| x.fields.bytes_sent) as f64 / secs),
            human_latency(p99.and_then(|h| percentile(&h, 0.99))),
        );
    }
    out.push('\n');
    out.push_str(&host_lines(s, Some((prev, secs))));
    out
}

fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0}{}", UNITS[0])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

fn slot_value(slot: &SlotValues, name: &str) -> u64 {
    SLOT_FIELDS
        .iter()
        .position(|f| f.name == name && f.kind != Kind::Info)
        .map_or(0, |i| shown(SLOT_FIELDS[i].kind, slot.fields.get(i)))
}

/// A gauge read mid-update can dip below zero for an instant; show zero.
fn shown(kind: Kind, value: u64) -> u64 {
    if kind == Kind::Gauge && (value as i64) < 0 {
        0
    } else {
        value
    }
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `certificate NAME (SOURCE, FILE) expires in D days`, and for one
/// obtained by ACME when it is renewed next, or why its renewal fails.
fn certificate_line(c: &crate::certificates::CertificateExpiry, now_unix_ms: u64) -> String {
    use crate::certificates::CertificateSource;
    let days = c.expires_in(now_unix_ms) as f64 / 86_400.0;
    let mut line =
        format!("certificate {} ({}, {}) expires in {days:.1} days", c.name, c.source.as_str(), c.file);
    if c.source == CertificateSource::File {
        return line;
    }
    let next = match c.next_attempt_unix {
        0 => "not scheduled yet".to_string(),
        at => {
            let secs = at.saturating_sub((now_unix_ms / 1000) as i64);
            if secs <= 0 {
                "now".to_string()
            } else {
                format!("in {}", crate::render::span(secs))
            }
        }
    };
    if c.failures > 0 {
        let _ = write!(
            line,
            "; ACME renewal FAILING ({} in a row: {}); next attempt {next}",
            c.failures, c.last_error
        );
    } else {
        let _ = write!(line, "; ACME renewal {next}");
    }
    line
}

/// Seconds as an operator reads them: `45s`, `12m`, `5h`, `59d`.
pub fn span(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
