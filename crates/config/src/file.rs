//! The TOML file format. Values are read with their spans so that every error,
//! from a syntax slip to a root that does not exist, names file:line:column.

use crate::proxy::{
    Balance, Handler, HostHeader, Route, Stream, Upstream, UpstreamAddr, UpstreamProtocol, UpstreamServer,
    UpstreamTls,
};
use crate::{check_root, check_workers, parse_duration, parse_listen, Config, ConfigError, Workers};
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    tls_listen: Option<Spanned<Vec<Spanned<String>>>>,
    tls: Option<RawTls>,
    acme: Option<Spanned<RawAcme>>,
    http2: Option<RawHttp2>,
    proxy_protocol: Option<RawProxyProtocol>,
    health_path: Option<Spanned<String>>,
    admin_hosts: Option<Vec<Spanned<String>>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    #[serde(default)]
    certificate: Vec<RawCertificate>,
    admin_listen: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    workers: Option<Spanned<RawWorkers>>,
    pid_file: Option<Spanned<String>>,
    stats_path: Option<Spanned<String>>,
    backlog: Option<Spanned<i64>>,
    access_log: Option<Spanned<String>>,
    error_log: Option<Spanned<String>>,
    timeouts: Option<RawTimeouts>,
    limits: Option<RawLimits>,
    cache: Option<RawCache>,
    compression: Option<RawCompression>,
    tcp: Option<RawTcp>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    stream: Vec<RawStream>,
    #[serde(default)]
    client_limit: Vec<RawClientLimit>,
    client_limits: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientLimit {
    name: Spanned<String>,
    key: Option<Spanned<String>>,
    rate: Option<Spanned<String>>,
    burst: Option<Spanned<i64>>,
    delay: Option<bool>,
    connections: Option<Spanned<i64>>,
    status: Option<Spanned<i64>>,
    max_keys: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    min_version: Option<Spanned<String>>,
    unknown_name: Option<Spanned<String>>,
    session_tickets: Option<bool>,
    ticket_key_rotation: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp2 {
    enabled: Option<bool>,
    h2c: Option<bool>,
    max_concurrent_streams: Option<Spanned<i64>>,
    initial_window_size: Option<Spanned<i64>>,
    max_header_list_size: Option<Spanned<i64>>,
    max_pending_resets: Option<Spanned<i64>>,
    max_stream_errors: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxyProtocol {
    #[serde(default)]
    trusted: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    skip: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    acme: Option<Spanned<Vec<Spanned<String>>>>,
    default: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Option<Spanned<String>>,
    email: Option<Spanned<String>>,
    storage: Option<Spanned<String>>,
    challenge: Option<Spanned<String>>,
    renew_before: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
    retry: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Spanned<String>,
    servers: Spanned<Vec<Spanned<RawServer>>>,
    balance: Option<Spanned<String>>,
    keepalive: Option<Spanned<i64>>,
    keepalive_timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    response_timeout: Option<Spanned<String>>,
    io_timeout: Option<Spanned<String>>,
    max_fails: Option<Spanned<i64>>,
    fail_timeout: Option<Spanned<String>>,
    underscores_in_headers: Option<bool>,
    proxy_protocol: Option<Spanned<String>>,
    tcp: Option<Spanned<RawTcp>>,
    tls: Option<Spanned<bool>>,
    tls_server_name: Option<Spanned<String>>,
    tls_ca: Option<Spanned<String>>,
    tls_verify: Option<Spanned<bool>>,
    tls_certificate: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawServer {
    Plain(String),
    Weighted { address: String, weight: Option<i64> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    upstream: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    host_header: Option<Spanned<String>>,
    redirect_to_https: Option<Spanned<bool>>,
    precompressed: Option<Spanned<bool>>,
    compress: Option<Spanned<bool>>,
    #[serde(default)]
    mime_types: std::collections::BTreeMap<String, Spanned<String>>,
    charset: Option<Spanned<String>>,
    try_files: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    error_pages: std::collections::BTreeMap<String, Spanned<String>>,
    redirect: Option<Spanned<String>>,
    redirect_prefix: Option<Spanned<String>>,
    redirect_status: Option<Spanned<i64>>,
    client_limits: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    listen: Spanned<String>,
    upstream: Spanned<String>,
    idle_timeout: Option<Spanned<String>>,
    tls: Option<bool>,
}

/// What a route does: proxy, serve a root, or redirect.
fn route_handler(
    at: &Locator,
    r: &RawRoute,
    relative_to_file: &dyn Fn(&str) -> PathBuf,
    upstream_index: &dyn Fn(&Spanned<String>) -> Result<usize, ConfigError>,
) -> Result<Handler, ConfigError> {
    let given = [r.upstream.is_some(), r.root.is_some(), r.redirect.is_some(), r.redirect_prefix.is_some()];
    if given.iter().filter(|&&g| g).count() != 1 {
        let span = r.path.as_ref().or(r.host.as_ref()).map_or(0..0, |s| s.span());
        return Err(
            at.error(span, "a route needs exactly one of upstream, root, redirect or redirect_prefix")
        );
    }
    if let Some(u) = &r.upstream {
        let host = match r.host_header.as_ref().map(|h| h.get_ref().as_str()) {
            None | Some("keep") => HostHeader::Keep,
            Some("upstream") => HostHeader::Upstream,
            Some(other) => HostHeader::Fixed(other.to_string()),
        };
        return Ok(Handler::Proxy { upstream: upstream_index(u)?, host });
    }
    if let Some(root) = &r.root {
        return Ok(Handler::Static(static_site(
            at,
            r,
            at.check(root, |r| check_root(&relative_to_file(r)))?,
        )?));
    }
    let status = match &r.redirect_status {
        Some(v) => at.check(v, |&s| {
            if matches!(s, 301 | 302 | 303 | 307 | 308) {
                Ok(s as u16)
            } else {
                Err(format!("redirect_status {s} is not 301, 302, 303, 307 or 308"))
            }
        })?,
        None => 301,
    };
    let (to, keep_path) = match (&r.redirect, &r.redirect_prefix) {
        (Some(to), _) => (to, false),
        (_, Some(to)) => (to, true),
        (None, None) => unreachable!("counted above"),
    };
    let to = at.check(to, |t| check_location(t).map(|()| t.clone()))?;
    Ok(Handler::Redirect(crate::Redirect { to, keep_path, status }))
}

/// Keys that only some kinds of route take.
fn check_route_keys(at: &Locator, r: &RawRoute, handler: &Handler) -> Result<(), ConfigError> {
    if !matches!(handler, Handler::Static(_)) {
        let static_only = [
            r.precompressed.as_ref().map(|v| ("precompressed", v.span())),
            r.compress.as_ref().map(|v| ("compress", v.span())),
            r.charset.as_ref().map(|v| ("charset", v.span())),
            r.mime_types.values().next().map(|v| ("mime_types", v.span())),
            r.try_files.as_ref().map(|v| ("try_files", v.span())),
        ];
        if let Some((key, span)) = static_only.into_iter().flatten().next() {
            return Err(at.error(span, format!("{key} applies to routes with a root")));
        }
    }
    if !matches!(handler, Handler::Redirect(_)) {
        if let Some(v) = &r.redirect_status {
            return Err(
                at.error(v.span(), "redirect_status applies to routes with redirect or redirect_prefix")
            );
        }
    }
    Ok(())
}

/// A redirect target: a path on this host or an absolute http(s) URL,
/// visible ASCII only (it goes into a Location header as it is).
fn check_location(to: &str) -> Result<(), String> {
    let visible = !to.is_empty() && to.bytes().all(|b| (b'!'..=b'~').contains(&b));
    let absolute = to.starts_with("https://") || to.starts_with("http://");
    let local = to.starts_with('/') && !to.starts_with("//") && !to.starts_with("/\\");
    if visible && (absolute || local) {
        Ok(())
    } else {
        Err(format!("redirect target {to:?} must be a path (/...) or an http(s) URL, without spaces"))
    }
}

/// Headers tine writes itself, or that frame the message: a route cannot
/// add or replace them (mime_types and charset set Content-Type).
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "content-range",
    "content-encoding",
    "content-type",
    "etag",
    "last-modified",
    "accept-ranges",
    "vary",
    "date",
    "server",
    "location",
];

/// A header a route adds to its responses: a token name that is not one of
/// tine's own, and a value of visible ASCII, spaces and tabs.
fn check_added_header(name: &str, value: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("{name:?} is not a header name"));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("{name} is written by tine and cannot be set by a route"));
    }
    if value.bytes().any(|b| !(b == b'\t' || (b' '..=b'~').contains(&b))) || value.trim() != value {
        return Err(format!(
            "the value of {name} must be visible ASCII, without line breaks or outer spaces"
        ));
    }
    Ok(())
}

