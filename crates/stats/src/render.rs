//! Renders a [`Snapshot`] as the text table and the JSON document `tine stats`
//! prints. Field names come from the layout's field tables, so a counter added
//! there shows up here without further change.

use crate::layout::{Kind, MASTER_FIELDS, SLOT_FIELDS};
use crate::reader::Liveness;
use crate::snapshot::{SlotValues, Snapshot};
use serde_json::{json, Map, Value};
use std::fmt::Write;

/// The JSON document: `master`, `listeners`, `total` and a `workers` array.
pub fn json(s: &Snapshot) -> Value {
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
    let total: Map<String, Value> =
        s.totals().values.into_iter().map(|(n, v)| (n.to_string(), json!(v))).collect();
    let workers: Vec<Value> = s.used_slots().map(worker_json).collect();
    json!({
        "path": s.path,
        "master": master,
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
    Value::Object(w)
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
pub fn text(s: &Snapshot) -> String {
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
    for slot in s.used_slots() {
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
    out
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
