//! `make bench`: what keygate costs inside a real Envoy, measured side by side in one run.
//!
//! Envoy CPU time per request (utime+stime of the Envoy process over a fixed number of
//! keep-alive requests) is steadier than requests/s on a small, noisy machine. Every variant
//! runs at once; rounds interleave the variants and the median is reported.
//! The key_sync part loads a 1,000,000-key set from a real key service.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/measure.rs"]
mod measure;

use common::*;
use measure::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Envoy's concurrency in the cost section: one worker, pinned by `bench/run.sh` to a CPU of its
/// own (KEYGATE_ENVOY_CPUS) while the load runs on the other.
const COST_CONCURRENCY: u32 = 1;

/// The route every cost variant uses: a direct 200 from Envoy, so only the filters differ.
fn direct_route() -> serde_json::Value {
    json!({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
}

fn start_raw_envoy(name: &str, http_filters: serde_json::Value) -> Envoy {
    // A listener with the given filters in front of the router (no keygate involved).
    let dir = repo().join("target/bench").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut filters = http_filters.as_array().cloned().unwrap_or_default();
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "ingress",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [direct_route()]}]},
                    "http_filters": filters}}]}]}]
        }
    });
    let cfg = dir.join("envoy.json");
    std::fs::write(&cfg, bootstrap.to_string()).unwrap();
    Envoy::launch(&cfg, &dir, port, admin, COST_CONCURRENCY)
        .unwrap_or_else(|l| panic!("{name}: {l}"))
}

fn hdr(k: &str, v: &str) -> Vec<(String, String)> {
    vec![(k.to_string(), v.to_string())]
}

/// A keygate variant's request headers: its key in `x-api-key`, none for `""`.
fn key_hdr(key: &str) -> Vec<(String, String)> {
    if key.is_empty() {
        vec![]
    } else {
        hdr("x-api-key", key)
    }
}

/// A Wasm filter that is not keygate (the minimal filter: the floor of any V8 Wasm filter).
fn other_wasm(path: &std::path::Path) -> serde_json::Value {
    json!([{
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "minimal", "root_id": "minimal", "failure_policy": "FAIL_CLOSED",
                "vm_config": {"vm_id": "minimal", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": path.display().to_string()}}}}
        }
    }])
}

/// The minimal filter making `n` extra host calls of one kind per request (its configuration
/// `"<call> <n>"`, see `bench/minimal-filter/src/lib.rs`).
fn minimal_calling(path: &std::path::Path, call: &str) -> serde_json::Value {
    let mut f = other_wasm(path);
    f[0]["typed_config"]["config"]["configuration"] = json!({
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": format!("{call} {CALLS_PER_REQUEST}")
    });
    f[0]["typed_config"]["config"]["vm_config"]["vm_id"] = json!(format!("minimal-{call}"));
    f
}

/// Extra host calls per request in the per-call price variants.
const CALLS_PER_REQUEST: u32 = 10;

/// The host calls priced: (the minimal filter's name for it, what keygate uses it for).
const PRICED_CALLS: [(&str, &str); 12] = [
    (
        "header",
        "`proxy_get_header_map_value`: one request header (the floor reads one)",
    ),
    (
        "header_pairs",
        "`proxy_get_header_map_pairs`: every request header (keygate's one read)",
    ),
    (
        "set_header",
        "`proxy_replace_header_map_value`: set a request header",
    ),
    (
        "remove_header",
        "`proxy_remove_header_map_value`: remove a request header",
    ),
    (
        "add_header",
        "`proxy_add_header_map_value`: add a request header",
    ),
    (
        "set_header_pairs",
        "`proxy_set_header_map_pairs`: write the whole request map back (+1/10 of a read)",
    ),
    (
        "set_property",
        "`proxy_set_property`: one filter-state value (SPEC §3 audit fields)",
    ),
    (
        "get_property",
        "`proxy_get_property` `xds.route_name` (usage by route)",
    ),
    ("increment_metric", "`proxy_increment_metric`: a counter"),
    (
        "clock",
        "`proxy_get_current_time_nanoseconds` (rate-limit windows)",
    ),
    (
        "get_shared_data",
        "`proxy_get_shared_data`: a 16-byte value (the rate-limit record)",
    ),
    (
        "set_shared_data",
        "`proxy_set_shared_data` with compare-and-swap (the record's update)",
    ),
];