/// The largest custom error page: they are held in memory by every worker.
const ERROR_PAGE_LIMIT: u64 = 1024 * 1024;

/// Reads the page a route answers `status` with: `/path` under `root`.
fn load_error_page(status: &str, page: &str, root: &Path) -> Result<(u16, crate::ErrorPage), String> {
    let code: u16 = status
        .parse()
        .ok()
        .filter(|c| (400..=599).contains(c))
        .ok_or_else(|| format!("error_pages key {status:?} is not a status code from 400 to 599"))?;
    let relative = page.strip_prefix('/').ok_or_else(|| format!("error page {page:?} must start with /"))?;
    if relative.split('/').any(|s| s == "..") || relative.is_empty() {
        return Err(format!("error page {page:?} must name a file under the root"));
    }
    // Opened as the workers open what they serve: beneath the root, no
    // symlink out of it, a regular file only, never blocking, bounded.
    let failed = |e: &dyn std::fmt::Display| format!("error page {}: {e}", root.join(relative).display());
    let root = tine_fs::Root::open(root).map_err(|e| failed(&e))?;
    let body = root.read_regular(relative.as_bytes(), ERROR_PAGE_LIMIT).map_err(|e| failed(&e))?;
    Ok((code, crate::ErrorPage { path: page.to_string(), body }))
}

/// A static route's serving options.
fn static_site(at: &Locator, r: &RawRoute, root: PathBuf) -> Result<crate::StaticSite, ConfigError> {
    let mut site = crate::StaticSite::new(root);
    if let Some(v) = &r.precompressed {
        site.precompressed = *v.get_ref();
    }
    if let Some(v) = &r.compress {
        site.compress = *v.get_ref();
    }
    for (extension, media_type) in &r.mime_types {
        let media_type = at.check(media_type, |t| check_media_type(t).map(|()| t.clone()))?;
        site.mime_types.push((extension.trim_start_matches('.').to_ascii_lowercase(), media_type));
    }
    if let Some(list) = &r.try_files {
        if list.get_ref().is_empty() {
            return Err(at.error(list.span(), "try_files needs at least one entry"));
        }
        for entry in list.get_ref() {
            site.try_files.push(at.check(entry, |e| crate::TryFile::parse(e))?);
        }
    }
    if let Some(c) = &r.charset {
        site.charset = Some(at.check(c, |c| {
            if !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:+".contains(&b)) {
                Ok(c.clone())
            } else {
                Err(format!("charset {c:?} is not a charset name"))
            }
        })?);
    }
    Ok(site)
}

/// A media type fit for a Content-Type header: `type/subtype`, optional
/// parameters, visible ASCII only.
fn check_media_type(t: &str) -> Result<(), String> {
    let essence = t.split(';').next().unwrap_or_default().trim();
    let valid_token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b));
    match essence.split_once('/') {
        Some((kind, subtype))
            if valid_token(kind) && valid_token(subtype) && t.bytes().all(|b| (b' '..=b'~').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!("{t:?} is not a media type (type/subtype)")),
    }
}

/// `[tcp]`, and (the same keys) each `[tcp.listener."ADDRESS"]` in it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    nodelay: Option<bool>,
    keepalive_idle: Option<Spanned<String>>,
    keepalive_interval: Option<Spanned<String>>,
    keepalive_count: Option<Spanned<i64>>,
    user_timeout: Option<Spanned<String>>,
    send_buffer: Option<Spanned<i64>>,
    receive_buffer: Option<Spanned<i64>>,
    fastopen: Option<Spanned<i64>>,
    congestion: Option<Spanned<String>>,
    defer_accept: Option<Spanned<String>>,
    notsent_lowat: Option<Spanned<i64>>,
    listener: Option<Spanned<std::collections::BTreeMap<String, Spanned<RawTcp>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    open_files: Option<Spanned<i64>>,
    small_file_bytes: Option<Spanned<i64>>,
    valid: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompression {
    min_bytes: Option<Spanned<i64>>,
    max_bytes: Option<Spanned<i64>>,
    memory_bytes: Option<Spanned<i64>>,
    brotli_level: Option<Spanned<i64>>,
    gzip_level: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawWorkers {
    Count(i64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    header: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    send: Option<Spanned<String>>,
    drain: Option<Spanned<String>>,
    keepalive_grace: Option<Spanned<String>>,
    drain_delay: Option<Spanned<String>>,
    watchdog: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    connections_per_worker: Option<Spanned<i64>>,
    request_head_bytes: Option<Spanned<i64>>,
    uri_bytes: Option<Spanned<i64>>,
    discard_body_bytes: Option<Spanned<i64>>,
    min_send_rate: Option<Spanned<i64>>,
}

/// Turns spans into file:line:column errors for one file.
struct Locator<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Locator<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::At { file: self.file.to_owned(), line, column, message: message.into() }
    }

    fn check<T, U>(
        &self,
        value: &Spanned<T>,
        f: impl FnOnce(&T) -> Result<U, String>,
    ) -> Result<U, ConfigError> {
        f(value.get_ref()).map_err(|m| self.error(value.span(), m))
    }

    fn in_range(&self, value: &Spanned<i64>, name: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
        self.check(value, |&v| {
            if (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(format!("{name} must be from {min} to {max}, not {v}"))
            }
        })
    }
}

pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let at = Locator { text, file: path };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        match e.span() {
            Some(span) => at.error(span, message),
            None => ConfigError::File { file: path.to_owned(), message },
        }
    })?;
    // Paths in the file are relative to the file; made absolute here so that
    // nothing depends on the working directory later (reload, upgrade).
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_owned());
    let relative_to_file = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };

    let mut config = Config { source: Some(path.to_owned()), ..Config::default() };
    parse_listeners(&raw, &at, &mut config)?;
    parse_tls(&raw, &at, &relative_to_file, &mut config)?;
    parse_proxy_protocol(&raw, &at, &mut config)?;
    parse_identity(&raw, &at, &mut config)?;
    parse_paths(&raw, &at, &base, &relative_to_file, &mut config)?;
    parse_timeouts(&raw, &at, &mut config)?;
    parse_limits(&raw, &at, &mut config)?;
    parse_cache_and_compression(&raw, &at, &mut config)?;
    parse_http2(&raw, &at, &mut config)?;
    parse_client_limits(&raw, &at, &mut config)?;
    parse_proxy(&raw, &at, &relative_to_file, &mut config)?;
    check_tls_users(&raw, &at, &config)?;
    parse_tcp(&raw, &at, &mut config)?;
    Ok(config)
}

/// `listen`, `tls_listen` and `admin_listen`.
fn parse_listeners(raw: &RawFile, at: &Locator, config: &mut Config) -> Result<(), ConfigError> {
    if let Some(listen) = &raw.listen {
        if listen.get_ref().is_empty() {
            return Err(at.error(listen.span(), "listen needs at least one address"));
        }
        config.listen =
            listen.get_ref().iter().map(|a| at.check(a, |s| parse_listen(s))).collect::<Result<_, _>>()?;
    }
    if let Some(tls_listen) = &raw.tls_listen {
        for a in tls_listen.get_ref() {
            let addr = at.check(a, |s| parse_listen(s))?;
            // Port 0 asks for any free port: every such socket is its own.
            if addr.port() != 0 && (config.listen.contains(&addr) || config.tls_listen.contains(&addr)) {
                return Err(
                    at.error(a.span(), "a tls_listen address must differ from every other listen address")
                );
            }
            config.tls_listen.push(addr);
        }
    }
    if let Some(admin) = &raw.admin_listen {
        let addr = at.check(admin, |s| parse_listen(s))?;
        if addr.port() != 0 && (config.listen.contains(&addr) || config.tls_listen.contains(&addr)) {
            return Err(at.error(admin.span(), "admin_listen must differ from every listen address"));
        }
        config.admin_listen = Some(addr);
    }
    Ok(())
}

/// Who the workers run as, and what the health and admin endpoints answer.
fn parse_identity(raw: &RawFile, at: &Locator, config: &mut Config) -> Result<(), ConfigError> {
    for (raw_name, field) in [(&raw.user, &mut config.user), (&raw.group, &mut config.group)] {
        if let Some(name) = raw_name {
            *field = Some(at.check(name, |s| {
                let valid = !s.is_empty() && s.len() <= 32 && !s.contains(['/', ':', ' ', '\0']);
                if valid {
                    Ok(s.clone())
                } else {
                    Err(format!("{s:?} is not a user or group name"))
                }
            })?);
        }
    }
    if let Some(p) = &raw.health_path {
        config.health_path = Some(at.check(p, |s| {
            if s.starts_with('/') && !s.contains(['?', '#', ' ']) {
                Ok(s.clone())
            } else {
                Err(format!("health_path must be a path such as \"/healthz\", not {s:?}"))
            }
        })?);
    }
    for name in raw.admin_hosts.iter().flatten() {
        config.admin_hosts.push(at.check(name, |s| {
            let valid = !s.is_empty()
                && s.len() <= 253
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if valid {
                Ok(s.trim_end_matches('.').to_ascii_lowercase())
            } else {
                Err(format!("admin_hosts entry {s:?} is not a host name (IP literals are always answered)"))
            }
        })?);
    }
    Ok(())
}

/// The root, workers, backlog, and the files the server writes.
fn parse_paths(
    raw: &RawFile,
    at: &Locator,
    base: &Path,
    relative_to_file: &dyn Fn(&str) -> PathBuf,
    config: &mut Config,
) -> Result<(), ConfigError> {
    if let Some(root) = &raw.root {
        config.root = at.check(root, |r| check_root(&relative_to_file(r)))?;
    } else {
        config.root = check_root(&base.join(".")).map_err(ConfigError::Invalid)?;
    }
    if let Some(workers) = &raw.workers {
        config.workers = at.check(workers, |w| match w {
            RawWorkers::Count(n) => check_workers(*n).map(Workers::Count),
            RawWorkers::Name(s) if s == "auto" => Ok(Workers::Auto),
            RawWorkers::Name(s) => Err(format!("workers must be \"auto\" or a number, not {s:?}")),
        })?;
    }
    if let Some(p) = &raw.pid_file {
        config.pid_file = Some(relative_to_file(p.get_ref()));
    }
    if let Some(p) = &raw.stats_path {
        config.stats_path = Some(relative_to_file(p.get_ref()));
    }
    if let Some(p) = &raw.access_log {
        config.access_log = Some(relative_to_file(p.get_ref()));
    }
    if let Some(p) = &raw.error_log {
        config.error_log = Some(relative_to_file(p.get_ref()));
    }
    if let Some(b) = &raw.backlog {
        config.backlog = at.in_range(b, "backlog", 1, 1 << 20)? as u32;
    }
    Ok(())
}

/// `[timeouts]`.
fn parse_timeouts(raw: &RawFile, at: &Locator, config: &mut Config) -> Result<(), ConfigError> {
    if let Some(t) = &raw.timeouts {
        let slots = [
            (&t.header, &mut config.timeouts.header),
            (&t.idle, &mut config.timeouts.idle),
            (&t.send, &mut config.timeouts.send),
            (&t.drain, &mut config.timeouts.drain),
            (&t.keepalive_grace, &mut config.timeouts.keepalive_grace),
            (&t.watchdog, &mut config.timeouts.watchdog),
        ];
        for (raw, value) in slots {
            if let Some(raw) = raw {
                *value = at.check(raw, |s| parse_duration(s))?;
            }
        }
        if let Some(v) = &t.drain_delay {
            config.timeouts.drain_delay = at.check(v, |s| {
                crate::tcp::duration_or_off(s).and_then(|d| crate::tcp::seconds("drain_delay", d, 0, 3600))
            })?;
        }
    }
    Ok(())
}

