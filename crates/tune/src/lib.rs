//! The kernel tuning doctor behind `tine tune`: one table of the sysctls (and
//! the process limit) a front end depends on, each with the value tine
//! recommends and why. The table is evaluated against a configuration and
//! the running kernel: what the configuration needs and the kernel does not
//! give is a shortfall (`tine tune --check` fails, `tine serve` warns), what
//! would merely help is advice. The same table prints the sysctl.d drop-in
//! (deploy/sysctl-tine.conf is its output) and applies it.
//!
//! Values are read from a `/proc/sys`-shaped tree, normally `/proc/sys`
//! itself; tests point it at a tree of their own.

#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};
use tine_config::{Config, TcpOptions, Workers};

/// Descriptors a worker needs per connection it may hold: the client's, and
/// one to an upstream server.
const FDS_PER_CONNECTION: u64 = 2;
/// Descriptors a worker holds besides connections and its file caches:
/// listeners, epoll, pipes, logs.
const FDS_SPARE: u64 = 256;
/// Descriptors one file-cache entry may hold: the file, and a brotli and a
/// gzip representation (a precompressed sibling, or a memfd copy).
const FDS_PER_CACHED_FILE: u64 = 3;

/// The kernel's tunables, read from (and written to) a `/proc/sys` tree.
pub struct Kernel {
    root: PathBuf,
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel { root: PathBuf::from("/proc/sys") }
    }
}

impl Kernel {
    pub fn at(root: &Path) -> Self {
        Kernel { root: root.to_owned() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.replace('.', "/"))
    }

    /// The value, whitespace-normalised; None when this kernel has no such key.
    pub fn read(&self, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    pub fn write(&self, key: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.path(key), format!("{value}\n"))
    }
}

/// How a reading stands against what tine needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Better for a front end, not needed by this configuration.
    Advised,
    /// This configuration depends on it: `--check` fails, serve warns.
    Short,
    /// The kernel has no such setting (older kernel, or not in this namespace).
    Missing,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Advised => "advised",
            Status::Short => "SHORT",
            Status::Missing => "n/a",
        }
    }
}

/// One row of the doctor's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub key: String,
    pub current: Option<String>,
    /// What tine recommends (for an "at least" setting, the floor).
    pub recommended: String,
    pub status: Status,
    pub why: String,
    /// The value `--apply` sets: the recommendation where the current value
    /// falls short of it, else the current value. None: not a sysctl
    /// (a process limit), or one that cannot be written.
    pub apply: Option<String>,
}

/// What the configuration asks of the kernel.
struct Needs {
    backlog: u64,
    max_buffer: u64,
    fastopen: bool,
    congestion: Vec<String>,
    fds_per_worker: u64,
    workers: u64,
    proxies: bool,
}

impl Needs {
    fn of(config: &Config) -> Self {
        let mut options: Vec<TcpOptions> =
            config.listener_roles().into_iter().map(|(addr, role)| config.listener_tcp(addr, role)).collect();
        options.extend(config.upstreams.iter().map(|u| u.tcp.clone()));
        let mut congestion: Vec<String> = options.iter().filter_map(|o| o.congestion.clone()).collect();
        congestion.sort();
        congestion.dedup();
        let workers = match config.workers {
            Workers::Count(n) => n as u64,
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        };
        Needs {
            backlog: u64::from(config.backlog),
            max_buffer: options
                .iter()
                .flat_map(|o| [o.send_buffer, o.receive_buffer])
                .flatten()
                .map(|b| u64::from(b) * 2)
                .max()
                .unwrap_or(0),
            fastopen: options.iter().any(|o| o.fastopen.is_some_and(|q| q > 0)),
            congestion,
            fds_per_worker: config.limits.connections_per_worker as u64 * FDS_PER_CONNECTION
                + file_cache_fds(config)
                + FDS_SPARE,
            workers,
            proxies: !config.upstreams.is_empty(),
        }
    }
}

/// What the workers' file caches may hold open: each static site (a root
/// served with its own options) has a cache of `cache.open_files` entries.
fn file_cache_fds(config: &Config) -> u64 {
    let mut sites: Vec<&tine_config::StaticSite> = Vec::new();
    let routes = config.effective_routes();
    for route in &routes {
        if let tine_config::Handler::Static(site) = &route.handler {
            if !sites.contains(&site) {
                sites.push(site);
            }
        }
    }
    sites.len() as u64 * config.cache.open_files as u64 * FDS_PER_CACHED_FILE
}