/// keygate on a direct-response route, one worker; `wasm` replaces the release build.
fn keygate_envoy(name: &str, config: &str, wasm: Option<std::path::PathBuf>) -> Envoy {
    let mut o = EnvoyOpts::new(name, config, 1);
    o.direct_response = true;
    o.concurrency = COST_CONCURRENCY;
    o.wasm = wasm;
    Envoy::start(&o)
}

/// A guess at a key: the prefix and 36 random-looking characters (no valid checksum).
const RANDOM_KEY: &str = "bk_live_Q3vX9mT2kLp8Zr4Wc7Yb1Nd6Hs0Fj5Ga2Ue";

/// The configurations of the keygate variants: (name, config, presented key or "", status).
fn keygate_variants() -> Vec<(&'static str, String, &'static str, u16)> {
    let keys = |n: usize| -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| json!({"id": format!("k{i}"), "sha256": sha(&format!("bk_live_{i}"))}))
            .collect()
    };
    let config = |keys: Vec<serde_json::Value>, checksum: bool| {
        let mut prefix = json!({"prefix": "bk_live_", "environment": "LIVE"});
        if checksum {
            prefix["checksum"] = json!("crc32");
        }
        json!({"key_sources": [{"header": "x-api-key"}], "prefixes": [prefix], "keys": keys})
            .to_string()
    };
    let mut limited = keys(10);
    limited[3]["rate_limits"] = json!([{"requests": 1_000_000_000u64, "per": "day"}]);
    // A balance (SPEC §14) that never runs out in a run, refilled monthly, beside the limit.
    let mut credited = keys(10);
    credited[3]["credits"] =
        json!({"granted": 1_000_000_000_000u64, "refill": {"interval": "month"}});
    let public =
        json!({"key_sources": [{"header": "x-api-key"}], "keys": [], "public_paths": ["*"]})
            .to_string();
    // Usage counted for reports (the reports themselves go out on the tick, to a cluster this
    // Envoy does not have: the request path's cost is what is measured).
    let mut reported: serde_json::Value =
        serde_json::from_str(&config(keys(10), false)).unwrap_or_default();
    reported["usage_report"] =
        json!({"cluster": "keyservice", "path": "/usage", "interval_seconds": 10});
    vec![
        ("keygate, public path", public.clone(), "bk_live_3", 200),
        ("keygate, public path, no key presented", public, "", 200),
        (
            "keygate, allowed, no limit",
            config(keys(10), false),
            "bk_live_3",
            200,
        ),
        (
            "keygate, allowed, 1 rate limit",
            config(limited, false),
            "bk_live_3",
            200,
        ),
        (
            "keygate, allowed, credits (no limit)",
            config(credited, false),
            "bk_live_3",
            200,
        ),
        (
            "keygate, allowed, no limit, usage_report",
            reported.to_string(),
            "bk_live_3",
            200,
        ),
        (
            "keygate, allowed, 100,000 inline keys",
            config(keys(100_000), false),
            "bk_live_3",
            200,
        ),
        (
            "keygate, 401 (random key)",
            config(keys(10), false),
            RANDOM_KEY,
            401,
        ),
        (
            "keygate, 401 (random key, crc32-checksummed prefix)",
            config(keys(10), true),
            RANDOM_KEY,
            401,
        ),
    ]
}

fn bench_artifact(path: &str, how: &str) -> std::path::PathBuf {
    let p = repo().join(path);
    assert!(p.exists(), "{} is missing: {how}", p.display());
    p
}