/// `[limits]`.
fn parse_limits(raw: &RawFile, at: &Locator, config: &mut Config) -> Result<(), ConfigError> {
    if let Some(l) = &raw.limits {
        let limits = &mut config.limits;
        if let Some(v) = &l.connections_per_worker {
            limits.connections_per_worker = at.in_range(v, "connections_per_worker", 1, 1 << 20)? as usize;
        }
        if let Some(v) = &l.request_head_bytes {
            limits.request_head_bytes = at.in_range(v, "request_head_bytes", 1024, 1 << 20)? as usize;
        }
        if let Some(v) = &l.uri_bytes {
            let max = limits.request_head_bytes as i64;
            limits.uri_bytes = at.in_range(v, "uri_bytes (at most request_head_bytes)", 16, max)? as usize;
        }
        if let Some(v) = &l.discard_body_bytes {
            limits.discard_body_bytes = at.in_range(v, "discard_body_bytes", 0, 1 << 40)? as u64;
        }
        if let Some(v) = &l.min_send_rate {
            limits.min_send_rate = at.in_range(v, "min_send_rate", 0, 1 << 40)? as u64;
        }
    }
    Ok(())
}

/// `[cache]` and `[compression]`.
fn parse_cache_and_compression(raw: &RawFile, at: &Locator, config: &mut Config) -> Result<(), ConfigError> {
    if let Some(c) = &raw.cache {
        if let Some(v) = &c.open_files {
            config.cache.open_files = at.in_range(v, "open_files", 0, 1 << 20)? as usize;
        }
        if let Some(v) = &c.small_file_bytes {
            config.cache.small_file_bytes = at.in_range(v, "small_file_bytes", 0, 1 << 20)? as u64;
        }
        if let Some(v) = &c.valid {
            config.cache.valid = at.check(v, |s| parse_duration(s))?;
        }
    }
    if let Some(c) = &raw.compression {
        let z = &mut config.compression;
        if let Some(v) = &c.min_bytes {
            z.min_bytes = at.in_range(v, "min_bytes", 0, 1 << 40)? as u64;
        }
        if let Some(v) = &c.max_bytes {
            z.max_bytes = at.in_range(v, "max_bytes", 0, 64 << 20)? as u64;
        }
        if let Some(v) = &c.memory_bytes {
            z.memory_bytes = at.in_range(v, "memory_bytes", 0, 1 << 40)? as u64;
        }
        if let Some(v) = &c.brotli_level {
            z.brotli_level = at.in_range(v, "brotli_level", 0, 11)? as u32;
        }
        if let Some(v) = &c.gzip_level {
            z.gzip_level = at.in_range(v, "gzip_level", 1, 9)? as u32;
        }
    }
    Ok(())
}

/// `[http2]`.
fn parse_http2(raw: &RawFile, at: &Locator, config: &mut Config) -> Result<(), ConfigError> {
    let Some(h) = &raw.http2 else { return Ok(()) };
    let c = &mut config.http2;
    if let Some(v) = h.enabled {
        c.enabled = v;
    }
    if let Some(v) = h.h2c {
        c.h2c = v;
    }
    if let Some(v) = &h.max_concurrent_streams {
        c.max_concurrent_streams = at.in_range(v, "max_concurrent_streams", 1, 1 << 16)? as u32;
    }
    if let Some(v) = &h.initial_window_size {
        // RFC 9113 section 6.5.2: at most 2^31-1.
        c.initial_window_size = at.in_range(v, "initial_window_size", 1024, (1 << 31) - 1)? as u32;
    }
    if let Some(v) = &h.max_header_list_size {
        c.max_header_list_size = at.in_range(v, "max_header_list_size", 1024, 1 << 24)? as u32;
    }
    if let Some(v) = &h.max_pending_resets {
        c.max_pending_resets = at.in_range(v, "max_pending_resets", 1, 1 << 16)? as u32;
    }
    if let Some(v) = &h.max_stream_errors {
        c.max_stream_errors = at.in_range(v, "max_stream_errors", 1, 1 << 20)? as u32;
    }
    Ok(())
}

/// `[[client_limit]]` and the top level's `client_limits`.
fn parse_client_limits(raw: &RawFile, at: &Locator, config: &mut Config) -> Result<(), ConfigError> {
    for l in &raw.client_limit {
        let limit = parse_client_limit(l, at, &config.client_limits)?;
        config.client_limits.push(limit);
    }
    config.global_client_limits = limit_indices(at, raw.client_limits.as_deref(), &config.client_limits)?;
    for (i, limit) in config.client_limits.iter().enumerate() {
        if limit.connections > 0 && !config.global_client_limits.contains(&i) {
            return Err(ConfigError::File {
                file: at.file.to_owned(),
                message: format!(
                    "client_limit {:?} limits connections, which are counted at accept: name it in the \
                     top-level client_limits",
                    limit.name
                ),
            });
        }
    }
    Ok(())
}

fn parse_client_limit(
    l: &RawClientLimit,
    at: &Locator,
    known: &[crate::ClientLimit],
) -> Result<crate::ClientLimit, ConfigError> {
    let name = at.check(&l.name, |n| {
        let valid = !n.is_empty()
            && n.len() < tine_limits::region::NAME_SIZE
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !valid {
            Err(format!("client_limit name {n:?} must be 1 to 47 letters, digits, - or _"))
        } else if known.iter().any(|k| &k.name == n) {
            Err(format!("client_limit name {n:?} is used twice"))
        } else {
            Ok(n.clone())
        }
    })?;
    let key = match &l.key {
        Some(k) => at.check(k, |k| crate::client_limit::KeySource::parse(k))?,
        None => crate::client_limit::KeySource::Address { v4_prefix: 32, v6_prefix: 128 },
    };
    let burst = l.burst.as_ref().map_or(Ok(0), |b| at.in_range(b, "burst", 0, 1_000_000))? as u32;
    let delay = l.delay.unwrap_or(false);
    let rate = match &l.rate {
        Some(r) => Some(at.check(r, |r| crate::client_limit::parse_rate(r, burst, delay))?),
        None => None,
    };
    let connections =
        l.connections.as_ref().map_or(Ok(0), |c| at.in_range(c, "connections", 0, 1_000_000))? as u32;
    if rate.is_none() && connections == 0 {
        return Err(
            at.error(l.name.span(), format!("client_limit {name:?} needs a rate, connections, or both"))
        );
    }
    if connections > 0 && !key.known_at_accept() {
        let span = l.key.as_ref().map_or(l.name.span(), |k| k.span());
        return Err(at.error(
            span,
            "connections are counted at accept, before any header: the key must be an address",
        ));
    }
    Ok(crate::ClientLimit {
        name,
        key,
        rate,
        connections,
        status: match &l.status {
            None => 429,
            Some(s) => at.check(s, |&s| match s {
                400 | 403 | 404 | 429 | 503 => Ok(s as u16),
                _ => Err(format!("status must be 429, 503, 403, 404 or 400, not {s}")),
            })?,
        },
        max_keys: l.max_keys.as_ref().map_or(Ok(crate::client_limit::DEFAULT_MAX_KEYS as i64), |m| {
            at.in_range(m, "max_keys", 8, tine_limits::region::MAX_KEYS as i64)
        })? as usize,
    })
}