fn number(v: &str) -> Option<u64> {
    v.trim().parse().ok()
}

fn fields(v: &str) -> Vec<u64> {
    v.split_whitespace().filter_map(|f| f.parse().ok()).collect()
}

/// A row for a setting that should be at least `floor` (`required` of it
/// for this configuration).
fn at_least(kernel: &Kernel, key: &str, floor: u64, required: u64, why: String) -> Finding {
    let current = kernel.read(key);
    let value = current.as_deref().and_then(number);
    let status = match value {
        None => Status::Missing,
        Some(v) if v < required => Status::Short,
        Some(v) if v < floor => Status::Advised,
        Some(_) => Status::Ok,
    };
    let recommended = floor.max(required).to_string();
    let apply = value.map(|v| v.max(floor.max(required)).to_string());
    Finding { key: key.into(), current, recommended, status, why, apply }
}

/// A row for a setting whose value should be exactly `want` (advice only).
fn exactly(kernel: &Kernel, key: &str, want: &str, why: &str) -> Finding {
    let current = kernel.read(key);
    let status = match &current {
        None => Status::Missing,
        Some(v) if v == want => Status::Ok,
        Some(_) => Status::Advised,
    };
    let apply = current.as_ref().map(|_| want.to_string());
    Finding { key: key.into(), current, recommended: want.into(), status, why: why.into(), apply }
}

/// The doctor's table for `config` on `kernel`, with the process's own
/// descriptor limit (`nofile`: soft and hard).
pub fn examine(config: &Config, kernel: &Kernel, nofile: (u64, u64)) -> Vec<Finding> {
    let needs = Needs::of(config);
    let mut rows = Vec::new();
    rows.push(at_least(
        kernel,
        "net.core.somaxconn",
        4096,
        needs.backlog,
        format!("caps every accept queue; the configuration asks for backlog {}", needs.backlog),
    ));
    rows.push(at_least(
        kernel,
        "net.ipv4.tcp_max_syn_backlog",
        8192,
        0,
        "half-open connections queued per listener; a SYN flood or a burst fills it first".into(),
    ));
    rows.push(at_least(
        kernel,
        "net.core.netdev_max_backlog",
        16384,
        0,
        "packets queued per CPU before the stack takes them; bursts beyond it are dropped".into(),
    ));
    rows.push(port_range(kernel, needs.proxies));
    let fin = kernel.read("net.ipv4.tcp_fin_timeout");
    let fin_value = fin.as_deref().and_then(number);
    rows.push(Finding {
        key: "net.ipv4.tcp_fin_timeout".into(),
        status: match fin_value {
            None => Status::Missing,
            Some(v) if v > 30 => Status::Advised,
            Some(_) => Status::Ok,
        },
        apply: fin_value.map(|v| v.min(15).to_string()),
        current: fin,
        recommended: "15".into(),
        why: "how long an orphaned connection waits in FIN-WAIT-2 holding memory".into(),
    });
    rows.push(exactly(
        kernel,
        "net.ipv4.tcp_tw_reuse",
        "1",
        "lets new upstream connections reuse ports in TIME-WAIT (outgoing only; safe)",
    ));
    rows.push(exactly(
        kernel,
        "net.ipv4.tcp_migrate_req",
        "1",
        "a closing SO_REUSEPORT socket hands its queued connections to its siblings instead of resetting them",
    ));
    rows.push(exactly(
        kernel,
        "net.ipv4.tcp_slow_start_after_idle",
        "0",
        "keep-alive connections keep their congestion window across pauses",
    ));
    rows.push(fastopen(kernel, needs.fastopen));
    for key in ["net.core.rmem_max", "net.core.wmem_max"] {
        rows.push(at_least(
            kernel,
            key,
            16 << 20,
            needs.max_buffer,
            if needs.max_buffer > 0 {
                format!("caps SO_RCVBUF/SO_SNDBUF; the configuration asks for {} bytes", needs.max_buffer)
            } else {
                "caps SO_RCVBUF/SO_SNDBUF set by a [tcp] send_buffer or receive_buffer".into()
            },
        ));
    }
    rows.push(triple_max(
        kernel,
        "net.ipv4.tcp_rmem",
        "4096 131072 16777216",
        "receive autotuning: the largest window a long fat path can open",
    ));
    rows.push(triple_max(
        kernel,
        "net.ipv4.tcp_wmem",
        "4096 16384 16777216",
        "send autotuning: how much a fast download keeps in flight",
    ));
    rows.extend(congestion(kernel, &needs.congestion));
    let fds_all = needs.fds_per_worker * needs.workers;
    rows.push(at_least(
        kernel,
        "fs.file-max",
        2_097_152,
        fds_all,
        format!(
            "descriptors system-wide: workers x (connections_per_worker x 2 + static sites x cache.open_files x {FDS_PER_CACHED_FILE} + {FDS_SPARE}) (here: {} x {} = {fds_all})",
            needs.workers, needs.fds_per_worker
        ),
    ));
    rows.push(at_least(
        kernel,
        "fs.nr_open",
        1_048_576,
        needs.fds_per_worker,
        "the ceiling of any process's descriptor limit".into(),
    ));
    rows.push(Finding {
        key: "RLIMIT_NOFILE (hard)".into(),
        current: Some(nofile.1.to_string()),
        recommended: needs.fds_per_worker.to_string(),
        status: if nofile.1 < needs.fds_per_worker { Status::Short } else { Status::Ok },
        why: format!(
            "tine raises its soft limit to the hard one; each worker needs {} (connections_per_worker x 2 + static sites x cache.open_files x {FDS_PER_CACHED_FILE} + {FDS_SPARE}): \
             LimitNOFILE= in the unit, or ulimit -Hn",
            needs.fds_per_worker
        ),
        apply: None,
    });
    rows
}

