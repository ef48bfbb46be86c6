//! Configuration handling in a real Envoy: bad configurations are refused with the JSON path
//! of the problem, reloads keep the last good configuration, counters survive reloads.
mod common;
use common::*;
use serde_json::json;

#[test]
fn envoy_refuses_a_configuration_keygate_does_not_understand() {
    let up = Upstream::start("api");
    let cases = [
        (
            json!({"keys": [{"id": "a", "sha256": "not-a-hash"}]}),
            "$.keys[0].sha256: must be 64 lowercase hex characters",
        ),
        (
            json!({"keys": [], "rate_limit": []}),
            "$.rate_limit: unknown field",
        ),
        (
            json!({"keys": [{"id": "a", "sha256": sha("x"), "allowed_ips": ["10.0.0.300/8"]}]}),
            "$.keys[0].allowed_ips[0]: \"10.0.0.300/8\" is not an IP address",
        ),
        (
            json!({"keys": [{"id": "a", "sha256": sha("x"), "role": "ghost"}]}),
            "$.keys[0].role: role \"ghost\" is not defined",
        ),
    ];
    for (cfg, expected) in cases {
        let cfg = cfg.to_string();
        let log = match Envoy::try_start(&EnvoyOpts::new("cfg-bad", &cfg, up.port)) {
            Ok(_) => panic!("Envoy started with a bad keygate configuration: {cfg}"),
            Err(log) => log,
        };
        assert!(
            log.contains(&format!("configuration rejected: {expected}")),
            "no {expected:?} in the log:\n{log}"
        );
    }
}

#[test]
fn a_bad_reload_keeps_the_last_good_configuration_and_counters_survive() {
    let up = Upstream::start("api");
    let good = json!({
        "key_sources": [{"header": "x-api-key"}],
        "keys": [{"id": "k1", "sha256": sha("key-one"), "rate_limits": [{"requests": 5, "per": "day"}]}]
    })
    .to_string();
    let mut e = Envoy::start_dynamic(&EnvoyOpts::new("cfg-reload", &good, up.port));
    for remaining in ["4", "3"] {
        let r = get(e.port, "/", &[("x-api-key", "key-one")]);
        assert_eq!(
            (r.status, r.header("x-ratelimit-remaining")),
            (200, Some(remaining))
        );
    }

    // A configuration with an unknown field is refused; the old one keeps serving.
    let bad =
        json!({"key_sources": [{"header": "x-api-key"}], "keys": [], "surprise": true}).to_string();
    assert!(
        !e.update_plugin_config(&EnvoyOpts::new("cfg-reload", &bad, up.port)),
        "Envoy accepted a bad config"
    );
    let r = get(e.port, "/", &[("x-api-key", "key-one")]);
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (200, Some("2"))
    );
    assert!(e
        .log()
        .contains("configuration rejected: $.surprise: unknown field"));

    // A good new configuration: new key, changed limit; k1's count carries over.
    let next = json!({
        "key_sources": [{"header": "x-api-key"}],
        "keys": [
            {"id": "k1", "sha256": sha("key-one"), "rate_limits": [{"requests": 6, "per": "day"}]},
            {"id": "k2", "sha256": sha("key-two")}
        ]
    })
    .to_string();
    assert!(
        e.update_plugin_config(&EnvoyOpts::new("cfg-reload", &next, up.port)),
        "Envoy refused a good config"
    );
    let r = get(e.port, "/", &[("x-api-key", "key-two")]);
    assert_eq!(r.status, 200, "the new key works: {}", r.body);
    let r = get(e.port, "/", &[("x-api-key", "key-one")]);
    assert_eq!(
        (
            r.status,
            r.header("x-ratelimit-limit"),
            r.header("x-ratelimit-remaining")
        ),
        (200, Some("6"), Some("2"))
    );
    assert!(e.is_running());
}

#[test]
fn the_filter_logs_its_version_and_revision_when_configured() {
    let up = Upstream::start("api");
    let cfg = json!({"key_sources": [{"header": "x-api-key"}], "keys": []}).to_string();
    let e = Envoy::start(&EnvoyOpts::new("cfg-version", &cfg, up.port));
    let loaded = |log: &str| {
        log.lines().any(|l| {
            l.split_once(": configuration loaded: 0 keys")
                .and_then(|(before, _)| before.rsplit_once("keygate "))
                .is_some_and(|(_, version)| is_version_line(&format!("keygate {version}")))
        })
    };
    // Envoy writes its log file in batches: wait for the line (bounded).
    assert!(
        wait_until(10, || loaded(&e.log())),
        "no version line in the log:\n{}",
        e.log()
    );
}
