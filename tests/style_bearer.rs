//! Bearer style (SPEC §6): `Authorization: Bearer sk_live_…/sk_test_…`, per-key IP, referer and
//! endpoint restrictions answered with 403, `WWW-Authenticate` on 401s, hidden credentials.
mod common;
use common::*;
use serde_json::json;

const PLAIN: &str = "sk_live_51HqLyjWDarjtT1zdp7dc";
const IP_OK: &str = "sk_live_iponly9f8e7d";
const IP_OTHER: &str = "sk_live_ipother1a2b3c";
const IP_V6: &str = "sk_live_ipv6only7e8f9a";
const REFERER: &str = "sk_live_referer4d5e6f";
const PATHS: &str = "sk_test_paths7a8b9c";

fn config(extra: serde_json::Value) -> String {
    let mut c = json!({
        "key_sources": [{"header": "authorization", "scheme": "Bearer"}],
        "prefixes": [
            {"prefix": "sk_live_", "environment": "LIVE"},
            {"prefix": "sk_test_", "environment": "TEST"}
        ],
        "keys": [
            {"id": "key_plain", "sha256": sha(PLAIN), "tenant": "acct_1"},
            {"id": "key_ip", "sha256": sha(IP_OK), "allowed_ips": ["127.0.0.1", "2001:db8::/32"]},
            {"id": "key_ip_other", "sha256": sha(IP_OTHER), "allowed_ips": ["203.0.113.0/24"]},
            {"id": "key_ip_v6", "sha256": sha(IP_V6), "allowed_ips": ["::1/128"]},
            {"id": "key_referer", "sha256": sha(REFERER), "allowed_referers": ["https://app.example.com/*"]},
            {"id": "key_paths", "sha256": sha(PATHS), "allowed_paths": ["/v1/users/*", "/v1/health"]}
        ]
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c.to_string()
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

const FORBIDDEN_IP: &str =
    r#"{"error":"API key is not allowed from this IP address","code":"FORBIDDEN"}"#;
const FORBIDDEN_REFERER: &str =
    r#"{"error":"API key is not allowed from this referer","code":"FORBIDDEN"}"#;
const FORBIDDEN_PATH: &str =
    r#"{"error":"API key is not allowed to access this path","code":"FORBIDDEN"}"#;

#[test]
fn bearer_keys_and_401_challenge() {
    let up = Upstream::start("api");
    let cfg = config(json!({}));
    let e = Envoy::start(&EnvoyOpts::new("bearer-basic", &cfg, up.port));
    let p = e.port;

    let auth = bearer(PLAIN);
    let r = get(p, "/v1/charges", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-environment"), Some("LIVE"));
    assert_eq!(
        r.upstream_header("authorization"),
        None,
        "the key never reaches the upstream"
    );
    assert_eq!(
        r.upstream_header("x-api-key-id").as_deref(),
        Some("key_plain")
    );
    assert_eq!(r.upstream_header("x-tenant-id").as_deref(), Some("acct_1"));

    // The scheme is case-insensitive.
    let lower = format!("bearer {PLAIN}");
    assert_eq!(
        get(p, "/v1/charges", &[("authorization", &lower)]).status,
        200
    );

    let r = get(p, "/v1/charges", &[]);
    assert_json(&r, 401, MISSING);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api\""));

    // Another scheme is not a key from this source.
    let r = get(p, "/v1/charges", &[("authorization", "Basic dXNlcjpwYXNz")]);
    assert_json(&r, 401, MISSING);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api\""));

    let r = get(
        p,
        "/v1/charges",
        &[("authorization", "Bearer sk_test_nosuchkey")],
    );
    assert_json(&r, 401, INVALID);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api\""));
    assert_eq!(r.header("x-environment"), Some("TEST"));
}

