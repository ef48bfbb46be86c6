//! `GET /openapi.json`: the OpenAPI 3.1 document of the admin API (SPEC §7), derived by utoipa
//! from the types the answers are serialised from ([`super::views`]). The functions below carry
//! only each call's description; the handlers are in [`super::api`] and
//! [`super::portal`]. `make test` validates the document and runs schemathesis against a live
//! service with it.
#![allow(dead_code)] // the functions exist for their `#[utoipa::path]` descriptions

use super::views::*;
use keygate::model::Gate;
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The admin token (or, on the gateway listener, a tenant admin key judged by keygate).
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = doc.components.as_mut() {
            c.add_security_scheme(
                "admin_token",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate key service",
        description = "The admin API of `keygate serve` (SPEC §7): API keys (created and shown once, listed, edited, revoked, rolled, their credits), usage, the audit log, the request log and portal sessions. Every answer is JSON; errors are `{\"success\":false,\"error\",\"code\"}`.",
        license(name = "Apache-2.0")
    ),
    paths(create_key, list_keys, show_key, update_key, revoke_key, roll_key, change_credits, change_tenant_credits, key_usage, usage, audit_log, requests, key_requests, create_portal_session, check_fingerprints, webhook_deliveries),
    modifiers(&AdminToken),
    security(("admin_token" = [])),
    tags(
        (name = "keys", description = "API keys"),
        (name = "usage", description = "Usage by key, route and time"),
        (name = "audit", description = "Who changed what"),
        (name = "requests", description = "Every request made with a key (the request log)"),
        (name = "portal", description = "Customer portal sessions"),
        (name = "leaks", description = "Leaked keys (SPEC §15): which fingerprints are live keys; the webhook deliveries of key events")
    )
)]
pub struct ApiDoc;

/// Operations that take the `id` a create or roll answers with (OpenAPI links: clients and
/// schemathesis follow them from a new key to its calls).
const KEY_OPERATIONS: [&str; 7] = [
    "show_key",
    "update_key",
    "revoke_key",
    "roll_key",
    "change_credits",
    "key_usage",
    "key_requests",
];

/// The document as served: the derived one, plus what only the configuration knows (the
/// prefixes and roles a key may have) and the links from a new key to its calls.
pub fn document(gate: &Gate) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let prefixes: Vec<&str> = gate.prefixes.iter().map(|p| p.prefix.as_str()).collect();
    let mut roles: Vec<Value> = gate.roles.iter().map(|r| json!(r.name)).collect();
    if let Some(p) = doc.pointer_mut("/components/schemas/CreateBody/properties/prefix") {
        if !prefixes.is_empty() {
            p["enum"] = json!(prefixes);
        }
    }
    // The tenants a balance can be changed for: those the configuration gives credits.
    let tenants: Vec<&str> = gate.tenants.iter().map(|(t, _)| t.as_str()).collect();
    if let Some(Value::Array(params)) =
        doc.pointer_mut("/paths/~1v1~1tenants~1{tenant}~1credits/post/parameters")
    {
        for p in params.iter_mut().filter(|p| p["name"] == "tenant") {
            if !tenants.is_empty() {
                p["schema"]["enum"] = json!(tenants);
            }
        }
    }
    roles.push(Value::Null);
    for body in ["CreateBody", "PatchBody"] {
        if let Some(r) = doc.pointer_mut(&format!("/components/schemas/{body}/properties/role")) {
            r["enum"] = Value::Array(roles.clone());
        }
    }
    let links: serde_json::Map<String, Value> = KEY_OPERATIONS
        .iter()
        .map(|op| {
            (
                (*op).to_string(),
                json!({"operationId": op, "parameters": {"path.id": "$response.body#/data/id"}}),
            )
        })
        .collect();
    for created in [
        "/paths/~1v1~1api-keys/post/responses/201",
        "/paths/~1v1~1api-keys~1{id}~1roll/post/responses/201",
    ] {
        if let Some(r) = doc.pointer_mut(created) {
            r["links"] = Value::Object(links.clone());
        }
    }
    doc
}

