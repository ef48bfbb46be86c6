//! Credits (SPEC §14) through a real Envoy with two workers: balances of keys and of tenants,
//! costs by method and path, exact under concurrency across workers (what is spent is what the
//! admitted requests cost, never more than the balance), `429 USAGE_EXCEEDED` and its headers,
//! a request refused for credits consuming no rate-limit window, and `credits_charge: success`
//! giving back what a 5xx cost. The upstream answers as each test says (`common::partners`).
mod common;
use common::partners::Http;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn sha(key: &str) -> String {
    keygate::keys::digest_hex(key.as_bytes())
}

/// An upstream answering 200, or 500 on paths under `/fail/`.
fn upstream() -> Http {
    Http::start(Box::new(|r, _| {
        let status = if r.path.starts_with("/fail/") {
            500
        } else {
            200
        };
        (status, "{}".into(), Duration::ZERO)
    }))
}

fn envoy(name: &str, config: &Value, upstream: &Http) -> Envoy {
    let text = config.to_string();
    let o = EnvoyOpts::new(name, &text, upstream.port);
    Envoy::start(&o)
}

fn remaining(r: &Response) -> Option<u64> {
    r.header("x-credits-remaining").map(|v| v.parse().unwrap())
}

const USAGE_EXCEEDED: &str = r#"{"error":"Usage limit exceeded","code":"USAGE_EXCEEDED"}"#;

