//! `make bench`, fleet-wide limits (SPEC §10): what a fleet limit costs Envoy next to a local
//! limit and next to Envoy's own `envoy.filters.http.ratelimit` calling the same service, the
//! over-limit path against a local 429, added latency, and `keygate ratelimit` calls per CPU
//! second with Redis behind it. One run, interleaved rounds, medians.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/measure.rs"]
mod measure;

use common::fleet::{RateLimitProc, Redis};
use common::*;
use measure::*;
use serde_json::json;
use std::time::Instant;

/// Requests per round: every allowed fleet request waits for a gRPC round trip.
const FLEET_REQUESTS: usize = 20_000;

fn config(limits: serde_json::Value, fleet: bool) -> String {
    let mut c = json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "bk_live_", "environment": "LIVE"}],
        "keys": [
            {"id": "k_free", "sha256": sha("bk_live_free"), "rate_limits": []},
            {"id": "k_limited", "sha256": sha("bk_live_limited"), "rate_limits": limits},
            {"id": "k_used_up", "sha256": sha("bk_live_used_up"), "rate_limits": [{"requests": 1, "per": "day"}]},
            {"id": "k_credits", "sha256": sha("bk_live_credits"), "rate_limits": limits,
             "credits": {"granted": 4_000_000_000u64}}
        ]
    });
    if fleet {
        c["rate_limit_service"] =
            json!({"cluster": "ratelimit", "timeout_ms": 1000, "on_failure": "deny"});
    }
    c.to_string()
}

/// keygate in front of a real upstream (Envoy's ratelimit filter needs a routed request), one
/// worker, the `ratelimit` cluster pointing at the service.
fn keygate(name: &str, cfg: &str, up: u16, rls: u16) -> Envoy {
    Envoy::start(&EnvoyOpts {
        concurrency: 1,
        rate_limit_service: vec![rls],
        ..EnvoyOpts::new(name, cfg, up)
    })
}

/// Envoy's own ratelimit filter on the same route and service: one descriptor
/// `[{key_id: bench}, {per: day}]` with a limit override read from dynamic metadata (set by
/// `set_metadata`), the way a limit per key reaches envoyproxy/ratelimit today.
fn native(name: &str, up: u16, rls: u16, with_filter: bool) -> Envoy {
    let set_metadata = json!({"name": "envoy.filters.http.set_metadata", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
        "metadata": [{"metadata_namespace": "bench", "value": {"limit": {"requests_per_unit": 1_000_000_000u64, "unit": "DAY"}}}]}});
    let ratelimit = json!({"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": "keygate", "timeout": "1s", "failure_mode_deny": true,
        "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                               "transport_api_version": "V3"}}});
    let filters = if with_filter {
        vec![set_metadata, ratelimit]
    } else {
        vec![]
    };
    let dir = repo().join("target/bench").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut http_filters = filters;
    http_filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let route = json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream", "rate_limits": [{
        "actions": [{"generic_key": {"descriptor_key": "key_id", "descriptor_value": "bench"}},
                    {"generic_key": {"descriptor_key": "per", "descriptor_value": "day"}}],
        "limit": {"dynamic_metadata": {"metadata_key": {"key": "bench", "path": [{"key": "limit"}]}}}}]}});
    let upstream = json!({"name": "upstream", "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": up}}}}]}]}});
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "clusters": [upstream, rate_limit_cluster(&[rls])],
            "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "ingress",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
                    "http_filters": http_filters}}]}]}]
        }
    });
    let cfg = dir.join("envoy.json");
    std::fs::write(&cfg, bootstrap.to_string()).unwrap();
    Envoy::launch(&cfg, &dir, port, admin, 1).unwrap_or_else(|l| panic!("{name}: {l}"))
}

fn variant(name: &'static str, envoy: Envoy, key: &str, want: u16) -> Variant {
    Variant {
        name,
        envoy,
        headers: if key.is_empty() {
            vec![]
        } else {
            vec![("x-api-key".to_string(), key.to_string())]
        },
        want,
        samples: vec![],
    }
}

/// Wall time of `n` sequential requests on one keep-alive connection, each alone: p50, p99 (µs).
fn latency(v: &Variant, n: usize) -> (f64, f64) {
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            keep_alive_burst(v.envoy.port, 1, &v.headers, v.want);
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    (t[n / 2], t[n * 99 / 100])
}

