//! Fleet-wide limits (SPEC §10) with real parts only: Redis (Debian's redis-server, and a
//! three-master Redis Cluster), `keygate ratelimit` replicas, and two Envoys with two workers
//! each, all on loopback.
mod common;
use common::fleet::*;
use common::*;
use serde_json::json;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Keys of several limits; `on_failure` as given.
fn config(on_failure: &str) -> String {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "fl_", "environment": "LIVE"}],
        "roles": {"reader": {"methods": ["GET"]}},
        "keys": [
            {"id": "day25", "sha256": sha("fl_day25"), "rate_limits": [{"requests": 25, "per": "day"}]},
            {"id": "hour30", "sha256": sha("fl_hour30"), "rate_limits": [{"requests": 30, "per": "hour"}]},
            {"id": "day60", "sha256": sha("fl_day60"), "rate_limits": [{"requests": 60, "per": "day"}]},
            {"id": "two", "sha256": sha("fl_two"), "rate_limits": [{"requests": 12, "per": "hour"}, {"requests": 8, "per": "day"}]},
            {"id": "two_b", "sha256": sha("fl_two_b"), "rate_limits": [{"requests": 5, "per": "hour"}, {"requests": 100, "per": "day"}]},
            {"id": "cache", "sha256": sha("fl_cache"), "rate_limits": [{"requests": 3, "per": "day"}]},
            {"id": "fail", "sha256": sha("fl_fail"), "rate_limits": [{"requests": 3, "per": "day"}]},
            {"id": "reader", "sha256": sha("fl_reader"), "role": "reader", "rate_limits": [{"requests": 10, "per": "day"}]},
            {"id": "free", "sha256": sha("fl_free"), "rate_limits": []},
            {"id": "cr_lim", "sha256": sha("fl_cr_lim"), "tenant": "org_f", "rate_limits": [{"requests": 3, "per": "day"}]},
            {"id": "cr_free", "sha256": sha("fl_cr_free"), "tenant": "org_f"},
            {"id": "cr_own", "sha256": sha("fl_cr_own"), "credits": {"granted": 25}},
            {"id": "cr_cost", "sha256": sha("fl_cr_cost"), "credits": {"granted": 60, "refill": {"interval": "day"}},
             "rate_limits": [{"requests": 1000, "per": "hour"}]}
        ],
        "tenants": {"org_f": {"credits": {"granted": 6}}},
        "credit_costs": [{"methods": ["POST"], "cost": 5}],
        "rate_limit_service": {"cluster": "ratelimit", "authority": "ratelimit.internal",
                               "timeout_ms": 2000, "on_failure": on_failure}
    })
    .to_string()
}

struct Fleet {
    envoys: Vec<Envoy>,
    _up: Upstream,
}

fn fleet(name: &str, cfg: &str, services: &[u16], envoys: usize) -> Fleet {
    let up = Upstream::start("api");
    let envoys = (0..envoys)
        .map(|i| {
            Envoy::start(&EnvoyOpts {
                rate_limit_service: services.to_vec(),
                ..EnvoyOpts::new(&format!("{name}-{i}"), cfg, up.port)
            })
        })
        .collect();
    Fleet { envoys, _up: up }
}

