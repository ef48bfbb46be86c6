//! `GET /openapi.json` (SPEC §7): the OpenAPI 3.1 document of the admin API, validated by
//! openapi-spec-validator and exercised by schemathesis against a live `keygate serve` on
//! SQLite: no 5xx for any generated input, every answer (status, content type, body) as the
//! document says. Both tools are pinned in the Makefile (`make openapi-tools`).
mod common;
use common::service::*;
use common::*;
use serde_json::{json, Value};
use std::process::Command;

fn tool(name: &str) -> std::path::PathBuf {
    let p = repo().join(".venv/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make openapi-tools` (make test does)",
        p.display()
    );
    p
}

#[test]
fn the_document_is_valid_and_every_generated_call_conforms_to_it() {
    let dir = scratch_dir("svc-openapi");
    let cfg = dir.join("plugin.json");
    std::fs::write(
        &cfg,
        json!({
            "key_sources": [{"header": "x-api-key"}],
            "prefixes": [{"prefix": "oa_live_", "environment": "LIVE", "role": "writer"},
                         {"prefix": "oa_test_", "environment": "TEST"}],
            "roles": {"admin": {"methods": ["*"]}, "writer": {"methods": ["GET", "POST"]}},
            "tenants": {"org_oa": {"credits": {"granted": 100, "refill": {"interval": "day"}}}}
        })
        .to_string(),
    )
    .unwrap();
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    let s = Service::on(&db, &cfg);

    // Served without a token, as JSON, with the configuration's prefixes and roles.
    let (st, doc) = call(&s.url(), "GET", "/openapi.json", None, None);
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"], json!("3.1.0"));
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for p in [
        "/v1/api-keys",
        "/v1/api-keys/{id}",
        "/v1/api-keys/{id}/roll",
        "/v1/api-keys/{id}/usage",
        "/v1/usage",
        "/v1/audit-log",
        "/v1/portal-sessions",
    ] {
        assert!(paths.iter().any(|x| *x == p), "{p} is not in the document");
    }
    assert_eq!(
        doc.pointer("/components/schemas/CreateBody/properties/prefix/enum"),
        Some(&json!(["oa_live_", "oa_test_"]))
    );
    assert_eq!(
        doc.pointer("/paths/~1v1~1tenants~1{tenant}~1credits/post/parameters/0/schema/enum"),
        Some(&json!(["org_oa"]))
    );
    let file = dir.join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = Command::new(tool("openapi-spec-validator"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A bounded schemathesis run (fixed seed): examples, coverage, fuzzing and stateful phases
    // (the links lead from a created key to its calls).
    let out = Command::new(tool("schemathesis"))
        .current_dir(&dir)
        .args(["run", &format!("{}/openapi.json", s.url())])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "100", "--seed", "7", "--no-color"])
        .args(["--generation-database", "none", "--request-timeout", "10"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}\nservice log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let generated: u64 = text
        .lines()
        .find(|l| l.contains(" generated, "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(generated > 500, "schemathesis ran too little:\n{text}");
    assert!(text.contains("No issues found"), "{text}");
    // The service kept running and answering.
    let (st, b): (u16, Value) = s.admin("GET", "/v1/api-keys?limit=1", None);
    assert_eq!(st, 200, "{b}");
    eprintln!(
        "schemathesis: {}",
        text.lines()
            .filter(|l| l.contains("generated") || l.contains("API Links"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}