fn request_cost() {
    let minimal = bench_artifact(
        "target/minimal-filter/wasm32-wasip1/release/minimal_filter.wasm",
        "bench/run.sh builds it",
    );
    let native = json!([
        {"name": "envoy.filters.http.api_key_auth", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": [{"key": "bk_live_3", "client": "k3"}],
            "key_sources": [{"header": "x-api-key"}]}},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "rl",
            "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enabled"},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_enforced"}}}
    ]);
    let mut variants = vec![
        Variant {
            name: "Envoy, no filter",
            envoy: start_raw_envoy("bench-none", json!([])),
            headers: hdr("x-api-key", "bk_live_3"),
            want: 200,
            samples: vec![],
        },
        Variant {
            name: "minimal Wasm filter (reads one header)",
            envoy: start_raw_envoy("bench-minimal", other_wasm(&minimal)),
            headers: hdr("x-api-key", "bk_live_3"),
            want: 200,
            samples: vec![],
        },
        Variant {
            name: "native api_key_auth + local_ratelimit",
            envoy: start_raw_envoy("bench-native", native),
            headers: hdr("x-api-key", "bk_live_3"),
            want: 200,
            samples: vec![],
        },
    ];
    for (i, (name, config, key, want)) in keygate_variants().into_iter().enumerate() {
        variants.push(Variant {
            name,
            envoy: keygate_envoy(&format!("bench-keygate-{i}"), &config, None),
            headers: key_hdr(key),
            want,
            samples: vec![],
        });
    }
    // The same configuration in a second Envoy: how far two identical processes differ (each
    // V8 instance compiles and lays out the filter on its own) — differences below that are noise.
    let twin = keygate_variants()
        .into_iter()
        .find(|v| v.0 == "keygate, allowed, no limit")
        .map(|v| v.1)
        .unwrap_or_default();
    variants.push(Variant {
        name: "keygate, allowed, no limit (a second Envoy, same configuration)",
        envoy: keygate_envoy("bench-keygate-twin", &twin, None),
        headers: key_hdr("bk_live_3"),
        want: 200,
        samples: vec![],
    });
    // The request log on (SPEC §13): the same configuration with Envoy's OpenTelemetry logger
    // sending every judged request to a real keygate serve (SQLite): what producing and sending
    // the records costs Envoy (keygate's filter does no more work: it is Envoy's logger).
    let sink_dir = scratch_dir("bench-request-log");
    let sink_cfg = sink_dir.join("plugin.json");
    std::fs::write(&sink_cfg, &twin).expect("plugin.json");
    let sink = common::service::Service::start(common::service::ServiceOpts {
        database: &format!("sqlite:{}", sink_dir.join("keys.db").display()),
        config: &sink_cfg,
        gateway: false,
        sync_token: true,
        port: None,
    });
    variants.push(Variant {
        name: "keygate, allowed, no limit, request log on (OTLP to keygate serve)",
        envoy: {
            let mut o = EnvoyOpts::new("bench-keygate-request-log", &twin, 1);
            o.direct_response = true;
            o.concurrency = COST_CONCURRENCY;
            o.request_log = Some((sink.port, Some(common::service::SYNC_TOKEN.to_string())));
            Envoy::start(&o)
        },
        headers: key_hdr("bk_live_3"),
        want: 200,
        samples: vec![],
    });
    // The shipped filter is rustc's output optimised once more by wasm-opt -O2 (`make wasm`):
    // the same request with rustc's output alone shows what that pass costs or saves.
    let limited = keygate_variants()
        .into_iter()
        .find(|v| v.0 == "keygate, allowed, 1 rate limit")
        .map(|v| v.1)
        .unwrap_or_default();
    variants.push(Variant {
        name: "keygate, allowed, 1 rate limit (rustc's .wasm, without wasm-opt)",
        envoy: keygate_envoy(
            "bench-keygate-noopt",
            &limited,
            Some(bench_artifact(
                "target/noopt/wasm32-wasip1/release/keygate.wasm",
                "bench/run.sh builds it",
            )),
        ),
        headers: key_hdr("bk_live_3"),
        want: 200,
        samples: vec![],
    });
    // keygate as it was before an optimisation (KEYGATE_BASELINE_WASM: a .wasm built from an
    // earlier commit), beside the current one in the same rounds.
    if let Some(before) = std::env::var_os("KEYGATE_BASELINE_WASM").filter(|p| !p.is_empty()) {
        for (name, config, key, want) in keygate_variants() {
            let label = match name {
                "keygate, allowed, no limit" => "baseline build: allowed, no limit",
                "keygate, allowed, 1 rate limit" => "baseline build: allowed, 1 rate limit",
                "keygate, 401 (random key)" => "baseline build: 401 (random key)",
                "keygate, public path" => "baseline build: public path",
                _ => continue,
            };
            variants.push(Variant {
                name: label,
                envoy: keygate_envoy(
                    &format!("bench-baseline-{}", variants.len()),
                    &config,
                    Some(std::path::PathBuf::from(&before)),
                ),
                headers: key_hdr(key),
                want,
                samples: vec![],
            });
        }
    }
    let first_priced = variants.len();
    for (call, _) in PRICED_CALLS {
        variants.push(Variant {
            name: call,
            envoy: start_raw_envoy(
                &format!("bench-call-{call}"),
                minimal_calling(&minimal, call),
            ),
            headers: hdr("x-api-key", "bk_live_3"),
            want: 200,
            samples: vec![],
        });
    }
    let tck = ticks_per_sec();
    for _ in 0..ROUNDS {
        for v in variants.iter_mut() {
            v.measure(tck);
        }
    }
    let priced = variants.split_off(first_priced);
    let base = variants[0].median();
    let floor = variants[1].median() - base;
    println!("\n## Envoy CPU per request ({REQUESTS} keep-alive requests × {ROUNDS} interleaved rounds, --concurrency {COST_CONCURRENCY}, direct-response route, median)\n");
    println!(
        "| variant | CPU µs/request | overhead vs no filter | × the minimal filter's overhead |"
    );
    println!("|---|---:|---:|---:|");
    for v in &variants {
        let over = v.median() - base;
        println!(
            "| {} | {:.1} | {:+.1} µs | {:.2}× |",
            v.name,
            v.median(),
            over,
            over / floor
        );
    }
    let floor_cpu = variants[1].median();
    println!("\n## What one host call costs (the minimal filter plus {CALLS_PER_REQUEST} calls of one kind per request, same rounds: (its CPU − the floor's) ÷ {CALLS_PER_REQUEST})\n");
    println!("| host call | µs per call |\n|---|---:|");
    for (v, (_, what)) in priced.iter().zip(PRICED_CALLS) {
        println!(
            "| {what} | {:.2} |",
            (v.median() - floor_cpu) / f64::from(CALLS_PER_REQUEST)
        );
    }
    hostcall_ledger();
}