/// `n` concurrent requests with `key`, spread over every Envoy of the fleet.
fn burst(f: &Fleet, key: &str, n: usize) -> Vec<Response> {
    let ports: Vec<u16> = f.envoys.iter().map(|e| e.port).collect();
    const THREADS: usize = 8;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let ports = ports.clone();
            let key = key.to_string();
            thread::spawn(move || {
                (t..n)
                    .step_by(THREADS)
                    .map(|i| get(ports[i % ports.len()], "/v1/x", &[("x-api-key", &key)]))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn day_reset() -> u64 {
    (now() / 86_400 + 1) * 86_400
}

fn hour_reset() -> u64 {
    (now() / 3_600 + 1) * 3_600
}

/// Exactly min(N, L) admitted; the admitted ones saw every remaining value once (one count
/// across Envoys); every 429 is the documented one.
fn assert_exact(rs: &[Response], n: usize, limit: u64, reset: u64) {
    assert_eq!(rs.len(), n);
    let admitted: Vec<&Response> = rs.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<&Response> = rs.iter().filter(|r| r.status == 429).collect();
    let want = n.min(limit as usize);
    assert_eq!(
        admitted.len(),
        want,
        "admitted of {n} with limit {limit}; statuses {:?}",
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(refused.len(), n - want, "every other request is a 429");
    let mut remaining: Vec<u64> = admitted
        .iter()
        .map(|r| r.header("x-ratelimit-remaining").unwrap().parse().unwrap())
        .collect();
    remaining.sort_unstable();
    let expected: Vec<u64> = (limit - want as u64..limit).collect();
    assert_eq!(
        remaining, expected,
        "X-RateLimit-Remaining: one count across Envoys"
    );
    for r in &admitted {
        assert_eq!(
            r.header("x-ratelimit-limit"),
            Some(limit.to_string().as_str())
        );
        assert_eq!(
            r.header("x-ratelimit-reset"),
            Some(reset.to_string().as_str())
        );
        assert_eq!(r.header("x-environment"), Some("LIVE"));
        assert!(r.reached_upstream());
    }
    for r in &refused {
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(
            retry >= 1 && retry <= reset - now() + 1,
            "Retry-After {retry}"
        );
        assert_json(
            r,
            429,
            &format!(
                r#"{{"error":"Rate limit exceeded. Try again in {retry} seconds.","code":"RATE_LIMITED"}}"#
            ),
        );
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(
            r.header("x-ratelimit-limit"),
            Some(limit.to_string().as_str())
        );
        assert_eq!(
            r.header("x-ratelimit-reset"),
            Some(reset.to_string().as_str())
        );
        assert!(!r.reached_upstream());
    }
}

#[test]
fn one_count_per_key_across_two_envoys_and_two_service_replicas() {
    let redis = Redis::start("exact");
    let a = RateLimitProc::start(&redis.url());
    let b = RateLimitProc::start(&redis.url());
    let cfg = config("deny");
    let f = fleet("fleet-exact", &cfg, &[a.port, b.port], 2);

    // Several N and L, over both Envoys (two workers each) and both service replicas.
    assert_exact(&burst(&f, "fl_day25", 40), 40, 25, day_reset());
    assert_exact(&burst(&f, "fl_hour30", 30), 30, 30, hour_reset());
    assert_exact(&burst(&f, "fl_day60", 20), 20, 60, day_reset());
    // Two limits at once: the day limit binds (8 of 12/hour, 8/day) …
    let rs = burst(&f, "fl_two", 20);
    assert_eq!(rs.iter().filter(|r| r.status == 200).count(), 8);
    // … and a refused request consumed no hour: 8 of 12 used, 4 left in the hour.
    assert!(rs
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.header("x-ratelimit-limit") == Some("8")));
    // The hour limit binds here; the day's count stopped with it.
    let rs = burst(&f, "fl_two_b", 12);
    assert_exact(&rs, 12, 5, hour_reset());
    // No service failed, and both replicas answered calls.
    for e in &f.envoys {
        assert_eq!(
            e.counter("wasmcustom.keygate.ratelimit_service_failures"),
            0
        );
    }
    let calls = |p: &RateLimitProc| {
        p.metric("keygate_ratelimit_calls_total{code=\"ok\"}")
            + p.metric("keygate_ratelimit_calls_total{code=\"over_limit\"}")
    };
    assert!(calls(&a) > 0 && calls(&b) > 0, "both replicas served");
    // A key without limits makes no call.
    let before = calls(&a) + calls(&b);
    for _ in 0..5 {
        let r = get(f.envoys[0].port, "/v1/x", &[("x-api-key", "fl_free")]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), None);
    }
    assert_eq!(calls(&a) + calls(&b), before);
    // A 403 is not counted and shows the key's numbers without a call.
    let r = send(
        f.envoys[1].port,
        "POST",
        "/v1/x",
        &[("x-api-key", "fl_reader")],
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("10"));
    assert_eq!(calls(&a) + calls(&b), before);
    // Redis holds one counter per key window, expiring with it.
    let keys = redis_cli(redis.port, &["KEYS", "kg{*"]);
    let first = keys.lines().next().expect("a counter key");
    let ttl: i64 = redis_cli(redis.port, &["PTTL", first]).parse().unwrap();
    assert!(
        ttl > 0 && ttl <= 86_400_000,
        "counters expire with their window: {ttl}"
    );
    let bytes: u64 = redis_cli(redis.port, &["MEMORY", "USAGE", first])
        .parse()
        .unwrap();
    eprintln!("Redis memory per key window: {bytes} bytes");
    assert!(bytes < 256, "{bytes} bytes per key window");
}

#[test]
fn the_over_limit_cache_answers_without_calls() {
    let redis = Redis::start("cache");
    let svc = RateLimitProc::start(&redis.url());
    let cfg = config("deny");
    let f = fleet("fleet-cache", &cfg, &[svc.port], 1);
    let e = &f.envoys[0];
    let calls = || e.counter("wasmcustom.keygate.ratelimit_service_calls");
    for _ in 0..3 {
        assert_eq!(
            get(e.port, "/v1/x", &[("x-api-key", "fl_cache")]).status,
            200
        );
    }
    let before = calls();
    let rs: Vec<Response> = (0..40)
        .map(|_| get(e.port, "/v1/x", &[("x-api-key", "fl_cache")]))
        .collect();
    let odd: Vec<(u16, &str)> = rs
        .iter()
        .filter(|r| r.status != 429)
        .map(|r| (r.status, r.body.as_str()))
        .collect();
    assert!(odd.is_empty(), "{odd:?}\n{}", e.log());
    let made = calls() - before;
    // Each worker learns of the block from one answer; then it answers alone.
    assert!(made <= 2, "{made} calls for 40 requests over the limit");
    assert!(e.counter("wasmcustom.keygate.ratelimit_service_cached_over_limit") >= 38);
    // Cached answers are the same 429.
    let reset = day_reset();
    for r in &rs {
        assert_eq!(
            r.header("x-ratelimit-reset"),
            Some(reset.to_string().as_str())
        );
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    }
}

#[test]
fn redis_stopped_applies_on_failure_and_recovers() {
    let mut redis = Redis::start("failure");
    let svc = RateLimitProc::start(&redis.url());
    let up = Upstream::start("api");
    let start = |mode: &str| {
        let cfg = config(mode);
        Envoy::start(&EnvoyOpts {
            rate_limit_service: vec![svc.port],
            ..EnvoyOpts::new(&format!("fleet-fail-{mode}"), &cfg, up.port)
        })
    };
    let (local, deny, allow) = (start("local"), start("deny"), start("allow"));
    // A request's body waits with it for the answer, and reaches the upstream whole.
    let r = send_body(
        "127.0.0.1",
        local.port,
        "PUT",
        "/v1/x",
        &[("x-api-key", "fl_day60")],
        "{\"order\": 2}",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], json!("{\"order\": 2}"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("59"));
    // Counted fleet-wide first: one request per Envoy.
    for e in [&local, &deny, &allow] {
        let r = get(e.port, "/v1/x", &[("x-api-key", "fl_fail")]);
        assert_eq!(r.status, 200);
        assert!(r.header("x-ratelimit-remaining").is_some());
    }
    redis.stop();
    // local: this Envoy's own exact counters (3 a day, counted from zero here), never a 5xx.
    let rs: Vec<Response> = (0..6)
        .map(|_| get(local.port, "/v1/x", &[("x-api-key", "fl_fail")]))
        .collect();
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    assert_eq!(rs[2].header("x-ratelimit-remaining"), Some("0"));
    // deny: 503 UNAVAILABLE, and the request (with its body) never reaches the upstream.
    let r = send_body(
        "127.0.0.1",
        deny.port,
        "POST",
        "/v1/x",
        &[("x-api-key", "fl_fail"), ("x-test-id", "deny-1")],
        "a body that must not reach the upstream",
    );
    assert_json(
        &r,
        503,
        r#"{"error":"Rate limit service unavailable","code":"UNAVAILABLE"}"#,
    );
    assert!(!r.reached_upstream());
    assert_eq!(
        deny.access_entry("deny-1")["decision"],
        json!("unavailable")
    );
    // allow: admitted uncounted, without rate-limit headers.
    for _ in 0..5 {
        let r = get(allow.port, "/v1/x", &[("x-api-key", "fl_fail")]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-remaining"), None);
        assert!(r.reached_upstream());
    }
    for e in [&local, &deny, &allow] {
        assert!(e.counter("wasmcustom.keygate.ratelimit_service_failures") > 0);
        // Logged, but not once per request.
        let lines = e.log().matches("rate-limit service call failed").count();
        assert!((1..=4).contains(&lines), "{lines} log lines");
    }
    assert!(svc.metric("keygate_ratelimit_redis_errors_total") > 0);
    // Redis returns (empty): counted fleet-wide again.
    redis.restart();
    assert!(wait_until(20, || {
        get(deny.port, "/v1/x", &[("x-api-key", "fl_fail")]).status == 200
    }));
    let r = get(allow.port, "/v1/x", &[("x-api-key", "fl_fail")]);
    assert_eq!(r.status, 200);
    assert!(r.header("x-ratelimit-remaining").is_some());
}

#[test]
fn a_killed_replica_leaves_the_other_serving() {
    let redis = Redis::start("replica");
    let mut a = RateLimitProc::start(&redis.url());
    let b = RateLimitProc::start(&redis.url());
    let cfg = config("deny");
    let f = fleet("fleet-replica", &cfg, &[a.port, b.port], 2);
    assert_eq!(
        burst(&f, "fl_day60", 10)
            .iter()
            .filter(|r| r.status == 200)
            .count(),
        10
    );
    a.kill();
    // Envoy's gRPC health checks take the dead replica out.
    for e in &f.envoys {
        let flagged = |port: u16, flag: &str| {
            wait_until(20, || {
                admin_get(e.admin, "/clusters").is_some_and(|r| {
                    r.body.contains(&format!(
                        "ratelimit::127.0.0.1:{port}::health_flags::{flag}"
                    ))
                })
            })
        };
        assert!(
            flagged(a.port, "/failed_active_hc"),
            "the killed replica is not marked down"
        );
        let b_healthy = flagged(b.port, "healthy");
        assert!(b_healthy, "the live replica is not healthy");
    }
    let failures: u64 = f
        .envoys
        .iter()
        .map(|e| e.counter("wasmcustom.keygate.ratelimit_service_failures"))
        .sum();
    // The rest of the day's 60 across both Envoys, exactly, through replica b alone.
    let rs = burst(&f, "fl_day60", 70);
    let statuses: Vec<(u16, &str)> = rs.iter().map(|r| (r.status, r.body.as_str())).collect();
    assert_eq!(
        rs.iter().filter(|r| r.status == 200).count(),
        50,
        "{statuses:?}"
    );
    assert_eq!(
        rs.iter().filter(|r| r.status == 429).count(),
        20,
        "{statuses:?}"
    );
    let after: u64 = f
        .envoys
        .iter()
        .map(|e| e.counter("wasmcustom.keygate.ratelimit_service_failures"))
        .sum();
    assert_eq!(after, failures, "no call failed once the replica was out");
    assert!(b.metric("keygate_ratelimit_calls_total{code=\"ok\"}") > 0);
}

#[test]
fn a_redis_cluster_gives_the_same_exact_counts() {
    let cluster = RedisCluster::start("fleet");
    let svc = RateLimitProc::start(&cluster.url());
    let cfg = config("deny");
    let f = fleet("fleet-cluster", &cfg, &[svc.port], 2);
    assert_exact(&burst(&f, "fl_day25", 40), 40, 25, day_reset());
    assert_exact(&burst(&f, "fl_hour30", 45), 45, 30, hour_reset());
    let rs = burst(&f, "fl_two", 20);
    assert_eq!(rs.iter().filter(|r| r.status == 200).count(), 8);
    // A balance of credits, and one beside a window, as exact on a cluster.
    assert_exact_credits(&f, "fl_cr_own", 40, 25);
    assert_exact_credits(&f, "fl_cr_cost", 30, 60);
    // The keys went to the cluster's slots, a key id's windows together.
    let total: u64 = cluster
        .nodes
        .iter()
        .map(|n| redis_cli(n.port, &["DBSIZE"]).parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        total, 7,
        "one counter per key window: day25, hour30, two (hour, day), cr_cost's hour; and one \
         per balance: cr_own, cr_cost"
    );
    for e in &f.envoys {
        assert_eq!(
            e.counter("wasmcustom.keygate.ratelimit_service_failures"),
            0
        );
    }
}

/// `n` concurrent requests with `key`, every third a POST (cost 5, else 1), over every Envoy.
fn costly_burst(f: &Fleet, key: &str, n: usize) -> Vec<(u64, Response)> {
    let ports: Vec<u16> = f.envoys.iter().map(|e| e.port).collect();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (ports, key) = (ports.clone(), key.to_string());
            thread::spawn(move || {
                (t..n)
                    .step_by(8)
                    .map(|i| {
                        let (method, cost) = if i % 3 == 0 { ("POST", 5) } else { ("GET", 1) };
                        (
                            cost,
                            send(
                                ports[i % ports.len()],
                                method,
                                "/v1/x",
                                &[("x-api-key", &key)],
                            ),
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
}

fn credits_left(r: &Response) -> Option<u64> {
    r.header("x-credits-remaining").map(|v| v.parse().unwrap())
}

const USAGE_EXCEEDED: &str = r#"{"error":"Usage limit exceeded","code":"USAGE_EXCEEDED"}"#;

/// One balance across the fleet (SPEC §14): `n` concurrent requests with costs against `granted`
/// through every Envoy spend exactly what the admitted ones cost, each admitted one leaves a
/// different remainder, a refused one spends nothing; then the rest is drained one at a time,
/// and the whole grant is spent, not a credit more or less.
fn assert_exact_credits(f: &Fleet, key: &str, n: usize, granted: u64) {
    let rs = costly_burst(f, key, n);
    let mut left: Vec<u64> = Vec::new();
    let mut spent = 0;
    for (cost, r) in &rs {
        match r.status {
            200 => {
                spent += cost;
                left.push(credits_left(r).expect("X-Credits-Remaining"));
            }
            429 => {
                assert_eq!(r.body, USAGE_EXCEEDED);
                assert_eq!(credits_left(r), None);
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    left.sort_unstable();
    left.dedup();
    assert_eq!(
        left.len(),
        rs.iter().filter(|(_, r)| r.status == 200).count()
    );
    assert!(spent <= granted, "{spent} spent of {granted}");
    // The rest, one credit at a time, through the other Envoy.
    let port = f.envoys[f.envoys.len() - 1].port;
    let mut drained = 0;
    for _ in 0..=granted {
        let r = get(port, "/v1/x", &[("x-api-key", key)]);
        if r.status != 200 {
            assert_eq!(r.body, USAGE_EXCEEDED);
            break;
        }
        drained += 1;
    }
    assert_eq!(spent + drained, granted);
}

/// Credits counted by the rate-limit service in the call that counts the windows: exact across
/// two Envoys (two workers each) and two service replicas, shared by a tenant's keys, and all or
/// nothing with the windows (a request a window refuses spends no credit; one refused for credits
/// counts in no window).
#[test]
fn credits_are_one_balance_across_the_fleet() {
    let redis = Redis::start("credits");
    let a = RateLimitProc::start(&redis.url());
    let b = RateLimitProc::start(&redis.url());
    let f = fleet("fleet-credits", &config("deny"), &[a.port, b.port], 2);
    let (p0, p1) = (f.envoys[0].port, f.envoys[1].port);
    // A balance without windows: 40 requests (costs 5 and 1) against 25.
    assert_exact_credits(&f, "fl_cr_own", 40, 25);
    // With a window beside it, and a daily refill: the reset is the next 00:00 UTC.
    let r = get(p0, "/v1/x", &[("x-api-key", "fl_cr_cost")]);
    assert_eq!((r.status, credits_left(&r)), (200, Some(59)));
    assert_eq!(
        r.header("x-credits-reset"),
        Some(day_reset().to_string().as_str())
    );
    assert_eq!(r.header("x-ratelimit-remaining"), Some("999"));
    assert_exact_credits(&f, "fl_cr_cost", 30, 59);
    let r = get(p1, "/v1/x", &[("x-api-key", "fl_cr_cost")]);
    assert_eq!((r.status, r.body.as_str()), (429, USAGE_EXCEEDED));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        retry <= 86_400 && retry + now() + 2 >= day_reset(),
        "{retry}"
    );
    // Refused for credits: no window counted, none shown.
    assert_eq!(r.header("x-ratelimit-remaining"), None);
    // A tenant's one balance, spent by two keys on two Envoys; a window's refusal spends none.
    for (left, port) in [(5, p0), (4, p1), (3, p0)] {
        let r = get(port, "/v1/x", &[("x-api-key", "fl_cr_lim")]);
        assert_eq!((r.status, credits_left(&r)), (200, Some(left)));
    }
    for port in [p0, p1, p0] {
        let r = get(port, "/v1/x", &[("x-api-key", "fl_cr_lim")]);
        assert_eq!(r.status, 429);
        assert!(r.body.contains("RATE_LIMITED"), "{}", r.body);
        assert_eq!(credits_left(&r), None);
    }
    for (left, port) in [(2, p1), (1, p0), (0, p1)] {
        let r = get(port, "/v1/x", &[("x-api-key", "fl_cr_free")]);
        assert_eq!((r.status, credits_left(&r)), (200, Some(left)));
    }
    let r = get(p0, "/v1/x", &[("x-api-key", "fl_cr_free")]);
    assert_eq!((r.status, r.body.as_str()), (429, USAGE_EXCEEDED));
    assert_eq!(
        r.header("retry-after"),
        None,
        "no refill: nothing to wait for"
    );
    for e in &f.envoys {
        assert_eq!(
            e.counter("wasmcustom.keygate.ratelimit_service_failures"),
            0
        );
    }
}

/// `on_failure: local` with credits: the service unreachable, each Envoy spends from its own
/// record, as without a service; `credits_charge: success` cannot be given back by the service
/// and is refused with it.
#[test]
fn credits_fall_back_to_each_envoy_when_the_service_fails() {
    let up = Upstream::start("api");
    // No `ratelimit` cluster at all: every call fails.
    let e = Envoy::start(&EnvoyOpts::new(
        "fleet-credits-local",
        &config("local"),
        up.port,
    ));
    for left in (0..25).rev() {
        let r = get(e.port, "/v1/x", &[("x-api-key", "fl_cr_own")]);
        assert_eq!((r.status, credits_left(&r)), (200, Some(left)));
    }
    let r = get(e.port, "/v1/x", &[("x-api-key", "fl_cr_own")]);
    assert_eq!((r.status, r.body.as_str()), (429, USAGE_EXCEEDED));
    // A window that refuses locally spends no credit: 3 of the tenant's 6, then its free key.
    let statuses: Vec<u16> = (0..5)
        .map(|_| get(e.port, "/v1/x", &[("x-api-key", "fl_cr_lim")]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let r = get(e.port, "/v1/x", &[("x-api-key", "fl_cr_free")]);
    assert_eq!((r.status, credits_left(&r)), (200, Some(2)));
    let mut cfg: serde_json::Value = serde_json::from_str(&config("local")).unwrap();
    cfg["credits_charge"] = json!("success");
    cfg["credit_costs"] = json!([{"cost": 1_000_001}, {"cost": 1_000_000}]);
    let errors = keygate::config::gate_from_value(&keygate_key_service::json::core_value(&cfg))
        .err()
        .unwrap();
    assert_eq!(
        errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        [
            "$.credit_costs[0].cost: must be at most 1000000 with rate_limit_service",
            "$.credits_charge: \"success\" cannot be given back with rate_limit_service"
        ]
    );
}

#[test]
fn a_missing_cluster_fails_over_to_on_failure() {
    // No `ratelimit` cluster at all: every call fails; `local` counts here, the VM lives on.
    let up = Upstream::start("api");
    let cfg = config("local");
    let e = Envoy::start(&EnvoyOpts::new("fleet-nocluster", &cfg, up.port));
    let statuses: Vec<u16> = (0..5)
        .map(|_| get(e.port, "/v1/x", &[("x-api-key", "fl_fail")]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert!(e.counter("wasmcustom.keygate.ratelimit_service_failures") >= 5);
    assert_eq!(
        get(e.port, "/v1/x", &[("x-api-key", "fl_free")]).status,
        200
    );
}

#[test]
fn a_refused_request_leaves_no_key_in_the_access_log() {
    // The key in the query and kept for the upstream (hide_credentials false): a request the
    // service refuses is answered locally, and its logged path loses the key, as locally.
    let redis = Redis::start("fleet-log");
    let svc = RateLimitProc::start(&redis.url());
    let cfg = json!({
        "key_sources": [{"header": "x-api-key"}, {"query": "api_key"}],
        "hide_credentials": false,
        "keys": [{"id": "q", "sha256": sha("fl_query_key"), "rate_limits": [{"requests": 1, "per": "day"}]}],
        "rate_limit_service": {"cluster": "ratelimit", "timeout_ms": 2000}
    })
    .to_string();
    let f = fleet("fleet-log", &cfg, &[svc.port], 1);
    let e = &f.envoys[0];
    let statuses: Vec<u16> = ["q-1", "q-2", "q-3"]
        .iter()
        .map(|id| {
            send(
                e.port,
                "GET",
                "/v1/x?api_key=fl_query_key&a=1",
                &[("x-test-id", id)],
            )
            .status
        })
        .collect();
    assert_eq!(
        statuses,
        [200, 429, 429],
        "allowed, refused by the service, then by the cache"
    );
    assert_eq!(
        e.access_entry("q-1")["path"],
        json!("/v1/x?api_key=fl_query_key&a=1")
    );
    for id in ["q-2", "q-3"] {
        assert_eq!(e.access_entry(id)["path"], json!("/v1/x?a=1"), "{id}");
    }
}

/// docs/fleet-limits.md's "Try it" block, run as written (its fixed ports moved to free ones,
/// `/tmp` to a scratch directory): Redis, `keygate ratelimit`, two Envoys from
/// envoy/examples/fleet.yaml through envoy/demo.sh, six requests alternating between them.
#[test]
fn the_fleet_walkthrough_in_the_docs_runs_as_written() {
    let dir = scratch_dir("fleet-walkthrough");
    // Inside one minute's window (the limit is five a minute).
    assert!(wait_until(15, || now() % 60 < 45));
    let run = run_doc_block(
        "docs/fleet-limits.md",
        "## Try it: two Envoys, one limit",
        &[
            (6379, None),
            (8082, Some("KEYGATE_RATELIMIT_PORT")),
            (9102, None),
            (10000, Some("KEYGATE_PORT")),
            (9901, Some("KEYGATE_ADMIN_PORT")),
            (18080, Some("KEYGATE_LIVE_PORT")),
            (18081, Some("KEYGATE_SANDBOX_PORT")),
            (10001, Some("KEYGATE_GATEWAY_PORT")),
            (10010, None),
            (9911, None),
            (18180, None),
            (18181, None),
        ],
        &dir,
    );
    let logs = ["keygate-envoy-1.log", "keygate-ratelimit.log"]
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .join("\n");
    let stdout = &run.stdout;
    assert!(
        run.status.is_some_and(|s| s.success()),
        "{:?}: {stdout}\n{}\n{logs}",
        run.status,
        run.stderr
    );
    assert!(run.cleaned_up, "processes of the walkthrough still run");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0].trim(),
        "200 200 200 200 200 429",
        "{stdout}\n{logs}"
    );
    assert!(
        stdout.contains("keygate_ratelimit_calls_total{code=\"ok\"} 5"),
        "{stdout}"
    );
    assert!(
        stdout.contains("keygate_ratelimit_calls_total{code=\"over_limit\"} 1"),
        "{stdout}"
    );
}