fn port_range(kernel: &Kernel, proxies: bool) -> Finding {
    let current = kernel.read("net.ipv4.ip_local_port_range");
    let range = current.as_deref().map(fields);
    let status = match range.as_deref() {
        Some([lo, hi]) if hi.saturating_sub(*lo) < 50_000 && proxies => Status::Advised,
        Some([_, _]) => Status::Ok,
        _ => Status::Missing,
    };
    let apply = match range.as_deref() {
        Some([lo, hi]) if hi.saturating_sub(*lo) < 50_000 => Some("1024 65535".to_string()),
        Some(_) => current.clone(),
        None => None,
    };
    Finding {
        key: "net.ipv4.ip_local_port_range".into(),
        current,
        recommended: "1024 65535".into(),
        status,
        why: "local ports for connections to upstream servers: one per connection per server address".into(),
        apply,
    }
}

fn fastopen(kernel: &Kernel, configured: bool) -> Finding {
    let current = kernel.read("net.ipv4.tcp_fastopen");
    let value = current.as_deref().and_then(number);
    let status = match value {
        None => Status::Missing,
        Some(v) if configured && v & 2 == 0 => Status::Short,
        Some(v) if v & 3 != 3 => Status::Advised,
        Some(_) => Status::Ok,
    };
    Finding {
        key: "net.ipv4.tcp_fastopen".into(),
        apply: value.map(|v| (v | 3).to_string()),
        current,
        recommended: "3".into(),
        status,
        why: if configured {
            "bit 2 lets listeners accept Fast Open, which a [tcp] fastopen asks for".into()
        } else {
            "1 = client, 2 = server: Fast Open saves a round trip on a returning client's first request"
                .into()
        },
    }
}

fn triple_max(kernel: &Kernel, key: &str, want: &str, why: &str) -> Finding {
    let current = kernel.read(key);
    let have = current.as_deref().map(fields).unwrap_or_default();
    let want_fields = fields(want);
    let (status, apply) = match (have.as_slice(), want_fields.as_slice()) {
        ([a, b, c], [_, _, wc]) if c < wc => (Status::Advised, Some(format!("{a} {b} {wc}"))),
        ([..], _) if have.len() == 3 => (Status::Ok, current.clone()),
        _ => (Status::Missing, None),
    };
    Finding { key: key.into(), current, recommended: want.into(), status, why: why.into(), apply }
}