/// Host calls per request on each path, counted by the bench-only `hostcall-count` build.
fn hostcall_ledger() {
    let counting = bench_artifact(
        "target/hostcalls/wasm32-wasip1/release/keygate.wasm",
        "bench/run.sh builds it (feature hostcall-count)",
    );
    println!("\n## Host calls per request (bench-only build with feature hostcall-count)\n");
    println!("| variant | host calls / request |\n|---|---:|");
    println!("| minimal Wasm filter (reads one header) | 1 |");
    const N: usize = 500;
    for (i, (name, config, key, want)) in keygate_variants().into_iter().enumerate() {
        if name.contains("100,000") {
            continue; // the same calls as 10 keys
        }
        let e = keygate_envoy(
            &format!("bench-ledger-{i}"),
            &config,
            Some(counting.clone()),
        );
        let headers = key_hdr(key);
        keep_alive_burst(e.port, 20, &headers, want); // warm (first-use metric definitions)
        let before = e.counter("wasmcustom.keygate.bench_hostcalls");
        assert_eq!(keep_alive_burst(e.port, N, &headers, want), N, "{name}");
        let calls = e.counter("wasmcustom.keygate.bench_hostcalls") - before;
        println!("| {name} | {:.1} |", calls as f64 / N as f64);
    }
}

// ---------------------------------------------------------------------------------------------

/// A delta answer and the `since=` query it answers.
type DeltaAnswer = Arc<Mutex<Option<(String, Arc<Vec<u8>>)>>>;

/// A key service that answers its current set, 304 to an If-None-Match of its version, or its
/// delta to `?since=<the delta's base version>` (SPEC §4 delta answers).
/// (ETag, JSON body, the compact body when the service offers one).
type Bodies = (String, Arc<Vec<u8>>, Option<Arc<Vec<u8>>>);

struct KeyService {
    port: u16,
    body: Arc<Mutex<Bodies>>,
    /// (the `since=` query it answers, the delta body)
    delta: DeltaAnswer,
    fetched: Arc<Mutex<Vec<Instant>>>,
}

