//! keygate under faults and change (issue: resilience), in a real Envoy with two workers:
//! configurations swapped under load, the key fetcher's VM dying, and a filter that cannot run.
//! Faults are injected with the test-only build (`make wasm-faults`, feature `fault-injection`).
mod common;
use common::key_service::*;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const LOAD: &str = "fl_live_load";
const NEW: &str = "fl_live_new";
const GONE: &str = "fl_live_gone";
const REVOKED: &str = r#"{"error":"API key has been revoked","code":"UNAUTHORIZED"}"#;

fn swap_config(limit: u64, with_new: bool, gone_revoked: bool) -> String {
    let mut keys = vec![
        json!({"id": "load", "sha256": sha(LOAD), "rate_limits": [{"requests": limit, "per": "day"}]}),
        json!({"id": "gone", "sha256": sha(GONE), "revoked": gone_revoked}),
    ];
    if with_new {
        keys.push(json!({"id": "new", "sha256": sha(NEW)}));
    }
    json!({"key_sources": [{"header": "x-api-key"}], "prefixes": [{"prefix": "fl_live_", "environment": "LIVE"}], "keys": keys})
        .to_string()
}

/// Requests with the valid key from several threads until stopped (bounded: 60 s at most).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<u16>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, sent) = (stop.clone(), sent.clone());
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let r = get(port, "/v1/x", &[("x-api-key", LOAD)]);
                        sent.lock().unwrap().push(r.status);
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// Waits (bounded) until `n` more requests were answered.
    fn advance(&self, n: usize) {
        let target = self.count() + n;
        assert!(
            wait_until(20, || self.count() >= target),
            "the load stalled"
        );
    }

    fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.sent).unwrap().into_inner().unwrap()
    }
}

#[test]
fn configurations_swapped_under_load_never_fail_the_valid_key() {
    let up = Upstream::start("api");
    let first = swap_config(1_000_000_000, false, false);
    let mut e = Envoy::start_dynamic(&EnvoyOpts::new("faults-swap", &first, up.port));
    let port = e.port;
    assert_eq!(get(port, "/v1/x", &[("x-api-key", NEW)]).status, 401);
    assert_eq!(get(port, "/v1/x", &[("x-api-key", GONE)]).status, 200);
    let load = Load::start(port, 4);
    load.advance(50);

    // 1. Add a key: it works at once.
    let added = swap_config(1_000_000_000, true, false);
    assert!(e.update_plugin_config(&EnvoyOpts::new("faults-swap", &added, port)));
    assert_eq!(get(port, "/v1/x", &[("x-api-key", NEW)]).status, 200);
    load.advance(50);

    // 2. Revoke a key: 401 right after its swap.
    let revoked = swap_config(1_000_000_000, true, true);
    assert!(e.update_plugin_config(&EnvoyOpts::new("faults-swap", &revoked, port)));
    assert_json(&get(port, "/v1/x", &[("x-api-key", GONE)]), 401, REVOKED);
    load.advance(50);

    // 3. Change the load key's limit: the new limit applies, its count carries over.
    let before = get(port, "/v1/x", &[("x-api-key", LOAD)]);
    let remaining_before: u64 = before
        .header("x-ratelimit-remaining")
        .unwrap()
        .parse()
        .unwrap();
    let raised = swap_config(2_000_000_000, true, true);
    assert!(e.update_plugin_config(&EnvoyOpts::new("faults-swap", &raised, port)));
    let after = get(port, "/v1/x", &[("x-api-key", LOAD)]);
    assert_eq!(after.header("x-ratelimit-limit"), Some("2000000000"));
    let remaining_after: u64 = after
        .header("x-ratelimit-remaining")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        remaining_after < remaining_before + 1_000_000_000,
        "the count was reset: {remaining_before} then {remaining_after}"
    );
    load.advance(50);

    // 4. An invalid configuration is refused; the last good one keeps serving.
    let invalid =
        json!({"key_sources": [{"header": "x-api-key"}], "keys": [], "nope": 1}).to_string();
    assert!(!e.update_plugin_config(&EnvoyOpts::new("faults-swap", &invalid, port)));
    assert_eq!(get(port, "/v1/x", &[("x-api-key", NEW)]).status, 200);
    assert_json(&get(port, "/v1/x", &[("x-api-key", GONE)]), 401, REVOKED);
    load.advance(50);

    let statuses = load.finish();
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} load requests failed",
        statuses.len()
    );
    let workers = per_worker_connections(&e);
    assert!(
        workers.len() == 2 && workers.iter().all(|n| *n > 0),
        "both workers took connections: {workers:?}"
    );
    eprintln!(
        "{} requests across 4 swaps, none failed; connections per worker {workers:?}",
        statuses.len()
    );
    assert!(e.is_running());
}

fn sync_config() -> String {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "fl_live_", "environment": "LIVE"}],
        "keys": [],
        "key_sync": {"cluster": "keyservice", "path": "/keys", "interval_seconds": 1, "timeout_ms": 1000}
    })
    .to_string()
}

