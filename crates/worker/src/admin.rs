//! The admin listener: `GET /metrics` (Prometheus) and `GET /stats.json`, read
//! straight from the stats region by whichever worker accepted the connection,
//! the dashboard at `GET /` and `/dashboard` (one page built into the binary
//! that polls /stats.json), and `GET /health` (also on public listeners at `health_path`), which a load
//! balancer probes: 200 while serving, 503 once the server drains or stops.
//! Bind it to loopback or a management network: it has no authentication.
//! It answers only requests for an IP literal, `localhost` or a name in
//! `admin_hosts` (421 otherwise; `/health` excepted), so a page that rebinds
//! its DNS name to the admin address cannot read it from a browser.

use crate::context::Ctx;
use crate::framing::{framing, plan_framing, Started};
use crate::responses::{error_page, Reply};
use std::sync::atomic::Ordering::Relaxed;
use tine_http::request::{Method, Request};
use tine_http::response::{HeadWriter, Status};
use tine_stats::RegionView;

pub fn respond(req: &Request<'_>, ctx: &mut Ctx, out: &mut Vec<u8>) -> Started {
    ctx.stats.slot.requests.fetch_add(1, Relaxed);
    let (keep_alive, discard) = plan_framing(req, ctx);
    let framing = framing(req, ctx.clock.date.bytes(), keep_alive, &crate::responses::NO_ROUTE);
    let path = req.origin_target.split(|&b| b == b'?').next().unwrap_or_default();
    let reply = match (req.method, path) {
        (_, p) if p != b"/health" && !admits(req.host, &ctx.http.admin_hosts) => {
            error_page(Status::MISDIRECTED_REQUEST, &framing, None, out)
        }
        (Method::Other, _) => {
            error_page(Status::METHOD_NOT_ALLOWED, &framing, Some(("Allow", b"GET, HEAD")), out)
        }
        (_, b"/metrics") => {
            let text = tine_stats::prometheus::render(&tine_stats::Snapshot::take(ctx.stats.region), None);
            document(out, &framing, b"text/plain; version=0.0.4; charset=utf-8", text.into_bytes())
        }
        (_, b"/health") => return health(req, ctx, out),
        (_, b"/" | b"/dashboard") => dashboard(out, &framing),
        (_, b"/stats.json") => {
            let json = tine_stats::render::json(&tine_stats::Snapshot::take(ctx.stats.region), None);
            document(out, &framing, b"application/json", json.to_string().into_bytes())
        }
        _ => error_page(Status::NOT_FOUND, &framing, None, out),
    };
    Started { reply, keep_alive, discard }
}

/// Whether the admin listener answers a request for `host`: an IP literal,
/// `localhost`, a name the operator listed, or no Host at all (HTTP/1.0).
/// Anything else is a name that resolves to the admin address without being
/// meant for it: a page rebinding its DNS name to read the statistics.
fn admits(host: Option<&[u8]>, listed: &[String]) -> bool {
    let Some(host) = host else { return true };
    let name = tine_http::request::host_without_port(host);
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.starts_with(b"[") && name.ends_with(b"]") {
        return std::str::from_utf8(&name[1..name.len() - 1])
            .is_ok_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
    }
    std::str::from_utf8(name).is_ok_and(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        || name.eq_ignore_ascii_case(b"localhost")
        || listed.iter().any(|l| name.eq_ignore_ascii_case(l.as_bytes()))
}

/// The health check: 200 `serving` while the master says it is running and
/// this worker is not draining; 503 `draining` from the moment the server
/// drains (`tine signal drain`, the drain_delay of a graceful stop, an
/// upgrade) or stops, and from the moment this worker drains for any reason
/// (its master died, a reload replaced it), though the region may still say
/// serving.
pub fn health(req: &Request<'_>, ctx: &mut Ctx, out: &mut Vec<u8>) -> Started {
    ctx.stats.slot.requests.fetch_add(1, Relaxed);
    let (keep_alive, discard) = plan_framing(req, ctx);
    let framing = framing(req, ctx.clock.date.bytes(), keep_alive, &crate::responses::NO_ROUTE);
    let reply = if req.method == Method::Other {
        error_page(Status::METHOD_NOT_ALLOWED, &framing, Some(("Allow", b"GET, HEAD")), out)
    } else if ctx.stats.region.serving() && !ctx.draining {
        document_with(out, &framing, Status::OK, b"text/plain", b"serving\n".to_vec())
    } else {
        document_with(out, &framing, Status::SERVICE_UNAVAILABLE, b"text/plain", b"draining\n".to_vec())
    };
    Started { reply, keep_alive, discard }
}

/// The dashboard: HTML, CSS and script in one page, embedded at build time.
/// Its policy lets it talk to this listener only.
const DASHBOARD: &str = include_str!("dashboard.html");

fn dashboard(out: &mut Vec<u8>, framing: &crate::responses::Framing) -> Reply {
    let mut h = HeadWriter::start(out, Status::OK, framing.date);
    h.header("Content-Type", b"text/html; charset=utf-8")
        .header("Cache-Control", b"no-store")
        .header(
            "Content-Security-Policy",
            b"default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        )
        .header("X-Content-Type-Options", b"nosniff")
        .header_u64("Content-Length", DASHBOARD.len() as u64);
    h.finish(framing.persistence);
    if framing.head_request {
        return Reply::head_only(Status::OK);
    }
    out.extend_from_slice(DASHBOARD.as_bytes());
    Reply { status: Status::OK, body: None, body_len: DASHBOARD.len() as u64 }
}

fn document(
    out: &mut Vec<u8>,
    framing: &crate::responses::Framing,
    content_type: &[u8],
    body: Vec<u8>,
) -> Reply {
    document_with(out, framing, Status::OK, content_type, body)
}

fn document_with(
    out: &mut Vec<u8>,
    framing: &crate::responses::Framing,
    status: Status,
    content_type: &[u8],
    body: Vec<u8>,
) -> Reply {
    let mut h = HeadWriter::start(out, status, framing.date);
    h.header("Content-Type", content_type)
        .header("Cache-Control", b"no-store")
        .header_u64("Content-Length", body.len() as u64);
    h.finish(framing.persistence);
    if framing.head_request {
        return Reply::head_only(status);
    }
    out.extend_from_slice(&body);
    Reply { status, body: None, body_len: body.len() as u64 }
}