impl KeyService {
    fn start(version: &str, body: Vec<u8>) -> KeyService {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let body = Arc::new(Mutex::new((format!("\"{version}\""), Arc::new(body), None)));
        let fetched = Arc::new(Mutex::new(vec![]));
        let delta: DeltaAnswer = Arc::default();
        let (b, f, d) = (body.clone(), fetched.clone(), delta.clone());
        thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (b, f, d) = (b.clone(), f.clone(), d.clone());
                thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut w = conn;
                    loop {
                        let mut line = String::new();
                        let mut inm = String::new();
                        let mut compact_ok = false;
                        let mut request_line = String::new();
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line.trim().is_empty() {
                                break;
                            }
                            if request_line.is_empty() {
                                request_line = line.clone();
                            }
                            if let Some((k, v)) = line.split_once(':') {
                                if k.eq_ignore_ascii_case("if-none-match") {
                                    inm = v.trim().to_string();
                                }
                                if k.eq_ignore_ascii_case("accept") {
                                    compact_ok = v.contains(keygate::keyset::BINARY_MEDIA_TYPE);
                                }
                            }
                        }
                        f.lock().unwrap().push(Instant::now());
                        let (etag, body, compact) = b.lock().unwrap().clone();
                        let delta =
                            d.lock().unwrap().clone().filter(|(since, _)| {
                                request_line.contains(&format!("since={since} "))
                            });
                        let fresh = inm != etag;
                        let mut kind = "application/json";
                        let body = match (delta, compact) {
                            (Some((_, delta)), _) if fresh => delta,
                            (None, Some(compact)) if fresh && compact_ok => {
                                kind = keygate::keyset::BINARY_MEDIA_TYPE;
                                compact
                            }
                            _ if fresh => body,
                            _ => Arc::new(Vec::new()),
                        };
                        let status = if fresh { "200 OK" } else { "304 Not Modified" };
                        let head = format!("HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n", body.len());
                        if w.write_all(head.as_bytes())
                            .and_then(|_| w.write_all(&body))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        KeyService {
            port,
            body,
            delta,
            fetched,
        }
    }
    /// From now on, `?since=<since>` is answered with `delta`.
    fn set_delta(&self, since: &str, delta: Vec<u8>) {
        *self.delta.lock().unwrap() = Some((since.to_string(), Arc::new(delta)));
    }
    /// Serves `body` (JSON) and, to a client that asks for it, `compact`.
    fn set(&self, version: &str, body: Vec<u8>, compact: Option<Vec<u8>>) {
        *self.body.lock().unwrap() = (
            format!("\"{version}\""),
            Arc::new(body),
            compact.map(Arc::new),
        );
    }
    fn last_fetch(&self) -> Option<Instant> {
        self.fetched.lock().unwrap().last().copied()
    }
}

fn key_set(version: &str, n: usize, revoked: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 110 + 64);
    out.extend_from_slice(format!("{{\"version\":\"{version}\",\"keys\":[").as_bytes());
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        let rev = if revoked == Some(i) {
            ",\"revoked\":true"
        } else {
            ""
        };
        out.extend_from_slice(
            format!(
                "{{\"id\":\"key_{i}\",\"sha256\":\"{}\",\"tenant\":\"org_{}\"{rev}}}",
                sha(&format!("ks_live_{i}")),
                i % 1000
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"]}");
    out
}

/// The same set as [`key_set`] in keygate's compact form (what `keygate serve` sends keygate).
fn compact_set(version: &str, n: usize, revoked: Option<usize>) -> Vec<u8> {
    let records: Vec<(keygate::keys::Digest, keygate::model::KeyRecord)> = (0..n)
        .map(|i| {
            let rec = keygate::model::KeyRecord {
                id: format!("key_{i}"),
                tenant: Some(format!("org_{}", i % 1000)),
                revoked: revoked == Some(i),
                ..Default::default()
            };
            (
                keygate::keys::digest(format!("ks_live_{i}").as_bytes()),
                rec,
            )
        })
        .collect();
    keygate::keyset::encode_binary_set(version, records.iter().map(|(d, r)| (d, r)), &[])
}

