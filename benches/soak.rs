//! `make soak`: ten minutes of mixed traffic against a real Envoy (`--concurrency 2`) with
//! keygate syncing a key set that changes every 2 s. Every 10 s it samples Envoy's resident
//! memory, its heap and the synced set's size in shared data; it fails on any 5xx. Writes
//! bench/SOAK.md and bench/soak.csv (`bench/plot_soak.py` draws bench/soak.png).
//! SOAK_SECONDS overrides the duration (default 600).
#[path = "../tests/common/mod.rs"]
mod common;

use common::key_service::*;
use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const VALID: &str = "sk_live_soak_valid";
const REVOKED: &str = "sk_live_soak_revoked";
const LIMITED: &str = "sk_live_soak_limited";
const INLINE: &str = "sk_live_soak_inline";

fn key_set_at(n: u64) -> String {
    // Changes every time: one of ten rotating keys comes and goes, the revoked key's name moves.
    let rotating = format!("sk_live_soak_rot_{}", n % 10);
    key_set(
        &format!("v{n}"),
        json!([
            {"id": "valid", "sha256": sha(VALID), "tenant": "org_soak"},
            {"id": "revoked", "sha256": sha(REVOKED), "revoked": true, "name": format!("gen {n}")},
            {"id": format!("rot_{}", n % 10), "sha256": sha(&rotating)}
        ]),
    )
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Sample {
    t: u64,
    rss_mb: f64,
    heap_mb: f64,
    shared_kb: f64,
    requests: usize,
    fivexx: usize,
}

fn main() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let ks = KeyService::start(200, &key_set_at(0));
    let up = Upstream::start("api");
    let cfg = json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [{"prefix": "sk_live_", "environment": "LIVE"}],
        "keys": [
            {"id": "limited", "sha256": sha(LIMITED), "rate_limits": [{"requests": 5, "per": "minute"}]},
            {"id": "inline", "sha256": sha(INLINE)}
        ],
        "key_sync": {"cluster": "keyservice", "path": "/keys", "interval_seconds": 2, "timeout_ms": 1000}
    })
    .to_string();
    let mut o = EnvoyOpts::new("soak", &cfg, up.port);
    o.key_service = Some(ks.port);
    let e = Envoy::start(&o);
    let port = e.port;
    assert!(wait_until(20, || get(port, "/", &[("x-api-key", VALID)])
        .status
        == 200));

    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, statuses) = (stop.clone(), statuses.clone());
            thread::spawn(move || {
                let mix = [VALID, "sk_live_nope", REVOKED, LIMITED, INLINE, ""];
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let key = mix[i % mix.len()];
                    i += 1;
                    let r = if key.is_empty() {
                        get(port, "/v1/soak", &[])
                    } else {
                        get(port, "/v1/soak", &[("x-api-key", key)])
                    };
                    *statuses.lock().unwrap().entry(r.status).or_default() += 1;
                    // A steady load, not a saturation test: about 2,000 requests/s in all.
                    thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();
    // The key service changes its set every 2 s.
    let changer = {
        let stop = stop.clone();
        let state = ks.state.clone();
        thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                thread::sleep(Duration::from_secs(2));
                state.lock().unwrap().body = key_set_at(n);
                n += 1;
            }
        })
    };

    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let (requests, fivexx) = {
            let s = statuses.lock().unwrap();
            (
                s.values().sum(),
                s.iter().filter(|(k, _)| **k >= 500).map(|(_, v)| v).sum(),
            )
        };
        let sample = Sample {
            t: start.elapsed().as_secs(),
            rss_mb: rss_kb(e.pid()) as f64 / 1024.0,
            heap_mb: e.allocated_bytes() as f64 / 1048576.0,
            shared_kb: e.gauge("wasmcustom.keygate.sync_shared_bytes") as f64 / 1024.0,
            requests,
            fivexx,
        };
        eprintln!(
            "t={:>4}s rss={:.1} MB heap={:.1} MB synced set={:.1} KB requests={} 5xx={}",
            sample.t,
            sample.rss_mb,
            sample.heap_mb,
            sample.shared_kb,
            sample.requests,
            sample.fivexx
        );
        samples.push(sample);
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_secs(10).min(deadline - Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    changer.join().unwrap();
    let statuses = statuses.lock().unwrap().clone();
    let syncs = e.counter("wasmcustom.keygate.sync_updates");
    report(seconds, &samples, &statuses, syncs, ks.fetches());
    assert!(
        e.log().lines().all(|l| !l.contains("panicked")),
        "a VM panicked"
    );
    let fivexx: usize = statuses
        .iter()
        .filter(|(k, _)| **k >= 500)
        .map(|(_, v)| v)
        .sum();
    assert_eq!(fivexx, 0, "5xx answers during the soak: {statuses:?}");
}

fn report(
    seconds: u64,
    samples: &[Sample],
    statuses: &BTreeMap<u16, usize>,
    syncs: u64,
    fetches: usize,
) {
    let mut csv = String::from("t_s,rss_mb,heap_mb,synced_set_kb,requests,http_5xx\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{},{:.2},{:.2},{:.2},{},{}",
            s.t, s.rss_mb, s.heap_mb, s.shared_kb, s.requests, s.fivexx
        );
    }
    std::fs::write(repo().join("bench/soak.csv"), &csv).unwrap();
    // Flat after warm-up: compare the first and last samples past the first minute.
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.t >= 60).collect();
    let (first, last) = (warm.first(), warm.last());
    let range = |f: fn(&Sample) -> f64| {
        let v: Vec<f64> = warm.iter().map(|s| f(s)).collect();
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    };
    let mut md = format!(
        "# Soak: {} s of mixed traffic, key_sync every 2 s with a changing set, `--concurrency 2`\n\n",
        seconds
    );
    let total: usize = statuses.values().sum();
    let _ = writeln!(
        md,
        "{total} requests ({:.0}/s): {}. Key service fetches: {fetches}; sets published: {syncs}.\n",
        total as f64 / seconds.max(1) as f64,
        statuses
            .iter()
            .map(|(k, v)| format!("{v} × {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let (Some(f), Some(l)) = (first, last) {
        let (rmin, rmax) = range(|s| s.rss_mb);
        let (hmin, hmax) = range(|s| s.heap_mb);
        let (smin, smax) = range(|s| s.shared_kb);
        let _ = writeln!(
            md,
            "After warm-up (t ≥ 60 s): RSS {:.1} → {:.1} MB (range {rmin:.1}–{rmax:.1}), Envoy heap {:.1} → {:.1} MB (range {hmin:.1}–{hmax:.1}), synced set in shared data {:.1} → {:.1} KB (range {smin:.1}–{smax:.1}).\n",
            f.rss_mb, l.rss_mb, f.heap_mb, l.heap_mb, f.shared_kb, l.shared_kb
        );
    }
    md.push_str("![RSS over time](soak.png)\n\n| t (s) | RSS (MB) | Envoy heap (MB) | synced set (KB) | requests | 5xx |\n|---:|---:|---:|---:|---:|---:|\n");
    for s in samples {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            s.t, s.rss_mb, s.heap_mb, s.shared_kb, s.requests, s.fivexx
        );
    }
    std::fs::write(repo().join("bench/SOAK.md"), &md).unwrap();
    println!("{md}");
}
