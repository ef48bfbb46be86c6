//! MLM platform style (SPEC §6): `x-tenant-api-key`, `mlm_live_` LIVE / `mlm_sandbox_` SANDBOX
//! routed to different upstreams, revocation, expiry, public paths, anti-spoofing, audit trail.
mod common;
use common::*;
use serde_json::json;

const LIVE: &str = "mlm_live_4f9a2c7e1b3d";
const SANDBOX: &str = "mlm_sandbox_8e7d6c5b4a39";

fn config() -> String {
    json!({
        "key_sources": [{"header": "x-tenant-api-key"}],
        "prefixes": [
            {"prefix": "mlm_live_", "environment": "LIVE"},
            {"prefix": "mlm_sandbox_", "environment": "SANDBOX"}
        ],
        "keys": [
            {"id": "key_live", "sha256": sha(LIVE), "name": "Production Key", "tenant": "org_42"},
            {"id": "key_sbx", "key": SANDBOX, "tenant": "org_42"},
            {"id": "key_revoked", "sha256": sha("mlm_live_revoked1"), "revoked": true, "tenant": "org_7"},
            {"id": "key_expired", "sha256": sha("mlm_live_expired1"), "expires_at": "2020-01-01T00:00:00Z"},
            {"id": "key_future", "sha256": sha("mlm_live_future1"), "expires_at": 4102444800u64}
        ],
        "public_paths": ["/healthz"]
    })
    .to_string()
}

struct Setup {
    envoy: Envoy,
    _live: Upstream,
    _sandbox: Upstream,
}

fn setup(name: &str) -> Setup {
    let live = Upstream::start("live");
    let sandbox = Upstream::start("sandbox");
    let cfg = config();
    let envoy = Envoy::start(&EnvoyOpts {
        sandbox_upstream: Some(sandbox.port),
        ..EnvoyOpts::new(name, &cfg, live.port)
    });
    Setup {
        envoy,
        _live: live,
        _sandbox: sandbox,
    }
}