/// Create a key (its plaintext is in this answer only)
#[utoipa::path(post, path = "/v1/api-keys", tag = "keys",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created", body = Envelope<CreatedKey>),
        (status = 400, description = "Bad input (the field's path first)", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 403, description = "Not allowed for a tenant admin key", body = ErrorBody),
        (status = 409, description = "The id exists", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn create_key() {}

/// List keys, newest first (paged with `limit`)
#[utoipa::path(get, path = "/v1/api-keys", tag = "keys",
    params(
        ("tenant" = Option<String>, Query, description = "One tenant's keys (a tenant admin key: its own)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size; the answer then has `next_cursor`"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")
    ),
    responses(
        (status = 200, description = "The keys", body = Page<Key>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn list_keys() {}

/// One key
#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key", body = Envelope<Key>),
        (status = 400, description = "Not a key id", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 404, description = "No such key (or another tenant's)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn show_key() {}

/// Edit a key's name, role, expiry, limits, restrictions or credits (`null` clears one)
#[utoipa::path(patch, path = "/v1/api-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The key as edited", body = Envelope<Key>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 403, description = "Not allowed for a tenant admin key (`rate_limits`, `credits`)", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The key is revoked", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn update_key() {}

/// Revoke a key
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "Revoked", body = Done),
        (status = 400, description = "Not a key id", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn revoke_key() {}

/// Roll a key: a new key with the same settings; the old one expires after the grace period
#[utoipa::path(post, path = "/v1/api-keys/{id}/roll", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = RollBody,
    responses(
        (status = 201, description = "The new key", body = Envelope<CreatedKey>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "Revoked, expired or rolled before", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn roll_key() {}

/// Change a key's balance of credits (SPEC §14): `add` or `subtract` this period's top-ups, or
/// `set` what remains (spending counts anew); effective at the proxies within the sync bound
#[utoipa::path(post, path = "/v1/api-keys/{id}/credits", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = CreditsOpBody,
    responses(
        (status = 200, description = "The key, its balance changed", body = Envelope<Key>),
        (status = 400, description = "Bad input (the field's path first)", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 403, description = "A tenant admin key (balances are the provider's)", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The key is revoked, or has no credits", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn change_credits() {}

/// Change a tenant's balance of credits (SPEC §14), whose grant and refill are the
/// configuration's `tenants.<tenant>.credits`: `add` or `subtract` this period's top-ups, or `set`
/// what remains; every key of the tenant carries it in the key set, effective at the proxies
/// within the sync bound
#[utoipa::path(post, path = "/v1/tenants/{tenant}/credits", tag = "keys",
    params(("tenant" = String, Path, description = "The tenant")),
    request_body = CreditsOpBody,
    responses(
        (status = 200, description = "The tenant's balance, changed", body = Envelope<TenantCredits>),
        (status = 400, description = "Bad input (the field's path first)", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 403, description = "A tenant admin key (balances are the provider's)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The configuration gives the tenant no credits", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn change_tenant_credits() {}

/// One key's usage by hour (and by day past the hourly retention)
#[utoipa::path(get, path = "/v1/api-keys/{id}/usage", tag = "usage",
    params(
        ("id" = String, Path, description = "The key's id"),
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339; default: all time"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339; default: all time")
    ),
    responses(
        (status = 200, description = "The usage", body = Envelope<KeyUsage>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn key_usage() {}

/// Usage over time, by key and by Envoy route
#[utoipa::path(get, path = "/v1/usage", tag = "usage",
    params(
        ("tenant" = Option<String>, Query, description = "One tenant (the admin token without it: every tenant)"),
        ("key" = Option<String>, Query, description = "One key"),
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339; default: 30 days (24 hours by the hour) before `to`"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339; default: now; at most 400 days after `from`"),
        ("granularity" = Option<String>, Query, pattern = "^(hour|day)$", description = "`hour` or `day` (default)")
    ),
    responses(
        (status = 200, description = "The summary", body = Envelope<UsageSummary>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn usage() {}

/// The audit log, newest first
#[utoipa::path(get, path = "/v1/audit-log", tag = "audit",
    params(
        ("tenant" = Option<String>, Query, description = "One tenant's entries"),
        ("key" = Option<String>, Query, description = "One key's entries"),
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")
    ),
    responses(
        (status = 200, description = "Entries", body = Page<AuditEntry>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn audit_log() {}

/// The request log, newest first (a tenant admin key: its tenant's only)
#[utoipa::path(get, path = "/v1/requests", tag = "requests",
    params(
        ("key_id" = Option<String>, Query, description = "One key's requests"),
        ("tenant" = Option<String>, Query, description = "One tenant's requests"),
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
        ("status" = Option<u16>, Query, description = "The status the client got (0, or 100 to 599)"),
        ("decision" = Option<String>, Query, pattern = "^(allowed|missing|invalid|revoked|expired|forbidden|rate_limited|unavailable|bad_request|usage_exceeded)$", description = "keygate's decision"),
        ("client_ip" = Option<String>, Query, description = "One client address"),
        ("path_prefix" = Option<String>, Query, description = "Paths that start with this (no wildcards)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")
    ),
    responses(
        (status = 200, description = "Requests", body = Page<RequestEntry>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn requests() {}

/// One key's requests, newest first, and its client addresses with first and last seen
#[utoipa::path(get, path = "/v1/api-keys/{id}/requests", tag = "requests",
    params(
        ("id" = String, Path, description = "The key's id"),
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
        ("status" = Option<u16>, Query, description = "The status the client got (0, or 100 to 599)"),
        ("decision" = Option<String>, Query, pattern = "^(allowed|missing|invalid|revoked|expired|forbidden|rate_limited|unavailable|bad_request|usage_exceeded)$", description = "keygate's decision"),
        ("client_ip" = Option<String>, Query, description = "One client address"),
        ("path_prefix" = Option<String>, Query, description = "Paths that start with this (no wildcards)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")
    ),
    responses(
        (status = 200, description = "The key's requests and addresses", body = KeyRequestsPage),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn key_requests() {}

/// A single-use link that opens a customer portal session for one tenant
#[utoipa::path(post, path = "/v1/portal-sessions", tag = "portal",
    request_body = PortalSessionBody,
    responses(
        (status = 201, description = "Created", body = Envelope<PortalSession>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 404, description = "Another tenant (for a tenant admin key)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn create_portal_session() {}

/// Which fingerprints (SHA-256 digests, as `keygate scan` prints them) are live keys the caller
/// may see: only digests travel
#[utoipa::path(post, path = "/v1/leaks/check", tag = "leaks",
    request_body = FingerprintsBody,
    responses(
        (status = 200, description = "Each fingerprint, in order, and whether it is a live key", body = Envelope<Vec<FingerprintCheck>>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn check_fingerprints() {}

/// The latest webhook deliveries of key events, newest first (the provider's admin only)
#[utoipa::path(get, path = "/v1/webhook-deliveries", tag = "leaks",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "How many (default 100)")
    ),
    responses(
        (status = 200, description = "Deliveries", body = Envelope<Vec<DeliveryEntry>>),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No valid admin token", body = ErrorBody),
        (status = 403, description = "A tenant admin key", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody)
    ))]
fn webhook_deliveries() {}