/// The congestion controls: every one the configuration names must be
/// available (and allowed, for setsockopt without CAP_NET_ADMIN).
fn congestion(kernel: &Kernel, configured: &[String]) -> Vec<Finding> {
    let mut rows = Vec::new();
    let available = kernel.read("net.ipv4.tcp_available_congestion_control");
    let have: Vec<&str> = available.as_deref().map(|a| a.split(' ').collect()).unwrap_or_default();
    let missing: Vec<&String> = configured.iter().filter(|c| !have.contains(&c.as_str())).collect();
    rows.push(Finding {
        key: "net.ipv4.tcp_available_congestion_control".into(),
        current: available.clone(),
        recommended: if configured.is_empty() { "bbr cubic".into() } else { configured.join(" ") },
        status: if available.is_none() {
            Status::Missing
        } else if !missing.is_empty() {
            Status::Short
        } else {
            Status::Ok
        },
        why: if missing.is_empty() {
            "the algorithms the kernel has (modprobe tcp_bbr adds bbr)".into()
        } else {
            format!(
                "[tcp] congestion names {} which this kernel lacks: modprobe tcp_{}",
                missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                missing[0]
            )
        },
        apply: None,
    });
    let allowed = kernel.read("net.ipv4.tcp_allowed_congestion_control");
    let allowed_list: Vec<String> =
        allowed.as_deref().map(|a| a.split(' ').map(String::from).collect()).unwrap_or_default();
    let mut target = allowed_list.clone();
    for c in configured {
        if have.contains(&c.as_str()) && !target.contains(c) {
            target.push(c.clone());
        }
    }
    rows.push(Finding {
        key: "net.ipv4.tcp_allowed_congestion_control".into(),
        status: match &allowed {
            None => Status::Missing,
            Some(_) if target.len() > allowed_list.len() => Status::Advised,
            Some(_) => Status::Ok,
        },
        apply: allowed.as_ref().map(|_| target.join(" ")),
        current: allowed,
        recommended: "(the configured ones)".into(),
        why: "what an unprivileged process may choose with TCP_CONGESTION (root may choose any available)"
            .into(),
    });
    let default = kernel.read("net.ipv4.tcp_congestion_control");
    let bbr = have.contains(&"bbr");
    rows.push(Finding {
        key: "net.ipv4.tcp_congestion_control".into(),
        status: match &default {
            None => Status::Missing,
            Some(d) if bbr && d != "bbr" => Status::Advised,
            Some(_) => Status::Ok,
        },
        apply: default.clone(),
        current: default,
        recommended: "bbr (when available)".into(),
        why: "the default for every connection; bbr keeps throughput on lossy long paths (docs/tuning.md)"
            .into(),
    });
    rows
}

/// The rows this configuration depends on and the kernel does not give:
/// what `tine serve` warns about and `tine tune --check` fails on.
pub fn shortfalls(findings: &[Finding]) -> impl Iterator<Item = &Finding> {
    findings.iter().filter(|f| f.status == Status::Short)
}

/// The doctor's table as text.
pub fn table(findings: &[Finding]) -> String {
    let mut out = format!("{:<44} {:<24} {:<24} {:<8} why\n", "setting", "current", "recommended", "status");
    for f in findings {
        out.push_str(&format!(
            "{:<44} {:<24} {:<24} {:<8} {}\n",
            f.key,
            f.current.as_deref().unwrap_or("-"),
            f.recommended,
            f.status.label(),
            f.why
        ));
    }
    out
}

/// Keys the drop-in sets: every sysctl of the table, whatever this kernel
/// has (the congestion controls depend on the kernel: the drop-in says so
/// in a comment instead; the descriptor limit is the unit's, not a sysctl).
fn in_dropin(f: &Finding) -> bool {
    !f.key.starts_with("RLIMIT") && !f.key.contains("congestion_control")
}

