//! Credential extraction from header maps: never panics; a found key is non-empty, trimmed, and
//! held by exactly the sources its bit mask names; two different keys are a conflict.
#![no_main]
use keygate::config::gate_from_value;
use keygate::credentials::{find_key, Presented};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn gate() -> &'static keygate::model::Gate {
    static GATE: OnceLock<keygate::model::Gate> = OnceLock::new();
    GATE.get_or_init(|| {
        gate_from_value(&keygate::json::Value::from(serde_json::json!({
            "key_sources": [
                {"header": "x-api-key"},
                {"header": "authorization", "scheme": "Bearer"},
                {"query": "api_key"},
                {"header": "x-n8n-api-key", "paths": ["/webhooks/n8n/*"]}
            ],
            "keys": []
        })))
        .unwrap_or_else(|e| panic!("fuzz gate: {e:?}"))
    })
}

fuzz_target!(|data: &[u8]| {
    // Line 1: the path; then `name:value` lines (names lower-cased, as Envoy gives them).
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or("/");
    let owned: Vec<(String, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let headers: Vec<(&str, &[u8])> = owned.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
    let judged = keygate::path::canonical_path(path).unwrap_or_else(|_| "/".into());
    match find_key(&gate().sources, &headers, path, &judged) {
        Presented::Missing => {}
        Presented::Conflict { sources } => assert_ne!(sources, 0),
        Presented::Key { key, sources } => {
            assert!(!key.is_empty());
            assert_ne!(sources, 0);
            for (i, s) in gate().sources.iter().enumerate() {
                if sources & (1 << i) != 0 {
                    assert!(s.applies_to(&judged), "a source off its paths held the key");
                }
            }
            // Header values are trimmed; a query value is taken as sent (found by fuzzing:
            // the invariant first covered both).
            let header_only = gate()
                .sources
                .iter()
                .enumerate()
                .all(|(i, s)| sources & (1 << i) == 0 || s.header().is_some());
            if header_only {
                assert_eq!(key.trim_ascii(), key, "header keys are trimmed");
            }
        }
    }
});
