//! Rate limits in a real Envoy with two workers (SPEC §1 `rate_limits`, §2 429 and headers).
mod common;
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

fn config() -> String {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [
            {"prefix": "rl_dev_", "environment": "DEV", "rate_limits": [{"requests": 5000, "per": "day"}]},
            {"prefix": "rl_live_", "environment": "LIVE"}
        ],
        "keys": [
            {"id": "key_exact", "sha256": sha("rl_live_exact"), "rate_limits": [{"requests": 40, "per": "day"}]},
            {"id": "key_count", "sha256": sha("rl_live_count"), "rate_limits": [{"requests": 3, "per": "hour"}]},
            {"id": "key_multi", "sha256": sha("rl_live_multi"), "rate_limits": [{"requests": 10, "per": "day"}, {"requests": 3, "per": "hour"}]},
            {"id": "key_default", "sha256": sha("rl_live_default")},
            {"id": "key_prefix", "sha256": sha("rl_dev_prefix")},
            {"id": "key_override", "sha256": sha("rl_dev_override"), "rate_limits": [{"requests": 7, "per": "day"}]},
            {"id": "key_unlimited", "sha256": sha("rl_dev_unlimited"), "rate_limits": []}
        ],
        "rate_limits": [{"requests": 1000, "per": "minute"}]
    })
    .to_string()
}