/// Limit names as indices into `limits`, each named once.
fn limit_indices(
    at: &Locator,
    names: Option<&[Spanned<String>]>,
    limits: &[crate::ClientLimit],
) -> Result<Vec<usize>, ConfigError> {
    let mut indices = Vec::new();
    for name in names.unwrap_or_default() {
        let i = at.check(name, |n| {
            limits
                .iter()
                .position(|l| &l.name == n)
                .ok_or_else(|| format!("no [[client_limit]] is named {n:?}"))
        })?;
        if indices.contains(&i) {
            return Err(at.error(name.span(), format!("client_limit {:?} is named twice", name.get_ref())));
        }
        indices.push(i);
    }
    Ok(indices)
}

/// `[tcp]` and its per-listener tables.
fn parse_tcp(raw: &RawFile, at: &Locator, config: &mut Config) -> Result<(), ConfigError> {
    if let Some(tcp) = &raw.tcp {
        config.tcp = tcp_options(at, tcp)?;
        if let Some(listeners) = &tcp.listener {
            let known = config.all_listen_addrs();
            for (address, over) in listeners.get_ref() {
                let addr = parse_listen(address).map_err(|m| at.error(over.span(), m))?;
                if !known.contains(&addr) {
                    return Err(at.error(
                        over.span(),
                        format!("[tcp.listener.\"{address}\"]: no listen, admin_listen or [[stream]] has this address"),
                    ));
                }
                if over.get_ref().listener.is_some() {
                    return Err(at.error(
                        over.span(),
                        "a [tcp.listener] table cannot hold listener tables of its own",
                    ));
                }
                config.tcp_listeners.push((addr, tcp_options(at, over.get_ref())?));
            }
        }
    }
    Ok(())
}

/// `[proxy_protocol]`.
fn parse_proxy_protocol(raw: &RawFile, at: &Locator, config: &mut Config) -> Result<(), ConfigError> {
    let Some(p) = &raw.proxy_protocol else { return Ok(()) };
    for net in &p.trusted {
        let parsed = at.check(net, |s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    format!("trusted: {s:?} is not an address or a network (10.0.0.0/8, 2001:db8::/32)")
                })
        })?;
        config.proxy_protocol.trusted.push(parsed);
    }
    if let Some(v) = &p.timeout {
        config.proxy_protocol.timeout = at.check(v, |s| {
            let d = parse_duration(s)?;
            if (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&d) {
                Ok(d)
            } else {
                Err("proxy_protocol timeout must be from 100ms to 60s".to_string())
            }
        })?;
    }
    for addr in &p.skip {
        let parsed = at.check(addr, |s| parse_listen(s))?;
        if !config.listen.contains(&parsed) && !config.tls_listen.contains(&parsed) {
            return Err(at.error(addr.span(), "skip: not a listen or tls_listen address"));
        }
        config.proxy_protocol.skip.push(parsed);
    }
    Ok(())
}

/// `[tls]` and `[[certificate]]`.
fn parse_tls(
    raw: &RawFile,
    at: &Locator,
    relative_to_file: &dyn Fn(&str) -> PathBuf,
    config: &mut Config,
) -> Result<(), ConfigError> {
    if let Some(t) = &raw.tls {
        if let Some(v) = &t.min_version {
            config.tls.min_version = at.check(v, |s| crate::TlsVersion::parse(s))?;
        }
        if let Some(v) = &t.unknown_name {
            config.tls.unknown_name = at.check(v, |s| crate::UnknownName::parse(s))?;
        }
        if let Some(v) = t.session_tickets {
            config.tls.session_tickets = v;
        }
        if let Some(v) = &t.ticket_key_rotation {
            config.tls.ticket_key_rotation = at.check(v, |s| {
                let d = parse_duration(s)?;
                if (Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600)).contains(&d) {
                    Ok(d)
                } else {
                    Err("ticket_key_rotation must be from 1m to 7d".to_string())
                }
            })?;
        }
    }
    for c in &raw.certificate {
        let source = certificate_source(c, at, relative_to_file, config)?;
        config.certificates.push(crate::Certificate { source, default: c.default.unwrap_or(false) });
    }
    parse_acme(raw, at, relative_to_file, config)
}

/// A `[[certificate]]`'s `cert` and `key`, or its `acme` names.
fn certificate_source(
    c: &RawCertificate,
    at: &Locator,
    relative_to_file: &dyn Fn(&str) -> PathBuf,
    config: &Config,
) -> Result<crate::CertificateSource, ConfigError> {
    match (&c.cert, &c.key, &c.acme) {
        (Some(cert_raw), Some(key), None) => {
            let cert = relative_to_file(cert_raw.get_ref());
            let key = relative_to_file(key.get_ref());
            let listed = config.certificates.iter().any(
                |x| matches!(&x.source, crate::CertificateSource::Files { cert: other, .. } if *other == cert),
            );
            if listed {
                return Err(at.error(cert_raw.span(), "this certificate is listed twice"));
            }
            Ok(crate::CertificateSource::Files { cert, key })
        }
        (None, None, Some(acme)) => {
            if acme.get_ref().is_empty() {
                return Err(at.error(acme.span(), "acme needs at least one name"));
            }
            let mut names: Vec<String> = Vec::new();
            for name in acme.get_ref() {
                let name_lower = at.check(name, |n| crate::acme::check_acme_name(n))?;
                let elsewhere = config.certificates.iter().filter_map(|x| x.acme_names()).flatten();
                if names.contains(&name_lower) || elsewhere.clone().any(|n| *n == name_lower) {
                    return Err(at.error(name.span(), format!("{name_lower} is listed twice under acme")));
                }
                names.push(name_lower);
            }
            Ok(crate::CertificateSource::Acme { names })
        }
        (_, _, Some(acme)) => {
            Err(at.error(acme.span(), "a [[certificate]] takes cert and key, or acme, not both"))
        }
        (Some(cert), None, None) => Err(at.error(cert.span(), "cert needs key (its private key)")),
        (None, Some(key), None) => Err(at.error(key.span(), "key needs cert (the chain it signs for)")),
        (None, None, None) => Err(ConfigError::File {
            file: at.file.to_owned(),
            message: "a [[certificate]] needs cert and key (PEM files), or acme (names to obtain a certificate for)"
                .into(),
        }),
    }
}

