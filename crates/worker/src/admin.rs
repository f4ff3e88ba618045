//! The admin listener: `GET /metrics` (Prometheus) and `GET /stats.json`, read
//! straight from the stats region by whichever worker accepted the connection.
//! Bind it to loopback or a management network: it has no authentication.

use crate::connection::{framing, plan_framing, Started};
use crate::context::Ctx;
use crate::responses::{error_page, Reply};
use std::sync::atomic::Ordering::Relaxed;
use tine_http::request::{Method, Request};
use tine_http::response::{HeadWriter, Status};
use tine_stats::RegionView;

pub fn respond(req: &Request<'_>, ctx: &mut Ctx, out: &mut Vec<u8>) -> Started {
    ctx.stats.slot.requests.fetch_add(1, Relaxed);
    let (keep_alive, discard) = plan_framing(req, ctx);
    let framing = framing(req, ctx.clock.date.bytes(), keep_alive);
    let path = req.origin_target.split(|&b| b == b'?').next().unwrap_or_default();
    let reply = match (req.method, path) {
        (Method::Other, _) => {
            error_page(Status::METHOD_NOT_ALLOWED, &framing, Some(("Allow", b"GET, HEAD")), out)
        }
        (_, b"/metrics") => {
            let text = tine_stats::prometheus::render(&ctx.stats.region.snapshot(), None);
            document(out, &framing, b"text/plain; version=0.0.4; charset=utf-8", text.into_bytes())
        }
        (_, b"/stats.json") => {
            let json = tine_stats::render::json(&ctx.stats.region.snapshot(), None);
            document(out, &framing, b"application/json", json.to_string().into_bytes())
        }
        _ => error_page(Status::NOT_FOUND, &framing, None, out),
    };
    Started { reply, keep_alive, discard }
}

fn document(
    out: &mut Vec<u8>,
    framing: &crate::responses::Framing,
    content_type: &[u8],
    body: Vec<u8>,
) -> Reply {
    let mut h = HeadWriter::start(out, Status::OK, framing.date);
    h.header("Content-Type", content_type)
        .header("Cache-Control", b"no-store")
        .header_u64("Content-Length", body.len() as u64);
    h.finish(framing.persistence);
    if framing.head_request {
        return Reply::head_only(Status::OK);
    }
    out.extend_from_slice(&body);
    Reply { status: Status::OK, body: None, body_len: body.len() as u64 }
}