/// The VM holding the fetch lease traps; another VM takes the lease over and revocations at
/// the key service still reach every worker.
#[test]
fn another_vm_takes_over_when_the_fetcher_dies() {
    let ks = KeyService::start(
        200,
        &key_set(
            "v1",
            json!([{"id": "load", "sha256": sha(LOAD)}, {"id": "gone", "sha256": sha(GONE)}]),
        ),
    );
    let up = Upstream::start("api");
    let cfg = sync_config();
    let mut o = EnvoyOpts::new("faults-fetcher", &cfg, up.port);
    o.key_service = Some(ks.port);
    o.wasm = Some(faults_wasm_path());
    let mut e = Envoy::start(&o);
    assert!(wait_until(10, || get(
        e.port,
        "/v1/x",
        &[("x-api-key", GONE)]
    )
    .status
        == 200));

    let r = get(
        e.port,
        "/v1/x",
        &[("x-api-key", LOAD), ("x-keygate-fault", "kill-fetcher")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        wait_until(10, || e
            .log()
            .contains("fault injection: the fetcher VM traps")),
        "the fetcher never trapped"
    );
    let killed = Instant::now();
    ks.answer(
        200,
        &key_set("v2", json!([{"id": "load", "sha256": sha(LOAD)}, {"id": "gone", "sha256": sha(GONE), "revoked": true}])),
    );
    // Every connection (either worker) sees the revocation, after another VM took the lease:
    // none admitted, and at least one answered 401 by a live VM (all six could land on the
    // dead VM's worker, whose 5xx says nothing about the revocation).
    let revoked_everywhere = || {
        let statuses: Vec<u16> = (0..6)
            .map(|_| get(e.port, "/v1/x", &[("x-api-key", GONE)]).status)
            .collect();
        statuses.iter().all(|s| *s != 200) && statuses.contains(&401)
    };
    assert!(
        wait_until(20, revoked_everywhere),
        "the revocation never arrived"
    );
    let took = killed.elapsed();
    assert!(
        ks.fetches_since(killed) >= 1,
        "nobody fetched after the fetcher died"
    );
    // Lease: interval 1 s + timeout 1 s + 2 s margin, then a tick (0.5 s) and a fetch.
    assert!(
        took < Duration::from_secs(8),
        "took over only after {took:?}"
    );
    // A dead VM fails closed: the revoked key never passes, the valid one passes or gets 5xx.
    for _ in 0..20 {
        assert_ne!(get(e.port, "/v1/x", &[("x-api-key", GONE)]).status, 200);
        let s = get(e.port, "/v1/x", &[("x-api-key", LOAD)]).status;
        assert!(s == 200 || s >= 500, "valid key got {s}");
    }
    eprintln!("fetcher killed; revocation enforced on every worker after {took:?}");
    assert!(e.is_running());
}

/// A VM that traps on a request: the client gets an error, never the upstream; Envoy stays up.
#[test]
fn a_vm_trapping_on_a_request_fails_closed() {
    let up = Upstream::start("api");
    let cfg = swap_config(1_000_000_000, false, false);
    let mut o = EnvoyOpts::new("faults-trap", &cfg, up.port);
    o.wasm = Some(faults_wasm_path());
    let mut e = Envoy::start(&o);
    let r = get(
        e.port,
        "/v1/x",
        &[("x-api-key", LOAD), ("x-keygate-fault", "trap")],
    );
    assert!(
        r.status >= 500 && !r.reached_upstream(),
        "{} {}",
        r.status,
        r.body
    );
    eprintln!("a trapping VM answers {} {:?}", r.status, r.body);
    // Afterwards no request without a valid key ever reaches the upstream, on either worker.
    for _ in 0..20 {
        let r = get(e.port, "/v1/x", &[]);
        assert!(!r.reached_upstream(), "{} {}", r.status, r.body);
        assert!(r.status == 401 || r.status >= 500, "{}", r.status);
    }
    assert!(e.is_running());
}

/// A filter that cannot be loaded (missing or corrupt `.wasm`) is refused by Envoy: at start
/// Envoy does not serve at all; on a reload the last good listener keeps serving.
#[test]
fn a_filter_that_cannot_load_never_opens_the_gate() {
    let up = Upstream::start("api");
    let cfg = swap_config(1_000, false, false);
    let dir = repo()
        .join("target/itest")
        .join(format!("faults-wasm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x01\0\0\0 this is not a module").unwrap();
    let missing = dir.join("missing.wasm");

    for (name, wasm, why) in [
        ("missing", &missing, "Invalid path"),
        ("corrupt", &corrupt, "Unable to create Wasm"),
    ] {
        let mut o = EnvoyOpts::new("faults-load", &cfg, up.port);
        o.wasm = Some(wasm.clone());
        let log = Envoy::try_start(&o)
            .err()
            .unwrap_or_else(|| panic!("Envoy started with a {name} .wasm"));
        assert!(log.contains(why), "{name}: {log}");
    }

    let mut e = Envoy::start_dynamic(&EnvoyOpts::new("faults-reload", &cfg, up.port));
    for wasm in [&missing, &corrupt] {
        let mut o = EnvoyOpts::new("faults-reload", &cfg, up.port);
        o.wasm = Some(wasm.clone());
        assert!(
            !e.update_plugin_config(&o),
            "Envoy accepted {}",
            wasm.display()
        );
        assert_json(&get(e.port, "/v1/x", &[]), 401, MISSING);
        assert_eq!(get(e.port, "/v1/x", &[("x-api-key", LOAD)]).status, 200);
    }
    assert!(e.is_running());
}
