//! A plain copy of every value in the region at one moment, and the totals over
//! all worker slots. Each value is loaded atomically; the set is not one atomic
//! picture, which monotonic counters do not need.

use crate::layout::{
    HostFields, Kind, LimitFields, MasterFields, RegionState, SlotFields, SlotState, UpstreamFields,
    LATENCY_BUCKETS, LIMIT_FIELDS, SLOT_FIELDS, UPSTREAM_FIELDS,
};
use crate::view::{interface_name, Liveness, RegionView};
use serde::Serialize;
use std::sync::atomic::Ordering;

/// Values of one worker slot, with its index.
#[derive(Clone, Debug, Serialize)]
pub struct SlotValues {
    pub slot: usize,
    #[serde(flatten)]
    pub fields: SlotFields,
}

impl SlotValues {
    pub fn state(&self) -> &'static str {
        SlotState::from_raw(self.fields.state).map_or("unknown", SlotState::as_str)
    }
}

/// Sums over every slot of the counters and gauges (info fields are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// (field name, sum), in field-table order.
    pub values: Vec<(&'static str, u64)>,
}

impl Totals {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

/// Counters of one network interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
}

/// One upstream server's counters, summed over every worker slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamTotals {
    pub name: String,
    #[serde(flatten)]
    pub fields: UpstreamFields,
}

/// One client limit's counters, summed over every worker slot, with the
/// master's sample of its table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LimitTotals {
    pub name: String,
    /// Keys that still owe something (a rate debt or connections open), as
    /// the master last counted them.
    pub keys: u64,
    /// Keys the table holds.
    pub max_keys: u64,
    #[serde(flatten)]
    pub fields: LimitFields,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub path: String,
    pub master_pid: u64,
    pub start_unix_ms: u64,
    pub heartbeat_unix_ms: u64,
    pub state: &'static str,
    pub liveness: Liveness,
    pub listeners: Vec<String>,
    pub master: MasterFields,
    pub host: HostFields,
    pub interfaces: Vec<Interface>,
    pub upstreams: Vec<UpstreamTotals>,
    /// The TLS certificates served, with their expiry.
    pub certificates: Vec<crate::certificates::CertificateExpiry>,
    /// The `[[client_limit]]`s in force.
    pub limits: Vec<LimitTotals>,
    pub slots: Vec<SlotValues>,
    pub taken_unix_ms: u64,
}

impl Snapshot {
    pub fn take(reader: &impl RegionView) -> Self {
        let h = reader.header();
        let host = reader.host().fields.load();
        let in_use = (host.interface_count as usize).min(h.interface_capacity as usize);
        let interfaces = reader.host().interfaces[..in_use.min(crate::layout::INTERFACE_CAPACITY)]
            .iter()
            .map(|e| Interface {
                name: interface_name(e),
                rx_bytes: e.rx_bytes.load(Ordering::Relaxed),
                rx_drops: e.rx_drops.load(Ordering::Relaxed),
                tx_bytes: e.tx_bytes.load(Ordering::Relaxed),
                tx_drops: e.tx_drops.load(Ordering::Relaxed),
            })
            .collect();
        let slots =
            (0..reader.slot_count()).map(|i| SlotValues { slot: i, fields: reader.slot(i).load() }).collect();
        let names = reader.upstream_names();
        let mut sums = vec![vec![0u64; UPSTREAM_FIELDS.len()]; names.len()];
        for slot in 0..reader.slot_count() {
            for (sum, entry) in sums.iter_mut().zip(reader.upstream_stats(slot)) {
                let values = entry.load();
                for (i, s) in sum.iter_mut().enumerate() {
                    *s = s.wrapping_add(values.get(i));
                }
            }
        }
        let upstreams = names
            .into_iter()
            .zip(sums)
            .map(|(name, mut sum)| {
                for (s, f) in sum.iter_mut().zip(UPSTREAM_FIELDS) {
                    if f.kind == Kind::Gauge && (*s as i64) < 0 {
                        *s = 0;
                    }
                }
                UpstreamTotals { name, fields: UpstreamFields::from_values(&sum) }
            })
            .collect();
        Snapshot {
            path: reader.path().display().to_string(),
            master_pid: h.master_pid.load(Ordering::Relaxed),
            start_unix_ms: h.start_unix_ms.load(Ordering::Relaxed),
            heartbeat_unix_ms: h.heartbeat_unix_ms.load(Ordering::Relaxed),
            state: RegionState::from_raw(h.state.load(Ordering::Relaxed))
                .map_or("unknown", RegionState::as_str),
            liveness: reader.liveness(),
            listeners: reader.listeners(),
            master: reader.master().load(),
            host,
            interfaces,
            upstreams,
            certificates: reader.certificates(),
            limits: limit_totals(reader),
            slots,
            taken_unix_ms: crate::unix_millis(),
        }
    }