/// The sysctl.d drop-in of the recommendations (`tine tune --sysctl`; the
/// static deploy/sysctl-tine.conf is this for the default configuration).
pub fn dropin(findings: &[Finding]) -> String {
    let mut out = String::from(
        "# Kernel settings for a tine host, written by `tine tune --sysctl`.\n\
         # Install as /etc/sysctl.d/90-tine.conf and apply with `sysctl --system`,\n\
         # or let `tine tune --apply` do both. docs/tuning.md explains each.\n",
    );
    for f in findings.iter().filter(|f| in_dropin(f)) {
        // The general reason: what this machine and configuration add in
        // parentheses stays in the table.
        let why = f.why.split(" (here").next().unwrap_or(&f.why);
        out.push_str(&format!("\n# {why}\n{} = {}\n", f.key, f.recommended));
    }
    out.push_str(
        "\n# Congestion control: bbr where the kernel has it (modprobe tcp_bbr).\n\
         # net.ipv4.tcp_congestion_control = bbr\n",
    );
    out
}

/// What `--apply` did to one setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub from: String,
    pub to: String,
}

/// Writes the drop-in of the values to apply (each setting's current value
/// where it is already as good) to `file`, and sets in the kernel every one
/// that differs. Running it again changes nothing.
pub fn apply(findings: &[Finding], kernel: &Kernel, file: &Path) -> io::Result<Vec<Change>> {
    let mut text = String::from("# Written by `tine tune --apply`; docs/tuning.md explains each setting.\n");
    let mut changes = Vec::new();
    for f in findings.iter().filter(|f| in_dropin(f) || f.key.contains("allowed_congestion")) {
        let (Some(to), Some(from)) = (&f.apply, &f.current) else { continue };
        text.push_str(&format!("{} = {to}\n", f.key));
        if to != from {
            kernel.write(&f.key, to)?;
            changes.push(Change { key: f.key.clone(), from: from.clone(), to: to.clone() });
        }
    }
    let unchanged = std::fs::read_to_string(file).is_ok_and(|t| t == text);
    if !unchanged {
        std::fs::write(file, text)?;
    }
    Ok(changes)
}

/// The process's RLIMIT_NOFILE (soft, hard).
pub fn nofile_limit() -> (u64, u64) {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(values: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (key, value) in values {
            let path = dir.path().join(key.replace('.', "/"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{value}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn a_backlog_above_somaxconn_is_short_and_apply_is_idempotent() {
        let dir = tree(&[
            ("net.core.somaxconn", "128"),
            ("net.ipv4.tcp_fastopen", "1"),
            ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
            ("net.ipv4.tcp_available_congestion_control", "reno cubic"),
        ]);
        let kernel = Kernel::at(dir.path());
        let config = Config::default();
        let findings = examine(&config, &kernel, (1024, 1 << 20));
        let short: Vec<&str> = shortfalls(&findings).map(|f| f.key.as_str()).collect();
        assert_eq!(short, ["net.core.somaxconn"]);
        let file = dir.path().join("90-tine.conf");
        let changes = apply(&findings, &kernel, &file).unwrap();
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "net.core.somaxconn",
                "net.ipv4.ip_local_port_range",
                "net.ipv4.tcp_fastopen",
                "net.ipv4.tcp_rmem"
            ]
        );
        assert_eq!(kernel.read("net.core.somaxconn").unwrap(), "4096");
        let again = examine(&config, &kernel, (1024, 1 << 20));
        assert_eq!(shortfalls(&again).count(), 0);
        assert!(apply(&again, &kernel, &file).unwrap().is_empty(), "the second run changes nothing");
    }

    #[test]
    fn better_values_are_kept_and_needs_follow_the_configuration() {
        let dir = tree(&[("net.core.somaxconn", "65535"), ("net.ipv4.tcp_fastopen", "1")]);
        let kernel = Kernel::at(dir.path());
        let mut config = Config::default();
        config.tcp.fastopen = Some(256);
        config.tcp.congestion = Some("bbr".into());
        let findings = examine(&config, &kernel, (1024, 1024));
        let short: Vec<&str> = shortfalls(&findings).map(|f| f.key.as_str()).collect();
        // fastopen asks for bit 2; bbr is not available (no such file: n/a,
        // not short); 1024 descriptors cannot hold 16384 connections.
        assert_eq!(short, ["net.ipv4.tcp_fastopen", "RLIMIT_NOFILE (hard)"]);
        let somaxconn = findings.iter().find(|f| f.key == "net.core.somaxconn").unwrap();
        assert_eq!(somaxconn.apply.as_deref(), Some("65535"), "never lowered");
    }
}