/// 48 concurrent requests of costs 5 and 1 against a balance of 60, on fresh connections over
/// both workers: the admitted ones cost at most 60 in all, each left a different remainder
/// (every spend was seen by the next), and each refused one cost more than what was left.
#[test]
fn concurrent_requests_spend_a_balance_exactly_across_workers() {
    let up = upstream();
    let config = json!({
        "key_sources": [{"header": "x-api-key"}],
        "keys": [{"id": "k_exact", "sha256": sha("exact-key"), "credits": {"granted": 60}}],
        "credit_costs": [{"methods": ["POST"], "paths": ["/v1/search/*"], "cost": 5}]
    });
    let e = envoy("credits-exact", &config, &up);
    let results: Vec<(u64, Response)> = thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                s.spawn(move || {
                    (0..6)
                        .map(|i| {
                            let (method, path, cost) = if (t + i) % 2 == 0 {
                                ("POST", "/v1/search/q", 5)
                            } else {
                                ("GET", "/v1/items", 1)
                            };
                            (
                                cost,
                                send(e.port, method, path, &[("x-api-key", "exact-key")]),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let admitted: Vec<&(u64, Response)> = results.iter().filter(|(_, r)| r.status == 200).collect();
    let refused: Vec<&(u64, Response)> = results.iter().filter(|(_, r)| r.status != 200).collect();
    let spent: u64 = admitted.iter().map(|(c, _)| c).sum();
    assert!(spent <= 60, "spent {spent} of 60");
    assert!(!refused.is_empty(), "48 requests of these costs exceed 60");
    for (cost, r) in &refused {
        assert_eq!(r.status, 429);
        assert_eq!(r.body, USAGE_EXCEEDED);
        assert_eq!(
            r.header("retry-after"),
            None,
            "no refill: nothing to wait for"
        );
        assert!(r.header("x-ratelimit-limit").is_none());
        assert!(
            *cost > 60 - spent,
            "a request of cost {cost} refused with {} left",
            60 - spent
        );
    }
    // Every admitted request saw the spends before it: the remainders are all different, and
    // the smallest is what is left.
    let remainders: BTreeSet<u64> = admitted
        .iter()
        .map(|(_, r)| remaining(r).unwrap())
        .collect();
    assert_eq!(remainders.len(), admitted.len());
    assert_eq!(remainders.first().copied(), Some(60 - spent));
    let workers = per_worker_connections(&e);
    assert!(
        workers.iter().filter(|n| **n > 0).count() >= 2,
        "{workers:?}"
    );
    // What is left is exactly what one more request can spend.
    let left = 60 - spent;
    for _ in 0..left {
        assert_eq!(
            send(e.port, "GET", "/v1/items", &[("x-api-key", "exact-key")]).status,
            200
        );
    }
    let r = send(e.port, "GET", "/v1/items", &[("x-api-key", "exact-key")]);
    assert_eq!((r.status, r.body.as_str()), (429, USAGE_EXCEEDED));
    // The decision's own counter (flushed on the 0.5 s tick).
    let stat = "wasmcustom.keygate.rejected.reason.usage_exceeded.key_id.k_exact";
    let want = refused.len() as u64 + 1;
    assert!(
        wait_until(5, || e.counter(stat) == want),
        "{} of {want}",
        e.counter(stat)
    );
}

/// One balance for a tenant's keys (a key with its own balance draws from that one), a daily
/// refill's headers, free paths, and a request refused for credits counting in no window.
#[test]
fn a_tenant_balance_is_shared_and_refused_requests_take_no_window() {
    let up = upstream();
    let config = json!({
        "key_sources": [{"header": "x-api-key"}],
        "tenants": {"org_t": {"credits": {"granted": 10, "refill": {"interval": "month", "day": 1}}}},
        "keys": [
            {"id": "k_a", "sha256": sha("key-a"), "tenant": "org_t"},
            {"id": "k_b", "sha256": sha("key-b"), "tenant": "org_t"},
            {"id": "k_own", "sha256": sha("key-own"), "tenant": "org_t", "credits": {"granted": 1}},
            {"id": "k_lim", "sha256": sha("key-lim"), "credits": {"granted": 1},
             "rate_limits": [{"requests": 2, "per": "minute"}]}
        ],
        "credit_costs": [
            {"paths": ["/healthcheck"], "cost": 0},
            {"methods": ["POST"], "cost": 5}
        ]
    });
    let e = envoy("credits-tenant", &config, &up);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The next 1st of a month, 00:00 UTC: the tenant's monthly refill (this test straddles it
    // only if it runs across a month's first second).
    let stamp = keygate::timestamp::format_rfc3339(now as i64);
    let (y, m): (i64, i64) = (stamp[..4].parse().unwrap(), stamp[5..7].parse().unwrap());
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let refill =
        keygate::timestamp::parse_rfc3339(&format!("{ny:04}-{nm:02}-01T00:00:00Z")).unwrap() as u64;
    let mut admitted = 0;
    for i in 0..15 {
        let key = if i % 2 == 0 { "key-a" } else { "key-b" };
        let r = send(e.port, "GET", "/v1/items", &[("x-api-key", key)]);
        if r.status == 200 {
            admitted += 1;
            assert_eq!(remaining(&r), Some(10 - admitted));
            assert_eq!(
                r.header("x-credits-reset"),
                Some(refill.to_string().as_str())
            );
        } else {
            assert_eq!((r.status, r.body.as_str()), (429, USAGE_EXCEEDED));
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert!(r.header("x-credits-remaining").is_none());
            let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
            let until = refill - now;
            assert!(wait.abs_diff(until) <= 2, "{wait} vs {until}");
        }
    }
    assert_eq!(admitted, 10, "two keys, one balance of 10");
    // Free: admitted with nothing left.
    let r = send(e.port, "GET", "/healthcheck", &[("x-api-key", "key-a")]);
    assert_eq!((r.status, remaining(&r)), (200, Some(0)));
    // Its own balance, not the tenant's.
    let r = send(e.port, "GET", "/v1/items", &[("x-api-key", "key-own")]);
    assert_eq!((r.status, remaining(&r)), (200, Some(0)));
    assert!(r.header("x-credits-reset").is_none(), "no refill, no reset");

    // Limit 2 a minute, 1 credit: the POST (cost 5) is refused for credits and counts in no
    // window; the GET then shows one of two used; the next is refused for credits again.
    let lim = [("x-api-key", "key-lim")];
    let r = send(e.port, "POST", "/v1/items", &lim);
    assert_eq!((r.status, r.body.as_str()), (429, USAGE_EXCEEDED));
    assert!(
        r.header("x-ratelimit-remaining").is_none(),
        "credits are never X-RateLimit-*"
    );
    let r = send(e.port, "GET", "/v1/items", &lim);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(remaining(&r), Some(0));
    let r = send(e.port, "GET", "/v1/items", &lim);
    assert_eq!((r.status, r.body.as_str()), (429, USAGE_EXCEEDED));
}

/// A method override costs what the method it names costs: a GET that asks the upstream to
/// POST pays the POST's price.
#[test]
fn a_method_override_costs_the_dearest_method_named() {
    let up = upstream();
    let config = json!({
        "key_sources": [{"header": "x-api-key"}],
        "keys": [{"id": "k_o", "sha256": sha("key-o"), "credits": {"granted": 6}}],
        "credit_costs": [{"methods": ["POST"], "cost": 5}]
    });
    let e = envoy("credits-override", &config, &up);
    let r = send(
        e.port,
        "GET",
        "/v1/x",
        &[("x-api-key", "key-o"), ("x-http-method-override", "POST")],
    );
    assert_eq!((r.status, remaining(&r)), (200, Some(1)));
    let r = send(
        e.port,
        "GET",
        "/v1/x?_method=POST",
        &[("x-api-key", "key-o")],
    );
    assert_eq!((r.status, r.body.as_str()), (429, USAGE_EXCEEDED));
    let r = send(e.port, "GET", "/v1/x", &[("x-api-key", "key-o")]);
    assert_eq!((r.status, remaining(&r)), (200, Some(0)));
}

/// `credits_charge: success`: a request the upstream answers 5xx gets its credits back; a 2xx
/// keeps them spent.
#[test]
fn success_charging_gives_back_what_a_5xx_cost() {
    let up = upstream();
    let config = json!({
        "key_sources": [{"header": "x-api-key"}],
        "keys": [{"id": "k_s", "sha256": sha("key-s"), "credits": {"granted": 3}}],
        "credits_charge": "success"
    });
    let e = envoy("credits-success", &config, &up);
    let k = [("x-api-key", "key-s")];
    // Ten failures in a row cost nothing in the end.
    for _ in 0..10 {
        let r = send(e.port, "GET", "/fail/x", &k);
        assert_eq!(r.status, 500);
    }
    for left in [2, 1, 0] {
        let r = send(e.port, "GET", "/v1/ok", &k);
        assert_eq!((r.status, remaining(&r)), (200, Some(left)));
    }
    let r = send(e.port, "GET", "/v1/ok", &k);
    assert_eq!((r.status, r.body.as_str()), (429, USAGE_EXCEEDED));
}

/// A refill at the period boundary, with the test clock of the fault-injection build (a request
/// header moves every worker's clock ahead): a daily balance used up waits `Retry-After` until
/// 00:00 UTC; one second past it, the whole grant is back (top-ups and what was spent before do
/// not roll over), with the next day's reset; a monthly balance on the 31st refills on the
/// month's last day.
#[test]
fn a_refill_at_the_period_boundary_gives_the_grant_back() {
    let up = upstream();
    let config = json!({
        "key_sources": [{"header": "x-api-key"}],
        "keys": [
            {"id": "daily", "sha256": sha("key-daily"), "credits": {"granted": 2, "refill": {"interval": "day"},
             "top_up": {"period": 0, "amount": 5}}},
            {"id": "monthly", "sha256": sha("key-monthly"), "credits": {"granted": 1, "refill": {"interval": "month", "day": 31}}}
        ]
    });
    let text = config.to_string();
    let e = Envoy::start(&EnvoyOpts {
        wasm: Some(faults_wasm_path()),
        ..EnvoyOpts::new("credits-refill", &text, up.port)
    });
    let get = |key: &str, clock: Option<u64>| {
        let clock = clock.map(|c| format!("clock+{c}"));
        let mut headers = vec![("x-api-key", key)];
        if let Some(c) = clock.as_deref() {
            headers.push(("x-keygate-fault", c));
        }
        send(e.port, "GET", "/v1/x", &headers)
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let midnight = now - now % 86_400 + 86_400;
    // A top-up of another period (0) adds nothing: 2 today.
    for left in [1, 0] {
        let r = get("key-daily", Some(0));
        assert_eq!((r.status, remaining(&r)), (200, Some(left)));
        assert_eq!(
            r.header("x-credits-reset"),
            Some(midnight.to_string().as_str())
        );
    }
    let r = get("key-daily", None);
    assert_json(&r, 429, USAGE_EXCEEDED);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1 && retry <= midnight - now + 1, "{retry}");
    // One second past midnight (every worker's clock): the grant again, tomorrow's reset.
    let ahead = midnight + 1 - now;
    let r = get("key-daily", Some(ahead));
    assert_eq!((r.status, remaining(&r)), (200, Some(1)), "{}", r.body);
    assert_eq!(
        r.header("x-credits-reset"),
        Some((midnight + 86_400).to_string().as_str())
    );
    for _ in 0..4 {
        let _ = get("key-daily", None);
    }
    assert_json(&get("key-daily", None), 429, USAGE_EXCEEDED);
    // The monthly balance: used up, then past the month's refill day (clamped to its last day).
    let r = get("key-monthly", Some(0));
    assert_eq!((r.status, remaining(&r)), (200, Some(0)));
    let reset: u64 = r.header("x-credits-reset").unwrap().parse().unwrap();
    assert!(reset > now && reset - now <= 31 * 86_400, "{reset}");
    let (_, _, day) = keygate::timestamp::civil_from_days((reset / 86_400) as i64);
    let (_, _, next_day) = keygate::timestamp::civil_from_days((reset / 86_400 + 1) as i64);
    assert!(
        day == 31 || next_day == 1,
        "the 31st or the month's last day: {day}"
    );
    assert_json(&get("key-monthly", None), 429, USAGE_EXCEEDED);
    let r = get("key-monthly", Some(reset + 1 - now));
    assert_eq!((r.status, remaining(&r)), (200, Some(0)), "{}", r.body);
    let next: u64 = r.header("x-credits-reset").unwrap().parse().unwrap();
    assert!(
        next > reset + 27 * 86_400 && next <= reset + 31 * 86_400,
        "{next}"
    );
}

/// A configuration the filter cannot honour is refused with the path of the problem: a bad
/// top-up or serial, a bad refill, a cost that is not a number.
#[test]
fn credit_settings_it_cannot_honour_are_refused() {
    let errors = |c: Value| -> Vec<String> {
        match keygate::config::gate_from_value(&keygate_key_service::json::core_value(&c)) {
            Ok(_) => vec![],
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    };
    assert_eq!(
        errors(json!({"keys": [{"id": "k", "sha256": "00".repeat(32),
            "credits": {"granted": 5, "top_up": {"period": 0}, "serial": 4294967296u64}}]})),
        vec![
            "$.keys[0].credits.top_up: expected {\"period\": <unix seconds>, \"amount\": <whole number>}",
            "$.keys[0].credits.serial: must be at most 4294967295"
        ]
    );
    assert_eq!(
        errors(
            json!({"tenants": {"org": {"credits": {"granted": 5, "refill": {"interval": "week"}}}}})
        ),
        vec!["$.tenants.org.credits.refill.interval: \"week\" is not \"day\" or \"month\""]
    );
    assert_eq!(
        errors(
            json!({"tenants": {"org": {"credits": {"granted": 5, "refill": {"interval": "month", "day": 32}}}}})
        ),
        vec!["$.tenants.org.credits.refill.day: must be a day of the month, 1 to 31"]
    );
    assert_eq!(
        errors(json!({"credit_costs": [{"cost": "five"}]})),
        vec!["$.credit_costs[0].cost: expected a whole number ≥ 0, found a string"]
    );
    assert_eq!(
        errors(json!({"credits_charge": "always"})),
        vec!["$.credits_charge: \"always\" is not \"request\" or \"success\""]
    );
}
