//! ACME's http-01 challenges, answered on plain listeners from the board the
//! ACME process publishes (crates/tls/src/acme_challenges.rs): `GET
//! /.well-known/acme-challenge/TOKEN` for a published token, and for the
//! name it validates, gets the key authorization. Any other request under
//! that path is routed as usual, so a site's own files there still work.

use crate::context::Ctx;
use crate::framing::{plan_framing, reply_to, Started};
use std::sync::atomic::Ordering::Relaxed;
use tine_http::message::ResponseHead;
use tine_http::request::{Method, Request};
use tine_http::response::Status;

const PREFIX: &[u8] = b"/.well-known/acme-challenge/";

/// True when `req` asks for a challenge on the board, for its name.
pub fn is_challenge(req: &Request<'_>, ctx: &Ctx) -> bool {
    challenge_for(req, ctx).is_some()
}

fn challenge_for(req: &Request<'_>, ctx: &Ctx) -> Option<tine_tls::Challenge> {
    let board = ctx.http.acme_http01.as_ref()?;
    if !matches!(req.method, Method::Get | Method::Head) {
        return None;
    }
    let path = req.origin_target.split(|&b| b == b'?').next().unwrap_or_default();
    let token = std::str::from_utf8(path.strip_prefix(PREFIX)?).ok()?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    let challenge = board.http01(token)?;
    let host = tine_http::request::host_without_port(req.host?);
    let host = host.strip_suffix(b".").unwrap_or(host);
    host.eq_ignore_ascii_case(challenge.name.as_bytes()).then_some(challenge)
}

/// The key authorization, as RFC 8555 section 8.3 has it: 200, the bytes
/// alone, `application/octet-stream`.
pub fn answer(req: &Request<'_>, ctx: &mut Ctx, head: &mut ResponseHead) -> Started {
    ctx.stats.slot.requests.fetch_add(1, Relaxed);
    let (keep_alive, discard) = plan_framing(req, ctx);
    let to = reply_to(req, &crate::responses::NO_ROUTE);
    // Looked up again: the board may have changed since routing (the
    // challenge was withdrawn), and then the CA gets a 404.
    let body = match challenge_for(req, ctx) {
        Some(c) => crate::admin::document(
            head,
            &to,
            Status::OK,
            b"application/octet-stream",
            c.key_authorization.into_bytes(),
        ),
        None => crate::responses::error_page(Status::NOT_FOUND, &to, None, head),
    };
    Started { body, keep_alive, discard }
}