/// `[acme]`: needed by, and only by, certificates obtained by ACME.
fn parse_acme(
    raw: &RawFile,
    at: &Locator,
    relative_to_file: &dyn Fn(&str) -> PathBuf,
    config: &mut Config,
) -> Result<(), ConfigError> {
    let wanted = raw.certificate.iter().find_map(|c| c.acme.as_ref());
    let Some(table) = &raw.acme else {
        return match wanted {
            Some(acme) => {
                Err(at
                    .error(acme.span(), "acme needs an [acme] table (directory, email, storage, challenge)"))
            }
            None => Ok(()),
        };
    };
    let t = table.get_ref();
    let storage = match &t.storage {
        Some(s) => relative_to_file(s.get_ref()),
        None => PathBuf::from("/var/lib/tine/acme"),
    };
    let mut acme = crate::Acme::new(storage);
    if let Some(v) = &t.directory {
        acme.directory = at.check(v, |s| crate::acme::check_directory(s))?;
    }
    if let Some(v) = &t.email {
        acme.email = Some(at.check(v, |s| crate::acme::check_email(s))?);
    }
    if let Some(v) = &t.challenge {
        acme.challenge = at.check(v, |s| crate::AcmeChallenge::parse(s))?;
    }
    if let Some(v) = &t.renew_before {
        acme.renew_before = at.check(v, |s| crate::parse_period(s))?;
    }
    if let Some(v) = &t.retry {
        acme.retry = at.check(v, |s| {
            let d = parse_duration(s)?;
            if d < Duration::from_secs(1) {
                return Err("retry must be at least 1s".to_string());
            }
            Ok(d)
        })?;
    }
    if let Some(v) = &t.ca {
        acme.ca = Some(relative_to_file(v.get_ref()));
    }
    match acme.challenge {
        crate::AcmeChallenge::Http01 if raw.listen.as_ref().is_some_and(|l| l.get_ref().is_empty()) => {
            return Err(at.error(
                table.span(),
                "challenge = \"http-01\" is answered on a plain listen address, and listen is empty",
            ))
        }
        crate::AcmeChallenge::TlsAlpn01 if config.tls_listen.is_empty() => {
            return Err(at.error(
                table.span(),
                "challenge = \"tls-alpn-01\" is answered on a tls_listen address, and there is none",
            ))
        }
        _ => {}
    }
    config.acme = Some(acme);
    Ok(())
}

/// Whatever terminates TLS needs a certificate; a redirect to https needs
/// somewhere to send it.
fn check_tls_users(raw: &RawFile, at: &Locator, config: &Config) -> Result<(), ConfigError> {
    if config.certificates.is_empty() {
        if let Some(tls_listen) = raw.tls_listen.as_ref().filter(|l| !l.get_ref().is_empty()) {
            return Err(at.error(tls_listen.span(), "tls_listen needs at least one [[certificate]]"));
        }
        if let Some(s) = raw.stream.iter().find(|s| s.tls == Some(true)) {
            return Err(
                at.error(s.listen.span(), "a stream with tls = true needs at least one [[certificate]]")
            );
        }
    }
    let serves_tls = !config.tls_listen.is_empty() || config.streams.iter().any(|s| s.tls);
    if let Some(acme) = raw.certificate.iter().find_map(|c| c.acme.as_ref()).filter(|_| !serves_tls) {
        return Err(at.error(
            acme.span(),
            "a certificate obtained by ACME is served on tls_listen addresses (or TLS streams), and there are none",
        ));
    }
    if config.tls_listen.is_empty() {
        if let Some(r) = raw.route.iter().find_map(|r| r.redirect_to_https.as_ref().filter(|v| *v.get_ref()))
        {
            return Err(at.error(r.span(), "redirect_to_https needs a tls_listen address to send clients to"));
        }
    }
    Ok(())
}

fn duration_or(
    at: &Locator,
    raw: &Option<Spanned<String>>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    raw.as_ref().map_or(Ok(default), |v| at.check(v, |s| parse_duration(s)))
}

/// The `tcp` table of an `[[upstream]]`: the same keys as `[tcp]`, less
/// those that only a listener has.
fn upstream_tcp(at: &Locator, raw: &Spanned<RawTcp>) -> Result<crate::TcpOptions, ConfigError> {
    let t = raw.get_ref();
    let listener_only = [
        ("fastopen", t.fastopen.as_ref().map(|v| v.span())),
        ("defer_accept", t.defer_accept.as_ref().map(|v| v.span())),
        ("listener", t.listener.as_ref().map(|v| v.span())),
    ];
    if let Some((name, Some(span))) = listener_only.into_iter().find(|(_, s)| s.is_some()) {
        return Err(at.error(span, format!("{name} applies to listeners, not to connections to an upstream")));
    }
    tcp_options(at, t)
}

/// The options one `[tcp]` (or `[tcp.listener]`) table sets, each checked
/// against the kernel's own limits.
fn tcp_options(at: &Locator, raw: &RawTcp) -> Result<crate::TcpOptions, ConfigError> {
    use crate::tcp::{
        congestion_name, duration_or_off, int_value, seconds, MAX_KEEPALIVE_COUNT, MAX_KEEPALIVE_SECONDS,
    };
    let max_int = i64::from(i32::MAX);
    let duration = |v: &Option<Spanned<String>>, check: &dyn Fn(Duration) -> Result<Duration, String>| {
        v.as_ref().map(|v| at.check(v, |s| duration_or_off(s).and_then(check))).transpose()
    };
    let int = |v: &Option<Spanned<i64>>, name: &str, min: i64, max: i64| {
        v.as_ref().map(|v| at.check(v, |&n| int_value(name, n, min, max))).transpose()
    };
    Ok(crate::TcpOptions {
        nodelay: raw.nodelay,
        keepalive_idle: duration(&raw.keepalive_idle, &|d| {
            seconds("keepalive_idle", d, 0, MAX_KEEPALIVE_SECONDS)
        })?,
        keepalive_interval: duration(&raw.keepalive_interval, &|d| {
            seconds("keepalive_interval", d, 1, MAX_KEEPALIVE_SECONDS)
        })?,
        // Zero (the kernel's default) leaves the timeout to retransmissions.
        keepalive_count: int(&raw.keepalive_count, "keepalive_count", 1, MAX_KEEPALIVE_COUNT)?,
        user_timeout: duration(&raw.user_timeout, &|d| {
            if d.as_millis() > max_int as u128 {
                Err(format!("user_timeout must be at most {max_int} ms"))
            } else {
                Ok(d)
            }
        })?,
        // The kernel doubles a buffer size it is given.
        send_buffer: int(&raw.send_buffer, "send_buffer", 1, max_int / 2)?,
        receive_buffer: int(&raw.receive_buffer, "receive_buffer", 1, max_int / 2)?,
        fastopen: int(&raw.fastopen, "fastopen", 0, max_int)?,
        congestion: raw.congestion.as_ref().map(|v| at.check(v, |s| congestion_name(s))).transpose()?,
        defer_accept: duration(&raw.defer_accept, &|d| seconds("defer_accept", d, 0, max_int as u64))?,
        notsent_lowat: int(&raw.notsent_lowat, "notsent_lowat", 1, max_int)?,
    })
}