fn main() {
    let up = Upstream::start("bench");
    let redis = Redis::start("bench");
    let rls = RateLimitProc::start(&redis.url());
    let day = json!([{"requests": 1_000_000_000u64, "per": "day"}]);
    let local_cfg = config(day.clone(), false);
    let fleet_cfg = config(day, true);
    let mut variants = [
        variant(
            "Envoy, no filter (routed)",
            native("bench-fleet-none", up.port, rls.port, false),
            "",
            200,
        ),
        variant(
            "Envoy's ratelimit filter → keygate ratelimit",
            native("bench-fleet-native", up.port, rls.port, true),
            "",
            200,
        ),
        variant(
            "keygate, allowed, no limit",
            keygate("bench-fleet-free", &local_cfg, up.port, rls.port),
            "bk_live_free",
            200,
        ),
        variant(
            "keygate, allowed, 1 local limit",
            keygate("bench-fleet-local", &local_cfg, up.port, rls.port),
            "bk_live_limited",
            200,
        ),
        variant(
            "keygate, allowed, 1 fleet limit",
            keygate("bench-fleet-fleet", &fleet_cfg, up.port, rls.port),
            "bk_live_limited",
            200,
        ),
        variant(
            "keygate, 429, local limit used up",
            keygate("bench-fleet-local429", &local_cfg, up.port, rls.port),
            "bk_live_used_up",
            429,
        ),
        variant(
            "keygate, 429, fleet limit used up (over-limit cache)",
            keygate("bench-fleet-fleet429", &fleet_cfg, up.port, rls.port),
            "bk_live_used_up",
            429,
        ),
        variant(
            "keygate, allowed, 1 fleet limit + a fleet balance of credits",
            keygate("bench-fleet-credits", &fleet_cfg, up.port, rls.port),
            "bk_live_credits",
            200,
        ),
    ];
    // Use the 1-a-day keys up (each Envoy of its own: the fleet one through the service).
    for v in &variants[5..7] {
        keep_alive_burst(
            v.envoy.port,
            1,
            &[("x-api-key".into(), "bk_live_used_up".into())],
            200,
        );
    }
    let tck = ticks_per_sec();
    let (rls_pid, redis_pid) = (rls.pid(), redis.pid());
    let (mut rls_ticks, mut redis_ticks, mut calls) = (0u64, 0u64, 0usize);
    for _ in 0..ROUNDS {
        for (i, v) in variants.iter_mut().enumerate() {
            let counts_calls = i == 1 || i == 4 || i == 7;
            let (r0, d0) = (cpu_ticks(rls_pid), cpu_ticks(redis_pid));
            v.measure_n(tck, FLEET_REQUESTS);
            if counts_calls {
                rls_ticks += cpu_ticks(rls_pid) - r0;
                redis_ticks += cpu_ticks(redis_pid) - d0;
                calls += FLEET_REQUESTS;
            }
        }
    }
    let m: Vec<f64> = variants.iter().map(Variant::median).collect();
    println!("\n## Fleet-wide limits: Envoy CPU per request ({FLEET_REQUESTS} keep-alive requests × {ROUNDS} interleaved rounds, --concurrency 1, routed to an upstream, median)\n");
    println!("| variant | CPU µs/request | vs no filter |");
    println!("|---|---:|---:|");
    for (v, x) in variants.iter().zip(&m) {
        println!("| {} | {:.1} | {:+.1} µs |", v.name, x, x - m[0]);
    }
    let native_adds = m[1] - m[0];
    let fleet_adds = m[4] - m[2];
    println!("\n- Envoy's ratelimit filter adds {native_adds:.1} µs; keygate's fleet limit adds {fleet_adds:.1} µs to keygate without a limit: {:.2}× (target ≤ 1.2×)", fleet_adds / native_adds);
    println!(
        "- A local limit adds {:.1} µs; the fleet over-limit path costs {:.1} µs against a local 429's {:.1} µs: {:.2}×",
        m[3] - m[2],
        m[6],
        m[5],
        m[6] / m[5]
    );
    println!(
        "- A fleet balance of credits beside the fleet limit (one descriptor more in the same call) adds {:.1} µs",
        m[7] - m[4]
    );
    println!("\n## Added latency (sequential requests, one keep-alive connection, 2,000 each)\n");
    println!("| variant | p50 µs | p99 µs |\n|---|---:|---:|");
    for i in [0, 1, 2, 3, 4, 6, 7] {
        let (p50, p99) = latency(&variants[i], 2_000);
        println!("| {} | {p50:.0} | {p99:.0} |", variants[i].name);
    }
    let secs = |t: u64| t as f64 / tck;
    println!(
        "\n## keygate ratelimit (during the three service-calling variants: {calls} calls)\n\n- service CPU {:.2} s, Redis CPU {:.2} s: {:.0} calls per service CPU-second, {:.0} per CPU-second of service + Redis",
        secs(rls_ticks),
        secs(redis_ticks),
        calls as f64 / secs(rls_ticks),
        calls as f64 / secs(rls_ticks + redis_ticks)
    );
}