    /// Slots a worker has ever run in. The region has spare slots so a reload
    /// can add workers; those stay out of sight until used.
    pub fn used_slots(&self) -> impl Iterator<Item = &SlotValues> {
        self.slots.iter().filter(|s| s.fields.generation > 0)
    }

    /// The latency histogram summed over every slot.
    pub fn latency(&self) -> [u64; LATENCY_BUCKETS] {
        self.summed(|f| &f.latency_us)
    }

    /// The sampled connections' RTT histogram summed over every slot.
    pub fn sampled_rtt(&self) -> [u64; LATENCY_BUCKETS] {
        self.summed(|f| &f.sampled_rtt_us)
    }

    fn summed(&self, histogram: impl Fn(&SlotFields) -> &[u64; LATENCY_BUCKETS]) -> [u64; LATENCY_BUCKETS] {
        let mut out = [0u64; LATENCY_BUCKETS];
        for s in &self.slots {
            for (o, v) in out.iter_mut().zip(histogram(&s.fields)) {
                *o = o.wrapping_add(*v);
            }
        }
        out
    }

    /// Sums every counter and gauge over the slots. Whatever the region holds,
    /// this never panics: sums wrap, and a gauge that reads below zero (a
    /// decrement seen before its increment) shows as zero.
    pub fn totals(&self) -> Totals {
        let values = SLOT_FIELDS
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind != Kind::Info)
            .map(|(i, f)| {
                let sum = self.slots.iter().fold(0u64, |acc, s| acc.wrapping_add(s.fields.get(i)));
                let sum = if f.kind == Kind::Gauge && (sum as i64) < 0 { 0 } else { sum };
                (f.name, sum)
            })
            .collect();
        Totals { values }
    }
}

/// Every limit in use with its counters summed over the slots.
fn limit_totals(reader: &impl RegionView) -> Vec<LimitTotals> {
    reader
        .limits()
        .into_iter()
        .map(|(index, name, keys, max_keys)| {
            let mut sum = vec![0u64; LIMIT_FIELDS.len()];
            for slot in 0..reader.slot_count() {
                if let Some(entry) = reader.limit_stats(slot).get(index) {
                    let values = entry.load();
                    for (i, s) in sum.iter_mut().enumerate() {
                        *s = s.wrapping_add(values.get(i));
                    }
                }
            }
            LimitTotals { name, keys, max_keys, fields: LimitFields::from_values(&sum) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::certificates::CertificateExpiry;

    #[test]
    fn a_damaged_not_after_saturates_instead_of_overflowing() {
        let cert = |not_after_unix| CertificateExpiry {
            name: "a".into(),
            file: "f".into(),
            not_after_unix,
            ..CertificateExpiry::default()
        };
        assert_eq!(cert(i64::MIN).expires_in(u64::MAX), i64::MIN);
        assert_eq!(cert(i64::MAX).expires_in(0), i64::MAX);
        assert_eq!(cert(1_000).expires_in(400_000), 600);
    }
}