fn sync_config(interval: u64) -> String {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "ks_live_", "environment": "LIVE"}],
        "key_sync": {"cluster": "keyservice", "path": "/keys", "interval_seconds": interval, "timeout_ms": 20000}
    })
    .to_string()
}

fn key_sync_scale(up: &Upstream) {
    const N: usize = 1_000_000;
    println!("\n## key_sync with {N} keys\n");
    let small = key_set("small", 10, None);
    let t = Instant::now();
    let big = key_set("big-1", N, None);
    let raw_per_key = big.len() as f64 / N as f64;
    println!("- key-service answer: {:.1} MB ({raw_per_key:.0} bytes per key as served; built in {:.1} s)", big.len() as f64 / 1e6, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let big_compact = compact_set("big-1", N, None);
    println!("- the same set in keygate's compact form: {:.1} MB ({:.0} bytes per key; built in {:.1} s)", big_compact.len() as f64 / 1e6, big_compact.len() as f64 / N as f64, t.elapsed().as_secs_f64());

    let mut rows = vec![];
    let mut cost_envoys = vec![];
    for (compact, concurrency) in [(false, 2u32), (false, 4), (true, 2), (true, 4)] {
        let form = if compact { "compact" } else { "JSON" };
        let ks = KeyService::start("small", small.clone());
        let cfg = sync_config(2);
        let name = format!(
            "bench-sync-{}-c{concurrency}",
            if compact { "compact" } else { "json" }
        );
        let mut o = EnvoyOpts::new(&name, &cfg, up.port);
        o.key_service = Some(ks.port);
        o.concurrency = concurrency;
        let e = Envoy::start(&o);
        assert!(
            wait_until(20, || get(e.port, "/", &[("x-api-key", "ks_live_3")])
                .status
                == 200),
            "small set never loaded"
        );
        let rss_before = rss_kb(e.pid());
        let alloc_before = e.allocated_bytes();
        ks.set("big-1", big.clone(), compact.then(|| big_compact.clone()));
        let changed = Instant::now();
        let probe = format!("ks_live_{}", N - 7);
        assert!(
            wait_until(120, || get(e.port, "/", &[("x-api-key", &probe)]).status
                == 200),
            "1M set never loaded:\n{}",
            e.log()
        );
        let ready = Instant::now();
        let fetch_at = ks
            .fetched
            .lock()
            .unwrap()
            .iter()
            .copied()
            .find(|t| *t >= changed)
            .unwrap_or(changed);
        thread::sleep(Duration::from_secs(3));
        // The fetching VM's own account: how long it read and wrote the set.
        if let Some(l) = e
            .log()
            .lines()
            .find(|l| l.contains("published version \"big-1\""))
        {
            let at = l.find("key sync:").unwrap_or(0);
            println!(
                "- {form} answer, --concurrency {concurrency}, Envoy's log: {}",
                &l[at..]
            );
        }
        let rss_after = rss_kb(e.pid());
        let alloc_growth_mb =
            e.allocated_bytes().saturating_sub(alloc_before) as f64 / 1e6 * 1e6 / 1048576.0;
        let growth_mb = (rss_after.saturating_sub(rss_before)) as f64 / 1024.0;
        rows.push(format!(
            "| {form} | {concurrency} | {:.0} MB | {:.0} MB | {growth_mb:.0} MB | {alloc_growth_mb:.0} MB | {:.2}× | {:.1} s |",
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0,
            growth_mb * 1024.0 * 1024.0 / big.len() as f64,
            ready.duration_since(fetch_at).as_secs_f64()
        ));
        if concurrency == 2 {
            // Revocation: time from the key service's change to the first 401 at Envoy.
            ks.set(
                "big-2",
                key_set("big-2", N, Some(N - 7)),
                compact.then(|| compact_set("big-2", N, Some(N - 7))),
            );
            let t = Instant::now();
            wait_until(60, || {
                get(e.port, "/", &[("x-api-key", &probe)]).status == 401
            });
            println!("- revocation of one key in the 1M set by a full {form} answer, interval_seconds 2: enforced {:.1} s after the key service changed", t.elapsed().as_secs_f64());
            // The same by a delta answer: keygate asks ?since=big-2 and gets one upsert.
            let probe2 = format!("ks_live_{}", N - 11);
            assert_eq!(get(e.port, "/", &[("x-api-key", &probe2)]).status, 200);
            let revoke = json!({"version": "big-3", "since": "big-2", "upserts": [
                {"id": format!("key_{}", N - 11), "sha256": sha(&probe2), "tenant": format!("org_{}", (N - 11) % 1000), "revoked": true}
            ], "removed": []});
            ks.set_delta("big-2", revoke.to_string().into_bytes());
            ks.set("big-3", key_set("big-3", N, Some(N - 11)), None);
            let t = Instant::now();
            let applied = wait_until(60, || {
                get(e.port, "/", &[("x-api-key", &probe2)]).status == 401
            });
            println!("- revocation of one key in the 1M set by a delta answer, interval_seconds 2: enforced {:.1} s after the key service changed{}", t.elapsed().as_secs_f64(), if applied { "" } else { " (never, within 60 s)" });
            if !compact {
                cost_envoys.push((e, ks));
            }
        }
    }
    println!("\n| answer | --concurrency | RSS with 10 keys | RSS with 1M keys | RSS growth | Envoy heap growth | RSS growth ÷ JSON answer size | fetch → first admitted request |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }

    // Per-request cost at 1M keys vs 10 keys, side by side.
    let ks10 = KeyService::start("small", small.clone());
    let cfg = sync_config(3600);
    let mut o = EnvoyOpts::new("bench-sync-10", &cfg, up.port);
    o.key_service = Some(ks10.port);
    let e10 = Envoy::start(&o);
    assert!(wait_until(20, || get(
        e10.port,
        "/",
        &[("x-api-key", "ks_live_3")]
    )
    .status
        == 200));
    let (e1m, _ks1m) = cost_envoys.pop().expect("1M envoy");
    let mut variants = vec![
        Variant {
            name: "synced set of 10 keys",
            envoy: e10,
            headers: hdr("x-api-key", "ks_live_3"),
            want: 200,
            samples: vec![],
        },
        Variant {
            name: "synced set of 1,000,000 keys",
            envoy: e1m,
            headers: hdr("x-api-key", "ks_live_3"),
            want: 200,
            samples: vec![],
        },
    ];
    let tck = ticks_per_sec();
    for _ in 0..ROUNDS {
        for v in variants.iter_mut() {
            v.measure(tck);
        }
    }
    println!("\n| key set | CPU µs/request (median) |");
    println!("|---|---:|");
    for v in &variants {
        println!("| {} | {:.1} |", v.name, v.median());
    }
    println!(
        "\n1M vs 10 keys: {:+.1}%",
        (variants[1].median() / variants[0].median() - 1.0) * 100.0
    );
    let _ = ks10.last_fetch();
}

/// Native throughput of the key-set parser (the same code the fetching VM runs, natively).
fn parse_throughput() {
    const N: usize = 200_000;
    let body = key_set("v", N, None);
    let cfg = br#"{"key_sources":[{"header":"x-api-key"}],"key_sync":{"cluster":"k","path":"/k"}}"#;
    let gate = keygate::config::parse_config(cfg).expect("config");
    let mut times = vec![];
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let parsed = keygate::keyset::parse_key_set(&mut body.as_slice(), body.len(), &gate, None);
        times.push(t.elapsed().as_secs_f64());
        assert!(matches!(parsed, Ok(keygate::keyset::Fetched::Set(ref s)) if s.len() == N));
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let median = times[times.len() / 2];
    println!(
        "\n## Key-set parsing (native, {N} keys, median of {ROUNDS}): {:.0} ms, {:.1} MB/s",
        median * 1e3,
        body.len() as f64 / 1e6 / median
    );
}

fn main() {
    // `cargo bench` passes --bench; run everything unless a section is named.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let up = Upstream::start("bench");
    if args.is_empty() || args.iter().any(|a| a == "cost") {
        request_cost();
    }
    if args.is_empty() || args.iter().any(|a| a == "parse") {
        parse_throughput();
    }
    if args.is_empty() || args.iter().any(|a| a == "sync") {
        key_sync_scale(&up);
    }
}