#[test]
fn live_and_sandbox_keys_reach_their_upstreams_with_identity() {
    let s = setup("mlm-allowed");
    let r = get(
        s.envoy.port,
        "/v1/orders?x=1",
        &[("x-tenant-api-key", LIVE)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-echo-upstream"), Some("live"));
    assert_eq!(r.header("x-environment"), Some("LIVE"));
    assert_eq!(
        r.header("x-ratelimit-limit"),
        None,
        "no limit configured, no rate-limit headers"
    );
    assert_eq!(r.upstream_path(), "/v1/orders?x=1");
    assert_eq!(r.upstream_header("x-environment").as_deref(), Some("LIVE"));
    assert_eq!(
        r.upstream_header("x-api-key-id").as_deref(),
        Some("key_live")
    );
    assert_eq!(r.upstream_header("x-tenant-id").as_deref(), Some("org_42"));
    assert_eq!(
        r.upstream_header("x-api-key-role"),
        None,
        "no role configured"
    );
    assert_eq!(
        r.upstream_header("x-tenant-api-key"),
        None,
        "hide_credentials defaults to true"
    );

    let r = get(s.envoy.port, "/v1/orders", &[("x-tenant-api-key", SANDBOX)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-echo-upstream"),
        Some("sandbox"),
        "routed on the environment header"
    );
    assert_eq!(r.header("x-environment"), Some("SANDBOX"));
    assert_eq!(
        r.upstream_header("x-environment").as_deref(),
        Some("SANDBOX")
    );
    assert_eq!(
        r.upstream_header("x-api-key-id").as_deref(),
        Some("key_sbx")
    );

    // A key with a future expiry works.
    let r = get(
        s.envoy.port,
        "/",
        &[("x-tenant-api-key", "mlm_live_future1")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-api-key-id").as_deref(),
        Some("key_future")
    );
}

#[test]
fn rejections_have_exact_bodies_and_environment_when_the_prefix_is_known() {
    let s = setup("mlm-reject");
    let p = s.envoy.port;

    let r = get(p, "/v1/orders", &[]);
    assert_json(&r, 401, MISSING);
    assert_eq!(r.header("x-environment"), None);
    assert_eq!(
        r.header("www-authenticate"),
        None,
        "no Bearer source configured"
    );

    // Unknown prefix: invalid, no lookup, no environment.
    let r = get(
        p,
        "/v1/orders",
        &[("x-tenant-api-key", "sk_live_4f9a2c7e1b3d")],
    );
    assert_json(&r, 401, INVALID);
    assert_eq!(r.header("x-environment"), None);

    // Known prefix, unknown key: invalid with the prefix's environment.
    let r = get(p, "/v1/orders", &[("x-tenant-api-key", "mlm_live_unknown")]);
    assert_json(&r, 401, INVALID);
    assert_eq!(r.header("x-environment"), Some("LIVE"));

    let r = get(
        p,
        "/v1/orders",
        &[("x-tenant-api-key", "mlm_sandbox_unknown")],
    );
    assert_eq!(r.header("x-environment"), Some("SANDBOX"));

    let r = get(
        p,
        "/v1/orders",
        &[("x-tenant-api-key", "mlm_live_revoked1")],
    );
    assert_json(
        &r,
        401,
        r#"{"error":"API key has been revoked","code":"UNAUTHORIZED"}"#,
    );
    assert_eq!(r.header("x-environment"), Some("LIVE"));

    let r = get(
        p,
        "/v1/orders",
        &[("x-tenant-api-key", "mlm_live_expired1")],
    );
    assert_json(
        &r,
        401,
        r#"{"error":"API key has expired","code":"UNAUTHORIZED"}"#,
    );
    assert_eq!(r.header("x-environment"), Some("LIVE"));

    // Two values of the key header that differ: invalid.
    let r = send(
        p,
        "GET",
        "/",
        &[("x-tenant-api-key", LIVE), ("x-tenant-api-key", SANDBOX)],
    );
    assert_json(&r, 401, INVALID);
    // The same key twice counts once.
    let r = send(
        p,
        "GET",
        "/",
        &[("x-tenant-api-key", LIVE), ("x-tenant-api-key", LIVE)],
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // A path that cannot be resolved safely is refused, never matched raw.
    let r = get(p, "/v1/../../etc/passwd", &[("x-tenant-api-key", LIVE)]);
    assert_json(
        &r,
        400,
        r#"{"error":"Invalid request path","code":"BAD_REQUEST"}"#,
    );
}

/// SPEC §9: a sandbox-only gateway (`environments_accepted`) refuses live keys with a 403
/// naming their environment ("never use LIVE keys in development").
#[test]
fn a_sandbox_gateway_refuses_live_keys() {
    let up = Upstream::start("sandbox");
    let mut cfg: serde_json::Value = serde_json::from_str(&config()).unwrap();
    cfg["environments_accepted"] = json!(["SANDBOX"]);
    cfg["rate_limits"] = json!([{"requests": 100, "per": "minute"}]);
    let cfg = cfg.to_string();
    let e = Envoy::start(&EnvoyOpts::new("mlm-sandbox-gw", &cfg, up.port));
    let r = get(
        e.port,
        "/v1/orders",
        &[("x-tenant-api-key", LIVE), ("x-test-id", "gw-live")],
    );
    assert_json(
        &r,
        403,
        r#"{"error":"LIVE keys are not accepted here","code":"FORBIDDEN"}"#,
    );
    assert_eq!(r.header("x-environment"), Some("LIVE"));
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("100"),
        "not counted"
    );
    assert_eq!(e.access_entry("gw-live")["decision"], "forbidden");
    let r = get(e.port, "/v1/orders", &[("x-tenant-api-key", SANDBOX)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-environment"), Some("SANDBOX"));
    // Revocation and validity still come first.
    let r = get(
        e.port,
        "/v1/orders",
        &[("x-tenant-api-key", "mlm_live_revoked1")],
    );
    assert_json(
        &r,
        401,
        r#"{"error":"API key has been revoked","code":"UNAUTHORIZED"}"#,
    );
}

/// SPEC §9: keys of a checksummed prefix with a wrong checksum are invalid without a lookup.
#[test]
fn checksummed_keys_reject_typos_before_any_lookup() {
    let up = Upstream::start("live");
    let good = keygate::checksum::append("mlm_live_4cTq9ZrW2yXb7Ke1");
    let cfg = json!({
        "key_sources": [{"header": "x-tenant-api-key"}],
        "prefixes": [{"prefix": "mlm_live_", "environment": "LIVE", "checksum": "crc32"}],
        "keys": [{"id": "key_ck", "sha256": sha(&good)}]
    })
    .to_string();
    let e = Envoy::start(&EnvoyOpts::new("mlm-checksum", &cfg, up.port));
    let r = get(e.port, "/v1/orders", &[("x-tenant-api-key", &good)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let typo = format!("{}x", &good[..good.len() - 1]);
    let r = get(e.port, "/v1/orders", &[("x-tenant-api-key", &typo)]);
    assert_json(&r, 401, INVALID);
    assert_eq!(r.header("x-environment"), Some("LIVE"));
}

#[test]
fn public_paths_need_no_key_and_get_nothing_added() {
    let s = setup("mlm-public");
    let r = get(s.envoy.port, "/healthz", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.reached_upstream());
    assert_eq!(r.header("x-environment"), None);
    assert_eq!(r.upstream_header("x-environment"), None);
    assert_eq!(r.upstream_header("x-api-key-id"), None);
    // Below a public path is not public (the pattern is exact).
    let r = get(s.envoy.port, "/healthz/deep", &[]);
    assert_eq!(r.status, 401);
    // Dot segments cannot borrow a public path's exemption.
    let r = get(s.envoy.port, "/healthz/../v1/orders", &[]);
    assert_json(&r, 401, MISSING);
}

#[test]
fn client_sent_identity_headers_are_removed_on_every_request() {
    let s = setup("mlm-spoof");
    let p = s.envoy.port;
    let spoof = [
        ("x-environment", "SANDBOX"),
        ("x-api-key-id", "key_admin"),
        ("x-tenant-id", "org_evil"),
        ("x-api-key-role", "admin"),
    ];
    // On an allowed request: replaced by the filter's values; the route follows the real key.
    let mut h = spoof.to_vec();
    h.push(("x-tenant-api-key", LIVE));
    let r = get(p, "/v1/orders", &h);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-echo-upstream"),
        Some("live"),
        "a spoofed environment must not pick the route"
    );
    assert_eq!(r.upstream_header("x-environment").as_deref(), Some("LIVE"));
    assert_eq!(
        r.upstream_header("x-api-key-id").as_deref(),
        Some("key_live")
    );
    assert_eq!(r.upstream_header("x-tenant-id").as_deref(), Some("org_42"));
    assert_eq!(r.upstream_header("x-api-key-role"), None);

    // On a public path: removed, nothing added.
    let r = get(p, "/healthz", &spoof);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-upstream"), Some("live"));
    for (name, _) in spoof {
        assert_eq!(r.upstream_header(name), None, "{name} reached the upstream");
    }
    // On a rejected request: nothing goes upstream at all.
    let r = get(p, "/v1/orders", &spoof);
    assert_eq!(r.status, 401);
    assert!(!r.reached_upstream());
}

#[test]
fn audit_trail_is_in_the_access_log_and_the_key_is_nowhere() {
    let s = setup("mlm-audit");
    let p = s.envoy.port;
    get(
        p,
        "/v1/a",
        &[("x-tenant-api-key", LIVE), ("x-test-id", "allowed")],
    );
    get(p, "/v1/a", &[("x-test-id", "missing")]);
    get(
        p,
        "/v1/a",
        &[
            ("x-tenant-api-key", "mlm_live_unknown"),
            ("x-test-id", "invalid"),
        ],
    );
    get(
        p,
        "/v1/a",
        &[
            ("x-tenant-api-key", "mlm_live_revoked1"),
            ("x-test-id", "revoked"),
        ],
    );
    get(
        p,
        "/v1/a",
        &[
            ("x-tenant-api-key", "mlm_live_expired1"),
            ("x-test-id", "expired"),
        ],
    );
    get(p, "/healthz", &[("x-test-id", "public")]);

    let e = s.envoy.access_entry("allowed");
    assert_eq!(e["decision"], "allowed");
    assert_eq!(e["key_id"], "key_live");
    assert_eq!(e["tenant"], "org_42");
    assert_eq!(e["environment"], "LIVE");
    assert_eq!(e["method"], "GET");
    assert_eq!(e["path"], "/v1/a");
    assert_eq!(e["status"], 200);
    assert_eq!(e["client"], "127.0.0.1");

    let e = s.envoy.access_entry("missing");
    assert_eq!(
        (e["decision"].as_str(), e["status"].as_u64()),
        (Some("missing"), Some(401))
    );
    assert!(
        e["key_id"].is_null() && e["tenant"].is_null() && e["environment"].is_null(),
        "{e}"
    );

    let e = s.envoy.access_entry("invalid");
    assert_eq!(e["decision"], "invalid");
    assert_eq!(e["environment"], "LIVE");
    assert!(e["key_id"].is_null(), "{e}");

    let e = s.envoy.access_entry("revoked");
    assert_eq!(
        (
            e["decision"].as_str(),
            e["key_id"].as_str(),
            e["tenant"].as_str()
        ),
        (Some("revoked"), Some("key_revoked"), Some("org_7"))
    );
    let e = s.envoy.access_entry("expired");
    assert_eq!(
        (e["decision"].as_str(), e["key_id"].as_str()),
        (Some("expired"), Some("key_expired"))
    );

    let e = s.envoy.access_entry("public");
    assert!(e["decision"].is_null(), "public paths are not judged: {e}");

    // Usage stats per key id.
    let stats = s.envoy.stats_prometheus_once(&[
        "keygate_requests{key_id=\"key_live\"} 1",
        "keygate_allowed{key_id=\"key_live\"} 1",
        "keygate_rejected{reason=\"revoked\",key_id=\"key_revoked\"} 1",
        "keygate_rejected{reason=\"missing\"} 1",
    ]);
    assert!(
        stats.contains("keygate_requests{key_id=\"key_live\"} 1"),
        "{stats}"
    );
    assert!(
        stats.contains("keygate_allowed{key_id=\"key_live\"} 1"),
        "{stats}"
    );
    assert!(
        stats.contains("keygate_rejected{reason=\"revoked\",key_id=\"key_revoked\"} 1"),
        "{stats}"
    );
    assert!(
        stats.contains("keygate_rejected{reason=\"missing\"} 1"),
        "{stats}"
    );

    // The plaintext key appears in no log, stat or filter state.
    let everything = format!(
        "{}{}{}",
        s.envoy.log(),
        std::fs::read_to_string(s.envoy.dir.join("access.log")).unwrap_or_default(),
        stats
    );
    for secret in [LIVE, SANDBOX, "mlm_live_revoked1"] {
        assert!(
            !everything.contains(secret),
            "plaintext key {secret} leaked"
        );
    }
}
