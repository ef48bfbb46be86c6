//! Leak reports (SPEC §15) against the real `keygate serve`: reports signed as GitHub and GitLab
//! sign them, with a P-256 key this test makes and serves from a local URL; a real Envoy with two
//! workers refusing a revoked key within the sync bound; webhooks received, verified and retried
//! across a restart; and hostile reports that must open, stall and revoke nothing.
mod common;
use common::partners::*;
use common::service::*;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const INTERVAL: u64 = 1;
const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
const GITLAB_TOKEN: &str = "gitlab-revocation-token-0123456789";

fn scratch(name: &str) -> PathBuf {
    let d = repo()
        .join("target/itest")
        .join(format!("leaks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn plugin_config() -> Value {
    json!({
        "key_sources": [{"header": "x-api-key"}],
        "prefixes": [
            {"prefix": "sk_live_", "environment": "LIVE", "checksum": "crc32"},
            {"prefix": "sk_test_", "environment": "TEST"},
            {"prefix": "pk_live_", "environment": "LIVE", "leak_policy": "notify"}
        ],
        "key_sync": {"cluster": "keyservice", "path": "/keys", "interval_seconds": INTERVAL,
                     "timeout_ms": 1000, "token": SYNC_TOKEN},
        "public_paths": ["/healthz"]
    })
}

/// Posts a report body signed by `signer` (as `identifier`) to `path`: (status, body text).
fn post_report(
    s: &Service,
    path: &str,
    prefix: &str,
    identifier: &str,
    signature: &str,
    body: &str,
) -> (u16, String) {
    let (status, _, text) = call_raw(
        &s.url(),
        "POST",
        path,
        Some(body),
        &[
            (
                &format!("{prefix}-Public-Key-Identifier"),
                identifier.to_string(),
            ),
            (
                &format!("{prefix}-Public-Key-Signature"),
                signature.to_string(),
            ),
        ],
    );
    (status, text)
}

fn report_github(s: &Service, p: &Partner, body: &str) -> (u16, String) {
    post_report(
        s,
        "/v1/leaks/github",
        "Github",
        &p.id,
        &p.sign(body.as_bytes()),
        body,
    )
}

fn sha(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn create(s: &Service, prefix: &str, name: &str) -> (String, String) {
    let (st, v) = s.admin(
        "POST",
        "/v1/api-keys",
        Some(&json!({"prefix": prefix, "name": name, "tenant": "org_1"}).to_string()),
    );
    assert_eq!(st, 201, "{v}");
    (
        v["data"]["id"].as_str().unwrap().into(),
        v["data"]["key"].as_str().unwrap().into(),
    )
}

fn audit_of(s: &Service, id: &str) -> Vec<Value> {
    let (st, v) = s.admin("GET", &format!("/v1/audit-log?key={id}"), None);
    assert_eq!(st, 200);
    v["data"].as_array().unwrap().clone()
}

fn start_service(dir: &Path, database: &str, args: &[&str]) -> Service {
    let config = dir.join("plugin.json");
    std::fs::write(&config, plugin_config().to_string()).unwrap();
    Service::start_args(
        ServiceOpts {
            database,
            config: &config,
            gateway: false,
            sync_token: true,
            port: None,
        },
        args,
    )
}

fn metric(s: &Service, sample: &str) -> u64 {
    let (_, _, text) = call_raw(&s.url(), "GET", "/metrics", None, &[]);
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

/// HMAC-SHA256 of "t.body", as SPEC §15 signs webhooks.
fn webhook_signature_holds(r: &Received) -> bool {
    let Some(sig) = r.header("keygate-signature") else {
        return false;
    };
    let Some((t, v1)) = sig
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    hex(&mac.finalize().into_bytes()) == v1
}

fn events(receiver: &Http) -> Vec<(String, Value)> {
    receiver
        .received()
        .iter()
        .map(|r| {
            assert!(webhook_signature_holds(r), "bad signature: {r:?}");
            let v: Value = serde_json::from_str(&r.body).unwrap();
            (v["type"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// GitHub's report of a live key, a test key, a publishable key and a stranger: the live key
/// revoked at once and refused by Envoy's two workers within the sync bound, the test and
/// publishable keys recorded and still working, the feedback exact, the audit log and the
/// webhooks telling it; the same report again changes nothing.
#[test]
fn a_github_report_revokes_a_live_key_at_every_worker_within_the_sync_bound() {
    let dir = scratch("github");
    let github = Partner::new(3);
    let keys = Http::start(keys_answer(key_list(&[&github])));
    let receiver = Http::start(Box::new(|_, _| (204, String::new(), Duration::ZERO)));
    let s = start_service(
        &dir,
        &format!("sqlite:{}", dir.join("keys.db").display()),
        &[
            "--github-keys-url",
            &keys.url("/meta/public_keys/secret_scanning"),
            "--webhook-url",
            &receiver.url("/hooks/keygate"),
            "--webhook-secret",
            WEBHOOK_SECRET,
        ],
    );
    let up = Upstream::start("leaks");
    let cfg = plugin_config().to_string();
    let mut o = EnvoyOpts::new("leaks-envoy", &cfg, up.port);
    o.key_service = Some(s.port);
    let e = Envoy::start(&o);

    let (live_id, live) = create(&s, "sk_live_", "server");
    let (test_id, test) = create(&s, "sk_test_", "ci");
    let (pub_id, publishable) = create(&s, "pk_live_", "browser");
    for k in [&live, &test, &publishable] {
        assert!(
            wait_until(INTERVAL + 2, || send(
                e.port,
                "GET",
                "/v1/x",
                &[("x-api-key", k)]
            )
            .status
                == 200),
            "a created key admitted"
        );
    }
    let stranger = "sk_live_notakeyofthisservice";
    let body = json!([
        {"token": live, "type": "keygate_sk_live", "url": "https://github.com/o/r/blob/abc/config.py#L3", "source": "content"},
        {"token": test, "type": "keygate_sk_test", "url": "https://gist.github.com/u/1", "source": "gist"},
        {"token": publishable, "type": "keygate_pk_live", "url": "https://github.com/o/r/issues/1", "source": "issue"},
        {"token": stranger, "type": "keygate_sk_live", "url": "https://github.com/o/r", "source": "content"}
    ])
    .to_string();
    let reported_at = Instant::now();
    let (st, answer) = report_github(&s, &github, &body);
    assert_eq!(st, 200, "{answer}");
    let label = |token: &str, ty: &str, l: &str| json!({"token_hash": sha(token), "token_type": ty, "label": l});
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!([
            label(&live, "keygate_sk_live", "true_positive"),
            label(&test, "keygate_sk_test", "true_positive"),
            label(&publishable, "keygate_pk_live", "true_positive"),
            label(stranger, "keygate_sk_live", "false_positive"),
        ])
    );
    for k in [live.as_str(), test.as_str(), publishable.as_str(), stranger] {
        assert!(!answer.contains(k), "the feedback never holds a token");
    }

    // Revoked at once (no grace), enforced by both workers within interval + 1 s.
    let mut refused = 0;
    let took = {
        let limit = Duration::from_secs(INTERVAL + 1);
        loop {
            let r = send(e.port, "GET", "/v1/x", &[("x-api-key", &live)]);
            if r.status == 401 {
                assert_eq!(
                    r.json(),
                    json!({"error": "API key has been revoked", "code": "UNAUTHORIZED"})
                );
                refused += 1;
                if refused == 20 {
                    break reported_at.elapsed();
                }
                continue;
            }
            assert!(
                reported_at.elapsed() < limit,
                "the leaked key still admitted after {limit:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    eprintln!("reported → refused by Envoy: {took:?}");
    let workers = per_worker_connections(&e);
    assert!(
        workers.iter().filter(|n| **n > 0).count() >= 2,
        "both workers served: {workers:?}"
    );
    // "notify": recorded, still working.
    for k in [&test, &publishable] {
        assert_eq!(
            send(e.port, "GET", "/v1/x", &[("x-api-key", k)]).status,
            200
        );
    }

    let (_, shown) = s.admin("GET", &format!("/v1/api-keys/{live_id}"), None);
    assert_eq!(shown["data"]["revoked"], json!(true));
    let leak = &shown["data"]["leak"];
    assert_eq!(leak["origin"], json!("github"));
    assert_eq!(
        leak["url"],
        json!("https://github.com/o/r/blob/abc/config.py#L3")
    );
    assert_eq!(leak["source"], json!("content"));
    assert_eq!(leak["action"], json!("revoked"));
    let (_, shown) = s.admin("GET", &format!("/v1/api-keys/{test_id}"), None);
    assert_eq!(shown["data"]["revoked"], json!(false));
    assert_eq!(shown["data"]["leak"]["action"], json!("notified"));
    let (_, listed) = s.admin("GET", "/v1/api-keys", None);
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.iter().filter(|k| k.get("leak").is_some()).count(), 3);

    let entry = audit_of(&s, &live_id)
        .into_iter()
        .find(|e| e["action"] == "key.leaked")
        .expect("a key.leaked entry");
    assert_eq!(entry["actor"], json!({"type": "github", "id": github.id}));
    assert_eq!(
        entry["details"],
        json!({"origin": "github", "url": "https://github.com/o/r/blob/abc/config.py#L3", "source": "content", "action": "revoked"})
    );
    let entry = audit_of(&s, &pub_id)
        .into_iter()
        .find(|e| e["action"] == "key.leaked")
        .unwrap();
    assert_eq!(entry["details"]["action"], json!("notified"));

    // The same report again (GitHub retries): the same answer, no new entry, no new event.
    let audit_before: usize = [&live_id, &test_id, &pub_id]
        .iter()
        .map(|id| audit_of(&s, id).len())
        .sum();
    assert!(
        wait_until(10, || events(&receiver).len() == 3 + 3 + 1),
        "events: {:?}",
        events(&receiver)
    );
    let (st, again) = report_github(&s, &github, &body);
    assert_eq!((st, again), (200, answer));
    let audit_after: usize = [&live_id, &test_id, &pub_id]
        .iter()
        .map(|id| audit_of(&s, id).len())
        .sum();
    assert_eq!(audit_before, audit_after);

    // Webhooks: created ×3, leaked ×3, revoked ×1, each signed, none holding a key.
    thread::sleep(Duration::from_millis(1500));
    let got = events(&receiver);
    let count = |t: &str| got.iter().filter(|(ty, _)| ty == t).count();
    assert_eq!(
        (
            count("key.created"),
            count("key.leaked"),
            count("key.revoked")
        ),
        (3, 3, 1),
        "{got:?}"
    );
    let leaked = got
        .iter()
        .find(|(t, v)| t == "key.leaked" && v["data"]["key_id"] == json!(live_id))
        .unwrap();
    assert_eq!(leaked.1["data"]["action"], json!("revoked"));
    assert_eq!(leaked.1["data"]["origin"], json!("github"));
    for r in receiver.received() {
        assert_eq!(r.path, "/hooks/keygate");
        assert_eq!(r.header("content-type"), Some("application/json"));
        for k in [&live, &test, &publishable] {
            assert!(!r.body.contains(k.as_str()) && !r.body.contains(&sha(k)));
        }
    }
    let (_, d) = s.admin("GET", "/v1/webhook-deliveries", None);
    let d = d["data"].as_array().unwrap();
    assert_eq!(d.len(), 7);
    assert!(
        d.iter()
            .all(|x| x["status"] == "delivered" && x["attempts"] == 1),
        "{d:?}"
    );

    // A leaked key that was revoked may still be rolled: its replacement, with its settings.
    let (st, rolled) = s.admin(
        "POST",
        &format!("/v1/api-keys/{live_id}/roll"),
        Some(r#"{"grace_seconds": 0}"#),
    );
    assert_eq!(st, 201, "{rolled}");
    assert_eq!(rolled["data"]["name"], json!("server"));
    let new_key = rolled["data"]["key"].as_str().unwrap().to_string();
    assert!(wait_until(INTERVAL + 2, || send(
        e.port,
        "GET",
        "/v1/x",
        &[("x-api-key", &new_key)]
    )
    .status
        == 200));
    assert_eq!(
        send(e.port, "GET", "/v1/x", &[("x-api-key", &live)]).status,
        401
    );

    // Nothing the service wrote holds a reported key.
    let db = std::fs::read(dir.join("keys.db")).unwrap();
    let db = String::from_utf8_lossy(&db);
    for k in [&live, &test, &publishable, &new_key] {
        assert!(!db.contains(k.as_str()));
    }
    assert!(!s.log().contains(live.as_str()));
    assert_eq!(
        metric(
            &s,
            "keygate_serve_leak_reports_total{origin=\"github\",outcome=\"accepted\"}"
        ),
        2
    );
    assert_eq!(
        metric(
            &s,
            "keygate_serve_leaked_keys_total{origin=\"github\",action=\"revoked\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &s,
            "keygate_serve_leaked_keys_total{origin=\"github\",action=\"repeated\"}"
        ),
        3
    );
    assert_eq!(
        metric(
            &s,
            "keygate_serve_leak_key_fetches_total{origin=\"github\",outcome=\"ok\"}"
        ),
        1
    );
}

/// Forged, replayed, oversized, malformed and flooding reports, a key list that rotates
/// mid-flight and one that does not answer: none revokes a key without a valid signature,
/// none stalls the service, and the key list is fetched only when an identifier is new.
#[test]
fn hostile_reports_open_nothing_and_stall_nothing() {
    let dir = scratch("hostile");
    let github = Partner::new(5);
    let forger = Partner::new(6);
    let keys = Http::start(keys_answer(key_list(&[&github])));
    // Fetched again for an unknown identifier at most every 2 s here (60 s by default).
    let s = start_service(
        &dir,
        &format!("sqlite:{}", dir.join("keys.db").display()),
        &[
            "--github-keys-url",
            &keys.url("/keys.json"),
            "--leak-keys-refetch-seconds",
            "2",
        ],
    );
    let (victim_id, victim) = create(&s, "sk_live_", "victim");
    let report = json!([{"token": victim, "type": "t", "url": "https://x", "source": "content"}])
        .to_string();
    let not_revoked = |s: &Service| {
        let (_, v) = s.admin("GET", &format!("/v1/api-keys/{victim_id}"), None);
        v["data"]["revoked"] == json!(false) && v["data"].get("leak").is_none()
    };
    let error = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);

    // No signature headers: as if there were no such endpoint.
    let (st, _, text) = call_raw(&s.url(), "POST", "/v1/leaks/github", Some(&report), &[]);
    assert_eq!(
        (st, error(&text)["code"].clone()),
        (404, json!("NOT_FOUND"))
    );
    let (st, _) = post_report(&s, "/v1/leaks/github", "Github", &github.id, "", &report);
    assert_eq!(st, 404);
    // GitLab is not set up on this service: its endpoint is off.
    let (st, _) = post_report(
        &s,
        "/v1/leaks/gitlab",
        "Gitlab",
        &github.id,
        &github.sign(report.as_bytes()),
        &report,
    );
    assert_eq!(st, 404);

    // Forged: signed by another key under GitHub's identifier; a malformed signature; a valid
    // signature over other bytes.
    let (st, text) = post_report(
        &s,
        "/v1/leaks/github",
        "Github",
        &github.id,
        &forger.sign(report.as_bytes()),
        &report,
    );
    assert_eq!(
        (st, error(&text)["code"].clone()),
        (400, json!("BAD_REQUEST"))
    );
    for sig in ["not base64 at all!", "AAAA", &github.sign(b"[]")] {
        let (st, _) = post_report(&s, "/v1/leaks/github", "Github", &github.id, sig, &report);
        assert_eq!(st, 400, "signature {sig:?}");
    }
    // The list was fetched once, for GitHub's identifier (the malformed signatures cost no
    // fetch). Unknown identifiers (the forger's, made-up ones) fetch it again at most once per
    // refetch bound, however many come.
    assert_eq!(keys.received().len(), 1);
    for id in std::iter::once(forger.id.clone()).chain((0..50).map(|i| format!("made-up-{i}"))) {
        let (st, _) = post_report(
            &s,
            "/v1/leaks/github",
            "Github",
            &id,
            &forger.sign(report.as_bytes()),
            &report,
        );
        assert_eq!(st, 400);
    }
    assert_eq!(keys.received().len(), 1, "no fetch per report");
    assert!(not_revoked(&s), "nothing revoked without a valid signature");

    // Signed, and not a report: 400, nothing done.
    for bad in ["{}", "not json", r#"[{"token": 5}]"#, r#"[{"type": "t"}]"#] {
        let (st, text) = report_github(&s, &github, bad);
        assert_eq!(st, 400, "{bad}: {text}");
    }
    // 1 MiB + 1: 413 before anything is verified; exactly 1 MiB is read.
    let padded = |n: usize| {
        let base = json!([{"token": "sk_live_x", "type": "t", "url": ""}]).to_string();
        let pad = n - base.len();
        base.replacen(
            "\"url\":\"\"",
            &format!("\"url\":\"{}\"", "u".repeat(pad)),
            1,
        )
    };
    let big = padded(1024 * 1024 + 1);
    assert_eq!(big.len(), 1024 * 1024 + 1);
    let (st, text) = report_github(&s, &github, &big);
    assert_eq!(
        (st, error(&text)["code"].clone()),
        (413, json!("PAYLOAD_TOO_LARGE"))
    );
    let (st, _) = report_github(&s, &github, &padded(1024 * 1024));
    assert_eq!(st, 200);

    // 10,000 tokens in one report, one of them a live key: answered at once, every token
    // labelled, the key acted on.
    let (flood_id, flood_key) = create(&s, "sk_live_", "flooded");
    let mut tokens: Vec<Value> = (0..9_999)
        .map(|i| json!({"token": format!("sk_live_{i:032}"), "type": "t"}))
        .collect();
    tokens.insert(5_000, json!({"token": flood_key, "type": "t"}));
    let body = Value::Array(tokens).to_string();
    assert!(body.len() < 1024 * 1024);
    let started = Instant::now();
    let (st, text) = report_github(&s, &github, &body);
    eprintln!("10,000 tokens answered in {:?}", started.elapsed());
    assert_eq!(st, 200);
    let feedback: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(feedback.len(), 10_000);
    assert_eq!(feedback[5_000]["label"], json!("true_positive"));
    assert_eq!(
        feedback
            .iter()
            .filter(|f| f["label"] == "true_positive")
            .count(),
        1
    );
    let (_, v) = s.admin("GET", &format!("/v1/api-keys/{flood_id}"), None);
    assert_eq!(v["data"]["revoked"], json!(true));

    // The key list rotates mid-flight: a report signed with the new key (an identifier the
    // service has not seen) makes it fetch the list again, and is accepted.
    let rotated = Partner::new(7);
    keys.set(keys_answer(key_list(&[&rotated])));
    thread::sleep(Duration::from_millis(2_100)); // the refetch bound since the last fetch
    let (st, text) = report_github(&s, &rotated, &report);
    assert_eq!(st, 200, "{text}");
    assert_eq!(
        keys.received().len(),
        2,
        "fetched again for the new identifier"
    );
    let (_, v) = s.admin("GET", &format!("/v1/api-keys/{victim_id}"), None);
    assert_eq!(v["data"]["revoked"], json!(true));

    // A key list that does not answer: the report is answered 503 within the fetch timeout,
    // and the rest of the service answers meanwhile.
    keys.set(Box::new(|_, _| (200, "{}".into(), Duration::from_secs(30))));
    let stranger = Partner::new(8);
    thread::sleep(Duration::from_millis(2_100));
    let url = s.url();
    let sig = stranger.sign(report.as_bytes());
    let (id, body) = (stranger.id.clone(), report.clone());
    let slow = thread::spawn(move || {
        let t = Instant::now();
        let (st, _, _) = call_raw(
            &url,
            "POST",
            "/v1/leaks/github",
            Some(&body),
            &[
                ("Github-Public-Key-Identifier", id),
                ("Github-Public-Key-Signature", sig),
            ],
        );
        (st, t.elapsed())
    });
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (st, _) = s.admin("GET", "/v1/api-keys", None);
    assert_eq!(st, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the admin API waited for the key list"
    );
    let (st, waited) = slow.join().unwrap();
    assert_eq!(st, 503);
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // A report signed with a key already kept is not held up by the slow list.
    let (st, _) = report_github(&s, &rotated, "[]");
    assert_eq!(st, 200);

    // A key revoked by hand, then reported: recorded (action none), and not brought back by a
    // roll (only a key the report itself revoked is rolled).
    let (gone_id, gone) = create(&s, "sk_live_", "gone");
    assert_eq!(
        s.admin("DELETE", &format!("/v1/api-keys/{gone_id}"), None)
            .0,
        200
    );
    let body = json!([{"token": gone, "type": "t"}]).to_string();
    assert_eq!(report_github(&s, &rotated, &body).0, 200);
    let (_, v) = s.admin("GET", &format!("/v1/api-keys/{gone_id}"), None);
    assert_eq!(v["data"]["leak"]["action"], json!("none"));
    let (st, v) = s.admin("POST", &format!("/v1/api-keys/{gone_id}/roll"), Some("{}"));
    assert_eq!((st, v["code"].clone()), (409, json!("CONFLICT")));
}

/// GitLab: partner reports with `Gitlab-Public-Key-*` headers, and the token revocation API of
/// self-managed instances (its token, its types, 204, 400 for an unknown type), on PostgreSQL.
#[test]
fn gitlab_reports_and_the_revocation_api_on_postgres() {
    let dir = scratch("gitlab");
    let pg = Postgres::start("leaks-gitlab");
    let gitlab = Partner::new(9);
    let keys = Http::start(keys_answer(key_list(&[&gitlab])));
    let config = dir.join("plugin.json");
    std::fs::write(&config, plugin_config().to_string()).unwrap();
    // The revocation token's digest, as for every token the service is given.
    std::env::set_var("KEYGATE_GITLAB_REVOCATION_TOKEN_SHA256", sha(GITLAB_TOKEN));
    let s = Service::start_args(
        ServiceOpts {
            database: &pg.database("leaks"),
            config: &config,
            gateway: false,
            sync_token: true,
            port: None,
        },
        &["--gitlab-keys-url", &keys.url("/keys")],
    );
    std::env::remove_var("KEYGATE_GITLAB_REVOCATION_TOKEN_SHA256");
    let (a_id, a) = create(&s, "sk_live_", "a");
    let (b_id, b) = create(&s, "sk_test_", "b");

    let body = json!([{"token": a, "type": "gitleaks_rule_id_keygate_sk_live", "url": "https://gitlab.example.com/g/p/-/blob/main/x.rb", "source": "commit"}]).to_string();
    let (st, text) = post_report(
        &s,
        "/v1/leaks/gitlab",
        "Gitlab",
        &gitlab.id,
        &gitlab.sign(body.as_bytes()),
        &body,
    );
    assert_eq!(st, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!([{"token_hash": sha(&a), "token_type": "gitleaks_rule_id_keygate_sk_live", "label": "true_positive"}])
    );
    let (_, v) = s.admin("GET", &format!("/v1/api-keys/{a_id}"), None);
    assert_eq!(v["data"]["leak"]["origin"], json!("gitlab"));
    assert_eq!(v["data"]["revoked"], json!(true));

    // The revocation API.
    let auth = |t: &str| vec![("authorization", t.to_string())];
    let (st, _, _) = call_raw(&s.url(), "GET", "/v1/revocable_token_types", None, &[]);
    assert_eq!(st, 401);
    let (st, _, _) = call_raw(
        &s.url(),
        "GET",
        "/v1/revocable_token_types",
        None,
        &auth("wrong"),
    );
    assert_eq!(st, 401);
    let (st, _, text) = call_raw(
        &s.url(),
        "GET",
        "/v1/revocable_token_types",
        None,
        &auth(GITLAB_TOKEN),
    );
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"types": ["gitleaks_rule_id_keygate_sk_live", "gitleaks_rule_id_keygate_sk_test", "gitleaks_rule_id_keygate_pk_live"]})
    );
    let revoke = json!([{"type": "gitleaks_rule_id_keygate_sk_test", "token": b, "location": "https://gitlab.example.com/g/p/-/blob/main/y.rb"}]).to_string();
    let (st, _, _) = call_raw(
        &s.url(),
        "POST",
        "/v1/revoke_tokens",
        Some(&revoke),
        &auth("Bearer wrong"),
    );
    assert_eq!(st, 401);
    let unknown = json!([{"type": "aws_key_id", "token": b}]).to_string();
    let (st, _, text) = call_raw(
        &s.url(),
        "POST",
        "/v1/revoke_tokens",
        Some(&unknown),
        &auth(GITLAB_TOKEN),
    );
    assert_eq!(st, 400, "{text}");
    let (_, v) = s.admin("GET", &format!("/v1/api-keys/{b_id}"), None);
    assert!(v["data"].get("leak").is_none());
    let (st, _, text) = call_raw(
        &s.url(),
        "POST",
        "/v1/revoke_tokens",
        Some(&revoke),
        &auth(GITLAB_TOKEN),
    );
    assert_eq!((st, text.as_str()), (204, ""));
    let (_, v) = s.admin("GET", &format!("/v1/api-keys/{b_id}"), None);
    // A test key's policy is notify: recorded, not revoked.
    assert_eq!(v["data"]["leak"]["action"], json!("notified"));
    assert_eq!(
        v["data"]["leak"]["url"],
        json!("https://gitlab.example.com/g/p/-/blob/main/y.rb")
    );
    assert_eq!(v["data"]["revoked"], json!(false));
    let (st, _, _) = call_raw(
        &s.url(),
        "POST",
        "/v1/revoke_tokens",
        Some(&revoke),
        &auth(GITLAB_TOKEN),
    );
    assert_eq!(st, 204, "idempotent");
    let leaked: Vec<Value> = audit_of(&s, &b_id)
        .into_iter()
        .filter(|e| e["action"] == "key.leaked")
        .collect();
    assert_eq!(leaked.len(), 1);
    assert_eq!(
        leaked[0]["actor"],
        json!({"type": "gitlab", "id": "revocation_api"})
    );

    // `keygate scan --check`'s question: which fingerprints are live keys (digests only).
    let (st, v) = s.admin(
        "POST",
        "/v1/leaks/check",
        Some(&json!({"fingerprints": [sha(&a), sha(&b), sha("sk_live_nobody")]}).to_string()),
    );
    assert_eq!(st, 200);
    assert_eq!(
        v["data"],
        json!([
            {"fingerprint": sha(&a), "live": false},
            {"fingerprint": sha(&b), "live": true},
            {"fingerprint": sha("sk_live_nobody"), "live": false}
        ])
    );
    let (st, v) = s.admin(
        "POST",
        "/v1/leaks/check",
        Some(r#"{"fingerprints": ["ABC"]}"#),
    );
    assert_eq!(
        (st, v),
        (
            400,
            json!({"success": false, "error": "fingerprints[0]: must be a lowercase hex SHA-256 (64 characters)", "code": "BAD_REQUEST"})
        )
    );
    let (st, _, _) = call_raw(
        &s.url(),
        "POST",
        "/v1/leaks/check",
        Some(r#"{"fingerprints": []}"#),
        &[],
    );
    assert_eq!(st, 401);
}

/// Webhooks survive a receiver that fails and a service killed with deliveries pending: each
/// event arrives, signed, after retries with backoff, and the delivery log says so.
#[test]
fn webhooks_are_retried_and_survive_a_restart() {
    let dir = scratch("webhooks");
    // A receiver that fails its first two requests.
    let receiver = Http::start(Box::new(|_, n| {
        let status = if n <= 2 { 503 } else { 200 };
        (status, String::new(), Duration::ZERO)
    }));
    let db = format!("sqlite:{}", dir.join("keys.db").display());
    // A port nothing listens on yet: the second receiver, started after the service dies.
    let later = TcpListener::bind("127.0.0.1:0").unwrap();
    let later_port = later.local_addr().unwrap().port();
    drop(later);
    let mut s = start_service(
        &dir,
        &db,
        &[
            "--webhook-url",
            &receiver.url("/a"),
            "--webhook-secret",
            WEBHOOK_SECRET,
        ],
    );
    let (id, _) = create(&s, "sk_test_", "retried");
    // 503, 503 (after 2 s), then 200 (after 4 s more).
    assert!(
        wait_until(15, || events(&receiver).len() == 3),
        "{:?}",
        receiver.received()
    );
    let got = receiver.received();
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the same event each time"
    );
    assert_eq!(got[0].header("keygate-event"), Some("key.created"));
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["data"]["key_id"], json!(id));
    assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    assert!(wait_until(5, || {
        let (_, d) = s.admin("GET", "/v1/webhook-deliveries", None);
        d["data"][0]["status"] == "delivered" && d["data"][0]["attempts"] == 3
    }));
    let (_, d) = s.admin("GET", "/v1/webhook-deliveries", None);
    assert_eq!(d["data"][0]["last_status"], json!(200));

    // Restarted with a receiver that is down: the event waits, across a kill, in the database.
    s.kill();
    let mut s = start_service(
        &dir,
        &db,
        &[
            "--webhook-url",
            &format!("http://127.0.0.1:{later_port}/b"),
            "--webhook-secret",
            WEBHOOK_SECRET,
        ],
    );
    let (st, _) = s.admin("DELETE", &format!("/v1/api-keys/{id}"), None);
    assert_eq!(st, 200);
    assert!(wait_until(5, || {
        let (_, d) = s.admin("GET", "/v1/webhook-deliveries", None);
        d["data"][0]["event"] == "key.revoked" && d["data"][0]["attempts"].as_i64() >= Some(1)
    }));
    s.kill();
    let second = Http::on(
        TcpListener::bind(("127.0.0.1", later_port)).unwrap(),
        Box::new(|_, _| (204, String::new(), Duration::ZERO)),
    );
    s.restart();
    assert!(
        wait_until(15, || !second.received().is_empty()),
        "delivered after the restart"
    );
    let (t, v) = &events(&second)[0];
    assert_eq!(t, "key.revoked");
    assert_eq!(v["data"]["key_id"], json!(id));
    assert_eq!(v["data"]["actor"], json!({"type": "admin", "id": null}));
}
