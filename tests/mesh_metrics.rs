//! Metrics hold in a mesh (SPEC §12): an Envoy set up as Istio's bootstrap sets its proxies up
//! (Istio's stats_matcher, none of keygate's stats_tags: a WasmPlugin cannot add them) exports
//! keygate's stats with the labels folded into the names; a real Prometheus scraping it with the
//! PodMonitor's metricRelabelings (deploy/kubernetes) gets back the names and labels the alerts
//! and the dashboard read.
mod common;
use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};

/// The stats part of Istio's proxy bootstrap (tools/packaging/common/envoy_bootstrap.json):
/// what is exported at all (its `wasm` prefix takes in `wasmcustom.keygate.…`); no tag of
/// keygate's.
fn istio_stats_config() -> Value {
    let patterns: Vec<Value> = [
        "reporter=",
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
        "wasm",
        "component",
    ]
    .iter()
    .map(|p| json!({"prefix": p}))
    .collect();
    json!({"stats_matcher": {"inclusion_list": {"patterns": patterns}}})
}

/// The PodMonitor's metricRelabelings as Prometheus's `metric_relabel_configs`.
fn relabel_configs() -> Value {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy/kubernetes/overlays/postgres"))
        .output()
        .expect("kubectl");
    assert!(out.status.success());
    let monitors: Vec<Value> = yaml_documents(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|d| d["kind"] == "PodMonitor")
        .collect();
    let rules = monitors[0]["spec"]["podMetricsEndpoints"][0]["metricRelabelings"]
        .as_array()
        .expect("the PodMonitor's metricRelabelings")
        .clone();
    let snake = |k: &str| match k {
        "sourceLabels" => "source_labels".to_string(),
        "targetLabel" => "target_label".to_string(),
        other => other.to_string(),
    };
    Value::Array(
        rules
            .into_iter()
            .map(|r| {
                Value::Object(
                    r.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (snake(k), v.clone()))
                        .collect(),
                )
            })
            .collect(),
    )
}

struct Prometheus {
    port: u16,
    child: Child,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = scratch_dir("mesh-prometheus");
        let port = free_port();
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "istio-proxies",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [format!("127.0.0.1:{target}")]}],
                "metric_relabel_configs": relabel_configs(),
            }]
        });
        // JSON is YAML.
        std::fs::write(dir.join("prometheus.yml"), config.to_string()).unwrap();
        let bin = repo().join(".venv/bin/prometheus");
        assert!(
            bin.exists(),
            "{} is missing: make integration takes it from Debian's package",
            bin.display()
        );
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus { port, child }
    }

    /// The value of an instant query with one series, if it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", encode(query));
        if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return None;
        }
        let r = send(self.port, "GET", &path, &[]);
        let v: Value = serde_json::from_str(&r.body).ok()?;
        let result = v["data"]["result"].as_array()?;
        (result.len() == 1).then(|| result[0]["value"][1].as_str()?.parse().ok())?
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn relabelled_istio_stats_give_the_names_and_labels_the_alerts_and_dashboard_read() {
    let up = Upstream::start("mesh-up");
    let cfg = json!({
        "key_sources": [{"header": "x-api-key"}],
        "keys": [
            {"id": "k1", "sha256": sha("key-one")},
            {"id": "key_r1", "sha256": sha("key-revoked"), "revoked": true},
            {"id": "k_lim", "sha256": sha("key-limited"), "rate_limits": [{"requests": 1, "per": "hour"}]}
        ]
    })
    .to_string();
    let envoy = Envoy::start(&EnvoyOpts {
        stats_config: Some(istio_stats_config()),
        ..EnvoyOpts::new("mesh-metrics", &cfg, up.port)
    });
    let mut statuses = vec![];
    for key in [
        "key-one",
        "key-one",
        "key-revoked",
        "nope",
        "key-limited",
        "key-limited",
    ] {
        statuses.push(get(envoy.port, "/", &[("x-api-key", key)]).status);
    }
    statuses.push(get(envoy.port, "/", &[]).status);
    assert_eq!(statuses, [200, 200, 401, 401, 200, 429, 401]);

    // As Istio's proxies export them: the labels are in the names.
    let raw = || {
        admin_get(envoy.admin, "/stats/prometheus")
            .map(|r| r.body)
            .unwrap_or_default()
    };
    assert!(
        wait_until(5, || raw()
            .contains("keygate_rejected_reason_revoked_key_id_key_r1{} 1")),
        "{}",
        raw()
    );
    assert!(
        !raw().contains("keygate_rejected{"),
        "keygate's tags applied: not Istio's setup"
    );

    let prom = Prometheus::start(envoy.admin);
    let expected = [
        (r#"keygate_allowed{key_id="k1"}"#, 2.0),
        (r#"keygate_requests{key_id="k1"}"#, 2.0),
        (r#"keygate_rejected{reason="revoked",key_id="key_r1"}"#, 1.0),
        (
            r#"keygate_rejected{reason="rate_limited",key_id="k_lim"}"#,
            1.0,
        ),
        (r#"keygate_rejected{reason="invalid",key_id=""}"#, 1.0),
        (r#"keygate_rejected{reason="missing",key_id=""}"#, 1.0),
        (
            r#"sum(increase(keygate_rejected{reason="unavailable"}[5m])) or vector(0)"#,
            0.0,
        ),
    ];
    let seen = wait_until(30, || {
        expected
            .iter()
            .all(|(q, want)| prom.value(q) == Some(*want))
    });
    let got: Vec<_> = expected.iter().map(|(q, _)| (q, prom.value(q))).collect();
    assert!(seen, "what Prometheus holds after relabelling: {got:#?}");
    // The gauge keeps its name too (the dashboard reads last use by key).
    assert!(prom
        .value(r#"keygate_last_used{key_id="k1"}"#)
        .is_some_and(|t| t > 1.7e9));
}