fn parse_proxy(
    raw: &RawFile,
    at: &Locator,
    relative_to_file: &dyn Fn(&str) -> PathBuf,
    config: &mut Config,
) -> Result<(), ConfigError> {
    for u in &raw.upstream {
        let mut upstream = parse_upstream(u, at, &config.upstreams)?;
        upstream.tls = upstream_tls(u, at, relative_to_file)?;
        upstream.protocol = upstream_protocol(u, at, upstream.tls.is_some())?;
        if let Some(p) = u
            .proxy_protocol
            .as_ref()
            .filter(|_| upstream.protocol.is_http2() && upstream.send_proxy.is_some())
        {
            return Err(at.error(
                p.span(),
                "proxy_protocol cannot go with protocol = \"h2\" or \"h2c\": one HTTP/2 connection carries the requests of many clients, and a PROXY header names one",
            ));
        }
        config.upstreams.push(upstream);
    }
    let upstream_index =
        |name: &Spanned<String>| {
            config.upstreams.iter().position(|u| &u.name == name.get_ref()).ok_or_else(|| {
                at.error(name.span(), format!("no [[upstream]] is named {:?}", name.get_ref()))
            })
        };
    let limits = &config.client_limits;
    let routes = raw
        .route
        .iter()
        .map(|r| {
            let mut route = parse_route(r, at, relative_to_file, &upstream_index, &config.root)?;
            route.client_limits = limit_indices(at, r.client_limits.as_deref(), limits)?;
            if let Some(&i) = route.client_limits.iter().find(|&&i| limits[i].connections > 0) {
                let names = r.client_limits.as_deref().unwrap_or_default();
                let span = names.iter().find(|n| n.get_ref() == &limits[i].name).map_or(0..0, |n| n.span());
                return Err(at.error(
                    span,
                    format!(
                        "client_limit {:?} limits connections, which are counted at accept: name it in the \
                         top-level client_limits, not on a route",
                        limits[i].name
                    ),
                ));
            }
            Ok(route)
        })
        .collect::<Result<_, _>>()?;
    config.routes = routes;
    for s in &raw.stream {
        let listen = at.check(&s.listen, |l| parse_listen(l))?;
        if listen.port() != 0
            && (config.listen.contains(&listen)
                || config.tls_listen.contains(&listen)
                || config.admin_listen == Some(listen))
        {
            return Err(at.error(s.listen.span(), "a stream must listen on an address of its own"));
        }
        config.streams.push(Stream {
            listen,
            upstream: upstream_index(&s.upstream)?,
            idle_timeout: duration_or(at, &s.idle_timeout, Duration::from_secs(600))?,
            tls: s.tls.unwrap_or(false),
        });
    }
    Ok(())
}

/// One `[[upstream]]`; `known` are those before it.
fn parse_upstream(u: &RawUpstream, at: &Locator, known: &[Upstream]) -> Result<Upstream, ConfigError> {
    let name = u.name.get_ref().clone();
    if name.is_empty() || known.iter().any(|x| x.name == name) {
        return Err(at.error(u.name.span(), format!("upstream name {name:?} is empty or used twice")));
    }
    if u.servers.get_ref().is_empty() {
        return Err(at.error(u.servers.span(), "an upstream needs at least one server"));
    }
    let servers = u
        .servers
        .get_ref()
        .iter()
        .map(|s| {
            at.check(s, |raw| {
                let (address, weight) = match raw {
                    RawServer::Plain(a) => (a.as_str(), 1),
                    RawServer::Weighted { address, weight } => (address.as_str(), weight.unwrap_or(1)),
                };
                if !(1..=1000).contains(&weight) {
                    return Err(format!("weight must be from 1 to 1000, not {weight}"));
                }
                Ok(UpstreamServer { addr: UpstreamAddr::parse(address)?, weight: weight as u32 })
            })
        })
        .collect::<Result<_, _>>()?;
    let balance = match &u.balance {
        None => Balance::RoundRobin,
        Some(b) => at.check(b, |b| match b.as_str() {
            "round_robin" => Ok(Balance::RoundRobin),
            "least_conn" => Ok(Balance::LeastConn),
            other => Err(format!("balance must be \"round_robin\" or \"least_conn\", not {other:?}")),
        })?,
    };
    Ok(Upstream {
        name,
        servers,
        balance,
        keepalive: u.keepalive.as_ref().map_or(Ok(32), |v| at.in_range(v, "keepalive", 0, 10_000))? as usize,
        keepalive_timeout: duration_or(at, &u.keepalive_timeout, Duration::from_secs(60))?,
        connect_timeout: duration_or(at, &u.connect_timeout, Duration::from_secs(5))?,
        response_timeout: duration_or(at, &u.response_timeout, Duration::from_secs(60))?,
        io_timeout: duration_or(at, &u.io_timeout, Duration::from_secs(60))?,
        max_fails: u.max_fails.as_ref().map_or(Ok(3), |v| at.in_range(v, "max_fails", 0, 1000))? as u32,
        fail_timeout: duration_or(at, &u.fail_timeout, Duration::from_secs(10))?,
        underscores_in_headers: u.underscores_in_headers.unwrap_or(false),
        send_proxy: match &u.proxy_protocol {
            None => None,
            Some(v) => at.check(v, |s| match s.as_str() {
                "v1" => Ok(Some(crate::ProxyVersion::V1)),
                "v2" => Ok(Some(crate::ProxyVersion::V2)),
                "off" => Ok(None),
                other => Err(format!("proxy_protocol must be \"v1\", \"v2\" or \"off\", not {other:?}")),
            })?,
        },
        tcp: match &u.tcp {
            None => crate::TcpOptions::production_defaults(),
            Some(raw) => crate::TcpOptions::production_defaults().overlaid(&upstream_tcp(at, raw)?),
        },
        tls: None,
        protocol: UpstreamProtocol::Http1,
    })
}