fn rate_limited_body(n: u64) -> String {
    format!(r#"{{"error":"Rate limit exceeded. Try again in {n} seconds.","code":"RATE_LIMITED"}}"#)
}

#[test]
fn exactly_the_limit_is_admitted_across_workers() {
    let up = Upstream::start("api");
    let cfg = config();
    let e = Envoy::start(&EnvoyOpts::new("rl-exact", &cfg, up.port));
    let port = e.port;
    const THREADS: usize = 8;
    const PER_THREAD: usize = 25;
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|_| get(port, "/v1/x", &[("x-api-key", "rl_live_exact")]))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let responses: Vec<Response> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(responses.len(), THREADS * PER_THREAD);

    let admitted: Vec<&Response> = responses.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(admitted.len(), 40, "exactly min(N, L) admitted");
    assert_eq!(
        limited.len(),
        THREADS * PER_THREAD - 40,
        "every other request is a 429"
    );

    // Every admitted request saw a distinct Remaining value: 39, 38, …, 0.
    let mut remaining: Vec<u64> = admitted
        .iter()
        .map(|r| r.header("x-ratelimit-remaining").unwrap().parse().unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..40).collect::<Vec<u64>>());
    let day_end = (now() / 86_400 + 1) * 86_400;
    for r in &limited {
        let retry: u64 = r
            .header("retry-after")
            .expect("retry-after")
            .parse()
            .unwrap();
        assert_json(r, 429, &rate_limited_body(retry));
        assert_eq!(r.header("x-ratelimit-limit"), Some("40"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(
            r.header("x-ratelimit-reset"),
            Some(day_end.to_string().as_str())
        );
        assert_eq!(r.header("x-environment"), Some("LIVE"));
        assert!((1..=86_400).contains(&retry));
    }

    // Both workers served requests: the count was shared, not per thread.
    let w0 = e.counter(&format!(
        "listener.127.0.0.1_{port}.worker_0.downstream_cx_total"
    ));
    let w1 = e.counter(&format!(
        "listener.127.0.0.1_{port}.worker_1.downstream_cx_total"
    ));
    assert!(
        w0 > 0 && w1 > 0,
        "both workers must take connections (worker_0={w0}, worker_1={w1})"
    );

    // Usage stats match what was sent.
    let stats = e.stats_prometheus_once(&[
        "keygate_requests{key_id=\"key_exact\"} 200",
        "keygate_allowed{key_id=\"key_exact\"} 40",
        "keygate_rejected{reason=\"rate_limited\",key_id=\"key_exact\"} 160",
    ]);
    assert!(
        stats.contains("keygate_requests{key_id=\"key_exact\"} 200"),
        "{stats}"
    );
    assert!(
        stats.contains("keygate_allowed{key_id=\"key_exact\"} 40"),
        "{stats}"
    );
    assert!(
        stats.contains("keygate_rejected{reason=\"rate_limited\",key_id=\"key_exact\"} 160"),
        "{stats}"
    );
    // The last-used gauge is written on the filter's next tick (every 0.5 s), in Unix seconds.
    let last_used = || {
        e.stats_prometheus().lines().find_map(|l| {
            l.strip_prefix("keygate_last_used{key_id=\"key_exact\"} ")
                .and_then(|v| v.parse::<u64>().ok())
        })
    };
    assert!(
        wait_until(5, || last_used().is_some()),
        "no last-used gauge"
    );
    let used = last_used().unwrap_or(0);
    assert!(
        used + 5 >= now() && used <= now(),
        "last used {used}, now {}",
        now()
    );
    assert!(
        !stats.contains("keygate_ratelimit_faults"),
        "no counter faults: {stats}"
    );
}

#[test]
fn headers_count_down_and_429_says_when_to_retry() {
    let up = Upstream::start("api");
    let cfg = config();
    let e = Envoy::start(&EnvoyOpts::new("rl-headers", &cfg, up.port));
    let p = e.port;
    let t0 = now();
    let hour_end = (t0 / 3600 + 1) * 3600;
    for remaining in ["2", "1", "0"] {
        let r = get(p, "/", &[("x-api-key", "rl_live_count")]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
        assert_eq!(
            r.header("x-ratelimit-reset"),
            Some(hour_end.to_string().as_str())
        );
        assert_eq!(r.header("x-environment"), Some("LIVE"));
    }
    let before = now();
    let r = get(
        p,
        "/",
        &[("x-api-key", "rl_live_count"), ("x-test-id", "limited")],
    );
    let after = now();
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert_json(&r, 429, &rate_limited_body(retry));
    assert!(
        (hour_end - after..=hour_end - before).contains(&retry),
        "Retry-After {retry} is the time to the window's reset"
    );
    assert_eq!(
        r.header("x-ratelimit-reset"),
        Some(hour_end.to_string().as_str())
    );
    assert!(!r.reached_upstream());
    let entry = e.access_entry("limited");
    assert_eq!(entry["decision"], "rate_limited");
    assert_eq!(entry["key_id"], "key_count");
    assert_eq!(entry["status"], 429);

    // Several limits: the headers show the one closest to exhaustion.
    let r = get(p, "/", &[("x-api-key", "rl_live_multi")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        (
            r.header("x-ratelimit-limit"),
            r.header("x-ratelimit-remaining")
        ),
        (Some("3"), Some("2"))
    );
}

#[test]
fn limits_come_from_the_key_then_the_prefix_then_the_default() {
    let up = Upstream::start("api");
    let cfg = config();
    let e = Envoy::start(&EnvoyOpts::new("rl-inherit", &cfg, up.port));
    let p = e.port;
    let cases = [
        ("rl_live_default", Some("1000")),
        ("rl_dev_prefix", Some("5000")),
        ("rl_dev_override", Some("7")),
        ("rl_dev_unlimited", None),
    ];
    for (key, limit) in cases {
        let r = get(p, "/", &[("x-api-key", key)]);
        assert_eq!(r.status, 200, "{key}");
        assert_eq!(r.header("x-ratelimit-limit"), limit, "{key}");
        let below = limit.map(|l| (l.parse::<u64>().unwrap() - 1).to_string());
        assert_eq!(
            r.header("x-ratelimit-remaining").map(str::to_string),
            below,
            "{key}"
        );
    }
    // Rejections before the rate limit step are not counted; 401s carry no limit headers.
    let r = get(p, "/", &[("x-api-key", "rl_dev_nosuchkey")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-ratelimit-limit"), None);
}
