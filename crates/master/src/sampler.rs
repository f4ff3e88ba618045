//! Once a second the master samples what workers cannot cheaply measure about
//! themselves, and the host's network health, into the stats region:
//! per-slot CPU time and resident memory from /proc/PID, TCP counters from
//! /proc/net/snmp and /proc/net/netstat, interface counters from /proc/net/dev.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use tine_stats::layout::INTERFACE_CAPACITY;
use tine_stats::view::set_interface_name;
use tine_stats::{Region, RegionView};

/// Keeps each slot's CPU time monotonic across worker exits: the last sample of
/// a worker that is gone is folded into its slot's base.
#[derive(Default)]
pub struct Sampler {
    base_us: HashMap<usize, u64>,
    last_us: HashMap<i32, (usize, u64)>,
}

impl Sampler {
    /// `workers` lists every live worker pid with its slot, old generations too.
    pub fn sample(&mut self, region: &Region, workers: &[(usize, i32)]) {
        let mut gone: Vec<i32> =
            self.last_us.keys().copied().filter(|p| !workers.iter().any(|w| w.1 == *p)).collect();
        gone.sort_unstable();
        for pid in gone {
            if let Some((slot, us)) = self.last_us.remove(&pid) {
                *self.base_us.entry(slot).or_default() += us;
            }
        }
        let mut cpu: HashMap<usize, u64> = HashMap::new();
        let mut rss: HashMap<usize, u64> = HashMap::new();
        for &(slot, pid) in workers {
            if let Some(us) = cpu_time_us(pid) {
                self.last_us.insert(pid, (slot, us));
            }
            *cpu.entry(slot).or_default() += self.last_us.get(&pid).map_or(0, |&(_, us)| us);
            *rss.entry(slot).or_default() += rss_bytes(pid).unwrap_or(0);
        }
        for slot in 0..region.slot_count() {
            let base = self.base_us.get(&slot).copied().unwrap_or(0);
            let now = base + cpu.get(&slot).copied().unwrap_or(0);
            let stats = region.slot(slot);
            // Never let a lost sample make the counter go backwards.
            stats.cpu_time_us.fetch_max(now, Relaxed);
            stats.rss_bytes.store(rss.get(&slot).copied().unwrap_or(0), Relaxed);
        }
        sample_host(region);
    }
}

/// utime + stime of a process, in microseconds.
fn cpu_time_us(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1_000_000 / clock_ticks_per_second())
}

fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * tine_net::sys::page_size())
}

fn clock_ticks_per_second() -> u64 {
    tine_net::sys::clock_ticks_per_second()
}

fn sample_host(region: &Region) {
    let host = region.host();
    let f = &host.fields;
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let tcp = |table: &str, name: &str| proc_net_value(&snmp, table, name);
    let pairs = [
        (&f.tcp_active_opens, tcp("Tcp", "ActiveOpens")),
        (&f.tcp_passive_opens, tcp("Tcp", "PassiveOpens")),
        (&f.tcp_attempt_fails, tcp("Tcp", "AttemptFails")),
        (&f.tcp_estab_resets, tcp("Tcp", "EstabResets")),
        (&f.tcp_retrans_segs, tcp("Tcp", "RetransSegs")),
        (&f.tcp_in_errs, tcp("Tcp", "InErrs")),
        (&f.tcp_listen_overflows, proc_net_value(&netstat, "TcpExt", "ListenOverflows")),
        (&f.tcp_listen_drops, proc_net_value(&netstat, "TcpExt", "ListenDrops")),
    ];
    for (field, value) in pairs {
        if let Some(v) = value {
            field.store(v, Relaxed);
        }
    }
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let interfaces = parse_net_dev(&dev);
    for (entry, iface) in host.interfaces.iter().zip(interfaces.iter().take(INTERFACE_CAPACITY)) {
        set_interface_name(entry, &iface.0);
        entry.rx_bytes.store(iface.1, Relaxed);
        entry.rx_drops.store(iface.2, Relaxed);
        entry.tx_bytes.store(iface.3, Relaxed);
        entry.tx_drops.store(iface.4, Relaxed);
    }
    f.interface_count.store(interfaces.len().min(INTERFACE_CAPACITY) as u64, Relaxed);
    f.sampled_unix_ms.store(tine_stats::unix_millis(), Relaxed);
}

/// A value from the two-line tables of /proc/net/snmp and /proc/net/netstat:
/// `Tcp: Name1 Name2 ...` followed by `Tcp: 1 2 ...`.
fn proc_net_value(text: &str, table: &str, name: &str) -> Option<u64> {
    let prefix = format!("{table}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names.split_whitespace().position(|n| n == name)?;
    // The counters are unsigned except a few (MaxConn) that can read -1.
    values.split_whitespace().nth(index)?.parse::<i64>().ok().map(|v| v.max(0) as u64)
}

/// (name, rx bytes, rx drops, tx bytes, tx drops) per interface.
fn parse_net_dev(text: &str) -> Vec<(String, u64, u64, u64, u64)> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (v.len() >= 12).then(|| (name.trim().to_string(), v[0], v[3], v[8], v[11]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tables() {
        let snmp =
            "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm ActiveOpens MaxConn\nTcp: 1 42 -1\n";
        assert_eq!(proc_net_value(snmp, "Tcp", "ActiveOpens"), Some(42));
        assert_eq!(proc_net_value(snmp, "Tcp", "MaxConn"), Some(0));
        assert_eq!(proc_net_value(snmp, "Tcp", "Nope"), None);
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n    lo: 100 2 0 3 0 0 0 0 200 4 0 5 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev), vec![("lo".to_string(), 100, 3, 200, 5)]);
    }

    #[test]
    fn own_process_has_cpu_time_and_memory() {
        let me = std::process::id() as i32;
        assert!(cpu_time_us(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
    }
}
