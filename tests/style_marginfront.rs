//! MarginFront style (SPEC §6): `x-api-key`, secret vs publishable keys by prefix, publishable
//! keys read-only on `/v1/verify` and public pricing, and `/v1/verify` answered by the filter.
mod common;
use common::*;
use serde_json::json;

const SK_LIVE: &str = "mf_sk_live_a1b2c3d4e5f6";
const PK_LIVE: &str = "mf_pk_live_f6e5d4c3b2a1";
const SK_TEST: &str = "mf_sk_test_0011223344";
const PK_TEST: &str = "mf_pk_test_5566778899";
const READ_ONLY: &str = r#"{"error":"Publishable keys are read-only. Use a secret key for this request.","code":"FORBIDDEN"}"#;

fn config() -> String {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [
            {"prefix": "mf_sk_live_", "environment": "LIVE", "role": "secret"},
            {"prefix": "mf_pk_live_", "environment": "LIVE", "role": "publishable"},
            {"prefix": "mf_sk_test_", "environment": "TEST", "role": "secret"},
            {"prefix": "mf_pk_test_", "environment": "TEST", "role": "publishable"}
        ],
        "roles": {
            "secret": {"methods": ["*"]},
            "publishable": {
                "methods": ["GET", "HEAD", "OPTIONS"],
                "paths": ["/v1/verify", "/v1/pricing/*"],
                "forbidden_message": "Publishable keys are read-only. Use a secret key for this request."
            }
        },
        "keys": [
            {"id": "mf_key_sk", "sha256": sha(SK_LIVE), "name": "Server key", "tenant": "org_mf_1"},
            {"id": "mf_key_pk", "sha256": sha(PK_LIVE), "name": "Browser key", "tenant": "org_mf_1"},
            {"id": "mf_key_sk_test", "sha256": sha(SK_TEST), "tenant": "org_mf_1"},
            {"id": "mf_key_pk_test", "sha256": sha(PK_TEST)}
        ],
        "verify_path": "/v1/verify"
    })
    .to_string()
}

fn setup(name: &str) -> (Envoy, Upstream) {
    let up = Upstream::start("api");
    let cfg = config();
    let e = Envoy::start(&EnvoyOpts::new(name, &cfg, up.port));
    (e, up)
}

#[test]
fn verify_answers_with_the_key_and_organization() {
    let (e, _up) = setup("mf-verify");
    let r = get(e.port, "/v1/verify", &[("x-api-key", SK_LIVE)]);
    assert_json(
        &r,
        200,
        r#"{"key":{"id":"mf_key_sk","name":"Server key","environment":"LIVE","role":"secret"},"organization":{"id":"org_mf_1"}}"#,
    );
    assert!(!r.reached_upstream(), "verify is answered by the filter");
    assert_eq!(r.header("x-environment"), Some("LIVE"));

    let r = get(e.port, "/v1/verify", &[("x-api-key", PK_LIVE)]);
    assert_json(
        &r,
        200,
        r#"{"key":{"id":"mf_key_pk","name":"Browser key","environment":"LIVE","role":"publishable"},"organization":{"id":"org_mf_1"}}"#,
    );
    let r = get(e.port, "/v1/verify", &[("x-api-key", PK_TEST)]);
    assert_json(
        &r,
        200,
        r#"{"key":{"id":"mf_key_pk_test","name":null,"environment":"TEST","role":"publishable"},"organization":{"id":null}}"#,
    );

    let r = get(e.port, "/v1/verify", &[("x-api-key", "mf_sk_live_wrong")]);
    assert_json(&r, 401, INVALID);
    assert_eq!(r.header("x-environment"), Some("LIVE"));
    let r = get(e.port, "/v1/verify", &[]);
    assert_json(&r, 401, MISSING);
}

#[test]
fn publishable_keys_are_read_only_on_verify_and_pricing() {
    let (e, _up) = setup("mf-roles");
    let p = e.port;
    for path in [
        "/v1/pricing/plans",
        "/v1/pricing",
        "/v1/pricing/plans/pro?currency=eur",
    ] {
        let r = get(p, path, &[("x-api-key", PK_LIVE)]);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.reached_upstream());
        assert_eq!(
            r.upstream_header("x-api-key-role").as_deref(),
            Some("publishable")
        );
    }
    let r = send(
        p,
        "POST",
        "/v1/pricing/plans",
        &[("x-api-key", PK_LIVE), ("content-length", "0")],
    );
    assert_json(&r, 403, READ_ONLY);
    assert_eq!(r.header("x-environment"), Some("LIVE"));
    let r = get(p, "/v1/customers", &[("x-api-key", PK_TEST)]);
    assert_json(&r, 403, READ_ONLY);
    assert_eq!(r.header("x-environment"), Some("TEST"));
    let r = get(p, "/v1/pricing/../customers", &[("x-api-key", PK_LIVE)]);
    assert_json(&r, 403, READ_ONLY);

    // Secret keys may do everything.
    for method in ["POST", "DELETE", "PATCH"] {
        let r = send(
            p,
            method,
            "/v1/customers",
            &[("x-api-key", SK_TEST), ("content-length", "0")],
        );
        assert_eq!(r.status, 200, "{method}: {}", r.body);
        assert_eq!(r.json()["method"], method);
        assert_eq!(
            r.upstream_header("x-api-key-role").as_deref(),
            Some("secret")
        );
        assert_eq!(r.upstream_header("x-environment").as_deref(), Some("TEST"));
        assert_eq!(r.upstream_header("x-api-key"), None);
    }
}