/// An `[[upstream]]`'s `tls` and `tls_*` keys: None without `tls = true`,
/// when no other `tls_*` key may be set.
fn upstream_tls(
    u: &RawUpstream,
    at: &Locator,
    relative_to_file: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<UpstreamTls>, ConfigError> {
    let on = u.tls.as_ref().is_some_and(|t| *t.get_ref());
    let strings = [
        ("tls_server_name", &u.tls_server_name),
        ("tls_ca", &u.tls_ca),
        ("tls_certificate", &u.tls_certificate),
        ("tls_key", &u.tls_key),
    ];
    if !on {
        if let Some((key, span)) = strings
            .iter()
            .find_map(|(k, v)| v.as_ref().map(|v| (k, v.span())))
            .or_else(|| u.tls_verify.as_ref().map(|v| (&"tls_verify", v.span())))
        {
            return Err(at.error(span, format!("{key} applies only with tls = true")));
        }
        return Ok(None);
    }
    for (key, value) in &strings {
        if let Some(v) = value.as_ref().filter(|v| v.get_ref().is_empty()) {
            return Err(at.error(v.span(), format!("{key} is empty")));
        }
    }
    let client_certificate = match (&u.tls_certificate, &u.tls_key) {
        (Some(c), Some(k)) => Some((relative_to_file(c.get_ref()), relative_to_file(k.get_ref()))),
        (None, None) => None,
        (Some(c), None) => return Err(at.error(c.span(), "tls_certificate needs tls_key (its private key)")),
        (None, Some(k)) => {
            return Err(at.error(k.span(), "tls_key needs tls_certificate (the chain it signs for)"))
        }
    };
    Ok(Some(UpstreamTls {
        server_name: u
            .tls_server_name
            .as_ref()
            .map_or_else(|| u.name.get_ref().clone(), |n| n.get_ref().clone()),
        ca: u.tls_ca.as_ref().map(|c| relative_to_file(c.get_ref())),
        verify: u.tls_verify.as_ref().is_none_or(|v| *v.get_ref()),
        client_certificate,
    }))
}

/// An `[[upstream]]`'s `protocol`, which must agree with its `tls`.
fn upstream_protocol(u: &RawUpstream, at: &Locator, tls: bool) -> Result<UpstreamProtocol, ConfigError> {
    let Some(p) = &u.protocol else { return Ok(UpstreamProtocol::Http1) };
    at.check(p, |p| match (p.as_str(), tls) {
        ("http1", _) => Ok(UpstreamProtocol::Http1),
        ("h2", true) => Ok(UpstreamProtocol::H2),
        ("h2", false) => {
            Err("protocol = \"h2\" is HTTP/2 over TLS: set tls = true, or use \"h2c\" for cleartext"
                .to_string())
        }
        ("h2c", false) => Ok(UpstreamProtocol::H2c),
        ("h2c", true) => {
            Err("protocol = \"h2c\" is cleartext HTTP/2: with tls = true use \"h2\"".to_string())
        }
        (other, _) => Err(format!("protocol must be \"http1\", \"h2\" or \"h2c\", not {other:?}")),
    })
}

/// One `[[route]]`; `default_root` holds a proxy or redirect route's error pages.
fn parse_route(
    r: &RawRoute,
    at: &Locator,
    relative_to_file: &dyn Fn(&str) -> PathBuf,
    upstream_index: &dyn Fn(&Spanned<String>) -> Result<usize, ConfigError>,
    default_root: &Path,
) -> Result<Route, ConfigError> {
    let path = r.path.as_ref().map_or(Ok("/".to_string()), |p| {
        at.check(p, |p| {
            if p.starts_with('/') {
                Ok(p.clone())
            } else {
                Err(format!("route path {p:?} must start with /"))
            }
        })
    })?;
    let handler = route_handler(at, r, relative_to_file, &upstream_index)?;
    check_route_keys(at, r, &handler)?;
    // A fully qualified name's trailing dot names the same host.
    let host = r.host.as_ref().map(|h| h.get_ref().trim_end_matches('.').to_ascii_lowercase());
    let redirect_to_https = r.redirect_to_https.as_ref().is_some_and(|v| *v.get_ref());
    let headers = r
        .headers
        .iter()
        .map(|(name, value)| {
            at.check(value, |v| check_added_header(name, v).map(|()| (name.clone(), v.clone())))
        })
        .collect::<Result<_, _>>()?;
    let pages_root = match &handler {
        Handler::Static(site) => site.root.clone(),
        _ => default_root.to_path_buf(),
    };
    let error_pages = r
        .error_pages
        .iter()
        .map(|(status, page)| at.check(page, |p| load_error_page(status, p, &pages_root)))
        .collect::<Result<_, _>>()?;
    Ok(Route { host, path, handler, redirect_to_https, headers, error_pages, client_limits: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        parse(text, &dir.join("tine.toml"))
    }

    #[test]
    fn full_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("www")).unwrap();
        let c = parse_in(
            dir.path(),
            r#"
listen = ["127.0.0.1:0", "[::1]:9000"]
root = "www"
workers = 3
stats_path = "/dev/shm/x.stats"
[timeouts]
header = "5s"
drain = "500ms"
[limits]
connections_per_worker = 100
"#,
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.root, std::fs::canonicalize(dir.path().join("www")).unwrap());
        assert_eq!(c.workers, Workers::Count(3));
        assert_eq!(c.timeouts.header, Duration::from_secs(5));
        assert_eq!(c.timeouts.drain, Duration::from_millis(500));
        assert_eq!(c.timeouts.idle, Config::default().timeouts.idle);
        assert_eq!(c.limits.connections_per_worker, 100);
    }

    #[test]
    fn proxy_sections() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse_in(
            dir.path(),
            r#"
[[upstream]]
name = "app"
servers = ["127.0.0.1:9000", { address = "unix:/run/app.sock", weight = 3 }]
balance = "least_conn"
keepalive = 8

[[route]]
path = "/api/"
upstream = "app"
host_header = "upstream"

[[route]]
path = "/"
root = "."

[[stream]]
listen = "127.0.0.1:0"
upstream = "app"
"#,
        )
        .unwrap();
        assert_eq!(c.upstreams[0].servers.len(), 2);
        assert_eq!(c.upstreams[0].servers[1].weight, 3);
        assert_eq!(c.upstreams[0].keepalive, 8);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].handler, Handler::Proxy { upstream: 0, host: HostHeader::Upstream });
        assert_eq!(c.streams[0].upstream, 0);
        for (text, line) in [
            ("[[route]]\nupstream = \"nope\"\n", 2),
            ("[[upstream]]\nname = \"a\"\nservers = [\"x\"]\n", 3),
            ("[[upstream]]\nname = \"a\"\nservers = []\n", 3),
        ] {
            let err = parse_in(dir.path(), text).expect_err(text).to_string();
            assert!(err.contains(&format!("tine.toml:{line}:")), "{text:?} gave {err}");
        }
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("workers = 0\n", 1, "workers must be"),
            ("\n\nlisten = [\"nonsense\"]\n", 3, "is not IP:PORT"),
            ("[timeouts]\nheader = \"soon\"\n", 2, "not a duration"),
            ("root = \"does-not-exist\"\n", 1, "does-not-exist"),
            ("\nwokers = 2\n", 2, "unknown field"),
            ("listen = [\n", 1, "unclosed array"),
            ("[limits]\nrequest_head_bytes = 10\n", 2, "request_head_bytes must be"),
        ];
        for (text, line, needle) in cases {
            let err = parse_in(dir.path(), text).expect_err(text);
            let shown = err.to_string();
            assert!(shown.contains(&format!("tine.toml:{line}:")), "{text:?} gave {shown}");
            assert!(shown.contains(needle), "{text:?} gave {shown}");
        }
    }
}
