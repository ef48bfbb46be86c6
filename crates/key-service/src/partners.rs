//! Leak reports from GitHub's and GitLab's secret scanning (SPEC §15): `POST /v1/leaks/github`,
//! `POST /v1/leaks/gitlab` (signed with the partner's published keys) and GitLab's token
//! revocation API for self-managed instances (`GET /v1/revocable_token_types`,
//! `POST /v1/revoke_tokens`, a shared token). Handlers read and verify; `ops::report_leaks`
//! acts.

use crate::answer::{json_response, ApiError};
use crate::leaks::{
    feedback, parse_signature, read_report, revocable_types, verify, Origin, Reported,
};
use crate::metrics::{metrics, LeakReport};
use crate::ops;
use crate::request::body_bytes;
use crate::server::Peer;
use crate::signing_keys::Lookup;
use crate::state::{now, Ctx};
use crate::store::{Actor, Store};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The largest report read; a larger one is `413`.
pub const LEAK_BODY_LIMIT: usize = 1024 * 1024;

pub async fn github<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    body: Body,
) -> Response {
    partner(ctx, Origin::GitHub, headers, peer.map(|p| p.0), body).await
}

pub async fn gitlab<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    body: Body,
) -> Response {
    partner(ctx, Origin::GitLab, headers, peer.map(|p| p.0), body).await
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn refused(origin: Origin, outcome: LeakReport, error: ApiError) -> Response {
    metrics().leak_report(origin.as_str(), outcome);
    error.into_response()
}

/// A report's body, at most [`LEAK_BODY_LIMIT`] bytes (`413` over it), counted when refused.
async fn report_body(origin: Origin, body: Body) -> Result<axum::body::Bytes, Response> {
    body_bytes(body, LEAK_BODY_LIMIT).await.map_err(|e| {
        let outcome = match e {
            ApiError::TooLarge(_) => LeakReport::too_large,
            _ => LeakReport::bad_body,
        };
        refused(origin, outcome, e)
    })
}

async fn partner<S: Store>(
    ctx: Ctx<S>,
    origin: Origin,
    headers: HeaderMap,
    peer: Option<Peer>,
    body: Body,
) -> Response {
    let source = match origin {
        Origin::GitHub => ctx.app.github_keys.as_ref(),
        Origin::GitLab => ctx.app.gitlab_keys.as_ref(),
    };
    // Unsigned (or this partner not set up): as if there were no such endpoint.
    let (Some(source), Some(identifier), Some(signature)) = (
        source,
        header(&headers, origin.identifier_header()),
        header(&headers, origin.signature_header()),
    ) else {
        return refused(origin, LeakReport::unsigned, ApiError::NotFound);
    };
    let bad_signature = || {
        refused(
            origin,
            LeakReport::bad_signature,
            ApiError::BadRequest("signature: does not verify with the named public key".into()),
        )
    };
    // A header that is no signature at all costs no fetch and no body.
    let Ok(signature) = parse_signature(signature) else {
        return bad_signature();
    };
    let key = match source
        .lookup(identifier, move |f| {
            metrics().key_fetch(origin.as_str(), f.is_ok())
        })
        .await
    {
        Lookup::Found(k) => k,
        Lookup::Unknown => return bad_signature(),
        Lookup::Unavailable => {
            return refused(origin, LeakReport::unavailable, ApiError::Unavailable)
        }
    };
    let body = match report_body(origin, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if verify(&key, &body, &signature).is_err() {
        return bad_signature();
    }
    let reported = match read_report(&body, "url") {
        Ok(r) => r,
        Err(e) => return refused(origin, LeakReport::bad_body, ApiError::BadRequest(e)),
    };
    let actor = Actor {
        kind: origin.as_str(),
        id: Some(identifier.chars().take(128).collect()),
        ip: peer.map(|p| p.0.ip().to_string()),
        at: now(),
    };
    match ops::report_leaks(&ctx.app, origin, &actor, &reported).await {
        Ok(known) => {
            metrics().leak_report(origin.as_str(), LeakReport::accepted);
            json_response(StatusCode::OK, &feedback(&reported, &|d| known.contains(d)))
        }
        Err(e) => refused(origin, LeakReport::unavailable, e),
    }
}

/// `GET /v1/revocable_token_types`: the types GitLab may send (one per configured prefix).
pub async fn revocable_token_types<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !ctx.app.auth.gitlab_revocation(&headers)? {
        return Err(ApiError::NotFound);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"types": revocable_types(&ctx.app.gate)}),
    ))
}

/// `POST /v1/revoke_tokens`: `204` once every token is acted on; `400` for a body that is not
/// a list of tokens or names a type not offered.
pub async fn revoke_tokens<S: Store>(
    State(ctx): State<Ctx<S>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    body: Body,
) -> Response {
    const ORIGIN: &str = "gitlab";
    match ctx.app.auth.gitlab_revocation(&headers) {
        Ok(true) => {}
        Ok(false) => return ApiError::NotFound.into_response(),
        Err(e) => return refused(Origin::GitLab, LeakReport::unsigned, e),
    }
    let body = match report_body(Origin::GitLab, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let reported: Vec<Reported> = match read_report(&body, "location") {
        Ok(r) => r,
        Err(e) => {
            return refused(
                Origin::GitLab,
                LeakReport::bad_body,
                ApiError::BadRequest(e),
            )
        }
    };
    let types = revocable_types(&ctx.app.gate);
    if let Some((i, r)) = reported
        .iter()
        .enumerate()
        .find(|(_, r)| !types.contains(&r.token_type))
    {
        return refused(
            Origin::GitLab,
            LeakReport::bad_body,
            ApiError::BadRequest(format!(
                "$[{i}].type: {:?} is not a revocable token type of this service",
                r.token_type
            )),
        );
    }
    let actor = Actor {
        kind: ORIGIN,
        id: Some("revocation_api".into()),
        ip: peer.map(|p| p.0 .0.ip().to_string()),
        at: now(),
    };
    match ops::report_leaks(&ctx.app, Origin::GitLab, &actor, &reported).await {
        Ok(_) => {
            metrics().leak_report(ORIGIN, LeakReport::accepted);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => refused(Origin::GitLab, LeakReport::unavailable, e),
    }
}
