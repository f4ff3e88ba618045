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
use crate::framing::{plan_framing, reply_to, Started};
use crate::responses::{error_page, ReplyBody, ReplyTo};
use std::sync::atomic::Ordering::Relaxed;
use tine_http::message::ResponseHead;
use tine_http::request::{Method, Request};
use tine_http::response::Status;
use tine_stats::RegionView;

pub fn respond(req: &Request<'_>, ctx: &mut Ctx, head: &mut ResponseHead) -> Started {
    ctx.stats.slot.requests.fetch_add(1, Relaxed);
    let (keep_alive, discard) = plan_framing(req, ctx);
    let to = reply_to(req, &crate::responses::NO_ROUTE);
    let path = req.origin_target.split(|&b| b == b'?').next().unwrap_or_default();
    let body = match (req.method, path) {
        (_, p) if p != b"/health" && !admits(req.host, &ctx.http.admin_hosts) => {
            error_page(Status::MISDIRECTED_REQUEST, &to, None, head)
        }
        (Method::Other, _) => {
            error_page(Status::METHOD_NOT_ALLOWED, &to, Some(("Allow", b"GET, HEAD")), head)
        }
        (_, b"/metrics") => {
            let text = tine_stats::prometheus::render(&tine_stats::Snapshot::take(ctx.stats.region), None);
            document(head, &to, Status::OK, b"text/plain; version=0.0.4; charset=utf-8", text.into_bytes())
        }
        (_, b"/health") => return health(req, ctx, head),
        (_, b"/" | b"/dashboard") => dashboard(head, &to),
        (_, b"/stats.json") => {
            let json = tine_stats::render::json(&tine_stats::Snapshot::take(ctx.stats.region), None);
            document(head, &to, Status::OK, b"application/json", json.to_string().into_bytes())
        }
        _ => error_page(Status::NOT_FOUND, &to, None, head),
    };
    Started { body, keep_alive, discard }
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
pub fn health(req: &Request<'_>, ctx: &mut Ctx, head: &mut ResponseHead) -> Started {
    ctx.stats.slot.requests.fetch_add(1, Relaxed);
    let (keep_alive, discard) = plan_framing(req, ctx);
    let to = reply_to(req, &crate::responses::NO_ROUTE);
    let body = if req.method == Method::Other {
        error_page(Status::METHOD_NOT_ALLOWED, &to, Some(("Allow", b"GET, HEAD")), head)
    } else if ctx.stats.region.serving() && !ctx.draining {
        document(head, &to, Status::OK, b"text/plain", b"serving\n".to_vec())
    } else {
        document(head, &to, Status::SERVICE_UNAVAILABLE, b"text/plain", b"draining\n".to_vec())
    };
    Started { body, keep_alive, discard }
}

/// The dashboard: HTML, CSS and script in one page, embedded at build time.
/// Its policy lets it talk to this listener only.
const DASHBOARD: &str = include_str!("dashboard.html");

fn dashboard(head: &mut ResponseHead, to: &ReplyTo) -> ReplyBody {
    to.start(head, Status::OK);
    head.fields
        .push("Content-Type", b"text/html; charset=utf-8")
        .push("Cache-Control", b"no-store")
        .push(
            "Content-Security-Policy",
            b"default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        )
        .push("X-Content-Type-Options", b"nosniff")
        .push_u64("Content-Length", DASHBOARD.len() as u64);
    to.body(ReplyBody::Static(DASHBOARD.as_bytes()))
}

/// A document of tine's own made for this request, never cached.
pub(crate) fn document(
    head: &mut ResponseHead,
    to: &ReplyTo,
    status: Status,
    content_type: &[u8],
    body: Vec<u8>,
) -> ReplyBody {
    to.start(head, status);
    head.fields
        .push("Content-Type", content_type)
        .push("Cache-Control", b"no-store")
        .push_u64("Content-Length", body.len() as u64);
    to.body(ReplyBody::Owned(body))
}
