//! MOOD MNKY style (SPEC §6): a standard header plus per-service custom headers, `DEV_API_` /
//! `PROD_API_` environments, Reader/Writer/Admin roles, daily limits per environment.
mod common;
use common::*;
use serde_json::json;

const READER: &str = "DEV_API_reader_0a1b2c3d";
const WRITER: &str = "DEV_API_writer_4e5f6a7b";
const ADMIN: &str = "PROD_API_admin_8c9d0e1f";
const N8N: &str = "PROD_API_n8n_2a3b4c5d";
const NO_METHOD: &str =
    r#"{"error":"API key is not allowed to use this method","code":"FORBIDDEN"}"#;

fn config() -> String {
    json!({
        "key_sources": [
            {"header": "x-api-key"},
            {"header": "X-N8N-API-KEY", "paths": ["/webhooks/n8n/*"]},
            {"header": "authorization", "scheme": "Bearer"}
        ],
        "prefixes": [
            {"prefix": "DEV_API_", "environment": "DEV", "rate_limits": [{"requests": 5000, "per": "day"}]},
            {"prefix": "PROD_API_", "environment": "PROD", "rate_limits": [{"requests": 50000, "per": "day"}]}
        ],
        "roles": {
            "Reader": {"methods": ["GET"]},
            "Writer": {"methods": ["GET", "POST", "PUT"]},
            "Admin": {"methods": ["*"]}
        },
        "keys": [
            {"id": "mm_reader", "sha256": sha(READER), "role": "Reader", "tenant": "mood"},
            {"id": "mm_writer", "sha256": sha(WRITER), "role": "Writer", "tenant": "mood"},
            {"id": "mm_admin", "sha256": sha(ADMIN), "role": "Admin", "tenant": "mood"},
            {"id": "mm_n8n", "sha256": sha(N8N), "role": "Writer", "tenant": "mood"}
        ]
    })
    .to_string()
}

fn next_midnight() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now - now % 86_400 + 86_400
}

#[test]
fn roles_limit_methods_and_daily_limits_follow_the_environment() {
    let up = Upstream::start("api");
    let cfg = config();
    let e = Envoy::start(&EnvoyOpts::new("mood", &cfg, up.port));
    let p = e.port;

    let r = get(p, "/workflows", &[("x-api-key", READER)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-environment"), Some("DEV"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("5000"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4999"));
    let midnight = next_midnight().to_string();
    assert_eq!(r.header("x-ratelimit-reset"), Some(midnight.as_str()));
    assert_eq!(
        r.upstream_header("x-api-key-role").as_deref(),
        Some("Reader")
    );

    // A Reader may not write: 403 with the environment and the (uncounted) limit.
    let r = send(
        p,
        "POST",
        "/workflows",
        &[("x-api-key", READER), ("content-length", "0")],
    );
    assert_json(&r, 403, NO_METHOD);
    assert_eq!(r.header("x-environment"), Some("DEV"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("5000"));
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("4999"),
        "a 403 is not counted"
    );

    let r = send(
        p,
        "PUT",
        "/workflows/1",
        &[("x-api-key", WRITER), ("content-length", "0")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-api-key-role").as_deref(),
        Some("Writer")
    );
    let r = send(p, "DELETE", "/workflows/1", &[("x-api-key", WRITER)]);
    assert_json(&r, 403, NO_METHOD);

    let r = send(
        p,
        "DELETE",
        "/workflows/1",
        &[("authorization", &format!("Bearer {ADMIN}"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-environment"), Some("PROD"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("50000"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("49999"));
    assert_eq!(r.upstream_header("authorization"), None);

    // The per-service header, with a case-insensitive name, on its own routes.
    let r = send(
        p,
        "POST",
        "/webhooks/n8n/flow",
        &[("X-N8N-API-KEY", N8N), ("content-length", "0")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("x-api-key-id").as_deref(), Some("mm_n8n"));
    assert_eq!(r.upstream_header("x-n8n-api-key"), None);
    assert_eq!(r.header("x-environment"), Some("PROD"));

    // Same key in two headers counts once; different keys are invalid.
    let r = get(
        p,
        "/webhooks/n8n/x",
        &[("x-api-key", N8N), ("x-n8n-api-key", N8N)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(
        p,
        "/webhooks/n8n/x",
        &[("x-api-key", READER), ("x-n8n-api-key", N8N)],
    );
    assert_json(&r, 401, INVALID);
}

/// SPEC §9: a source with `paths` is consulted only there; elsewhere its header is neither read
/// as a key nor removed.
#[test]
fn the_n8n_header_is_a_key_only_under_its_routes() {
    let up = Upstream::start("api");
    let cfg = config();
    let e = Envoy::start(&EnvoyOpts::new("mood-n8n", &cfg, up.port));
    let p = e.port;
    let r = get(p, "/workflows", &[("x-n8n-api-key", N8N)]);
    assert_json(&r, 401, MISSING);
    assert_eq!(r.header("x-environment"), None, "not read as a key at all");
    // With a key in the standard header, the n8n header is somebody else's: left alone.
    let r = get(
        p,
        "/workflows",
        &[("x-api-key", READER), ("x-n8n-api-key", "not-ours")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-api-key-id").as_deref(),
        Some("mm_reader")
    );
    assert_eq!(
        r.upstream_header("x-n8n-api-key").as_deref(),
        Some("not-ours")
    );
    assert_eq!(r.upstream_header("x-api-key"), None);
    // The standard header works on the n8n routes too; dot segments cannot borrow them.
    let r = get(p, "/webhooks/n8n/flow", &[("x-api-key", READER)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(
        p,
        "/webhooks/n8n/../../workflows",
        &[("x-n8n-api-key", N8N)],
    );
    assert_json(&r, 401, MISSING);
}