#[test]
fn ip_referer_and_endpoint_restrictions_answer_403() {
    let up = Upstream::start("api");
    let cfg = config(json!({}));
    let e = Envoy::start(&EnvoyOpts::new("bearer-restrict", &cfg, up.port));
    let p = e.port;

    // IP: the test client is 127.0.0.1.
    let r = get(p, "/v1/charges", &[("authorization", &bearer(IP_OK))]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(p, "/v1/charges", &[("authorization", &bearer(IP_OTHER))]);
    assert_json(&r, 403, FORBIDDEN_IP);
    assert_eq!(r.header("x-environment"), Some("LIVE"));
    assert!(!r.reached_upstream());

    // IPv6 clients: the same listener port on [::1].
    let auth6 = bearer(IP_V6);
    let r = send_to(
        "::1",
        p,
        "GET",
        "/v1/charges",
        &[("authorization", &auth6), ("x-test-id", "v6")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(e.access_entry("v6")["client"], "::1");
    let r = get(p, "/v1/charges", &[("authorization", &auth6)]);
    assert_json(&r, 403, FORBIDDEN_IP);
    let r = send_to(
        "::1",
        p,
        "GET",
        "/v1/charges",
        &[("authorization", &bearer(IP_OK))],
    );
    assert_json(&r, 403, FORBIDDEN_IP);

    // Referer.
    let auth = bearer(REFERER);
    for ok in [
        "https://app.example.com/checkout",
        "https://app.example.com",
        "https://APP.example.com/a/../b?x=1",
    ] {
        let r = get(
            p,
            "/v1/charges",
            &[("authorization", &auth), ("referer", ok)],
        );
        assert_eq!(r.status, 200, "{ok}: {}", r.body);
    }
    for bad in [
        "https://app.example.com.evil.com/",
        "https://evil.com/https://app.example.com/",
        "http://app.example.com/",
    ] {
        let r = get(
            p,
            "/v1/charges",
            &[("authorization", &auth), ("referer", bad)],
        );
        assert_json(&r, 403, FORBIDDEN_REFERER);
    }
    let r = get(p, "/v1/charges", &[("authorization", &auth)]);
    assert_json(&r, 403, FORBIDDEN_REFERER);

    // Endpoints, after path normalisation.
    let auth = bearer(PATHS);
    for ok in [
        "/v1/users",
        "/v1/users/42",
        "/v1/users/42/cards?limit=3",
        "/v1/health",
        "/v1/users/./42",
    ] {
        let r = get(p, ok, &[("authorization", &auth)]);
        assert_eq!(r.status, 200, "{ok}: {}", r.body);
        assert_eq!(r.header("x-environment"), Some("TEST"));
    }
    for bad in [
        "/v1/charges",
        "/v1/users/../charges",
        "/v1/users/%2e%2e/charges",
        "/v1/health/x",
        "/v1/usersx",
    ] {
        let r = get(p, bad, &[("authorization", &auth)]);
        assert_json(&r, 403, FORBIDDEN_PATH);
        assert_eq!(r.header("x-environment"), Some("TEST"), "{bad}");
    }
    // An encoded slash means different things to different upstreams: refused.
    let r = get(p, "/v1/users/..%2Fcharges", &[("authorization", &auth)]);
    assert_json(
        &r,
        400,
        r#"{"error":"Invalid request path","code":"BAD_REQUEST"}"#,
    );
}

#[test]
fn credentials_in_the_query_are_opt_in_and_hidden() {
    let up = Upstream::start("api");
    let cfg = config(json!({
        "key_sources": [{"header": "authorization", "scheme": "Bearer"}, {"query": "api_key"}]
    }));
    let e = Envoy::start(&EnvoyOpts::new("bearer-query", &cfg, up.port));
    let r = get(e.port, &format!("/v1/charges?limit=3&api_key={PLAIN}"), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_path(), "/v1/charges?limit=3");
    // Rejected requests lose the query key too: the access log never shows it.
    let r = get(
        e.port,
        &format!("/v1/charges?limit=3&api_key={IP_OTHER}"),
        &[("x-test-id", "q403")],
    );
    assert_json(&r, 403, FORBIDDEN_IP);
    let entry = e.access_entry("q403");
    assert_eq!(entry["path"], "/v1/charges?limit=3");
    assert!(!std::fs::read_to_string(e.dir.join("access.log"))
        .unwrap()
        .contains(PLAIN));
    // Header and query with different keys: invalid.
    let r = get(
        e.port,
        &format!("/v1/charges?api_key={PLAIN}"),
        &[("authorization", &bearer(IP_OK))],
    );
    assert_json(&r, 401, INVALID);
    // Without the query source configured the parameter is not a key.
    drop(e);
    let cfg = config(json!({}));
    let e = Envoy::start(&EnvoyOpts::new("bearer-noquery", &cfg, up.port));
    let r = get(e.port, &format!("/v1/charges?api_key={PLAIN}"), &[]);
    assert_json(&r, 401, MISSING);
}

#[test]
fn hide_credentials_false_passes_the_key_and_headers_can_be_renamed_or_off() {
    let up = Upstream::start("api");
    let cfg = config(json!({
        "hide_credentials": false,
        "environment_header": "",
        "upstream_headers": {"key_id": "x-caller", "tenant": ""}
    }));
    let e = Envoy::start(&EnvoyOpts::new("bearer-nohide", &cfg, up.port));
    let auth = bearer(PLAIN);
    let r = get(
        e.port,
        "/v1/charges",
        &[("authorization", &auth), ("x-tenant-id", "client-value")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("authorization"), Some(auth));
    assert_eq!(r.upstream_header("x-caller").as_deref(), Some("key_plain"));
    assert_eq!(r.upstream_header("x-api-key-id"), None);
    assert_eq!(
        r.header("x-environment"),
        None,
        "environment header turned off"
    );
    assert_eq!(r.upstream_header("x-environment"), None);
    // A header the filter does not own is the client's own business.
    assert_eq!(
        r.upstream_header("x-tenant-id").as_deref(),
        Some("client-value")
    );
}
